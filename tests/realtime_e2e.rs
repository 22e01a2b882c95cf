//! End to end through the real `shardcast serve` binary (2 shards, demo services on the embedded store) and the real
//! socket.io-client 4.x and 2.x (`tests/interop/realtime_clients.js`, installed with `npm ci` from
//! `tests/interop/package-lock.json` on first use): 200 clients over 10 channel rooms, REST create/update/delete of
//! messages reach every member of the channel's room exactly once with the exact payload and nobody else; leave
//! stops delivery; a client that reconnects and joins again receives later events.

mod common;

use std::io::{BufReader, Lines, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;
use serde_json::{Value, json};
use shardcast::realtime::auth::now_s;

const SECRET: &str = "e2e-access-secret-0123456789abcdef";
const ROOM_SECRET: &str = "e2e-room-secret-0123456789abcdef!";
const CHANNELS: usize = 10;
const CLIENTS: usize = 200;

/// `shardcast serve --shards 2` with its own embedded store; `realtime` is extra lines of the `[realtime]` table.
fn serve(name: &str, realtime: &str) -> (Server, PathBuf) {
    let dir = scratch_dir(name);
    let cfg = dir.join("shardcast.toml");
    let text = format!(
        "[server]\nping_interval_ms = 2000\nping_timeout_ms = 60000\n[auth]\njwt_secret = \"{SECRET}\"\n\
         [realtime]\nroom_token_secret = \"{ROOM_SECRET}\"\n{realtime}\n[orm]\nembedded_path = \"{}\"\n",
        dir.join("data.redb").display()
    );
    std::fs::write(&cfg, text).expect("config");
    let srv = Server::start(&["serve", "--shards", "2", "--config", cfg.to_str().unwrap()]);
    (srv, dir)
}

/// One keep-alive connection: every call lands on the same shard, so the events it publishes keep their order.
struct Rest {
    s: TcpStream,
    buf: Vec<u8>,
    auth: String,
}

impl Rest {
    fn new(addr: SocketAddr, token: &str) -> Rest {
        Rest {
            s: connect(addr),
            buf: Vec::new(),
            auth: format!("Bearer {token}"),
        }
    }
    fn call(&mut self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [
            ("Authorization", self.auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        send_request(&mut self.s, method, path, &headers, body.as_bytes());
        self.s.flush().unwrap();
        let r = read_response(&mut self.s, &mut self.buf).expect("a response");
        let v = serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", r.text()));
        (r.status, v)
    }
    /// Posts a message to channel `c`; returns the created resource.
    fn post(&mut self, c: usize, text: &str) -> Value {
        let (status, v) = self.call(
            "POST",
            &format!("/api/v1/channels/c{c}/messages"),
            Some(json!({ "resource": { "text": text } })),
        );
        assert_eq!(status, 201, "{v}");
        v["resource"].clone()
    }
}

fn room(c: usize) -> String {
    format!("/channels/c{c}/messages")
}

fn event(action: &str, c: usize, resource: &Value) -> Value {
    json!({
        "action": action,
        "room": room(c),
        "type": "message",
        "path": format!("/messages/{}", resource["id"].as_str().expect("id")),
        "resource": resource,
    })
}

/// The node process and its stdout lines.
struct Clients {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Clients {
    fn line(&mut self) -> String {
        let line = self
            .lines
            .next()
            .expect("node client output")
            .expect("utf-8 line");
        assert!(!line.starts_with("FAIL"), "{line}");
        line
    }
    fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").expect("write to node");
        self.stdin.flush().unwrap();
    }
    /// `COLLECT marker`: the events every client received since the previous collect.
    fn collect(&mut self, marker: &str) -> Vec<Vec<Value>> {
        self.command(&format!("COLLECT {marker}"));
        let mut all = vec![Vec::new(); CLIENTS];
        loop {
            let line = self.line();
            if line == "COLLECTED" {
                return all;
            }
            let rest = line
                .strip_prefix("EVENTS ")
                .unwrap_or_else(|| panic!("{line}"));
            let (i, json) = rest.split_once(' ').unwrap();
            all[i.parse::<usize>().unwrap()] = serde_json::from_str(json).unwrap();
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn e2e(major: &str) {
    ensure_node_modules();
    let (srv, dir) = serve(&format!("realtime-e2e-v{major}"), "");
    let mut rest = Rest::new(srv.addr, &acme_token(SECRET, "alice"));
    for c in 0..CHANNELS {
        let (status, v) = rest.call(
            "POST",
            "/api/v1/companies/acme/workspaces/w1/channels",
            Some(json!({ "resource": { "id": format!("c{c}"), "name": format!("Channel {c}") } })),
        );
        assert_eq!(status, 201, "{v}");
    }
    // Client i is user u<i> in channel c<i % 10>. With 4.x half put the token in the CONNECT auth payload and half
    // use the `authenticate` event; 2.x clients have no CONNECT packet for the main namespace (the server connects
    // them implicitly), so they all use `authenticate`.
    let clients: Vec<Value> = (0..CLIENTS)
        .map(|i| {
            let user = format!("u{i}");
            json!({
                "user": user, "token": acme_token(SECRET, &user), "channel": format!("c{}", i % CHANNELS),
                "auth": if i % 2 == 0 && major == "4" { "connect" } else { "event" },
            })
        })
        .collect();
    let (child, stdin, lines) =
        spawn_node_clients("realtime_clients.js", major, &dir, &srv.url(), &clients);
    let mut node = Clients {
        child,
        stdin,
        lines,
    };
    let mut shard = vec![0usize; CLIENTS];
    loop {
        let line = node.line();
        if line == "READY" {
            break;
        }
        let mut parts = line.split(' ').skip(1);
        let i: usize = parts.next().unwrap().parse().unwrap();
        shard[i] = parts.next().unwrap().parse().unwrap();
    }
    assert!(
        shard.contains(&0) && shard.contains(&1),
        "clients on both shards"
    );

    // Create, update, delete one message per channel, then an end marker.
    let mut expected: Vec<Vec<Value>> = Vec::new();
    for c in 0..CHANNELS {
        let created = rest.post(c, &format!("hello {c}"));
        let id = created["id"].as_str().unwrap().to_owned();
        let (status, v) = rest.call(
            "PATCH",
            &format!("/api/v1/messages/{id}"),
            Some(json!({ "resource": { "text": format!("edited {c}") } })),
        );
        assert_eq!(status, 200, "{v}");
        let updated = v["resource"].clone();
        let (status, v) = rest.call("DELETE", &format!("/api/v1/messages/{id}"), None);
        assert_eq!((status, &v["deleted"]), (200, &json!(true)), "{v}");
        let deleted = v["resource"].clone();
        let end = rest.post(c, "end1");
        expected.push(vec![
            event("created", c, &created),
            event("updated", c, &updated),
            event("deleted", c, &deleted),
            event("created", c, &end),
        ]);
    }
    let got = node.collect("end1");
    for i in 0..CLIENTS {
        assert_eq!(got[i], expected[i % CHANNELS], "client {i}");
    }

    // In channel 0: `leaver` leaves while `witness` on the same shard stays; `back` reconnects and joins again.
    let members: Vec<usize> = (0..CLIENTS).filter(|i| i % CHANNELS == 0).collect();
    let (leaver, witness) = members
        .iter()
        .flat_map(|&a| members.iter().map(move |&b| (a, b)))
        .find(|&(a, b)| a != b && shard[a] == shard[b])
        .expect("two members of channel 0 on one shard");
    let back = *members
        .iter()
        .find(|&&i| i != leaver && i != witness)
        .unwrap();
    node.command(&format!("LEAVE {leaver}"));
    assert_eq!(
        node.line(),
        format!("LEFT {leaver} {}", json!({ "name": room(0) }))
    );
    node.command(&format!("RECONNECT {back}"));
    assert!(node.line().starts_with(&format!("RECONNECTED {back} ")));
    let after_leave = rest.post(0, "after leave");
    let end2: Vec<Value> = (0..CHANNELS).map(|c| rest.post(c, "end2")).collect();
    let got = node.collect("end2");
    for (i, got) in got.iter().enumerate() {
        let c = i % CHANNELS;
        let want = if i == leaver {
            vec![]
        } else if c == 0 {
            vec![
                event("created", 0, &after_leave),
                event("created", 0, &end2[0]),
            ]
        } else {
            vec![event("created", c, &end2[c])]
        };
        assert_eq!(*got, want, "client {i} (leaver {leaver}, back {back})");
    }

    // The witness (same shard) got "after leave", so the leaver's shard delivered it already. The leaver joins
    // again and receives what comes next, and only that.
    node.command(&format!("JOIN {leaver}"));
    assert_eq!(
        node.line(),
        format!("JOINED {leaver} {}", json!({ "name": room(0) }))
    );
    let end3: Vec<Value> = (0..CHANNELS).map(|c| rest.post(c, "end3")).collect();
    let got = node.collect("end3");
    for (i, got) in got.iter().enumerate() {
        let c = i % CHANNELS;
        assert_eq!(*got, vec![event("created", c, &end3[c])], "client {i}");
    }
    node.command("QUIT");
    assert_eq!(node.line(), "PASS");
}

#[test]
fn v4_clients_receive_exactly_their_rooms_events_on_two_shards() {
    e2e("4");
}

#[test]
fn v2_clients_receive_exactly_their_rooms_events_on_two_shards() {
    e2e("2");
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// An HS256 token with the given claims, signed with `secret`.
fn hs256(secret: &str, claims: &Value) -> String {
    let msg = format!(
        "{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&claims.to_string())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap();
    let sig =
        jsonwebtoken::crypto::sign(msg.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    format!("{msg}.{sig}")
}

/// The room token the REST API hands `user` for channel `c`'s messages room.
fn room_token(srv: &Server, user: &str, c: usize) -> String {
    let mut rest = Rest::new(srv.addr, &acme_token(SECRET, user));
    let (status, v) = rest.call(
        "GET",
        &format!("/api/v1/channels/c{c}/messages?websockets=true"),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["websockets"][0]["room"], json!(room(c)));
    v["websockets"][0]["token"].as_str().unwrap().to_owned()
}

/// Every refusal of the contract, with the real client: the exact events and payloads it receives.
fn refusals(major: &str) {
    ensure_node_modules();
    let (srv, dir) = serve(
        &format!("realtime-refusals-v{major}"),
        "auth_timeout_ms = 500",
    );
    let mut rest = Rest::new(srv.addr, &acme_token(SECRET, "alice"));
    for c in 0..2 {
        let (status, v) = rest.call(
            "POST",
            "/api/v1/companies/acme/workspaces/w1/channels",
            Some(json!({ "resource": { "id": format!("c{c}"), "name": "x" } })),
        );
        assert_eq!(status, 201, "{v}");
    }
    let now = now_s();
    let claims = json!({ "sub": "u1", "companies": ["acme"], "exp": now + 3600 });
    let bad_tokens = [
        ("malformed", "not-a-jwt".to_owned(), "jwt malformed"),
        (
            "expired",
            hs256(SECRET, &json!({ "sub": "u1", "exp": now - 3600 })),
            "jwt expired",
        ),
        (
            "wrongly_signed",
            hs256("another-secret-another-secret-another", &claims),
            "invalid signature",
        ),
        (
            "alg_none",
            format!(
                "{}.{}.",
                b64(r#"{"alg":"none","typ":"JWT"}"#),
                b64(&claims.to_string())
            ),
            "invalid algorithm",
        ),
    ];
    let refused = |err: &str| json!([["unauthorized", { "err": err, "message": err }], ["disconnect", "io server disconnect"]]);
    let u1 = acme_token(SECRET, "u1");
    let own = room_token(&srv, "u1", 0);
    let (other_user, other_room) = (room_token(&srv, "u2", 0), room_token(&srv, "u1", 1));
    let join = |t: &str| json!(["realtime:join", { "name": room(0), "token": t }]);
    let join_error =
        |e: &str| json!(["realtime:join:error", { "name": room(0), "error": e, "message": e }]);
    let authenticate = json!(["authenticate", { "token": u1 }]);
    // (name, case, expected events)
    let mut cases: Vec<(String, Value, Value)> = vec![
        (
            "missing".into(),
            json!({ "emits": [["authenticate", {}]], "until": "disconnect" }),
            refused("jwt must be provided"),
        ),
        (
            "join_before_authenticate".into(),
            json!({ "emits": [join(&own)], "until": "realtime:join:error" }),
            json!([join_error("not authenticated")]),
        ),
        (
            "room_token_of_another_user".into(),
            json!({ "emits": [authenticate, join(&other_user)], "until": "realtime:join:error" }),
            json!([
                ["authenticated"],
                join_error("room token is for another user")
            ]),
        ),
        (
            "room_token_of_another_room".into(),
            json!({ "emits": [authenticate, join(&other_room)], "until": "realtime:join:error" }),
            json!([
                ["authenticated"],
                join_error("room token is for another room")
            ]),
        ),
        (
            "authentication_timeout".into(),
            json!({ "emits": [], "until": "disconnect" }),
            refused("authentication timeout"),
        ),
        (
            "valid".into(),
            json!({ "emits": [authenticate, join(&own)], "until": "realtime:join:success" }),
            json!([["authenticated"], ["realtime:join:success", { "name": room(0) }]]),
        ),
    ];
    for (name, t, err) in &bad_tokens {
        cases.push((
            format!("authenticate_{name}"),
            json!({ "emits": [["authenticate", { "token": t }]], "until": "disconnect" }),
            refused(err),
        ));
        if major == "4" {
            cases.push((
                format!("connect_{name}"),
                json!({ "connect_token": t, "emits": [], "until": "disconnect" }),
                refused(err),
            ));
        }
    }
    let list: Vec<Value> = cases
        .iter()
        .map(|(name, case, _)| {
            let mut c = case.clone();
            c["name"] = json!(name);
            c
        })
        .collect();
    let path = dir.join("cases.json");
    std::fs::write(
        &path,
        json!({ "url": srv.url(), "cases": list }).to_string(),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(interop_dir().join("realtime_cases.js"))
        .arg(major)
        .arg(&path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run node");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"PASS"), "{text}");
    assert_eq!(lines.len(), cases.len() + 1, "{text}");
    for ((name, _, want), line) in cases.iter().zip(&lines) {
        let json = line
            .strip_prefix(&format!("CASE {name} "))
            .unwrap_or_else(|| panic!("{line}"));
        let got: Value = serde_json::from_str(json).unwrap();
        assert_eq!(&got, want, "case {name}");
    }
}

#[test]
fn v4_refusals_carry_the_exact_events_and_payloads() {
    refusals("4");
}

#[test]
fn v2_refusals_carry_the_exact_events_and_payloads() {
    refusals("2");
}
