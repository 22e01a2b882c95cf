//! Scale-out through Redis: shardcast as a node of a socket.io cluster, speaking the classic
//! `@socket.io/redis-adapter` 8.x protocol (the one `@socket.io/redis-emitter` 5.x speaks) byte for byte, so Node
//! socket.io servers, the emitter and shardcast processes share rooms.
//!
//! # Layout (one noun per file)
//! - [`msgpack`]: MessagePack as notepack.io writes it (sans-IO, bounded).
//! - [`codec`]: the protocol's channels, broadcasts, requests and responses (sans-IO).
//! - [`connection`]: the Redis connection (the only file that names the `redis` crate).
//! - [`adapter`]: [`adapter::Cluster`], the process's one Redis pipeline on a thread of its own, and the API this node
//!   sends with: [`Cluster::broadcast`], [`Cluster::fetch_sockets`], [`Cluster::fetch_remote_sockets`],
//!   [`Cluster::server_side_emit`], [`Cluster::server_side_emit_with_ack`].
//! - [`node`]: the shard side: socket registry, the task applying remote broadcasts and requests, readiness route.
//! - [`presence`]: who is online on the other nodes (fetchSockets of a room or of `user:<id>` rooms), and whether
//!   a presence change of this node is one for the cluster (the races are described there).
//! - [`config`]: the settings, [`config::ClusterConfig`].
//!
//! # The cluster path of one event
//! 1. A CRUD change on node A is published on the shard that ran it ([`crate::realtime::live::ShardBus`]): the
//!    local owner -> member shard path runs as in a single process, and the same `[event, ...args]` JSON is handed
//!    to the adapter's bounded queue ([`node::publish_to_room`]); a full queue drops and counts, never waits.
//! 2. The adapter's thread encodes `[uid, {type: 2, data, nsp: "/"}, {rooms: [room], except: [], flags: {}}]` as
//!    MessagePack and PUBLISHes it on `<prefix>#/#<room>#`.
//! 3. Every node's pattern subscription `<prefix>#/#*` receives it; node A drops it (its own uid); node B decodes it
//!    once and hands the same decoded event to each of its shards' bounded queues; a Node server delivers it to its
//!    sockets in the room.
//! 4. Each of node B's shards encodes the Socket.IO frame once and queues it on its selected local sockets.

pub mod adapter;
pub mod codec;
pub mod config;
pub mod connection;
pub mod member;
pub mod msgpack;
pub mod node;
pub mod presence;

pub use adapter::{AdapterState, Cluster, ClusterStats};
pub use config::ClusterConfig;

/// Hex of bytes and back, for the unit tests that compare with bytes other implementations wrote.
#[cfg(test)]
mod test_hex {
    pub(crate) fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    pub(crate) fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
