//! Presence across shards, transport-free: who is connected in each room (user ids, each counted once over all its
//! sockets, devices and shards) and whether a user is online.
//!
//! Every shard counts its own authenticated sockets per user and its sockets per (room, user). Only the first and
//! the last of each count cross shards:
//! - a user's **home shard** ([`home_shard`], the room-owner hash of the user id) learns [`PresenceMsg::UserUp`] /
//!   [`PresenceMsg::UserDown`] from each shard where the user gets a first / loses a last socket, and keeps the set of
//!   shards where the user is connected: online = that set is not empty;
//! - a room's **owner shard** ([`super::rooms::owner_shard`]) learns [`PresenceMsg::RoomUp`] / [`PresenceMsg::RoomDown`]
//!   and keeps, per user, the shards where the user has a socket in the room: the room's online users are the users
//!   with a non-empty set.
//!
//! The messages of one shard to another must arrive in order and none may be lost (the glue in `live.rs` keeps a FIFO
//! backlog per peer). Memory is bounded by what clients already hold: at most one entry per (room, user) membership
//! and per connected user.
//!
//! [`Presence::on_message`] reports each change exactly once, on the one shard that sees it: a [`RoomChange`] on the
//! room's owner (a user's first socket in the room on any shard, or its last one gone), a [`UserChange`] on the user's
//! home shard (first authenticated socket anywhere, or the last one gone). Where a room's changes are published, if
//! anywhere, is a [`PresenceRoom`] template. An appearance carries when its socket joined or authenticated
//! (`since_ms`): in a cluster, the glue compares it with the other nodes' before it announces the change
//! (`crate::cluster::presence`).

use std::collections::{BTreeSet, HashMap};

use super::rooms::{ShardId, owner_shard};

/// The shard that knows whether `user` is online.
pub fn home_shard(user: &str, shard_count: usize) -> ShardId {
    owner_shard(user, shard_count)
}

/// What one shard tells another about presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PresenceMsg {
    /// `user` got its first authenticated socket on shard `from` (to the user's home shard).
    UserUp {
        /// User id.
        user: String,
        /// The companies of the user's access token (the `companies` claim), at most [`COMPANIES_PER_USER_MAX`].
        companies: Vec<String>,
        /// When that socket authenticated, milliseconds since the epoch (0 when nobody needs it).
        since_ms: u64,
        /// The sending shard.
        from: ShardId,
    },
    /// `user`'s last socket on shard `from` went (to the user's home shard).
    UserDown {
        /// User id.
        user: String,
        /// The sending shard.
        from: ShardId,
    },
    /// `user` got its first socket in `room` on shard `from` (to the room's owner).
    RoomUp {
        /// Room.
        room: String,
        /// User id.
        user: String,
        /// When that socket joined, milliseconds since the epoch (0 when nobody needs it).
        since_ms: u64,
        /// The sending shard.
        from: ShardId,
    },
    /// `user`'s last socket in `room` on shard `from` left it (to the room's owner).
    RoomDown {
        /// Room.
        room: String,
        /// User id.
        user: String,
        /// The sending shard.
        from: ShardId,
    },
}

/// A user appeared in a room (`joined`) or disappeared from it, on the room's owner shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChange {
    /// Room.
    pub room: String,
    /// User id.
    pub user: String,
    /// True when the user appeared, false when its last socket left.
    pub joined: bool,
    /// When it appeared: the `since_ms` of the [`PresenceMsg::RoomUp`] that made it appear (0 when it left).
    pub since_ms: u64,
}

/// A user came online (first authenticated socket on any shard) or went offline (its last socket gone), on the user's
/// home shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserChange {
    /// User id.
    pub user: String,
    /// The companies of the user's token when it came online (the `companies` claim).
    pub companies: Vec<String>,
    /// True when the user came online, false when its last socket went.
    pub online: bool,
    /// When it came online: the `since_ms` of the [`PresenceMsg::UserUp`] that made it (0 when it went offline).
    pub since_ms: u64,
}

/// What a presence message changed, on the one shard that sees the change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A room's users changed (on the room's owner shard).
    Room(RoomChange),
    /// A user came online or went offline (on the user's home shard).
    User(UserChange),
}

/// Most companies of one user carried with its presence (the rest of a longer `companies` claim is left out).
pub const COMPANIES_PER_USER_MAX: usize = 64;

/// The placeholder of a [`PresenceRoom`] template.
pub const ROOM_PLACEHOLDER: &str = "{room}";

/// Where the presence changes of a room are published: a room-name template with one `{room}` and something around
/// it (`{room}/presence`: changes of `/channels/c1` go to `/channels/c1/presence`). A presence room is an ordinary
/// room: joined with a room token for its own name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRoom {
    prefix: String,
    suffix: String,
}

/// Why a presence-room template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceRoomError {
    /// The template does not hold `{room}` exactly once.
    #[error("the presence room template must contain `{{room}}` exactly once")]
    Placeholder,
    /// The template is `{room}` alone: the presence room would be the room itself.
    #[error(
        "the presence room template must add something to `{{room}}` (it cannot be the room itself)"
    )]
    SameRoom,
}

impl PresenceRoom {
    /// Parses a template; the empty string means off (`None`).
    pub fn parse(template: &str) -> Result<Option<Self>, PresenceRoomError> {
        if template.is_empty() {
            return Ok(None);
        }
        let (prefix, suffix) = template
            .split_once(ROOM_PLACEHOLDER)
            .ok_or(PresenceRoomError::Placeholder)?;
        if suffix.contains(ROOM_PLACEHOLDER) {
            return Err(PresenceRoomError::Placeholder);
        }
        if prefix.is_empty() && suffix.is_empty() {
            return Err(PresenceRoomError::SameRoom);
        }
        Ok(Some(Self {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        }))
    }

    /// The template as configured.
    pub fn template(&self) -> String {
        format!("{}{ROOM_PLACEHOLDER}{}", self.prefix, self.suffix)
    }

    /// True when `room` has the shape of a presence room (the template around a non-empty name).
    pub fn is_presence_room(&self, room: &str) -> bool {
        room.len() > self.prefix.len() + self.suffix.len()
            && room.starts_with(&self.prefix)
            && room.ends_with(&self.suffix)
    }

    /// The presence room of `room`; `None` when `room` is itself a presence room (its watchers are not announced, so
    /// presence rooms never chain).
    pub fn of(&self, room: &str) -> Option<String> {
        (!self.is_presence_room(room)).then(|| format!("{}{room}{}", self.prefix, self.suffix))
    }
}

/// A set of shards, compact: shards below 64 (every machine this runs on) are bits of one word, held inline; a set
/// of those takes no allocation, where a `BTreeSet` took a node of ~100 bytes for its first member. Higher shard
/// numbers go to a `BTreeSet`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ShardSet {
    low: u64,
    high: BTreeSet<ShardId>,
}

impl ShardSet {
    fn is_empty(&self) -> bool {
        self.low == 0 && self.high.is_empty()
    }
    fn insert(&mut self, shard: ShardId) {
        match u32::try_from(shard).ok().and_then(|b| 1u64.checked_shl(b)) {
            Some(bit) => self.low |= bit,
            None => {
                self.high.insert(shard);
            }
        }
    }
    fn remove(&mut self, shard: ShardId) {
        match u32::try_from(shard).ok().and_then(|b| 1u64.checked_shl(b)) {
            Some(bit) => self.low &= !bit,
            None => {
                self.high.remove(&shard);
            }
        }
    }
}

/// What the home shard keeps of a connected user.
#[derive(Debug, Default)]
struct HomeEntry {
    shards: ShardSet,
    companies: Vec<String>,
}

/// One shard's part of presence.
#[derive(Debug)]
pub struct Presence {
    shard: ShardId,
    shard_count: usize,
    local_users: HashMap<String, usize>,
    /// room -> user -> sockets of the user in the room on this shard: a room's name is held once, not once per user.
    local_rooms: HashMap<String, HashMap<String, usize>>,
    home: HashMap<String, HomeEntry>,
    owned: HashMap<String, HashMap<String, ShardSet>>,
}

/// Where a message goes: `(shard, message)`; the glue runs it there with [`Presence::on_message`].
pub type Outgoing = (ShardId, PresenceMsg);

impl Presence {
    /// Presence state of `shard` out of `shard_count`.
    pub fn new(shard: ShardId, shard_count: usize) -> Self {
        Self {
            shard,
            shard_count: shard_count.max(1),
            local_users: HashMap::new(),
            local_rooms: HashMap::new(),
            home: HashMap::new(),
            owned: HashMap::new(),
        }
    }

    /// A socket of `user` (whose token names `companies`) authenticated on this shard at `since_ms`.
    pub fn user_socket_up(
        &mut self,
        user: &str,
        companies: &[String],
        since_ms: u64,
    ) -> Option<Outgoing> {
        let n = self.local_users.entry(user.to_owned()).or_insert(0);
        *n += 1;
        (*n == 1).then(|| {
            let companies = companies.iter().take(COMPANIES_PER_USER_MAX).cloned();
            (
                home_shard(user, self.shard_count),
                PresenceMsg::UserUp {
                    user: user.to_owned(),
                    companies: companies.collect(),
                    since_ms,
                    from: self.shard,
                },
            )
        })
    }

    /// An authenticated socket of `user` on this shard went.
    pub fn user_socket_down(&mut self, user: &str) -> Option<Outgoing> {
        let n = self.local_users.get_mut(user)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.local_users.remove(user);
        Some((
            home_shard(user, self.shard_count),
            PresenceMsg::UserDown {
                user: user.to_owned(),
                from: self.shard,
            },
        ))
    }

    /// A socket of `user` on this shard joined `room` at `since_ms`.
    pub fn joined(&mut self, room: &str, user: &str, since_ms: u64) -> Option<Outgoing> {
        // Look up before inserting: a join to a room and by a user already counted copies no string.
        if !self.local_rooms.contains_key(room) {
            self.local_rooms.insert(room.to_owned(), HashMap::new());
        }
        let users = self.local_rooms.get_mut(room)?;
        if !users.contains_key(user) {
            users.insert(user.to_owned(), 0);
        }
        let n = users.get_mut(user)?;
        *n += 1;
        (*n == 1).then(|| {
            (
                owner_shard(room, self.shard_count),
                PresenceMsg::RoomUp {
                    room: room.to_owned(),
                    user: user.to_owned(),
                    since_ms,
                    from: self.shard,
                },
            )
        })
    }

    /// A socket of `user` on this shard left `room` (or went).
    pub fn left(&mut self, room: &str, user: &str) -> Option<Outgoing> {
        let users = self.local_rooms.get_mut(room)?;
        let n = users.get_mut(user)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        users.remove(user);
        if users.is_empty() {
            self.local_rooms.remove(room);
        }
        Some((
            owner_shard(room, self.shard_count),
            PresenceMsg::RoomDown {
                room: room.to_owned(),
                user: user.to_owned(),
                from: self.shard,
            },
        ))
    }

    /// A message from another shard (or this one). Returns the change it made, if any.
    pub fn on_message(&mut self, msg: PresenceMsg) -> Option<Change> {
        match msg {
            PresenceMsg::UserUp {
                user,
                companies,
                since_ms,
                from,
            } => {
                let entry = self.home.entry(user.clone()).or_default();
                let new = entry.shards.is_empty();
                entry.shards.insert(from);
                if new {
                    entry.companies = companies.clone();
                    return Some(Change::User(UserChange {
                        user,
                        companies,
                        online: true,
                        since_ms,
                    }));
                }
            }
            PresenceMsg::UserDown { user, from } => {
                if let Some(entry) = self.home.get_mut(&user) {
                    entry.shards.remove(from);
                    if entry.shards.is_empty() {
                        let companies = std::mem::take(&mut entry.companies);
                        self.home.remove(&user);
                        return Some(Change::User(UserChange {
                            user,
                            companies,
                            online: false,
                            since_ms: 0,
                        }));
                    }
                }
            }
            PresenceMsg::RoomUp {
                room,
                user,
                since_ms,
                from,
            } => {
                let set = self
                    .owned
                    .entry(room.clone())
                    .or_default()
                    .entry(user.clone())
                    .or_default();
                let new = set.is_empty();
                set.insert(from);
                if new {
                    return Some(Change::Room(RoomChange {
                        room,
                        user,
                        joined: true,
                        since_ms,
                    }));
                }
            }
            PresenceMsg::RoomDown { room, user, from } => {
                let mut gone = false;
                if let Some(users) = self.owned.get_mut(&room) {
                    if let Some(set) = users.get_mut(&user) {
                        set.remove(from);
                        if set.is_empty() {
                            users.remove(&user);
                            gone = true;
                        }
                    }
                    if users.is_empty() {
                        self.owned.remove(&room);
                    }
                }
                if gone {
                    return Some(Change::Room(RoomChange {
                        room,
                        user,
                        joined: false,
                        since_ms: 0,
                    }));
                }
            }
        }
        None
    }

    /// The users connected in `room`, sorted, each once; right only on the room's owner shard.
    pub fn online_users(&self, room: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .owned
            .get(room)
            .map(|u| u.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users
    }

    /// Whether `user` has an authenticated socket on some shard; right only on the user's home shard.
    pub fn is_online(&self, user: &str) -> bool {
        self.home.contains_key(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two shards' presence, with messages delivered at once.
    fn run(shards: &mut [Presence], out: Option<Outgoing>) -> Option<Change> {
        let (to, msg) = out?;
        shards[to].on_message(msg)
    }

    fn room_change(c: Option<Change>) -> Option<RoomChange> {
        match c? {
            Change::Room(r) => Some(r),
            Change::User(_) => None,
        }
    }

    fn user_change(c: Option<Change>) -> Option<(bool, Vec<String>)> {
        match c? {
            Change::User(u) => Some((u.online, u.companies)),
            Change::Room(_) => None,
        }
    }

    #[test]
    fn shard_sets_hold_low_and_high_shards() {
        let mut set = ShardSet::default();
        assert!(set.is_empty());
        for shard in [0, 63, 64, 200] {
            set.insert(shard);
            assert!(!set.is_empty());
        }
        for shard in [0, 63, 64] {
            set.remove(shard);
            assert!(!set.is_empty(), "{shard}");
        }
        set.remove(200);
        assert!(set.is_empty());
        set.insert(5);
        set.remove(6);
        assert!(!set.is_empty());
    }

    #[test]
    fn a_user_on_two_shards_counts_once_until_the_last_socket_goes() {
        let mut s = [Presence::new(0, 2), Presence::new(1, 2)];
        let owner = owner_shard("/r", 2);
        let home = home_shard("u1", 2);
        let acme = vec!["acme".to_string()];
        let mut came_online = Vec::new();
        for shard in [0, 1, 1] {
            let o = s[shard].user_socket_up("u1", &acme, 0);
            came_online.extend(user_change(run(&mut s, o)));
            let o = s[shard].joined("/r", "u1", 0);
            run(&mut s, o);
        }
        assert_eq!(came_online, [(true, acme.clone())], "online once");
        let o = s[0].joined("/r", "u2", 7);
        assert_eq!(
            room_change(run(&mut s, o)),
            Some(RoomChange {
                room: "/r".into(),
                user: "u2".into(),
                joined: true,
                since_ms: 7
            })
        );
        assert_eq!(s[owner].online_users("/r"), ["u1", "u2"]);
        assert!(s[home].is_online("u1"));
        // u1 leaves on shard 0 and one of its two sockets on shard 1 goes: still there.
        let o = s[0].left("/r", "u1");
        run(&mut s, o);
        let o = s[1].left("/r", "u1");
        run(&mut s, o);
        let o = s[1].user_socket_down("u1");
        assert_eq!(run(&mut s, o), None);
        assert_eq!(s[owner].online_users("/r"), ["u1", "u2"]);
        // The last socket in the room leaves: gone from the room, still online on shard 0.
        let o = s[1].left("/r", "u1");
        assert_eq!(room_change(run(&mut s, o)).map(|c| c.joined), Some(false));
        assert_eq!(s[owner].online_users("/r"), ["u2"]);
        assert!(s[home].is_online("u1"));
        let mut went = Vec::new();
        for shard in [0, 1] {
            let o = s[shard].user_socket_down("u1");
            went.extend(user_change(run(&mut s, o)));
        }
        assert_eq!(went, [(false, acme)], "offline once, with its companies");
        assert!(!s[home].is_online("u1"));
        // Unbalanced downs change nothing.
        assert_eq!(s[0].user_socket_down("nobody"), None);
        assert_eq!(s[0].left("/r", "nobody"), None);
        let o = s[0].left("/r", "u2");
        run(&mut s, o);
        assert!(s[owner].online_users("/r").is_empty());
        assert!(s[owner].owned.is_empty() && s[home].home.is_empty());
    }
}

#[cfg(test)]
mod room_template_tests {
    use super::*;

    #[test]
    fn presence_room_templates() {
        assert_eq!(PresenceRoom::parse(""), Ok(None));
        assert_eq!(
            PresenceRoom::parse("/presence"),
            Err(PresenceRoomError::Placeholder)
        );
        assert_eq!(
            PresenceRoom::parse("{room}{room}"),
            Err(PresenceRoomError::Placeholder)
        );
        assert_eq!(
            PresenceRoom::parse("{room}"),
            Err(PresenceRoomError::SameRoom)
        );
        let t = PresenceRoom::parse("{room}/presence").unwrap().unwrap();
        assert_eq!(t.template(), "{room}/presence");
        assert_eq!(
            t.of("/channels/c1").as_deref(),
            Some("/channels/c1/presence")
        );
        // A presence room's own watchers are not announced anywhere: no chain of presence rooms.
        assert!(t.is_presence_room("/channels/c1/presence"));
        assert_eq!(t.of("/channels/c1/presence"), None);
        assert!(!t.is_presence_room("/presence"));
        let t = PresenceRoom::parse("/presence{room}").unwrap().unwrap();
        assert_eq!(t.of("/c").as_deref(), Some("/presence/c"));
    }
}
