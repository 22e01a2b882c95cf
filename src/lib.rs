//! # shardcast
//!
//! Shard-per-core realtime Socket.IO server, CRUD framework and ORM. The README's Architecture section is the guide;
//! this is the code map in one line per module:
//!
//! - [`proto`]: the sans-IO Engine.IO/Socket.IO codec (the `shardcast-proto` crate, re-exported).
//! - [`server`]: glommio shards, HTTP/1.1, websocket, Engine.IO sessions, Socket.IO namespaces.
//! - [`orm`]: entities, repositories, the IO shard and its three backends.
//! - [`realtime`]: JWT authentication, rooms partitioned across shards, CRUD services, REST API.
//! - [`config`]: the configuration of `shardcast serve` and `shardcast token` (file, environment, flags).
pub use shardcast_proto as proto;

pub mod app;
pub mod cluster;
pub mod config;
pub mod orm;
pub mod realtime;
pub mod server;
