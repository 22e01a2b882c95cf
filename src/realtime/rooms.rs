//! Rooms partitioned across shards: pure data structures and the messages between shards. No runtime, no sockets.
//!
//! # Model
//! - Every room has one **owner shard**, [`owner_shard`]: a fixed hash of the name modulo the shard count. The owner
//!   keeps an [`OwnerRegistry`]: for each room it owns, the set of shards that hold at least one member.
//! - Every shard keeps [`LocalRooms`]: room -> its local sockets, socket -> its rooms.
//! - [`ShardRooms`] combines both for one shard and turns joins, leaves, publishes and incoming [`ShardMessage`]s into
//!   [`Route`]s: messages to send to other shards, and local deliveries.
//!
//! # The path of one event
//! 1. The publishing shard encodes the event's arguments once (`["realtime:resource",{...}]`) into a
//!    [`SharedPayload`] and calls [`ShardRooms::publish`]: it either is the owner, or sends
//!    [`ShardMessage::Publish`] to the owner.
//! 2. The owner sends [`ShardMessage::Deliver`] to exactly the shards in the room's registry entry (itself included
//!    as a local delivery, no message), each once.
//! 3. Each receiving shard gets [`Route::DeliverLocal`] if it still has local members, frames the shared payload once
//!    and writes the same frame to every local member.
//!
//! # Invariants
//! - **A shard sends `MemberJoined` for a room exactly when its first local member joins, and `MemberLeft` exactly
//!   when its last one leaves.** Messages from one shard to another are FIFO, so the owner's set for a room converges
//!   to "the shards with local members"; a `Deliver` reaching a shard whose members have just left delivers nothing.
//! - **A socket whose join made its shard a new member shard is confirmed only after the owner has registered the
//!   shard** ([`JoinOutcome::ready`] false, later [`Route::JoinConfirmed`]). The server emits `realtime:join:success`
//!   only when the join is confirmed, so every event published after a client saw `realtime:join:success` reaches it.
//! - An event reaches each member shard at most once per publish, and each local member once per delivery.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

/// Index of a shard, `0..shard_count`.
pub type ShardId = usize;
/// A room name shared between the local tables and the messages that carry it.
pub type RoomName = Arc<str>;
/// An event's Socket.IO arguments, JSON-encoded once (see [`super::protocol::ResourceEvent::encode_args`]) and shared
/// by every shard and socket it reaches.
pub type SharedPayload = Arc<str>;

/// A stable 64-bit hash of a room name: FNV-1a followed by the MurmurHash3 64-bit finaliser. Stable across runs,
/// builds and machines (unlike `std`'s `DefaultHasher`), so every shard and every process agrees on owners.
pub fn room_hash(room: &str) -> u64 {
    fmix64(fnv1a(room.as_bytes()))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// MurmurHash3's 64-bit finaliser: spreads FNV's weak low bits before the modulo.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The shard that owns `room` among `shard_count` shards (`shard_count` must be at least 1).
pub fn owner_shard(room: &str, shard_count: usize) -> ShardId {
    assert!(shard_count > 0, "shard_count must be at least 1");
    (room_hash(room) % shard_count as u64) as usize
}

/// A message between shards about rooms. Everything in it is `Send` and cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardMessage {
    /// To the owner: `shard` now has local members of `room`.
    MemberJoined {
        /// Room.
        room: RoomName,
        /// The member shard.
        shard: ShardId,
    },
    /// To the owner: `shard` has no local members of `room` any more.
    MemberLeft {
        /// Room.
        room: RoomName,
        /// The former member shard.
        shard: ShardId,
    },
    /// From the owner to a member shard: your `MemberJoined` for `room` is registered.
    JoinConfirmed {
        /// Room.
        room: RoomName,
    },
    /// To the owner: publish `payload` to `room`.
    Publish {
        /// Room.
        room: RoomName,
        /// Encoded event arguments.
        payload: SharedPayload,
    },
    /// From the owner to a member shard: deliver `payload` to your local members of `room`.
    Deliver {
        /// Room.
        room: RoomName,
        /// Encoded event arguments.
        payload: SharedPayload,
    },
    /// To every shard: remove all your local members of `room` (its resource was deleted).
    Evict {
        /// Room.
        room: RoomName,
    },
}

/// What a shard must do after a room operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<S> {
    /// Send `msg` to shard `to` over the cross-shard queue.
    Send {
        /// Destination shard.
        to: ShardId,
        /// Message.
        msg: ShardMessage,
    },
    /// Frame `payload` once and write it to every local member of `room` ([`LocalRooms::members`]).
    DeliverLocal {
        /// Room.
        room: RoomName,
        /// Encoded event arguments.
        payload: SharedPayload,
    },
    /// These sockets' joins of `room` are now registered with the owner: emit `realtime:join:success` to each.
    JoinConfirmed {
        /// Room.
        room: RoomName,
        /// Sockets that joined while the registration was in flight and are still members.
        sockets: Vec<S>,
    },
    /// These local sockets were removed from `room` by [`ShardMessage::Evict`]: tell their sessions.
    Evicted {
        /// Room.
        room: RoomName,
        /// The former local members.
        sockets: Vec<S>,
    },
}

/// A set of shard ids, one bit each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSet {
    words: Vec<u64>,
}

impl ShardSet {
    /// Adds `shard`; true if it was absent.
    pub fn insert(&mut self, shard: ShardId) -> bool {
        let (w, bit) = (shard / 64, 1u64 << (shard % 64));
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let absent = self.words[w] & bit == 0;
        self.words[w] |= bit;
        absent
    }

    /// Removes `shard`; true if it was present.
    pub fn remove(&mut self, shard: ShardId) -> bool {
        let (w, bit) = (shard / 64, 1u64 << (shard % 64));
        match self.words.get_mut(w) {
            Some(word) if *word & bit != 0 => {
                *word &= !bit;
                true
            }
            _ => false,
        }
    }

    /// True if `shard` is in the set.
    pub fn contains(&self, shard: ShardId) -> bool {
        self.words
            .get(shard / 64)
            .is_some_and(|w| w & (1u64 << (shard % 64)) != 0)
    }

    /// True if no shard is in the set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The shards in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

/// The owner's view: for each room it owns, which shards hold members.
#[derive(Debug, Default)]
pub struct OwnerRegistry {
    rooms: HashMap<RoomName, ShardSet>,
}

impl OwnerRegistry {
    /// Records that `shard` holds members of `room`; true if that is new.
    pub fn member_joined(&mut self, room: RoomName, shard: ShardId) -> bool {
        self.rooms.entry(room).or_default().insert(shard)
    }

    /// Records that `shard` holds no members of `room`; true if it was recorded. Forgets rooms left empty.
    pub fn member_left(&mut self, room: &str, shard: ShardId) -> bool {
        let Some(set) = self.rooms.get_mut(room) else {
            return false;
        };
        let removed = set.remove(shard);
        if set.is_empty() {
            self.rooms.remove(room);
        }
        removed
    }

    /// The shards holding members of `room` (none if the room is unknown).
    pub fn member_shards(&self, room: &str) -> impl Iterator<Item = ShardId> + '_ {
        self.rooms.get(room).into_iter().flat_map(ShardSet::iter)
    }

    /// Number of rooms with at least one member shard.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// What [`LocalRooms::join`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalJoin {
    /// The socket is the room's first local member: the owner must learn of this shard.
    FirstLocalMember,
    /// The socket joined a room that already had local members.
    Added,
    /// The socket was already a member.
    AlreadyMember,
}

/// What [`LocalRooms::leave`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalLeave {
    /// The socket was the room's last local member: the owner must forget this shard.
    LastLocalMember,
    /// The socket left; other local members remain.
    Removed,
    /// The socket was not a member.
    NotMember,
}

/// One shard's memberships: room -> local sockets, socket -> rooms. Joins and leaves are O(1) in the room's size
/// and O(rooms of that socket) on the socket side, which [`super::protocol::SessionConfig::rooms_per_socket_max`]
/// bounds.
#[derive(Debug)]
pub struct LocalRooms<S> {
    rooms: HashMap<RoomName, HashSet<S>>,
    sockets: HashMap<S, Vec<RoomName>>,
}

impl<S> Default for LocalRooms<S> {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
            sockets: HashMap::new(),
        }
    }
}

impl<S: Copy + Eq + Hash> LocalRooms<S> {
    /// Empty tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `socket` to `room`.
    pub fn join(&mut self, socket: S, room: &str) -> LocalJoin {
        let outcome = match self.rooms.get_mut(room) {
            Some(members) => {
                if !members.insert(socket) {
                    return LocalJoin::AlreadyMember;
                }
                LocalJoin::Added
            }
            None => {
                self.rooms.insert(Arc::from(room), HashSet::from([socket]));
                LocalJoin::FirstLocalMember
            }
        };
        let name = self.interned(room);
        self.sockets.entry(socket).or_default().push(name);
        outcome
    }

    /// The shared name of `room` if it has local members, else a new one.
    fn interned(&self, room: &str) -> RoomName {
        self.rooms
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone())
    }

    /// Removes `socket` from `room`.
    pub fn leave(&mut self, socket: S, room: &str) -> LocalLeave {
        let Some(members) = self.rooms.get_mut(room) else {
            return LocalLeave::NotMember;
        };
        if !members.remove(&socket) {
            return LocalLeave::NotMember;
        }
        let now_empty = members.is_empty();
        if now_empty {
            self.rooms.remove(room);
        }
        if let Entry::Occupied(mut e) = self.sockets.entry(socket) {
            let rooms = e.get_mut();
            if let Some(i) = rooms.iter().position(|r| &**r == room) {
                rooms.swap_remove(i);
            }
            if rooms.is_empty() {
                e.remove();
            }
        }
        if now_empty {
            LocalLeave::LastLocalMember
        } else {
            LocalLeave::Removed
        }
    }

    /// Removes `socket` from every room (disconnect); returns the rooms it was the last local member of.
    pub fn leave_all(&mut self, socket: S) -> Vec<RoomName> {
        let Some(rooms) = self.sockets.remove(&socket) else {
            return Vec::new();
        };
        let mut emptied = Vec::new();
        for room in rooms {
            if let Some(members) = self.rooms.get_mut(&room) {
                members.remove(&socket);
                if members.is_empty() {
                    self.rooms.remove(&room);
                    emptied.push(room);
                }
            }
        }
        emptied
    }

    /// The local members of `room`.
    pub fn members(&self, room: &str) -> impl Iterator<Item = S> + '_ {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|m| m.iter().copied())
    }

    /// Number of local members of `room`.
    pub fn member_count(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, HashSet::len)
    }

    /// True if `socket` is a local member of `room`.
    pub fn is_member(&self, socket: S, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|m| m.contains(&socket))
    }

    /// The rooms `socket` is in.
    pub fn rooms_of(&self, socket: S) -> &[RoomName] {
        self.sockets.get(&socket).map_or(&[], Vec::as_slice)
    }

    /// Number of rooms with local members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// What [`ShardRooms::join`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome<S> {
    /// True: emit `realtime:join:success` now. False: wait for the [`Route::JoinConfirmed`] naming this socket.
    pub ready: bool,
    /// Messages to send.
    pub routes: Vec<Route<S>>,
}

#[derive(Debug)]
struct PendingJoin<S> {
    confirmations_outstanding: u32,
    sockets: Vec<S>,
}

/// One shard's complete room state: local memberships, the registry of the rooms it owns, and joins waiting for
/// their owner's confirmation.
#[derive(Debug)]
pub struct ShardRooms<S> {
    shard: ShardId,
    shard_count: usize,
    local: LocalRooms<S>,
    owned: OwnerRegistry,
    pending: HashMap<RoomName, PendingJoin<S>>,
}

impl<S: Copy + Eq + Hash> ShardRooms<S> {
    /// State for shard `shard` of `shard_count`.
    pub fn new(shard: ShardId, shard_count: usize) -> Self {
        assert!(
            shard < shard_count,
            "shard {shard} out of range 0..{shard_count}"
        );
        Self {
            shard,
            shard_count,
            local: LocalRooms::new(),
            owned: OwnerRegistry::default(),
            pending: HashMap::new(),
        }
    }

    /// This shard's id.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The local memberships (for delivery: [`LocalRooms::members`]).
    pub fn local(&self) -> &LocalRooms<S> {
        &self.local
    }

    /// The registry of rooms this shard owns.
    pub fn owned(&self) -> &OwnerRegistry {
        &self.owned
    }

    /// The owner of `room`.
    pub fn owner_of(&self, room: &str) -> ShardId {
        owner_shard(room, self.shard_count)
    }

    /// `socket` (on this shard) joins `room`.
    pub fn join(&mut self, socket: S, room: &str) -> JoinOutcome<S> {
        match self.local.join(socket, room) {
            LocalJoin::AlreadyMember => JoinOutcome {
                ready: !self.pending_contains(room, socket),
                routes: vec![],
            },
            LocalJoin::Added => match self.pending.get_mut(room) {
                Some(p) => {
                    p.sockets.push(socket);
                    JoinOutcome {
                        ready: false,
                        routes: vec![],
                    }
                }
                None => JoinOutcome {
                    ready: true,
                    routes: vec![],
                },
            },
            LocalJoin::FirstLocalMember => {
                let name = self.interned(room);
                let owner = self.owner_of(room);
                if owner == self.shard {
                    self.owned.member_joined(name, self.shard);
                    return JoinOutcome {
                        ready: true,
                        routes: vec![],
                    };
                }
                let p = self
                    .pending
                    .entry(name.clone())
                    .or_insert_with(|| PendingJoin {
                        confirmations_outstanding: 0,
                        sockets: Vec::new(),
                    });
                p.confirmations_outstanding += 1;
                p.sockets.push(socket);
                let msg = ShardMessage::MemberJoined {
                    room: name,
                    shard: self.shard,
                };
                JoinOutcome {
                    ready: false,
                    routes: vec![Route::Send { to: owner, msg }],
                }
            }
        }
    }

    /// `socket` leaves `room` (leaving a room it is not in does nothing).
    pub fn leave(&mut self, socket: S, room: &str) -> Vec<Route<S>> {
        self.forget_pending(room, socket);
        match self.local.leave(socket, room) {
            LocalLeave::LastLocalMember => self.shard_left(Arc::from(room)),
            LocalLeave::Removed | LocalLeave::NotMember => Vec::new(),
        }
    }

    /// `socket` disconnected: leave all its rooms.
    pub fn leave_all(&mut self, socket: S) -> Vec<Route<S>> {
        for room in self.local.rooms_of(socket).to_vec() {
            self.forget_pending(&room, socket);
        }
        let emptied = self.local.leave_all(socket);
        emptied
            .into_iter()
            .flat_map(|room| self.shard_left(room))
            .collect()
    }

    /// Publish an encoded event to `room`, from this shard.
    pub fn publish(&mut self, room: &str, payload: SharedPayload) -> Vec<Route<S>> {
        let owner = self.owner_of(room);
        if owner == self.shard {
            self.fan_out(room, payload)
        } else {
            vec![Route::Send {
                to: owner,
                msg: ShardMessage::Publish {
                    room: Arc::from(room),
                    payload,
                },
            }]
        }
    }

    /// A message from another shard arrived.
    pub fn on_message(&mut self, msg: ShardMessage) -> Vec<Route<S>> {
        match msg {
            ShardMessage::MemberJoined { room, shard } => {
                self.owned.member_joined(room.clone(), shard);
                vec![Route::Send {
                    to: shard,
                    msg: ShardMessage::JoinConfirmed { room },
                }]
            }
            ShardMessage::MemberLeft { room, shard } => {
                self.owned.member_left(&room, shard);
                Vec::new()
            }
            ShardMessage::JoinConfirmed { room } => {
                let Entry::Occupied(mut e) = self.pending.entry(room) else {
                    return Vec::new();
                };
                let p = e.get_mut();
                p.confirmations_outstanding = p.confirmations_outstanding.saturating_sub(1);
                if p.confirmations_outstanding > 0 {
                    return Vec::new();
                }
                let (room, p) = e.remove_entry();
                if p.sockets.is_empty() {
                    return Vec::new();
                }
                vec![Route::JoinConfirmed {
                    room,
                    sockets: p.sockets,
                }]
            }
            ShardMessage::Publish { room, payload } => self.fan_out(&room, payload),
            ShardMessage::Deliver { room, payload } => {
                if self.local.member_count(&room) == 0 {
                    return Vec::new();
                }
                vec![Route::DeliverLocal { room, payload }]
            }
            ShardMessage::Evict { room } => self.evict(room),
        }
    }

    /// Removes every local member of `room` (the [`ShardMessage::Evict`] of this shard).
    pub fn evict(&mut self, room: RoomName) -> Vec<Route<S>> {
        let sockets: Vec<S> = self.local.members(&room).collect();
        if sockets.is_empty() {
            return Vec::new();
        }
        let mut routes: Vec<Route<S>> =
            sockets.iter().flat_map(|s| self.leave(*s, &room)).collect();
        routes.push(Route::Evicted { room, sockets });
        routes
    }

    fn fan_out(&self, room: &str, payload: SharedPayload) -> Vec<Route<S>> {
        let mut routes = Vec::new();
        let mut name: Option<RoomName> = None;
        for shard in self.owned.member_shards(room) {
            let room = name.get_or_insert_with(|| Arc::from(room)).clone();
            if shard == self.shard {
                if self.local.member_count(&room) > 0 {
                    routes.push(Route::DeliverLocal {
                        room,
                        payload: payload.clone(),
                    });
                }
            } else {
                routes.push(Route::Send {
                    to: shard,
                    msg: ShardMessage::Deliver {
                        room,
                        payload: payload.clone(),
                    },
                });
            }
        }
        routes
    }

    fn shard_left(&mut self, room: RoomName) -> Vec<Route<S>> {
        let owner = self.owner_of(&room);
        if owner == self.shard {
            self.owned.member_left(&room, self.shard);
            Vec::new()
        } else {
            vec![Route::Send {
                to: owner,
                msg: ShardMessage::MemberLeft {
                    room,
                    shard: self.shard,
                },
            }]
        }
    }

    fn interned(&self, room: &str) -> RoomName {
        self.local.interned(room)
    }

    fn pending_contains(&self, room: &str, socket: S) -> bool {
        self.pending
            .get(room)
            .is_some_and(|p| p.sockets.contains(&socket))
    }

    fn forget_pending(&mut self, room: &str, socket: S) {
        if let Some(p) = self.pending.get_mut(room) {
            p.sockets.retain(|s| *s != socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, VecDeque};

    #[test]
    fn owner_is_stable_and_in_range() {
        // Fixed expectations: a change to the hash would split rooms differently between processes and versions.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c); // the FNV-1a 64 reference vector
        assert_eq!(room_hash(""), 0xefd0_1f60_ba99_2926);
        assert_eq!(room_hash("/messages"), 0x0a92_c79d_ea94_6fb0);
        assert_eq!(
            room_hash("/channels/general/messages"),
            0x83ca_ecb1_9803_c7ae
        );
        assert_eq!(room_hash("/messages"), room_hash("/messages"));
        assert_ne!(room_hash("/messages"), room_hash("/messagez"));
        for n in 1..9 {
            for i in 0..200 {
                let room = format!("/channels/{i}");
                assert!(owner_shard(&room, n) < n);
                assert_eq!(owner_shard(&room, n), owner_shard(&room, n));
            }
        }
        assert_eq!(owner_shard("/anything", 1), 0);
    }

    #[test]
    fn owners_spread_over_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[owner_shard(&format!("/companies/c{i}/channels"), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shard_set() {
        let mut s = ShardSet::default();
        assert!(s.is_empty());
        assert!(s.insert(3) && s.insert(70) && !s.insert(3));
        assert!(s.contains(70) && !s.contains(4) && !s.contains(1000));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![3, 70]);
        assert!(s.remove(3) && !s.remove(3) && !s.remove(500));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![70]);
        assert!(s.remove(70) && s.is_empty());
    }

    #[test]
    fn owner_registry() {
        let mut r = OwnerRegistry::default();
        assert!(r.member_joined("/r".into(), 1));
        assert!(!r.member_joined("/r".into(), 1));
        assert!(r.member_joined("/r".into(), 0));
        assert_eq!(r.member_shards("/r").collect::<Vec<_>>(), vec![0, 1]);
        assert!(r.member_left("/r", 1));
        assert!(!r.member_left("/r", 1));
        assert!(!r.member_left("/unknown", 0));
        assert!(r.member_left("/r", 0));
        assert_eq!(r.room_count(), 0);
        assert_eq!(r.member_shards("/r").count(), 0);
    }

    #[test]
    fn local_rooms_join_leave_leave_all() {
        let mut l = LocalRooms::<u32>::new();
        assert_eq!(l.join(1, "/a"), LocalJoin::FirstLocalMember);
        assert_eq!(l.join(2, "/a"), LocalJoin::Added);
        assert_eq!(l.join(1, "/a"), LocalJoin::AlreadyMember);
        assert_eq!(l.join(1, "/b"), LocalJoin::FirstLocalMember);
        let mut m: Vec<u32> = l.members("/a").collect();
        m.sort();
        assert_eq!(m, vec![1, 2]);
        assert_eq!(l.rooms_of(1).len(), 2);
        assert!(l.is_member(2, "/a") && !l.is_member(2, "/b"));
        assert_eq!(l.leave(2, "/b"), LocalLeave::NotMember);
        assert_eq!(l.leave(2, "/a"), LocalLeave::Removed);
        assert_eq!(l.leave(2, "/a"), LocalLeave::NotMember);
        assert_eq!(l.join(3, "/a"), LocalJoin::Added);
        let mut emptied = l.leave_all(1);
        emptied.sort();
        assert_eq!(emptied, vec![RoomName::from("/b")]);
        assert_eq!(l.leave(3, "/a"), LocalLeave::LastLocalMember);
        assert_eq!(l.room_count(), 0);
        assert!(l.rooms_of(1).is_empty() && l.rooms_of(3).is_empty());
        assert!(l.leave_all(9).is_empty());
    }

    /// N shards connected by FIFO queues; runs every route to completion and records deliveries.
    struct Cluster {
        shards: Vec<ShardRooms<u32>>,
        queues: Vec<VecDeque<ShardMessage>>,
        /// socket -> number of times a payload was delivered to it, per payload.
        delivered: BTreeMap<(u32, String), usize>,
        /// shard -> number of `Deliver` messages it received.
        deliver_messages: Vec<usize>,
        confirmed: Vec<(RoomName, u32)>,
    }

    impl Cluster {
        fn new(n: usize) -> Self {
            Self {
                shards: (0..n).map(|i| ShardRooms::new(i, n)).collect(),
                queues: (0..n).map(|_| VecDeque::new()).collect(),
                delivered: BTreeMap::new(),
                deliver_messages: vec![0; n],
                confirmed: Vec::new(),
            }
        }

        fn apply(&mut self, shard: ShardId, routes: Vec<Route<u32>>) {
            for r in routes {
                match r {
                    Route::Send { to, msg } => {
                        assert_ne!(to, shard, "a shard never messages itself");
                        if matches!(msg, ShardMessage::Deliver { .. }) {
                            self.deliver_messages[to] += 1;
                        }
                        self.queues[to].push_back(msg);
                    }
                    Route::DeliverLocal { room, payload } => {
                        let members: Vec<u32> = self.shards[shard].local().members(&room).collect();
                        for s in members {
                            *self.delivered.entry((s, payload.to_string())).or_default() += 1;
                        }
                    }
                    Route::JoinConfirmed { room, sockets } => {
                        // A confirmed join must be final: the owner has this shard registered and has no
                        // membership message from it for this room still to process.
                        let owner = owner_shard(&room, self.shards.len());
                        assert!(
                            self.shards[owner]
                                .owned()
                                .member_shards(&room)
                                .any(|s| s == shard),
                            "confirmed before the owner registered shard {shard} for {room}"
                        );
                        assert!(
                            !self.queues[owner].iter().any(|m| matches!(m,
                                ShardMessage::MemberJoined { room: r, shard: s }
                                | ShardMessage::MemberLeft { room: r, shard: s } if *r == room && *s == shard)),
                            "confirmed while membership messages for {room} are still in flight"
                        );
                        self.confirmed
                            .extend(sockets.into_iter().map(|s| (room.clone(), s)));
                    }
                    Route::Evicted { .. } => {}
                }
            }
        }

        fn run(&mut self) {
            while let Some(i) = (0..self.queues.len()).find(|i| !self.queues[*i].is_empty()) {
                let msg = self.queues[i].pop_front().expect("queue checked non-empty");
                let routes = self.shards[i].on_message(msg);
                self.apply(i, routes);
            }
        }

        fn join(&mut self, shard: ShardId, socket: u32, room: &str) -> bool {
            let out = self.shards[shard].join(socket, room);
            self.apply(shard, out.routes);
            out.ready
        }

        fn leave(&mut self, shard: ShardId, socket: u32, room: &str) {
            let routes = self.shards[shard].leave(socket, room);
            self.apply(shard, routes);
        }

        fn publish(&mut self, shard: ShardId, room: &str, payload: &str) {
            let routes = self.shards[shard].publish(room, Arc::from(payload));
            self.apply(shard, routes);
            self.run();
        }

        fn received(&self, socket: u32, payload: &str) -> usize {
            self.delivered
                .get(&(socket, payload.to_string()))
                .copied()
                .unwrap_or(0)
        }
    }

    /// A room name owned by `owner` among `n` shards.
    fn room_owned_by(owner: ShardId, n: usize) -> String {
        (0..)
            .map(|i| format!("/rooms/{i}"))
            .find(|r| owner_shard(r, n) == owner)
            .unwrap_or_default()
    }

    #[test]
    fn publish_reaches_exactly_the_shards_with_members() {
        let n = 4;
        let mut c = Cluster::new(n);
        let room = room_owned_by(0, n);
        // Members on shards 1 and 3 (socket id = shard * 100 + k); shard 2 has a member of another room only.
        for (shard, socket) in [(1, 100), (1, 101), (3, 300)] {
            c.join(shard, socket, &room);
        }
        c.join(2, 200, "/elsewhere");
        c.run();
        assert_eq!(
            c.shards[0].owned().member_shards(&room).collect::<Vec<_>>(),
            vec![1, 3]
        );
        for publisher in 0..n {
            let payload = format!("event-from-{publisher}");
            c.deliver_messages = vec![0; n];
            c.publish(publisher, &room, &payload);
            assert_eq!(
                c.deliver_messages,
                vec![0, 1, 0, 1],
                "publisher {publisher}"
            );
            for s in [100, 101, 300] {
                assert_eq!(
                    c.received(s, &payload),
                    1,
                    "socket {s}, publisher {publisher}"
                );
            }
            assert_eq!(c.received(200, &payload), 0);
        }
    }

    #[test]
    fn owner_delivers_locally_without_a_message() {
        let n = 2;
        let mut c = Cluster::new(n);
        let room = room_owned_by(1, n);
        assert!(c.join(1, 7, &room), "owner-local join is ready at once");
        c.publish(0, &room, "p");
        assert_eq!(c.deliver_messages, vec![0, 0]);
        assert_eq!(c.received(7, "p"), 1);
    }

    #[test]
    fn join_on_a_non_owner_is_confirmed_after_registration() {
        let n = 2;
        let mut c = Cluster::new(n);
        let room = room_owned_by(0, n);
        assert!(!c.join(1, 5, &room));
        // A second local socket while the first registration is in flight also waits.
        assert!(!c.join(1, 6, &room));
        assert!(c.confirmed.is_empty());
        c.run();
        assert_eq!(
            c.confirmed,
            vec![
                (RoomName::from(room.as_str()), 5),
                (RoomName::from(room.as_str()), 6)
            ]
        );
        // Once registered, further local joins are ready at once.
        assert!(c.join(1, 8, &room));
        c.publish(0, &room, "p");
        for s in [5, 6, 8] {
            assert_eq!(c.received(s, "p"), 1);
        }
    }

    #[test]
    fn leave_rejoin_while_confirmation_in_flight() {
        let n = 2;
        let mut c = Cluster::new(n);
        let room = room_owned_by(0, n);
        assert!(!c.join(1, 5, &room));
        c.leave(1, 5, &room);
        assert!(!c.join(1, 6, &room));
        // Process the owner's queue (MemberJoined, MemberLeft, MemberJoined) and the two confirmations in order.
        c.run();
        assert_eq!(c.confirmed, vec![(RoomName::from(room.as_str()), 6)]);
        assert_eq!(
            c.shards[0].owned().member_shards(&room).collect::<Vec<_>>(),
            vec![1]
        );
        c.publish(0, &room, "p");
        assert_eq!((c.received(5, "p"), c.received(6, "p")), (0, 1));
    }

    #[test]
    fn leave_stops_delivery_and_unregisters_the_shard() {
        let n = 3;
        let mut c = Cluster::new(n);
        let room = room_owned_by(2, n);
        c.join(0, 1, &room);
        c.join(0, 2, &room);
        c.run();
        c.leave(0, 1, &room);
        c.run();
        c.publish(1, &room, "a");
        assert_eq!((c.received(1, "a"), c.received(2, "a")), (0, 1));
        c.leave(0, 2, &room);
        c.run();
        assert_eq!(c.shards[2].owned().room_count(), 0);
        c.deliver_messages = vec![0; n];
        c.publish(1, &room, "b");
        assert_eq!(c.deliver_messages, vec![0, 0, 0]);
        assert_eq!(c.received(2, "b"), 0);
    }

    #[test]
    fn disconnect_leaves_all_rooms() {
        let n = 2;
        let mut c = Cluster::new(n);
        let (r0, r1) = (room_owned_by(0, n), room_owned_by(1, n));
        c.join(1, 9, &r0);
        c.join(1, 9, &r1);
        c.run();
        let routes = c.shards[1].leave_all(9);
        assert_eq!(
            routes,
            vec![Route::Send {
                to: 0,
                msg: ShardMessage::MemberLeft {
                    room: r0.as_str().into(),
                    shard: 1
                }
            }]
        );
        c.apply(1, routes);
        c.run();
        assert_eq!(c.shards[0].owned().room_count(), 0);
        assert_eq!(c.shards[1].owned().room_count(), 0);
    }

    #[test]
    fn evict_removes_every_member_on_every_shard_and_unregisters_them() {
        let n = 3;
        let mut c = Cluster::new(n);
        let room = room_owned_by(0, n);
        c.join(1, 10, &room);
        c.join(2, 20, &room);
        c.join(2, 21, &room);
        c.run();
        for shard in 0..n {
            let routes = c.shards[shard].on_message(ShardMessage::Evict {
                room: Arc::from(room.as_str()),
            });
            c.apply(shard, routes);
        }
        c.run();
        for shard in 0..n {
            assert_eq!(c.shards[shard].local().member_count(&room), 0);
        }
        assert_eq!(c.shards[0].owned().member_shards(&room).count(), 0);
        c.publish(1, &room, "after");
        c.run();
        assert_eq!(c.received(10, "after") + c.received(20, "after"), 0);
    }

    #[test]
    fn deliver_to_a_shard_whose_members_left_is_dropped() {
        let mut s = ShardRooms::<u32>::new(1, 2);
        let routes = s.on_message(ShardMessage::Deliver {
            room: "/r".into(),
            payload: "p".into(),
        });
        assert!(routes.is_empty());
    }

    #[test]
    fn many_rooms_many_shards_exactly_once() {
        let n = 3;
        let mut c = Cluster::new(n);
        let mut expected: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for socket in 0..60u32 {
            let shard = (socket % n as u32) as usize;
            let room = format!("/rooms/{}", socket % 10);
            c.join(shard, socket, &room);
            expected.entry(room).or_default().push(socket);
        }
        c.run();
        for (i, (room, members)) in expected.iter().enumerate() {
            let payload = format!("p{i}");
            c.publish(i % n, room, &payload);
            for socket in 0..60u32 {
                let want = usize::from(members.contains(&socket));
                assert_eq!(
                    c.received(socket, &payload),
                    want,
                    "socket {socket} room {room}"
                );
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Join(u32, u8),
        Leave(u32, u8),
        Disconnect(u32),
        /// Deliver every queued message.
        Settle,
        /// Deliver the first queued message of this shard, if any (interleavings).
        Step(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..24u32, 0..6u8).prop_map(|(s, r)| Op::Join(s, r)),
            2 => (0..24u32, 0..6u8).prop_map(|(s, r)| Op::Leave(s, r)),
            1 => (0..24u32).prop_map(Op::Disconnect),
            1 => Just(Op::Settle),
            3 => (0..3u8).prop_map(Op::Step),
        ]
    }

    proptest::proptest! {
        /// Whatever the order of joins, leaves, disconnects and message deliveries: once the queues drain, every
        /// owner's registry is exactly the set of shards with local members, every join was confirmed, and a publish
        /// from any shard reaches each member exactly once and nobody else.
        #[test]
        fn registry_converges_and_delivery_is_exact(ops in proptest::collection::vec(op(), 1..120)) {
            let n = 3;
            let mut c = Cluster::new(n);
            // Socket s lives on shard s % n.
            let shard_of = |s: u32| (s as usize) % n;
            let mut unconfirmed: HashSet<(String, u32)> = HashSet::new();
            for op in ops {
                match op {
                    Op::Join(s, r) => {
                        let room = format!("/r{r}");
                        if !c.join(shard_of(s), s, &room) {
                            unconfirmed.insert((room, s));
                        }
                    }
                    Op::Leave(s, r) => {
                        let room = format!("/r{r}");
                        unconfirmed.remove(&(room.clone(), s));
                        c.leave(shard_of(s), s, &room);
                    }
                    Op::Disconnect(s) => {
                        unconfirmed.retain(|(_, u)| *u != s);
                        let routes = c.shards[shard_of(s)].leave_all(s);
                        c.apply(shard_of(s), routes);
                    }
                    Op::Settle => c.run(),
                    Op::Step(i) => {
                        let i = usize::from(i);
                        if let Some(msg) = c.queues[i].pop_front() {
                            let routes = c.shards[i].on_message(msg);
                            c.apply(i, routes);
                        }
                    }
                }
                for (room, s) in c.confirmed.drain(..) {
                    unconfirmed.remove(&(room.to_string(), s));
                }
            }
            c.run();
            for (room, s) in c.confirmed.drain(..) {
                unconfirmed.remove(&(room.to_string(), s));
            }
            proptest::prop_assert!(unconfirmed.is_empty(), "unconfirmed joins {:?}", unconfirmed);
            for r in 0..6u8 {
                let room = format!("/r{r}");
                let owner = owner_shard(&room, n);
                let registered: Vec<ShardId> = c.shards[owner].owned().member_shards(&room).collect();
                let actual: Vec<ShardId> =
                    (0..n).filter(|i| c.shards[*i].local().member_count(&room) > 0).collect();
                proptest::prop_assert_eq!(&registered, &actual, "room {}", room);
                let payload = format!("p{r}");
                c.publish(usize::from(r) % n, &room, &payload);
                for s in 0..24u32 {
                    let want = usize::from(c.shards[shard_of(s)].local().is_member(s, &room));
                    proptest::prop_assert_eq!(c.received(s, &payload), want, "socket {} room {}", s, room);
                }
            }
            for shard in &c.shards {
                proptest::prop_assert!(shard.pending.is_empty());
            }
        }
    }
}
