//! The runtime glue between the server and the realtime logic: the Socket.IO handlers of the wire contract, the
//! per-shard room state, and [`ShardBus`], the event bus whose listener delivers `realtime:resource` to sockets.
//!
//! Everything here runs on one shard and holds `!Sync` state ([`LiveShard`], reached with
//! [`ShardCtx::state`]); shards talk only through [`ShardCtx::send_to`] closures that carry a
//! [`rooms::ShardMessage`].
//!
//! # Wiring (what `shardcast serve` does on every shard)
//!
//! ```no_run
//! use std::rc::Rc;
//! use std::sync::Arc;
//! use shardcast::realtime::auth::{AccessVerifier, AuthConfig, RoomTokens, Secret};
//! use shardcast::realtime::live;
//! use shardcast::realtime::protocol::{SessionConfig, SessionContext};
//! use shardcast::server::{AppFactory, ShardApp, SocketIo};
//!
//! let app: AppFactory = Arc::new(|shard| {
//!     let session = SessionContext {
//!         access: AccessVerifier::new(&AuthConfig::hs256("a-long-random-access-token-secret")).unwrap(),
//!         rooms: RoomTokens::new(&Secret::from("a-long-random-room-token-secret!"), 3600, 5).unwrap(),
//!         config: SessionConfig::default(),
//!     };
//!     let mut io = SocketIo::new();
//!     let bus: live::ShardBus = live::install(shard, &mut io, session);
//!     // ... build the CRUD services with `Realtime::new(service, bus.clone(), recipients)` and a router ...
//!     ShardApp { socketio: Some(io), router: None }
//! });
//! ```
//!
//! # The path of one event
//! 1. A service wrapped in [`super::crud::Realtime`] succeeds and calls [`ShardBus`]`::publish` on the shard that
//!    ran it. The bus serialises the event's arguments once (`["realtime:resource",{...}]`,
//!    [`ResourceEvent::encode_args`]) into a shared `Arc<str>` and asks [`ShardRooms::publish`] for routes: a local
//!    fan-out if this shard owns the room, else one [`rooms::ShardMessage::Publish`] to the owner.
//! 2. The owner looks the room up in its [`rooms::OwnerRegistry`] and sends one [`rooms::ShardMessage::Deliver`] to
//!    each shard that holds members (and delivers locally if it holds some itself). Shards without members get
//!    nothing.
//! 3. Each member shard frames the payload **once** into an [`EncodedMessage`] (the Engine.IO/Socket.IO text frame
//!    `42["realtime:resource",{...}]`) and queues that same frame for every confirmed local member
//!    ([`ShardCtx::broadcast`]); sockets of both protocol revisions share it.
//!
//! # Invariants
//! - A socket is a delivery target (in the shard's [`crate::server::RoomRegistry`]) exactly from the moment it is
//!   sent `realtime:join:success` until it leaves or disconnects; `realtime:join:success` is sent only once the
//!   room's owner has registered the socket's shard, so every event published after a client saw it reaches it.
//! - Data messages (`Publish`, `Deliver`) are never waited for: an event that finds a full cross-shard queue waits in
//!   a per-peer FIFO data backlog (bounded by [`DATA_BACKLOG_LEN_MAX`]) that the retry timer flushes in order; only
//!   when that is full too is the event dropped, logged and counted (`shardcast_mesh_full_total` counts every full
//!   queue, [`LiveStats::events_dropped`] the drops). Control messages (`MemberJoined`,
//!   `MemberLeft`, `JoinConfirmed`, `Evict`) must not be lost, so they wait in a per-peer FIFO backlog (bounded by
//!   [`CONTROL_BACKLOG_LEN_MAX`]) that a timer retries in order; the shard itself never blocks.
//! - **Membership has its own lane and cannot crowd events out.** At most [`control_in_flight_max`] (a quarter of
//!   `mesh_queue_len`) control messages from one shard wait in the queue to a peer at any time; more wait in the
//!   backlog. So join/leave churn leaves three quarters of every cross-shard queue to events. A socket whose joins
//!   would need a backlog longer than [`JOIN_BACKLOG_LEN_MAX`] is refused (`realtime:join:error`, "server busy")
//!   instead: back-pressure lands on the churning socket, not on other clients' events.
//! - **Per-socket join/leave rate:** [`SessionConfig::join_leave_per_s_max`](super::protocol::SessionConfig) joins
//!   plus leaves per second; over it the socket gets `realtime:join:error` / `realtime:leave:error` and nothing
//!   crosses shards.
//! - A join immediately followed by a leave still gets its `realtime:join:success` (then `realtime:leave:success`).
//! - Deleting a channel evicts every member of its messages room on every shard ([`ShardBus::evict_room`]); each gets
//!   `realtime:leave:success` for it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proto::{EncodedMessage, RawJson};
use crate::server::{Event, MeshError, ShardCtx, Socket, SocketIo, TimerHandle};

use super::bus::{BusError, EventBus, ResourceEvent, RoomEvent};
use super::events::{self, SocketEvent, SocketHandlers, SocketUser};
use super::presence::{Change, Outgoing, Presence, PresenceMsg, home_shard};
use super::protocol::{self, Action, ServerEvent, Session, SessionContext};
use super::rooms::{self, Route, ShardRooms, SharedPayload};

/// The namespace the wire contract lives on.
pub const NAMESPACE: &str = "/";
/// Most control messages (`MemberJoined`, `MemberLeft`, `JoinConfirmed`) that may wait for room on the queue to one
/// peer shard. Beyond it they are dropped and logged (the peer has stopped draining its queue).
pub const CONTROL_BACKLOG_LEN_MAX: usize = 65_536;
/// Delay between two attempts to flush a control backlog.
pub const CONTROL_RETRY_MS: u64 = 5;
/// Most data messages (`Publish`, `Deliver`) that may wait for room on the queue to one peer shard when it is full.
/// Beyond it an event is dropped for that shard, logged and counted; the shard never waits.
pub const DATA_BACKLOG_LEN_MAX: usize = 16_384;
/// Longest control backlog to a peer at which joins are still accepted; beyond it a join that would add to it gets
/// `realtime:join:error {error: "server busy, retry later"}`.
pub const JOIN_BACKLOG_LEN_MAX: usize = 4096;
/// Error text of a join refused by [`JOIN_BACKLOG_LEN_MAX`].
pub const SERVER_BUSY: &str = "server busy, retry later";
/// Clustered: most presence changes one shard keeps waiting behind the question in flight for the same user and
/// room (a question takes at most `cluster.request_timeout_ms`); beyond it a change is dropped and logged.
pub const PRESENCE_CHANGES_WAITING_MAX: usize = 65_536;

/// What one presence question is about: `(Some(room), user)` for a room's users, `(None, user)` for online.
type PresenceKey = (Option<String>, String);

/// Most control messages one shard keeps in flight in its queue to one peer: a quarter of `mesh_queue_len` (at
/// least 1), so membership churn never fills a queue that events need.
pub fn control_in_flight_max(mesh_queue_len: usize) -> usize {
    (mesh_queue_len / 4).max(1)
}

/// Key of a socket in this shard's [`ShardRooms`].
type SocketKey = u64;

/// Counters of one shard's realtime layer (read them with [`LiveShard::stats`]).
#[derive(Debug, Default)]
pub struct LiveStats {
    /// Events handed to this shard's [`ShardBus`].
    pub events_published: Cell<u64>,
    /// `Deliver`s and local fan-outs that framed an event on this shard (one encoding each).
    pub frames_encoded: Cell<u64>,
    /// Frames queued to sockets on this shard (one per member per event).
    pub frames_queued: Cell<u64>,
    /// Events dropped because a cross-shard queue and its data backlog were full.
    pub events_dropped: Cell<u64>,
    /// Events that waited in a data backlog because a cross-shard queue was full.
    pub events_deferred: Cell<u64>,
    /// Control messages that had to wait in the backlog.
    pub control_deferred: Cell<u64>,
    /// Joins and leaves refused by the per-socket rate bound.
    pub join_leave_refused: Cell<u64>,
    /// Joins refused because the control backlog to the room's owner was over [`JOIN_BACKLOG_LEN_MAX`].
    pub joins_busy: Cell<u64>,
    /// Sockets removed from rooms by [`ShardBus::evict_room`].
    pub sockets_evicted: Cell<u64>,
    /// Client `realtime:event`s relayed to their room.
    pub client_events_relayed: Cell<u64>,
    /// Client `realtime:event`s refused by the per-socket rate bound.
    pub client_events_refused: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// One shard's realtime state: its part of the partitioned rooms, its joined sockets, the verifiers.
pub struct LiveShard {
    session: Rc<SessionContext>,
    rooms: RefCell<ShardRooms<SocketKey>>,
    sockets: RefCell<HashMap<SocketKey, Socket>>,
    next_key: Cell<SocketKey>,
    backlog: RefCell<Vec<VecDeque<rooms::ShardMessage>>>,
    /// Per peer: events waiting for room on a full queue, in order.
    data_backlog: RefCell<Vec<VecDeque<rooms::ShardMessage>>>,
    /// Per peer: control messages sent and not yet run there (decremented by the peer).
    control_in_flight: Vec<Arc<AtomicUsize>>,
    control_in_flight_max: usize,
    retry_armed: Cell<bool>,
    stats: LiveStats,
    handlers: Rc<RefCell<SocketHandlers>>,
    presence: RefCell<Presence>,
    /// Per peer: presence messages waiting for room on the queue, in order.
    presence_backlog: RefCell<Vec<VecDeque<PresenceMsg>>>,
    presence_retry_armed: Cell<bool>,
    /// Clustered: per user and room (or user, for online), the changes waiting behind the question in flight.
    presence_deciding: RefCell<HashMap<PresenceKey, VecDeque<Change>>>,
    /// Changes waiting in `presence_deciding` (at most [`PRESENCE_CHANGES_WAITING_MAX`]).
    presence_waiting: Cell<usize>,
}

impl std::fmt::Debug for LiveShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveShard")
            .field("shard", &self.rooms.borrow().shard())
            .field("joined_sockets", &self.sockets.borrow().len())
            .finish_non_exhaustive()
    }
}

impl LiveShard {
    /// This shard's counters.
    pub fn stats(&self) -> &LiveStats {
        &self.stats
    }

    /// Number of rooms with members on this shard.
    pub fn local_room_count(&self) -> usize {
        self.rooms.borrow().local().room_count()
    }

    /// Number of rooms this shard owns that have members somewhere.
    pub fn owned_room_count(&self) -> usize {
        self.rooms.borrow().owned().room_count()
    }

    /// The shards holding members of `room`, if this shard owns it (empty otherwise).
    pub fn member_shards(&self, room: &str) -> Vec<usize> {
        self.rooms.borrow().owned().member_shards(room).collect()
    }
}

/// Per-socket state, attached with [`Socket::insert_data`].
struct LiveSocket {
    key: SocketKey,
    session: RefCell<Session>,
    auth_timer: RefCell<Option<TimerHandle>>,
    /// Rooms joined but not yet confirmed by their owner: their `realtime:join:success` waits.
    pending_joins: RefCell<Vec<Rc<str>>>,
    /// Join/leave token bucket: tokens left and when it was last refilled.
    join_leave_tokens: Cell<f64>,
    join_leave_refill: Cell<Instant>,
    /// `realtime:event` token bucket: tokens left and when it was last refilled.
    event_tokens: Cell<f64>,
    event_refill: Cell<Instant>,
    /// Handler calls of this socket still running ([`events::HANDLERS_IN_FLIGHT_PER_SOCKET_MAX`]); a running call
    /// counts itself out through a weak reference to this state (no allocation of its own per socket).
    handlers_in_flight: Cell<usize>,
}

/// Takes one token from the bucket `(tokens, refilled)` holding `per_s` per second; false when it is empty.
fn take_token(tokens: &Cell<f64>, refilled: &Cell<Instant>, per_s: u32) -> bool {
    let per_s = f64::from(per_s.max(1));
    let now = Instant::now();
    let elapsed = now.duration_since(refilled.replace(now)).as_secs_f64();
    let left = (tokens.get() + elapsed * per_s).min(per_s);
    if left >= 1.0 {
        tokens.set(left - 1.0);
        true
    } else {
        tokens.set(left);
        false
    }
}

impl LiveSocket {
    /// Takes one `realtime:event` token; false when the socket is over `per_s` per second.
    fn take_event(&self, per_s: u32) -> bool {
        take_token(&self.event_tokens, &self.event_refill, per_s)
    }

    /// Takes one join/leave token; false when the socket is over `per_s` per second.
    fn take_join_leave(&self, per_s: u32) -> bool {
        let per_s = f64::from(per_s.max(1));
        let now = Instant::now();
        let elapsed = now
            .duration_since(self.join_leave_refill.replace(now))
            .as_secs_f64();
        let tokens = (self.join_leave_tokens.get() + elapsed * per_s).min(per_s);
        if tokens >= 1.0 {
            self.join_leave_tokens.set(tokens - 1.0);
            true
        } else {
            self.join_leave_tokens.set(tokens);
            false
        }
    }
}

/// Sets up the realtime layer on `shard`: stores its [`LiveShard`] state and registers the wire contract's handlers
/// on the main namespace of `io`. Returns the shard's [`ShardBus`] for the CRUD services built on this shard.
pub fn install(shard: &Rc<ShardCtx>, io: &mut SocketIo, session: SessionContext) -> ShardBus {
    let live = shard.set_state(LiveShard {
        session: Rc::new(session),
        rooms: RefCell::new(ShardRooms::new(shard.id(), shard.nr_shards())),
        sockets: RefCell::new(HashMap::new()),
        next_key: Cell::new(0),
        backlog: RefCell::new((0..shard.nr_shards()).map(|_| VecDeque::new()).collect()),
        data_backlog: RefCell::new((0..shard.nr_shards()).map(|_| VecDeque::new()).collect()),
        control_in_flight: (0..shard.nr_shards())
            .map(|_| Arc::new(AtomicUsize::new(0)))
            .collect(),
        control_in_flight_max: control_in_flight_max(shard.config().mesh_queue_len),
        retry_armed: Cell::new(false),
        stats: LiveStats::default(),
        handlers: events::install_handlers(shard),
        presence: RefCell::new(Presence::new(shard.id(), shard.nr_shards())),
        presence_backlog: RefCell::new((0..shard.nr_shards()).map(|_| VecDeque::new()).collect()),
        presence_retry_armed: Cell::new(false),
        presence_deciding: RefCell::new(HashMap::new()),
        presence_waiting: Cell::new(0),
    });
    let weak_live = Rc::downgrade(&live);
    let ns = io.namespace(NAMESPACE);
    {
        let weak_live = weak_live.clone();
        ns.on_connect(move |socket: Socket, auth: Option<RawJson>| {
            let live = weak_live.upgrade();
            async move {
                if let Some(live) = live {
                    on_connect(&live, &socket, auth);
                }
                Ok(())
            }
        });
    }
    {
        let weak_live = weak_live.clone();
        ns.on_any(move |socket, mut event| {
            let Some(live) = weak_live.upgrade() else {
                return;
            };
            let args: Vec<Value> = event.args.parse().unwrap_or_default();
            let Some(state) = socket.data::<LiveSocket>() else {
                return;
            };
            let refusal = refuse_join_leave(&live, socket, &state, &event.name, &args)
                .or_else(|| refuse_event(&live, socket, &state, &event.name, &args));
            if let Some(refusal) = refusal {
                emit(socket, &refusal);
                return;
            }
            if dispatch_to_handler(&live, socket, &state, &mut event, &args) {
                return;
            }
            let was_authenticated = state.session.borrow().user().is_some();
            let actions = state
                .session
                .borrow_mut()
                .on_event(&live.session, &event.name, &args);
            execute_for_event(&live, socket, &state, actions, &mut event);
            if !was_authenticated {
                run_connected_hooks(&live, socket, &state);
            }
        });
    }
    ns.on_disconnect(move |socket, _reason| {
        crate::cluster::node::socket_disconnected(socket);
        let Some(live) = weak_live.upgrade() else {
            return;
        };
        let Some(state) = socket.data::<LiveSocket>() else {
            return;
        };
        if let Some(t) = state.auth_timer.borrow_mut().take() {
            t.cancel();
        }
        let user = state.session.borrow().user().cloned();
        if let Some(user) = &user {
            let rooms = state.session.borrow().rooms().to_vec();
            for room in rooms {
                let out = live.presence.borrow_mut().left(&room, &user.id);
                send_presence(&live, socket.shard(), out);
            }
            let out = live.presence.borrow_mut().user_socket_down(&user.id);
            send_presence(&live, socket.shard(), out);
        }
        if let Some(user) = user {
            let u = SocketUser {
                user,
                socket_id: socket.id().to_owned(),
            };
            let hooks = live.handlers.borrow().disconnected(&u);
            hooks.into_iter().for_each(events::spawn);
        }
        // Keep the protocol session's view consistent, then leave every room in one pass.
        let _ = state.session.borrow_mut().on_disconnect();
        state.pending_joins.borrow_mut().clear();
        live.sockets.borrow_mut().remove(&state.key);
        let routes = live.rooms.borrow_mut().leave_all(state.key);
        run_routes(&live, socket.shard(), routes);
    });
    ShardBus {
        shard: Rc::downgrade(shard),
    }
}

/// The auth payload as the protocol session reads it: Socket.IO v5 sends `{token}`; a Socket.IO v4 (socket.io-client
/// 2.x era) CONNECT can only carry a query string, which the server hands over as `{"query": "token=...&..."}`.
/// socket.io-client 2.x itself sends no CONNECT for the main namespace, so its users authenticate with the
/// `authenticate` event.
fn auth_value(auth: Option<RawJson>) -> Option<Value> {
    let value: Value = auth?.parse().ok()?;
    if value.get("token").is_some() {
        return Some(value);
    }
    let query = value.get("query")?.as_str()?;
    let token = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    Some(serde_json::json!({ "token": token }))
}

fn on_connect(live: &Rc<LiveShard>, socket: &Socket, auth: Option<RawJson>) {
    crate::cluster::node::socket_connected(socket);
    let key = live.next_key.get();
    live.next_key.set(key.wrapping_add(1));
    let state = socket.insert_data(LiveSocket {
        key,
        session: RefCell::new(Session::new()),
        auth_timer: RefCell::new(None),
        pending_joins: RefCell::new(Vec::new()),
        join_leave_tokens: Cell::new(f64::from(live.session.config.join_leave_per_s_max.max(1))),
        join_leave_refill: Cell::new(Instant::now()),
        event_tokens: Cell::new(f64::from(live.session.config.event_per_s_max.max(1))),
        event_refill: Cell::new(Instant::now()),
        handlers_in_flight: Cell::new(0),
    });
    let auth = auth_value(auth);
    let actions = state
        .session
        .borrow_mut()
        .on_connect(&live.session, auth.as_ref());
    execute(live, socket, &state, actions, true);
    run_connected_hooks(live, socket, &state);
}

/// Runs the `on_connected` hooks if the socket is authenticated now (call it only where it may just have become so).
fn run_connected_hooks(live: &Rc<LiveShard>, socket: &Socket, state: &LiveSocket) {
    let user = state.session.borrow().user().cloned();
    let Some(user) = user else { return };
    let since = crate::cluster::node::socket_authenticated(socket, &user.id);
    let out = live
        .presence
        .borrow_mut()
        .user_socket_up(&user.id, &user.companies, since);
    send_presence(live, socket.shard(), out);
    let u = SocketUser {
        user,
        socket_id: socket.id().to_owned(),
    };
    let hooks = live.handlers.borrow().connected(&u);
    hooks.into_iter().for_each(events::spawn);
}

/// Hands an authenticated socket's event to the service handler registered for its name, if any (never a contract
/// event). True if a handler took it (or it was refused for too many calls in flight).
fn dispatch_to_handler(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &Rc<LiveSocket>,
    event: &mut Event,
    args: &[Value],
) -> bool {
    if events::is_contract_event(&event.name) || !live.handlers.borrow().handles(&event.name) {
        return false;
    }
    let user = state.session.borrow().user().cloned();
    // before authentication the session refuses it, as for any event
    let Some(user) = user else { return false };
    let in_flight = &state.handlers_in_flight;
    if in_flight.get() >= events::HANDLERS_IN_FLIGHT_PER_SOCKET_MAX {
        tracing::debug!(
            socket = socket.id(),
            event = event.name,
            "socket event refused: too many in flight"
        );
        if let Some(ack) = event.ack.take() {
            events::SocketAck::new(ack).send(&events::too_many_in_flight());
        }
        return true;
    }
    let e = SocketEvent {
        user,
        socket_id: socket.id().to_owned(),
        args: args.to_vec(),
        ack: event.ack.take().map(events::SocketAck::new),
    };
    let fut = live.handlers.borrow().call(&event.name, e);
    if let Some(fut) = fut {
        in_flight.set(in_flight.get() + 1);
        let state = Rc::downgrade(state);
        events::spawn(Box::pin(async move {
            fut.await;
            // a socket gone meanwhile took its count with it
            if let Some(state) = state.upgrade() {
                let n = &state.handlers_in_flight;
                n.set(n.get().saturating_sub(1));
            }
        }));
    }
    true
}

/// The error a join or leave gets before the session sees it: over the socket's join/leave rate, or (joins) the
/// control backlog to the room's owner is too long. `None`: let the session decide.
fn refuse_join_leave(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &LiveSocket,
    event: &str,
    args: &[Value],
) -> Option<ServerEvent> {
    let is_join = event == protocol::JOIN;
    if !is_join && event != protocol::LEAVE {
        return None;
    }
    // before authentication the session answers joins and leaves itself
    state.session.borrow().user()?;
    let name = || {
        let max = live.session.config.room_name_bytes_max;
        args.first()
            .and_then(|a| a.get("name"))
            .and_then(Value::as_str)
            .filter(|n| n.len() <= max)
            .unwrap_or_default()
            .to_owned()
    };
    let refusal = |name: String, error: String| {
        if is_join {
            ServerEvent::JoinError { name, error }
        } else {
            ServerEvent::LeaveError { name, error }
        }
    };
    let per_s = live.session.config.join_leave_per_s_max;
    if !state.take_join_leave(per_s) {
        bump(&live.stats.join_leave_refused, 1);
        tracing::debug!(
            socket = socket.id(),
            limit = per_s,
            "join/leave over the per-socket rate"
        );
        return Some(refusal(
            name(),
            format!("too many joins and leaves (limit {per_s} per second)"),
        ));
    }
    if is_join {
        let room = name();
        let owner = live.rooms.borrow().owner_of(&room);
        let backlog = live.backlog.borrow().get(owner).map_or(0, VecDeque::len);
        if backlog >= JOIN_BACKLOG_LEN_MAX
            && !state.session.borrow().rooms().iter().any(|r| **r == *room)
        {
            bump(&live.stats.joins_busy, 1);
            return Some(refusal(room, SERVER_BUSY.into()));
        }
    }
    None
}

/// The error a `realtime:event` of an authenticated socket gets before the session sees it: over the socket's event
/// rate. `None`: let the session decide.
fn refuse_event(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &LiveSocket,
    event: &str,
    args: &[Value],
) -> Option<ServerEvent> {
    if event != protocol::EVENT {
        return None;
    }
    state.session.borrow().user()?;
    let per_s = live.session.config.event_per_s_max;
    if state.take_event(per_s) {
        return None;
    }
    bump(&live.stats.client_events_refused, 1);
    tracing::debug!(
        socket = socket.id(),
        limit = per_s,
        "realtime:event over the per-socket rate"
    );
    let max = live.session.config.room_name_bytes_max;
    let name = args
        .first()
        .and_then(|a| a.get("name"))
        .and_then(Value::as_str)
        .filter(|n| n.len() <= max)
        .unwrap_or_default()
        .to_owned();
    Some(ServerEvent::EventError {
        name,
        error: format!("too many events (limit {per_s} per second)"),
    })
}

/// Performs the actions a client event led to; [`Action::AckWithArguments`] answers that event's ack.
fn execute_for_event(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &Rc<LiveSocket>,
    mut actions: Vec<Action>,
    event: &mut Event,
) {
    actions.retain(|action| {
        if *action != Action::AckWithArguments {
            return true;
        }
        if let Some(ack) = event.ack.take() {
            ack.send(event.args.clone());
        }
        false
    });
    execute(live, socket, state, actions, false);
}

/// Performs a protocol session's actions in order. `connecting`: the socket's CONNECT is still being decided, so a
/// disconnect must wait until the CONNECT reply (and the emits queued before it) are out.
fn execute(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &Rc<LiveSocket>,
    actions: Vec<Action>,
    connecting: bool,
) {
    for action in actions {
        match action {
            Action::Emit(ServerEvent::JoinSuccess { name })
                if state.pending_joins.borrow().iter().any(|r| **r == *name) =>
            {
                // Sent when the owner confirms the join (Route::JoinConfirmed).
            }
            Action::Emit(event) => emit(socket, &event),
            Action::JoinRoom(room) => {
                presence_of_room(live, socket, state, &room, true);
                join(live, socket, state, room)
            }
            Action::LeaveRoom(room) => {
                let was_pending = {
                    let mut p = state.pending_joins.borrow_mut();
                    let before = p.len();
                    p.retain(|r| *r != room);
                    p.len() != before
                };
                if was_pending {
                    // The client asked to join, then to leave: it gets both answers, in order.
                    emit(
                        socket,
                        &ServerEvent::JoinSuccess {
                            name: room.to_string(),
                        },
                    );
                }
                socket.leave(&room);
                presence_of_room(live, socket, state, &room, false);
                let routes = live.rooms.borrow_mut().leave(state.key, &room);
                run_routes(live, socket.shard(), routes);
            }
            Action::ScheduleAuthTimeout { after_ms } => {
                let weak_live = Rc::downgrade(live);
                let timer = socket.schedule(Duration::from_millis(after_ms), move |socket| {
                    let (Some(live), Some(state)) =
                        (weak_live.upgrade(), socket.data::<LiveSocket>())
                    else {
                        return;
                    };
                    let actions = state.session.borrow_mut().on_auth_timeout();
                    execute(&live, socket, &state, actions, false);
                });
                if let Some(old) = state.auth_timer.borrow_mut().replace(timer) {
                    old.cancel();
                }
            }
            Action::CancelAuthTimeout => {
                if let Some(t) = state.auth_timer.borrow_mut().take() {
                    t.cancel();
                }
            }
            Action::PublishEvent { room, args } => {
                bump(&live.stats.client_events_relayed, 1);
                let shard = socket.shard();
                if publish_payload(live, shard, &room, Arc::from(args)).is_err() {
                    tracing::debug!(socket = socket.id(), room, "realtime:event dropped");
                }
            }
            Action::AckWithArguments => {
                // Only a client event has an ack to answer: see execute_for_event.
                tracing::debug!(socket = socket.id(), "no event to acknowledge");
            }
            Action::Disconnect => {
                if connecting {
                    // After the CONNECT reply and the emits queued before it: the next timer tick.
                    socket.schedule(Duration::ZERO, Socket::disconnect);
                } else {
                    socket.disconnect();
                }
                return;
            }
        }
    }
}

fn emit(socket: &Socket, event: &ServerEvent) {
    let msg = match event.payload() {
        Some(payload) => EncodedMessage::event(socket.namespace(), event.name(), &payload),
        None => Ok(EncodedMessage::event_raw(
            socket.namespace(),
            event.name(),
            &RawJson::empty_array(),
        )),
    };
    match msg {
        Ok(m) => {
            socket.send_packet(&m);
        }
        Err(e) => tracing::error!(event = event.name(), error = %e, "event does not serialize"),
    }
}

fn join(live: &Rc<LiveShard>, socket: &Socket, state: &Rc<LiveSocket>, room: Rc<str>) {
    live.sockets
        .borrow_mut()
        .entry(state.key)
        .or_insert_with(|| socket.clone());
    let outcome = live.rooms.borrow_mut().join(state.key, &room);
    if outcome.ready {
        socket.join_shared(room);
    } else {
        state.pending_joins.borrow_mut().push(room);
    }
    run_routes(live, socket.shard(), outcome.routes);
}

/// Performs routes from [`ShardRooms`]: sends to other shards, local deliveries, join confirmations.
fn run_routes(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, routes: Vec<Route<SocketKey>>) {
    for route in routes {
        match route {
            Route::Send { to, msg } => {
                send(live, shard, to, msg);
            }
            Route::DeliverLocal { room, payload } => deliver_local(live, shard, &room, &payload),
            Route::JoinConfirmed { room, sockets } => {
                for key in sockets {
                    let socket = live.sockets.borrow().get(&key).cloned();
                    let Some(socket) = socket else { continue };
                    let Some(state) = socket.data::<LiveSocket>() else {
                        continue;
                    };
                    let pending = {
                        let mut p = state.pending_joins.borrow_mut();
                        let found = p.iter().find(|r| ***r == *room).cloned();
                        p.retain(|r| **r != *room);
                        found
                    };
                    if let Some(name) = pending {
                        socket.join_shared(name);
                        emit(
                            &socket,
                            &ServerEvent::JoinSuccess {
                                name: room.to_string(),
                            },
                        );
                    }
                }
            }
            Route::Evicted { room, sockets } => {
                for key in sockets {
                    let socket = live.sockets.borrow().get(&key).cloned();
                    let Some(socket) = socket else { continue };
                    let Some(state) = socket.data::<LiveSocket>() else {
                        continue;
                    };
                    state.pending_joins.borrow_mut().retain(|r| **r != *room);
                    socket.leave(&room);
                    if state.session.borrow().rooms().iter().any(|r| **r == *room) {
                        presence_of_room(live, &socket, &state, &room, false);
                    }
                    bump(&live.stats.sockets_evicted, 1);
                    let actions = state.session.borrow_mut().on_room_closed(&room);
                    execute(live, &socket, &state, actions, false);
                }
            }
        }
    }
}

fn is_control(msg: &rooms::ShardMessage) -> bool {
    matches!(
        msg,
        rooms::ShardMessage::MemberJoined { .. }
            | rooms::ShardMessage::MemberLeft { .. }
            | rooms::ShardMessage::JoinConfirmed { .. }
            | rooms::ShardMessage::Evict { .. }
    )
}

/// Sends one room message to shard `to`. Data messages are dropped when the queue is full; control messages keep
/// their order behind any backlog to that shard. Returns false if the message was dropped.
fn send(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, to: usize, msg: rooms::ShardMessage) -> bool {
    if is_control(&msg) {
        let waiting = live.backlog.borrow().get(to).is_some_and(|q| !q.is_empty());
        if waiting || !control_lane_free(live, to) {
            return defer(live, shard, to, msg);
        }
        return match post_control(live, shard, to, msg.clone()) {
            Ok(()) => true,
            Err(MeshError::Full(_)) => defer(live, shard, to, msg),
            Err(e) => {
                tracing::error!(shard = shard.id(), to, error = %e, "room control message not sent");
                false
            }
        };
    }
    let waiting = live
        .data_backlog
        .borrow()
        .get(to)
        .is_some_and(|q| !q.is_empty());
    if waiting {
        return defer_data(live, shard, to, msg);
    }
    match post(shard, to, msg.clone()) {
        Ok(()) => true,
        Err(MeshError::Full(_)) => defer_data(live, shard, to, msg),
        Err(e) => {
            bump(&live.stats.events_dropped, 1);
            tracing::warn!(shard = shard.id(), to, error = %e, "realtime event dropped");
            false
        }
    }
}

/// Queues an event behind the others waiting for shard `to`, or drops it (counted and logged) when
/// [`DATA_BACKLOG_LEN_MAX`] are already waiting.
fn defer_data(
    live: &Rc<LiveShard>,
    shard: &Rc<ShardCtx>,
    to: usize,
    msg: rooms::ShardMessage,
) -> bool {
    let queued = push_backlog(&live.data_backlog, to, DATA_BACKLOG_LEN_MAX, msg, || {
        bump(&live.stats.events_dropped, 1);
        tracing::warn!(
            shard = shard.id(),
            to,
            limit = DATA_BACKLOG_LEN_MAX,
            "realtime event dropped: cross-shard queue full"
        );
    });
    if queued {
        bump(&live.stats.events_deferred, 1);
        arm_retry(live, shard);
    }
    queued
}

/// Appends `msg` to the queue for shard `to` in `backlog` unless that queue already holds `len_max` messages (then
/// `on_full` runs and nothing is queued); false also when there is no shard `to`.
fn push_backlog(
    backlog: &RefCell<Vec<VecDeque<rooms::ShardMessage>>>,
    to: usize,
    len_max: usize,
    msg: rooms::ShardMessage,
    on_full: impl FnOnce(),
) -> bool {
    let mut backlog = backlog.borrow_mut();
    let Some(q) = backlog.get_mut(to) else {
        return false;
    };
    if q.len() >= len_max {
        drop(backlog);
        on_full();
        return false;
    }
    q.push_back(msg);
    true
}

/// Runs, on the shard that received it, a room message another shard posted.
fn on_room_message(ctx: &Rc<ShardCtx>, msg: rooms::ShardMessage) {
    if let Some(live) = ctx.state::<LiveShard>() {
        let routes = live.rooms.borrow_mut().on_message(msg);
        run_routes(&live, ctx, routes);
    }
}

fn post(shard: &Rc<ShardCtx>, to: usize, msg: rooms::ShardMessage) -> Result<(), MeshError> {
    shard.send_to(to, move |ctx| {
        on_room_message(ctx, msg);
    })
}

/// True while fewer than [`control_in_flight_max`] control messages from this shard wait in the queue to `to`.
fn control_lane_free(live: &LiveShard, to: usize) -> bool {
    live.control_in_flight
        .get(to)
        .is_some_and(|n| n.load(Ordering::Acquire) < live.control_in_flight_max)
}

/// [`post`] of a control message, counted in the lane to `to` until the peer has run it.
fn post_control(
    live: &LiveShard,
    shard: &Rc<ShardCtx>,
    to: usize,
    msg: rooms::ShardMessage,
) -> Result<(), MeshError> {
    let Some(counter) = live.control_in_flight.get(to).cloned() else {
        return Err(MeshError::NoSuchShard(to));
    };
    counter.fetch_add(1, Ordering::AcqRel);
    let done = counter.clone();
    let r = shard.send_to(to, move |ctx| {
        done.fetch_sub(1, Ordering::AcqRel);
        on_room_message(ctx, msg);
    });
    if r.is_err() {
        counter.fetch_sub(1, Ordering::AcqRel);
    }
    r
}

fn defer(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, to: usize, msg: rooms::ShardMessage) -> bool {
    let queued = push_backlog(&live.backlog, to, CONTROL_BACKLOG_LEN_MAX, msg, || {
        tracing::error!(
            shard = shard.id(),
            to,
            limit = CONTROL_BACKLOG_LEN_MAX,
            "room control message dropped: backlog to that shard is full"
        );
    });
    if queued {
        bump(&live.stats.control_deferred, 1);
        arm_retry(live, shard);
    }
    queued
}

fn arm_retry(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>) {
    if live.retry_armed.replace(true) {
        return;
    }
    let weak_live = Rc::downgrade(live);
    let weak_shard = Rc::downgrade(shard);
    shard.schedule(Duration::from_millis(CONTROL_RETRY_MS), move || {
        let (Some(live), Some(shard)) = (weak_live.upgrade(), weak_shard.upgrade()) else {
            return;
        };
        live.retry_armed.set(false);
        flush_backlog(&live, &shard);
    });
}

fn flush_backlog(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>) {
    let peers = live.backlog.borrow().len();
    let mut left = false;
    for to in 0..peers {
        loop {
            let next = live.data_backlog.borrow_mut()[to].pop_front();
            let Some(msg) = next else { break };
            match post(shard, to, msg.clone()) {
                Ok(()) => {}
                Err(MeshError::Full(_)) => {
                    live.data_backlog.borrow_mut()[to].push_front(msg);
                    left = true;
                    break;
                }
                Err(e) => {
                    bump(&live.stats.events_dropped, 1);
                    tracing::warn!(shard = shard.id(), to, error = %e, "realtime event dropped");
                }
            }
        }
        loop {
            if !live.backlog.borrow()[to].is_empty() && !control_lane_free(live, to) {
                left = true;
                break;
            }
            let next = live.backlog.borrow_mut()[to].pop_front();
            let Some(msg) = next else { break };
            if let Err(e) = post_control(live, shard, to, msg.clone()) {
                if matches!(e, MeshError::Full(_)) {
                    live.backlog.borrow_mut()[to].push_front(msg);
                    left = true;
                }
                break;
            }
        }
    }
    if left {
        arm_retry(live, shard);
    }
}

/// The prefix of every payload [`ResourceEvent::encode_args`] produces.
const RESOURCE_ARGS_PREFIX: &str = "[\"realtime:resource\",";
/// The prefix of every `realtime:event` payload ([`protocol::EventPayload::encode_args`]).
const EVENT_ARGS_PREFIX: &str = "[\"realtime:event\",";

/// Frames `payload` once and queues the frame for every confirmed local member of `room`.
fn deliver_local(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, room: &str, payload: &SharedPayload) {
    let Some(msg) = frame(payload) else {
        tracing::error!(
            room,
            "realtime payload is not a realtime:resource or realtime:event argument list"
        );
        return;
    };
    bump(&live.stats.frames_encoded, 1);
    let n = shard.broadcast(NAMESPACE, room, &msg);
    bump(&live.stats.frames_queued, n as u64);
}

/// `42["realtime:resource",{...}]` from `["realtime:resource",{...}]` (and the same for `realtime:event`).
fn frame(payload: &str) -> Option<EncodedMessage> {
    let (name, rest) = match payload.strip_prefix(RESOURCE_ARGS_PREFIX) {
        Some(rest) => (protocol::RESOURCE, rest),
        None => (protocol::EVENT, payload.strip_prefix(EVENT_ARGS_PREFIX)?),
    };
    let mut args = String::with_capacity(rest.len() + 1);
    args.push('[');
    args.push_str(rest);
    let args = RawJson::new(args).ok()?;
    Some(EncodedMessage::event_raw(NAMESPACE, name, &args))
}

/// Hands an encoded payload to `room`'s owner shard (or fans it out here if this shard owns it). Never waits; an error
/// means a cross-shard queue was full and the event was dropped there.
fn publish_payload(
    live: &Rc<LiveShard>,
    shard: &Rc<ShardCtx>,
    room: &str,
    payload: SharedPayload,
) -> Result<(), BusError> {
    // Other nodes of the cluster (no-op in a single process); a drop there does not fail local delivery.
    crate::cluster::node::publish_to_room(shard, room, &payload);
    let routes = live.rooms.borrow_mut().publish(room, payload);
    let mut ok = true;
    for route in routes {
        match route {
            Route::Send { to, msg } => ok &= send(live, shard, to, msg),
            other => run_routes(live, shard, vec![other]),
        }
    }
    if ok { Ok(()) } else { Err(BusError::Full) }
}

/// The event bus of one shard: publishing hands the event to its room's owner shard, which forwards it to the
/// shards holding members. Cheap to clone; holds no strong reference to the shard.
#[derive(Clone, Debug)]
pub struct ShardBus {
    shard: Weak<ShardCtx>,
}

impl ShardBus {
    /// The bus of `shard` (whose realtime layer [`install`] set up).
    pub fn new(shard: &Rc<ShardCtx>) -> Self {
        Self {
            shard: Rc::downgrade(shard),
        }
    }

    /// Publishes now; never waits.
    pub fn publish_now(&self, event: &ResourceEvent) -> Result<(), BusError> {
        let shard = self.shard.upgrade().ok_or(BusError::Closed)?;
        let live = shard.state::<LiveShard>().ok_or(BusError::Closed)?;
        bump(&live.stats.events_published, 1);
        let payload: SharedPayload = Arc::from(event.encode_args());
        publish_payload(&live, &shard, &event.room, payload)
    }

    /// Publishes a service's `realtime:event` now; never waits.
    pub fn publish_event_now(&self, event: &RoomEvent) -> Result<(), BusError> {
        let shard = self.shard.upgrade().ok_or(BusError::Closed)?;
        let live = shard.state::<LiveShard>().ok_or(BusError::Closed)?;
        bump(&live.stats.events_published, 1);
        let payload: SharedPayload = Arc::from(event.encode_args());
        publish_payload(&live, &shard, &event.room, payload)
    }
}

impl EventBus for ShardBus {
    fn publish(
        &self,
        event: ResourceEvent,
    ) -> impl std::future::Future<Output = Result<(), BusError>> {
        std::future::ready(self.publish_now(&event))
    }

    /// Sends [`rooms::ShardMessage::Evict`] to every other shard (a control message: never dropped while the backlog
    /// has room) and evicts this shard's members at once.
    /// Encoded once, then the same path as [`ShardBus::publish_now`].
    fn publish_event(
        &self,
        event: RoomEvent,
    ) -> impl std::future::Future<Output = Result<(), BusError>> {
        std::future::ready(self.publish_event_now(&event))
    }

    fn evict_room(&self, room: &str) {
        let Some(shard) = self.shard.upgrade() else {
            return;
        };
        let Some(live) = shard.state::<LiveShard>() else {
            return;
        };
        let name: rooms::RoomName = Arc::from(room);
        for to in 0..shard.nr_shards() {
            if to == shard.id() {
                let routes = live.rooms.borrow_mut().evict(name.clone());
                run_routes(&live, &shard, routes);
            } else {
                send(
                    &live,
                    &shard,
                    to,
                    rooms::ShardMessage::Evict { room: name.clone() },
                );
            }
        }
    }
}

/// Counts a socket's join (`up`) or leave of `room` in the presence of its user.
fn presence_of_room(
    live: &Rc<LiveShard>,
    socket: &Socket,
    state: &LiveSocket,
    room: &str,
    up: bool,
) {
    let user = state.session.borrow().user().map(|u| u.id.clone());
    let Some(user) = user else { return };
    let out = if up {
        let since = crate::cluster::node::socket_joined(socket, room);
        live.presence.borrow_mut().joined(room, &user, since)
    } else {
        crate::cluster::node::socket_left(socket, room);
        live.presence.borrow_mut().left(room, &user)
    };
    send_presence(live, socket.shard(), out);
}

/// Runs a presence message where it belongs, keeping the order of the messages to each peer: a full queue parks it
/// (and everything after it) in that peer's backlog, retried every [`CONTROL_RETRY_MS`].
fn send_presence(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, out: Option<Outgoing>) {
    let Some((to, msg)) = out else { return };
    if to == shard.id() {
        apply_presence(live, shard, msg);
        return;
    }
    let waiting = live
        .presence_backlog
        .borrow()
        .get(to)
        .is_some_and(|q| !q.is_empty());
    if waiting || !control_lane_free(live, to) {
        park_presence(live, shard, to, msg);
        return;
    }
    if let Err(e) = post_presence(live, shard, to, msg.clone()) {
        match e {
            MeshError::Full(_) => park_presence(live, shard, to, msg),
            e => tracing::error!(shard = shard.id(), to, error = %e, "presence message not sent"),
        }
    }
}

/// Presence messages are control messages: they travel in the membership lane ([`control_in_flight_max`]), so
/// presence churn cannot crowd events out of a cross-shard queue either.
fn post_presence(
    live: &LiveShard,
    shard: &Rc<ShardCtx>,
    to: usize,
    msg: PresenceMsg,
) -> Result<(), MeshError> {
    let Some(counter) = live.control_in_flight.get(to).cloned() else {
        return Err(MeshError::NoSuchShard(to));
    };
    counter.fetch_add(1, Ordering::AcqRel);
    let done = counter.clone();
    let r = shard.send_to(to, move |ctx| {
        done.fetch_sub(1, Ordering::AcqRel);
        if let Some(live) = ctx.state::<LiveShard>() {
            apply_presence(&live, ctx, msg);
        }
    });
    if r.is_err() {
        counter.fetch_sub(1, Ordering::AcqRel);
    }
    r
}

/// Applies a presence message here. A change it makes is announced where it is announced at all
/// ([`announce_presence`]): at once in a single process; clustered, once the other nodes said the user was not
/// present there already ([`decide_presence`]).
fn apply_presence(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, msg: PresenceMsg) {
    let change = live.presence.borrow_mut().on_message(msg);
    let Some(change) = change else { return };
    if let Change::Room(c) = &change {
        let announced = live
            .session
            .config
            .presence_room
            .as_ref()
            .is_some_and(|t| t.of(&c.room).is_some());
        if !announced {
            return;
        }
    }
    if crate::cluster::node::cluster_of(shard).is_none() {
        announce_presence(live, shard, change);
        return;
    }
    decide_presence(live, shard, change);
}

fn presence_key(change: &Change) -> PresenceKey {
    match change {
        Change::Room(c) => (Some(c.room.clone()), c.user.clone()),
        Change::User(c) => (None, c.user.clone()),
    }
}

/// Clustered: announces `change` unless the user is already (appearing) or still (disappearing) present on another
/// node ([`crate::cluster::presence::present_elsewhere`], where the races are described). The changes of one user
/// and room (or one user's online state) are decided one at a time, in order: a change that comes while one is being
/// decided waits behind it (at most [`PRESENCE_CHANGES_WAITING_MAX`] on this shard).
fn decide_presence(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, change: Change) {
    let key = presence_key(&change);
    {
        let mut deciding = live.presence_deciding.borrow_mut();
        if let Some(waiting) = deciding.get_mut(&key) {
            if live.presence_waiting.get() >= PRESENCE_CHANGES_WAITING_MAX {
                tracing::error!(
                    shard = shard.id(),
                    limit = PRESENCE_CHANGES_WAITING_MAX,
                    "presence change dropped: too many waiting for the other nodes"
                );
                return;
            }
            live.presence_waiting.set(live.presence_waiting.get() + 1);
            waiting.push_back(change);
            return;
        }
        deciding.insert(key.clone(), VecDeque::new());
    }
    let weak_live = Rc::downgrade(live);
    let weak_shard = Rc::downgrade(shard);
    events::spawn(Box::pin(async move {
        let mut next = Some(change);
        while let Some(change) = next {
            let Some(shard) = weak_shard.upgrade() else {
                return;
            };
            let (room, user, before_ms) = match &change {
                Change::Room(c) => (c.room.clone(), &c.user, c.joined.then_some(c.since_ms)),
                Change::User(c) => (
                    crate::cluster::presence::user_room(&c.user),
                    &c.user,
                    c.online.then_some(c.since_ms),
                ),
            };
            let elsewhere =
                crate::cluster::presence::present_elsewhere(&shard, &room, user, before_ms).await;
            let Some(live) = weak_live.upgrade() else {
                return;
            };
            if elsewhere != Some(true) {
                announce_presence(&live, &shard, change);
            }
            let mut deciding = live.presence_deciding.borrow_mut();
            next = deciding.get_mut(&key).and_then(VecDeque::pop_front);
            if next.is_some() {
                live.presence_waiting
                    .set(live.presence_waiting.get().saturating_sub(1));
            } else {
                deciding.remove(&key);
            }
        }
    }));
}

/// Announces a presence change made on this shard. A change of a room's users (this shard owns the room) is
/// published, with [`protocol::SessionConfig::presence_room`] set, to the room's presence room as `realtime:event
/// {name: presence room, data: {presence, room, user}}`; a user coming online or going offline (this is its home
/// shard) runs the [`events::on_user_presence`] hooks.
fn announce_presence(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, change: Change) {
    match change {
        Change::Room(change) => {
            let Some(template) = &live.session.config.presence_room else {
                return;
            };
            let Some(target) = template.of(&change.room) else {
                return;
            };
            let data = serde_json::json!({
                "presence": if change.joined { "join" } else { "leave" },
                "room": change.room,
                "user": change.user,
            });
            let payload: SharedPayload =
                Arc::from(protocol::EventPayload::encode_args(&target, &data));
            if publish_payload(live, shard, &target, payload).is_err() {
                tracing::debug!(room = target, "presence event dropped");
            }
        }
        Change::User(change) => {
            let p = events::UserPresence {
                user_id: change.user,
                companies: change.companies,
                online: change.online,
            };
            let hooks = live.handlers.borrow().presence(&p);
            hooks.into_iter().for_each(events::spawn);
        }
    }
}

fn park_presence(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>, to: usize, msg: PresenceMsg) {
    {
        let mut backlog = live.presence_backlog.borrow_mut();
        let Some(q) = backlog.get_mut(to) else { return };
        if q.len() >= CONTROL_BACKLOG_LEN_MAX {
            tracing::error!(
                shard = shard.id(),
                to,
                "presence message dropped: backlog to that shard is full"
            );
            return;
        }
        q.push_back(msg);
    }
    arm_presence_retry(live, shard);
}

fn arm_presence_retry(live: &Rc<LiveShard>, shard: &Rc<ShardCtx>) {
    if live.presence_retry_armed.replace(true) {
        return;
    }
    let weak_live = Rc::downgrade(live);
    let weak_shard = Rc::downgrade(shard);
    shard.schedule(Duration::from_millis(CONTROL_RETRY_MS), move || {
        let (Some(live), Some(shard)) = (weak_live.upgrade(), weak_shard.upgrade()) else {
            return;
        };
        live.presence_retry_armed.set(false);
        let peers = live.presence_backlog.borrow().len();
        let mut left = false;
        for to in 0..peers {
            loop {
                let next = live.presence_backlog.borrow()[to].front().cloned();
                let Some(msg) = next else { break };
                if !control_lane_free(&live, to) {
                    left = true;
                    break;
                }
                match post_presence(&live, &shard, to, msg) {
                    Ok(()) => {}
                    Err(MeshError::Full(_)) => {
                        left = true;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(shard = shard.id(), to, error = %e, "presence message not sent")
                    }
                }
                live.presence_backlog.borrow_mut()[to].pop_front();
            }
        }
        if left {
            arm_presence_retry(&live, &shard);
        }
    });
}

/// The users connected in `room` right across shards (each once, sorted), asked of the room's owner shard.
pub async fn online_users(shard: &Rc<ShardCtx>, room: &str) -> Result<Vec<String>, BusError> {
    let owner = rooms::owner_shard(room, shard.nr_shards());
    if owner == shard.id() {
        let live = shard.state::<LiveShard>().ok_or(BusError::Closed)?;
        return Ok(live.presence.borrow().online_users(room));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let room = room.to_owned();
    shard
        .send_to(owner, move |ctx| {
            let users = ctx
                .state::<LiveShard>()
                .map(|live| live.presence.borrow().online_users(&room))
                .unwrap_or_default();
            let _ = tx.send(users);
        })
        .map_err(|e| match e {
            MeshError::Full(_) => BusError::Full,
            _ => BusError::Closed,
        })?;
    rx.await.map_err(|_| BusError::Closed)
}

/// Whether each of `users` has an authenticated socket on some shard, in order: one question to each home shard
/// involved (all sent before any answer is awaited).
pub async fn online(shard: &Rc<ShardCtx>, users: &[String]) -> Result<Vec<bool>, BusError> {
    let live = shard.state::<LiveShard>().ok_or(BusError::Closed)?;
    let mut answers = vec![false; users.len()];
    let mut by_home: HashMap<usize, Vec<(usize, String)>> = HashMap::new();
    for (i, user) in users.iter().enumerate() {
        let home = home_shard(user, shard.nr_shards());
        if home == shard.id() {
            answers[i] = live.presence.borrow().is_online(user);
        } else {
            by_home.entry(home).or_default().push((i, user.clone()));
        }
    }
    let mut pending = Vec::with_capacity(by_home.len());
    for (home, asked) in by_home {
        let (tx, rx) = tokio::sync::oneshot::channel::<Vec<(usize, bool)>>();
        shard
            .send_to(home, move |ctx| {
                let found = ctx.state::<LiveShard>().map(|live| {
                    let p = live.presence.borrow();
                    asked.iter().map(|(i, u)| (*i, p.is_online(u))).collect()
                });
                let _ = tx.send(found.unwrap_or_default());
            })
            .map_err(|e| match e {
                MeshError::Full(_) => BusError::Full,
                _ => BusError::Closed,
            })?;
        pending.push(rx);
    }
    for rx in pending {
        for (i, on) in rx.await.map_err(|_| BusError::Closed)? {
            answers[i] = on;
        }
    }
    // Users not online here may be on another node of the cluster (nothing to ask in a single process).
    crate::cluster::presence::online_elsewhere(shard, users, &mut answers).await;
    Ok(answers)
}

/// The frame a member shard queues for one event, `42["realtime:resource",{...}]`, built from the event's
/// [`SharedPayload`] (the arguments of [`ResourceEvent::encode_args`]). A member shard builds it once per delivery and
/// hands the same frame to [`ShardCtx::broadcast`] for all its local members; `benches/fanout.rs` measures that path.
/// `None` if `payload` is not a `realtime:resource` argument list.
pub fn resource_frame(payload: &str) -> Option<EncodedMessage> {
    frame(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::bus::ResourceAction;
    use serde_json::json;

    #[test]
    fn frame_is_the_socketio_event_of_the_shared_payload() {
        let ev = ResourceEvent {
            action: ResourceAction::Created,
            room: "/r".into(),
            type_name: "message".into(),
            path: "/messages/1".into(),
            resource: json!({"id": "1", "text": "é\"x"}),
        };
        let msg = frame(&ev.encode_args()).unwrap();
        assert_eq!(
            &**msg.ws_text(),
            r#"42["realtime:resource",{"action":"created","room":"/r","type":"message","path":"/messages/1","resource":{"id":"1","text":"é\"x"}}]"#
        );
        assert!(frame(r#"["other",{}]"#).is_none());
        let args = protocol::EventPayload::encode_args("/r", &json!({"typing": true}));
        assert_eq!(
            &**frame(&args).unwrap().ws_text(),
            r#"42["realtime:event",{"name":"/r","data":{"typing":true}}]"#
        );
    }

    #[test]
    fn auth_value_reads_v5_payloads_and_v4_queries() {
        let raw = |s: &str| Some(RawJson::new(s).unwrap());
        assert_eq!(
            auth_value(raw(r#"{"token":"a.b.c"}"#)),
            Some(json!({"token": "a.b.c"}))
        );
        assert_eq!(
            auth_value(raw(r#"{"query":"x=1&token=a.b.c&y=2"}"#)),
            Some(json!({"token": "a.b.c"}))
        );
        assert_eq!(auth_value(raw(r#"{"query":"x=1"}"#)), None);
        assert_eq!(auth_value(raw("[1]")), None);
        assert_eq!(auth_value(None), None);
    }
}
