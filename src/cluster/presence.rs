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
//! - Whether a presence *change* of this node is one for the cluster ([`present_elsewhere`]): before the node
//!   announces a user's first socket in a room (or first socket at all, the room `user:<id>`) it asks fetchSockets
//!   of `user:<id>` on the other nodes and announces only if none of the user's sockets there is in the room since
//!   before; before it announces a last one gone, only if none is in the room at all.
//!
//! # Presence changes: what is announced, and the races
//! A shardcast socket's `data` carries, besides `user.id`, `since`: for each room of the socket that presence counts
//! (the rooms it joined through the wire contract, and `user:<id>`), when it joined it, in milliseconds since the
//! epoch on its node's clock. An appearance on node A at `t` (the time of the socket that made the user appear on
//! A) is announced unless another node has a socket of the user in the room with `since` < `t`, or without `since`
//! (a Node server's socket, or one a Node server made join: there for longer than anyone can tell). A
//! disappearance is announced unless another node has a socket of the user in the room. So:
//! - **one node after the other** (the user on A, then also on B; then gone from B, then from A): A announces the
//!   appearance, B nothing, B nothing, A the disappearance.
//! - **two nodes at once, appearing**: each compares its own `t` with the other's, the same two numbers, so at least
//!   one announces (both when the two are equal to the millisecond, or when one's socket was not yet in the room
//!   when the other asked): an appearance may be announced twice, never lost. Clocks skewed by more than the time
//!   between two appearances can add a second announcement the same way, never lose one. One exception: node A's
//!   `t` is that of the socket whose join reached the room's owner shard first; if the user's second socket on A,
//!   on another shard, joined earlier but reached the owner later, and B's socket joined between the two (all
//!   within a cross-shard hop), each node sees an older socket on the other and neither announces.
//! - **two nodes at once, disappearing**: a node asks only once its own socket is out of the room, so at least one
//!   of the two sees the other gone: a disappearance may be announced twice, never lost.
//! - **an appearance on B while the user disappears from A**: B's socket is in the room before its question goes
//!   out; A announces the disappearance unless it sees B's socket, and B announces the appearance unless it sees
//!   A's older one. The one window left: B's socket is counted (its join sent to its room's owner shard) but not yet
//!   in its shard's registry when A asks, and A's socket was still in the room when B asked: A announces the
//!   disappearance and B nothing (a join the watchers miss until the user's next change). It is as wide as a
//!   cross-shard hop on B, against a Redis round trip for the questions.
//! - **a node that does not answer** within `cluster.request_timeout_ms` (or Redis unreachable): it counts as not
//!   having the user, so the change is announced: late by at most `cluster.request_timeout_ms`, never lost.
//! - **a node that dies** announces nothing more: a user only there is not announced gone by anyone (as when a
//!   single process dies); a user also elsewhere is announced gone by the last node the user leaves.
//! - **order**: one node decides the changes of one user in one room (or of one user's being online) one at a time,
//!   in the order they happened, so its announcements keep that order.
//! - **Node servers announce nothing**: a user present only through a Node server was never announced, and a
//!   shardcast node does not announce the user's appearance or disappearance while the Node server has a socket of
//!   the user in the room.
//!
//! **Bounds.** Every node answers REMOTE_FETCH (Node servers too), so an answer waits for the slowest node, at most
//! `cluster.request_timeout_ms`; a node that has not answered by then is left out and the answer says it is not
//! complete. A node that dies is therefore out of every answer that begins after its death (its Redis connection
//! closes: PUBSUB NUMSUB no longer counts it) or at the latest `cluster.request_timeout_ms` after the question was
//! asked (a node Redis still counts, e.g. a host gone without closing its connection). Nothing expires in Redis
//! because nothing is stored there. Redis unreachable: this node's own users only, not complete.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use serde_json::Value as Json;

use crate::server::ShardCtx;

use super::codec::Selector;
pub use super::member::{USER_ROOM_PREFIX, now_ms, socket_data, user_of_room, user_room};
use super::node::cluster_of;

/// Most `user:<id>` rooms asked for in one fetchSockets request (larger lists are asked in several).
pub const USERS_PER_REQUEST_MAX: usize = 1000;

/// Whether `socket` (one of a fetchSockets answer) is `user`'s, in `room`, and (with `before_ms`) there since before
/// it: its `data.since[room]` is smaller, or absent (a Node server's socket).
fn is_present(socket: &Json, room: &str, user: &str, before_ms: Option<u64>) -> bool {
    if user_of_socket(socket) != Some(user) {
        return false;
    }
    let in_room = socket
        .get("rooms")
        .and_then(Json::as_array)
        .is_some_and(|rooms| rooms.iter().any(|r| r.as_str() == Some(room)));
    if !in_room {
        return false;
    }
    let Some(before) = before_ms else { return true };
    let since = socket
        .get("data")
        .and_then(|d| d.get("since"))
        .and_then(|s| s.get(room))
        .and_then(Json::as_u64);
    since.is_none_or(|t| t < before)
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

/// Whether another node has a socket of `user` in `room` (`room` may be [`user_room`]`(user)`: online), and, with
/// `before_ms`, one there since before `before_ms`; `None` when this process is not clustered. One fetchSockets of
/// `user:<id>` on the other nodes; a node that has not answered within `cluster.request_timeout_ms`, or Redis
/// unreachable, counts as not having the user (the change is announced rather than lost).
pub async fn present_elsewhere(
    shard: &ShardCtx,
    room: &str,
    user: &str,
    before_ms: Option<u64>,
) -> Option<bool> {
    let cluster = cluster_of(shard)?;
    let selector = Selector {
        rooms: vec![user_room(user)],
        except: Vec::new(),
    };
    let present = match cluster.fetch_remote_sockets(selector).await {
        Ok(answers) => answers
            .responses
            .iter()
            .any(|s| is_present(s, room, user, before_ms)),
        Err(e) => {
            tracing::debug!(error = %e, room, user, "cluster: presence change announced without asking");
            false
        }
    };
    let stats = cluster.stats();
    stats.presence_decided.fetch_add(1, Ordering::Relaxed);
    if present {
        stats.presence_elsewhere.fetch_add(1, Ordering::Relaxed);
    }
    Some(present)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    #[test]
    fn user_rooms_and_socket_data() {
        assert_eq!(user_room("alice"), "user:alice");
        assert_eq!(user_of_room("user:alice"), Some("alice"));
        assert_eq!(user_of_room("user:"), None);
        assert_eq!(user_of_room("/channels/c0"), None);
        let none = HashMap::new();
        let s = json!({"id": "x", "rooms": [], "data": socket_data(Some("bob"), &none)});
        assert_eq!(user_of_socket(&s), Some("bob"));
        assert_eq!(
            user_of_socket(&json!({"data": socket_data(None, &none)})),
            None
        );
        // A Node server's socket without user data, or with a non-string id, is nobody's.
        assert_eq!(user_of_socket(&json!({"id": "n"})), None);
        assert_eq!(user_of_socket(&json!({"data": {"user": {"id": 7}}})), None);
    }

    #[test]
    fn a_socket_counts_in_a_room_since_before_or_when_nobody_can_tell() {
        let since = HashMap::from([("/r".to_string(), 100), ("user:bob".to_string(), 50)]);
        let ours = json!({"id": "s", "rooms": ["s", "/r", "user:bob"], "data": socket_data(Some("bob"), &since)});
        assert!(is_present(&ours, "/r", "bob", None));
        assert!(is_present(&ours, "/r", "bob", Some(101)));
        // The same millisecond, or later: not before (both nodes announce rather than neither).
        assert!(!is_present(&ours, "/r", "bob", Some(100)));
        assert!(!is_present(&ours, "/r", "bob", Some(99)));
        assert!(is_present(&ours, "user:bob", "bob", Some(51)));
        assert!(!is_present(&ours, "/other", "bob", None));
        assert!(!is_present(&ours, "/r", "alice", None));
        // A Node server's socket: in the room for longer than anyone can tell.
        let node = json!({"id": "n", "rooms": ["n", "/r"], "data": {"user": {"id": "bob"}}});
        assert!(is_present(&node, "/r", "bob", Some(0)));
        assert!(!is_present(
            &json!({"id": "n", "data": {"user": {"id": "bob"}}}),
            "/r",
            "bob",
            None
        ));
    }
}
