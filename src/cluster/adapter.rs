//! The adapter: one thread per process with its own single-threaded tokio runtime and the Redis connection
//! ([`super::connection`]). It publishes what the shards hand it, reads the cluster's channels, drops its own messages by
//! uid, answers every request (gathering the shards' parts), and reconnects with backoff.
//!
//! Queues: one bounded queue from all shards to this thread ([`ClusterConfig::queue_len`]) and one bounded queue to
//! each shard. A full queue is counted and the message dropped; no shard ever waits for this thread or for Redis.
//!
//! **Invariant:** while Redis is unreachable, shards keep delivering locally; what they hand this thread is dropped
//! and counted (`publish_dropped`), and the node resubscribes as soon as Redis answers again.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Channels, RequestKind, Selector, SocketEvent, SocketInfo};
use super::config::ClusterConfig;
use super::connection::{self, ChannelMessage, Publisher, Subscriber};
use super::msgpack::Value;

/// The namespace shardcast serves (the wire contract's).
pub const NAMESPACE: &str = "/";
/// The serverSideEmit event every shardcast node answers (when asked for an acknowledgement) with
/// `{"uid", "version", "state"}`: a way for any node to list the shardcast nodes of the cluster.
pub const INFO_EVENT: &str = "shardcast:info";
/// Most requests answered at once (each waits for its shards' answers or its acks); more are counted in
/// `requests_dropped` and ignored, so a flood on the request channel cannot grow this thread's memory without bound.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;
/// First wait after a failed connection attempt, ms; it doubles up to `reconnect_backoff_max_ms`.
pub const RECONNECT_BACKOFF_MIN_MS: u64 = 100;

/// Where the adapter stands with Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterState {
    /// First attempt under way.
    Connecting,
    /// Subscribed: remote deliveries flow.
    Up,
    /// Unreachable: local delivery only, retrying with backoff.
    Down,
}

impl AdapterState {
    /// `connecting`, `up` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterState::Connecting => "connecting",
            AdapterState::Up => "up",
            AdapterState::Down => "down",
        }
    }
}

/// Counters of the adapter (each written by one thread, the presence ones by the shards; read by anyone).
#[derive(Debug, Default)]
pub struct ClusterStats {
    state: AtomicU8,
    /// Successful connections (the first one and every reconnection).
    pub connections: AtomicU64,
    /// Broadcasts published to Redis.
    pub published: AtomicU64,
    /// Messages from the shards dropped because Redis was unreachable or PUBLISH failed.
    pub publish_dropped: AtomicU64,
    /// Messages from the shards dropped because the queue to this thread was full.
    pub outbound_full: AtomicU64,
    /// Broadcasts read from Redis and handed to the shards.
    pub broadcasts_received: AtomicU64,
    /// This node's own broadcasts read back (dropped by uid).
    pub own_dropped: AtomicU64,
    /// Channel messages that were not MessagePack/JSON or had the wrong shape (dropped).
    pub malformed: AtomicU64,
    /// Channel messages larger than `message_bytes_max` (dropped).
    pub oversized: AtomicU64,
    /// Messages to a shard dropped because its queue was full.
    pub inbound_full: AtomicU64,
    /// Requests handled (answered, or applied when they expect no answer).
    pub requests_handled: AtomicU64,
    /// Requests ignored because [`REQUESTS_IN_FLIGHT_MAX`] were being answered.
    pub requests_dropped: AtomicU64,
    /// Presence changes of this node decided by asking the other nodes ([`super::presence::present_elsewhere`]).
    pub presence_decided: AtomicU64,
    /// Of those, changes not announced: the user was already (or still) present on another node.
    pub presence_elsewhere: AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl ClusterStats {
    /// The current state.
    pub fn state(&self) -> AdapterState {
        match self.state.load(Ordering::Acquire) {
            1 => AdapterState::Up,
            2 => AdapterState::Down,
            _ => AdapterState::Connecting,
        }
    }
    fn set_state(&self, s: AdapterState) {
        let v = match s {
            AdapterState::Connecting => 0,
            AdapterState::Up => 1,
            AdapterState::Down => 2,
        };
        self.state.store(v, Ordering::Release);
    }
    /// The counters and the state as JSON (the body of `GET /readyz/cluster`).
    pub fn to_json(&self) -> Json {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "state": self.state().name(),
            "connections": g(&self.connections),
            "published": g(&self.published),
            "publish_dropped": g(&self.publish_dropped),
            "outbound_full": g(&self.outbound_full),
            "broadcasts_received": g(&self.broadcasts_received),
            "own_dropped": g(&self.own_dropped),
            "malformed": g(&self.malformed),
            "oversized": g(&self.oversized),
            "inbound_full": g(&self.inbound_full),
            "requests_handled": g(&self.requests_handled),
            "requests_dropped": g(&self.requests_dropped),
            "presence_decided": g(&self.presence_decided),
            "presence_elsewhere": g(&self.presence_elsewhere),
        })
    }
}

/// A listener of serverSideEmit: gets the arguments after the event name; what it returns is the acknowledgement
/// sent back when the emitting server asked for one (`None`: no answer, as a Node listener that never calls back).
pub type ServerSideHandler = Box<dyn Fn(&[Json]) -> Option<Json> + Send + Sync>;

/// Most requests of this node ([`Cluster::fetch_sockets`], [`Cluster::server_side_emit_with_ack`]) waiting for
/// other nodes' answers at once; more fail at once with [`ClusterError::TooManyRequests`].
pub const OWN_REQUESTS_MAX: usize = 1024;

/// Why a request of this node to the cluster failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Redis is unreachable (or this node's queue to the adapter's thread is full): nothing was sent.
    #[error("the cluster adapter is not connected to Redis")]
    Unavailable,
    /// [`OWN_REQUESTS_MAX`] requests are already waiting.
    #[error("too many cluster requests in flight (at most {OWN_REQUESTS_MAX})")]
    TooManyRequests,
    /// Redis did not answer PUBSUB NUMSUB or PUBLISH.
    #[error("redis: {0}")]
    Redis(String),
    /// fetchSockets: not every other node answered within `cluster.request_timeout_ms` (the adapter's text).
    #[error("timeout reached while waiting for fetchSockets response")]
    FetchTimeout,
    /// serverSideEmit with acks: not every other node answered in time (the adapter's text).
    #[error("timeout reached: only {received} responses received out of {expected}")]
    AckTimeout {
        /// Answers received.
        received: usize,
        /// Other nodes counted by PUBSUB NUMSUB when the request was sent.
        expected: usize,
    },
}

/// What this node asks the other nodes.
#[derive(Debug, Clone)]
pub enum OwnKind {
    /// fetchSockets (REMOTE_FETCH): the selected sockets of every other node; `true`: this node's first.
    Fetch(Selector, bool),
    /// serverSideEmit of `[event, ...args]`; `true`: with acknowledgements.
    ServerSideEmit(Vec<Json>, bool),
}

/// A request of this node, handed to the adapter's thread.
#[derive(Debug)]
pub struct OwnRequest {
    kind: OwnKind,
    reply: oneshot::Sender<Result<Answers, ClusterError>>,
}

/// What came back for a request of this node within `cluster.request_timeout_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    /// This node's own part first (a fetchSockets that includes it), then the other nodes' answers in arrival order:
    /// socket objects for a fetchSockets, one acknowledgement per node for a serverSideEmit.
    pub responses: Vec<Json>,
    /// Other nodes that answered in time.
    pub received: usize,
    /// Other nodes counted by PUBSUB NUMSUB of the request channel when the request was sent.
    pub expected: usize,
}

impl Answers {
    /// Every node counted answered.
    pub fn complete(&self) -> bool {
        self.received >= self.expected
    }
}

/// A request of this node waiting for the other nodes' answers (on the adapter's thread).
struct OwnWaiting {
    fetch: bool,
    expected: usize,
    answers: usize,
    responses: Vec<Json>,
    done: Option<oneshot::Sender<()>>,
}

/// What a shard hands the adapter.
#[derive(Debug)]
pub enum Outbound {
    /// A broadcast of `[event, ...args]` (JSON text, binary placeholders refer to `attachments`) to `selector`.
    Broadcast {
        /// Target rooms and exceptions.
        selector: Selector,
        /// `[event, ...args]`, a JSON array.
        data: Arc<str>,
        /// Binary attachments.
        attachments: Vec<Vec<u8>>,
    },
    /// A request of this node ([`Cluster::fetch_sockets`], [`Cluster::server_side_emit`]...).
    Request(OwnRequest),
}

/// A broadcast from another node, decoded once on the adapter's thread and shared by all shards.
#[derive(Debug)]
pub struct Delivery {
    /// Target sockets.
    pub selector: Selector,
    /// The event.
    pub event: SocketEvent,
}

/// One shard's part of a request.
#[derive(Debug)]
pub enum ShardOp {
    /// Socket ids of the selected sockets (SOCKETS).
    Ids(Selector),
    /// Every room with members here, socket-id rooms included (ALL_ROOMS).
    Rooms,
    /// The selected sockets (REMOTE_FETCH).
    Fetch(Selector),
    /// The selected sockets join the rooms.
    Join(Selector, Vec<String>),
    /// The selected sockets leave the rooms.
    Leave(Selector, Vec<String>),
    /// The selected sockets are disconnected (`true`: the whole connection).
    Disconnect(Selector, bool),
    /// One socket by id joins (`Some(room)`) / leaves / disconnects.
    One {
        /// Socket id.
        sid: String,
        /// What to do.
        action: OneAction,
    },
    /// Emit with an ack to the selected sockets; each acknowledgement's first argument goes to `acks`.
    BroadcastAck {
        /// Target sockets.
        selector: Selector,
        /// The event.
        event: SocketEvent,
        /// Ack timeout.
        timeout: Duration,
        /// Where acknowledgements go.
        acks: mpsc::UnboundedSender<Value>,
    },
}

/// The one-socket operations of the older request form.
#[derive(Debug, Clone)]
pub enum OneAction {
    /// Join a room.
    Join(String),
    /// Leave a room.
    Leave(String),
    /// Disconnect (`true`: the whole connection).
    Disconnect(bool),
}

/// One shard's answer.
#[derive(Debug)]
pub enum ShardAnswer {
    /// Socket ids.
    Ids(Vec<String>),
    /// Room names.
    Rooms(Vec<String>),
    /// Sockets.
    Sockets(Vec<SocketInfo>),
    /// How many sockets the operation applied to.
    Count(usize),
}

/// What the adapter hands a shard.
#[derive(Debug)]
pub enum Inbound {
    /// Deliver to the selected local sockets (encoded once on the shard).
    Broadcast(Arc<Delivery>),
    /// Do a part of a request and answer.
    Op {
        /// The part.
        op: Arc<ShardOp>,
        /// The answer.
        reply: oneshot::Sender<ShardAnswer>,
    },
}

/// The adapter of one process. Shared by all shards (`Arc`).
pub struct Cluster {
    uid: String,
    config: ClusterConfig,
    channels: Channels,
    outbound: mpsc::Sender<Outbound>,
    inbound: Vec<Mutex<Option<mpsc::Receiver<Inbound>>>>,
    shard_txs: Vec<mpsc::Sender<Inbound>>,
    own: Mutex<HashMap<String, OwnWaiting>>,
    stats: ClusterStats,
    handlers: HashMap<String, ServerSideHandler>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("uid", &self.uid)
            .field("prefix", &self.config.prefix)
            .field("state", &self.stats.state())
            .finish_non_exhaustive()
    }
}

/// The adapter's uid: 6 characters, like `uid2(6)`, from the CSPRNG.
fn new_uid() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let bytes: [u8; 6] = rand::random();
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

impl Cluster {
    /// Starts the adapter's thread for `nr_shards` shards. Returns at once: the connection is made (and retried) in
    /// the background, so the node serves its local clients whether Redis is up or not.
    pub fn start(
        config: ClusterConfig,
        nr_shards: usize,
        handlers: HashMap<String, ServerSideHandler>,
    ) -> Result<Arc<Cluster>, String> {
        let url = config
            .redis_url
            .clone()
            .ok_or_else(|| "cluster.redis_url is not set".to_owned())?;
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err("cluster.redis_url must start with redis://".into());
        }
        let queue_len = config.queue_len.max(1);
        let uid = new_uid();
        let channels = Channels::new(&config.prefix, NAMESPACE, &uid);
        let (out_tx, out_rx) = mpsc::channel(queue_len);
        let mut in_txs = Vec::with_capacity(nr_shards);
        let mut in_rxs = Vec::with_capacity(nr_shards);
        for _ in 0..nr_shards {
            let (tx, rx) = mpsc::channel(queue_len);
            in_txs.push(tx);
            in_rxs.push(Mutex::new(Some(rx)));
        }
        let cluster = Arc::new(Cluster {
            uid,
            config,
            channels,
            outbound: out_tx,
            inbound: in_rxs,
            shard_txs: in_txs.clone(),
            own: Mutex::new(HashMap::new()),
            stats: ClusterStats::default(),
            handlers,
        });
        let c = cluster.clone();
        std::thread::Builder::new()
            .name("shardcast-cluster".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cluster: cannot build the runtime; remote delivery is off");
                        c.stats.set_state(AdapterState::Down);
                        return;
                    }
                };
                rt.block_on(run(c, url, out_rx, in_txs));
            })
            .map_err(|e| format!("cannot start the cluster thread: {e}"))?;
        Ok(cluster)
    }

    /// This node's uid in the cluster.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The channels of the main namespace.
    pub fn channels(&self) -> &Channels {
        &self.channels
    }

    /// The counters and state.
    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }

    /// The queue to shard `shard`, once (the shard's task takes it at start-up).
    pub(crate) fn take_inbound(&self, shard: usize) -> Option<mpsc::Receiver<Inbound>> {
        self.inbound.get(shard)?.lock().ok()?.take()
    }

    /// Broadcasts `event(...args)` to the sockets `selector` picks on every node of the cluster: this node's shards
    /// (whatever the state of Redis) and, through Redis, every other node, as `io.to(rooms).except(except).emit`.
    /// Never waits; false if the remote part was dropped (counted: Redis unreachable or the queue full) or a
    /// local shard's queue was full (counted in `inbound_full`).
    pub fn broadcast(&self, selector: Selector, event: &str, args: &[Json]) -> bool {
        let data = emit_data(event, args);
        let delivery = Arc::new(Delivery {
            selector: selector.clone(),
            event: SocketEvent {
                name: event.to_owned(),
                args: Json::Array(args.to_vec()).to_string(),
                attachments: Vec::new(),
            },
        });
        let mut all = true;
        for tx in &self.shard_txs {
            if tx.try_send(Inbound::Broadcast(delivery.clone())).is_err() {
                add(&self.stats.inbound_full);
                all = false;
            }
        }
        let remote = self.send(Outbound::Broadcast {
            selector,
            data: Arc::from(Json::Array(data).to_string()),
            attachments: Vec::new(),
        });
        all && remote
    }

    /// fetchSockets: the sockets `selector` picks on every node, as `{id, handshake, rooms, data}` objects (this
    /// node's first). Waits for every other node (PUBSUB NUMSUB of the request channel, minus one) up to
    /// `cluster.request_timeout_ms`, then fails with [`ClusterError::FetchTimeout`], as the adapter does.
    pub async fn fetch_sockets(&self, selector: Selector) -> Result<Vec<Json>, ClusterError> {
        let answers = self.ask(OwnKind::Fetch(selector, true)).await?;
        if !answers.complete() {
            return Err(ClusterError::FetchTimeout);
        }
        Ok(answers.responses)
    }

    /// fetchSockets of the other nodes only, never failing on a slow node: the sockets of the nodes that answered
    /// within `cluster.request_timeout_ms`, with how many answered out of how many PUBSUB NUMSUB counted (a node
    /// that died without Redis noticing yet is left out after the timeout). What presence across nodes asks.
    pub async fn fetch_remote_sockets(&self, selector: Selector) -> Result<Answers, ClusterError> {
        self.ask(OwnKind::Fetch(selector, false)).await
    }

    /// serverSideEmit without acknowledgement: `event(...args)` reaches the listeners of every other node. Returns
    /// once published.
    pub async fn server_side_emit(&self, event: &str, args: &[Json]) -> Result<(), ClusterError> {
        self.ask(OwnKind::ServerSideEmit(emit_data(event, args), false))
            .await
            .map(drop)
    }

    /// serverSideEmit with acknowledgements: one answer per other node (the first argument its listener called
    /// back with), in arrival order. Not every node answered within `cluster.request_timeout_ms`:
    /// [`ClusterError::AckTimeout`] ("timeout reached: only N responses received out of M", the adapter's text).
    pub async fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Json],
    ) -> Result<Vec<Json>, ClusterError> {
        let answers = self
            .ask(OwnKind::ServerSideEmit(emit_data(event, args), true))
            .await?;
        if !answers.complete() {
            return Err(ClusterError::AckTimeout {
                received: answers.received,
                expected: answers.expected,
            });
        }
        Ok(answers.responses)
    }

    async fn ask(&self, kind: OwnKind) -> Result<Answers, ClusterError> {
        if self.stats.state() != AdapterState::Up {
            return Err(ClusterError::Unavailable);
        }
        let (reply, rx) = oneshot::channel();
        if self
            .outbound
            .try_send(Outbound::Request(OwnRequest { kind, reply }))
            .is_err()
        {
            add(&self.stats.outbound_full);
            return Err(ClusterError::Unavailable);
        }
        rx.await.unwrap_or(Err(ClusterError::Unavailable))
    }

    /// Hands a message to the adapter's thread without waiting; false (and counted) if the queue is full or
    /// Redis is known to be unreachable.
    pub fn send(&self, msg: Outbound) -> bool {
        if self.stats.state() != AdapterState::Up {
            add(&self.stats.publish_dropped);
            return false;
        }
        match self.outbound.try_send(msg) {
            Ok(()) => true,
            Err(_) => {
                add(&self.stats.outbound_full);
                false
            }
        }
    }
}

fn emit_data(event: &str, args: &[Json]) -> Vec<Json> {
    let mut data = Vec::with_capacity(args.len() + 1);
    data.push(Json::String(event.to_owned()));
    data.extend_from_slice(args);
    data
}

async fn run(
    cluster: Arc<Cluster>,
    url: String,
    mut out_rx: mpsc::Receiver<Outbound>,
    in_txs: Vec<mpsc::Sender<Inbound>>,
) {
    let patterns = [cluster.channels.broadcast_pattern()];
    let channels = [
        cluster.channels.request.clone(),
        cluster.channels.response.clone(),
        cluster.channels.specific_response.clone(),
    ];
    let backoff_max = cluster
        .config
        .reconnect_backoff_max_ms
        .max(RECONNECT_BACKOFF_MIN_MS);
    let mut backoff = RECONNECT_BACKOFF_MIN_MS;
    let in_txs = Arc::new(in_txs);
    loop {
        match connection::connect(&url, &patterns, &channels).await {
            Ok((sub, publisher)) => {
                backoff = RECONNECT_BACKOFF_MIN_MS;
                add(&cluster.stats.connections);
                cluster.stats.set_state(AdapterState::Up);
                tracing::info!(uid = %cluster.uid, prefix = %cluster.config.prefix, "cluster: subscribed to Redis");
                let closed = serve(&cluster, sub, publisher, &mut out_rx, &in_txs).await;
                cluster.stats.set_state(AdapterState::Down);
                if closed {
                    return;
                }
                tracing::warn!(
                    "cluster: lost the Redis connection; local delivery continues, retrying"
                );
            }
            Err(e) => {
                cluster.stats.set_state(AdapterState::Down);
                tracing::warn!(error = %e, retry_in_ms = backoff, "cluster: Redis unreachable; local delivery continues");
            }
        }
        // Wait, dropping (and counting) what the shards hand over meanwhile.
        let sleep = tokio::time::sleep(Duration::from_millis(backoff));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                msg = out_rx.recv() => match msg {
                    Some(_) => add(&cluster.stats.publish_dropped),
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(backoff_max);
    }
}

/// Serves one connection until it is lost (false) or every shard is gone (true).
async fn serve(
    cluster: &Arc<Cluster>,
    mut sub: Subscriber,
    publisher: Publisher,
    out_rx: &mut mpsc::Receiver<Outbound>,
    in_txs: &Arc<Vec<mpsc::Sender<Inbound>>>,
) -> bool {
    loop {
        tokio::select! {
            msg = sub.next() => match msg {
                Some(m) => on_message(cluster, &publisher, in_txs, m),
                None => return false,
            },
            out = out_rx.recv() => match out {
                Some(Outbound::Broadcast { selector, data, attachments }) => {
                    let Ok(json) = serde_json::from_str::<Json>(&data) else {
                        add(&cluster.stats.publish_dropped);
                        continue;
                    };
                    let Value::Array(items) = codec::json_to_msgpack(&json, &attachments) else {
                        add(&cluster.stats.publish_dropped);
                        continue;
                    };
                    let bytes = codec::encode_broadcast(&cluster.uid, NAMESPACE, items, &selector);
                    let channel = cluster.channels.broadcast_channel(&selector.rooms);
                    // A Redis that accepts the connection but stops answering is treated as lost.
                    let timeout = Duration::from_millis(cluster.config.request_timeout_ms);
                    match tokio::time::timeout(timeout, publisher.publish(&channel, &bytes)).await {
                        Ok(Ok(_)) => add(&cluster.stats.published),
                        Ok(Err(e)) => {
                            add(&cluster.stats.publish_dropped);
                            tracing::warn!(error = %e, "cluster: PUBLISH failed");
                            return false;
                        }
                        Err(_) => {
                            add(&cluster.stats.publish_dropped);
                            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "cluster: PUBLISH not answered");
                            return false;
                        }
                    }
                }
                Some(Outbound::Request(req)) => start_own_request(cluster, &publisher, in_txs, req),
                None => return true,
            },
        }
    }
}

/// Sends a request of this node: the local part (fetchSockets) is queued on the shards now, in channel order;
/// counting the other nodes, publishing and waiting for their answers happen in a task of their own.
fn start_own_request(
    cluster: &Arc<Cluster>,
    publisher: &Publisher,
    in_txs: &Arc<Vec<mpsc::Sender<Inbound>>>,
    req: OwnRequest,
) {
    let OwnRequest { kind, reply } = req;
    let local = match &kind {
        OwnKind::Fetch(selector, true) => {
            dispatch(cluster, in_txs, ShardOp::Fetch(selector.clone()))
        }
        OwnKind::Fetch(_, false) | OwnKind::ServerSideEmit(..) => Vec::new(),
    };
    let cluster = cluster.clone();
    let publisher = publisher.clone();
    tokio::spawn(async move {
        let result = own_request(&cluster, &publisher, kind, local).await;
        let _ = reply.send(result);
    });
}

async fn own_request(
    cluster: &Arc<Cluster>,
    publisher: &Publisher,
    kind: OwnKind,
    local: Vec<oneshot::Receiver<ShardAnswer>>,
) -> Result<Answers, ClusterError> {
    let timeout = Duration::from_millis(cluster.config.request_timeout_ms);
    let redis_timeout = Duration::from_millis(connection::CONNECT_TIMEOUT_MS);
    let request_id = new_uid();
    let (payload, fetch, wants_answers) = match &kind {
        OwnKind::Fetch(selector, _) => (
            codec::encode_fetch_request(&cluster.uid, &request_id, selector),
            true,
            true,
        ),
        OwnKind::ServerSideEmit(data, ack) => (
            codec::encode_server_side_emit(&cluster.uid, ack.then_some(request_id.as_str()), data),
            false,
            *ack,
        ),
    };
    // This node's own part first (the adapter's fetchSockets lists the local sockets first).
    let mut responses = Vec::new();
    for a in collect(cluster, local).await {
        if let ShardAnswer::Sockets(v) = a {
            responses.extend(v.into_iter().map(|s| {
                serde_json::json!({"id": s.id, "handshake": s.handshake, "rooms": s.rooms, "data": s.data})
            }));
        }
    }
    let request_channel = cluster.channels.request.as_str();
    let mut waiting = None;
    if wants_answers {
        // The adapter's serverCount() - 1: every other node subscribed to the request channel.
        let nodes =
            match tokio::time::timeout(redis_timeout, publisher.numsub(request_channel)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(ClusterError::Redis(e.0)),
                Err(_) => return Err(ClusterError::Redis("PUBSUB NUMSUB not answered".into())),
            };
        let expected = usize::try_from(nodes).unwrap_or(0).saturating_sub(1);
        if expected == 0 {
            return Ok(Answers {
                responses,
                ..Answers::default()
            });
        }
        let (done, rx) = oneshot::channel();
        let mut own = cluster.own.lock().map_err(|_| ClusterError::Unavailable)?;
        if own.len() >= OWN_REQUESTS_MAX {
            return Err(ClusterError::TooManyRequests);
        }
        own.insert(
            request_id.clone(),
            OwnWaiting {
                fetch,
                expected,
                answers: 0,
                responses: Vec::new(),
                done: Some(done),
            },
        );
        waiting = Some((rx, expected));
    }
    let published = tokio::time::timeout(
        redis_timeout,
        publisher.publish(request_channel, payload.as_bytes()),
    )
    .await;
    let failed = match published {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(ClusterError::Redis(e.0)),
        Err(_) => Some(ClusterError::Redis("PUBLISH not answered".into())),
    };
    let take = |cluster: &Cluster| {
        cluster
            .own
            .lock()
            .ok()
            .and_then(|mut own| own.remove(&request_id))
    };
    if let Some(e) = failed {
        take(cluster);
        return Err(e);
    }
    let Some((rx, expected)) = waiting else {
        return Ok(Answers {
            responses,
            ..Answers::default()
        });
    };
    // Timed out or not: what arrived by now (the callers decide whether a missing node is an error).
    let _ = tokio::time::timeout(timeout, rx).await;
    let (received, late) = take(cluster).map_or((0, Vec::new()), |w| (w.answers, w.responses));
    responses.extend(late);
    Ok(Answers {
        responses,
        received: received.min(expected),
        expected,
    })
}

/// A message on a response channel: an answer to a request of this node (others' are not for it).
fn on_response(cluster: &Cluster, payload: &[u8]) {
    let Ok((id, response)) = codec::decode_response(payload) else {
        // Answers to other nodes' requests may be MessagePack of any shape (BROADCAST_ACK): not ours to judge.
        return;
    };
    let Ok(mut own) = cluster.own.lock() else {
        return;
    };
    let Some(w) = own.get_mut(&id) else {
        return;
    };
    if w.fetch {
        let Some(sockets) = response.get("sockets").and_then(Json::as_array) else {
            add(&cluster.stats.malformed);
            return;
        };
        w.responses.extend(sockets.iter().cloned());
    } else {
        w.responses
            .push(response.get("data").cloned().unwrap_or(Json::Null));
    }
    w.answers += 1;
    if w.answers >= w.expected
        && let Some(done) = w.done.take()
    {
        let _ = done.send(());
    }
}

fn on_message(
    cluster: &Arc<Cluster>,
    publisher: &Publisher,
    in_txs: &Arc<Vec<mpsc::Sender<Inbound>>>,
    m: ChannelMessage,
) {
    let stats = &cluster.stats;
    if m.payload.len() > cluster.config.message_bytes_max {
        add(&stats.oversized);
        tracing::warn!(channel = %m.channel, bytes = m.payload.len(), limit = cluster.config.message_bytes_max, "cluster: channel message too large, dropped");
        return;
    }
    if m.from_pattern || m.channel.starts_with(&cluster.channels.broadcast) {
        let b = match codec::decode_broadcast(&m.payload) {
            Ok(b) => b,
            Err(e) => {
                add(&stats.malformed);
                tracing::warn!(channel = %m.channel, error = %e, "cluster: malformed broadcast dropped");
                return;
            }
        };
        if b.uid == cluster.uid {
            add(&stats.own_dropped);
            return;
        }
        if b.nsp != NAMESPACE {
            return;
        }
        let event = match codec::socket_event(&b.data) {
            Ok(e) => e,
            Err(e) => {
                add(&stats.malformed);
                tracing::warn!(error = %e, "cluster: malformed broadcast dropped");
                return;
            }
        };
        add(&stats.broadcasts_received);
        let delivery = Arc::new(Delivery {
            selector: b.selector,
            event,
        });
        for tx in in_txs.iter() {
            if tx.try_send(Inbound::Broadcast(delivery.clone())).is_err() {
                add(&stats.inbound_full);
            }
        }
        return;
    }
    if m.channel == cluster.channels.response || m.channel == cluster.channels.specific_response {
        on_response(cluster, &m.payload);
        return;
    }
    if m.channel != cluster.channels.request {
        return;
    }
    let request = match codec::decode_request(&m.payload) {
        Ok(r) => r,
        Err(e) => {
            add(&stats.malformed);
            tracing::warn!(error = %e, "cluster: malformed request dropped");
            return;
        }
    };
    if stats.in_flight.load(Ordering::Relaxed) >= REQUESTS_IN_FLIGHT_MAX {
        add(&stats.requests_dropped);
        tracing::warn!(
            limit = REQUESTS_IN_FLIGHT_MAX,
            "cluster: too many requests in flight, one ignored"
        );
        return;
    }
    // The shards' parts are queued now, in channel order (a socketsJoin then a broadcast to that room reach each
    // shard in that order); only waiting for the answers happens in a task of its own.
    let pending = dispatch_request(cluster, in_txs, request);
    add(&stats.requests_handled);
    if matches!(pending, Pending::Nothing) {
        return;
    }
    stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let cluster = cluster.clone();
    let publisher = publisher.clone();
    tokio::spawn(async move {
        finish_request(&cluster, &publisher, pending).await;
        cluster.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Queues `op` on every shard; the receivers of their answers.
fn dispatch(
    cluster: &Cluster,
    in_txs: &[mpsc::Sender<Inbound>],
    op: ShardOp,
) -> Vec<oneshot::Receiver<ShardAnswer>> {
    let op = Arc::new(op);
    let mut waiting = Vec::with_capacity(in_txs.len());
    for tx in in_txs {
        let (reply, rx) = oneshot::channel();
        match tx.try_send(Inbound::Op {
            op: op.clone(),
            reply,
        }) {
            Ok(()) => waiting.push(rx),
            Err(_) => add(&cluster.stats.inbound_full),
        }
    }
    waiting
}

/// The shards' answers; those that do not come within the request timeout are left out.
async fn collect(
    cluster: &Cluster,
    waiting: Vec<oneshot::Receiver<ShardAnswer>>,
) -> Vec<ShardAnswer> {
    let timeout = Duration::from_millis(cluster.config.request_timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(waiting.len());
    for rx in waiting {
        if let Ok(Ok(a)) = tokio::time::timeout_at(deadline, rx).await {
            out.push(a);
        }
    }
    out
}

async fn respond(publisher: &Publisher, channel: &str, payload: &[u8]) {
    let timeout = Duration::from_millis(connection::CONNECT_TIMEOUT_MS);
    match tokio::time::timeout(timeout, publisher.publish(channel, payload)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cluster: response not published"),
        Err(_) => tracing::warn!("cluster: response not answered by Redis"),
    }
}

/// What is left to do for a request once the shards' parts are queued.
enum Pending {
    /// Nothing (fire-and-forget requests, requests of this node, requests without a listener).
    Nothing,
    /// Collect the answers, then publish the response `make` builds from them.
    Answer {
        waiting: Vec<oneshot::Receiver<ShardAnswer>>,
        make: fn(&str, Vec<ShardAnswer>) -> Option<Vec<u8>>,
        request_id: String,
    },
    /// Publish this now.
    Publish(Vec<u8>),
    /// A BROADCAST with acks: the client count, then each acknowledgement.
    Acks {
        waiting: Vec<oneshot::Receiver<ShardAnswer>>,
        acks: mpsc::UnboundedReceiver<Value>,
        timeout: Duration,
        request_id: String,
    },
}

fn make_ids(id: &str, answers: Vec<ShardAnswer>) -> Option<Vec<u8>> {
    let mut ids = Vec::new();
    for a in answers {
        if let ShardAnswer::Ids(v) = a {
            ids.extend(v);
        }
    }
    Some(codec::encode_sockets_response(id, &ids).into_bytes())
}

fn make_rooms(id: &str, answers: Vec<ShardAnswer>) -> Option<Vec<u8>> {
    let mut rooms = BTreeSet::new();
    for a in answers {
        if let ShardAnswer::Rooms(v) = a {
            rooms.extend(v);
        }
    }
    let rooms: Vec<String> = rooms.into_iter().collect();
    Some(codec::encode_rooms_response(id, &rooms).into_bytes())
}

fn make_fetch(id: &str, answers: Vec<ShardAnswer>) -> Option<Vec<u8>> {
    let mut sockets = Vec::new();
    for a in answers {
        if let ShardAnswer::Sockets(v) = a {
            sockets.extend(v);
        }
    }
    Some(codec::encode_fetch_response(id, &sockets).into_bytes())
}

fn make_done(id: &str, answers: Vec<ShardAnswer>) -> Option<Vec<u8>> {
    let found: usize = answers
        .iter()
        .map(|a| match a {
            ShardAnswer::Count(n) => *n,
            _ => 0,
        })
        .sum();
    (found > 0).then(|| codec::encode_done_response(id).into_bytes())
}

fn dispatch_request(
    cluster: &Arc<Cluster>,
    in_txs: &[mpsc::Sender<Inbound>],
    req: codec::Request,
) -> Pending {
    let own = req.uid.as_deref() == Some(cluster.uid.as_str());
    let answer =
        |op: ShardOp, make: fn(&str, Vec<ShardAnswer>) -> Option<Vec<u8>>, id: Option<String>| {
            match (id, own) {
                (Some(request_id), false) => Pending::Answer {
                    waiting: dispatch(cluster, in_txs, op),
                    make,
                    request_id,
                },
                _ => Pending::Nothing,
            }
        };
    let apply = |op: ShardOp| {
        // Applied by every node, the requesting one included (it reads its own request back, as Node's adapter).
        drop(dispatch(cluster, in_txs, op));
        Pending::Nothing
    };
    match req.kind {
        RequestKind::Sockets { rooms } => answer(
            ShardOp::Ids(Selector {
                rooms,
                except: Vec::new(),
            }),
            make_ids,
            req.request_id,
        ),
        RequestKind::AllRooms => answer(ShardOp::Rooms, make_rooms, req.request_id),
        RequestKind::Fetch { selector } => {
            answer(ShardOp::Fetch(selector), make_fetch, req.request_id)
        }
        RequestKind::Join { selector, rooms } => apply(ShardOp::Join(selector, rooms)),
        RequestKind::Leave { selector, rooms } => apply(ShardOp::Leave(selector, rooms)),
        RequestKind::Disconnect { selector, close } => apply(ShardOp::Disconnect(selector, close)),
        RequestKind::JoinOne { sid, room } => {
            one(cluster, in_txs, req.request_id, sid, OneAction::Join(room))
        }
        RequestKind::LeaveOne { sid, room } => {
            one(cluster, in_txs, req.request_id, sid, OneAction::Leave(room))
        }
        RequestKind::DisconnectOne { sid, close } => one(
            cluster,
            in_txs,
            req.request_id,
            sid,
            OneAction::Disconnect(close),
        ),
        RequestKind::ServerSideEmit { data } => {
            if own {
                return Pending::Nothing;
            }
            let Some(name) = data.first().and_then(Json::as_str) else {
                return Pending::Nothing;
            };
            let answer = if name == INFO_EVENT {
                Some(serde_json::json!({
                    "uid": cluster.uid,
                    "version": env!("CARGO_PKG_VERSION"),
                    "state": cluster.stats.state().name(),
                }))
            } else if let Some(handler) = cluster.handlers.get(name) {
                handler(&data[1..])
            } else {
                tracing::debug!(
                    event = name,
                    "cluster: serverSideEmit without a listener here"
                );
                None
            };
            match (req.request_id, answer) {
                (Some(id), Some(answer)) => {
                    Pending::Publish(codec::encode_server_side_ack(&id, &answer).into_bytes())
                }
                _ => Pending::Nothing,
            }
        }
        RequestKind::Broadcast {
            data,
            selector,
            flags,
        } => {
            let (Some(request_id), false) = (req.request_id, own) else {
                return Pending::Nothing;
            };
            let event = match codec::socket_event(&data) {
                Ok(e) => e,
                Err(_) => {
                    add(&cluster.stats.malformed);
                    return Pending::Nothing;
                }
            };
            let timeout_ms = flags
                .get("timeout")
                .and_then(Value::as_i64)
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(cluster.config.request_timeout_ms);
            let timeout = Duration::from_millis(timeout_ms);
            let (acks_tx, acks) = mpsc::unbounded_channel();
            let op = ShardOp::BroadcastAck {
                selector,
                event,
                timeout,
                acks: acks_tx,
            };
            Pending::Acks {
                waiting: dispatch(cluster, in_txs, op),
                acks,
                timeout,
                request_id,
            }
        }
    }
}

fn one(
    cluster: &Arc<Cluster>,
    in_txs: &[mpsc::Sender<Inbound>],
    request_id: Option<String>,
    sid: String,
    action: OneAction,
) -> Pending {
    let waiting = dispatch(cluster, in_txs, ShardOp::One { sid, action });
    match request_id {
        Some(request_id) => Pending::Answer {
            waiting,
            make: make_done,
            request_id,
        },
        None => Pending::Nothing,
    }
}

async fn finish_request(cluster: &Arc<Cluster>, publisher: &Publisher, pending: Pending) {
    let response = cluster.channels.response.as_str();
    match pending {
        Pending::Nothing => {}
        Pending::Publish(bytes) => respond(publisher, response, &bytes).await,
        Pending::Answer {
            waiting,
            make,
            request_id,
        } => {
            let answers = collect(cluster, waiting).await;
            if let Some(bytes) = make(&request_id, answers) {
                respond(publisher, response, &bytes).await;
            }
        }
        Pending::Acks {
            waiting,
            mut acks,
            timeout,
            request_id,
        } => {
            let mut count = 0;
            for a in collect(cluster, waiting).await {
                if let ShardAnswer::Count(n) = a {
                    count += n;
                }
            }
            respond(
                publisher,
                response,
                codec::encode_client_count(&request_id, count).as_bytes(),
            )
            .await;
            let deadline = tokio::time::Instant::now() + timeout + Duration::from_millis(100);
            let mut left = count;
            while left > 0 {
                match tokio::time::timeout_at(deadline, acks.recv()).await {
                    Ok(Some(packet)) => {
                        left -= 1;
                        respond(
                            publisher,
                            response,
                            &codec::encode_broadcast_ack(&request_id, packet),
                        )
                        .await;
                    }
                    _ => break,
                }
            }
        }
    }
}
