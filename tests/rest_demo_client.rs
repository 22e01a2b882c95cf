//! The README's "Try it" path, end to end with the real binary (2 shards) and the real socket.io-client 4.x:
//! `tests/interop/demo_client.js` joins a channel's room with the room token of a REST list, and receives exactly the
//! `created`, `updated` and `deleted` events of REST calls on that channel's messages, with the exact payloads, and
//! nothing of another channel.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Server, ensure_node_modules, interop_dir, request_with};
use serde_json::{Value, json};
use shardcast::realtime::auth::{AccessSigner, AuthConfig};

const SECRET: &str = "demo-test-secret-0123456789abcdef";

fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = request_with(
        server.addr,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_bytes(),
    );
    let v =
        serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{method} {path}: {}", r.text()));
    (r.status, v)
}

#[test]
fn demo_client_receives_exactly_the_rest_changes_of_its_room() {
    ensure_node_modules();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n[orm]\nembedded_path = \"{}\"\n",
            dir.join("db.redb").display()
        ),
    )
    .expect("config");
    let server = Server::start(&[
        "serve",
        "--shards",
        "2",
        "--config",
        cfg.to_str().expect("utf8"),
    ]);
    let mut extra = serde_json::Map::new();
    extra.insert("companies".into(), json!(["acme"]));
    let token = AccessSigner::new(&AuthConfig::hs256(SECRET))
        .expect("signer")
        .sign("alice", 3600, &extra)
        .expect("sign");

    for id in ["general", "random"] {
        let (status, v) = call(
            &server,
            "POST",
            "/api/v1/companies/acme/workspaces/main/channels",
            &token,
            Some(json!({ "resource": { "id": id, "name": id } })),
        );
        assert_eq!(status, 201, "{v}");
    }
    let (status, list) = call(
        &server,
        "GET",
        "/api/v1/channels/general/messages?websockets=true",
        &token,
        None,
    );
    assert_eq!(status, 200, "{list}");
    let room = list["websockets"][0]["room"]
        .as_str()
        .expect("room")
        .to_owned();
    let room_token = list["websockets"][0]["token"]
        .as_str()
        .expect("room token")
        .to_owned();
    assert_eq!(room, "/channels/general/messages");

    let mut child = Command::new("node")
        .arg(interop_dir().join("demo_client.js"))
        .args([
            &server.url(),
            &token,
            &format!("{room}={room_token}"),
            "--count",
            "3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line == format!("joined {room}") {
            break;
        }
    }
    assert_eq!(
        seen,
        vec!["authenticated".to_string(), format!("joined {room}")]
    );

    // A message in another channel first: the client must not receive it.
    let (status, _) = call(
        &server,
        "POST",
        "/api/v1/channels/random/messages",
        &token,
        Some(json!({ "resource": { "text": "elsewhere" } })),
    );
    assert_eq!(status, 201);
    let (_, created) = call(
        &server,
        "POST",
        "/api/v1/channels/general/messages",
        &token,
        Some(json!({ "resource": { "text": "hello", "seq": 1 } })),
    );
    let id = created["resource"]["id"].as_str().expect("id").to_owned();
    let item = format!("/api/v1/messages/{id}");
    let (_, updated) = call(
        &server,
        "PATCH",
        &item,
        &token,
        Some(json!({ "resource": { "text": "edited" } })),
    );
    let (_, deleted) = call(&server, "DELETE", &item, &token, None);

    let rest: Vec<String> = lines.map(|l| l.expect("line")).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "client output: {rest:?}");
    let events: Vec<Value> = rest
        .iter()
        .filter_map(|l| l.strip_prefix("realtime:resource "))
        .map(|j| serde_json::from_str(j).expect("json"))
        .collect();
    let expect = |action: &str, resource: &Value| json!({ "action": action, "room": room, "type": "message", "path": format!("/messages/{id}"), "resource": resource });
    assert_eq!(
        events,
        vec![
            expect("created", &created["resource"]),
            expect("updated", &updated["resource"]),
            expect("deleted", &deleted["resource"]),
        ],
        "client output: {rest:?}"
    );
}
