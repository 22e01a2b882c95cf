//! [`RoomRegistry`]: the rooms of one shard, namespace -> room -> members; a broadcast encodes once (the packet and
//! its websocket frame header) and queues the same frames for every member.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::proto::EncodedMessage;

use super::super::engine::{OutItem, Session};
use super::super::runtime::ShardCtx;
use super::socket::Socket;

/// room -> members (socket id -> socket).
type RoomsOfNamespace = HashMap<Rc<str>, HashMap<Rc<str>, Socket>>;

/// The shard's rooms: namespace -> room -> members (socket id -> socket).
#[derive(Default)]
pub struct RoomRegistry {
    rooms: RefCell<HashMap<Rc<str>, RoomsOfNamespace>>,
}

impl std::fmt::Debug for RoomRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomRegistry").finish_non_exhaustive()
    }
}

impl RoomRegistry {
    pub(super) fn add(&self, socket: &Socket, room: &Rc<str>) {
        let nsp: Rc<str> = socket.0.nsp.name.clone();
        self.rooms
            .borrow_mut()
            .entry(nsp)
            .or_default()
            .entry(room.clone())
            .or_default()
            .insert(socket.0.id.clone(), socket.clone());
    }
    pub(super) fn remove(&self, socket: &Socket, room: &str) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(by_room) = rooms.get_mut(socket.namespace()) {
            if let Some(members) = by_room.get_mut(room) {
                members.remove(socket.id());
                if members.is_empty() {
                    by_room.remove(room);
                }
            }
            if by_room.is_empty() {
                rooms.remove(socket.namespace());
            }
        }
    }
    /// The members of `room` in namespace `nsp` on this shard.
    pub fn members(&self, nsp: &str, room: &str) -> Vec<Socket> {
        self.rooms
            .borrow()
            .get(nsp)
            .and_then(|r| r.get(room))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
    /// Number of members of `room` on this shard.
    pub fn len(&self, nsp: &str, room: &str) -> usize {
        self.rooms
            .borrow()
            .get(nsp)
            .and_then(|r| r.get(room))
            .map_or(0, HashMap::len)
    }
    /// True if no room has members on this shard.
    pub fn is_empty(&self) -> bool {
        self.rooms.borrow().is_empty()
    }
    /// Queue `msg` (encoded once, its websocket frame header too) for every member of `room`; returns how many
    /// sockets it was queued for. Websocket members whose writer is idle are written at the end of this turn, one
    /// send per socket for everything they got in the turn (see `engine::cork`).
    pub fn broadcast(&self, nsp: &str, room: &str, msg: &EncodedMessage) -> usize {
        let sessions: Vec<Rc<Session>> =
            match self.rooms.borrow().get(nsp).and_then(|r| r.get(room)) {
                Some(m) => m
                    .values()
                    .filter(|s| s.is_connected())
                    .map(|s| s.0.session.clone())
                    .collect(),
                None => return 0,
            };
        let text = OutItem::framed_text(msg.ws_text());
        let attachments = msg.attachments();
        sessions
            .iter()
            .filter(|s| {
                if attachments.is_empty() {
                    s.send_items([text.clone()])
                } else {
                    s.send_items(
                        std::iter::once(text.clone())
                            .chain(attachments.iter().map(|a| OutItem::Binary(a.clone()))),
                    )
                }
            })
            .count()
    }
}

/// Typed access to this layer's per-shard state from the shard context. The runtime knows nothing of it: the
/// rooms live in [`super::SioShard`], stored with [`ShardCtx::set_state`].
impl ShardCtx {
    /// The shard's rooms.
    pub fn rooms(&self) -> Rc<RoomRegistry> {
        super::sio_shard(self).rooms.clone()
    }
    /// Queue `msg` for every member of `room` of namespace `nsp` on this shard (see [`RoomRegistry::broadcast`]).
    pub fn broadcast(&self, nsp: &str, room: &str, msg: &EncodedMessage) -> usize {
        super::sio_shard(self).rooms.broadcast(nsp, room, msg)
    }
}
