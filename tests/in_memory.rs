//! `ShardCtx::connect_in_memory`: real Socket.IO sessions on the websocket transport without a network. The bytes
//! drained from a connection must be exactly the websocket frames a client would read: checked against frames built
//! by hand here (open packet, CONNECT replies of both protocol revisions, a room broadcast, a binary event, the close
//! packet and close frame), plus refused packets and the end of the transport.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardcast::proto::{EioVersion, EncodedMessage, RawJson};
use shardcast::server::{
    self, AppFactory, InMemoryConnection, InMemoryError, ServerConfig, ShardApp, ShardCtx, SocketIo,
};

/// One unmasked, final websocket frame (server to client), built by hand from RFC 6455 for payloads under 126 bytes.
fn ws_frame(binary: bool, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mut f = vec![if binary { 0x82 } else { 0x81 }, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

fn text(payload: &str) -> Vec<u8> {
    ws_frame(false, payload.as_bytes())
}

/// The close frame the server writes after closing a session itself: code 1000, no reason.
const NORMAL_CLOSE: [u8; 4] = [0x88, 0x02, 0x03, 0xe8];

/// `on_disconnect` reasons seen on the shard.
#[derive(Default)]
struct Disconnects(RefCell<Vec<String>>);

fn app(shard: &Rc<ShardCtx>) -> ShardApp {
    shard.set_state(Disconnects::default());
    let mut io = SocketIo::new();
    io.namespace("/")
        .on("join", |socket, event| {
            let (room,): (String,) = event.args.parse().expect("join takes a room name");
            socket.join(&room);
        })
        .on("say", |socket, event| {
            let msg = EncodedMessage::event_raw("/", "said", &event.args);
            socket.shard().broadcast("/", "lobby", &msg);
        })
        .on("blob", |socket, _event| {
            let args = RawJson::new(r#"[{"_placeholder":true,"num":0}]"#).expect("json");
            socket.emit_binary("blob", args, vec![vec![1, 2, 3]]);
        })
        .on("bye", |socket, _event| socket.close_session())
        .on_disconnect(|socket, reason| {
            let seen = socket.shard().state::<Disconnects>().expect("set above");
            seen.0.borrow_mut().push(reason.to_owned());
        });
    ShardApp {
        socketio: Some(io),
        router: None,
    }
}

/// The socket id in a v5 CONNECT reply frame `40{"sid":"<id>"}`.
fn socket_id(frame: &[u8]) -> String {
    let payload = std::str::from_utf8(&frame[2..]).expect("text frame");
    let id = payload
        .strip_prefix("40{\"sid\":\"")
        .and_then(|r| r.strip_suffix("\"}"))
        .unwrap_or_else(|| panic!("not a CONNECT reply: {payload}"));
    id.to_owned()
}

fn scenario(shard: &Rc<ShardCtx>) {
    // Engine.IO v4: the open packet, then the CONNECT reply once the client connects.
    let a: InMemoryConnection = shard.connect_in_memory(EioVersion::V4);
    assert_eq!(a.version(), EioVersion::V4);
    assert_eq!(a.sid().len(), shardcast::server::sid::SID_LEN);
    assert_eq!(
        a.drain(),
        text(&format!(
            r#"0{{"sid":"{}","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}}"#,
            a.sid()
        ))
    );
    assert_eq!(a.drain(), Vec::<u8>::new(), "a drain empties the queue");
    a.feed_text("40").expect("CONNECT");
    let reply = a.drain();
    let id = socket_id(&reply);
    assert_eq!(id.len(), shardcast::server::sid::SID_LEN);
    assert_ne!(id, a.sid(), "socket id and session id differ");
    assert_eq!(reply, text(&format!(r#"40{{"sid":"{id}"}}"#)));
    a.feed_text(r#"42["join","lobby"]"#).expect("join");
    assert_eq!(a.drain(), Vec::<u8>::new());

    // Engine.IO v3 (Socket.IO v4): no maxPayload, and the implicit CONNECT to `/` right after the open packet.
    let b = shard.connect_in_memory(EioVersion::V3);
    let mut expected = text(&format!(
        r#"0{{"sid":"{}","upgrades":[],"pingInterval":25000,"pingTimeout":20000}}"#,
        b.sid()
    ));
    expected.extend(text("40"));
    assert_eq!(b.drain(), expected);
    b.feed_text(r#"42["join","lobby"]"#).expect("join");

    // Connected but in no room.
    let c = shard.connect_in_memory(EioVersion::V4);
    c.feed_text("40").expect("CONNECT");
    c.drain();
    assert_eq!(shard.rooms().len("/", "lobby"), 2);

    // A room broadcast: the same frame for both members of both revisions, nothing for the other socket.
    a.feed_text(r#"42["say","hi"]"#).expect("say");
    let said = text(r#"42["said","hi"]"#);
    assert_eq!(a.drain(), said);
    assert_eq!(b.drain(), said);
    assert_eq!(c.drain(), Vec::<u8>::new());

    // A binary event: a text frame with the placeholder, then the attachment (v3 prefixes the message type 4).
    a.feed_text(r#"42["blob"]"#).expect("blob");
    let mut expected = text(r#"451-["blob",{"_placeholder":true,"num":0}]"#);
    expected.extend(ws_frame(true, &[1, 2, 3]));
    assert_eq!(a.drain(), expected);
    b.feed_text(r#"42["blob"]"#).expect("blob");
    let mut expected = text(r#"451-["blob",{"_placeholder":true,"num":0}]"#);
    expected.extend(ws_frame(true, &[4, 1, 2, 3]));
    assert_eq!(b.drain(), expected);

    // An invalid packet closes the session: Engine.IO close packet, then the close frame; later input is refused.
    match c.feed_text("x") {
        Err(InMemoryError::Refused(reason)) => {
            assert!(reason.starts_with("invalid Engine.IO packet"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(c.is_closed());
    let mut expected = text("1");
    expected.extend(NORMAL_CLOSE);
    assert_eq!(c.drain(), expected);
    assert_eq!(c.drain(), Vec::<u8>::new(), "nothing after the close frame");
    assert_eq!(c.feed_text("40"), Err(InMemoryError::Closed));

    // The server closes a session from a handler.
    a.feed_text(r#"42["bye"]"#).expect("bye");
    let mut out = vec![0xaa]; // drain_into appends
    assert_eq!(a.drain_into(&mut out), 7);
    let mut expected = vec![0xaa];
    expected.extend(text("1"));
    expected.extend(NORMAL_CLOSE);
    assert_eq!(out, expected);

    // The client's transport ends: the session closes with `transport close`, nothing is written any more.
    b.close_transport();
    assert!(b.is_closed());
    assert_eq!(b.drain(), Vec::<u8>::new());
    assert_eq!(shard.rooms().len("/", "lobby"), 0);

    // Dropping a connection ends its transport too.
    let d = shard.connect_in_memory(EioVersion::V4);
    d.feed_text("40").expect("CONNECT");
    drop(d);

    // on_disconnect saw each end: c refused a packet, the server closed a, b's and d's transports ended.
    let seen = shard.state::<Disconnects>().expect("set by the app");
    let seen = seen.0.borrow();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen[0].starts_with("invalid Engine.IO packet"), "{seen:?}");
    assert_eq!(
        seen[1..],
        [
            "server closed the session",
            "transport close",
            "transport close"
        ]
    );
}

#[test]
fn in_memory_connection_drains_the_exact_websocket_frames() {
    let (done_tx, done_rx) = mpsc::channel::<Result<(), String>>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let factory: AppFactory = Arc::new(move |shard: &Rc<ShardCtx>| {
        let built = app(shard);
        let (shard, done_tx) = (shard.clone(), done_tx.clone());
        glommio::spawn_local(async move {
            // glommio polls a new task at once: yield so the factory returns and the shard installs the app first.
            futures_lite::future::yield_now().await;
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scenario(&shard)))
                    .map_err(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                            .unwrap_or_else(|| "scenario panicked".to_owned())
                    });
            if let Some(tx) = done_tx.lock().expect("sender").take() {
                let _ = tx.send(outcome);
            }
        })
        .detach();
        built
    });
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        shards: 1,
        pin_shards: false,
        ..ServerConfig::default()
    };
    let handle = server::start(config, factory).expect("start");
    // A safety net so a broken server fails instead of hanging; not a timing assertion.
    let outcome = done_rx.recv_timeout(Duration::from_secs(60));
    handle.shutdown();
    handle.join().expect("server stops");
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(msg)) => panic!("{msg}"),
        Err(e) => panic!("the scenario did not report: {e}"),
    }
}
