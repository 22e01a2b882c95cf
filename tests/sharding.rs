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

/// Start-up of 3 shards on a loaded machine (busy threads on every core) either serves on every shard or fails
/// loudly (non-zero exit, "cannot start" and the reason on stderr), within a bound: it never prints "listening"
/// with a shard that does not accept (its connections would hang), and never hangs silently. A shard binds its
/// listener only once the shard mesh is joined, and the join gives up after MESH_JOIN_TIMEOUT_MS (10 s).
#[test]
fn three_shard_start_under_load_serves_every_shard_or_fails_loudly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const STARTS: usize = 5;
    const HOGS: usize = 4;
    // MESH_JOIN_TIMEOUT_MS twice (start-up's own guard) plus slack: past it start-up hung.
    const START_BOUND: Duration = Duration::from_secs(25);
    const HANDSHAKES: usize = 30;

    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..HOGS)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let mut served = 0;
    for run in 0..STARTS {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let log = dir.join(format!("mesh-start-{}-{run}.log", std::process::id()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args([
                "conformance",
                "--shards",
                "3",
                "--no-pin",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn shardcast");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(START_BOUND) else {
            let _ = child.kill();
            let _ = child.wait();
            stop.store(true, Ordering::Relaxed);
            panic!(
                "start {run}: start-up hung for {START_BOUND:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let Some(addr) = line.trim().strip_prefix("shardcast listening on ") else {
            // A loud failure: the process ends non-zero and says why.
            let status = child.wait().expect("wait");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                !status.success() && text.contains("cannot start"),
                "start {run}: no listening line ({line:?}), {status}, log:\n{text}"
            );
            continue;
        };
        let addr: SocketAddr = addr.parse().expect("address");
        // Every shard accepts: fresh connections land on every shard (the sid's first two characters name it).
        let sids: Vec<String> = (0..HANDSHAKES)
            .map(|_| polling_handshake(addr, "/socket.io/"))
            .collect();
        for shard in ["00", "01", "02"] {
            assert!(
                sids.iter().any(|s| s.starts_with(shard)),
                "start {run}: no session on shard {shard} in {HANDSHAKES} connections: {sids:?}"
            );
        }
        served += 1;
        let _ = child.kill();
        let _ = child.wait();
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().expect("hog");
    }
    assert!(served > 0, "no start-up of {STARTS} served");
}
