//! The shard side of the cluster: each shard's registry of its connected sockets, its task that applies what the
//! adapter's thread hands it (remote broadcasts, parts of requests), and the hooks the realtime layer calls.
//!
//! A remote broadcast reaches every shard's queue once; each shard frames it **once** into an [`EncodedMessage`]
//! and queues that frame on every selected local socket (members of any target room, or every socket when there is
//! none, minus members of the `except` rooms; a socket is also in the room named by its own id).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{Value as Json, json};

use crate::proto::socket::Packet;
use crate::proto::{EncodedMessage, RawJson};
use crate::server::{Request, Response, ResponseFuture, Router, ShardCtx, Socket};

use super::adapter::{
    AdapterState, Cluster, Delivery, Inbound, NAMESPACE, OneAction, Outbound, ShardAnswer, ShardOp,
};
use super::codec::{self, Selector, SocketEvent, SocketInfo};
use super::member;

/// The path that reports the adapter's state: 200 when subscribed to Redis, 503 otherwise, counters in the body.
pub const READY_PATH: &str = "/readyz/cluster";

struct Entry {
    socket: Socket,
    connected_at_ms: u64,
    /// The user the socket authenticated as (its token's `sub`), once it did.
    user: Option<Rc<str>>,
    /// When the socket authenticated (its `user:<id>` room) and joined each realtime room, ms since the epoch: the
    /// `since` of its `data` ([`member::socket_data`]). At most one entry per room of the socket, plus one.
    since: HashMap<String, u64>,
}

/// One shard's cluster state (reached with [`ShardCtx::state`]).
pub struct ClusterShard {
    cluster: Arc<Cluster>,
    sockets: RefCell<HashMap<Rc<str>, Entry>>,
    /// Authenticated sockets by user: the members of the room [`member::user_room`] names.
    users: RefCell<HashMap<Rc<str>, HashSet<Rc<str>>>>,
}

impl std::fmt::Debug for ClusterShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterShard")
            .field("sockets", &self.sockets.borrow().len())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Joins `shard` to the cluster: stores its state and starts the task that drains its queue from the adapter.
pub fn install(shard: &Rc<ShardCtx>, cluster: &Arc<Cluster>) {
    shard.set_state(ClusterShard {
        cluster: cluster.clone(),
        sockets: RefCell::new(HashMap::new()),
        users: RefCell::new(HashMap::new()),
    });
    let Some(mut rx) = cluster.take_inbound(shard.id()) else {
        tracing::error!(
            shard = shard.id(),
            "cluster: this shard's queue was already taken"
        );
        return;
    };
    let weak = Rc::downgrade(shard);
    glommio::spawn_local(async move {
        while let Some(msg) = rx.recv().await {
            let Some(shard) = weak.upgrade() else { break };
            if shard.is_shutting_down() {
                break;
            }
            let Some(state) = shard.state::<ClusterShard>() else {
                break;
            };
            state.handle(&shard, msg);
        }
    })
    .detach();
}

/// Records a socket of the main namespace (the realtime layer calls it on CONNECT).
pub fn socket_connected(socket: &Socket) {
    if let Some(state) = socket.shard().state::<ClusterShard>() {
        state.sockets.borrow_mut().insert(
            Rc::from(socket.id()),
            Entry {
                socket: socket.clone(),
                connected_at_ms: now_ms(),
                user: None,
                since: HashMap::new(),
            },
        );
    }
}

/// Records the user a socket authenticated as (the realtime layer calls it once the socket is authenticated): other
/// nodes' fetchSockets see it in the socket's `data.user.id` and in the room `user:<id>` (presence across nodes).
/// Returns when, in ms since the epoch (`data.since["user:<id>"]`), or 0 when this process is not clustered.
pub fn socket_authenticated(socket: &Socket, user: &str) -> u64 {
    let Some(state) = socket.shard().state::<ClusterShard>() else {
        return 0;
    };
    let mut sockets = state.sockets.borrow_mut();
    let Some(entry) = sockets.get_mut(socket.id()) else {
        return 0;
    };
    let at = member::now_ms();
    entry.since.insert(member::user_room(user), at);
    let user: Rc<str> = Rc::from(user);
    entry.user = Some(user.clone());
    state
        .users
        .borrow_mut()
        .entry(user)
        .or_default()
        .insert(Rc::from(socket.id()));
    at
}

/// Records that a socket joins `room` through the wire contract (before it is in the room for anyone to see).
/// Returns when, in ms since the epoch (`data.since[room]`; the first join counts), or 0 when not clustered.
pub fn socket_joined(socket: &Socket, room: &str) -> u64 {
    let Some(state) = socket.shard().state::<ClusterShard>() else {
        return 0;
    };
    let mut sockets = state.sockets.borrow_mut();
    let Some(entry) = sockets.get_mut(socket.id()) else {
        return 0;
    };
    *entry
        .since
        .entry(room.to_owned())
        .or_insert_with(member::now_ms)
}

/// Forgets when a socket joined `room` (it left it).
pub fn socket_left(socket: &Socket, room: &str) {
    if let Some(state) = socket.shard().state::<ClusterShard>()
        && let Some(entry) = state.sockets.borrow_mut().get_mut(socket.id())
    {
        entry.since.remove(room);
    }
}

/// Forgets a socket (the realtime layer calls it on disconnect).
pub fn socket_disconnected(socket: &Socket) {
    let Some(state) = socket.shard().state::<ClusterShard>() else {
        return;
    };
    let removed = state.sockets.borrow_mut().remove(socket.id());
    if let Some(user) = removed.and_then(|e| e.user) {
        let mut users = state.users.borrow_mut();
        if let Some(sids) = users.get_mut(&user) {
            sids.remove(socket.id());
            if sids.is_empty() {
                users.remove(&user);
            }
        }
    }
}

/// Hands a room broadcast of this shard (`data` = `[event, ...args]` as JSON, e.g. a `realtime:resource`) to the
/// other nodes. Never waits; false if it was dropped (counted by the adapter) or this process is not clustered.
pub fn publish_to_room(shard: &ShardCtx, room: &str, data: &Arc<str>) -> bool {
    let Some(state) = shard.state::<ClusterShard>() else {
        return false;
    };
    state.cluster.send(Outbound::Broadcast {
        selector: Selector {
            rooms: vec![room.to_owned()],
            except: Vec::new(),
        },
        data: data.clone(),
        attachments: Vec::new(),
    })
}

/// The adapter of this shard's process, if clustered.
pub fn cluster_of(shard: &ShardCtx) -> Option<Arc<Cluster>> {
    shard.state::<ClusterShard>().map(|s| s.cluster.clone())
}

fn encode(event: &SocketEvent) -> Option<EncodedMessage> {
    let args = RawJson::new(event.args.clone()).ok()?;
    Some(EncodedMessage::new(&Packet::Event {
        nsp: NAMESPACE.to_owned(),
        id: None,
        name: event.name.clone(),
        args,
        attachments: event.attachments.clone(),
    }))
}

impl ClusterShard {
    /// The members of `room` on this shard: the room's members, the socket named by the room (a socket is in the
    /// room of its own id), and the sockets of the user a `user:<id>` room names.
    fn room_members(&self, shard: &ShardCtx, room: &str) -> Vec<Socket> {
        let sockets = self.sockets.borrow();
        let mut out = shard.rooms().members(NAMESPACE, room);
        if let Some(e) = sockets.get(room) {
            out.push(e.socket.clone());
        }
        if let Some(sids) =
            member::user_of_room(room).and_then(|u| self.users.borrow().get(u).cloned())
        {
            out.extend(
                sids.iter()
                    .filter_map(|sid| sockets.get(sid).map(|e| e.socket.clone())),
            );
        }
        out
    }

    /// Connected sockets selected by `sel` on this shard.
    fn select(&self, shard: &ShardCtx, sel: &Selector) -> Vec<Socket> {
        let mut excluded: HashSet<Rc<str>> = HashSet::new();
        for room in &sel.except {
            for s in self.room_members(shard, room) {
                excluded.insert(Rc::from(s.id()));
            }
        }
        let mut seen: HashSet<Rc<str>> = HashSet::new();
        let mut out = Vec::new();
        let mut take = |s: &Socket, out: &mut Vec<Socket>| {
            if s.is_connected() && !excluded.contains(s.id()) && seen.insert(Rc::from(s.id())) {
                out.push(s.clone());
            }
        };
        if sel.rooms.is_empty() {
            for e in self.sockets.borrow().values() {
                take(&e.socket, &mut out);
            }
        } else {
            for room in &sel.rooms {
                for s in self.room_members(shard, room) {
                    take(&s, &mut out);
                }
            }
        }
        out
    }

    fn handle(&self, shard: &Rc<ShardCtx>, msg: Inbound) {
        match msg {
            Inbound::Broadcast(d) => self.deliver(shard, &d),
            Inbound::Op { op, reply } => {
                let answer = self.apply(shard, &op);
                let _ = reply.send(answer);
            }
        }
    }

    fn deliver(&self, shard: &ShardCtx, d: &Delivery) {
        let targets = self.select(shard, &d.selector);
        if targets.is_empty() {
            return;
        }
        let Some(msg) = encode(&d.event) else {
            tracing::warn!("cluster: remote broadcast arguments are not JSON");
            return;
        };
        for s in &targets {
            s.send_packet(&msg);
        }
    }

    fn info(&self, s: &Socket) -> SocketInfo {
        let sockets = self.sockets.borrow();
        let entry = sockets.get(s.id());
        let (issued, user) = entry.map_or((0, None), |e| (e.connected_at_ms, e.user.clone()));
        let mut rooms = vec![s.id().to_owned()];
        rooms.extend(s.rooms().iter().map(|r| r.to_string()));
        rooms.extend(user.as_deref().map(member::user_room));
        SocketInfo {
            id: s.id().to_owned(),
            // What shardcast knows of the handshake; the auth payload (a token) is never sent to other nodes.
            handshake: json!({
                "time": codec::iso8601(issued as i64),
                "issued": issued,
                "query": {},
                "auth": {},
            }),
            rooms,
            data: member::socket_data(user.as_deref(), entry.map_or(&HashMap::new(), |e| &e.since)),
        }
    }

    fn apply(&self, shard: &Rc<ShardCtx>, op: &ShardOp) -> ShardAnswer {
        match op {
            ShardOp::Ids(sel) => ShardAnswer::Ids(
                self.select(shard, sel)
                    .iter()
                    .map(|s| s.id().to_owned())
                    .collect(),
            ),
            ShardOp::Rooms => {
                let mut rooms = HashSet::new();
                for e in self.sockets.borrow().values() {
                    if !e.socket.is_connected() {
                        continue;
                    }
                    rooms.insert(e.socket.id().to_owned());
                    rooms.extend(e.socket.rooms().iter().map(|r| r.to_string()));
                    rooms.extend(e.user.as_deref().map(member::user_room));
                }
                ShardAnswer::Rooms(rooms.into_iter().collect())
            }
            ShardOp::Fetch(sel) => ShardAnswer::Sockets(
                self.select(shard, sel)
                    .iter()
                    .map(|s| self.info(s))
                    .collect(),
            ),
            ShardOp::Join(sel, rooms) => {
                let targets = self.select(shard, sel);
                for s in &targets {
                    for r in rooms {
                        s.join(r);
                    }
                }
                ShardAnswer::Count(targets.len())
            }
            ShardOp::Leave(sel, rooms) => {
                let targets = self.select(shard, sel);
                for s in &targets {
                    for r in rooms {
                        s.leave(r);
                    }
                }
                ShardAnswer::Count(targets.len())
            }
            ShardOp::Disconnect(sel, close) => {
                let targets = self.select(shard, sel);
                for s in &targets {
                    if *close {
                        s.close_session();
                    } else {
                        s.disconnect();
                    }
                }
                ShardAnswer::Count(targets.len())
            }
            ShardOp::One { sid, action } => {
                let socket = self
                    .sockets
                    .borrow()
                    .get(sid.as_str())
                    .map(|e| e.socket.clone());
                let Some(s) = socket.filter(Socket::is_connected) else {
                    return ShardAnswer::Count(0);
                };
                match action {
                    OneAction::Join(r) => s.join(r),
                    OneAction::Leave(r) => s.leave(r),
                    OneAction::Disconnect(true) => s.close_session(),
                    OneAction::Disconnect(false) => s.disconnect(),
                }
                ShardAnswer::Count(1)
            }
            ShardOp::BroadcastAck {
                selector,
                event,
                timeout,
                acks,
            } => {
                let Ok(args) = RawJson::new(event.args.clone()) else {
                    return ShardAnswer::Count(0);
                };
                let targets = self.select(shard, selector);
                for s in &targets {
                    let fut = s.emit_with_ack(
                        &event.name,
                        args.clone(),
                        event.attachments.clone(),
                        *timeout,
                    );
                    let acks = acks.clone();
                    glommio::spawn_local(async move {
                        if let Ok(reply) = fut.await {
                            let first = reply
                                .args
                                .parse::<Vec<Json>>()
                                .ok()
                                .and_then(|v| v.into_iter().next())
                                .unwrap_or(Json::Null);
                            let _ = acks.send(codec::json_to_msgpack(&first, &reply.attachments));
                        }
                    })
                    .detach();
                }
                ShardAnswer::Count(targets.len())
            }
        }
    }
}

/// Wraps the application's router: `GET /readyz/cluster` answers the adapter's state (200 `up`, 503 otherwise)
/// and counters; every other request goes to `inner`.
pub struct ReadyRouter {
    cluster: Arc<Cluster>,
    inner: Option<Rc<dyn Router>>,
}

impl std::fmt::Debug for ReadyRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyRouter").finish_non_exhaustive()
    }
}

impl ReadyRouter {
    /// `inner` behind the cluster's readiness route.
    pub fn new(cluster: Arc<Cluster>, inner: Option<Rc<dyn Router>>) -> Self {
        Self { cluster, inner }
    }
}

impl Router for ReadyRouter {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        if request.path == READY_PATH && request.method == "GET" {
            let stats = self.cluster.stats();
            let mut body = stats.to_json();
            body["uid"] = Json::String(self.cluster.uid().to_owned());
            let status = if stats.state() == AdapterState::Up {
                200
            } else {
                503
            };
            let resp = Response::json(status, &body);
            return Some(Box::pin(std::future::ready(resp)));
        }
        self.inner.as_ref()?.route(shard, request)
    }
}
