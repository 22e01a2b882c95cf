//! Scale-out through Redis (issue 13), with real parts only: a real `redis-server` (Debian's package, installed and
//! started by `tests/services/redis.sh`; each test here starts its own instance of that binary on a free port so
//! it can stop it), two real `shardcast serve` processes, and a real Node socket.io 4.8 server with
//! `@socket.io/redis-adapter` 8, the real `@socket.io/redis-emitter` 5 and real socket.io-client 4.x clients
//! (`tests/interop/cluster_node.js`).

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use shardcast::cluster::codec::{self, Selector};
use shardcast::cluster::msgpack::Value as Mp;
use shardcast::realtime::auth::{RoomTokens, Secret};

const SECRET: &str = "cluster-access-secret-0123456789abcdef";
const ROOM_SECRET: &str = "cluster-room-secret-0123456789abcdef!!";
/// Safety net for waits on events that must come; never a timing assertion.
const WAIT: Duration = Duration::from_secs(15);

fn scratch(name: &str) -> PathBuf {
    scratch_dir(&format!("cluster-{name}"))
}

/// A redis-server of our own (stopped on drop).
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn bin() -> String {
        std::env::var("SHARDCAST_TEST_REDIS_BIN").unwrap_or_else(|_| "redis-server".into())
    }
    fn new(name: &str) -> Redis {
        Redis {
            child: None,
            port: free_port(),
            dir: scratch(&format!("redis-{name}")),
        }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn start(&mut self) {
        let port = self.port.to_string();
        let child = Command::new(Self::bin())
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (bash tests/services/redis.sh start installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"PING\r\n");
                let mut b = [0u8; 7];
                if std::io::Read::read_exact(&mut s, &mut b).is_ok() && &b == b"+PONG\r\n" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    /// One command (RESP written by hand: arguments are binary-safe); the first line of the answer.
    fn command(&self, args: &[&[u8]]) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for part in args {
            cmd.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            cmd.extend_from_slice(part);
            cmd.extend_from_slice(b"\r\n");
        }
        s.write_all(&cmd).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line.trim().to_owned()
    }
    /// PUBLISH; the number of subscribers that received it.
    fn publish(&self, channel: &str, payload: &[u8]) -> i64 {
        let answer = self.command(&[b"PUBLISH", channel.as_bytes(), payload]);
        answer.trim_start_matches(':').parse().unwrap_or(-1)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `shardcast serve` joined to the cluster at `redis_url`.
fn serve(name: &str, shards: usize, redis_url: &str, cluster_extra: &str) -> Server {
    serve_with(name, shards, redis_url, cluster_extra, "")
}

/// [`serve`] with lines of its own in the `[cluster]` and `[realtime]` sections.
fn serve_with(
    name: &str,
    shards: usize,
    redis_url: &str,
    cluster_extra: &str,
    realtime_extra: &str,
) -> Server {
    let dir = scratch(name);
    let cfg = dir.join("shardcast.toml");
    let text = format!(
        "[server]\nping_interval_ms = 2000\nping_timeout_ms = 60000\n[auth]\njwt_secret = \"{SECRET}\"\n\
         [realtime]\nroom_token_secret = \"{ROOM_SECRET}\"\n{realtime_extra}\n[cluster]\nredis_url = \"{redis_url}\"\n\
         reconnect_backoff_max_ms = 300\n{cluster_extra}\n[orm]\nembedded_path = \"{}\"\n",
        dir.join("data.redb").display()
    );
    std::fs::write(&cfg, text).expect("config");
    let n = shards.to_string();
    Server::start(&["serve", "--shards", &n, "--config", cfg.to_str().unwrap()])
}

fn ready(addr: SocketAddr) -> (u16, Value) {
    let r = request(addr, "GET", "/readyz/cluster", b"");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// `GET /readyz`: the node's readiness, which Redis does not decide (its body reports the adapter).
fn readyz(addr: SocketAddr) -> (u16, Value) {
    let r = request(addr, "GET", "/readyz", b"");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// Waits until `/readyz` answers `status` with `"cluster": cluster` in its body.
fn wait_readyz(addr: SocketAddr, status: u16, cluster: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (s, v) = readyz(addr);
        if s == status && v["cluster"] == json!(cluster) {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {s} {v}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_ready(addr: SocketAddr, want: u16) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = ready(addr);
        if status == want {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz/cluster stayed {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rest(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    rest_as("alice", addr, method, path, body)
}

/// A REST call with an access token of `user` (company `acme`).
fn rest_as(
    user: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {}", acme_token(SECRET, user));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = request_with(
        addr,
        method,
        path,
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

/// The Node process: socket.io server + adapter, emitter, socket.io-client 4.x clients.
struct NodeSide {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
    events: Vec<Value>,
    next_id: u64,
    port: u16,
}

impl NodeSide {
    fn start(redis_url: &str) -> NodeSide {
        ensure_node_modules();
        let mut child = Command::new("node")
            .arg(interop_dir().join("cluster_node.js"))
            .arg(redis_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        let first = rx.recv_timeout(WAIT).expect("node harness started");
        assert_eq!(first["ready"], json!(true), "{first}");
        let port = first["port"].as_u64().unwrap() as u16;
        NodeSide {
            child,
            stdin,
            lines: rx,
            events: Vec::new(),
            next_id: 0,
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A socket.io-client 4.x client `name` of the server at `url`, authenticated with `token` (a shardcast node)
    /// or as `user` (the Node server: `socket.data.user` and the room `user:<id>`); its socket id.
    fn client(&mut self, name: &str, url: &str, token: Option<&str>, user: Option<&str>) -> String {
        let v = self
            .call(json!({"cmd": "client", "name": name, "url": url, "token": token, "user": user}));
        v["sid"].as_str().unwrap().to_owned()
    }

    /// Waits until the adapter's serverCount() (PUBSUB NUMSUB) is `n`: every node's subscription is in place.
    fn wait_server_count(&mut self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.call(json!({"cmd": "serverCount"}))["count"] != json!(n) {
            assert!(Instant::now() < deadline, "PUBSUB NUMSUB never reached {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn call(&mut self, mut cmd: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no answer to {cmd}"));
            if v["id"] == json!(id) {
                assert_eq!(v["ok"], json!(true), "{cmd} -> {v}");
                return v;
            }
            self.events.push(v);
        }
    }

    /// Waits until `pred` holds for the events seen so far; returns them.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&[Value]) -> bool) -> &[Value] {
        let deadline = Instant::now() + WAIT;
        while !pred(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => self.events.push(v),
                Err(_) => panic!("timed out waiting for {what}; events: {:#?}", self.events),
            }
        }
        &self.events
    }

    /// Events `event` received by `client`.
    fn received(&self, client: &str, event: &str) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| e["ev"] == "recv" && e["client"] == client && e["event"] == event)
            .map(|e| e["args"].clone())
            .collect()
    }

    /// Broadcasts a marker to everyone from the Node server and waits until `clients` all saw it: everything
    /// published before it on the same path has been delivered.
    fn barrier(&mut self, clients: &[&str], n: u64) {
        self.call(json!({"cmd": "emit", "event": "marker", "args": [n]}));
        let names: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
        self.wait_for("the marker", |evs| {
            names.iter().all(|c| {
                evs.iter().any(|e| {
                    e["ev"] == "recv"
                        && e["client"] == json!(c)
                        && e["event"] == "marker"
                        && e["args"] == json!([n])
                })
            })
        });
    }
}

impl Drop for NodeSide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until fetchSockets sees `n` sockets in r1.
fn wait_members(node: &mut NodeSide, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = node.call(json!({"cmd": "fetchSockets", "in": ["r1"]}));
        if v["sockets"].as_array().unwrap().len() == n {
            return;
        }
        assert!(Instant::now() < deadline, "r1 never had {n} members: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(node: &NodeSide, client: &str, event: &str) -> usize {
    node.received(client, event).len()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The `id`s of fetchSockets answers, sorted.
fn sorted_ids(sockets: &[Value]) -> Vec<String> {
    sorted(
        sockets
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect(),
    )
}

/// An adapter in this test process (shards of its own: `shards`), subscribed to `redis`.
fn adapter(redis: &Redis, shards: usize) -> std::sync::Arc<shardcast::cluster::Cluster> {
    use shardcast::cluster::{AdapterState, Cluster, ClusterConfig};
    let config = ClusterConfig {
        redis_url: Some(redis.url()),
        request_timeout_ms: 1500,
        ..ClusterConfig::default()
    };
    let cluster = Cluster::start(config, shards, Default::default()).expect("adapter");
    let deadline = Instant::now() + WAIT;
    while cluster.stats().state() != AdapterState::Up {
        assert!(Instant::now() < deadline, "the adapter never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster
}

/// A Node socket.io server and two shardcast processes (2 shards and 1 shard) in one cluster, with clients on each.
#[test]
fn node_server_emitter_and_two_shardcast_nodes_share_one_cluster() {
    let mut redis = Redis::new("interop");
    redis.start();
    let a = serve("a", 2, &redis.url(), "");
    let b = serve("b", 1, &redis.url(), "");
    let uid_a = wait_ready(a.addr, 200)["uid"].as_str().unwrap().to_owned();
    let uid_b = wait_ready(b.addr, 200)["uid"].as_str().unwrap().to_owned();
    let mut node = NodeSide::start(&redis.url());
    // The harness's adapter subscribes asynchronously: PUBSUB NUMSUB counts the three nodes once it has.
    node.wait_server_count(3);

    let tok = acme_token(SECRET, "alice");
    let a1 = node.client("a1", &a.url(), Some(&tok), None);
    let b1 = node.client("b1", &b.url(), Some(&tok), None);
    let n1 = node.client("n1", &node.url(), None, None);
    let all = ["a1", "b1", "n1"];

    // Node -> everyone: binary stays binary, a Date arrives as its ISO text, nested values exactly.
    node.call(json!({"cmd": "emit", "event": "hello", "args": [1, {"x": [true, null, -2.5]}, {"$bin": "0102ff"}, {"$date": 1500}]}));
    node.barrier(&all, 1);
    for c in ["a1", "b1"] {
        assert_eq!(
            node.received(c, "hello"),
            vec![
                json!([1, {"x": [true, null, -2.5]}, {"$bin": "0102ff"}, "1970-01-01T00:00:01.500Z"])
            ],
            "{c}"
        );
    }

    // socketsJoin from the Node server applies to shardcast sockets; room and except broadcasts select them.
    node.call(json!({"cmd": "socketsJoin", "rooms": ["r1"]}));
    // The requesting Node server applies a socketsJoin to its own sockets when it reads its request back from
    // Redis, after a local emit that follows it: wait until the join shows everywhere.
    wait_members(&mut node, 3);
    node.call(
        json!({"cmd": "emit", "rooms": ["r1"], "except": [b1], "event": "to-r1", "args": ["x"]}),
    );
    node.call(json!({"cmd": "emit", "rooms": [a1], "event": "to-a1", "args": []}));
    node.barrier(&all, 2);
    assert_eq!(
        (
            count(&node, "a1", "to-r1"),
            count(&node, "b1", "to-r1"),
            count(&node, "n1", "to-r1")
        ),
        (1, 0, 1)
    );
    assert_eq!(
        (count(&node, "a1", "to-a1"), count(&node, "b1", "to-a1")),
        (1, 0)
    );

    // fetchSockets across the three nodes, with the rooms the join gave.
    let fetched = node.call(json!({"cmd": "fetchSockets", "in": ["r1"]}));
    assert_eq!(
        sorted_ids(fetched["sockets"].as_array().unwrap()),
        sorted(vec![a1.clone(), b1.clone(), n1.clone()])
    );
    for s in fetched["sockets"].as_array().unwrap() {
        let rooms = s["rooms"].as_array().unwrap();
        assert!(
            rooms.contains(&json!("r1")) && rooms.contains(&s["id"]),
            "{s}"
        );
    }
    let rooms = node.call(json!({"cmd": "allRooms"}));
    for r in [&a1, &b1, &n1, &"r1".to_owned()] {
        assert!(
            rooms["rooms"].as_array().unwrap().contains(&json!(r)),
            "{rooms}"
        );
    }

    // serverSideEmit with an ack: both shardcast nodes answer (each with its uid).
    let sse = node.call(json!({"cmd": "serverSideEmitWithAck", "event": "shardcast:info"}));
    let uids: Vec<String> = sse["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        sorted(uids),
        sorted(vec![uid_a.clone(), uid_b.clone()]),
        "{sse}"
    );

    // A broadcast with acks from the Node server: every client in r1 acknowledges, on whichever node it is.
    let acked =
        node.call(json!({"cmd": "emitWithAck", "rooms": ["r1"], "event": "ask", "args": [7]}));
    let mut froms: Vec<String> = acked["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["from"].as_str().unwrap().to_owned())
        .collect();
    froms.sort();
    assert_eq!(froms, ["a1", "b1", "n1"], "{acked}");

    // The emitter reaches shardcast clients in a room.
    node.call(json!({"cmd": "emitter", "rooms": ["r1"], "event": "from-emitter", "args": ["e", {"$bin": "00"}]}));
    // The emitter's message reaches every server through Redis, but the Node server delivers its own marker to its
    // own clients at once: wait for the event itself first, then the marker (which would reveal a duplicate).
    node.wait_for("the emitter's event", |evs| {
        all.iter().all(|c| {
            evs.iter().any(|e| {
                e["ev"] == "recv" && e["client"] == json!(c) && e["event"] == "from-emitter"
            })
        })
    });
    node.barrier(&all, 3);
    for c in all {
        assert_eq!(
            node.received(c, "from-emitter"),
            vec![json!(["e", {"$bin": "00"}])],
            "{c}"
        );
    }

    // socketsLeave: nobody is in r1 any more.
    node.call(json!({"cmd": "socketsLeave", "rooms": ["r1"]}));
    wait_members(&mut node, 0);
    let deadline = Instant::now() + WAIT;
    while !node.call(json!({"cmd": "fetchSockets", "in": ["r1"]}))["sockets"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "socketsLeave did not apply everywhere"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.call(json!({"cmd": "emit", "rooms": ["r1"], "event": "after-leave", "args": []}));
    node.barrier(&all, 4);
    for c in all {
        assert_eq!(count(&node, c, "after-leave"), 0, "{c}");
    }

    // A REST create on shardcast node A reaches the room's members on node A, node B and the Node server once.
    let (room, room_token) = messages_room(a.addr, "alice", "c0", true);
    for c in ["a1", "b1"] {
        // The room token node A issued is checked by node B too (shared room_token_secret).
        node.call(json!({"cmd": "clientSend", "name": c, "event": "realtime:join", "args": [{"name": room, "token": room_token}]}));
    }
    node.wait_for("both join successes", |evs| {
        ["a1", "b1"].iter().all(|c| {
            evs.iter()
                .any(|e| e["client"] == json!(c) && e["event"] == "realtime:join:success")
        })
    });
    node.call(json!({"cmd": "clientEmit", "name": "n1", "event": "join", "args": [room]}));
    let (status, created) = rest(
        a.addr,
        "POST",
        "/api/v1/channels/c0/messages",
        Some(json!({"resource": {"text": "hi all"}})),
    );
    assert_eq!(status, 201, "{created}");
    node.wait_for("the resource event everywhere", |evs| {
        all.iter().all(|c| {
            evs.iter()
                .any(|e| e["client"] == json!(c) && e["event"] == "realtime:resource")
        })
    });
    node.barrier(&all, 5);
    let mut payloads = Vec::new();
    for c in all {
        let got = node.received(c, "realtime:resource");
        assert_eq!(got.len(), 1, "{c} got {got:?}");
        payloads.push(got[0].clone());
    }
    assert_eq!(payloads[0], payloads[1]);
    assert_eq!(payloads[0], payloads[2]);
    assert_eq!(payloads[0][0]["action"], json!("created"));
    assert_eq!(payloads[0][0]["room"], json!(room));
    assert_eq!(payloads[0][0]["resource"]["text"], json!("hi all"));

    // disconnectSockets from the Node server disconnects a shardcast socket ("io server disconnect").
    node.call(json!({"cmd": "disconnectSockets", "in": [b1]}));
    node.wait_for("b1's disconnect", |evs| {
        evs.iter().any(|e| {
            e["ev"] == "disconnect" && e["client"] == "b1" && e["reason"] == "io server disconnect"
        })
    });
    let (_, stats_a) = ready(a.addr);
    assert!(
        stats_a["own_dropped"].as_u64().unwrap() >= 1,
        "A read its own broadcast back and dropped it: {stats_a}"
    );
    assert_eq!(stats_a["malformed"], json!(0));
}

/// The messages room of channel `channel` (created on `addr` by alice if `create`) and `user`'s room token for it.
fn messages_room(addr: SocketAddr, user: &str, channel: &str, create: bool) -> (String, String) {
    if create {
        let (status, v) = rest(
            addr,
            "POST",
            "/api/v1/companies/acme/workspaces/w1/channels",
            Some(json!({"resource": {"id": channel, "name": channel}})),
        );
        assert_eq!(status, 201, "{v}");
    }
    let path = format!("/api/v1/channels/{channel}/messages?websockets=true");
    let (status, v) = rest_as(user, addr, "GET", &path, None);
    assert_eq!(status, 200, "{v}");
    let ws = &v["websockets"][0];
    (
        ws["room"].as_str().unwrap().to_owned(),
        ws["token"].as_str().unwrap().to_owned(),
    )
}

/// `GET /api/v1/online` of `room` on `addr`, asked by `user` with its room token: (users, complete).
fn online_in(addr: SocketAddr, user: &str, room: &str, token: &str) -> (Vec<String>, bool) {
    let path = format!(
        "/api/v1/online?room={}&token={token}",
        room.replace('/', "%2F")
    );
    let (status, v) = rest_as(user, addr, "GET", &path, None);
    assert_eq!(status, 200, "{v}");
    let users: Vec<String> = serde_json::from_value(v["users"].clone()).unwrap();
    assert_eq!(v["count"], json!(users.len()), "{v}");
    (users, v["complete"].as_bool().unwrap())
}

/// Polls `online_in` until its users are `want` (presence follows connects and disconnects asynchronously).
fn wait_online(addr: SocketAddr, user: &str, room: &str, token: &str, want: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (users, complete) = online_in(addr, user, room, token);
        if users == want && complete {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "online stayed {users:?} (complete: {complete}), want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `online:get` of `users` from client `client`: each user's online flag, in order.
fn online_get(node: &mut NodeSide, client: &str, users: &[&str]) -> Vec<bool> {
    let v = node.call(json!({"cmd": "clientEmit", "name": client, "event": "online:get", "args": [{"data": users}]}));
    let pairs = v["reply"]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"));
    pairs
        .iter()
        .zip(users)
        .map(|(p, u)| {
            assert_eq!(p[0], json!(u), "{v}");
            p[1].as_bool().unwrap()
        })
        .collect()
}

/// `realtime:event` and presence across nodes: two shardcast nodes (node B publishes presence changes to the presence
/// room) and a Node socket.io server whose sockets carry `socket.data.user` and join `user:<id>`, socket.io-client 4.x
/// clients on each. A client's `realtime:event` on node A reaches the room's members on B and on the Node server once;
/// a service event of node B (its presence event) reaches the presence room's watchers on A and on the Node server once; `GET /api/v1/online` and `online:get` count each user
/// once across nodes, shards and sockets, drop a user when its last socket goes, and drop a killed node's users in the
/// first answer after the kill.
#[test]
fn realtime_events_and_presence_across_nodes() {
    let mut redis = Redis::new("presence");
    redis.start();
    let timeout = "request_timeout_ms = 1000";
    let a = serve("presence-a", 2, &redis.url(), timeout);
    let b = serve_with(
        "presence-b",
        1,
        &redis.url(),
        timeout,
        "presence_room = \"{room}/presence\"",
    );
    wait_ready(a.addr, 200);
    wait_ready(b.addr, 200);
    let mut node = NodeSide::start(&redis.url());
    node.wait_server_count(3);

    let (room, alice_tok) = messages_room(a.addr, "alice", "p0", true);
    // Each node has its own store: the channel is on A. Its room tokens are checked by B too (the shared
    // room_token_secret).
    let (_, bob_tok) = messages_room(a.addr, "bob", "p0", false);
    let (_, dave_tok) = messages_room(a.addr, "dave", "p0", false);
    let token = |u: &str| acme_token(SECRET, u);
    let node_url = node.url();
    // alice on A, bob on B, carol on the Node server, dave on A and on B.
    node.client("a1", &a.url(), Some(&token("alice")), None);
    let d_a = node.client("d_a", &a.url(), Some(&token("dave")), None);
    node.client("n1", &node_url, None, Some("carol"));
    node.client("b2", &b.url(), Some(&token("bob")), None);
    let d_b = node.client("d_b", &b.url(), Some(&token("dave")), None);
    let join = |node: &mut NodeSide, c: &str, r: &str, tok: &str| {
        node.call(json!({"cmd": "clientSend", "name": c, "event": "realtime:join", "args": [{"name": r, "token": tok}]}));
        node.wait_for("the join", |evs| {
            evs.iter().any(|e| {
                e["client"] == json!(c)
                    && e["event"] == "realtime:join:success"
                    && e["args"] == json!([{ "name": r }])
            })
        });
    };
    // Watchers of the room's presence room: alice on A (a room token for its name, as a service hands out) and carol.
    let presence = format!("{room}/presence");
    let presence_tok = RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0)
        .unwrap()
        .sign("alice", &presence)
        .unwrap();
    join(&mut node, "a1", &presence, &presence_tok);
    node.call(json!({"cmd": "clientEmit", "name": "n1", "event": "join", "args": [presence]}));
    join(&mut node, "a1", &room, &alice_tok);
    join(&mut node, "d_a", &room, &dave_tok);
    node.call(json!({"cmd": "clientEmit", "name": "n1", "event": "join", "args": [room]}));
    join(&mut node, "b2", &room, &bob_tok);
    join(&mut node, "d_b", &room, &dave_tok);
    let members = ["a1", "d_a", "n1", "b2", "d_b"];

    // The Node server sees shardcast's sockets with their users (data.user.id, the room user:<id>).
    let fetched = node.call(json!({"cmd": "fetchSockets", "in": ["user:dave"]}));
    let sockets = fetched["sockets"].as_array().unwrap();
    assert_eq!(sorted_ids(sockets), sorted(vec![d_a.clone(), d_b.clone()]));
    for s in sockets {
        assert_eq!(s["data"]["user"], json!({"id": "dave"}), "{s}");
        // When the socket authenticated and joined the room, for presence changes across nodes.
        assert!(s["data"]["since"]["user:dave"].is_u64(), "{s}");
        assert!(s["data"]["since"][&room].is_u64(), "{s}");
    }

    // A service event of node B (its presence event for bob's join) reaches the presence room's watchers on A and on
    // the Node server.
    let bob_joined =
        json!([{"name": presence, "data": {"presence": "join", "room": room, "user": "bob"}}]);
    node.wait_for("bob's presence event", |evs| {
        ["a1", "n1"].iter().all(|c| {
            evs.iter().any(|e| {
                e["client"] == json!(c) && e["event"] == "realtime:event" && e["args"] == bob_joined
            })
        })
    });

    // A client's realtime:event on node A reaches every member, on A, on B and on the Node server.
    let said = json!([{"name": room, "data": {"typing": true}}]);
    node.call(json!({"cmd": "clientSend", "name": "a1", "event": "realtime:event", "args": [{"name": room, "data": {"typing": true}, "token": alice_tok}]}));
    node.wait_for("the realtime:event everywhere", |evs| {
        members.iter().all(|c| {
            evs.iter().any(|e| {
                e["client"] == json!(c) && e["event"] == "realtime:event" && e["args"] == said
            })
        })
    });
    node.barrier(&members, 1);
    for c in members {
        let got = node.received(c, "realtime:event");
        assert_eq!(
            got.iter().filter(|g| **g == said).count(),
            1,
            "{c}: {got:?}"
        );
        // Once to each watcher; the room's members who do not watch its presence room get nothing of it.
        let n = got.iter().filter(|g| **g == bob_joined).count();
        let watcher = ["a1", "n1"].contains(&c);
        assert_eq!(n, usize::from(watcher), "{c}: {got:?}");
    }

    // Who is in the room, asked on either node: each user once, whichever nodes and sockets they have.
    let everyone = ["alice", "bob", "carol", "dave"];
    wait_online(a.addr, "alice", &room, &alice_tok, &everyone);
    wait_online(b.addr, "bob", &room, &bob_tok, &everyone);
    let asked = ["alice", "bob", "carol", "dave", "erin"];
    assert_eq!(
        online_get(&mut node, "a1", &asked),
        [true, true, true, true, false]
    );

    // dave leaves node A: still online through node B; then the last socket goes and so does dave.
    node.call(json!({"cmd": "close", "name": "d_a"}));
    assert_eq!(online_in(a.addr, "alice", &room, &alice_tok).0, everyone);
    node.call(json!({"cmd": "close", "name": "d_b"}));
    wait_online(
        a.addr,
        "alice",
        &room,
        &alice_tok,
        &["alice", "bob", "carol"],
    );
    assert_eq!(
        online_get(&mut node, "a1", &asked),
        [true, true, true, false, false]
    );

    // Node B killed: bob (only there) is out of the first answer after the kill; complete or not, depending on
    // whether Redis noticed the closed connection before the question (then B is not counted) or not (then B does
    // not answer within request_timeout_ms and is left out).
    drop(b);
    let (users, _) = online_in(a.addr, "alice", &room, &alice_tok);
    assert_eq!(users, ["alice", "carol"]);
    assert_eq!(online_get(&mut node, "a1", &["bob"]), [false]);
    wait_online(a.addr, "alice", &room, &alice_tok, &["alice", "carol"]);
}

/// Sends `realtime:join` (`leave`: `realtime:leave`) of `room` from client `c` and waits for one more success than
/// `c` had.
fn join_or_leave(node: &mut NodeSide, c: &str, room: &str, token: Option<&str>) {
    let (event, success) = match token {
        Some(_) => ("realtime:join", "realtime:join:success"),
        None => ("realtime:leave", "realtime:leave:success"),
    };
    let want = json!([{ "name": room }]);
    let before = node
        .received(c, success)
        .iter()
        .filter(|a| **a == want)
        .count();
    let mut arg = json!({ "name": room });
    if let Some(t) = token {
        arg["token"] = json!(t);
    }
    node.call(json!({"cmd": "clientSend", "name": c, "event": event, "args": [arg]}));
    let c = c.to_owned();
    node.wait_for(success, |evs| {
        evs.iter()
            .filter(|e| e["client"] == json!(c) && e["event"] == success && e["args"] == want)
            .count()
            > before
    });
}

/// The presence room announcements about `user` that client `w` received, in order (`join` / `leave`).
fn presence_seen(events: &[Value], w: &str, presence: &str, user: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["ev"] == "recv" && e["client"] == w && e["event"] == "realtime:event")
        .filter(|e| e["args"][0]["name"] == presence && e["args"][0]["data"]["user"] == user)
        .map(|e| {
            e["args"][0]["data"]["presence"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The `user:online` announcements about `user` that client `w` received, in order (`is_online`).
fn online_seen(events: &[Value], w: &str, user: &str) -> Vec<bool> {
    events
        .iter()
        .filter(|e| e["ev"] == "recv" && e["client"] == w && e["event"] == "realtime:resource")
        .filter(|e| e["args"][0]["type"] == "user:online")
        .map(|e| &e["args"][0]["resource"]["online"][0])
        .filter(|o| o["user_id"] == user)
        .map(|o| o["is_online"].as_bool().unwrap())
        .collect()
}

/// Waits until node `addr` has decided `n` presence changes (`presence_decided` of `/readyz/cluster`).
fn wait_decided(addr: SocketAddr, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, v) = ready(addr);
        if v["presence_decided"] == json!(n) {
            return;
        }
        assert!(Instant::now() < deadline, "presence_decided stayed {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the cluster (fetchSockets of `user:<id>` from the Node server) sees `n` sockets of `user`: a node has
/// forgotten a socket whose client saw its disconnect.
fn wait_user_sockets(node: &mut NodeSide, user: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = node.call(json!({"cmd": "fetchSockets", "in": [format!("user:{user}")]}));
        if v["sockets"].as_array().unwrap().len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} never had {n} sockets: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Presence *changes* across nodes: two shardcast nodes, both with `presence_room = "{room}/presence"` and the
/// online service, and a client of the Node server watching the room's presence room and `/users/online/acme`.
/// erin online on A and in the room there is announced once; her socket on B, its join and its leave announce
/// nothing; her leave on A announces one `leave`; her next join on B one `join` (B decides the changes of one user and
/// room in order, so this also proves its two earlier decisions announced nothing); her socket on A going while the
/// one on B stays announces nothing, the one on B going one offline, a new socket on A one online (the same proof for
/// A), its going one offline.
#[test]
fn presence_changes_are_announced_once_across_nodes() {
    let mut redis = Redis::new("changes");
    redis.start();
    let timeout = "request_timeout_ms = 2000";
    let presence_room = "presence_room = \"{room}/presence\"";
    let a = serve_with("changes-a", 2, &redis.url(), timeout, presence_room);
    let b = serve_with("changes-b", 1, &redis.url(), timeout, presence_room);
    wait_ready(a.addr, 200);
    wait_ready(b.addr, 200);
    let mut node = NodeSide::start(&redis.url());
    node.wait_server_count(3);

    let (room, _) = messages_room(a.addr, "alice", "c0", true);
    let (_, tok) = messages_room(a.addr, "erin", "c0", false);
    let presence = format!("{room}/presence");
    let erin = acme_token(SECRET, "erin");
    let node_url = node.url();
    node.client("w", &node_url, None, None);
    for watched in [presence.as_str(), "/users/online/acme"] {
        node.call(json!({"cmd": "clientEmit", "name": "w", "event": "join", "args": [watched]}));
    }
    let wait_seen = |node: &mut NodeSide, joins: &[&str], online: &[bool]| {
        let what = format!("presence {joins:?}, online {online:?}");
        node.wait_for(&what, |evs| {
            presence_seen(evs, "w", &presence, "erin") == joins
                && online_seen(evs, "w", "erin") == online
        });
    };

    // On A: online and in the room, announced by A.
    node.client("e_a", &a.url(), Some(&erin), None);
    wait_seen(&mut node, &[], &[true]);
    join_or_leave(&mut node, "e_a", &room, Some(&tok));
    wait_seen(&mut node, &["join"], &[true]);
    wait_decided(a.addr, 2);
    // Also on B: B announces neither online nor the join; leaving B announces no leave. (Each decision is awaited
    // before the next step: a change elsewhere while a node is still asking is the race of two nodes at once.)
    node.client("e_b", &b.url(), Some(&erin), None);
    join_or_leave(&mut node, "e_b", &room, Some(&tok));
    join_or_leave(&mut node, "e_b", &room, None);
    wait_decided(b.addr, 3);
    // Leaving A, where she was last in the room: one leave, from A.
    join_or_leave(&mut node, "e_a", &room, None);
    wait_seen(&mut node, &["join", "leave"], &[true]);
    // Joining on B now that she is in the room nowhere else: one join, from B, after B's two silent decisions.
    join_or_leave(&mut node, "e_b", &room, Some(&tok));
    wait_seen(&mut node, &["join", "leave", "join"], &[true]);

    // Her socket on A goes, the one on B stays: nothing. The one on B goes: offline (and the room's leave), from B.
    node.call(json!({"cmd": "close", "name": "e_a"}));
    wait_user_sockets(&mut node, "erin", 1);
    wait_decided(a.addr, 4);
    node.call(json!({"cmd": "close", "name": "e_b"}));
    wait_seen(
        &mut node,
        &["join", "leave", "join", "leave"],
        &[true, false],
    );
    // A new socket on A: online, from A, after A's silent decision for the first socket's going; then offline.
    node.client("e_a2", &a.url(), Some(&erin), None);
    wait_seen(
        &mut node,
        &["join", "leave", "join", "leave"],
        &[true, false, true],
    );
    node.call(json!({"cmd": "close", "name": "e_a2"}));
    wait_seen(
        &mut node,
        &["join", "leave", "join", "leave"],
        &[true, false, true, false],
    );
    node.barrier(&["w"], 1);
    assert_eq!(
        presence_seen(&node.events, "w", &presence, "erin"),
        ["join", "leave", "join", "leave"]
    );
    assert_eq!(
        online_seen(&node.events, "w", "erin"),
        [true, false, true, false]
    );
    // What each node decided not to announce: B its online, join and leave; A its offline.
    assert_eq!(ready(a.addr).1["presence_elsewhere"], json!(1));
    assert_eq!(ready(b.addr).1["presence_elsewhere"], json!(3));
    assert_eq!(ready(a.addr).1["presence_decided"], json!(6));
    assert_eq!(ready(b.addr).1["presence_decided"], json!(6));
}

/// Raw websocket client of a shardcast node: authenticates in the CONNECT.
fn ws_client(addr: SocketAddr) -> Ws {
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
    assert!(ws.recv_text_skip_ping().starts_with('0'));
    ws.send_text(&format!(
        "40{}",
        json!({"token": acme_token(SECRET, "alice")})
    ));
    assert!(ws.recv_text_skip_ping().starts_with("40"));
    assert_eq!(ws.recv_text_skip_ping(), r#"42["authenticated"]"#);
    ws
}

fn emitter_broadcast(event: &str, arg: &str) -> Vec<u8> {
    codec::encode_broadcast(
        codec::EMITTER_UID,
        "/",
        vec![Mp::str(event), Mp::str(arg)],
        &Selector::default(),
    )
}

/// Redis down at start, then up, then stopped and restarted mid-stream: local clients are served throughout,
/// remote deliveries resume after each (re)connection; malformed channel messages are counted and dropped.
#[test]
fn redis_faults_and_malformed_messages() {
    let mut redis = Redis::new("faults");
    // Down at start: the node starts, serves local clients, reports 503 and keeps retrying.
    let a = serve("faults", 1, &redis.url(), "message_bytes_max = 4096");
    let (status, v) = ready(a.addr);
    assert_eq!(status, 503, "{v}");
    // The node itself is ready (it serves its clients); /readyz says where the adapter stands.
    wait_readyz(a.addr, 200, "down");
    let mut ws = ws_client(a.addr);
    redis.start();
    wait_ready(a.addr, 200);
    wait_readyz(a.addr, 200, "up");
    assert_eq!(
        redis.publish("socket.io#/#", &emitter_broadcast("e1", "x")),
        1
    );
    assert_eq!(ws.recv_text_skip_ping(), r#"42["e1","x"]"#);

    // Malformed: not MessagePack, wrong shape, too large; then a good one still arrives.
    redis.publish("socket.io#/#", b"\xc1 not msgpack");
    redis.publish(
        "socket.io#/#",
        &shardcast::cluster::msgpack::encode(&Mp::Array(vec![Mp::str("u")])),
    );
    redis.publish("socket.io#/#", &vec![0x90u8; 5000]);
    redis.publish("socket.io-request#/#", b"{\"type\":\"nope\"}");
    redis.publish("socket.io#/#", &emitter_broadcast("e2", "y"));
    assert_eq!(ws.recv_text_skip_ping(), r#"42["e2","y"]"#);
    let (_, stats) = ready(a.addr);
    assert_eq!(
        (stats["malformed"].as_u64(), stats["oversized"].as_u64()),
        (Some(3), Some(1)),
        "{stats}"
    );

    // Stopped mid-stream: local delivery continues, the remote copy is dropped and counted, /readyz says so.
    let (room, room_token) = messages_room(a.addr, "alice", "f0", true);
    ws.send_text(&format!(
        "42{}",
        json!(["realtime:join", {"name": room, "token": room_token}])
    ));
    assert_eq!(
        ws.recv_text_skip_ping(),
        format!("42{}", json!(["realtime:join:success", {"name": room}]))
    );
    redis.stop();
    wait_ready(a.addr, 503);
    wait_readyz(a.addr, 200, "down");
    let (status, _) = rest(
        a.addr,
        "POST",
        "/api/v1/channels/f0/messages",
        Some(json!({"resource": {"text": "while down"}})),
    );
    assert_eq!(status, 201);
    let frame = ws.recv_text_skip_ping();
    assert!(
        frame.starts_with(r#"42["realtime:resource""#) && frame.contains("while down"),
        "{frame}"
    );
    let (_, stats) = ready(a.addr);
    assert!(stats["publish_dropped"].as_u64().unwrap() >= 1, "{stats}");

    // Restarted on the same port: the node resubscribes by itself and remote deliveries flow again.
    redis.start();
    let v = wait_ready(a.addr, 200);
    assert!(v["connections"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(
        redis.publish("socket.io#/#", &emitter_broadcast("e3", "z")),
        1
    );
    assert_eq!(ws.recv_text_skip_ping(), r#"42["e3","z"]"#);

    // Only the subscriber connection dropped (Redis keeps running): the node notices and resubscribes.
    let before = ready(a.addr).1["connections"].as_u64().unwrap();
    assert!(
        redis
            .command(&[b"CLIENT", b"KILL", b"TYPE", b"pubsub"])
            .starts_with(':')
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, v) = ready(a.addr);
        if status == 200 && v["connections"].as_u64().unwrap() > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no resubscription after CLIENT KILL: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        redis.publish("socket.io#/#", &emitter_broadcast("e4", "w")),
        1
    );
    assert_eq!(ws.recv_text_skip_ping(), r#"42["e4","w"]"#);
}

/// Clustered without a shared room-token secret, room tokens of one node would fail on the others: refused loudly.
#[test]
fn a_clustered_node_needs_the_shared_room_token_secret() {
    let dir = scratch("no-room-secret");
    let cfg = dir.join("shardcast.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n[realtime]\nroom_token_key_random = true\n[cluster]\nredis_url = \"redis://127.0.0.1:1\"\n[orm]\nembedded_path = \"{}\"\n",
            dir.join("data.redb").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--no-pin", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .expect("run shardcast");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("realtime.room_token_secret must be set"),
        "{err}"
    );
}

/// A node's own requests and broadcasts through the Rust API ([`Cluster::broadcast`], [`Cluster::fetch_sockets`],
/// [`Cluster::server_side_emit`], [`Cluster::server_side_emit_with_ack`]), sent from this test process's adapter
/// (no shards of its own) to a real Node socket.io server with the adapter and a `shardcast serve` process, which
/// receive and answer them; and the adapter's timeout semantics when a node does not answer.
#[test]
fn the_rust_api_sends_broadcasts_and_requests_that_other_nodes_answer() {
    use futures_lite::future::block_on;
    use shardcast::cluster::adapter::ClusterError;

    let mut redis = Redis::new("api");
    redis.start();
    let mut node = NodeSide::start(&redis.url());
    let cluster = adapter(&redis, 0);
    node.wait_server_count(2);

    // serverSideEmit with an ack, the Node server the only other node: its listener's answer.
    let acks = block_on(cluster.server_side_emit_with_ack("test:ping", &[json!(5)])).unwrap();
    assert_eq!(acks, vec![json!({"from": "node", "arg": 5})]);
    // Without an ack: the Node server's listener gets the arguments.
    block_on(cluster.server_side_emit("test:note", &[json!("hi"), json!({"n": 1})])).unwrap();
    node.wait_for("the serverSideEmit", |evs| {
        evs.iter().any(|e| {
            e["ev"] == "serverSide"
                && e["event"] == "test:note"
                && e["args"] == json!(["hi", {"n": 1}])
        })
    });

    // A shardcast node joins; clients on both.
    let b = serve("api-b", 1, &redis.url(), "");
    wait_ready(b.addr, 200);
    node.wait_server_count(3);
    let tok = acme_token(SECRET, "alice");
    let node_url = node.url();
    let n1 = node.client("n1", &node_url, None, None);
    let n2 = node.client("n2", &node_url, None, None);
    let b1 = node.client("b1", &b.url(), Some(&tok), None);
    node.call(json!({"cmd": "clientEmit", "name": "n1", "event": "join", "args": ["r1"]}));
    node.call(json!({"cmd": "socketsJoin", "in": [b1], "rooms": ["r1"]}));

    // fetchSockets from the Rust side lists both nodes' sockets (r1: once the join has applied on node B).
    let r1 = codec::Selector {
        rooms: vec!["r1".into()],
        except: Vec::new(),
    };
    let deadline = Instant::now() + WAIT;
    let in_r1 = loop {
        let got = block_on(cluster.fetch_sockets(r1.clone())).unwrap();
        if got.len() == 2 || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        sorted_ids(&in_r1),
        sorted(vec![n1.clone(), b1.clone()]),
        "{in_r1:?}"
    );
    for s in &in_r1 {
        let rooms = s["rooms"].as_array().unwrap();
        assert!(
            rooms.contains(&json!("r1")) && rooms.contains(&s["id"]),
            "{s}"
        );
        assert!(s["handshake"].is_object(), "{s}");
    }
    let everyone = block_on(cluster.fetch_sockets(codec::Selector::default())).unwrap();
    assert_eq!(
        sorted_ids(&everyone),
        sorted(vec![n1.clone(), n2.clone(), b1.clone()])
    );

    // Broadcasts to all, to a room, with except (a room, then a socket id), then a marker on the same path.
    let sel = |rooms: &[&str], except: &[&str]| codec::Selector {
        rooms: rooms.iter().map(|r| r.to_string()).collect(),
        except: except.iter().map(|r| r.to_string()).collect(),
    };
    assert!(cluster.broadcast(
        sel(&[], &[]),
        "to-all",
        &[json!(1), json!({"k": [true, null]})]
    ));
    assert!(cluster.broadcast(sel(&["r1"], &[]), "to-r1", &[json!("x")]));
    assert!(cluster.broadcast(sel(&[], &["r1"]), "not-r1", &[]));
    assert!(cluster.broadcast(sel(&["r1"], &[&n1]), "r1-not-n1", &[]));
    assert!(cluster.broadcast(sel(&[], &[]), "marker", &[json!(9)]));
    let all = ["n1", "n2", "b1"];
    node.wait_for("the marker everywhere", |evs| {
        all.iter().all(|c| {
            evs.iter()
                .any(|e| e["ev"] == "recv" && e["client"] == json!(c) && e["event"] == "marker")
        })
    });
    for c in all {
        assert_eq!(
            node.received(c, "to-all"),
            vec![json!([1, {"k": [true, null]}])],
            "{c}"
        );
    }
    let counts = |event: &str| {
        (
            count(&node, "n1", event),
            count(&node, "n2", event),
            count(&node, "b1", event),
        )
    };
    assert_eq!(counts("to-r1"), (1, 0, 1));
    assert_eq!(node.received("b1", "to-r1"), vec![json!(["x"])]);
    assert_eq!(counts("not-r1"), (0, 1, 0));
    assert_eq!(counts("r1-not-n1"), (0, 0, 1));

    // serverSideEmit with an ack while node B has no listener for the event: the adapter's timeout semantics.
    let err = block_on(cluster.server_side_emit_with_ack("test:ping", &[json!(6)])).unwrap_err();
    assert_eq!(
        err,
        ClusterError::AckTimeout {
            received: 1,
            expected: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "timeout reached: only 1 responses received out of 2"
    );
    // ... and the event node B answers while the Node server does not: the other way round.
    let err = block_on(cluster.server_side_emit_with_ack("shardcast:info", &[])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeout reached: only 1 responses received out of 2"
    );
    let (_, stats) = ready(b.addr);
    assert_eq!(stats["malformed"], json!(0), "{stats}");
}

/// The same API on a node with shards of its own (in-process, 2 shards): a broadcast also reaches this node's
/// selected sockets, and fetchSockets lists them first, then the Node server's.
#[test]
fn the_rust_api_includes_the_nodes_own_shards() {
    use futures_lite::future::block_on;
    use shardcast::cluster::node;
    use shardcast::proto::RawJson;
    use shardcast::server::{self, Event, ServerConfig, ShardApp, ShardCtx, Socket, SocketIo};
    use std::rc::Rc;
    use std::sync::Arc;

    let mut redis = Redis::new("api-local");
    redis.start();
    let mut node_side = NodeSide::start(&redis.url());
    let cluster = adapter(&redis, 2);
    let c = cluster.clone();
    let app = move |shard: &Rc<ShardCtx>| {
        node::install(shard, &c);
        let mut io = SocketIo::new();
        io.namespace("/")
            .on_connect(|socket: Socket, _auth: Option<RawJson>| async move {
                node::socket_connected(&socket);
                Ok(())
            })
            .on("join", |socket: &Socket, event: Event| {
                let (room,): (String,) = event.args.parse().unwrap();
                socket.join(&room);
                event.ack.unwrap().send(RawJson::empty_array());
            })
            .on_disconnect(|socket: &Socket, _reason: &str| node::socket_disconnected(socket));
        ShardApp {
            socketio: Some(io),
            router: None,
        }
    };
    let cfg = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: 2,
        pin_shards: false,
        ..ServerConfig::default()
    };
    let handle = server::start(cfg, Arc::new(app)).expect("start");
    let addr = handle.local_addr;
    node_side.wait_server_count(2);
    let connect = || {
        let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
        ws.recv();
        ws.send_text("40");
        let reply = ws.recv_text_skip_ping();
        let sid: Value = serde_json::from_str(reply.strip_prefix("40").unwrap()).unwrap();
        (ws, sid["sid"].as_str().unwrap().to_owned())
    };
    let (mut w1, s1) = connect();
    let (mut w2, s2) = connect();
    w1.send_text(r#"421["join","r1"]"#);
    assert_eq!(w1.recv_text_skip_ping(), "431[]");
    let node_url = node_side.url();
    let n1 = node_side.client("n1", &node_url, None, None);
    node_side.call(json!({"cmd": "clientEmit", "name": "n1", "event": "join", "args": ["r1"]}));

    let r1 = codec::Selector {
        rooms: vec!["r1".into()],
        except: Vec::new(),
    };
    let in_r1 = block_on(cluster.fetch_sockets(r1.clone())).unwrap();
    let ids: Vec<&str> = in_r1.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [s1.as_str(), n1.as_str()], "this node's sockets first");
    let everyone = block_on(cluster.fetch_sockets(codec::Selector::default())).unwrap();
    assert_eq!(
        sorted_ids(&everyone),
        sorted(vec![s1.clone(), s2.clone(), n1.clone()])
    );

    assert!(cluster.broadcast(r1.clone(), "to-r1", &[json!("x")]));
    assert!(cluster.broadcast(
        codec::Selector {
            rooms: Vec::new(),
            except: vec!["r1".into()],
        },
        "not-r1",
        &[]
    ));
    assert!(cluster.broadcast(codec::Selector::default(), "marker", &[json!(1)]));
    // Each shard's queue keeps the order: what precedes the marker is exactly what the socket was selected for.
    assert_eq!(w1.recv_text_skip_ping(), r#"42["to-r1","x"]"#);
    assert_eq!(w1.recv_text_skip_ping(), r#"42["marker",1]"#);
    assert_eq!(w2.recv_text_skip_ping(), r#"42["not-r1"]"#);
    assert_eq!(w2.recv_text_skip_ping(), r#"42["marker",1]"#);
    node_side.wait_for("the marker", |evs| {
        evs.iter()
            .any(|e| e["ev"] == "recv" && e["client"] == "n1" && e["event"] == "marker")
    });
    assert_eq!(node_side.received("n1", "to-r1"), vec![json!(["x"])]);
    assert_eq!(count(&node_side, "n1", "not-r1"), 0);
    handle.shutdown();
    let _ = handle.join();
}
