//! Twake realtime parity (issue 12) end to end: the real `shardcast serve` binary on 2 shards (demo services on the
//! embedded store) and the real socket.io-client 4.x and 2.x (`tests/interop/realtime_parity.js`), with clients placed
//! on both shards.
//!
//! - `realtime:event` from a client reaches every member of the room exactly once (the sender too, as a member), on
//!   both shards, and nobody else; a bad token gets `realtime:event:error {name, error, message}` and delivers nothing;
//!   the per-socket rate bound holds.
//! - `/users/{own id}` can be joined with the access token and `/users/{other}` cannot; join errors carry both `error`
//!   and `message`.
//! - Service events (in-process server with the same `live` layer, routes that publish through the shard's bus): a
//!   `realtime:event` published with `bus::publish_event_to` to two rooms, one from `Realtime::publish_room_event`
//!   and a `realtime:resource` with action `event` from `Realtime::publish_resource_event` reach exactly the rooms'
//!   members on both shards; a recipient returning two rooms, one built from a URL parameter the entity does not
//!   carry, routes to exactly those rooms.
//! - Presence and the online service: a user with sockets on both shards counts once and is dropped after its last
//!   socket; presence changes reach the configured presence room's watchers once and the room's own members never;
//!   `online:get`/`online:set`/`online:last_seen` ack as documented and `user:online` reaches the company's online
//!   room; with the database down at start the online service answers and works once the database is up.

mod common;

use std::io::{BufReader, Lines, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout};

use std::rc::Rc;
use std::sync::Arc;

use common::*;
use serde::Serialize;
use serde_json::{Value, json};
use shardcast::realtime::auth::{AccessVerifier, AuthConfig, RoomTokens, Secret};
use shardcast::realtime::bus::{RoomEvent, publish_event_to};
use shardcast::realtime::crud::{ExecutionContext, Realtime, Recipient, Recipients, Template};
use shardcast::realtime::events::{self, SocketEvent, SocketUser};
use shardcast::realtime::live::{self, ShardBus};
use shardcast::realtime::protocol::{SessionConfig, SessionContext};
use shardcast::server::{
    self, Request, Response, ResponseFuture, Router, ServerConfig, ShardApp, ShardCtx, SocketIo,
};

const SECRET: &str = "parity-access-secret-0123456789abcdef";
const ROOM_SECRET: &str = "parity-room-secret-0123456789abcdef!";
const EVENT_PER_S_MAX: usize = 5;

fn serve(name: &str) -> (Server, PathBuf) {
    serve_with(name, "")
}

/// [`serve`] with extra lines in the `[realtime]` table.
fn serve_with(name: &str, realtime: &str) -> (Server, PathBuf) {
    serve_on(name, realtime, "")
}

/// [`serve_with`], with the `[orm]` and `[serve]` tables given (`orm` empty: the embedded store in the scratch dir).
fn serve_on(name: &str, realtime: &str, orm: &str) -> (Server, PathBuf) {
    let dir = scratch_dir(name);
    let cfg = dir.join("shardcast.toml");
    let orm = if orm.is_empty() {
        format!(
            "[orm]\nembedded_path = \"{}\"\n",
            dir.join("data.redb").display()
        )
    } else {
        orm.to_owned()
    };
    let text = format!(
        "[server]\nping_interval_ms = 2000\nping_timeout_ms = 60000\n[auth]\njwt_secret = \"{SECRET}\"\n\
         [realtime]\nroom_token_secret = \"{ROOM_SECRET}\"\nevent_per_s_max = {EVENT_PER_S_MAX}\n{realtime}\n\
         {orm}"
    );
    std::fs::write(&cfg, text).expect("config");
    let srv = Server::start(&["serve", "--shards", "2", "--config", cfg.to_str().unwrap()]);
    (srv, dir)
}

fn call(
    addr: SocketAddr,
    user: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut s: TcpStream = connect(addr);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = format!("Bearer {}", acme_token(SECRET, user));
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    send_request(&mut s, method, path, &headers, body.as_bytes());
    s.flush().unwrap();
    let r = read_response(&mut s, &mut Vec::new()).expect("a response");
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", r.text()));
    (r.status, v)
}

fn room(c: usize) -> String {
    format!("/channels/c{c}/messages")
}

/// The room token the REST API hands `user` for channel `c`'s messages room.
fn room_token(addr: SocketAddr, user: &str, c: usize) -> String {
    let (status, v) = call(
        addr,
        user,
        "GET",
        &format!("/api/v1/channels/c{c}/messages?websockets=true&limit=1"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["websockets"][0]["room"], json!(room(c)));
    v["websockets"][0]["token"].as_str().unwrap().to_owned()
}

struct Node {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    fn start(major: &str, dir: &std::path::Path, url: &str, clients: &[Value]) -> Node {
        let (child, stdin, lines) =
            spawn_node_clients("realtime_parity.js", major, dir, url, clients);
        let mut node = Node {
            child,
            stdin,
            lines,
        };
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(node.line(), format!("CLIENT {i} {}", c["shard"]));
        }
        assert_eq!(node.line(), "READY");
        node
    }
    fn line(&mut self) -> String {
        let line = self
            .lines
            .next()
            .expect("node client output")
            .expect("utf-8 line");
        assert!(!line.starts_with("FAIL"), "{line}");
        line
    }
    fn send(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").expect("write to node");
        self.stdin.flush().unwrap();
    }
    /// `line` must start with `prefix `; the JSON after it.
    fn answer(&mut self, prefix: &str) -> Value {
        let line = self.line();
        let json = line
            .strip_prefix(&format!("{prefix} "))
            .unwrap_or_else(|| panic!("expected {prefix}: {line}"));
        serde_json::from_str(json).unwrap()
    }
    fn join(&mut self, i: usize, name: &str, token: &str) -> Value {
        self.send(json!({"op": "join", "i": i, "name": name, "token": token}));
        self.answer("JOINED")
    }
    fn event(&mut self, i: usize, name: &str, data: Value, token: &str) {
        self.send(json!({"op": "emit", "i": i, "event": "realtime:event",
            "payload": {"name": name, "data": data, "token": token}}));
    }
    /// Waits for `markers` at the clients `expect`; every client's events since the last collect.
    fn collect(&mut self, markers: &[&str], expect: &[usize]) -> Vec<Vec<Value>> {
        self.send(json!({"op": "collect", "markers": markers, "expect": expect}));
        serde_json::from_value(self.answer("EVENTS")).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ev(name: &str, data: Value) -> Value {
    json!(["realtime:event", {"name": name, "data": data}])
}

fn ev_error(name: &str, error: &str) -> Value {
    json!(["realtime:event:error", {"name": name, "error": error, "message": error}])
}

/// `events` sorted by their JSON text (relayed events of two senders have no order between them).
fn sorted(mut events: Vec<Value>) -> Vec<Value> {
    events.sort_by_key(|v| v.to_string());
    events
}

fn client_events(major: &str) {
    ensure_node_modules();
    let (srv, dir) = serve(&format!("realtime-parity-events-v{major}"));
    for c in 0..2 {
        let (status, v) = call(
            srv.addr,
            "alice",
            "POST",
            "/api/v1/companies/acme/workspaces/w1/channels",
            Some(json!({ "resource": { "id": format!("c{c}"), "name": "x" } })),
        );
        assert_eq!(status, 201, "{v}");
    }
    // u0..u5: members of room 0, three per shard. u6, u7: members of room 1, one per shard. u8: sends to room 0
    // without being a member. u9: floods room 1.
    let shards = [0, 0, 0, 1, 1, 1, 0, 1, 1, 0];
    let users: Vec<String> = (0..shards.len()).map(|i| format!("u{i}")).collect();
    let clients: Vec<Value> = users
        .iter()
        .zip(shards)
        .map(|(u, shard)| json!({"user": u, "token": acme_token(SECRET, u), "shard": shard, "connect_auth": true}))
        .collect();
    let mut node = Node::start(major, &dir, &srv.url(), &clients);
    let tokens0: Vec<String> = users.iter().map(|u| room_token(srv.addr, u, 0)).collect();
    let tokens1: Vec<String> = users.iter().map(|u| room_token(srv.addr, u, 1)).collect();
    for (i, t) in tokens0.iter().enumerate().take(6) {
        assert_eq!(
            node.join(i, &room(0), t),
            json!(["realtime:join:success", {"name": room(0)}])
        );
    }
    for (i, t) in tokens1.iter().enumerate().take(8).skip(6) {
        assert_eq!(
            node.join(i, &room(1), t),
            json!(["realtime:join:success", {"name": room(1)}])
        );
    }

    // Public user rooms: one's own with the access token, nobody else's.
    assert_eq!(
        node.join(0, "/users/u0", &acme_token(SECRET, "u0")),
        json!(["realtime:join:success", {"name": "/users/u0"}])
    );
    let not_yours = "a user room can be joined by its own user only";
    assert_eq!(
        node.join(1, "/users/u0", &acme_token(SECRET, "u1")),
        json!(["realtime:join:error", {"name": "/users/u0", "error": not_yours, "message": not_yours}])
    );
    assert_eq!(
        node.join(1, "/users/u0", &acme_token(SECRET, "u0")),
        json!(["realtime:join:error", {"name": "/users/u0", "error": not_yours, "message": not_yours}])
    );
    // The access token opens no other room.
    assert_eq!(
        node.join(1, &room(1), &acme_token(SECRET, "u1")),
        json!(["realtime:join:error", {"name": room(1), "error": "invalid signature", "message": "invalid signature"}])
    );

    // A member (shard 0) and a non-member (shard 1) send to room 0; the non-member's bad tokens deliver nothing.
    node.event(0, &room(0), json!({"n": 1}), &tokens0[0]);
    node.event(8, &room(0), json!({"n": 2}), &tokens0[8]);
    node.event(8, &room(0), json!({"n": 3}), &tokens0[0]);
    node.event(8, &room(0), json!({"n": 4}), &tokens1[8]);
    node.event(8, &room(0), json!({"n": 5}), "twake");
    node.event(0, "/users/u0", json!({"n": 6}), &acme_token(SECRET, "u0"));
    node.event(1, "/users/u0", json!({"n": 7}), &acme_token(SECRET, "u1"));
    node.event(0, &room(0), json!({"marker": "a0"}), &tokens0[0]);
    node.event(8, &room(0), json!({"marker": "a8"}), &tokens0[8]);
    let got = node.collect(&["a0", "a8"], &[0, 1, 2, 3, 4, 5]);
    let room0 = |extra: Vec<Value>| {
        let mut v = vec![
            ev(&room(0), json!({"n": 1})),
            ev(&room(0), json!({"n": 2})),
            ev(&room(0), json!({"marker": "a0"})),
            ev(&room(0), json!({"marker": "a8"})),
        ];
        v.extend(extra);
        sorted(v)
    };
    assert_eq!(
        sorted(got[0].clone()),
        room0(vec![ev("/users/u0", json!({"n": 6}))]),
        "client 0"
    );
    let (errors1, events1): (Vec<Value>, Vec<Value>) = got[1]
        .iter()
        .cloned()
        .partition(|e| e[0] == "realtime:event:error");
    assert_eq!(errors1, vec![ev_error("/users/u0", not_yours)], "client 1");
    assert_eq!(sorted(events1), room0(vec![]), "client 1");
    for (i, got) in got.iter().enumerate().take(6).skip(2) {
        assert_eq!(sorted(got.clone()), room0(vec![]), "client {i}");
    }
    assert_eq!(got[6], Vec::<Value>::new(), "client 6 (room 1)");
    assert_eq!(got[7], Vec::<Value>::new(), "client 7 (room 1)");
    assert_eq!(
        got[8],
        vec![
            ev_error(&room(0), "room token is for another user"),
            ev_error(&room(0), "room token is for another room"),
            ev_error(&room(0), "jwt malformed"),
        ],
        "client 8 (sender, not a member)"
    );
    assert_eq!(got[9], Vec::<Value>::new(), "client 9");

    // Client 9 floods room 1 with 20 events at once: all but about EVENT_PER_S_MAX are refused, and the members get
    // exactly the others, once, in order. A second later its bucket has refilled and the marker passes.
    let flood: Vec<Value> = (0..20)
        .map(
            |f| json!(["realtime:event", {"name": room(1), "data": {"f": f}, "token": tokens1[9]}]),
        )
        .collect();
    node.send(json!({"op": "emits", "i": 9, "list": flood}));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    node.event(9, &room(1), json!({"marker": "f"}), &tokens1[9]);
    let got = node.collect(&["f"], &[6, 7]);
    let refused = got[9].len();
    let limit_text = format!("too many events (limit {EVENT_PER_S_MAX} per second)");
    assert!(
        got[9].iter().all(|e| *e == ev_error(&room(1), &limit_text)),
        "{:?}",
        got[9]
    );
    assert!(
        refused >= 20 - EVENT_PER_S_MAX - 1,
        "only {refused} of 20 refused"
    );
    let delivered: Vec<Value> = got[6][..got[6].len() - 1].to_vec();
    assert_eq!(delivered.len(), 20 - refused, "{:?}", got[6]);
    let fs: Vec<u64> = delivered
        .iter()
        .map(|e| e[1]["data"]["f"].as_u64().expect("a flood event"))
        .collect();
    assert_eq!(
        &fs[..EVENT_PER_S_MAX],
        &(0..EVENT_PER_S_MAX as u64).collect::<Vec<_>>()[..]
    );
    assert!(fs.windows(2).all(|w| w[0] < w[1]), "{fs:?}");
    assert_eq!(got[6].last(), Some(&ev(&room(1), json!({"marker": "f"}))));
    assert_eq!(got[7], got[6], "both members of room 1, on two shards");
    for (i, got) in got.iter().enumerate().take(6) {
        assert_eq!(*got, Vec::<Value>::new(), "client {i}");
    }
    node.send(json!({"op": "quit"}));
    assert_eq!(node.line(), "PASS");
}

#[test]
fn v4_realtime_events_reach_exactly_the_room_on_two_shards() {
    client_events("4");
}

#[test]
fn v2_realtime_events_reach_exactly_the_room_on_two_shards() {
    client_events("2");
}

/// What a typing indicator is about: a channel. Its events go to `/channels/{channel}/typing`.
#[derive(Clone, Debug, Serialize)]
struct Typing {
    channel: String,
    user: String,
}

/// `POST /events {rooms, data}` -> `publish_event_to`; `POST /typing {channel, user}` -> `publish_room_event` and
/// `publish_resource_event`. Answers 200 `{"ok": bool}`.
struct EventsApi {
    bus: ShardBus,
    typing: Rc<Realtime<(), ShardBus, Typing>>,
}

impl Router for EventsApi {
    fn route(&self, _: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let bus = self.bus.clone();
        let typing = self.typing.clone();
        let v: Value = serde_json::from_slice(&request.body).unwrap_or_default();
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/events") => Some(Box::pin(async move {
                let rooms: Vec<String> =
                    serde_json::from_value(v["rooms"].clone()).unwrap_or_default();
                let ok = publish_event_to(&bus, rooms, &v["data"]).await.is_ok();
                Response::json(200, &json!({ "ok": ok }))
            })),
            ("POST", path) if path.starts_with("/companies/") && path.ends_with("/typing") => {
                // `/companies/{company}/typing`: the company is a URL parameter the entity does not carry.
                let company = path["/companies/".len()..path.len() - "/typing".len()].to_owned();
                let ctx = ExecutionContext::internal("t")
                    .with_method("POST")
                    .with_path_params([("company", company)]);
                Some(Box::pin(async move {
                    let t = Typing {
                        channel: v["channel"].as_str().unwrap_or_default().into(),
                        user: v["user"].as_str().unwrap_or_default().into(),
                    };
                    let a = typing
                        .publish_room_event(&ctx, &t, &json!({ "typing": t.user }))
                        .await;
                    let b = typing.publish_resource_event(&ctx, "typing", &t).await;
                    Response::json(200, &json!({ "ok": a.is_ok() && b.is_ok() }))
                }))
            }
            _ => None,
        }
    }
}

fn typing_room(channel: &str) -> String {
    format!("/channels/{channel}/typing")
}

fn company_typing_room(company: &str, channel: &str) -> String {
    format!("/companies/{company}/channels/{channel}/typing")
}

/// The in-process server of the service tests: `live` on 2 shards, [`EventsApi`], and socket events: `whoami`
/// acks `{user, socket, args}`; connects and disconnects are published to `/log` as `realtime:event`s.
fn start_app() -> server::ServerHandle {
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: 2,
        pin_shards: false,
        ping_interval_ms: 60_000,
        ping_timeout_ms: 60_000,
        ..ServerConfig::default()
    };
    let app: server::AppFactory = Arc::new(|shard: &Rc<ShardCtx>| {
        let session = SessionContext {
            access: AccessVerifier::new(&AuthConfig::hs256(SECRET)).unwrap(),
            rooms: RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0).unwrap(),
            config: SessionConfig::default(),
        };
        let mut io = SocketIo::new();
        let bus = live::install(shard, &mut io, session);
        // Two rooms per call, the second built from the URL's `company`.
        let recipients = Recipients::new().event(Recipient::to_rooms(
            |t: &Typing, ctx: &ExecutionContext| {
                vec![
                    typing_room(&t.channel),
                    company_typing_room(ctx.param("company").unwrap_or_default(), &t.channel),
                ]
            },
            Template::from_fn(|t: &Typing| format!("/typing/{}", t.user)),
        ));
        let typing = Rc::new(Realtime::new((), bus.clone(), recipients));
        events::on_event(shard, "whoami", |e: SocketEvent| async move {
            if let Some(ack) = e.ack {
                ack.send(&[json!({"user": e.user.id, "socket": e.socket_id, "args": e.args})]);
            }
        })
        .unwrap();
        assert!(events::on_event(shard, "realtime:join", |_: SocketEvent| async {}).is_err());
        // Holds its call for 3 s, then acks `done`.
        events::on_event(shard, "slow", |e: SocketEvent| async move {
            glommio::timer::sleep(std::time::Duration::from_secs(3)).await;
            if let Some(ack) = e.ack {
                ack.send(&[json!("done")]);
            }
        })
        .unwrap();
        let log = |what: &'static str, bus: ShardBus| {
            move |u: SocketUser| {
                let bus = bus.clone();
                async move {
                    let _ =
                        bus.publish_event_now(&RoomEvent::new("/log", json!({ what: u.user.id })));
                }
            }
        };
        events::on_connected(shard, log("connected", bus.clone())).unwrap();
        events::on_disconnected(shard, log("disconnected", bus.clone())).unwrap();
        ShardApp {
            socketio: Some(io),
            router: Some(Rc::new(EventsApi { bus, typing })),
        }
    });
    server::start(config, app).expect("server starts")
}

fn service_events(major: &str) {
    ensure_node_modules();
    let srv = start_app();
    let addr = srv.local_addr;
    let room_token = |sub: &str, room: &str| {
        RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0)
            .unwrap()
            .sign(sub, room)
            .unwrap()
    };
    // u0, u1: room /a (one per shard); u2, u3: room /b (one per shard); u4: in no room; u5, u6: the typing room of
    // channel c1 (one per shard). Channel c2's typing room has no member. u7: acme's c1 typing room; u8: another
    // company's.
    let shards = [0, 1, 0, 1, 0, 0, 1, 1, 0];
    let clients: Vec<Value> = shards
        .iter()
        .enumerate()
        .map(|(i, shard)| json!({"user": format!("u{i}"), "token": acme_token(SECRET, &format!("u{i}")), "shard": shard}))
        .collect();
    let dir = scratch_dir(&format!("realtime-parity-service-v{major}"));
    let mut node = Node::start(major, &dir, &format!("http://{addr}"), &clients);
    let joins = [
        (0, "/a".to_owned()),
        (1, "/a".into()),
        (2, "/b".into()),
        (3, "/b".into()),
        (5, typing_room("c1")),
        (6, typing_room("c1")),
        (7, company_typing_room("acme", "c1")),
        (8, company_typing_room("other", "c1")),
    ];
    for (i, room) in &joins {
        assert_eq!(
            node.join(*i, room, &room_token(&format!("u{i}"), room)),
            json!(["realtime:join:success", {"name": room}])
        );
    }
    let post = |path: &str, body: Value| {
        let mut s: TcpStream = connect(addr);
        send_request(
            &mut s,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        );
        s.flush().unwrap();
        let r = read_response(&mut s, &mut Vec::new()).expect("a response");
        assert_eq!((r.status, r.text()), (200, json!({"ok": true}).to_string()));
    };
    post(
        "/events",
        json!({"rooms": ["/a", "/b"], "data": {"marker": "e1", "x": [1, 2]}}),
    );
    post(
        "/events",
        json!({"rooms": ["/b"], "data": {"marker": "e2"}}),
    );
    post(
        "/companies/acme/typing",
        json!({"channel": "c1", "user": "u9"}),
    );
    post(
        "/companies/acme/typing",
        json!({"channel": "c2", "user": "u9"}),
    );
    post(
        "/events",
        json!({"rooms": [typing_room("c1"), company_typing_room("acme", "c1")], "data": {"marker": "t"}}),
    );
    // Each client waits for the last marker of its own room (the POSTs were answered one after the other).
    node.send(json!({"op": "collect", "wait": [
        [0, ["e1"]], [1, ["e1"]], [2, ["e2"]], [3, ["e2"]], [5, ["t"]], [6, ["t"]], [7, ["t"]],
    ]}));
    let rest: Vec<Vec<Value>> = serde_json::from_value(node.answer("EVENTS")).unwrap();
    let e1 = |room: &str| ev(room, json!({"marker": "e1", "x": [1, 2]}));
    assert_eq!(rest[0], vec![e1("/a")], "client 0");
    assert_eq!(rest[1], vec![e1("/a")], "client 1");
    for i in [2, 3] {
        assert_eq!(
            rest[i],
            vec![e1("/b"), ev("/b", json!({"marker": "e2"}))],
            "client {i}"
        );
    }
    assert_eq!(rest[4], Vec::<Value>::new(), "client 4 (in no room)");
    let typing = |room: &str| {
        vec![
            ev(room, json!({"typing": "u9"})),
            json!(["realtime:resource", {
                "action": "event", "room": room, "type": "typing", "path": "/typing/u9",
                "resource": {"channel": "c1", "user": "u9"},
            }]),
            ev(room, json!({"marker": "t"})),
        ]
    };
    for i in [5, 6] {
        assert_eq!(rest[i], typing(&typing_room("c1")), "client {i}");
    }
    assert_eq!(
        rest[7],
        typing(&company_typing_room("acme", "c1")),
        "client 7 (room from the URL)"
    );
    assert_eq!(rest[8], Vec::<Value>::new(), "client 8 (another company)");
    node.send(json!({"op": "quit"}));
    assert_eq!(node.line(), "PASS");
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn v4_service_events_reach_exactly_their_rooms_on_two_shards() {
    service_events("4");
}

#[test]
fn v2_service_events_reach_exactly_their_rooms_on_two_shards() {
    service_events("2");
}

fn socket_events(major: &str) {
    ensure_node_modules();
    let srv = start_app();
    let addr = srv.local_addr;
    // u0 watches /log (shard 0); u1 (shard 1) and u2 (shard 0) use the socket-event API.
    let clients: Vec<Value> = [0, 1, 0]
        .iter()
        .enumerate()
        .map(|(i, shard)| json!({"user": format!("u{i}"), "token": acme_token(SECRET, &format!("u{i}")), "shard": shard}))
        .collect();
    let dir = scratch_dir(&format!("realtime-parity-socket-events-v{major}"));
    let mut node = Node::start(major, &dir, &format!("http://{addr}"), &clients);
    let log_token = RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0)
        .unwrap()
        .sign("u0", "/log")
        .unwrap();
    assert_eq!(
        node.join(0, "/log", &log_token),
        json!(["realtime:join:success", {"name": "/log"}])
    );
    for i in [1, 2] {
        node.send(json!({"op": "emit_ack", "i": i, "event": "whoami", "payload": {"q": i}}));
        let ack = node.answer("ACK");
        assert_eq!(ack[0]["user"], json!(format!("u{i}")), "{ack}");
        assert_eq!(ack[0]["args"], json!([{"q": i}]), "{ack}");
        assert!(!ack[0]["socket"].as_str().unwrap().is_empty(), "{ack}");
    }
    // u2 starts HANDLERS_IN_FLIGHT_PER_SOCKET_MAX slow calls: one more is refused at once, with the bound in its ack.
    let slow: Vec<Value> = (0..events::HANDLERS_IN_FLIGHT_PER_SOCKET_MAX)
        .map(|k| json!(["slow", {"k": k}]))
        .collect();
    node.send(json!({"op": "emits", "i": 2, "list": slow}));
    let started = std::time::Instant::now();
    node.send(json!({"op": "emit_ack", "i": 2, "event": "slow", "payload": {}}));
    let text = format!(
        "too many events in flight (limit {})",
        events::HANDLERS_IN_FLIGHT_PER_SOCKET_MAX
    );
    assert_eq!(
        node.answer("ACK"),
        json!([{"error": text, "message": text}])
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Hooks: u1 goes and comes back, on its shard; the watcher sees both, with the user.
    node.send(json!({"op": "close", "i": 1}));
    assert_eq!(node.line(), "CLOSED 1");
    node.send(json!({"op": "open", "i": 1}));
    assert_eq!(node.line(), "OPENED 1");
    let want = vec![
        ev("/log", json!({"disconnected": "u1"})),
        ev("/log", json!({"connected": "u1"})),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got: Vec<Value> = Vec::new();
    while got.len() < want.len() && std::time::Instant::now() < deadline {
        node.send(json!({"op": "collect", "markers": [], "expect": []}));
        let all: Vec<Vec<Value>> = serde_json::from_value(node.answer("EVENTS")).unwrap();
        got.extend(all[0].clone());
    }
    assert_eq!(got, want);
    node.send(json!({"op": "quit"}));
    assert_eq!(node.line(), "PASS");
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn v4_socket_events_reach_service_handlers_with_the_user() {
    socket_events("4");
}

#[test]
fn v2_socket_events_reach_service_handlers_with_the_user() {
    socket_events("2");
}

/// `GET /api/v1/online` for room 0, asked by `user` with its own room token, polled until it answers `want` (at
/// most 5 s: presence travels between shards after the join or disconnect that changed it).
fn room_presence_becomes(addr: SocketAddr, user: &str, want: Value) -> Value {
    let token = room_token(addr, user, 0);
    let path = format!("/api/v1/online?room={}&token={token}", room(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, v) = call(addr, user, "GET", &path, None);
        assert_eq!(status, 200, "{v}");
        if v == want || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A room token for `room`, signed with the server's room-token key (what a service hands out for a presence room).
fn signed_room_token(user: &str, room: &str) -> String {
    RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0)
        .unwrap()
        .sign(user, room)
        .unwrap()
}

/// An access token of `sub` in `company`.
fn company_token(sub: &str, company: &str) -> String {
    let mut extra = serde_json::Map::new();
    extra.insert("companies".into(), json!([company]));
    shardcast::realtime::auth::AccessSigner::new(&AuthConfig::hs256(SECRET))
        .unwrap()
        .sign(sub, 3600, &extra)
        .unwrap()
}

/// Twake's announcement of `user`'s state in `company`'s online room.
fn user_online(company: &str, user: &str, online: bool) -> Value {
    json!(["realtime:resource", {
        "action": "event",
        "room": format!("/users/online/{company}"),
        "type": "user:online",
        "path": format!("/users/{user}"),
        "resource": {"online": [{"company_id": company, "user_id": user, "is_online": online}]},
    }])
}

const PRESENCE_ROOM_TEMPLATE: &str = "{room}/presence";

fn presence_room(room: &str) -> String {
    PRESENCE_ROOM_TEMPLATE.replace("{room}", room)
}

fn presence_and_online(major: &str) {
    ensure_node_modules();
    let (srv, dir) = serve_with(
        &format!("realtime-parity-presence-v{major}"),
        &format!("presence_room = \"{PRESENCE_ROOM_TEMPLATE}\""),
    );
    let (status, v) = call(
        srv.addr,
        "alice",
        "POST",
        "/api/v1/companies/acme/workspaces/w1/channels",
        Some(json!({ "resource": { "id": "c0", "name": "x" } })),
    );
    assert_eq!(status, 201, "{v}");
    // u0 twice (shards 0 and 1) and u1 (shard 1): members of room 0. u2 (shard 0) and u3 (shard 1): watchers of room
    // 0's presence room and of acme's online room. u5 (shard 0, company "other") only asks.
    let clients: Vec<Value> = [
        ("u0", 0, "acme"),
        ("u0", 1, "acme"),
        ("u1", 1, "acme"),
        ("u2", 0, "acme"),
        ("u3", 1, "acme"),
        ("u5", 0, "other"),
    ]
    .iter()
    .map(|(u, shard, c)| json!({"user": u, "token": company_token(u, c), "shard": shard}))
    .collect();
    let mut node = Node::start(major, &dir, &srv.url(), &clients);
    let (members, watchers, outsider) = ([0, 1, 2], [3, 4], 5);
    let presence = presence_room(&room(0));
    let online_room = "/users/online/acme";
    for (i, u) in [(3, "u2"), (4, "u3")] {
        let joined = json!(["realtime:join:success", {"name": presence}]);
        assert_eq!(
            node.join(i, &presence, &signed_room_token(u, &presence)),
            joined
        );
        let joined = json!(["realtime:join:success", {"name": online_room}]);
        assert_eq!(node.join(i, online_room, &company_token(u, "acme")), joined);
    }
    // A company's online room opens with the access token of its members only; the presence room with its own
    // room token only (room 0's token is not one for it).
    let refused = "a company's online room can be joined by its members only";
    assert_eq!(
        node.join(outsider, online_room, &company_token("u5", "other")),
        json!(["realtime:join:error", {"name": online_room, "error": refused, "message": refused}])
    );
    let wrong = node.join(2, &presence, &room_token(srv.addr, "u1", 0));
    assert_eq!(wrong[0], json!("realtime:join:error"), "{wrong}");
    for (i, u) in [(0, "u0"), (1, "u0"), (2, "u1")] {
        assert_eq!(
            node.join(i, &room(0), &room_token(srv.addr, u, 0)),
            json!(["realtime:join:success", {"name": room(0)}])
        );
    }
    let both = json!({"room": room(0), "count": 2, "users": ["u0", "u1"]});
    assert_eq!(room_presence_becomes(srv.addr, "u2", both.clone()), both);
    // The presence room's watchers, on both shards, saw u0 join once (its second socket, on the other shard,
    // announced nothing) and u1 once; the room's own members saw no presence change. Markers from u1 to both rooms
    // close the batch.
    let u1_token = room_token(srv.addr, "u1", 0);
    let u1_presence_token = signed_room_token("u1", &presence);
    let batch = |node: &mut Node, m: &str, wait_for: &[usize]| -> Vec<Vec<Value>> {
        node.event(2, &room(0), json!({"marker": m}), &u1_token);
        node.event(2, &presence, json!({"marker": m}), &u1_presence_token);
        let wait: Vec<Value> = wait_for.iter().map(|i| json!([i, [m]])).collect();
        node.send(json!({"op": "collect", "wait": wait}));
        serde_json::from_value(node.answer("EVENTS")).unwrap()
    };
    let change = |what: &str, user: &str| {
        ev(
            &presence,
            json!({"presence": what, "room": room(0), "user": user}),
        )
    };
    let is_presence = |e: &Value| e[1]["data"].get("presence").is_some();
    let got = batch(&mut node, "p0", &[0, 1, 2, 3, 4]);
    for i in watchers {
        let changes: Vec<&Value> = got[i].iter().filter(|e| is_presence(e)).collect();
        assert_eq!(
            sorted(changes.into_iter().cloned().collect()),
            sorted(vec![change("join", "u0"), change("join", "u1")]),
            "watcher {i}: {:?}",
            got[i]
        );
    }
    for i in members {
        assert_eq!(
            got[i],
            vec![ev(&room(0), json!({"marker": "p0"}))],
            "member {i}"
        );
    }
    assert_eq!(
        got[outsider],
        Vec::<Value>::new(),
        "the outsider is in no room"
    );

    let online_get = |node: &mut Node| {
        node.send(
            json!({"op": "emit_ack", "i": outsider, "event": "online:get",
            "payload": {"data": ["u0", "u1", "u2", "u9"]}}),
        );
        node.answer("ACK")
    };
    assert_eq!(
        online_get(&mut node),
        json!([{"data": [["u0", true], ["u1", true], ["u2", true], ["u9", false]]}])
    );
    node.send(
        json!({"op": "emit_ack", "i": outsider, "event": "online:get", "payload": {"data": "u0"}}),
    );
    let bad = "payload must be {data: [user ids]}";
    assert_eq!(node.answer("ACK"), json!([{"error": bad, "message": bad}]));
    // online:set acks with no arguments and announces u1 online to acme's online room; a second one within the
    // interval is refused and announces nothing.
    node.send(
        json!({"op": "emit_ack", "i": 2, "event": "online:set", "payload": {"data": ["u1"]}}),
    );
    assert_eq!(node.answer("ACK"), json!([]));
    node.send(json!({"op": "emit_ack", "i": 2, "event": "online:set", "payload": {}}));
    let too_often = format!(
        "online:set too often (at most once per {} ms)",
        shardcast::realtime::online::ONLINE_SET_INTERVAL_MS_MIN
    );
    assert_eq!(
        node.answer("ACK"),
        json!([{"error": too_often, "message": too_often}])
    );
    let got = batch(&mut node, "p1", &[0, 1, 2, 3, 4]);
    for i in watchers {
        let announced: Vec<&Value> = got[i]
            .iter()
            .filter(|e| e[0] == "realtime:resource")
            .collect();
        assert_eq!(announced, [&user_online("acme", "u1", true)], "watcher {i}");
    }

    // u0's socket on shard 0 goes: u0 still counts once (its socket on shard 1), and is still online.
    node.send(json!({"op": "close", "i": 0}));
    assert_eq!(node.line(), "CLOSED 0");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(room_presence_becomes(srv.addr, "u2", both.clone()), both);
    assert_eq!(
        online_get(&mut node),
        json!([{"data": [["u0", true], ["u1", true], ["u2", true], ["u9", false]]}])
    );
    // Its last socket goes: dropped from the room and offline.
    node.send(json!({"op": "close", "i": 1}));
    assert_eq!(node.line(), "CLOSED 1");
    let only_u1 = json!({"room": room(0), "count": 1, "users": ["u1"]});
    assert_eq!(
        room_presence_becomes(srv.addr, "u2", only_u1.clone()),
        only_u1
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let offline = json!([{"data": [["u0", false], ["u1", true], ["u2", true], ["u9", false]]}]);
    let mut now = online_get(&mut node);
    while now != offline && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        now = online_get(&mut node);
    }
    assert_eq!(now, offline);
    // Since the last batch the watchers saw exactly u0 leaving (after its last socket, not its first) and u0 going
    // offline in acme; the remaining member saw only its marker.
    let got = batch(&mut node, "p2", &[2, 3, 4]);
    for i in watchers {
        // The presence change and the announcement travel from different shards: no order between them.
        assert_eq!(
            sorted(got[i].clone()),
            sorted(vec![
                change("leave", "u0"),
                user_online("acme", "u0", false),
                ev(&presence, json!({"marker": "p2"}))
            ]),
            "watcher {i}"
        );
    }
    assert_eq!(got[2], vec![ev(&room(0), json!({"marker": "p2"}))]);
    assert_eq!(
        got[outsider],
        Vec::<Value>::new(),
        "the outsider is in no room"
    );

    // Last seen, as Twake's user objects carry it: u0's went offline; the outsider (another company) reads only its
    // own row.
    let last_seen = |node: &mut Node, i: usize| {
        node.send(
            json!({"op": "emit_ack", "i": i, "event": "online:last_seen",
            "payload": {"data": ["u0", "u1", "u5", "u9"]}}),
        );
        node.answer("ACK")
    };
    let seen = last_seen(&mut node, 3);
    let rows = seen[0]["data"].as_array().expect("data").clone();
    let users: Vec<&str> = rows
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["u0", "u1"], "{seen}");
    assert_eq!(rows[0]["is_connected"], json!(false), "{seen}");
    assert_eq!(rows[1]["is_connected"], json!(true), "{seen}");
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 120_000;
    for r in &rows {
        assert!(r["last_seen"].as_i64().unwrap() > started_ms, "{seen}");
    }
    let seen = last_seen(&mut node, outsider);
    let rows = seen[0]["data"].as_array().expect("data").clone();
    let users: Vec<&str> = rows
        .iter()
        .map(|r| r["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["u5"], "{seen}");

    // Over REST, only for a room the caller may read: a token of another user or none is refused.
    let other = room_token(srv.addr, "u1", 0);
    let (status, v) = call(
        srv.addr,
        "u2",
        "GET",
        &format!("/api/v1/online?room={}&token={other}", room(0)),
        None,
    );
    assert_eq!((status, &v["code"]), (403, &json!("forbidden")), "{v}");
    let (status, v) = call(
        srv.addr,
        "u2",
        "GET",
        &format!("/api/v1/online?room={}", room(0)),
        None,
    );
    assert_eq!(status, 403, "{v}");
    node.send(json!({"op": "quit"}));
    assert_eq!(node.line(), "PASS");
}

#[test]
fn v4_presence_counts_a_user_once_across_shards_and_online_acks_like_twake() {
    presence_and_online("4");
}

#[test]
fn v2_presence_counts_a_user_once_across_shards_and_online_acks_like_twake() {
    presence_and_online("2");
}

/// Issue 12 item "robustness": with the database down when `serve` starts, the online service is there at once
/// (`online:get` answers from presence, the events that need the database ack `database unavailable`), and uses the
/// database as soon as the start-up retry loop connected it.
#[test]
fn v4_online_service_answers_while_the_database_is_down_and_works_once_it_is_up() {
    ensure_node_modules();
    let mut mongo = common::mongo::OwnMongo::new("realtime-parity-online-db-down-mongo");
    let orm = format!(
        "[orm]\nbackend = \"mongo\"\nmongo_uri = \"mongodb://127.0.0.1:{}/?directConnection=true\"\n\
         mongo_database = \"online_{}\"\nrequest_timeout_ms = 1500\nunavailable_retry_ms = 200\n\
         [serve]\ndb_retry_initial_ms = 100\ndb_retry_max_ms = 500\ndb_probe_interval_ms = 200\n",
        mongo.port,
        std::process::id()
    );
    let (srv, dir) = serve_on("realtime-parity-online-db-down", "", &orm);
    let clients: Vec<Value> = [("u0", 0), ("u1", 1)]
        .iter()
        .map(|(u, shard)| json!({"user": u, "token": acme_token(SECRET, u), "shard": shard}))
        .collect();
    let mut node = Node::start("4", &dir, &srv.url(), &clients);
    let readyz = |want: u16| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let r = request(srv.addr, "GET", "/readyz", b"");
            if r.status == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz stayed {}",
                r.status
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    readyz(503);
    let mut ask = |event: &str, payload: Value| {
        node.send(json!({"op": "emit_ack", "i": 0, "event": event, "payload": payload}));
        node.answer("ACK")
    };
    assert_eq!(
        ask("online:get", json!({"data": ["u0", "u1", "u9"]})),
        json!([{"data": [["u0", true], ["u1", true], ["u9", false]]}])
    );
    let down = json!([{"error": "database unavailable", "message": "database unavailable"}]);
    assert_eq!(ask("online:set", json!({})), down);
    assert_eq!(ask("online:last_seen", json!({"data": ["u0"]})), down);

    // The database comes up: the retry loop connects it, and the same shards' service uses it.
    mongo.start();
    readyz(200);
    std::thread::sleep(std::time::Duration::from_millis(
        shardcast::realtime::online::ONLINE_SET_INTERVAL_MS_MIN,
    ));
    assert_eq!(ask("online:set", json!({})), json!([]));
    let seen = ask("online:last_seen", json!({"data": ["u0"]}));
    assert_eq!(seen[0]["data"][0]["user_id"], json!("u0"), "{seen}");
    assert_eq!(seen[0]["data"][0]["is_connected"], json!(true), "{seen}");
    node.send(json!({"op": "quit"}));
    assert_eq!(node.line(), "PASS");
}
