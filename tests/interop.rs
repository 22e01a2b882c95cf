//! Interop with the real socket.io-client from npm, 4.x (Engine.IO v4) and 2.x (Engine.IO v3), driven by
//! `tests/interop/client.js` against `shardcast conformance`. Installs `tests/interop/node_modules` with
//! `npm ci` on first use (needs node and npm on PATH and the npm registry).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ensure_node_modules, interop_dir};

/// Safety net against a hung client; never a timing assertion.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

fn spawn_client(major: &str, scenario: &str, url: &str) -> Child {
    ensure_node_modules();
    Command::new("node")
        .arg(interop_dir().join("client.js"))
        .args([major, scenario, url])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node")
}

fn wait_client(mut child: Child, lines: &mut dyn Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = lines.collect();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait node") {
            break s;
        }
        if start.elapsed() > CLIENT_DEADLINE {
            let _ = child.kill();
            panic!("client did not finish; output so far: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    out.retain(|l| !l.is_empty());
    assert!(status.success(), "client failed: {out:?}");
    out
}

/// The conformance app with a heartbeat that survives a loaded machine: pings every second, 20 s to answer.
fn server(shards: usize, listen: Option<&str>) -> Server {
    let n = shards.to_string();
    let mut args = vec![
        "conformance",
        "--shards",
        &n,
        "--ping-interval-ms",
        "1000",
        "--ping-timeout-ms",
        "20000",
    ];
    if let Some(l) = listen {
        args.extend(["--listen", l]);
    }
    Server::start(&args)
}

fn run(major: &str, scenario: &str) {
    let srv = server(1, None);
    let mut child = spawn_client(major, scenario, &srv.url());
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let out = wait_client(child, &mut lines);
    assert_eq!(
        out.last().map(String::as_str),
        Some(format!("PASS {scenario}").as_str()),
        "{out:?}\n{}",
        srv.log()
    );
}

macro_rules! interop {
    ($($name:ident: $major:literal, $scenario:literal;)*) => {
        $(
            #[test]
            fn $name() {
                run($major, $scenario);
            }
        )*
    };
}

interop! {
    v4_polling_then_upgrade: "4", "polling-upgrade";
    v4_websocket_only: "4", "websocket-only";
    v4_polling_only: "4", "polling-only";
    v4_events_and_acks_both_ways: "4", "events-acks";
    v4_binary_both_ways: "4", "binary";
    v4_namespaces_with_auth: "4", "namespaces-auth";
    v4_server_initiated_disconnect: "4", "server-disconnect";
    v2_polling_then_upgrade: "2", "polling-upgrade";
    v2_websocket_only: "2", "websocket-only";
    v2_polling_only: "2", "polling-only";
    v2_events_and_acks_both_ways: "2", "events-acks";
    v2_binary_both_ways: "2", "binary";
    v2_namespaces_with_auth: "2", "namespaces-auth";
    v2_server_initiated_disconnect: "2", "server-disconnect";
}

/// With two shards, the polling requests and the websocket of one session may reach either shard: they are
/// handed to the owner. Several clients, so that some land on the other shard.
fn upgrade_on_two_shards(major: &str) {
    let srv = server(2, None);
    let clients: Vec<Child> = (0..6)
        .map(|_| spawn_client(major, "polling-upgrade", &srv.url()))
        .collect();
    for mut child in clients {
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        let out = wait_client(child, &mut lines);
        assert_eq!(
            out.last().map(String::as_str),
            Some("PASS polling-upgrade"),
            "{out:?}\n{}",
            srv.log()
        );
    }
}

#[test]
fn v4_polling_then_upgrade_on_two_shards() {
    upgrade_on_two_shards("4");
}

#[test]
fn v2_polling_then_upgrade_on_two_shards() {
    upgrade_on_two_shards("2");
}

fn restart(major: &str) {
    let srv = server(1, None);
    let addr = srv.addr;
    let mut child = spawn_client(major, "restart", &srv.url());
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    assert_eq!(lines.next().as_deref(), Some("CONNECTED"));
    // Graceful shutdown: sessions get a close packet, the process exits 0.
    assert_eq!(srv.terminate(), Some(0));
    assert_eq!(lines.next().as_deref(), Some("DISCONNECTED"));
    let listen = addr.to_string();
    let _srv2 = server(1, Some(&listen));
    let out = wait_client(child, &mut lines);
    assert_eq!(
        out.last().map(String::as_str),
        Some("PASS restart"),
        "{out:?}"
    );
}

#[test]
fn v4_reconnects_after_server_restart() {
    restart("4");
}

#[test]
fn v2_reconnects_after_server_restart() {
    restart("2");
}
