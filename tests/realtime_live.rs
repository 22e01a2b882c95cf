//! The realtime layer (`realtime::live`) in-process, with two shards: an app built from `live::install` and a tiny
//! CRUD service wrapped in `Realtime` that publishes through the shard's `ShardBus`, driven over a REST route.
//! Clients are raw websockets speaking Engine.IO v4 / Socket.IO v5, so every frame is asserted exactly.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;

use common::*;
use serde::Serialize;
use serde_json::{Map, Value, json};
use shardcast::realtime::auth::{
    AccessSigner, AccessVerifier, AuthConfig, RoomTokens, Secret, now_s,
};
use shardcast::realtime::crud::{
    CreateResult, CrudError, CrudService, DeleteResult, ExecutionContext, ListOptions, ListResult,
    Realtime, Recipient, Recipients, Template, UpdateResult,
};
use shardcast::realtime::live::{self, ShardBus};
use shardcast::realtime::protocol::{SessionConfig, SessionContext};
use shardcast::server::{
    self, Request, Response, ResponseFuture, Router, ServerConfig, ServerHandle, ShardApp,
    ShardCtx, SocketIo,
};

const SECRET: &str = "test-access-secret-test-access-secret";
const ROOM_SECRET: &str = "test-room-secret-test-room-secret!!";
const AUTH_TIMEOUT_MS: u64 = 300;

#[derive(Clone, Debug, Serialize)]
struct Note {
    id: String,
    room: String,
    text: String,
}

/// Notes in memory (per shard; the tests talk to one shard over one keep-alive connection).
#[derive(Default)]
struct Notes {
    rows: RefCell<HashMap<String, Note>>,
}

impl CrudService<Note> for Notes {
    type Patch = String;

    async fn create(&self, _: &ExecutionContext, n: Note) -> Result<CreateResult<Note>, CrudError> {
        self.rows.borrow_mut().insert(n.id.clone(), n.clone());
        Ok(CreateResult {
            type_name: "note",
            entity: n,
        })
    }
    async fn get(&self, _: &ExecutionContext, id: &str) -> Result<Option<Note>, CrudError> {
        Ok(self.rows.borrow().get(id).cloned())
    }
    async fn update(
        &self,
        _: &ExecutionContext,
        id: &str,
        text: String,
    ) -> Result<UpdateResult<Note>, CrudError> {
        let mut rows = self.rows.borrow_mut();
        let n = rows.get_mut(id).ok_or(CrudError::NotFound)?;
        n.text = text;
        Ok(UpdateResult {
            type_name: "note",
            entity: n.clone(),
        })
    }
    async fn delete(
        &self,
        _: &ExecutionContext,
        id: &str,
    ) -> Result<DeleteResult<Note>, CrudError> {
        match self.rows.borrow_mut().remove(id) {
            Some(n) => Ok(DeleteResult {
                type_name: "note",
                entity: n,
                deleted: true,
            }),
            None => Ok(DeleteResult {
                type_name: "note",
                entity: Note {
                    id: id.into(),
                    room: String::new(),
                    text: String::new(),
                },
                deleted: false,
            }),
        }
    }
    async fn list(
        &self,
        _: &ExecutionContext,
        _: &ListOptions,
    ) -> Result<ListResult<Note>, CrudError> {
        Ok(ListResult {
            type_name: "note",
            entities: self.rows.borrow().values().cloned().collect(),
            next_page_token: None,
        })
    }
}

type Service = Realtime<Notes, ShardBus, Note>;

/// `POST /notes {id, room, text}`, `PATCH /notes/<id>` (body: text), `DELETE /notes/<id>`, `GET /live/<room>`
/// (the owner's member shards of a room, asked on every shard).
struct Api {
    service: Rc<Service>,
}

impl Router for Api {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let service = self.service.clone();
        let ctx = ExecutionContext::internal("test");
        let id = request.path.strip_prefix("/notes/").map(str::to_owned);
        let shard = shard.clone();
        match (request.method.as_str(), request.path.as_str(), id) {
            ("POST", "/notes", _) => Some(Box::pin(async move {
                let v: Value = serde_json::from_slice(&request.body).unwrap_or_default();
                let note = Note {
                    id: v["id"].as_str().unwrap_or_default().into(),
                    room: v["room"].as_str().unwrap_or_default().into(),
                    text: v["text"].as_str().unwrap_or_default().into(),
                };
                match service.create(&ctx, note).await {
                    Ok(_) => Response::json(201, &json!({"shard": shard.id()})),
                    Err(e) => Response::json(e.http_status(), &json!({"error": e.code()})),
                }
            })),
            ("PATCH", _, Some(id)) => Some(Box::pin(async move {
                let text = String::from_utf8_lossy(&request.body).into_owned();
                match service.update(&ctx, &id, text).await {
                    Ok(_) => Response::json(200, &json!({})),
                    Err(e) => Response::json(e.http_status(), &json!({"error": e.code()})),
                }
            })),
            ("DELETE", _, Some(id)) => Some(Box::pin(async move {
                match service.delete(&ctx, &id).await {
                    Ok(r) => Response::json(200, &json!({"deleted": r.deleted})),
                    Err(e) => Response::json(e.http_status(), &json!({"error": e.code()})),
                }
            })),
            _ => None,
        }
    }
}

fn start(shards: usize) -> ServerHandle {
    start_with(ServerConfig {
        shards,
        ..ServerConfig::default()
    })
}

fn start_with(config: ServerConfig) -> ServerHandle {
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        pin_shards: false,
        ping_interval_ms: 60_000,
        ping_timeout_ms: 60_000,
        ..config
    };
    let app: server::AppFactory = Arc::new(|shard: &Rc<ShardCtx>| {
        let session = SessionContext {
            access: AccessVerifier::new(&AuthConfig::hs256(SECRET)).unwrap(),
            rooms: RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0).unwrap(),
            config: SessionConfig {
                auth_timeout_ms: AUTH_TIMEOUT_MS,
                rooms_per_socket_max: 3,
                echo_event: true,
                ..SessionConfig::default()
            },
        };
        let mut io = SocketIo::new();
        let bus = live::install(shard, &mut io, session);
        let recipient = Recipient::new(
            Template::from_fn(|n: &Note| n.room.clone()),
            Template::from_fn(|n: &Note| format!("/notes/{}", n.id)),
        );
        let service = Rc::new(Realtime::new(
            Notes::default(),
            bus,
            Recipients::new().all(recipient),
        ));
        ShardApp {
            socketio: Some(io),
            router: Some(Rc::new(Api { service })),
        }
    });
    server::start(config, app).expect("server starts")
}

fn access_token(sub: &str) -> String {
    AccessSigner::new(&AuthConfig::hs256(SECRET))
        .unwrap()
        .sign(sub, 3600, &Map::new())
        .unwrap()
}

fn room_token(sub: &str, room: &str) -> String {
    RoomTokens::new(&Secret::from(ROOM_SECRET), 3600, 0)
        .unwrap()
        .sign(sub, room)
        .unwrap()
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

/// A Socket.IO v5 client on a raw websocket.
struct Client {
    ws: Ws,
    /// The shard the session lives on (the first two hex digits of its Engine.IO sid).
    shard: usize,
}

impl Client {
    /// Connects to `/` with an optional CONNECT auth payload; returns after the CONNECT reply.
    fn connect(addr: SocketAddr, auth: Option<Value>) -> Client {
        let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
        let open = ws.recv_text_skip_ping();
        let sid = serde_json::from_str::<Value>(&open[1..]).unwrap()["sid"]
            .as_str()
            .unwrap()
            .to_owned();
        let shard = usize::from_str_radix(&sid[..2], 16).unwrap();
        match auth {
            Some(a) => ws.send_text(&format!("40{a}")),
            None => ws.send_text("40"),
        }
        let reply = ws.recv_text_skip_ping();
        assert!(reply.starts_with("40{\"sid\":"), "{reply}");
        Client { ws, shard }
    }

    fn emit(&mut self, event: &str, arg: Value) {
        self.ws.send_text(&format!("42{}", json!([event, arg])));
    }

    /// The next frame, decoded: an event as its JSON array, `41` as `["<disconnect>"]`, a close as `["<closed>"]`.
    fn next(&mut self) -> Value {
        match self.ws.recv_skip_ping() {
            WsEvent::Text(t) if t == "41" => json!(["<disconnect>"]),
            WsEvent::Text(t) => {
                let body = t
                    .strip_prefix("42")
                    .unwrap_or_else(|| panic!("not an event: {t}"));
                serde_json::from_str(body).unwrap()
            }
            WsEvent::Closed => json!(["<closed>"]),
            WsEvent::Binary(b) => panic!("unexpected binary {b:?}"),
        }
    }

    fn authenticate(&mut self, sub: &str) {
        self.emit("authenticate", json!({ "token": access_token(sub) }));
        assert_eq!(self.next(), json!(["authenticated"]));
    }

    fn join(&mut self, sub: &str, room: &str) {
        self.emit(
            "realtime:join",
            json!({"name": room, "token": room_token(sub, room)}),
        );
        assert_eq!(
            self.next(),
            json!(["realtime:join:success", {"name": room}])
        );
    }
}

/// One keep-alive HTTP connection: every request lands on the same shard, so the events it publishes keep their
/// order on every path.
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    fn new(addr: SocketAddr) -> Http {
        Http {
            s: connect(addr),
            buf: Vec::new(),
        }
    }
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        send_request(&mut self.s, method, path, &[], body);
        self.s.flush().unwrap();
        read_response(&mut self.s, &mut self.buf).expect("a response")
    }
    fn create(&mut self, id: &str, room: &str, text: &str) {
        let body = json!({"id": id, "room": room, "text": text}).to_string();
        let r = self.call("POST", "/notes", body.as_bytes());
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn resource(action: &str, room: &str, id: &str, text: &str) -> Value {
    json!(["realtime:resource", {
        "action": action, "room": room, "type": "note", "path": format!("/notes/{id}"),
        "resource": {"id": id, "room": room, "text": text}
    }])
}

fn unauthorized_then_disconnect(c: &mut Client, err: &str) {
    assert_eq!(
        c.next(),
        json!(["unauthorized", {"err": err, "message": err}])
    );
    assert_eq!(c.next(), json!(["<disconnect>"]));
}

#[test]
fn bad_access_tokens_get_unauthorized_and_a_disconnect() {
    let srv = start(2);
    let now = now_s();
    let expired = hs256(SECRET, &json!({"sub": "u1", "exp": now - 3600}));
    let wrongly_signed = hs256(
        "another-secret-another-secret-another",
        &json!({"sub": "u1", "exp": now + 3600}),
    );
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub": "u1", "exp": now + 3600}).to_string())
    );
    let cases: Vec<(Value, &str)> = vec![
        (json!({}), "jwt must be provided"),
        (json!({"token": ""}), "jwt must be provided"),
        (json!({"token": "not-a-jwt"}), "jwt malformed"),
        (json!({"token": expired}), "jwt expired"),
        (json!({"token": wrongly_signed}), "invalid signature"),
        (json!({"token": alg_none}), "invalid algorithm"),
    ];
    for (payload, err) in &cases {
        let mut c = Client::connect(srv.local_addr, None);
        c.emit("authenticate", payload.clone());
        unauthorized_then_disconnect(&mut c, err);
        // The same tokens in the CONNECT auth payload: accepted CONNECT, then the same refusal.
        if payload.get("token").is_some_and(|t| t != "") {
            let mut c = Client::connect(srv.local_addr, Some(payload.clone()));
            unauthorized_then_disconnect(&mut c, err);
        }
    }
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn connect_auth_payload_authenticates_in_one_round_trip() {
    let srv = start(2);
    let mut c = Client::connect(srv.local_addr, Some(json!({"token": access_token("u1")})));
    assert_eq!(c.next(), json!(["authenticated"]));
    c.join("u1", "/r");
    // `authenticate` afterwards (Twake clients always send it) answers `authenticated` again.
    c.authenticate("u1");
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn echo_acks_carry_the_arguments_once_authenticated() {
    let srv = start(2);
    let mut c = Client::connect(srv.local_addr, None);
    c.ws.send_text(r#"427["echo",{"pad":"x"}]"#);
    assert_eq!(
        c.next(),
        json!(["unauthorized", {"err": "not authenticated", "message": "not authenticated"}])
    );
    c.authenticate("u1");
    c.ws.send_text(r#"428["echo",{"pad":"x"},2]"#);
    assert_eq!(c.ws.recv_text_skip_ping(), r#"438[{"pad":"x"},2]"#);
    // Without an ack id there is nothing to answer; the next answer is the next ack.
    c.emit("echo", json!(1));
    c.ws.send_text(r#"429["echo",3]"#);
    assert_eq!(c.ws.recv_text_skip_ping(), "439[3]");
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn events_before_authentication_get_errors_and_timeout_disconnects() {
    let srv = start(2);
    let mut c = Client::connect(srv.local_addr, None);
    c.emit(
        "realtime:join",
        json!({"name": "/r", "token": room_token("u1", "/r")}),
    );
    assert_eq!(
        c.next(),
        json!(["realtime:join:error", {"name": "/r", "error": "not authenticated", "message": "not authenticated"}])
    );
    c.emit("realtime:leave", json!({"name": "/r"}));
    assert_eq!(
        c.next(),
        json!(["realtime:leave:error", {"name": "/r", "error": "not authenticated", "message": "not authenticated"}])
    );
    c.emit("something", json!(1));
    assert_eq!(
        c.next(),
        json!(["unauthorized", {"err": "not authenticated", "message": "not authenticated"}])
    );
    // Then nothing until the authentication timeout (configured to 300 ms here).
    unauthorized_then_disconnect(&mut c, "authentication timeout");
    // An authenticated socket is not disconnected by the timer: it still answers after the timeout.
    let mut ok = Client::connect(srv.local_addr, None);
    ok.authenticate("u2");
    std::thread::sleep(std::time::Duration::from_millis(AUTH_TIMEOUT_MS * 3));
    ok.join("u2", "/still-here");
    srv.shutdown();
    srv.join().unwrap();
}

#[test]
fn room_tokens_are_bound_to_user_and_room_and_rooms_are_limited() {
    let srv = start(2);
    let mut c = Client::connect(srv.local_addr, None);
    c.authenticate("u1");
    c.emit(
        "realtime:join",
        json!({"name": "/r", "token": room_token("u2", "/r")}),
    );
    assert_eq!(
        c.next(),
        json!(["realtime:join:error", {"name": "/r", "error": "room token is for another user", "message": "room token is for another user"}])
    );
    c.emit(
        "realtime:join",
        json!({"name": "/r", "token": room_token("u1", "/other")}),
    );
    assert_eq!(
        c.next(),
        json!(["realtime:join:error", {"name": "/r", "error": "room token is for another room", "message": "room token is for another room"}])
    );
    c.emit(
        "realtime:join",
        json!({"name": "/r", "token": access_token("u1")}),
    );
    assert_eq!(
        c.next(),
        json!(["realtime:join:error", {"name": "/r", "error": "invalid signature", "message": "invalid signature"}])
    );
    c.emit("realtime:leave", json!({"name": "/never-joined"}));
    assert_eq!(
        c.next(),
        json!(["realtime:leave:success", {"name": "/never-joined"}])
    );
    for room in ["/a", "/b", "/c"] {
        c.join("u1", room);
    }
    c.emit(
        "realtime:join",
        json!({"name": "/d", "token": room_token("u1", "/d")}),
    );
    assert_eq!(
        c.next(),
        json!(["realtime:join:error", {"name": "/d", "error": "too many rooms (limit 3)", "message": "too many rooms (limit 3)"}])
    );
    srv.shutdown();
    srv.join().unwrap();
}

/// 40 clients over 8 rooms on two shards: create/update/delete reach every member of the room exactly once, in
/// order, and nobody else; leave stops delivery; a client that reconnects and joins again receives later events.
#[test]
fn crud_events_reach_exactly_the_members_of_their_room_across_shards() {
    let srv = start(2);
    let rooms: Vec<String> = (0..8).map(|i| format!("/boards/{i}/notes")).collect();
    let mut clients: Vec<(String, usize, Client)> = (0..40)
        .map(|i| {
            let user = format!("user{i}");
            let mut c =
                Client::connect(srv.local_addr, Some(json!({"token": access_token(&user)})));
            assert_eq!(c.next(), json!(["authenticated"]));
            let r = i % rooms.len();
            c.join(&user, &rooms[r]);
            (user, r, c)
        })
        .collect();
    let mut http = Http::new(srv.local_addr);
    for (r, room) in rooms.iter().enumerate() {
        http.create(&format!("n{r}"), room, "hello");
        let r2 = http.call("PATCH", &format!("/notes/n{r}"), b"edited");
        assert_eq!(r2.status, 200);
        let r3 = http.call("DELETE", &format!("/notes/n{r}"), b"");
        assert_eq!(r3.text(), r#"{"deleted":true}"#);
        // A delete that deleted nothing publishes nothing.
        let r4 = http.call("DELETE", &format!("/notes/n{r}"), b"");
        assert_eq!(r4.text(), r#"{"deleted":false}"#);
        // The end marker of this room.
        http.create(&format!("end{r}"), room, "end");
    }
    for (_, r, c) in clients.iter_mut() {
        let room = &rooms[*r];
        let id = format!("n{r}");
        assert_eq!(c.next(), resource("created", room, &id, "hello"));
        assert_eq!(c.next(), resource("updated", room, &id, "edited"));
        assert_eq!(c.next(), resource("deleted", room, &id, "edited"));
        assert_eq!(
            c.next(),
            resource("created", room, &format!("end{r}"), "end")
        );
    }

    // In room 0, `leaver` leaves while `witness`, on the same shard, stays (5 members on 2 shards: such a pair
    // exists); a third member disconnects and comes back as `back`.
    let members: Vec<usize> = (0..clients.len()).filter(|&i| clients[i].1 == 0).collect();
    let (leaver, witness) = members
        .iter()
        .flat_map(|&a| members.iter().map(move |&b| (a, b)))
        .find(|&(a, b)| a != b && clients[a].2.shard == clients[b].2.shard)
        .expect("two members of room 0 share a shard");
    let gone = *members
        .iter()
        .find(|&&i| i != leaver && i != witness)
        .unwrap();
    let leaver_user = clients[leaver].0.clone();
    let c = &mut clients[leaver].2;
    c.emit("realtime:leave", json!({"name": rooms[0]}));
    assert_eq!(
        c.next(),
        json!(["realtime:leave:success", {"name": rooms[0]}])
    );
    let (gone_user, _, gone_client) = clients.remove(gone);
    drop(gone_client);
    let leaver = leaver - usize::from(leaver > gone);
    let mut back = Client::connect(
        srv.local_addr,
        Some(json!({"token": access_token(&gone_user)})),
    );
    assert_eq!(back.next(), json!(["authenticated"]));
    back.join(&gone_user, &rooms[0]);
    http.create("after-leave", &rooms[0], "x");
    assert_eq!(
        back.next(),
        resource("created", &rooms[0], "after-leave", "x")
    );
    for (i, (_, r, c)) in clients.iter_mut().enumerate() {
        if *r == 0 && i != leaver {
            assert_eq!(c.next(), resource("created", &rooms[0], "after-leave", "x"));
        }
    }
    // The witness got it, so the leaver's shard has delivered "after-leave". The leaver joins again: the next event
    // it receives is the one published after its re-join, not the one it missed.
    let c = &mut clients[leaver].2;
    c.join(&leaver_user, &rooms[0]);
    http.create("after-rejoin", &rooms[0], "y");
    assert_eq!(
        c.next(),
        resource("created", &rooms[0], "after-rejoin", "y")
    );
    assert_eq!(
        back.next(),
        resource("created", &rooms[0], "after-rejoin", "y")
    );
    for (i, (_, r, c)) in clients.iter_mut().enumerate() {
        if *r == 0 && i != leaver {
            assert_eq!(
                c.next(),
                resource("created", &rooms[0], "after-rejoin", "y")
            );
        }
    }
    // Members of other rooms received nothing more: the next thing they see is their own room's next event.
    for (r, room) in rooms.iter().enumerate().skip(1) {
        http.create(&format!("last{r}"), room, "z");
    }
    for (_, r, c) in clients.iter_mut().filter(|(_, r, _)| *r != 0) {
        assert_eq!(
            c.next(),
            resource("created", &rooms[*r], &format!("last{r}"), "z")
        );
    }
    srv.shutdown();
    srv.join().unwrap();
}

/// Members on both shards all disconnect (leave-all on disconnect); a newcomer then joins alone and receives each
/// later event exactly once.
#[test]
fn disconnect_leaves_every_room_and_a_newcomer_receives_each_event_once() {
    let srv = start(2);
    let room = "/tracked";
    // Enough clients that both shards hold members (SO_REUSEPORT spreads connections).
    let mut clients: Vec<Client> = (0..16)
        .map(|i| {
            let user = format!("t{i}");
            let mut c =
                Client::connect(srv.local_addr, Some(json!({"token": access_token(&user)})));
            assert_eq!(c.next(), json!(["authenticated"]));
            c.join(&user, room);
            c
        })
        .collect();
    let mut http = Http::new(srv.local_addr);
    http.create("t", room, "1");
    for c in clients.iter_mut() {
        assert_eq!(c.next(), resource("created", room, "t", "1"));
    }
    // Everyone disconnects; a newcomer joins, and the next event reaches it alone (and once).
    for c in clients.iter_mut() {
        c.ws.send_text("41");
    }
    drop(clients);
    let mut newcomer = Client::connect(srv.local_addr, Some(json!({"token": access_token("n")})));
    assert_eq!(newcomer.next(), json!(["authenticated"]));
    newcomer.join("n", room);
    http.create("t2", room, "2");
    assert_eq!(newcomer.next(), resource("created", room, "t2", "2"));
    http.create("t3", room, "3");
    assert_eq!(newcomer.next(), resource("created", room, "t3", "3"));
    srv.shutdown();
    srv.join().unwrap();
}

/// Cross-shard queues of one message: joins flood the owner with `MemberJoined` and the members with `JoinConfirmed`,
/// which find the queue full and wait in the per-peer backlog instead of being lost. Every join is confirmed, and an
/// event published afterwards (one at a time) reaches every member.
#[test]
fn joins_are_confirmed_even_when_cross_shard_queues_are_full() {
    let srv = start_with(ServerConfig {
        shards: 2,
        mesh_queue_len: 1,
        ..ServerConfig::default()
    });
    let rooms: Vec<String> = (0..30).map(|i| format!("/crowded/{i}")).collect();
    let mut clients: Vec<Client> = (0..10)
        .map(|i| {
            let user = format!("c{i}");
            let mut c =
                Client::connect(srv.local_addr, Some(json!({"token": access_token(&user)})));
            assert_eq!(c.next(), json!(["authenticated"]));
            c
        })
        .collect();
    // Every client asks for 3 rooms at once (the rooms-per-socket limit of this app), without waiting.
    for (i, c) in clients.iter_mut().enumerate() {
        for room in rooms.iter().skip(i * 3).take(3) {
            let user = format!("c{i}");
            c.emit(
                "realtime:join",
                json!({"name": room, "token": room_token(&user, room)}),
            );
        }
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got: Vec<Value> = (0..3).map(|_| c.next()).collect();
        got.sort_by_key(|v| v.to_string());
        let mut want: Vec<Value> = rooms
            .iter()
            .skip(i * 3)
            .take(3)
            .map(|r| json!(["realtime:join:success", {"name": r}]))
            .collect();
        want.sort_by_key(|v| v.to_string());
        assert_eq!(got, want, "client {i}");
    }
    let mut http = Http::new(srv.local_addr);
    for (i, c) in clients.iter_mut().enumerate() {
        let room = &rooms[i * 3 + 2];
        http.create(&format!("x{i}"), room, "x");
        assert_eq!(c.next(), resource("created", room, &format!("x{i}"), "x"));
    }
    srv.shutdown();
    srv.join().unwrap();
}
