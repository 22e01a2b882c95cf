//! Load generator for Socket.IO servers that speak the shardcast wire contract.
//!
//! Thousands of clients on one current-thread tokio runtime (one task per websocket client, two per polling
//! client), Engine.IO/Socket.IO framing from `shardcast-proto`, a hand-written websocket frame layer ([`ws`]) and
//! HTTP/1.1 client ([`http`]). The server's cost is read from `/proc/<pid>` ([`procstat`]), deliveries are
//! accounted exactly ([`stats`]), latencies go to a log-linear histogram ([`hist`]).
//!
//! # Layout
//!
//! - [`config`]: [`config::Scenario`] and [`config::Config`], what a run is.
//! - [`scenario`]: the scenarios' phases (fanout, hotroom, connect, idle, echo, publish, cluster), the publisher.
//! - [`client`]: one client's session (handshake, `authenticate`, `realtime:join`, deliveries, echo acks) and its
//!   two transports.
//! - [`stats`]: missed / duplicated / misrouted / unexpected deliveries, exactly, from per-client bitsets.
//! - [`report`]: [`report::Summary`], the JSON line and the human table.
//! - [`ws`], [`http`], [`net`] (loopback-only targets, 127.0.0.x source addresses, open-files limit),
//!   [`hist`], [`procstat`].
//!
//! # The contract every server under test implements
//!
//! - Socket.IO (Engine.IO v4) at `--socket-path` (default `/socket/`), websocket and polling.
//! - Access tokens: HS256 JWTs `{"sub", "iat", "exp"}` signed with the secret every server is started with.
//! - `authenticate {token}` -> `authenticated` (or `unauthorized {err}` and a disconnect).
//! - `realtime:join {name, token}` -> `realtime:join:success {name}` (or `realtime:join:error {name, error}`).
//! - `echo <arg>` with an ack -> the ack carries `<arg>` back (only after `authenticate`).
//! - REST, `Authorization: Bearer <access token>`, collection `/api/v1/channels/{channel}/messages`:
//!   - `GET ...?websockets=true` -> 200 `{"resources": [...], "websockets": [{"room": <name>, "token": <room token>}]}`;
//!     the room token is whatever the server verifies on `realtime:join` (the peers: HS256 `{sub, room, exp}`).
//!   - `POST` with body `{"resource": {...}}` -> 2xx `{"resource": {..., "id"}, "websocket": {room, token}}`, and
//!     every socket joined to that room receives `realtime:resource {"action": "created", "room", "type", "path",
//!     "resource"}` once, where `resource` carries the posted fields unchanged (the generator sends `room_index`,
//!     `seq`, `sent_at_us` and `text`).

pub mod client;
pub mod config;
pub mod hist;
pub mod http;
pub mod net;
pub mod procstat;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod ws;
