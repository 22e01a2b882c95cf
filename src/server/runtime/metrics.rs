//! Counters and gauges per shard, rendered as Prometheus text by `GET /metrics`.
//!
//! Each shard writes only its own [`ShardMetrics`] (relaxed atomics, no contention); any shard may read all of
//! them to render the page. This is the one piece of state shared between shards, and it is write-once-per-owner
//! statistics, never control flow.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Kinds of protocol errors counted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    /// Malformed HTTP request (400/413/431).
    Http,
    /// Websocket protocol violation (bad frame, oversized message, truncated frame).
    WebSocket,
    /// Invalid Engine.IO packet or payload.
    EngineIo,
    /// Invalid Socket.IO packet.
    SocketIo,
    /// Unknown or closed session id.
    UnknownSid,
}

const ERROR_KINDS: [(ProtocolErrorKind, &str); 5] = [
    (ProtocolErrorKind::Http, "http"),
    (ProtocolErrorKind::WebSocket, "websocket"),
    (ProtocolErrorKind::EngineIo, "engineio"),
    (ProtocolErrorKind::SocketIo, "socketio"),
    (ProtocolErrorKind::UnknownSid, "unknown_sid"),
];

/// Statistics of one shard.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    /// Open TCP connections.
    pub connections: AtomicI64,
    /// Engine.IO sessions whose current transport is polling.
    pub sessions_polling: AtomicI64,
    /// Engine.IO sessions whose current transport is websocket.
    pub sessions_websocket: AtomicI64,
    /// Connected Socket.IO sockets (one per namespace per session).
    pub sockets: AtomicI64,
    /// Engine.IO packets received.
    pub packets_in: AtomicU64,
    /// Engine.IO packets sent.
    pub packets_out: AtomicU64,
    /// Bytes read from sockets.
    pub bytes_in: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Writes of websocket frames to sockets (a corked send or a writer task's write carries one or more frames).
    pub websocket_sends: AtomicU64,
    /// Direct sends of corked frames the socket did not take whole (full send buffer): the rest went to the writer.
    pub websocket_sends_short: AtomicU64,
    /// Sessions closed because their outgoing queue exceeded `socket_queued_bytes_max`.
    pub slow_reader_disconnects: AtomicU64,
    /// HTTP requests served.
    pub http_requests: AtomicU64,
    /// Connections handed over to the shard owning their session.
    pub connections_handed_over: AtomicU64,
    /// Cross-shard messages that could not be queued (queue full).
    pub mesh_full: AtomicU64,
    protocol_errors: [AtomicU64; 5],
    refusals: [AtomicU64; 5],
    panics: [AtomicU64; 4],
}

/// Why a connection, handshake or session was refused (`shardcast_refusals_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A handshake while the shard holds `sessions_per_shard_max` sessions (503).
    Sessions,
    /// More handshakes in one second on one TCP connection than `handshakes_per_connection_per_s_max` (503, connection closed).
    Handshakes,
    /// A connection accepted while the shard holds `connections_per_shard_max` (closed at once).
    Connections,
    /// A connection for another shard's session refused there: shard full or no such session.
    HandOver,
    /// A session closed for sending noops or pings faster than `heartbeats_per_session_per_s_max`.
    HeartbeatFlood,
}

const REFUSALS: [(Refusal, &str); 5] = [
    (Refusal::Sessions, "sessions"),
    (Refusal::Handshakes, "handshakes"),
    (Refusal::Connections, "connections"),
    (Refusal::HandOver, "hand_over"),
    (Refusal::HeartbeatFlood, "heartbeat_flood"),
];

/// Where a panic was caught (`shardcast_panics_total{where}`): it ended one connection, socket or callback, never
/// the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicSite {
    /// A connection task.
    Connection,
    /// A timer callback.
    Timer,
    /// A cross-shard message.
    Mesh,
    /// An application handler (event handler, connect handler, its task).
    Handler,
}

const PANIC_SITES: [(PanicSite, &str); 4] = [
    (PanicSite::Connection, "connection"),
    (PanicSite::Timer, "timer"),
    (PanicSite::Mesh, "mesh"),
    (PanicSite::Handler, "handler"),
];

impl ShardMetrics {
    /// Count one protocol error.
    pub fn protocol_error(&self, kind: ProtocolErrorKind) {
        let i = ERROR_KINDS
            .iter()
            .position(|(k, _)| *k == kind)
            .unwrap_or(0);
        self.protocol_errors[i].fetch_add(1, Relaxed);
    }
    /// Count one refusal.
    pub fn refusal(&self, why: Refusal) {
        let i = REFUSALS.iter().position(|(k, _)| *k == why).unwrap_or(0);
        self.refusals[i].fetch_add(1, Relaxed);
    }
    /// Refusals counted so far for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        let i = REFUSALS.iter().position(|(k, _)| *k == why).unwrap_or(0);
        self.refusals[i].load(Relaxed)
    }
    /// Count one caught panic.
    pub fn panic_caught(&self, site: PanicSite) {
        let i = PANIC_SITES
            .iter()
            .position(|(k, _)| *k == site)
            .unwrap_or(0);
        self.panics[i].fetch_add(1, Relaxed);
    }
    /// Add to a counter (helper that keeps call sites short).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
    /// Add to a gauge.
    pub fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Relaxed);
    }
}

/// Name, help text and reader of a gauge.
type Gauge = (&'static str, &'static str, fn(&ShardMetrics) -> i64);
/// Name, help text and reader of a counter.
type Counter = (&'static str, &'static str, fn(&ShardMetrics) -> u64);

/// Render every shard's statistics in the Prometheus text exposition format.
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(4096);
    let gauges: [Gauge; 2] = [
        ("shardcast_connections", "Open TCP connections.", |m| {
            m.connections.load(Relaxed)
        }),
        (
            "shardcast_sockets",
            "Connected Socket.IO sockets (namespace connections).",
            |m| m.sockets.load(Relaxed),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(m));
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_sessions Engine.IO sessions by transport.\n# TYPE shardcast_sessions gauge"
    );
    for (i, m) in shards.iter().enumerate() {
        let _ = writeln!(
            out,
            "shardcast_sessions{{shard=\"{i}\",transport=\"polling\"}} {}",
            m.sessions_polling.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "shardcast_sessions{{shard=\"{i}\",transport=\"websocket\"}} {}",
            m.sessions_websocket.load(Relaxed)
        );
    }
    let counters: [Counter; 10] = [
        (
            "shardcast_packets_in_total",
            "Engine.IO packets received.",
            |m| m.packets_in.load(Relaxed),
        ),
        (
            "shardcast_packets_out_total",
            "Engine.IO packets sent.",
            |m| m.packets_out.load(Relaxed),
        ),
        (
            "shardcast_bytes_in_total",
            "Bytes read from client sockets.",
            |m| m.bytes_in.load(Relaxed),
        ),
        (
            "shardcast_bytes_out_total",
            "Bytes written to client sockets.",
            |m| m.bytes_out.load(Relaxed),
        ),
        (
            "shardcast_websocket_sends_total",
            "Writes of websocket frames to client sockets (each carries one or more frames).",
            |m| m.websocket_sends.load(Relaxed),
        ),
        (
            "shardcast_websocket_sends_short_total",
            "Direct sends of corked frames left unfinished by a full socket send buffer (the writer task wrote the rest).",
            |m| m.websocket_sends_short.load(Relaxed),
        ),
        (
            "shardcast_slow_reader_disconnects_total",
            "Sessions closed because their send queue exceeded socket_queued_bytes_max.",
            |m| m.slow_reader_disconnects.load(Relaxed),
        ),
        (
            "shardcast_http_requests_total",
            "HTTP requests served.",
            |m| m.http_requests.load(Relaxed),
        ),
        (
            "shardcast_connections_handed_over_total",
            "Connections handed to the shard that owns their session.",
            |m| m.connections_handed_over.load(Relaxed),
        ),
        (
            "shardcast_mesh_full_total",
            "Cross-shard messages refused because the queue was full.",
            |m| m.mesh_full.load(Relaxed),
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (i, m) in shards.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", get(m));
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_protocol_errors_total Protocol errors by kind.\n# TYPE shardcast_protocol_errors_total counter"
    );
    for (i, m) in shards.iter().enumerate() {
        for (k, (_, label)) in ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardcast_protocol_errors_total{{shard=\"{i}\",kind=\"{label}\"}} {}",
                m.protocol_errors[k].load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_refusals_total Connections, handshakes and sessions refused by a bound, by reason.\n# TYPE shardcast_refusals_total counter"
    );
    for (i, m) in shards.iter().enumerate() {
        for (k, (_, label)) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardcast_refusals_total{{shard=\"{i}\",reason=\"{label}\"}} {}",
                m.refusals[k].load(Relaxed)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP shardcast_panics_total Panics caught (each ended one connection, socket or callback), by site.\n# TYPE shardcast_panics_total counter"
    );
    for (i, m) in shards.iter().enumerate() {
        for (k, (_, label)) in PANIC_SITES.iter().enumerate() {
            let _ = writeln!(
                out,
                "shardcast_panics_total{{shard=\"{i}\",site=\"{label}\"}} {}",
                m.panics[k].load(Relaxed)
            );
        }
    }
    out
}
