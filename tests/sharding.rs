//! Two shards, 200 polling-only Socket.IO clients on fresh connections (so the kernel spreads their requests over
//! both shards and requests reach the shard that does not own their session): every event is answered exactly
//! once, in order.

mod common;

use std::net::SocketAddr;

use common::*;

const CLIENTS: usize = 200;
const EVENTS: usize = 5;

fn split_payload(body: &str) -> Vec<String> {
    body.split('\u{1e}').map(str::to_owned).collect()
}

fn client(addr: SocketAddr, n: usize) -> String {
    let sid = polling_handshake(addr, "/socket.io/");
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    assert_eq!(request(addr, "POST", &path, b"40").text(), "ok");
    let mut packets: Vec<String> = Vec::new();
    // CONNECT reply and the `auth` event
    while packets.len() < 2 {
        let r = request(addr, "GET", &path, b"");
        assert_eq!(r.status, 200, "client {n}: {}", r.text());
        packets.extend(split_payload(&r.text()).into_iter().filter(|p| p != "2"));
    }
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert_eq!(packets[1], r#"42["auth",{}]"#);
    for i in 0..EVENTS {
        let body = format!(r#"42["message",{n},{i}]"#);
        let r = request(addr, "POST", &path, body.as_bytes());
        assert_eq!(r.text(), "ok", "client {n} event {i}");
    }
    let mut got: Vec<String> = Vec::new();
    while got.len() < EVENTS {
        let r = request(addr, "GET", &path, b"");
        assert_eq!(r.status, 200, "client {n}: {}", r.text());
        for p in split_payload(&r.text()) {
            if p == "2" {
                assert_eq!(request(addr, "POST", &path, b"3").text(), "ok");
            } else {
                got.push(p);
            }
        }
    }
    let expected: Vec<String> = (0..EVENTS)
        .map(|i| format!(r#"42["message-back",{n},{i}]"#))
        .collect();
    assert_eq!(
        got, expected,
        "client {n}: lost, duplicated or reordered packets"
    );
    sid
}

#[test]
fn two_hundred_polling_clients_on_two_shards() {
    let srv = Server::start(&[
        "conformance",
        "--shards",
        "2",
        "--ping-interval-ms",
        "25000",
        "--ping-timeout-ms",
        "20000",
    ]);
    let addr = srv.addr;
    let handles: Vec<_> = (0..CLIENTS)
        .map(|n| std::thread::spawn(move || client(addr, n)))
        .collect();
    let sids: Vec<String> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    // Sessions were created on both shards (the sid's first two characters name the owner).
    assert!(
        sids.iter().any(|s| s.starts_with("00")),
        "no session on shard 0"
    );
    assert!(
        sids.iter().any(|s| s.starts_with("01")),
        "no session on shard 1"
    );
    // And requests that landed on the other shard were handed to the owner.
    let metrics = request(addr, "GET", "/metrics", b"").text();
    let handed: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardcast_connections_handed_over_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(
        handed > 0,
        "no request reached the shard that does not own its session:\n{metrics}"
    );
}
