//! The shard-per-core Socket.IO server, in layers that import only downwards.
//!
//! # Layout (bottom to top)
//! - [`config`]: [`ServerConfig`], every limit with its default (a leaf every layer reads).
//! - [`runtime`]: start-up, one glommio executor per core, the cross-shard mesh, timers ([`timer`]), the
//!   shutdown signal, session ids ([`sid`]), statistics ([`metrics`]) and [`ShardCtx`], which knows no HTTP,
//!   Engine.IO or Socket.IO type: a shard hands accepted connections to the service the app layer installs.
//! - [`io`]: a connection's byte stream, `read_some` / `write_all` and the per-turn work bound (fairness).
//! - [`http`]: request parsing with limits, responses, CORS and preflight, the one error-body function, the
//!   [`Router`] trait for REST routes.
//! - [`ws`]: the RFC 6455 handshake and tungstenite's frame layer over in-memory buffers.
//! - [`engine`]: Engine.IO v3/v4 sessions ([`Session`]), the polling and websocket transports, the upgrade,
//!   heartbeats, the queue bound, [`engine::CloseReason`]; the application above is an [`engine::EngineHandler`].
//! - [`socketio`]: namespaces, sockets, acks, rooms, the handler API ([`SocketIo`], [`Socket`]).
//! - the app wiring: [`app`] ([`ShardApp`], [`start`]), `conn` (one TCP connection: routing to `/metrics`,
//!   Engine.IO or the router, hand-over between shards), [`memory`] ([`InMemoryConnection`], a websocket session
//!   without a network), [`conformance`] (the app of the conformance server).
//!
//! **Architecture Invariant:** a layer imports only the layers below it (`tests/layering.rs` checks the order
//! runtime < io < http < ws < engine < socketio < app).
//!
//! **Architecture Invariant:** per-shard state is `!Sync` (`Rc`, `RefCell`) and reached only from its shard;
//! shards talk through bounded queues ([`ShardCtx::send_to`]) and never block on each other. The only shared
//! memory is the statistics in [`metrics`], each shard writing its own counters.
//!
//! **Architecture Invariant:** the server never encodes or decodes Engine.IO/Socket.IO itself: `crate::proto` does.

pub mod app;
pub mod config;
pub mod conformance;
mod conn;
pub mod engine;
pub mod http;
pub mod io;
pub mod memory;
pub mod runtime;
pub mod socketio;
pub mod ws;

pub use runtime::{metrics, sched, shard, sid, timer};

pub use app::{AppFactory, ShardApp, start};
pub use config::ServerConfig;
pub use engine::{OutItem, Session};
pub use http::{Request, Response, ResponseFuture, Router};
pub use memory::{InMemoryConnection, InMemoryError};
pub use runtime::shard::ServerHandle;
pub use runtime::{MeshError, ShardCtx, ShardMessage};
pub use sid::Sid;
pub use socketio::{
    AckError, AckFuture, AckReply, AckSender, ConnectFuture, ConnectRefusal, Event, Namespace,
    RoomRegistry, Socket, SocketIo,
};
pub use timer::{TimerHandle, TimerWheel};
