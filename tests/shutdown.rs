//! Graceful shutdown of `shardcast serve` (issue 9 item 5): SIGTERM while REST creates stream in loses no
//! acknowledged write, in every sync mode of the embedded store (fsync per write, and a 1 s sync interval); connected
//! websocket and polling clients get an Engine.IO close packet; the process exits 0 within `shutdown_grace_ms`.
//! Every acknowledged id is read back after a restart on the same database file.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    Ws, connect, read_listening_addr, read_response, scratch_dir, send_request, shardcast_command,
};

const SECRET: &str = "shutdown-test-secret-0123456789abcdef";

fn shardcast(args: &[&str]) -> Command {
    let mut cmd = shardcast_command(args);
    cmd.env("SHARDCAST_JWT_SECRET", SECRET)
        // The streams of creates come from one user, faster than the default per-user write rate: this file tests
        // durability, `tests/tenants.rs` the write limits.
        .env("SHARDCAST_USER_WRITES_PER_S", "0")
        .env("SHARDCAST_USER_WRITE_BYTES_PER_S", "0")
        .env("RUST_LOG", "info");
    cmd
}

struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(db: &Path, sync_interval_ms: u64, log: PathBuf) -> Serve {
    let interval = sync_interval_ms.to_string();
    let mut child = shardcast(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--no-pin",
        "--db-backend",
        "embedded",
        "--db-path",
        db.to_str().expect("utf8"),
        "--db-sync-interval-ms",
        &interval,
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&log).expect("log"))
    .spawn()
    .expect("spawn serve");
    let addr = read_listening_addr(&mut child, Some(&log));
    Serve { child, addr, log }
}

fn token() -> String {
    let out = shardcast(&[
        "token",
        "--sub",
        "alice",
        "--claim",
        r#"companies=["acme"]"#,
    ])
    .output()
    .expect("token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

fn call(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    auth: &str,
    body: &str,
) -> Option<(u16, serde_json::Value)> {
    let bearer = format!("Bearer {auth}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
    ];
    // A write error means the server closed the connection: no answer, so nothing acknowledged.
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    std::io::Write::write_all(s, req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let r = read_response(s, &mut buf)?;
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    Some((r.status, v))
}

/// Every message id of channel `general`, through the paged list.
fn all_message_ids(addr: SocketAddr, auth: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut page: Option<String> = None;
    loop {
        let mut path = "/api/v1/channels/general/messages?limit=1000".to_owned();
        if let Some(p) = &page {
            path.push_str(&format!("&page_token={p}"));
        }
        let mut s = connect(addr);
        let (status, v) = call(&mut s, "GET", &path, auth, "").expect("list answered");
        assert_eq!(status, 200, "{v}");
        for r in v["resources"].as_array().expect("resources") {
            ids.insert(r["id"].as_str().expect("id").to_owned());
        }
        match v["next_page_token"].as_str() {
            Some(p) => page = Some(p.to_owned()),
            None => return ids,
        }
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
}

fn sigterm_loses_no_acknowledged_write(sync_interval_ms: u64) {
    let d = scratch_dir(&format!("shutdown-{sync_interval_ms}"));
    let db = d.join("db.redb");
    let auth = token();
    let srv = serve(&db, sync_interval_ms, d.join("serve-1.log"));
    let addr = srv.addr;

    let mut s = connect(addr);
    let (status, v) = call(
        &mut s,
        "POST",
        "/api/v1/companies/acme/workspaces/main/channels",
        &auth,
        r#"{"resource":{"id":"general","name":"General"}}"#,
    )
    .expect("channel created");
    assert_eq!(status, 201, "{v}");

    // Connected clients: one websocket session, one polling session with its GET pending.
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
    let open = ws.recv_text_skip_ping();
    assert!(open.starts_with('0'), "{open}");
    let sid = common::polling_handshake(addr, "/socket.io/");
    let mut poll = connect(addr);
    send_request(
        &mut poll,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
        &[],
        b"",
    );

    // A stream of creates on 4 keep-alive connections; every 201 is an acknowledged write.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, count, stop, auth) =
                (acked.clone(), count.clone(), stop.clone(), auth.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(addr) else {
                        return;
                    };
                    s.set_read_timeout(Some(common::IO_TIMEOUT)).ok();
                    loop {
                        n += 1;
                        let body = format!(r#"{{"resource":{{"text":"w{w} n{n}"}}}}"#);
                        match call(
                            &mut s,
                            "POST",
                            "/api/v1/channels/general/messages",
                            &auth,
                            &body,
                        ) {
                            Some((201, v)) => {
                                acked
                                    .lock()
                                    .unwrap()
                                    .push(v["resource"]["id"].as_str().expect("id").to_owned());
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Some((status, v)) => {
                                // Refused during shutdown (e.g. the database closing): not acknowledged.
                                assert!(status >= 500, "unexpected answer {status} {v}");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::Relaxed) < 300 {
        assert!(Instant::now() < until, "the creates are too slow");
        std::thread::sleep(Duration::from_millis(10));
    }

    let t0 = Instant::now();
    sigterm(&srv.child);
    // The clients get a close packet: `1` on the websocket (then the close frame), `1` as the pending GET's answer.
    let seen = ws.until_closed();
    assert!(seen.iter().any(|t| t == "1"), "websocket saw {seen:?}");
    let mut buf = Vec::new();
    let r = read_response(&mut poll, &mut buf).expect("the pending poll is answered");
    assert_eq!((r.status, r.text()), (200, "1".to_owned()), "pending poll");

    let mut srv = srv;
    let status = loop {
        if let Some(st) = srv.child.try_wait().expect("wait") {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "serve did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "exit status; log:\n{log}");
    // shutdown_grace_ms is 3000 by default; the database close comes after it, so allow a little more.
    assert!(
        took < Duration::from_millis(4_000),
        "took {took:?}; log:\n{log}"
    );
    assert!(log.contains("shutting down gracefully"), "{log}");

    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);
    drop(srv);

    let srv = serve(&db, sync_interval_ms, d.join("serve-2.log"));
    let mut s = connect(srv.addr);
    let (status, v) = call(&mut s, "GET", "/api/v1/channels/general", &auth, "").expect("channel");
    assert_eq!(status, 200, "the channel survived: {v}");
    let stored = all_message_ids(srv.addr, &auth);
    let lost: Vec<&String> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged creates lost (sync interval {sync_interval_ms} ms), e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    assert_eq!(
        srv.terminate_status(),
        Some(0),
        "the second server also exits 0 on SIGTERM"
    );
}

impl Serve {
    fn terminate_status(mut self) -> Option<i32> {
        sigterm(&self.child);
        self.child.wait().expect("wait").code()
    }
}

#[test]
fn sigterm_loses_no_acknowledged_write_with_fsync_per_write() {
    sigterm_loses_no_acknowledged_write(0);
}

#[test]
fn sigterm_loses_no_acknowledged_write_with_a_1s_sync_interval() {
    sigterm_loses_no_acknowledged_write(1000);
}

/// A connection holding half a request keeps its shard from draining until `shutdown_grace_ms`.
fn half_request(addr: SocketAddr) -> TcpStream {
    let mut s = connect(addr);
    std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("write");
    // Let the shard read it, so that the connection is not idle.
    std::thread::sleep(Duration::from_millis(100));
    s
}

#[test]
fn shutdown_waits_at_most_the_grace_period_and_a_second_signal_exits_at_once() {
    let d = scratch_dir("shutdown-second");
    let srv = serve(&d.join("db.redb"), 0, d.join("serve-1.log"));
    let _held = half_request(srv.addr);
    let t0 = Instant::now();
    sigterm(&srv.child);
    let mut srv = srv;
    let status = srv.child.wait().expect("wait");
    let took = t0.elapsed();
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
    // shutdown_grace_ms (3000 by default) bounds the wait for the held connection.
    assert!(
        took >= Duration::from_millis(2_500),
        "{took:?}: the held connection was not waited for"
    );
    assert!(took < Duration::from_millis(4_500), "{took:?}: {log}");
    drop(srv);

    let srv = serve(&d.join("db.redb"), 0, d.join("serve-2.log"));
    let _held = half_request(srv.addr);
    let t0 = Instant::now();
    sigterm(&srv.child);
    std::thread::sleep(Duration::from_millis(300));
    sigterm(&srv.child);
    let mut srv = srv;
    let status = srv.child.wait().expect("wait");
    let took = t0.elapsed();
    let log = std::fs::read_to_string(&srv.log).unwrap_or_default();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{log}");
    assert!(took < Duration::from_millis(1_500), "{took:?}: {log}");
    assert!(log.contains("second signal"), "{log}");
}
