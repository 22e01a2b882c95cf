//! Issue 15, the first hour: `serve --dev` (a secret kept in the data directory, a printed token `shardcast token`
//! agrees with), loud start-up failures (memlock too low, a port another process holds), room tokens that survive a
//! restart (socket.io-client 4.x rejoins with its cached token), `/readyz`, the live page's route and the generic 503.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{
    ensure_node_modules, interop_dir, request, request_with, scratch_dir, shardcast_command,
};
use serde_json::{Value, json};

const SECRET: &str = "first-hour-test-secret-0123456789abcdef";

/// `shardcast <args>` with the SHARDCAST_* variables of the test's environment removed, plus `env`.
fn shardcast(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = shardcast_command(args);
    cmd.envs(env.iter().copied()).env("RUST_LOG", "info");
    cmd
}

/// A running server; its stdout lines after the listening line are in `lines`, stderr goes to `log`.
struct Running {
    child: Child,
    addr: SocketAddr,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    log: PathBuf,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)], log: &Path) -> Running {
        let mut child = shardcast(args, env)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = stdout
            .next()
            .unwrap_or_else(|| {
                panic!(
                    "no output; log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .expect("line");
        let addr = line
            .trim()
            .strip_prefix("shardcast listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("addr");
        Running {
            child,
            addr,
            stdout,
            log: log.to_path_buf(),
        }
    }

    /// `serve --db-path <db> --listen <listen> --shards <shards> --no-pin <extra>`.
    fn serve(
        db: &str,
        listen: &str,
        shards: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> Running {
        let mut args = vec![
            "serve",
            "--db-path",
            db,
            "--listen",
            listen,
            "--shards",
            shards,
            "--no-pin",
        ];
        args.extend_from_slice(extra);
        Running::start(&args, env, log)
    }

    /// Stdout lines up to and including the first one starting with `prefix`.
    fn lines_until(&mut self, prefix: &str) -> Vec<String> {
        let mut seen = Vec::new();
        for line in self.stdout.by_ref() {
            let line = line.expect("line");
            let done = line.starts_with(prefix);
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("no line starting with {prefix:?} in {seen:?}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client process killed when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = request_with(addr, "GET", path, &[("Authorization", &auth)], b"");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn post_with_token(addr: SocketAddr, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let r = request_with(
        addr,
        "POST",
        path,
        &[("Authorization", &auth)],
        body.to_string().as_bytes(),
    );
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// `shardcast token` for alice of company acme, signed with [`SECRET`].
fn alice_token() -> String {
    let out = shardcast(
        &[
            "token",
            "--sub",
            "alice",
            "--claim",
            r#"companies=["acme"]"#,
        ],
        &[("SHARDCAST_JWT_SECRET", SECRET)],
    )
    .output()
    .expect("token");
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

/// POSTs `body` (`{"resource": {...}}`) to acme's `main` workspace channels with `token`.
fn create_channel(addr: SocketAddr, token: &str, body: &Value) -> (u16, Value) {
    post_with_token(
        addr,
        "/api/v1/companies/acme/workspaces/main/channels",
        token,
        body,
    )
}

/// POSTs a message of `text` to `channel` with `token`; asserts 201 and returns the answer.
fn post_message(addr: SocketAddr, token: &str, channel: &str, text: &str) -> Value {
    let (status, created) = post_with_token(
        addr,
        &format!("/api/v1/channels/{channel}/messages"),
        token,
        &json!({"resource": {"text": text}}),
    );
    assert_eq!(status, 201, "{created}");
    created
}

/// The room and room token of channel `channel`'s messages (`GET .../messages?websockets=true`).
fn messages_room(addr: SocketAddr, token: &str, channel: &str) -> (String, String) {
    let (status, list) = get_with_token(
        addr,
        &format!("/api/v1/channels/{channel}/messages?websockets=true"),
        token,
    );
    assert_eq!(status, 200, "{list}");
    let field = |name: &str| {
        list["websockets"][0][name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {list}"))
            .to_owned()
    };
    (field("room"), field("token"))
}

type ClientLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// `<program> tests/interop/<script> <args>` (an example client) with its stdout piped: the process (killed when the
/// test ends) and its stdout lines.
fn spawn_client<A: AsRef<std::ffi::OsStr>>(
    program: &str,
    script: &str,
    args: &[A],
) -> (KillOnDrop, ClientLines) {
    let mut child = Command::new(program)
        .arg(interop_dir().join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program} {script}: {e}"));
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (KillOnDrop(child), lines)
}

/// The arguments of an example client that joins `room` with `room_token` and exits after its first event.
fn one_event_args(addr: SocketAddr, token: &str, room: &str, room_token: &str) -> [String; 5] {
    [
        format!("http://{addr}"),
        token.to_owned(),
        format!("{room}={room_token}"),
        "--count".to_owned(),
        "1".to_owned(),
    ]
}

/// An example client's lines up to and including the first that ends a join: `joined`, or an error the client
/// prints before it gives up.
fn lines_until_join(lines: &mut ClientLines) -> Vec<String> {
    const ENDS: [&str; 5] = [
        "joined",
        "join error",
        "connection error",
        "cannot",
        "unauthorized",
    ];
    let mut seen = Vec::new();
    for l in lines.by_ref() {
        let l = l.expect("line");
        let end = ENDS.iter().any(|e| l.starts_with(e));
        seen.push(l);
        if end {
            break;
        }
    }
    seen
}

/// The rest of an example client's lines, once it exited successfully (after its `--count` events).
fn lines_until_success(client: &mut KillOnDrop, lines: ClientLines) -> Vec<String> {
    let rest: Vec<String> = lines.map(|l| l.expect("line")).collect();
    assert!(client.0.wait().expect("wait").success(), "{rest:?}");
    rest
}

#[test]
fn dev_mode_keeps_one_secret_prints_a_working_token_and_token_finds_the_secret() {
    let d = scratch_dir("dev-mode");
    let data = d.join("data");
    let data_s = data.to_str().expect("utf8");
    let db = data.join("db.redb");
    let db_s = db.to_str().expect("utf8");
    let args = [
        "serve",
        "--dev",
        "--data-dir",
        data_s,
        "--db-path",
        db_s,
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1",
        "--no-pin",
    ];

    let mut first = Running::start(&args, &[], &d.join("first.log"));
    let banner = first.lines_until("TOKEN=");
    assert!(
        banner[0].contains("dev-jwt-secret") && banner[0].contains("created now"),
        "{banner:?}"
    );
    assert!(
        banner
            .iter()
            .any(|l| l.starts_with(&format!("live page: http://{}/#token=", first.addr))),
        "{banner:?}"
    );
    let token = banner
        .last()
        .expect("line")
        .strip_prefix("TOKEN=")
        .expect("token")
        .to_owned();
    let secret_file = data.join("dev-jwt-secret");
    let mode = std::fs::metadata(&secret_file)
        .expect("secret file")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the secret is readable by its owner only"
    );
    let secret = std::fs::read_to_string(&secret_file).expect("read");
    assert!(secret.trim().len() >= 32, "32 random bytes, base64");

    let channels = "/api/v1/companies/acme/workspaces/main/channels";
    let (status, body) = get_with_token(first.addr, channels, &token);
    assert_eq!(status, 200, "the printed token works: {body}");
    // `shardcast token` finds the secret in the data directory by itself.
    let out = shardcast(
        &[
            "token",
            "--data-dir",
            data_s,
            "--sub",
            "bob",
            "--claim",
            r#"companies=["acme"]"#,
        ],
        &[],
    )
    .output()
    .expect("token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bob = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    let (status, body) = get_with_token(first.addr, channels, &bob);
    assert_eq!(status, 200, "a token of `shardcast token` works: {body}");
    drop(first);

    // A second run reuses the secret: the tokens of the first run still work.
    let mut second = Running::start(&args, &[], &d.join("second.log"));
    let banner = second.lines_until("TOKEN=");
    assert!(banner[0].contains("reused"), "{banner:?}");
    assert_eq!(std::fs::read_to_string(&secret_file).expect("read"), secret);
    let (status, body) = get_with_token(second.addr, channels, &bob);
    assert_eq!(status, 200, "the secret survived the restart: {body}");
    drop(second);

    // Without --dev nothing changes: the stored secret is not used and serve refuses to start.
    let out = shardcast(
        &[
            "serve",
            "--data-dir",
            data_s,
            "--db-path",
            db_s,
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    )
    .output()
    .expect("serve");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no JWT secret configured"));
}

#[test]
fn a_port_another_process_listens_on_is_refused_unless_shared_on_purpose() {
    let d = scratch_dir("port-in-use");
    let db = d.join("db.redb");
    let db_s = db.to_str().expect("utf8");
    let env = [("SHARDCAST_JWT_SECRET", SECRET)];
    let first = Running::serve(db_s, "127.0.0.1:0", "1", &[], &env, &d.join("first.log"));
    let addr = first.addr.to_string();
    let db2 = d.join("db2.redb");
    let out = shardcast(
        &[
            "serve",
            "--db-path",
            db2.to_str().expect("utf8"),
            "--listen",
            &addr,
            "--shards",
            "1",
            "--no-pin",
        ],
        &env,
    )
    .output()
    .expect("second serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{addr} is already in use")), "{err}");
    assert!(err.contains("--listen-shared"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
    // Sharing on purpose: both listen.
    let shared = Running::serve(
        db2.to_str().expect("utf8"),
        &addr,
        "1",
        &["--listen-shared"],
        &env,
        &d.join("shared.log"),
    );
    assert_eq!(shared.addr, first.addr);
}

#[test]
fn a_memlock_limit_too_low_exits_at_once_naming_the_limit_and_how_to_raise_it() {
    let d = scratch_dir("memlock");
    let db = d.join("db.redb");
    let mut cmd = shardcast(
        &[
            "serve",
            "--db-path",
            db.to_str().expect("utf8"),
            "--listen",
            "127.0.0.1:0",
            "--no-pin",
        ],
        &[("SHARDCAST_JWT_SECRET", SECRET)],
    );
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit(2) between fork and exec, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 64 * 1024,
                rlim_max: 64 * 1024,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("serve did not exit with a 64 KiB memlock limit (it hangs)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("ulimit -l"),
        "{err}"
    );
    assert!(err.contains("64 KiB"), "names the current limit: {err}");
}

/// socket.io-client 4.x joins a room, the server restarts on the same port, the client reconnects and rejoins with
/// the room token it cached: it works with the derived key, and fails with `room_token_key_random` (so the test
/// can tell the two apart).
#[test]
fn a_client_reconnecting_after_a_restart_rejoins_with_its_cached_room_token() {
    ensure_node_modules();
    let d = scratch_dir("rejoin");
    let db = d.join("db.redb");
    let db_s = db.to_str().expect("utf8");
    let run = |random_key: bool, tag: &str| -> Vec<String> {
        let key_random = if random_key { "true" } else { "false" };
        let env = [
            ("SHARDCAST_JWT_SECRET", SECRET),
            ("SHARDCAST_ROOM_TOKEN_KEY_RANDOM", key_random),
        ];
        let args = |listen: &str| -> Vec<String> {
            [
                "serve",
                "--db-path",
                db_s,
                "--listen",
                listen,
                "--shards",
                "1",
                "--no-pin",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let a0 = args("127.0.0.1:0");
        let a0: Vec<&str> = a0.iter().map(String::as_str).collect();
        let server = Running::start(&a0, &env, &d.join(format!("{tag}-1.log")));
        let addr = server.addr;
        let token = alice_token();
        let (status, _) = create_channel(
            addr,
            &token,
            &json!({"resource": {"id": format!("rejoin-{tag}"), "name": "r"}}),
        );
        assert!(status == 201 || status == 409, "{status}");
        let (room, room_token) = messages_room(addr, &token, &format!("rejoin-{tag}"));
        let url = format!("http://{addr}");
        let (client, mut lines) = spawn_client(
            "node",
            "rejoin_cached.js",
            &[&url, &token, &room, &room_token],
        );
        assert_eq!(
            lines_until_join(&mut lines),
            vec!["authenticated".to_string(), format!("joined {room}")]
        );
        drop(server);
        let a1 = args(&addr.to_string());
        let a1: Vec<&str> = a1.iter().map(String::as_str).collect();
        let restarted = Running::start(&a1, &env, &d.join(format!("{tag}-2.log")));
        assert_eq!(restarted.addr, addr);
        let mut after = lines_until_join(&mut lines);
        if after.last().is_some_and(|l| l.starts_with("joined")) {
            post_message(addr, &token, &format!("rejoin-{tag}"), "after the restart");
            for l in lines.by_ref() {
                let l = l.expect("line");
                let end = l.starts_with("realtime:resource");
                after.push(l);
                if end {
                    break;
                }
            }
        }
        drop(client);
        after
    };

    let derived = run(false, "derived");
    assert!(
        derived
            .iter()
            .any(|l| l == "joined /channels/rejoin-derived/messages"),
        "{derived:?}"
    );
    assert!(
        derived
            .iter()
            .any(|l| l.starts_with("realtime:resource") && l.contains("after the restart")),
        "{derived:?}"
    );
    let random = run(true, "random");
    assert!(
        random
            .last()
            .is_some_and(|l| l.starts_with("join error") && l.contains("invalid signature")),
        "a random key per process refuses the cached token: {random:?}"
    );
}

#[test]
fn readyz_and_the_live_page_route() {
    let d = scratch_dir("readyz");
    let db = d.join("db.redb");
    let db_s = db.to_str().expect("utf8");
    let env = [("SHARDCAST_JWT_SECRET", SECRET)];
    let plain = Running::serve(db_s, "127.0.0.1:0", "2", &[], &env, &d.join("plain.log"));
    let r = request(plain.addr, "GET", "/readyz", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["status"], "ready");
    assert_eq!(v["shards"], json!({"started": 2, "total": 2}));
    assert_eq!(v["database"], "up");
    assert_eq!(
        request(plain.addr, "GET", "/", b"").status,
        404,
        "no page outside dev mode"
    );
    assert!(plain.log().contains("backend=embedded"), "{}", plain.log());
    drop(plain);

    let page = Running::serve(
        db_s,
        "127.0.0.1:0",
        "1",
        &["--live-page"],
        &env,
        &d.join("page.log"),
    );
    let r = request(page.addr, "GET", "/", b"");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html"))
    );
    assert!(r.text().contains("realtime:resource"));
    assert!(!page.log().contains("\u{1b}["), "no colours in a log file");
}

/// The Python client example (python-socketio from PyPI, installed by tests/services/python_client.sh) receives the
/// `created` event of a message created over REST.
#[test]
fn the_python_client_example_receives_a_realtime_resource_event() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/python_client.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg("ensure")
        .stderr(Stdio::inherit())
        .output()
        .expect("python_client.sh");
    assert!(
        out.status.success(),
        "tests/services/python_client.sh ensure failed"
    );
    let python = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();

    let d = scratch_dir("python-client");
    let db = d.join("db.redb");
    let server = Running::serve(
        db.to_str().expect("utf8"),
        "127.0.0.1:0",
        "1",
        &[],
        &[("SHARDCAST_JWT_SECRET", SECRET)],
        &d.join("serve.log"),
    );
    let token = alice_token();
    let (status, _) = create_channel(
        server.addr,
        &token,
        &json!({"resource": {"id": "py", "name": "py"}}),
    );
    assert_eq!(status, 201);
    let (room, room_token) = messages_room(server.addr, &token, "py");
    let args = one_event_args(server.addr, &token, &room, &room_token);
    let (mut client, mut lines) = spawn_client(&python, "python_client.py", &args);
    assert_eq!(
        lines_until_join(&mut lines),
        vec!["authenticated".to_string(), format!("joined {room}")]
    );
    let created = post_message(server.addr, &token, "py", "hello python");
    let rest = lines_until_success(&mut client, lines);
    let event: Value = serde_json::from_str(
        rest.iter()
            .find_map(|l| l.strip_prefix("realtime:resource "))
            .unwrap_or_else(|| panic!("no event: {rest:?}")),
    )
    .expect("json");
    assert_eq!(event["action"], "created");
    assert_eq!(event["resource"], created["resource"]);
}

/// Once a graceful shutdown began, `/readyz` never answers 200 again: a request still served gets 503
/// `shutting_down: true`, and new or idle connections are refused or closed (the shutdown stops accepting).
#[test]
fn readyz_never_answers_200_once_shutdown_begins() {
    use std::io::Write;
    let d = scratch_dir("readyz-shutdown");
    let db = d.join("db.redb");
    let mut server = Running::serve(
        db.to_str().expect("utf8"),
        "127.0.0.1:0",
        "1",
        &[],
        &[
            ("SHARDCAST_JWT_SECRET", SECRET),
            ("SHARDCAST_SHUTDOWN_GRACE_MS", "2000"),
        ],
        &d.join("serve.log"),
    );
    let addr = server.addr;
    let ask = || -> Option<common::HttpResponse> {
        let mut conn = std::net::TcpStream::connect(addr).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
        conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .ok()?;
        common::read_response(&mut conn, &mut Vec::new())
    };
    assert_eq!(ask().expect("an answer").status, 200);
    // A connection holding half a request keeps the shutdown going for up to shutdown_grace_ms, so the probes below
    // see the server while it shuts down (an idle server could exit before the first probe).
    let mut held = std::net::TcpStream::connect(addr).expect("connect");
    held.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .expect("half a request");
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) on the PID of our own child.
    unsafe { libc::kill(server.child.id() as libc::pid_t, libc::SIGTERM) };
    let mut answers = Vec::new();
    while server.child.try_wait().expect("wait").is_none() {
        let status = ask().map(|r| {
            if r.status == 503 {
                let v: Value = serde_json::from_slice(&r.body).expect("json");
                assert_eq!(v["shutting_down"], true, "{v}");
            }
            r.status
        });
        answers.push(status);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(held);
    // Requests before the shard noticed the signal may still be 200; after a 503 or a refusal, never again.
    let first_not_ready = answers.iter().position(|s| *s != Some(200));
    let first_not_ready = first_not_ready.expect("some /readyz after SIGTERM was not 200");
    assert!(
        answers[first_not_ready..].iter().all(|s| *s != Some(200)),
        "answers after SIGTERM: {answers:?}"
    );
}

/// `demo_client.js` reports a first connection that fails and exits 1; after a server restart with a new room-token
/// key (`room_token_key_random`) it fetches a fresh room token over REST and joins again.
#[test]
fn the_demo_client_reports_connection_errors_and_refreshes_room_tokens_on_reconnect() {
    ensure_node_modules();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let out = Command::new("node")
        .arg(interop_dir().join("demo_client.js"))
        .args([&format!("http://{dead_addr}"), "t", "/r=t"])
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.starts_with("connection error: "), "{text}");

    let d = scratch_dir("demo-refresh");
    let db = d.join("db.redb");
    let db_s = db.to_str().expect("utf8");
    let env = [
        ("SHARDCAST_JWT_SECRET", SECRET),
        ("SHARDCAST_ROOM_TOKEN_KEY_RANDOM", "true"),
    ];
    let server = Running::serve(db_s, "127.0.0.1:0", "1", &[], &env, &d.join("first.log"));
    let addr = server.addr;
    let token = alice_token();
    let (status, _) = create_channel(
        addr,
        &token,
        &json!({"resource": {"id": "refresh", "name": "r"}}),
    );
    assert_eq!(status, 201);
    let (room, room_token) = messages_room(addr, &token, "refresh");
    let args = one_event_args(addr, &token, &room, &room_token);
    let (mut client, mut lines) = spawn_client("node", "demo_client.js", &args);
    assert_eq!(
        lines_until_join(&mut lines),
        vec!["authenticated".to_string(), format!("joined {room}")]
    );
    drop(server);
    let restarted = Running::serve(
        db_s,
        &addr.to_string(),
        "1",
        &[],
        &env,
        &d.join("second.log"),
    );
    let after = lines_until_join(&mut lines);
    assert_eq!(
        after.last(),
        Some(&format!("joined {room}")),
        "a fresh room token joins: {after:?}"
    );
    post_message(restarted.addr, &token, "refresh", "after the refresh");
    let rest = lines_until_success(&mut client, lines);
    assert!(
        rest.iter().any(|l| l.contains("after the refresh")),
        "{rest:?}"
    );
}
