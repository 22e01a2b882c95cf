//! The shard-per-core Socket.IO server.
//!
//! # Layout
//! - [`config`]: [`ServerConfig`], every limit with its default.
//! - [`shard`]: start-up, one glommio executor per core, the cross-shard mesh, graceful shutdown, [`ShardCtx`].
//! - `conn`: one TCP connection (HTTP/1.1 keep-alive, then maybe a websocket), hand-over between shards.
//! - [`http`]: request parsing with limits, responses, CORS, the [`Router`] trait for REST routes.
//! - [`ws`]: the RFC 6455 handshake and tungstenite's frame layer over in-memory buffers.
//! - `engine`: Engine.IO v3/v4 sessions (polling, websocket, upgrade, heartbeat, queue bound).
//! - [`memory`]: [`InMemoryConnection`], a websocket session without a network (tests, benches).
//! - [`socketio`]: namespaces, sockets, acks, rooms, the handler API ([`SocketIo`], [`Socket`]).
//! - [`timer`]: the per-shard timer wheel. [`metrics`]: Prometheus counters.
//! - [`conformance`]: the app of the conformance server.
//!
//! **Architecture Invariant:** per-shard state is `!Sync` (`Rc`, `RefCell`) and reached only from its shard;
//! shards talk through bounded queues ([`ShardCtx::send_to`]) and never block on each other. The only shared
//! memory is the statistics in [`metrics`], each shard writing its own counters.
//!
//! **Architecture Invariant:** the server never encodes or decodes Engine.IO/Socket.IO itself: `crate::proto` does.

pub mod config;
pub mod conformance;
mod conn;
mod engine;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod shard;
pub mod sid;
mod signal;
pub mod socketio;
pub mod timer;
pub mod ws;

pub use config::ServerConfig;
pub use engine::{OutItem, Session};
pub use http::{Request, Response, ResponseFuture, Router};
pub use memory::{InMemoryConnection, InMemoryError};
pub use shard::{AppFactory, MeshError, ServerHandle, ShardApp, ShardCtx, ShardMessage, start};
pub use sid::Sid;
pub use socketio::{
    AckError, AckFuture, AckReply, AckSender, ConnectFuture, ConnectRefusal, Event, Namespace,
    RoomRegistry, Socket, SocketIo,
};
pub use timer::{TimerHandle, TimerWheel};
