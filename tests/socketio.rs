//! The Socket.IO conformance behaviours (protocol.md, "Socket.IO suite") on raw websocket bytes against
//! `shardcast conformance` (`/socket.io/`).

mod common;

use common::*;

const WS: &str = "/socket.io/?EIO=4&transport=websocket";

fn open(srv: &Server) -> Ws {
    let mut ws = Ws::connect(srv.addr, WS);
    match ws.recv() {
        WsEvent::Text(t) => assert!(t.starts_with('0'), "{t}"),
        other => panic!("{other:?}"),
    }
    ws
}

/// Engine.IO open, `40`, CONNECT reply and the `auth` event.
fn connected(srv: &Server) -> Ws {
    let mut ws = open(srv);
    ws.send_text("40");
    assert!(ws.recv_text_skip_ping().starts_with("40"));
    assert_eq!(ws.recv_text_skip_ping(), r#"42["auth",{}]"#);
    ws
}

fn connect_reply_sid(text: &str, prefix: &str) {
    let v: serde_json::Value =
        serde_json::from_str(text.strip_prefix(prefix).expect(prefix)).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["sid"]);
    assert!(v["sid"].is_string());
}

#[test]
fn connect_to_main_namespace() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text("40");
    connect_reply_sid(&ws.recv_text_skip_ping(), "40");
    assert_eq!(ws.recv_text_skip_ping(), r#"42["auth",{}]"#);
}

#[test]
fn connect_to_main_namespace_with_payload() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text(r#"40{"token":"123"}"#);
    connect_reply_sid(&ws.recv_text_skip_ping(), "40");
    assert_eq!(ws.recv_text_skip_ping(), r#"42["auth",{"token":"123"}]"#);
}

#[test]
fn connect_to_custom_namespace() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text("40/custom,");
    connect_reply_sid(&ws.recv_text_skip_ping(), "40/custom,");
    assert_eq!(ws.recv_text_skip_ping(), r#"42/custom,["auth",{}]"#);
}

#[test]
fn connect_to_custom_namespace_with_payload() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text(r#"40/custom,{"token":"abc"}"#);
    connect_reply_sid(&ws.recv_text_skip_ping(), "40/custom,");
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"42/custom,["auth",{"token":"abc"}]"#
    );
}

#[test]
fn unknown_namespace_is_refused() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text("40/random");
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"44/random,{"message":"Invalid namespace"}"#
    );
}

#[test]
fn invalid_handshake_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    ws.send_text("4abc");
    ws.until_closed();
}

#[test]
fn no_handshake_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = open(&srv);
    // answer pings so that only the connect timeout can close the session
    loop {
        match ws.recv() {
            WsEvent::Text(t) if t == "2" => ws.send_text("3"),
            WsEvent::Text(t) if t == "1" => {}
            WsEvent::Closed => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(srv.log().contains("connect timeout"), "{}", srv.log());
}

#[test]
fn disconnect_from_main_namespace() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text("41");
    // the session stays open: the next packet is a heartbeat
    assert_eq!(ws.recv(), WsEvent::Text("2".into()));
}

#[test]
fn connect_then_disconnect_from_custom_namespace() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text("40/custom");
    assert!(ws.recv_text_skip_ping().starts_with("40/custom,"));
    assert_eq!(ws.recv_text_skip_ping(), r#"42/custom,["auth",{}]"#);
    ws.send_text("41/custom");
    ws.send_text(r#"42["message","message to main namespace"]"#);
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"42["message-back","message to main namespace"]"#
    );
}

#[test]
fn plain_text_event() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text(r#"42["message",1,"2",{"3":[true]}]"#);
    assert_eq!(
        ws.recv_text_skip_ping(),
        r#"42["message-back",1,"2",{"3":[true]}]"#
    );
}

#[test]
fn event_with_binary_attachments() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text(r#"452-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
    ws.send_binary(&[1, 2, 3]);
    ws.send_binary(&[4, 5, 6]);
    assert_eq!(
        ws.recv_skip_ping(),
        WsEvent::Text(
            r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
                .into()
        )
    );
    assert_eq!(ws.recv_skip_ping(), WsEvent::Binary(vec![1, 2, 3]));
    assert_eq!(ws.recv_skip_ping(), WsEvent::Binary(vec![4, 5, 6]));
}

#[test]
fn event_with_ack() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text(r#"42456["message-with-ack",1,"2",{"3":[false]}]"#);
    assert_eq!(ws.recv_text_skip_ping(), r#"43456[1,"2",{"3":[false]}]"#);
}

#[test]
fn event_with_binary_attachments_and_ack() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text(r#"452-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
    ws.send_binary(&[1, 2, 3]);
    ws.send_binary(&[4, 5, 6]);
    assert_eq!(
        ws.recv_skip_ping(),
        WsEvent::Text(
            r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#.into()
        )
    );
    assert_eq!(ws.recv_skip_ping(), WsEvent::Binary(vec![1, 2, 3]));
    assert_eq!(ws.recv_skip_ping(), WsEvent::Binary(vec![4, 5, 6]));
}

#[test]
fn unknown_packet_type_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text("4abc");
    ws.until_closed();
}

#[test]
fn invalid_payload_format_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text("42{}");
    ws.until_closed();
}

#[test]
fn invalid_ack_id_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = connected(&srv);
    ws.send_text(r#"42abc["message-with-ack",1,"2",{"3":[false]}]"#);
    ws.until_closed();
}

#[test]
fn v4_protocol_client_is_connected_to_main_namespace_implicitly() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=3&transport=websocket");
    assert!(matches!(ws.recv(), WsEvent::Text(t) if t.starts_with('0')));
    assert_eq!(ws.recv(), WsEvent::Text("40".into()));
    assert_eq!(ws.recv(), WsEvent::Text(r#"42["auth",{}]"#.into()));
    ws.send_text("40/random,");
    assert_eq!(
        ws.recv(),
        WsEvent::Text(r#"44/random,"Invalid namespace""#.into())
    );
    ws.send_text(r#"42["message",1]"#);
    assert_eq!(ws.recv(), WsEvent::Text(r#"42["message-back",1]"#.into()));
}

#[test]
fn healthz_and_metrics() {
    let srv = Server::conformance_relaxed(2);
    let r = request(srv.addr, "GET", "/healthz", b"");
    assert_eq!(r.status, 200);
    let _ws = connected(&srv);
    let r = request(srv.addr, "GET", "/metrics", b"");
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(text.contains("# TYPE shardcast_sessions gauge"));
    assert!(text.contains("shardcast_sessions{shard=\"1\",transport=\"websocket\"}"));
    let ws_sessions: i64 = text
        .lines()
        .filter(|l| l.starts_with("shardcast_sessions{") && l.contains("websocket"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(ws_sessions, 1);
    assert_eq!(request(srv.addr, "GET", "/nope", b"").status, 404);
    assert_eq!(request(srv.addr, "POST", "/metrics", b"").status, 405);
}
