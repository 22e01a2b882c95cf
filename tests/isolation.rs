//! Panics in application code end one socket, never the shard (issue 9 item 8), and the shard-wide shutdown waker
//! list holds only live waiters, not one per connection ever served (item 9). In-process, one shard, so that every
//! request meets the same shard state.

mod common;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use shardcast::proto::RawJson;
use shardcast::server::{
    Event, Request, Response, ResponseFuture, Router, ShardApp, ShardCtx, Socket, SocketIo,
};

struct Api;

impl Router for Api {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let shard = shard.clone();
        match request.path.as_str() {
            "/t/waiters" => Some(Box::pin(async move {
                Response::text(200, shard.shutdown_waiters().to_string())
            })),
            "/t/timer-panic" => Some(Box::pin(async move {
                shard.schedule(Duration::from_millis(1), || {
                    panic!("timer callback bug (expected by the test)")
                });
                Response::text(200, "scheduled")
            })),
            "/t/mesh-panic" => Some(Box::pin(async move {
                let sent = shard.send_to(shard.id(), |_ctx: &Rc<ShardCtx>| {
                    panic!("shard message bug (expected by the test)")
                });
                Response::text(200, format!("{sent:?}"))
            })),
            _ => None,
        }
    }
}

fn app(_shard: &Rc<ShardCtx>) -> ShardApp {
    let mut io = SocketIo::new();
    io.namespace("/")
        .on("boom", |_socket: &Socket, _event: Event| {
            panic!("event handler bug (expected by the test)")
        })
        .on("ping", |_socket: &Socket, event: Event| {
            if let Some(ack) = event.ack {
                ack.send(RawJson::new("[\"pong\"]".to_owned()).unwrap());
            }
        });
    io.namespace("/refuse")
        .on_connect(|_socket: Socket, _auth: Option<RawJson>| async move {
            panic!("connect handler bug (expected by the test)")
        });
    ShardApp {
        socketio: Some(io),
        router: Some(Rc::new(Api)),
    }
}

fn connected(addr: SocketAddr, nsp: &str) -> Ws {
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text(&format!("40{nsp}"));
    ws
}

fn ping(ws: &mut Ws, id: u32) {
    ws.send_text(&format!(r#"42{id}["ping"]"#));
    assert_eq!(ws.recv_text_skip_ping(), format!(r#"43{id}["pong"]"#));
}

fn metric(addr: SocketAddr, series: &str) -> u64 {
    let r = request(addr, "GET", "/metrics", b"");
    r.text()
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {}", r.text()))
}

#[test]
fn a_panic_ends_one_socket_and_the_shard_goes_on() {
    let srv = InProcess::start(1, Arc::new(app));
    let mut witness = connected(srv.addr, "");
    assert!(witness.recv_text_skip_ping().starts_with("40{\"sid\""));
    ping(&mut witness, 1);

    // An event handler panics: that socket is disconnected from its namespace, the session stays.
    let mut victim = connected(srv.addr, "");
    assert!(victim.recv_text_skip_ping().starts_with("40{\"sid\""));
    victim.send_text(r#"42["boom"]"#);
    assert_eq!(victim.recv_text_skip_ping(), "41");
    ping(&mut witness, 2);

    // A connect handler panics: the CONNECT is refused.
    let mut refused = connected(srv.addr, "/refuse,");
    let reply = refused.recv_text_skip_ping();
    assert!(reply.starts_with("44/refuse,"), "{reply}");
    ping(&mut witness, 3);

    // A timer callback and a shard message panic: logged, counted, nothing else happens.
    assert_eq!(request(srv.addr, "GET", "/t/timer-panic", b"").status, 200);
    assert_eq!(
        request(srv.addr, "GET", "/t/mesh-panic", b"").text(),
        "Ok(())"
    );
    std::thread::sleep(Duration::from_millis(200));
    ping(&mut witness, 4);
    let site = |s: &str| {
        metric(
            srv.addr,
            &format!("shardcast_panics_total{{shard=\"0\",site=\"{s}\"}}"),
        )
    };
    assert_eq!(site("handler"), 2);
    assert_eq!(site("timer"), 1);
    assert_eq!(site("mesh"), 1);
    assert_eq!(site("connection"), 0);
}

#[test]
fn the_shutdown_waker_list_does_not_grow_with_connections_served() {
    let srv = InProcess::start(1, Arc::new(app));
    let waiters = || -> usize {
        request(srv.addr, "GET", "/t/waiters", b"")
            .text()
            .parse()
            .unwrap()
    };
    let base = waiters();
    // Each of these connections sits idle between requests (waiting on the shutdown signal), then goes away.
    for _ in 0..300 {
        let mut s = connect(srv.addr);
        send_request(&mut s, "GET", "/healthz", &[], b"");
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
        // the server is now waiting for this connection's next request
        drop(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = waiters();
    assert!(
        after <= base + 2,
        "{base} waiters before 300 connections, {after} after"
    );
    // And live idle connections are counted while they live.
    let idle: Vec<_> = (0..20)
        .map(|_| {
            let mut s = connect(srv.addr);
            send_request(&mut s, "GET", "/healthz", &[], b"");
            let mut buf = Vec::new();
            assert_eq!(read_response(&mut s, &mut buf).unwrap().status, 200);
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert!(waiters() >= base + 20);
    drop(idle);
}
