//! Helpers shared by the integration tests: start the real binary on a free port, raw HTTP requests and a raw
//! websocket client (handshake by hand, frames through tungstenite's client role over a std TcpStream).
#![allow(dead_code)]

pub mod mongo;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tungstenite::protocol::{Role, WebSocket};
use tungstenite::{Bytes, Message};

/// Safety net so a broken server fails a test instead of hanging it; never a timing assertion.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `shardcast` process, killed on drop.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub stderr_path: std::path::PathBuf,
}

impl Server {
    /// `shardcast <args> --no-pin` (plus `--listen 127.0.0.1:0` unless given); waits for its "listening on" line.
    pub fn start(args: &[&str]) -> Server {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let stderr_path = dir.join(format!("shardcast-{}-{}.log", std::process::id(), unique()));
        let stderr = std::fs::File::create(&stderr_path).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.args(args).arg("--no-pin");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn shardcast");
        let addr = read_listening_addr(&mut child, Some(&stderr_path));
        Server {
            child,
            addr,
            stderr_path,
        }
    }

    /// The conformance server with `shards` shards.
    pub fn conformance(shards: usize) -> Server {
        let n = shards.to_string();
        Server::start(&["conformance", "--shards", &n])
    }

    /// The conformance server with a 20 s ping timeout (pings still every 300 ms): for tests about something
    /// else than the heartbeat, so that a test thread descheduled on a loaded machine does not lose its session.
    pub fn conformance_relaxed(shards: usize) -> Server {
        let n = shards.to_string();
        Server::start(&["conformance", "--shards", &n, "--ping-timeout-ms", "20000"])
    }

    /// A one-shard conformance server with heartbeats slow enough (25 s ping interval, 20 s timeout) that none ends a
    /// session during a test, started with the `extra` flags too: only what the test does may end a connection.
    pub fn conformance_quiet(extra: &[&str]) -> Server {
        let mut args = vec![
            "conformance",
            "--shards",
            "1",
            "--ping-interval-ms",
            "25000",
            "--ping-timeout-ms",
            "20000",
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    /// Waits (up to 10 s) until the server's log mentions `needle`; panics with the log otherwise.
    pub fn wait_for_log(&self, needle: &str) {
        for _ in 0..400 {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("log does not mention {needle:?}:\n{}", self.log());
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident set size, bytes (`VmRSS` of /proc/<pid>/status).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit status code.
    pub fn terminate(mut self) -> Option<i32> {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().expect("wait");
        status.code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// An HTTP response read from a raw socket.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Read one response (Content-Length bodies) from `s`, keeping extra bytes in `buf`. `None` on EOF first.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<HttpResponse> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                })
                .collect();
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                if !fill(s, buf) {
                    return None;
                }
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some(HttpResponse {
                status,
                headers,
                body,
            });
        }
        if !fill(s, buf) {
            return None;
        }
    }
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut tmp = [0u8; 8192];
    match s.read(&mut tmp) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            true
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Send one request on a fresh connection and read the answer.
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    request_with(addr, method, path, &[], body)
}

pub fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = connect(addr);
    send_request(&mut s, method, path, headers, body);
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).expect("a response")
}

pub fn send_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write request");
}

/// Open an Engine.IO polling session on `path` (e.g. `/engine.io/`), return its sid.
pub fn polling_handshake(addr: SocketAddr, path: &str) -> String {
    let r = request(addr, "GET", &format!("{path}?EIO=4&transport=polling"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let v: serde_json::Value =
        serde_json::from_str(text.strip_prefix('0').expect("open packet")).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

/// A websocket client on a raw socket.
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
}

#[derive(Debug, PartialEq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// The server closed (close frame or end of stream).
    Closed,
}

/// Raw upgrade request; returns the stream and the response head + any bytes after it.
pub fn ws_upgrade_raw(
    addr: SocketAddr,
    path_and_query: &str,
) -> (TcpStream, HttpResponse, Vec<u8>) {
    let mut s = connect(addr);
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
            let headers = head
                .split("\r\n")
                .skip(1)
                .filter_map(|l| {
                    l.split_once(':')
                        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                })
                .collect();
            let rest = buf[end + 4..].to_vec();
            return (
                s,
                HttpResponse {
                    status,
                    headers,
                    body: Vec::new(),
                },
                rest,
            );
        }
        assert!(
            fill(&mut s, &mut buf),
            "connection closed during websocket handshake"
        );
    }
}

impl Ws {
    /// Connect and upgrade; panics unless the answer is 101.
    pub fn connect(addr: SocketAddr, path_and_query: &str) -> Ws {
        let (s, head, rest) = ws_upgrade_raw(addr, path_and_query);
        assert_eq!(head.status, 101, "websocket upgrade refused");
        assert_eq!(
            head.header("Sec-WebSocket-Accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let ws = WebSocket::from_partially_read(s, rest, Role::Client, None);
        Ws { ws }
    }

    /// Try to upgrade; `None` if the server refused (non-101).
    pub fn try_connect(addr: SocketAddr, path_and_query: &str) -> Option<(Ws, u16)> {
        let (s, head, rest) = ws_upgrade_raw(addr, path_and_query);
        if head.status != 101 {
            return None;
        }
        Some((
            Ws {
                ws: WebSocket::from_partially_read(s, rest, Role::Client, None),
            },
            101,
        ))
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t)).expect("send text");
    }
    pub fn send_binary(&mut self, b: &[u8]) {
        self.ws
            .send(Message::Binary(Bytes::copy_from_slice(b)))
            .expect("send binary");
    }

    /// Next data message or the close.
    pub fn recv(&mut self) -> WsEvent {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return WsEvent::Text(t.as_str().to_string()),
                Ok(Message::Binary(b)) => return WsEvent::Binary(b.to_vec()),
                Ok(Message::Close(_)) => return WsEvent::Closed,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    panic!("no websocket message within {IO_TIMEOUT:?}")
                }
                Err(_) => return WsEvent::Closed,
            }
        }
    }

    /// Next text message, skipping Engine.IO pings (`2`), which are answered with `3`.
    pub fn recv_text_skip_ping(&mut self) -> String {
        loop {
            match self.recv() {
                WsEvent::Text(t) if t == "2" => self.send_text("3"),
                WsEvent::Text(t) => return t,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// Next message that is not a ping (answering pings).
    pub fn recv_skip_ping(&mut self) -> WsEvent {
        loop {
            match self.recv() {
                WsEvent::Text(t) if t == "2" => self.send_text("3"),
                other => return other,
            }
        }
    }

    /// Read until the server closes; returns the text messages seen.
    pub fn until_closed(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.recv() {
                WsEvent::Closed => return seen,
                WsEvent::Text(t) => seen.push(t),
                WsEvent::Binary(_) => {}
            }
        }
    }
}

/// The node set-up of the interop tests (`tests/interop/package.json`: socket.io-client 4.x as `sioc4`, 2.x as
/// `sioc2`).
pub fn interop_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the interop tests' npm packages with `npm ci` once per test binary when they are absent (a fresh
/// machine), with npm's cache under `target/`.
pub fn ensure_node_modules() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let dir = interop_dir();
        let installed = [
            "sioc4",
            "sioc2",
            "socket.io",
            "@socket.io/redis-adapter",
            "@socket.io/redis-emitter",
            "redis",
        ]
        .iter()
        .all(|p| {
            dir.join("node_modules")
                .join(p)
                .join("package.json")
                .exists()
        });
        if installed {
            return;
        }
        let cache = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/npm-cache");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .env("npm_config_cache", cache)
            .current_dir(&dir)
            .status()
            .expect("run npm (node and npm must be installed)");
        assert!(status.success(), "npm ci failed in {}", dir.display());
    });
}

/// A fresh, empty directory `<name>-<pid>` under the target's test scratch directory.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// A TCP port nothing listened on a moment ago (for a child process that must be told its port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An HS256 access token signed with `secret` for user `sub` of company `acme`, valid for an hour.
pub fn acme_token(secret: &str, sub: &str) -> String {
    let mut extra = serde_json::Map::new();
    extra.insert("companies".into(), serde_json::json!(["acme"]));
    shardcast::realtime::auth::AccessSigner::new(&shardcast::realtime::auth::AuthConfig::hs256(
        secret,
    ))
    .expect("signer")
    .sign(sub, 3600, &extra)
    .expect("sign")
}

/// `shardcast <args>` (the binary under test) with the SHARDCAST_* variables of the test's environment removed.
pub fn shardcast_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    for (k, _) in std::env::vars() {
        if k.starts_with("SHARDCAST_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args);
    cmd
}

/// A Socket.IO client connected to the main namespace of the conformance app over websocket: it proves the server
/// still serves others.
pub struct Witness(pub Ws);

impl Witness {
    pub fn new(srv: &Server) -> Witness {
        let mut ws = Ws::connect(srv.addr, "/socket.io/?EIO=4&transport=websocket");
        ws.recv();
        ws.send_text("40");
        assert!(ws.recv_text_skip_ping().starts_with("40"));
        assert_eq!(ws.recv_text_skip_ping(), r#"42["auth",{}]"#);
        Witness(ws)
    }

    /// One round trip (`message` answered by `message-back`); returns its duration.
    pub fn exchange(&mut self, n: u32) -> Duration {
        let t = std::time::Instant::now();
        self.0.send_text(&format!(r#"42["message",{n}]"#));
        assert_eq!(
            self.0.recv_text_skip_ping(),
            format!(r#"42["message-back",{n}]"#)
        );
        t.elapsed()
    }
}

/// Takes `child`'s stdout and reads its first line, `shardcast listening on <addr>`; panics (with the text of `log`,
/// the child's stderr file, if given) on any other line.
pub fn read_listening_addr(child: &mut Child, log: Option<&std::path::Path>) -> SocketAddr {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read listening line");
    line.trim()
        .strip_prefix("shardcast listening on ")
        .unwrap_or_else(|| {
            let log = log.map_or_else(String::new, |p| {
                format!(
                    "; log {}:\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            });
            panic!("unexpected first line {line:?}{log}")
        })
        .parse()
        .expect("address")
}

/// `node tests/interop/<script> <major> <dir>/clients.json`, the file holding `{"url": url, "clients": clients}`:
/// the child (stderr inherited), its stdin and its stdout lines.
pub fn spawn_node_clients(
    script: &str,
    major: &str,
    dir: &std::path::Path,
    url: &str,
    clients: &[serde_json::Value],
) -> (
    Child,
    std::process::ChildStdin,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let config = dir.join("clients.json");
    std::fs::write(
        &config,
        serde_json::json!({ "url": url, "clients": clients }).to_string(),
    )
    .unwrap();
    let mut child = Command::new("node")
        .arg(interop_dir().join(script))
        .arg(major)
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let stdin = child.stdin.take().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, stdin, lines)
}

/// A server started inside the test process (`server::start` on 127.0.0.1:0, shards not pinned); shut down and
/// joined on drop.
pub struct InProcess {
    handle: Option<shardcast::server::ServerHandle>,
    pub addr: SocketAddr,
}

impl InProcess {
    /// `shards` shards serving `app`.
    pub fn start(shards: usize, app: shardcast::server::AppFactory) -> InProcess {
        let cfg = shardcast::server::ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards,
            pin_shards: false,
            ..shardcast::server::ServerConfig::default()
        };
        let handle = shardcast::server::start(cfg, app).expect("start");
        let addr = handle.local_addr;
        InProcess {
            handle: Some(handle),
            addr,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            let _ = h.join();
        }
    }
}
