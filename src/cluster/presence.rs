//! Presence across the nodes of a cluster, through the adapter's request/response protocol (REMOTE_FETCH, the
//! request behind `fetchSockets`), not a Redis structure of its own.
//!
//! - Each shardcast socket that authenticated carries its user in `data.user.id` and is in the room
//!   [`user_room`] (`user:<id>`) as far as the cluster sees it (fetchSockets, allRooms, broadcasts); a Node
//!   socket.io server takes part by setting `socket.data.user = {id}` and joining `user:<id>`.
//! - Who is in a room ([`users_in_room`]): fetchSockets of the room on the other nodes, their sockets' users,
//!   merged with this node's own (each user once).
//! - Whether users are online ([`online_elsewhere`]): fetchSockets of their `user:<id>` rooms on the other nodes,
//!   so the answers hold only those users' sockets (at most [`USERS_PER_REQUEST_MAX`] rooms per request).
//!
//! **Bounds.** Every node answers REMOTE_FETCH (Node servers too), so an answer waits for the slowest node, at most
//! `cluster.request_timeout_ms`; a node that has not answered by then is left out and the answer says it is not
//! complete. A node that dies is therefore out of every answer that begins after its death (its Redis connection
//! closes: PUBSUB NUMSUB no longer counts it) or at the latest `cluster.request_timeout_ms` after the question was
//! asked (a node Redis still counts, e.g. a host gone without closing its connection). Nothing expires in Redis
//! because nothing is stored there. Redis unreachable: this node's own users only, not complete.

use std::collections::BTreeSet;

use serde_json::{Value as Json, json};

use crate::server::ShardCtx;

use super::codec::Selector;
use super::node::cluster_of;

/// Prefix of the room holding one user's sockets, as the cluster sees it: `user:<id>`.
pub const USER_ROOM_PREFIX: &str = "user:";
/// Most `user:<id>` rooms asked for in one fetchSockets request (larger lists are asked in several).
pub const USERS_PER_REQUEST_MAX: usize = 1000;

/// The room of `user`'s sockets.
pub fn user_room(user: &str) -> String {
    format!("{USER_ROOM_PREFIX}{user}")
}

/// The user a `user:<id>` room names.
pub fn user_of_room(room: &str) -> Option<&str> {
    room.strip_prefix(USER_ROOM_PREFIX)
        .filter(|u| !u.is_empty())
}

/// A socket's `data` in fetchSockets answers: `{"user": {"id": ...}}` once authenticated, `{}` before.
pub fn socket_data(user: Option<&str>) -> Json {
    match user {
        Some(id) => json!({ "user": { "id": id } }),
        None => json!({}),
    }
}

/// The user of one socket of a fetchSockets answer (any node's: `data.user.id`, a string).
fn user_of_socket(socket: &Json) -> Option<&str> {
    socket.get("data")?.get("user")?.get("id")?.as_str()
}

/// What the other nodes said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// Users with a socket on another node, each once.
    pub users: BTreeSet<String>,
    /// Every node counted answered in time (false also when Redis is unreachable).
    pub complete: bool,
}

async fn ask(shard: &ShardCtx, rooms: Vec<String>) -> Option<Elsewhere> {
    let cluster = cluster_of(shard)?;
    let selector = Selector {
        rooms,
        except: Vec::new(),
    };
    match cluster.fetch_remote_sockets(selector).await {
        Ok(answers) => Some(Elsewhere {
            users: answers
                .responses
                .iter()
                .filter_map(user_of_socket)
                .map(str::to_owned)
                .collect(),
            complete: answers.complete(),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "cluster: presence of the other nodes not asked");
            Some(Elsewhere::default())
        }
    }
}

/// The users in `room` on the other nodes; `None` when this process is not clustered.
pub async fn users_in_room(shard: &ShardCtx, room: &str) -> Option<Elsewhere> {
    ask(shard, vec![room.to_owned()]).await
}

/// `local` (this node's users in `room`) plus the other nodes', each once, sorted; and, clustered, whether every
/// node answered (`None` in a single process).
pub async fn merge_room(
    shard: &ShardCtx,
    room: &str,
    local: Vec<String>,
) -> (Vec<String>, Option<bool>) {
    let Some(elsewhere) = users_in_room(shard, room).await else {
        return (local, None);
    };
    let mut all = elsewhere.users;
    all.extend(local);
    (all.into_iter().collect(), Some(elsewhere.complete))
}

/// Sets `online[i]` for each of `users` not online here (`online[i]` false) that has a socket on another node.
/// Returns whether every node answered (true in a single process).
pub async fn online_elsewhere(shard: &ShardCtx, users: &[String], online: &mut [bool]) -> bool {
    if cluster_of(shard).is_none() {
        return true;
    }
    let missing: Vec<usize> = (0..users.len().min(online.len()))
        .filter(|&i| !online[i])
        .collect();
    let mut complete = true;
    for chunk in missing.chunks(USERS_PER_REQUEST_MAX) {
        let rooms = chunk.iter().map(|&i| user_room(&users[i])).collect();
        let Some(elsewhere) = ask(shard, rooms).await else {
            return true;
        };
        complete &= elsewhere.complete;
        for &i in chunk {
            if elsewhere.users.contains(&users[i]) {
                online[i] = true;
            }
        }
    }
    complete
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_rooms_and_socket_data() {
        assert_eq!(user_room("alice"), "user:alice");
        assert_eq!(user_of_room("user:alice"), Some("alice"));
        assert_eq!(user_of_room("user:"), None);
        assert_eq!(user_of_room("/channels/c0"), None);
        let s = json!({"id": "x", "rooms": [], "data": socket_data(Some("bob"))});
        assert_eq!(user_of_socket(&s), Some("bob"));
        assert_eq!(user_of_socket(&json!({"data": socket_data(None)})), None);
        // A Node server's socket without user data, or with a non-string id, is nobody's.
        assert_eq!(user_of_socket(&json!({"id": "n"})), None);
        assert_eq!(user_of_socket(&json!({"data": {"user": {"id": 7}}})), None);
    }
}
