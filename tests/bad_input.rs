//! Bad input closes only the offending connection, with a precise logged reason, while another client keeps
//! exchanging events with the same server.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;

use common::*;

fn read_to_end(mut s: std::net::TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn garbage_http_gets_400_and_close() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    w.exchange(1);
    let mut s = connect(srv.addr);
    s.write_all(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_end(s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("Connection: close"));
    assert!(answer.contains(r#""code":400"#), "{answer}");
    srv.wait_for_log("HTTP request rejected");
    w.exchange(2);
}

#[test]
fn oversized_headers_get_431() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    let mut s = connect(srv.addr);
    let big = "x".repeat(20 * 1024);
    s.write_all(format!("GET / HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_end(s)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    w.exchange(1);
}

#[test]
fn truncated_websocket_frame_closes_that_connection() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    let (mut s, head, _) = ws_upgrade_raw(srv.addr, "/socket.io/?EIO=4&transport=websocket");
    assert_eq!(head.status, 101);
    // A masked text frame announcing 100 bytes, of which only 10 arrive before the end of the stream.
    let mut frame = vec![0x81, 0x80 | 100, 1, 2, 3, 4];
    frame.extend_from_slice(&[b'a'; 10]);
    s.write_all(&frame).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    read_to_end(s);
    srv.wait_for_log("truncated websocket frame");
    w.exchange(1);
}

#[test]
fn oversized_websocket_message_closes_with_1009() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text("40");
    ws.recv_text_skip_ping();
    ws.recv_text_skip_ping();
    let big = format!(r#"42["message","{}"]"#, "y".repeat(1_100_000));
    ws.send_text(&big);
    let close = loop {
        match ws.ws.read() {
            Ok(tungstenite::Message::Close(c)) => break c,
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    let close = close.expect("close frame with a code");
    assert_eq!(u16::from(close.code), 1009);
    srv.wait_for_log("websocket message too big");
    w.exchange(1);
}

#[test]
fn oversized_polling_payload_gets_413() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    let sid = polling_handshake(srv.addr, "/socket.io/");
    let body = vec![b'4'; 1_000_001];
    let r = request(
        srv.addr,
        "POST",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &body,
    );
    assert_eq!(r.status, 413);
    srv.wait_for_log("exceeds payload_bytes_max");
    let r = request(
        srv.addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        b"",
    );
    assert_eq!(r.status, 400);
    w.exchange(1);
}

#[test]
fn invalid_packets_close_that_session() {
    let srv = Server::conformance_quiet(&[]);
    let mut w = Witness::new(&srv);
    for (bad, reason) in [
        ("42{}", "invalid Socket.IO packet"),
        ("9", "invalid Engine.IO packet"),
        (r#"42["message""#, "invalid Socket.IO packet"),
    ] {
        let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=4&transport=websocket");
        ws.recv();
        ws.send_text("40");
        ws.recv_text_skip_ping();
        ws.recv_text_skip_ping();
        ws.send_text(bad);
        ws.until_closed();
        srv.wait_for_log(reason);
        w.exchange(1);
    }
    // invalid binary frame in a v3 session (must start with the type byte 4)
    let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=3&transport=websocket");
    ws.recv();
    ws.send_binary(&[7, 1, 2]);
    ws.until_closed();
    srv.wait_for_log("invalid Engine.IO binary packet");
    w.exchange(2);
}

#[test]
fn slow_reader_is_disconnected() {
    let srv = Server::conformance_quiet(&["--socket-queued-bytes-max", "65536"]);
    let mut w = Witness::new(&srv);
    let (s, head, _) = ws_upgrade_raw(srv.addr, "/socket.io/?EIO=4&transport=websocket");
    assert_eq!(head.status, 101);
    let mut tx = tungstenite::protocol::WebSocket::from_raw_socket(
        s.try_clone().unwrap(),
        tungstenite::protocol::Role::Client,
        None,
    );
    tx.send(tungstenite::Message::text("40")).unwrap();
    // Never read: every echo piles up in the server until the bound is hit.
    let payload = format!(r#"42["message","{}"]"#, "z".repeat(100_000));
    let mut sent = 0;
    while sent < 400 {
        if tx
            .send(tungstenite::Message::text(payload.clone()))
            .is_err()
        {
            break;
        }
        sent += 1;
        if sent % 20 == 0 && srv.log().contains("slow reader") {
            break;
        }
    }
    srv.wait_for_log("slow reader");
    s.shutdown(Shutdown::Both).ok();
    let metrics = request(srv.addr, "GET", "/metrics", b"").text();
    assert!(
        metrics.contains("shardcast_slow_reader_disconnects_total{shard=\"0\"} 1"),
        "{metrics}"
    );
    w.exchange(1);
}
