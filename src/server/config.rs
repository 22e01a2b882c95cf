//! Server configuration: every limit is a named field with its unit last and a documented default.

use std::net::SocketAddr;

/// Everything the server needs to start. `ServerConfig::default()` is a sensible production start point.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address every shard binds with `SO_REUSEPORT`. Default `0.0.0.0:3000`.
    pub listen: SocketAddr,
    /// Number of shards (one glommio executor per shard). Default: [`default_shards`], the CPUs this process may use
    /// minus one (at least 1), which leaves a CPU to the IO shard and to whatever else runs on the machine.
    pub shards: usize,
    /// Pin shard `i` to CPU `i % cpus`. Default `false`: pinned shards collapse in latency as soon as another process
    /// (a sidecar, a load generator) runs on their cores; set it on hosts dedicated to shardcast.
    pub pin_shards: bool,
    /// Slice each shard thread asks the kernel's fair scheduler for, microseconds (`sched_setattr`, Linux 6.12+;
    /// clamped to 100..=100 000; `0`: the kernel's default). A short slice makes a shard that wakes preempt a thread
    /// running a long one (the load generator, a build, the IO thread's commit) instead of waiting for it, without
    /// raising its share of the CPU. Default [`SHARD_SLICE_US_DEFAULT`].
    pub shard_slice_us: u64,
    /// Slice the IO shard's thread (`shardcast-io`: the embedded store's commits and fsyncs) asks for, microseconds,
    /// as [`ServerConfig::shard_slice_us`]; applied by `serve`. Default [`IO_SLICE_US_DEFAULT`].
    pub io_slice_us: u64,
    /// URL paths that serve Socket.IO (Engine.IO underneath). Each ends with `/`. Default `["/socket/", "/socket.io/"]`.
    pub socketio_paths: Vec<String>,
    /// Optional path of a raw Engine.IO echo endpoint (used by the conformance server). Default `None`.
    pub engineio_echo_path: Option<String>,
    /// Engine.IO `pingInterval`. Default 25 000 ms.
    pub ping_interval_ms: u64,
    /// Engine.IO `pingTimeout`. Default 20 000 ms.
    pub ping_timeout_ms: u64,
    /// Time a client has to send its first Socket.IO CONNECT. Default 45 000 ms.
    pub connect_timeout_ms: u64,
    /// Engine.IO `maxPayload`: the largest polling POST body / websocket message accepted. Default 1 000 000 bytes.
    pub payload_bytes_max: usize,
    /// Maximum number of HTTP request headers. Default 64.
    pub http_headers_count_max: usize,
    /// Maximum size of the request line plus headers. Default 16 KiB.
    pub http_head_bytes_max: usize,
    /// Maximum length of the request target (path and query). Default 8 KiB.
    pub http_uri_bytes_max: usize,
    /// Maximum request body for non-Engine.IO routes (REST). Default 1 MiB.
    pub http_body_bytes_max: usize,
    /// Maximum websocket frame size. Default 1 MiB.
    pub ws_frame_bytes_max: usize,
    /// Maximum number of open TCP connections per shard; extra connections are closed at once. Default 20 000.
    pub connections_per_shard_max: usize,
    /// Bytes that may wait in one session's outgoing queue before the session is closed as a slow reader.
    /// Default 512 KiB.
    pub socket_queued_bytes_max: usize,
    /// Capacity of each cross-shard queue (messages). Default 4096.
    pub mesh_queue_len: usize,
    /// Origins allowed by CORS; `*` allows any origin. Default `["*"]`.
    pub cors_allowed_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to origins listed by name in `cors_allowed_origins` (never to
    /// an origin allowed only by `*`, which gets `Access-Control-Allow-Origin: *`). Default `true`.
    pub cors_credentials: bool,
    /// Resolution of the per-shard timer wheel. Default 10 ms.
    pub timer_tick_ms: u64,
    /// Upper bound on graceful shutdown (close sessions, drain writes). Default 3 000 ms.
    pub shutdown_grace_ms: u64,
    /// Maximum Socket.IO namespaces one session may join. Default 32.
    pub namespaces_per_session_max: usize,
    /// Maximum binary attachments in one Socket.IO packet. Default 64.
    pub attachments_per_packet_max: usize,
    /// Maximum pending server-to-client acks per socket. Default 1024.
    pub acks_pending_per_socket_max: usize,
    /// Bearer token that `/metrics` requires (`Authorization: Bearer <token>`, from any address). `None` (the default):
    /// `/metrics` answers only clients connecting from a loopback address, 403 to every other.
    pub metrics_token: Option<String>,
    /// Time a binary Socket.IO packet may wait for its attachments after its text arrived; then the session is
    /// closed and what it held is freed. (Their bytes are bounded by `payload_bytes_max`, counted as they arrive.)
    /// Default 10 000 ms.
    pub partial_packet_timeout_ms: u64,
    /// Engine.IO sessions one shard holds at most; a handshake past it gets 503 (counted in
    /// `shardcast_refusals_total{reason="sessions"}`). Default 20 000 (as many as connections).
    pub sessions_per_shard_max: usize,
    /// Engine.IO handshakes one TCP connection may make per second (a keep-alive connection of a client that
    /// reconnects now and then never meets it); past it the request gets 503 and the connection is closed. Default 16.
    pub handshakes_per_connection_per_s_max: usize,
    /// Engine.IO noop and ping packets a session may send per second (averaged over one second, burst of the same
    /// size); past it the session is closed as a flood. Default 100.
    pub heartbeats_per_session_per_s_max: u32,
    /// Bytes of attachments that all the partial binary packets of one shard may hold together; the session whose
    /// attachment goes past it is closed. Default 128 MiB.
    pub partial_packets_bytes_per_shard_max: usize,
    /// Pause between the 101 answer of an Engine.IO v3 websocket handshake and its open packet. Default 0. The
    /// official v3 test suite listens for the open packet one microtask after the websocket's `open` event, so it
    /// misses an open packet that arrives in the same read as the 101; the conformance server sets 100 ms.
    pub eio3_websocket_open_delay_ms: u64,
}

/// Default of [`ServerConfig::shard_slice_us`], chosen by measurement (README, "Latency on shared cores").
pub const SHARD_SLICE_US_DEFAULT: u64 = 0;
/// Default of [`ServerConfig::io_slice_us`] (README, "Latency on shared cores").
pub const IO_SLICE_US_DEFAULT: u64 = 0;

/// The default shard count: the CPUs this process may run on (`std::thread::available_parallelism`, which honours the
/// affinity mask and a cgroup CPU quota) minus one, at least 1. Measured on 2 shared cores with the load generator on
/// the same machine (README, "Benchmarks"): one shard had the lowest CPU per delivery and the best tail latency.
pub fn default_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .saturating_sub(1)
        .max(1)
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 3000)),
            shards: default_shards(),
            pin_shards: false,
            shard_slice_us: SHARD_SLICE_US_DEFAULT,
            io_slice_us: IO_SLICE_US_DEFAULT,
            socketio_paths: vec!["/socket/".into(), "/socket.io/".into()],
            engineio_echo_path: None,
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            connect_timeout_ms: 45_000,
            payload_bytes_max: 1_000_000,
            http_headers_count_max: 64,
            http_head_bytes_max: 16 * 1024,
            http_uri_bytes_max: 8 * 1024,
            http_body_bytes_max: 1024 * 1024,
            ws_frame_bytes_max: 1024 * 1024,
            connections_per_shard_max: 20_000,
            socket_queued_bytes_max: 512 * 1024,
            mesh_queue_len: 4096,
            cors_allowed_origins: vec!["*".into()],
            cors_credentials: true,
            timer_tick_ms: 10,
            shutdown_grace_ms: 3_000,
            namespaces_per_session_max: 32,
            attachments_per_packet_max: 64,
            acks_pending_per_socket_max: 1024,
            metrics_token: None,
            partial_packet_timeout_ms: 10_000,
            sessions_per_shard_max: 20_000,
            handshakes_per_connection_per_s_max: 16,
            heartbeats_per_session_per_s_max: 100,
            partial_packets_bytes_per_shard_max: 128 * 1024 * 1024,
            eio3_websocket_open_delay_ms: 0,
        }
    }
}

impl ServerConfig {
    /// The configuration of the conformance server (issue item 8): pingInterval 300 ms, pingTimeout 200 ms,
    /// maxPayload 1 000 000, connectTimeout 1 000 ms, raw Engine.IO echo at `/engine.io/`, Socket.IO at `/socket.io/`,
    /// shards not pinned.
    pub fn conformance() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            // Timing cases of a few hundred milliseconds: let the scheduler run the shard on any idle CPU.
            pin_shards: false,
            socketio_paths: vec!["/socket.io/".into()],
            engineio_echo_path: Some("/engine.io/".into()),
            ping_interval_ms: 300,
            ping_timeout_ms: 200,
            connect_timeout_ms: 1_000,
            payload_bytes_max: 1_000_000,
            // the suites' heartbeat windows are a few hundred milliseconds: keep timer rounding negligible
            timer_tick_ms: 1,
            eio3_websocket_open_delay_ms: 100,
            ..ServerConfig::default()
        }
    }
}
