//! The handler API the realtime layer builds on, exercised in-process with two shards: connect with auth
//! (accept / refuse with data), per-socket data, events with acks, rooms, one-encode broadcast to local members
//! plus a cross-shard message to the other shard, server-to-client ack with timeout, socket timers, the
//! per-shard start hook and state, on_disconnect reasons, and a REST router.

mod common;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shardcast::proto::{EncodedMessage, RawJson};
use shardcast::server::{
    ConnectRefusal, Event, Request, Response, ResponseFuture, Router, ShardApp, ShardCtx, Socket,
    SocketIo,
};

/// Per-shard state set up by the start hook.
struct Stats {
    disconnects: RefCell<Vec<String>>,
    broadcasts_received: Cell<u64>,
}

struct Api;

impl Router for Api {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let shard = shard.clone();
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/api/shard") => Some(Box::pin(async move {
                Response::text(200, shard.id().to_string())
            })),
            ("POST", "/api/echo") => Some(Box::pin(async move {
                glommio::timer::sleep(Duration::from_millis(1)).await;
                Response::new(200, "application/octet-stream", request.body)
            })),
            ("GET", "/api/disconnects") => Some(Box::pin(async move {
                let stats = shard.state::<Stats>().expect("set by the start hook");
                let list = stats.disconnects.borrow().clone();
                Response::json(200, &serde_json::json!(list))
            })),
            _ => None,
        }
    }
}

fn broadcast_everywhere(shard: &Rc<ShardCtx>, room: String, args: String) {
    let msg = EncodedMessage::event_raw("/", "said", &RawJson::new(args.clone()).unwrap());
    shard.broadcast("/", &room, &msg);
    for other in (0..shard.nr_shards()).filter(|&i| i != shard.id()) {
        let (room, args) = (room.clone(), args.clone());
        shard
            .send_to(other, move |ctx| {
                ctx.state::<Stats>()
                    .unwrap()
                    .broadcasts_received
                    .set(ctx.state::<Stats>().unwrap().broadcasts_received.get() + 1);
                let msg = EncodedMessage::event_raw("/", "said", &RawJson::new(args).unwrap());
                ctx.broadcast("/", &room, &msg);
            })
            .expect("mesh queue has room");
    }
}

fn app(shard: &Rc<ShardCtx>) -> ShardApp {
    shard.set_state(Stats {
        disconnects: RefCell::new(Vec::new()),
        broadcasts_received: Cell::new(0),
    });
    let mut io = SocketIo::new();
    io.namespace("/")
        .on_connect(|socket: Socket, auth: Option<RawJson>| async move {
            #[derive(serde::Deserialize)]
            struct Auth {
                token: String,
            }
            let token = auth.and_then(|a| a.parse::<Auth>().ok()).map(|a| a.token);
            match token {
                Some(t) if t.starts_with("ok") => {
                    socket.insert_data(t);
                    // a socket timer: fires once, later, on this shard
                    socket.schedule(Duration::from_millis(30), |s| {
                        s.emit("tick", &RawJson::new("[1]").unwrap());
                    });
                    Ok(())
                }
                _ => Err(ConnectRefusal {
                    message: "unauthorized".into(),
                    data: Some(RawJson::new(r#"{"reason":"bad token"}"#).unwrap()),
                }),
            }
        })
        .on("whoami", |socket: &Socket, event: Event| {
            let token = socket
                .data::<String>()
                .map(|t| (*t).clone())
                .unwrap_or_default();
            event
                .ack
                .unwrap()
                .send(RawJson::from_serialize(&(token, socket.shard().id())).unwrap());
        })
        .on("join", |socket: &Socket, event: Event| {
            let (room,): (String,) = event.args.parse().unwrap();
            socket.join(&room);
            let n = socket.shard().rooms().len("/", &room);
            event
                .ack
                .unwrap()
                .send(RawJson::from_serialize(&(n,)).unwrap());
        })
        .on("leave", |socket: &Socket, event: Event| {
            let (room,): (String,) = event.args.parse().unwrap();
            socket.leave(&room);
            event.ack.unwrap().send(RawJson::empty_array());
        })
        .on("say", |socket: &Socket, event: Event| {
            let (room, text): (String, String) = event.args.parse().unwrap();
            broadcast_everywhere(
                socket.shard(),
                room,
                serde_json::to_string(&(text,)).unwrap(),
            );
        })
        .on("quiz", |socket: &Socket, event: Event| {
            let (timeout_ms,): (u64,) = event.args.parse().unwrap();
            let reply = socket.emit_with_ack(
                "q",
                RawJson::new("[\"2+2\"]").unwrap(),
                Vec::new(),
                Duration::from_millis(timeout_ms),
            );
            let socket = socket.clone();
            glommio::spawn_local(async move {
                let result = match reply.await {
                    Ok(r) => format!("answer {}", r.args),
                    Err(e) => format!("error {e}"),
                };
                socket.emit_value("quiz-result", &result);
            })
            .detach();
        })
        .on_disconnect(|socket: &Socket, reason: &str| {
            socket
                .shard()
                .state::<Stats>()
                .unwrap()
                .disconnects
                .borrow_mut()
                .push(reason.to_owned());
        });
    ShardApp {
        socketio: Some(io),
        router: Some(Rc::new(Api)),
    }
}

fn client(addr: SocketAddr, token: &str) -> Ws {
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text(&format!(r#"40{{"token":"{token}"}}"#));
    let reply = ws.recv_text_skip_ping();
    assert!(reply.starts_with("40{\"sid\":"), "{reply}");
    ws
}

#[test]
fn refused_connect_carries_message_and_data() {
    let srv = InProcess::start(2, Arc::new(app));
    let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text(r#"40{"token":"nope"}"#);
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"44{"message":"unauthorized","data":{"reason":"bad token"}}"#
    );
}

#[test]
fn socket_data_acks_and_timer() {
    let srv = InProcess::start(2, Arc::new(app));
    let mut ws = client(srv.addr, "ok-alice");
    ws.send_text(r#"421["whoami"]"#);
    let got = [ws.recv_text_skip_ping(), ws.recv_text_skip_ping()];
    assert!(
        got.iter().any(|m| m.starts_with(r#"431["ok-alice","#)),
        "{got:?}"
    );
    assert!(got.iter().any(|m| m == r#"42["tick",1]"#), "{got:?}");
}

#[test]
fn rooms_and_broadcast_reach_every_member_on_every_shard_once() {
    let srv = InProcess::start(2, Arc::new(app));
    let mut clients: Vec<Ws> = (0..6)
        .map(|i| client(srv.addr, &format!("ok-{i}")))
        .collect();
    for (i, ws) in clients.iter_mut().enumerate() {
        // drain the timer's tick first so it does not interleave with the acks below
        assert_eq!(ws.recv_text_skip_ping(), r#"42["tick",1]"#);
        let room = if i < 4 { "red" } else { "blue" };
        ws.send_text(&format!(r#"427["join","{room}"]"#));
        assert!(ws.recv_text_skip_ping().starts_with("437["));
    }
    clients[0].send_text(r#"42["say","red","hello"]"#);
    for ws in clients.iter_mut().take(4) {
        assert_eq!(ws.recv_text_skip_ping(), r#"42["said","hello"]"#);
    }
    // members of "blue" got nothing: their next message is the answer to a later broadcast to blue
    clients[5].send_text(r#"42["say","blue","b"]"#);
    for ws in clients.iter_mut().skip(4) {
        assert_eq!(ws.recv_text_skip_ping(), r#"42["said","b"]"#);
    }
    // after leaving, no more deliveries to that socket
    clients[1].send_text(r#"428["leave","red"]"#);
    assert_eq!(clients[1].recv_text_skip_ping(), "438[]");
    clients[0].send_text(r#"42["say","red","again"]"#);
    for i in [0, 2, 3] {
        assert_eq!(clients[i].recv_text_skip_ping(), r#"42["said","again"]"#);
    }
    clients[1].send_text(r#"429["whoami"]"#);
    assert!(clients[1].recv_text_skip_ping().starts_with("439["));
}

#[test]
fn server_to_client_ack_and_its_timeout() {
    let srv = InProcess::start(2, Arc::new(app));
    let mut ws = client(srv.addr, "ok-q");
    assert_eq!(ws.recv_text_skip_ping(), r#"42["tick",1]"#);
    ws.send_text(r#"42["quiz",5000]"#);
    let q = ws.recv_text_skip_ping();
    let (id, rest) = q
        .strip_prefix("42")
        .unwrap()
        .split_at(q[2..].find('[').unwrap());
    assert_eq!(rest, r#"["q","2+2"]"#);
    ws.send_text(&format!("43{id}[4]"));
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"42["quiz-result","answer [4]"]"#
    );
    // unanswered: the timer wheel fails it
    ws.send_text(r#"42["quiz",50]"#);
    assert!(ws.recv_text_skip_ping().contains(r#"["q","2+2"]"#));
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"42["quiz-result","error ack timed out"]"#
    );
}

#[test]
fn router_serves_rest_routes_and_sees_disconnect_reasons() {
    let srv = InProcess::start(2, Arc::new(app));
    let r = request(srv.addr, "POST", "/api/echo", b"some body");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, b"some body".as_slice())
    );
    let r = request(srv.addr, "GET", "/api/nope", b"");
    assert_eq!(r.status, 404);
    // a client disconnects from the namespace; its shard records the reason
    let mut ws = client(srv.addr, "ok-bye");
    ws.send_text(r#"421["whoami"]"#);
    let shard = loop {
        let t = ws.recv_text_skip_ping();
        if let Some(rest) = t.strip_prefix("431[") {
            break rest
                .split(',')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string();
        }
    };
    ws.send_text("41");
    ws.send_text(r#"42["whoami"]"#); // ignored: no longer connected to "/"
    // keep asking the shard that owned the socket (requests land on any shard; retry until it is that one)
    let mut seen = false;
    for _ in 0..200 {
        if request(srv.addr, "GET", "/api/shard", b"").text() != shard {
            continue;
        }
        let r = request(srv.addr, "GET", "/api/disconnects", b"");
        if r.text().contains("client namespace disconnect") {
            seen = true;
            break;
        }
    }
    assert!(seen, "disconnect reason not recorded");
}
