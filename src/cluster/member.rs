//! How a shardcast socket's user appears to the other nodes of the cluster: the room `user:<id>` of a user's
//! sockets, and a socket's `data` in fetchSockets answers. Sans-IO; `node.rs` (the shard side) and `presence.rs`
//! (the questions to the other nodes) both build on it.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

/// Prefix of the room holding one user's sockets, as the cluster sees it: `user:<id>`.
pub const USER_ROOM_PREFIX: &str = "user:";

/// The room of `user`'s sockets.
pub fn user_room(user: &str) -> String {
    format!("{USER_ROOM_PREFIX}{user}")
}

/// The user a `user:<id>` room names.
pub fn user_of_room(room: &str) -> Option<&str> {
    room.strip_prefix(USER_ROOM_PREFIX)
        .filter(|u| !u.is_empty())
}

/// A socket's `data` in fetchSockets answers: `{"user": {"id": ...}, "since": {room: ms, ...}}` once
/// authenticated (`since`: when the socket joined each room presence counts, `user:<id>` included), `{}` before.
pub fn socket_data(user: Option<&str>, since: &HashMap<String, u64>) -> Json {
    match user {
        Some(id) => json!({ "user": { "id": id }, "since": since }),
        None => json!({}),
    }
}

/// The milliseconds since the epoch, the clock of `since`.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
