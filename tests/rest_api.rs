//! The REST API of `shardcast serve` (demo services on the embedded store), through the real binary: access-token
//! errors, the access rule, and a CRUD round trip with room tokens.

mod common;

use common::{HttpResponse, Server, request_with};
use serde_json::{Value, json};
use shardcast::realtime::auth::{AccessSigner, AuthConfig, RoomTokens, Secret};

const SECRET: &str = "rest-test-secret-0123456789abcdef";
const ROOM_SECRET: &str = "rest-test-room-secret-0123456789";

fn config_file(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("shardcast.toml");
    let text = format!(
        "[auth]\njwt_secret = \"{SECRET}\"\n[realtime]\nroom_token_secret = \"{ROOM_SECRET}\"\n[orm]\nembedded_path = \"{}\"\n",
        dir.join("data.redb").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn serve(name: &str) -> Server {
    let cfg = config_file(name);
    Server::start(&[
        "serve",
        "--shards",
        "2",
        "--config",
        cfg.to_str().expect("utf8"),
    ])
}

fn token(sub: &str, companies: &[&str]) -> String {
    let signer = AccessSigner::new(&AuthConfig::hs256(SECRET)).expect("signer");
    let mut extra = serde_json::Map::new();
    extra.insert("companies".into(), json!(companies));
    signer.sign(sub, 3600, &extra).expect("sign")
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r: HttpResponse = request_with(server.addr, method, path, &headers, body.as_bytes());
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {}", r.text()));
    (r.status, v)
}

#[test]
fn rest_refuses_missing_bad_and_foreign_tokens_with_json_errors() {
    let server = serve("rest-errors");
    let path = "/api/v1/companies/acme/workspaces/w1/channels";
    let unauth = |msg: &str| json!({ "code": "unauthenticated", "message": msg });

    assert_eq!(
        call(&server, "GET", path, None, None),
        (401, unauth("jwt must be provided"))
    );
    assert_eq!(
        call(&server, "GET", path, Some("not-a-jwt"), None),
        (401, unauth("jwt malformed"))
    );
    let other = AccessSigner::new(&AuthConfig::hs256("another-secret-0123456789abcdef-xyz"))
        .expect("signer")
        .sign("alice", 3600, &serde_json::Map::new())
        .expect("sign");
    assert_eq!(
        call(&server, "GET", path, Some(&other), None),
        (401, unauth("invalid signature"))
    );
    // exp far in the past (beyond the 30 s leeway).
    let past = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({ "sub": "alice", "exp": 1_000_000_000u64, "companies": ["acme"] }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).expect("key"),
    )
    .expect("encode");
    assert_eq!(
        call(&server, "GET", path, Some(&past), None),
        (401, unauth("jwt expired"))
    );
    let none_alg = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","typ":"JWT"}"#),
        base64_url(br#"{"sub":"alice","exp":9999999999,"companies":["acme"]}"#)
    );
    assert_eq!(
        call(&server, "GET", path, Some(&none_alg), None),
        (401, unauth("invalid algorithm"))
    );

    // A valid token for another company: 403 on the list, on create, and on the items of acme's channels.
    let bob = token("bob", &["globex"]);
    let forbidden = json!({
        "code": "forbidden",
        "message": "forbidden: company \"acme\" is not in the `companies` claim of your token"
    });
    assert_eq!(
        call(&server, "GET", path, Some(&bob), None),
        (403, forbidden.clone())
    );
    let create = json!({ "resource": { "name": "general" } });
    assert_eq!(
        call(&server, "POST", path, Some(&bob), Some(create.clone())),
        (403, forbidden.clone())
    );
    let alice = token("alice", &["acme"]);
    let (status, created) = call(&server, "POST", path, Some(&alice), Some(create));
    assert_eq!(status, 201, "{created}");
    let id = created["resource"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        call(
            &server,
            "GET",
            &format!("/api/v1/channels/{id}"),
            Some(&bob),
            None
        ),
        (403, forbidden.clone())
    );
    let msgs = format!("/api/v1/channels/{id}/messages");
    let post = json!({ "resource": { "text": "hi" } });
    assert_eq!(
        call(&server, "POST", &msgs, Some(&bob), Some(post)),
        (403, forbidden.clone())
    );
    assert_eq!(
        call(&server, "GET", &msgs, Some(&bob), None),
        (403, forbidden)
    );

    // Routing and input errors.
    assert_eq!(
        call(&server, "GET", "/api/v1/nothing", Some(&alice), None),
        (
            404,
            json!({ "code": "not_found", "message": "no such route" })
        )
    );
    assert_eq!(
        call(&server, "PUT", path, Some(&alice), None),
        (
            405,
            json!({ "code": "method_not_allowed", "message": "method not allowed here; allowed: GET, POST" })
        )
    );
    assert_eq!(
        call(
            &server,
            "POST",
            path,
            Some(&alice),
            Some(json!({ "name": "x" }))
        ),
        (
            400,
            json!({ "code": "invalid_input", "message": "invalid input: the body must be {\"resource\": {...}}" })
        )
    );
    let (status, v) = call(
        &server,
        "GET",
        &format!("{path}?limit=0"),
        Some(&alice),
        None,
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );
    assert_eq!(
        call(&server, "GET", "/api/v1/channels/nope", Some(&alice), None),
        (404, json!({ "code": "not_found", "message": "not found" }))
    );
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn rest_crud_round_trip_on_the_embedded_store() {
    let server = serve("rest-crud");
    let alice = token("alice", &["acme"]);
    let rooms = RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 30).expect("room tokens");
    let channels = "/api/v1/companies/acme/workspaces/w1/channels";
    let channels_room = "/companies/acme/workspaces/w1/channels";

    // Create a channel with a chosen id; a second one with the same id conflicts.
    let body = json!({ "resource": { "id": "general", "name": "General", "description": "all" } });
    let (status, v) = call(&server, "POST", channels, Some(&alice), Some(body.clone()));
    assert_eq!(status, 201, "{v}");
    let r = &v["resource"];
    assert_eq!(
        (
            r["company_id"].as_str(),
            r["workspace_id"].as_str(),
            r["id"].as_str(),
            r["name"].as_str(),
            r["owner"].as_str()
        ),
        (
            Some("acme"),
            Some("w1"),
            Some("general"),
            Some("General"),
            Some("alice")
        )
    );
    assert_eq!(v["websocket"]["room"], channels_room);
    rooms
        .verify(
            v["websocket"]["token"].as_str().expect("token"),
            "alice",
            channels_room,
        )
        .expect("room token for alice and the channels room");
    let (status, v) = call(&server, "POST", channels, Some(&alice), Some(body));
    assert_eq!(
        (status, v),
        (
            409,
            json!({ "code": "conflict", "message": "conflict: a channel with id \"general\" exists" })
        )
    );

    // Messages: create two, newest first in the list, get, patch, delete.
    let msgs = "/api/v1/channels/general/messages";
    let room = "/channels/general/messages";
    let mut ids = Vec::new();
    for (i, text) in ["first", "second"].iter().enumerate() {
        let body = json!({ "resource": { "text": text, "seq": i, "meta": { "k": "v" } } });
        let (status, v) = call(&server, "POST", msgs, Some(&alice), Some(body));
        assert_eq!(status, 201, "{v}");
        let r = &v["resource"];
        assert_eq!(
            (
                r["channel_id"].as_str(),
                r["user_id"].as_str(),
                r["text"].as_str()
            ),
            (Some("general"), Some("alice"), Some(*text))
        );
        assert_eq!(
            (&r["seq"], &r["meta"]),
            (&json!(i), &json!({ "k": "v" })),
            "extra fields kept as sent"
        );
        assert_eq!(v["websocket"]["room"], room);
        ids.push(r["id"].as_str().expect("id").to_owned());
    }
    let (status, v) = call(
        &server,
        "GET",
        &format!("{msgs}?websockets=true"),
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let listed: Vec<&str> = v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        listed,
        vec![ids[1].as_str(), ids[0].as_str()],
        "newest first"
    );
    assert_eq!(v["next_page_token"], Value::Null);
    let ws = v["websockets"].as_array().expect("websockets");
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0]["room"], room);
    rooms
        .verify(ws[0]["token"].as_str().expect("token"), "alice", room)
        .expect("list room token");
    let (_, v) = call(&server, "GET", msgs, Some(&alice), None);
    assert!(
        v.get("websockets").is_none(),
        "no room tokens without websockets=true: {v}"
    );

    // Paging: one per page.
    let (_, p1) = call(
        &server,
        "GET",
        &format!("{msgs}?limit=1"),
        Some(&alice),
        None,
    );
    let token1 = p1["next_page_token"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, p2) = call(
        &server,
        "GET",
        &format!("{msgs}?limit=1&page_token={token1}"),
        Some(&alice),
        None,
    );
    assert_eq!(p2["resources"][0]["id"].as_str(), Some(ids[0].as_str()));
    let (status, v) = call(
        &server,
        "GET",
        &format!("{msgs}?page_token=garbage"),
        Some(&alice),
        None,
    );
    assert_eq!(
        (status, v["code"].as_str()),
        (400, Some("invalid_input")),
        "{v}"
    );

    let item = format!("/api/v1/messages/{}", ids[0]);
    let (status, v) = call(&server, "GET", &item, Some(&alice), None);
    assert_eq!(
        (status, v["resource"]["text"].as_str()),
        (200, Some("first")),
        "{v}"
    );
    let (status, v) = call(
        &server,
        "PATCH",
        &item,
        Some(&alice),
        Some(json!({ "resource": { "text": "edited" } })),
    );
    assert_eq!(
        (status, v["resource"]["text"].as_str()),
        (200, Some("edited")),
        "{v}"
    );
    assert_eq!(v["resource"]["seq"], json!(0));
    let (status, v) = call(&server, "DELETE", &item, Some(&alice), None);
    assert_eq!(
        (status, v["deleted"].as_bool(), v["resource"]["id"].as_str()),
        (200, Some(true), Some(ids[0].as_str()))
    );
    let gone = json!({ "code": "not_found", "message": "not found" });
    assert_eq!(
        call(&server, "GET", &item, Some(&alice), None),
        (404, gone.clone())
    );
    assert_eq!(
        call(&server, "DELETE", &item, Some(&alice), None),
        (404, gone)
    );

    // Channels: list, patch, and the built-in routes still answer.
    let (status, v) = call(
        &server,
        "GET",
        &format!("{channels}?websockets=true"),
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["resources"][0]["id"], "general");
    assert_eq!(v["websockets"][0]["room"], channels_room);
    let (status, v) = call(
        &server,
        "PATCH",
        "/api/v1/channels/general",
        Some(&alice),
        Some(json!({ "resource": { "name": "Town square" } })),
    );
    assert_eq!(
        (status, v["resource"]["name"].as_str()),
        (200, Some("Town square")),
        "{v}"
    );
    let r = common::request(server.addr, "GET", "/healthz", b"");
    assert_eq!(r.status, 200);
}

/// A message create reads the channel, checks the caller and writes in one IO-shard request: a refused create writes
/// nothing, whatever else is wrong with it, and a deleted channel takes no more messages.
#[test]
fn refused_message_creates_write_nothing() {
    let server = serve("rest-refused-writes");
    let alice = token("alice", &["acme"]);
    let bob = token("bob", &["globex"]);
    let channels = "/api/v1/companies/acme/workspaces/w1/channels";
    let (status, created) = call(
        &server,
        "POST",
        channels,
        Some(&alice),
        Some(json!({ "resource": { "id": "refusals", "name": "refusals" } })),
    );
    assert_eq!(status, 201, "{created}");
    let msgs = "/api/v1/channels/refusals/messages";
    let texts = |server: &Server| -> Vec<String> {
        let (status, page) = call(server, "GET", msgs, Some(&alice), None);
        assert_eq!(status, 200, "{page}");
        page["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|m| m["text"].as_str().expect("text").to_owned())
            .collect()
    };
    let post = |token: &str, resource: Value| {
        call(
            &server,
            "POST",
            msgs,
            Some(token),
            Some(json!({ "resource": resource })),
        )
    };
    // Another company's member: 403, also when the input is invalid too (the access check comes first).
    assert_eq!(post(&bob, json!({ "text": "bob" })).0, 403);
    let id = "6f9619ff-8b86-d011-b42d-00c04fc964ff";
    assert_eq!(post(&bob, json!({ "text": "bob", "id": id })).0, 403);
    // A member with an invalid input: 400, nothing written.
    assert_eq!(post(&alice, json!({ "text": "alice", "id": id })).0, 400);
    let (status, ok) = post(&alice, json!({ "text": "kept" }));
    assert_eq!(status, 201, "{ok}");
    assert_eq!(texts(&server), ["kept"]);
    // The channel deleted: creates are 404 and write nothing, even once the id is claimed again by its company.
    let (status, v) = call(
        &server,
        "DELETE",
        "/api/v1/channels/refusals",
        Some(&alice),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(post(&alice, json!({ "text": "late" })).0, 404);
    let (status, v) = call(
        &server,
        "POST",
        channels,
        Some(&alice),
        Some(json!({ "resource": { "id": "refusals", "name": "again" } })),
    );
    assert_eq!(status, 201, "{v}");
    assert!(texts(&server).is_empty(), "{:?}", texts(&server));
    assert_eq!(post(&bob, json!({ "text": "bob again" })).0, 403);
    assert!(texts(&server).is_empty());
}
