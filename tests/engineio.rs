//! The Engine.IO conformance behaviours (protocol.md, "Engine.IO suite"), on raw HTTP and raw websocket bytes
//! against `shardcast conformance` (echo at `/engine.io/`).

mod common;

use std::thread::sleep;
use std::time::Duration;

use common::*;

const PING_INTERVAL: Duration = Duration::from_millis(300);
const PING_TIMEOUT: Duration = Duration::from_millis(200);
const P: &str = "/engine.io/";

fn poll(addr: std::net::SocketAddr, sid: &str) -> HttpResponse {
    request(
        addr,
        "GET",
        &format!("{P}?EIO=4&transport=polling&sid={sid}"),
        b"",
    )
}

fn post(addr: std::net::SocketAddr, sid: &str, body: &[u8]) -> HttpResponse {
    request(
        addr,
        "POST",
        &format!("{P}?EIO=4&transport=polling&sid={sid}"),
        body,
    )
}

#[test]
fn polling_handshake_opens_a_session() {
    let srv = Server::conformance(1);
    let r = request(srv.addr, "GET", "/engine.io/?EIO=4&transport=polling", b"");
    assert_eq!(r.status, 200);
    let text = r.text();
    let v: serde_json::Value = serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "maxPayload",
            "pingInterval",
            "pingTimeout",
            "sid",
            "upgrades"
        ]
    );
    assert!(v["sid"].is_string());
    assert_eq!(v["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(v["pingInterval"], 300);
    assert_eq!(v["pingTimeout"], 200);
    assert_eq!(v["maxPayload"], 1000000);
}

#[test]
fn polling_handshake_rejects_invalid_eio() {
    let srv = Server::conformance_relaxed(1);
    assert_eq!(
        request(srv.addr, "GET", "/engine.io/?transport=polling", b"").status,
        400
    );
    assert_eq!(
        request(
            srv.addr,
            "GET",
            "/engine.io/?EIO=abc&transport=polling",
            b""
        )
        .status,
        400
    );
}

#[test]
fn polling_handshake_rejects_invalid_transport() {
    let srv = Server::conformance_relaxed(1);
    assert_eq!(
        request(srv.addr, "GET", "/engine.io/?EIO=4", b"").status,
        400
    );
    assert_eq!(
        request(srv.addr, "GET", "/engine.io/?EIO=4&transport=abc", b"").status,
        400
    );
}

#[test]
fn polling_handshake_rejects_invalid_method() {
    let srv = Server::conformance_relaxed(1);
    assert_eq!(
        request(srv.addr, "POST", "/engine.io/?EIO=4&transport=polling", b"").status,
        400
    );
    assert_eq!(
        request(srv.addr, "PUT", "/engine.io/?EIO=4&transport=polling", b"").status,
        400
    );
}

#[test]
fn websocket_handshake_opens_a_session() {
    let srv = Server::conformance(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    let WsEvent::Text(t) = ws.recv() else {
        panic!("no open packet")
    };
    let v: serde_json::Value = serde_json::from_str(t.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(v["upgrades"], serde_json::json!([]));
    assert_eq!(v["pingInterval"], 300);
    assert_eq!(v["pingTimeout"], 200);
    assert_eq!(v["maxPayload"], 1000000);
    assert!(v["sid"].is_string());
}

#[test]
fn websocket_handshake_refused_with_invalid_eio_or_transport() {
    let srv = Server::conformance_relaxed(1);
    for q in [
        "/engine.io/?transport=websocket",
        "/engine.io/?EIO=abc&transport=websocket",
        "/engine.io/?EIO=4",
        "/engine.io/?EIO=4&transport=abc",
    ] {
        let (_s, head, _) = ws_upgrade_raw(srv.addr, q);
        assert_eq!(head.status, 400, "{q}");
    }
}

#[test]
fn polling_one_text_packet_echoed() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    let r = post(srv.addr, &sid, b"4hello");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = poll(srv.addr, &sid);
    assert_eq!((r.status, r.text().as_str()), (200, "4hello"));
}

#[test]
fn polling_several_text_packets_echoed() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    assert_eq!(
        post(srv.addr, &sid, b"4test1\x1e4test2\x1e4test3").text(),
        "ok"
    );
    assert_eq!(poll(srv.addr, &sid).text(), "4test1\x1e4test2\x1e4test3");
}

#[test]
fn polling_text_and_binary_packets_echoed() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    assert_eq!(post(srv.addr, &sid, b"4hello\x1ebAQIDBA==").text(), "ok");
    assert_eq!(poll(srv.addr, &sid).text(), "4hello\x1ebAQIDBA==");
}

#[test]
fn polling_invalid_packet_closes_session() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    assert_eq!(post(srv.addr, &sid, b"abc").status, 400);
    assert_eq!(poll(srv.addr, &sid).status, 400);
}

#[test]
fn polling_duplicate_poll_closes_session() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    let path = format!("{P}?EIO=4&transport=polling&sid={sid}");
    let mut a = connect(srv.addr);
    send_request(&mut a, "GET", &path, &[], b"");
    let mut b = connect(srv.addr);
    send_request(&mut b, "GET", &path, &[], b"");
    // Whichever GET the server saw second is the duplicate: it gets 400, the pending one gets `1`.
    let ra = read_response(&mut a, &mut Vec::new()).unwrap();
    let rb = read_response(&mut b, &mut Vec::new()).unwrap();
    let mut answers = [(ra.status, ra.text()), (rb.status, rb.text())];
    answers.sort();
    assert_eq!(answers[0], (200, "1".to_string()));
    assert_eq!(answers[1].0, 400);
    assert_eq!(poll(srv.addr, &sid).status, 400);
}

#[test]
fn polling_cancelled_poll_closes_session() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    let mut pending = connect(srv.addr);
    send_request(
        &mut pending,
        "GET",
        &format!("{P}?EIO=4&transport=polling&sid={sid}"),
        &[],
        b"",
    );
    drop(pending);
    // The server reads the GET, then the end of its connection, and closes the session. A GET arriving before
    // that is a duplicate poll, which closes the session as well: either way the answer is 400.
    assert_eq!(poll(srv.addr, &sid).status, 400);
    assert_eq!(poll(srv.addr, &sid).status, 400);
}

#[test]
fn websocket_text_packet_echoed() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
}

#[test]
fn websocket_binary_packet_echoed() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_binary(&[1, 2, 3, 4]);
    assert_eq!(ws.recv_skip_ping(), WsEvent::Binary(vec![1, 2, 3, 4]));
}

#[test]
fn websocket_invalid_packet_closes() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text("abc");
    ws.until_closed();
}

#[test]
fn polling_heartbeat_ping_pong() {
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    for _ in 0..3 {
        let r = poll(srv.addr, &sid);
        assert_eq!((r.status, r.text().as_str()), (200, "2"));
        assert_eq!(post(srv.addr, &sid, b"3").status, 200);
    }
}

#[test]
fn polling_ping_timeout_closes_session() {
    let srv = Server::conformance(1);
    let sid = polling_handshake(srv.addr, P);
    // Closed by pingInterval + pingTimeout after the handshake (not later: heartbeat coalescing rounds down).
    sleep(PING_INTERVAL + PING_TIMEOUT);
    assert_eq!(poll(srv.addr, &sid).status, 400);
}

#[test]
fn polling_ping_timeout_closes_session_by_the_spec_deadline_for_posts_too() {
    let srv = Server::conformance(1);
    for _ in 0..5 {
        let sid = polling_handshake(srv.addr, P);
        sleep(PING_INTERVAL + PING_TIMEOUT);
        assert_eq!(post(srv.addr, &sid, b"4late").status, 400);
    }
}

#[test]
fn websocket_heartbeat_ping_pong() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    ws.recv();
    for _ in 0..3 {
        assert_eq!(ws.recv(), WsEvent::Text("2".into()), "{}", srv.log());
        ws.send_text("3");
    }
}

#[test]
fn websocket_ping_timeout_closes() {
    let srv = Server::conformance(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    let seen = ws.until_closed();
    assert!(seen[0].starts_with('0'));
    assert_eq!(&seen[1..], ["2", "1"]);
}

#[test]
fn polling_forced_close() {
    let srv = Server::conformance_relaxed(1);
    // The pending GET and the closing POST travel on two connections; if the POST happens to be served first the
    // GET finds no session (400) and we try again with a fresh session. Any other outcome fails.
    let mut answered_with_noop = false;
    for _ in 0..20 {
        let sid = polling_handshake(srv.addr, P);
        let mut pending = connect(srv.addr);
        send_request(
            &mut pending,
            "GET",
            &format!("{P}?EIO=4&transport=polling&sid={sid}"),
            &[],
            b"",
        );
        sleep(Duration::from_millis(20));
        assert_eq!(post(srv.addr, &sid, b"1").text(), "ok");
        let r = read_response(&mut pending, &mut Vec::new()).unwrap();
        assert_eq!(poll(srv.addr, &sid).status, 400);
        if r.status == 200 {
            assert_eq!(r.text(), "6");
            answered_with_noop = true;
            break;
        }
        assert_eq!(r.status, 400);
    }
    assert!(answered_with_noop, "the pending GET never saw the close");
}

#[test]
fn websocket_forced_close() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text("1");
    ws.until_closed();
}

fn upgrade(srv: &Server) -> (String, Ws) {
    let sid = polling_handshake(srv.addr, P);
    let mut ws = Ws::connect(
        srv.addr,
        &format!("{P}?EIO=4&transport=websocket&sid={sid}"),
    );
    ws.send_text("2probe");
    assert_eq!(ws.recv(), WsEvent::Text("3probe".into()));
    (sid, ws)
}

#[test]
fn upgrade_from_polling_to_websocket() {
    let srv = Server::conformance_relaxed(1);
    let (sid, mut ws) = upgrade(&srv);
    let r = poll(srv.addr, &sid);
    assert_eq!((r.status, r.text().as_str()), (200, "6"));
    ws.send_text("5");
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
}

#[test]
fn upgraded_sid_ignores_http_requests() {
    let srv = Server::conformance_relaxed(1);
    let (sid, mut ws) = upgrade(&srv);
    ws.send_text("5");
    // the echo of this message proves "5" was processed before the poll below
    ws.send_text("4sync");
    assert_eq!(ws.recv_text_skip_ping(), "4sync");
    assert_eq!(poll(srv.addr, &sid).status, 400);
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
}

#[test]
fn upgraded_sid_ignores_second_websocket() {
    let srv = Server::conformance_relaxed(1);
    let (sid, mut ws) = upgrade(&srv);
    ws.send_text("5");
    ws.send_text("4sync");
    assert_eq!(ws.recv_text_skip_ping(), "4sync");
    // Accepted at the HTTP level (as the official suite expects), then closed at once: it gets no packet, and
    // neither takes the session over nor closes it.
    let mut second = Ws::connect(
        srv.addr,
        &format!("{P}?EIO=4&transport=websocket&sid={sid}"),
    );
    assert_eq!(second.until_closed(), Vec::<String>::new());
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
    assert_eq!(poll(srv.addr, &sid).status, 400, "still upgraded");
}

#[test]
fn second_websocket_during_the_upgrade_is_closed_and_the_upgrade_completes() {
    let srv = Server::conformance_relaxed(1);
    let (sid, mut ws) = upgrade(&srv);
    // After the probe, before "5": the session is upgrading on the first websocket.
    let mut second = Ws::connect(
        srv.addr,
        &format!("{P}?EIO=4&transport=websocket&sid={sid}"),
    );
    assert_eq!(second.until_closed(), Vec::<String>::new());
    ws.send_text("5");
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
}

#[test]
fn v3_polling_handshake_ping_and_echo() {
    let srv = Server::conformance_relaxed(1);
    let r = request(
        srv.addr,
        "GET",
        "/engine.io/?EIO=3&transport=polling&b64=1",
        b"",
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    let (len, rest) = text.split_once(':').expect("v3 length prefix");
    let json = rest.strip_prefix('0').unwrap();
    assert_eq!(len.parse::<usize>().unwrap(), json.len() + 1);
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(v.get("maxPayload").is_none());
    let sid = v["sid"].as_str().unwrap().to_string();
    let path = format!("/engine.io/?EIO=3&transport=polling&b64=1&sid={sid}");
    assert_eq!(request(srv.addr, "POST", &path, b"1:2").text(), "ok");
    assert_eq!(request(srv.addr, "GET", &path, b"").text(), "1:3");
    assert_eq!(request(srv.addr, "POST", &path, b"6:4hello").text(), "ok");
    assert_eq!(request(srv.addr, "GET", &path, b"").text(), "6:4hello");
}

#[test]
fn v3_websocket_client_pings() {
    let srv = Server::conformance_relaxed(1);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=3&transport=websocket");
    ws.recv();
    ws.send_text("2");
    assert_eq!(ws.recv(), WsEvent::Text("3".into()));
    ws.send_binary(&[4, 9, 8]);
    assert_eq!(ws.recv(), WsEvent::Binary(vec![4, 9, 8]));
}

#[test]
fn upgraded_sid_refuses_polling_posts_too() {
    let srv = Server::conformance_relaxed(1);
    let (sid, mut ws) = upgrade(&srv);
    ws.send_text("5");
    ws.send_text("4sync");
    assert_eq!(ws.recv_text_skip_ping(), "4sync");
    // A POST with the sid of an upgraded session is refused and delivers nothing.
    assert_eq!(post(srv.addr, &sid, b"4intruder").status, 400);
    ws.send_text("4hello");
    assert_eq!(ws.recv_text_skip_ping(), "4hello");
}

#[test]
fn a_pong_sent_just_inside_ping_timeout_keeps_the_session() {
    // pingTimeout 2 s: heartbeat coalescing must not shorten it (pings may come early, the pong deadline may not).
    let srv = Server::start(&["conformance", "--shards", "1", "--ping-timeout-ms", "2000"]);
    let mut ws = Ws::connect(srv.addr, "/engine.io/?EIO=4&transport=websocket");
    assert!(matches!(ws.recv(), WsEvent::Text(t) if t.starts_with('0')));
    for _ in 0..2 {
        assert_eq!(ws.recv(), WsEvent::Text("2".into()), "{}", srv.log());
        sleep(Duration::from_millis(1_800));
        ws.send_text("3");
    }
    assert_eq!(ws.recv(), WsEvent::Text("2".into()), "{}", srv.log());
}

#[test]
fn v3_websocket_open_packet_comes_a_little_after_the_101() {
    // The official v3 suite listens for the open packet only after the websocket's `open` event has been handled,
    // so it misses one that arrives in the same read as the 101: the conformance server sends it 100 ms later
    // (`eio3_websocket_open_delay_ms`). It cannot arrive sooner than that after the request was sent.
    let srv = Server::conformance(1);
    for _ in 0..3 {
        let t0 = std::time::Instant::now();
        let (s, head, rest) = ws_upgrade_raw(srv.addr, "/engine.io/?EIO=3&transport=websocket");
        assert_eq!(head.status, 101);
        let mut ws = Ws {
            ws: tungstenite::protocol::WebSocket::from_partially_read(
                s,
                rest,
                tungstenite::protocol::Role::Client,
                None,
            ),
        };
        assert!(matches!(ws.recv(), WsEvent::Text(t) if t.starts_with('0')));
        assert!(
            t0.elapsed() >= Duration::from_millis(30),
            "{:?}",
            t0.elapsed()
        );
        ws.send_text("4hello");
        assert_eq!(ws.recv(), WsEvent::Text("4hello".into()));
    }
}

#[test]
fn a_client_close_frame_is_answered_with_a_close_frame() {
    let srv = Server::conformance_relaxed(1);
    for q in [
        "/engine.io/?EIO=4&transport=websocket",
        "/engine.io/?EIO=3&transport=websocket",
    ] {
        let mut ws = Ws::connect(srv.addr, q);
        assert!(matches!(ws.recv(), WsEvent::Text(t) if t.starts_with('0')));
        ws.ws.close(None).expect("send close");
        // tungstenite ends with ConnectionClosed only once the closing handshake completed; an end of stream
        // without the server's close frame is ResetWithoutClosingHandshake.
        let end = loop {
            match ws.ws.read() {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(end, tungstenite::Error::ConnectionClosed),
            "{q}: {end:?}"
        );
    }
}

#[test]
fn a_poll_that_arrives_just_after_the_closing_post_gets_a_noop_then_the_sid_is_gone() {
    // The official suites send a poll and a closing POST at once on two connections; whichever the server sees
    // first, the poll is answered with `6` and the session is gone afterwards.
    let srv = Server::conformance_relaxed(1);
    let sid = polling_handshake(srv.addr, P);
    assert_eq!(post(srv.addr, &sid, b"1").text(), "ok");
    let r = poll(srv.addr, &sid);
    assert_eq!((r.status, r.text().as_str()), (200, "6"));
    assert_eq!(poll(srv.addr, &sid).status, 400);
    assert_eq!(post(srv.addr, &sid, b"4late").status, 400);
    // After the grace, no poll gets anything but 400.
    let sid = polling_handshake(srv.addr, P);
    assert_eq!(post(srv.addr, &sid, b"1").text(), "ok");
    sleep(Duration::from_millis(300));
    assert_eq!(poll(srv.addr, &sid).status, 400);
}
