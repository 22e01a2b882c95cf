//! socketioxide 0.18 peer for shardcast's load tests: axum + socketioxide on tokio's multi-thread runtime with
//! default settings, speaking the same contract as shardcast (see `loadtest/src/lib.rs`): `authenticate` with an
//! HS256 access token, `realtime:join` with a room token this server signs, `realtime:resource` on a REST-created
//! resource, `echo` with an ack.
//!
//! Usage: `shardcast-peer-socketioxide --listen 127.0.0.1:3002 --jwt-secret SECRET [--socket-path /socket/]`

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, State as SioState};
use socketioxide::handler::ConnectHandler;

/// Room tokens expire after this many seconds.
const ROOM_TOKEN_TTL_S: u64 = 3600;

#[derive(Clone)]
struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    sub: String,
    exp: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct RoomClaims {
    sub: String,
    room: String,
    exp: u64,
}

/// The authenticated user of a socket (socket extension).
#[derive(Clone)]
struct User(String);

impl Keys {
    fn access(&self, token: &str) -> Result<AccessClaims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<AccessClaims>(
            token,
            &self.decoding,
            &Validation::new(Algorithm::HS256),
        )
        .map(|d| d.claims)
    }

    fn room_token(&self, sub: &str, room: &str) -> String {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            + ROOM_TOKEN_TTL_S;
        let claims = RoomClaims {
            sub: sub.to_owned(),
            room: room.to_owned(),
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct AuthenticateArgs {
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
struct JoinArgs {
    #[serde(default)]
    name: String,
    #[serde(default)]
    token: String,
}

fn user_of(s: &SocketRef) -> Option<String> {
    s.extensions.get::<User>().map(|u| u.0)
}

/// Registers the event handlers. Runs as a connect middleware: socketioxide runs middlewares before it sends the
/// CONNECT packet and the connect handler after, so a client that emits `authenticate` as soon as it sees CONNECT
/// would otherwise race the registration and have its event dropped.
async fn register_handlers(s: SocketRef) -> Result<(), std::convert::Infallible> {
    s.on(
        "authenticate",
        async |s: SocketRef, Data(args): Data<AuthenticateArgs>, SioState(keys): SioState<Keys>| {
            match keys.access(&args.token) {
                Ok(claims) => {
                    s.extensions.insert(User(claims.sub));
                    s.emit("authenticated", &()).ok();
                }
                Err(e) => {
                    s.emit("unauthorized", &json!({ "err": e.to_string() }))
                        .ok();
                    s.disconnect().ok();
                }
            }
        },
    );
    s.on("realtime:join", async |s: SocketRef, Data(args): Data<JoinArgs>, SioState(keys): SioState<Keys>| {
        let Some(user) = user_of(&s) else {
            s.disconnect().ok();
            return;
        };
        let verified = jsonwebtoken::decode::<RoomClaims>(&args.token, &keys.decoding, &Validation::new(Algorithm::HS256));
        match verified {
            Ok(d) if d.claims.room == args.name && d.claims.sub == user => {
                s.join(args.name.clone());
                s.emit("realtime:join:success", &json!({ "name": args.name })).ok();
            }
            Ok(_) => {
                s.emit("realtime:join:error", &json!({ "name": args.name, "error": "token does not match room and user" })).ok();
            }
            Err(e) => {
                s.emit("realtime:join:error", &json!({ "name": args.name, "error": e.to_string() })).ok();
            }
        }
    });
    s.on(
        "realtime:leave",
        async |s: SocketRef, Data(args): Data<Value>| {
            if user_of(&s).is_none() {
                s.disconnect().ok();
                return;
            }
            let name = args
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            s.leave(name.clone());
            s.emit("realtime:leave:success", &json!({ "name": name }))
                .ok();
        },
    );
    s.on(
        "echo",
        async |s: SocketRef, Data(arg): Data<Value>, ack: AckSender| {
            if user_of(&s).is_none() {
                s.disconnect().ok();
                return;
            }
            ack.send(&arg).ok();
        },
    );
    Ok(())
}

async fn on_connect(_s: SocketRef) {}

#[derive(Clone)]
struct AppState {
    io: SocketIo,
    keys: Keys,
}

fn bearer_sub(keys: &Keys, headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    keys.access(auth.strip_prefix("Bearer ")?)
        .ok()
        .map(|c| c.sub)
}

fn valid_channel(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Deserialize)]
struct ListQuery {
    websockets: Option<String>,
}

/// The caller's user id and the channel's room, or the 401/404 answer.
fn authorize(
    app: &AppState,
    headers: &HeaderMap,
    channel: &str,
) -> Result<(String, String), Response> {
    let Some(sub) = bearer_sub(&app.keys, headers) else {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "invalid token" })),
        )
            .into_response());
    };
    if !valid_channel(channel) {
        return Err((StatusCode::NOT_FOUND, Json(json!({ "error": "not found" }))).into_response());
    }
    Ok((sub, format!("/channels/{channel}/messages")))
}

async fn list(
    State(app): State<AppState>,
    Path(channel): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let (sub, room) = match authorize(&app, &headers, &channel) {
        Ok(ok) => ok,
        Err(refused) => return refused,
    };
    let mut body = json!({ "resources": [] });
    if q.websockets.as_deref() == Some("true") {
        body["websockets"] = json!([{ "room": room, "token": app.keys.room_token(&sub, &room) }]);
    }
    Json(body).into_response()
}

#[derive(Deserialize)]
struct CreateBody {
    resource: serde_json::Map<String, Value>,
}

async fn create(
    State(app): State<AppState>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    Json(input): Json<CreateBody>,
) -> Response {
    let (sub, room) = match authorize(&app, &headers, &channel) {
        Ok(ok) => ok,
        Err(refused) => return refused,
    };
    let id = uuid::Uuid::new_v4().to_string();
    let mut resource = input.resource;
    resource.insert("id".to_owned(), Value::String(id.clone()));
    resource.insert("user_id".to_owned(), Value::String(sub.clone()));
    let event = json!({
        "action": "created",
        "room": room,
        "type": "message",
        "path": format!("{room}/{id}"),
        "resource": resource,
    });
    if let Err(e) = app
        .io
        .to(room.clone())
        .emit("realtime:resource", &event)
        .await
    {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response();
    }
    let token = app.keys.room_token(&sub, &room);
    (
        StatusCode::CREATED,
        Json(
            json!({ "resource": event["resource"], "websocket": { "room": room, "token": token } }),
        ),
    )
        .into_response()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:3002".to_owned());
    let secret = arg("--jwt-secret")
        .or_else(|| std::env::var("SHARDCAST_JWT_SECRET").ok())
        .ok_or("--jwt-secret (or SHARDCAST_JWT_SECRET) is required")?;
    let socket_path = arg("--socket-path").unwrap_or_else(|| "/socket/".to_owned());
    let keys = Keys {
        encoding: EncodingKey::from_secret(secret.as_bytes())?,
        decoding: DecodingKey::from_secret(secret.as_bytes())?,
    };
    let (layer, io) = SocketIo::builder()
        .req_path(socket_path.clone())
        .with_state(keys.clone())
        .build_layer();
    io.ns("/", on_connect.with(register_handlers));

    let app = Router::new()
        .route(
            "/api/v1/channels/{channel}/messages",
            get(list).post(create),
        )
        .with_state(AppState { io, keys })
        .layer(layer);
    // TCP_NODELAY on every accepted socket, as a latency-critical deployment sets it (and as shardcast does):
    // `axum::serve` leaves Nagle on by default, which lets queued frames share segments at the cost of latency.
    let listener = axum::serve::ListenerExt::tap_io(
        tokio::net::TcpListener::bind(&listen).await?,
        |tcp: &mut tokio::net::TcpStream| {
            let _ = tcp.set_nodelay(true);
        },
    );
    println!("socketioxide 0.18 peer listening on {listen}{socket_path}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
