//! # shardcast
//!
//! Shard-per-core realtime Socket.IO server (see README.md for the layout).
pub use shardcast_proto as proto;
