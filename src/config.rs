//! The configuration of `shardcast serve` and `shardcast token`: a TOML file, then `SHARDCAST_*` environment
//! variables, then command-line flags, each layer overriding the one before (defaults < file < environment < flags).
//!
//! Every option is listed in [`OPTIONS`] with its file key, its environment variable and its default; the README's
//! "Configuration" section is the same table. The `[orm]` section is [`OrmConfig`] (its own `SHARDCAST_*` variables,
//! see [`crate::orm::config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::orm::OrmConfig;
use crate::realtime::auth::{
    AuthConfig, JwtAlgorithm, LEEWAY_S_DEFAULT, ROOM_TOKEN_TTL_S_DEFAULT, Secret,
    TOKEN_BYTES_MAX_DEFAULT,
};
use crate::realtime::protocol::SessionConfig;
use crate::server::ServerConfig;

/// Where `shardcast serve` listens unless told otherwise: loopback only, so a first run exposes nothing.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:3000";

/// One option: its key in the file (`section.name`), its environment variable, and its default as documented.
#[derive(Debug, Clone, Copy)]
pub struct OptionDoc {
    /// `section.name` in the TOML file.
    pub key: &'static str,
    /// The environment variable that overrides it.
    pub env: &'static str,
    /// The default, as text.
    pub default: &'static str,
    /// What it does.
    pub doc: &'static str,
}

macro_rules! options {
    ($( $key:literal, $env:literal, $default:literal, $doc:literal; )*) => {
        /// Every option of the `[server]`, `[auth]` and `[realtime]` sections.
        pub const OPTIONS: &[OptionDoc] = &[ $( OptionDoc { key: $key, env: $env, default: $default, doc: $doc } ),* ];
    };
}

options! {
    "server.listen", "SHARDCAST_LISTEN", "127.0.0.1:3000", "address every shard binds (SO_REUSEPORT); port 0 picks a free port";
    "server.shards", "SHARDCAST_SHARDS", "CPUs - 1 (at least 1)", "number of shards (one executor each); dedicated hosts: the CPU count";
    "server.pin_shards", "SHARDCAST_PIN_SHARDS", "false", "pin shard i to CPU i % CPUs (for hosts dedicated to shardcast)";
    "server.shard_slice_us", "SHARDCAST_SHARD_SLICE_US", "0", "scheduler slice each shard thread asks for (Linux 6.12+ EEVDF, 100..=100000; 0: the kernel's default): a short one lets a woken shard preempt a long-running thread";
    "server.io_slice_us", "SHARDCAST_IO_SLICE_US", "0", "the same for the IO shard's thread (`shardcast-io`: the embedded store's commits and fsyncs)";
    "server.socketio_paths", "SHARDCAST_SOCKETIO_PATHS", "[\"/socket/\", \"/socket.io/\"]", "URL paths serving Socket.IO (env: comma-separated)";
    "server.ping_interval_ms", "SHARDCAST_PING_INTERVAL_MS", "25000", "Engine.IO pingInterval";
    "server.ping_timeout_ms", "SHARDCAST_PING_TIMEOUT_MS", "20000", "Engine.IO pingTimeout";
    "server.connect_timeout_ms", "SHARDCAST_CONNECT_TIMEOUT_MS", "45000", "time a client has to send its Socket.IO CONNECT";
    "server.payload_bytes_max", "SHARDCAST_PAYLOAD_BYTES_MAX", "1000000", "Engine.IO maxPayload: largest polling body or websocket message";
    "server.http_headers_count_max", "SHARDCAST_HTTP_HEADERS_COUNT_MAX", "64", "most HTTP request headers";
    "server.http_head_bytes_max", "SHARDCAST_HTTP_HEAD_BYTES_MAX", "16384", "largest request line plus headers";
    "server.http_uri_bytes_max", "SHARDCAST_HTTP_URI_BYTES_MAX", "8192", "longest request target";
    "server.http_body_bytes_max", "SHARDCAST_HTTP_BODY_BYTES_MAX", "1048576", "largest REST request body";
    "server.ws_frame_bytes_max", "SHARDCAST_WS_FRAME_BYTES_MAX", "1048576", "largest websocket frame";
    "server.connections_per_shard_max", "SHARDCAST_CONNECTIONS_PER_SHARD_MAX", "20000", "open TCP connections per shard; more are closed at once";
    "server.socket_queued_bytes_max", "SHARDCAST_SOCKET_QUEUED_BYTES_MAX", "524288", "bytes waiting for one slow client before it is disconnected";
    "server.mesh_queue_len", "SHARDCAST_MESH_QUEUE_LEN", "4096", "capacity of each cross-shard queue, messages";
    "server.cors_allowed_origins", "SHARDCAST_CORS_ALLOWED_ORIGINS", "[\"*\"]", "CORS origins; `*` allows any (env: comma-separated)";
    "server.cors_credentials", "SHARDCAST_CORS_CREDENTIALS", "true", "send Access-Control-Allow-Credentials to origins listed by name (never to one allowed only by `*`)";
    "server.timer_tick_ms", "SHARDCAST_TIMER_TICK_MS", "10", "resolution of each shard's timer wheel";
    "server.shutdown_grace_ms", "SHARDCAST_SHUTDOWN_GRACE_MS", "3000", "upper bound of a graceful shutdown";
    "server.namespaces_per_session_max", "SHARDCAST_NAMESPACES_PER_SESSION_MAX", "32", "Socket.IO namespaces one session may join";
    "server.attachments_per_packet_max", "SHARDCAST_ATTACHMENTS_PER_PACKET_MAX", "64", "binary attachments in one Socket.IO packet";
    "server.acks_pending_per_socket_max", "SHARDCAST_ACKS_PENDING_PER_SOCKET_MAX", "1024", "pending server-to-client acks per socket";
    "server.partial_packet_timeout_ms", "SHARDCAST_PARTIAL_PACKET_TIMEOUT_MS", "10000", "time a binary Socket.IO packet may wait for its attachments; then the session is closed";
    "server.sessions_per_shard_max", "SHARDCAST_SESSIONS_PER_SHARD_MAX", "20000", "Engine.IO sessions per shard; handshakes past it get 503";
    "server.handshakes_per_connection_per_s_max", "SHARDCAST_HANDSHAKES_PER_CONNECTION_PER_S_MAX", "16", "Engine.IO handshakes one TCP connection may make per second; past it 503 and the connection is closed";
    "server.heartbeats_per_session_per_s_max", "SHARDCAST_HEARTBEATS_PER_SESSION_PER_S_MAX", "100", "Engine.IO noop and ping packets per second one session may send; past it the session is closed";
    "server.partial_packets_bytes_per_shard_max", "SHARDCAST_PARTIAL_PACKETS_BYTES_PER_SHARD_MAX", "134217728", "attachment bytes all partial binary packets of one shard may hold; the session going past it is closed";
    "auth.jwt_algorithm", "SHARDCAST_JWT_ALGORITHM", "HS256", "the one algorithm access tokens are verified with: HS256, RS256 or ES256";
    "auth.jwt_secret", "SHARDCAST_JWT_SECRET", "none (required for HS256)", "HS256 secret of access tokens; use 32+ random bytes";
    "auth.jwt_public_key_file", "SHARDCAST_JWT_PUBLIC_KEY_FILE", "none (required for RS256/ES256)", "PEM public key verifying RS256/ES256 access tokens";
    "auth.jwt_private_key_file", "SHARDCAST_JWT_PRIVATE_KEY_FILE", "none", "PEM (PKCS#8) private key; only `shardcast token` uses it, for RS256/ES256";
    "auth.jwt_leeway_s", "SHARDCAST_JWT_LEEWAY_S", "30", "clock skew tolerated on exp and nbf, seconds";
    "auth.jwt_issuer", "SHARDCAST_JWT_ISSUER", "none (not checked)", "when set, `iss` must equal it";
    "auth.jwt_audience", "SHARDCAST_JWT_AUDIENCE", "none (not checked)", "when set, `aud` must contain it";
    "auth.token_bytes_max", "SHARDCAST_TOKEN_BYTES_MAX", "8192", "longest accepted access token, bytes";
    "realtime.room_token_secret", "SHARDCAST_ROOM_TOKEN_SECRET", "derived from the access-token secret", "HS256 key of room tokens; unset: HKDF-SHA256 of the HS256 access-token secret with a fixed label (stable across restarts and nodes); with RS256/ES256 random per process";
    "realtime.room_token_ttl_s", "SHARDCAST_ROOM_TOKEN_TTL_S", "3600", "lifetime of room tokens handed out by the REST API, seconds";
    "realtime.auth_timeout_ms", "SHARDCAST_AUTH_TIMEOUT_MS", "10000", "a socket not authenticated by then gets `unauthorized` and is disconnected";
    "realtime.rooms_per_socket_max", "SHARDCAST_ROOMS_PER_SOCKET_MAX", "100", "rooms one socket may be in at once";
    "realtime.room_name_bytes_max", "SHARDCAST_ROOM_NAME_BYTES_MAX", "512", "longest room name, bytes";
    "realtime.list_limit_max", "SHARDCAST_LIST_LIMIT_MAX", "1000", "largest `limit` of a REST list";
    "realtime.echo_event", "SHARDCAST_ECHO_EVENT", "false", "answer `echo` events of authenticated sockets with an ack carrying their arguments (the loadtest's echo scenario)";
    "cluster.redis_url", "SHARDCAST_CLUSTER_REDIS_URL", "none (a single process)", "`redis://host:port[/db]`: join a socket.io cluster (Node servers with @socket.io/redis-adapter 8, the emitter, other shardcast nodes); every node needs the same auth.jwt_secret and realtime.room_token_secret";
    "cluster.prefix", "SHARDCAST_CLUSTER_PREFIX", "socket.io", "channel prefix, the adapter's and emitter's `key`";
    "cluster.request_timeout_ms", "SHARDCAST_CLUSTER_REQUEST_TIMEOUT_MS", "5000", "longest wait for this node's shards when answering a cluster request";
    "cluster.queue_len", "SHARDCAST_CLUSTER_QUEUE_LEN", "4096", "capacity of the queue from the shards to the Redis thread and of each queue back, messages; a full queue drops and counts";
    "cluster.message_bytes_max", "SHARDCAST_CLUSTER_MESSAGE_BYTES_MAX", "1048576", "largest channel message read from Redis; larger ones are counted and dropped";
    "cluster.reconnect_backoff_max_ms", "SHARDCAST_CLUSTER_RECONNECT_BACKOFF_MAX_MS", "5000", "longest wait between two attempts to reach Redis (from 100 ms, doubling)";
    "server.metrics_token", "SHARDCAST_METRICS_TOKEN", "none (loopback clients only)", "bearer token `/metrics` requires; unset, `/metrics` answers loopback clients only (403 to others)";
    "realtime.page_bytes_max", "SHARDCAST_PAGE_BYTES_MAX", "1048576", "most bytes of resources in one REST list answer (at least one row); a cut page has a next_page_token";
    "realtime.user_writes_per_s", "SHARDCAST_USER_WRITES_PER_S", "100", "REST POST/PATCH requests per second per user (token sub); over it 429 with Retry-After; 0 = off";
    "realtime.user_write_bytes_per_s", "SHARDCAST_USER_WRITE_BYTES_PER_S", "4194304", "REST POST/PATCH body bytes per second per user; over it 429 with Retry-After; 0 = off";
    "realtime.company_storage_bytes_max", "SHARDCAST_COMPANY_STORAGE_BYTES_MAX", "0 (off)", "bytes of message text and extra fields one company may store; over it 403 quota_exceeded";
    "realtime.join_leave_per_s_max", "SHARDCAST_JOIN_LEAVE_PER_S_MAX", "50", "realtime:join plus realtime:leave per second per socket; over it the socket gets join/leave errors";
    "realtime.room_token_key_random", "SHARDCAST_ROOM_TOKEN_KEY_RANDOM", "false", "with no room_token_secret: true picks a random key per process (tokens die with it) instead of deriving one from the HS256 access-token secret";
    "serve.dev", "SHARDCAST_DEV", "false", "dev mode (`serve --dev`): a random JWT secret kept in the data directory, a printed demo token, the live page at `/`";
    "serve.data_dir", "SHARDCAST_DATA_DIR", "directory of orm.embedded_path", "where dev mode keeps its secret (`dev-jwt-secret`, mode 0600)";
    "serve.live_page", "SHARDCAST_LIVE_PAGE", "false (true in dev mode)", "serve the live page at `/` (it shows only what the caller's token may read)";
    "serve.listen_shared", "SHARDCAST_LISTEN_SHARED", "false", "start even if another process already listens on the address (SO_REUSEPORT sharing; the kernel then splits connections between the processes)";
    "serve.db_retry_initial_ms", "SHARDCAST_DB_RETRY_INITIAL_MS", "200", "first wait before retrying a database that did not answer at start-up (doubles each time)";
    "serve.db_retry_max_ms", "SHARDCAST_DB_RETRY_MAX_MS", "5000", "longest wait between two start-up retries";
    "serve.db_exit_on_unavailable", "SHARDCAST_DB_EXIT_ON_UNAVAILABLE", "false", "exit (status 1) when the database does not answer at start-up instead of retrying";
    "serve.db_probe_interval_ms", "SHARDCAST_DB_PROBE_INTERVAL_MS", "1000", "how often `/readyz` health is refreshed by a cheap database read";
    "realtime.event_per_s_max", "SHARDCAST_EVENT_PER_S_MAX", "20", "client realtime:event per second per socket; over it the socket gets realtime:event:error and the event reaches nobody";
    "realtime.event_data_bytes_max", "SHARDCAST_EVENT_DATA_BYTES_MAX", "16384", "longest `data` of a client realtime:event, bytes of JSON";
    "realtime.presence_room", "SHARDCAST_PRESENCE_ROOM", "\"\" (off)", "room-name template with one `{room}` (e.g. `{room}/presence`): when a user appears in room R or its last socket leaves (counted across shards), the members of that presence room of R get realtime:event {presence: join|leave, room: R, user}; joined with a room token for its name";
}

/// How `shardcast serve` runs: dev mode, the live page, port sharing, database start-up retries and health probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSettings {
    /// Dev mode (`--dev`).
    pub dev: bool,
    /// Where dev mode keeps its secret; `None`: the directory of `orm.embedded_path`.
    pub data_dir: Option<PathBuf>,
    /// Serve the live page at `/`; `None`: only in dev mode.
    pub live_page: Option<bool>,
    /// Start even if another process already listens on the address.
    pub listen_shared: bool,
    /// First wait before retrying the database at start-up.
    pub db_retry_initial_ms: u64,
    /// Longest wait between two start-up retries.
    pub db_retry_max_ms: u64,
    /// Exit instead of retrying when the database is down at start-up.
    pub db_exit_on_unavailable: bool,
    /// Interval of the health probe behind `/readyz`.
    pub db_probe_interval_ms: u64,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            dev: false,
            data_dir: None,
            live_page: None,
            listen_shared: false,
            db_retry_initial_ms: 200,
            db_retry_max_ms: 5000,
            db_exit_on_unavailable: false,
            db_probe_interval_ms: 1000,
        }
    }
}

impl ServeSettings {
    /// Whether `/` serves the live page.
    pub fn live_page_enabled(&self) -> bool {
        self.live_page.unwrap_or(self.dev)
    }
}

/// The realtime layer's settings.
#[derive(Debug, Clone)]
pub struct RealtimeConfig {
    /// Room-token key; `None`: derived from the HS256 access-token secret (HKDF), or random per process.
    pub room_token_secret: Option<Secret>,
    /// Lifetime of issued room tokens, seconds.
    pub room_token_ttl_s: u64,
    /// Per-socket session limits and the authentication timeout.
    pub session: SessionConfig,
    /// Largest `limit` of a REST list.
    pub list_limit_max: usize,
    /// Page bytes and company storage quota of the demo services.
    pub demo: crate::realtime::demo::DemoLimits,
    /// Per-user REST write limits.
    pub writes: crate::realtime::rest::WriteLimits,
    /// With no `room_token_secret`: a random key per process instead of one derived from the access-token secret.
    pub room_token_key_random: bool,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            room_token_secret: None,
            room_token_ttl_s: ROOM_TOKEN_TTL_S_DEFAULT,
            session: SessionConfig::default(),
            list_limit_max: crate::realtime::rest::LIST_LIMIT_MAX_DEFAULT,
            demo: crate::realtime::demo::DemoLimits::default(),
            writes: crate::realtime::rest::WriteLimits::default(),
            room_token_key_random: false,
        }
    }
}

/// The access-token settings as configured (key files not read yet).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Pinned algorithm.
    pub algorithm: JwtAlgorithm,
    /// HS256 secret.
    pub secret: Option<Secret>,
    /// PEM public key file.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key file.
    pub private_key_file: Option<PathBuf>,
    /// Leeway, seconds.
    pub leeway_s: Option<u64>,
    /// Required `iss`.
    pub issuer: Option<String>,
    /// Required `aud`.
    pub audience: Option<String>,
    /// Longest token, bytes.
    pub token_bytes_max: Option<usize>,
}

/// Everything `shardcast serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server (`[server]`).
    pub server: ServerConfig,
    /// Access tokens (`[auth]`).
    pub auth: AuthSettings,
    /// Rooms and sessions (`[realtime]`).
    pub realtime: RealtimeConfig,
    /// The ORM (`[orm]`).
    pub orm: OrmConfig,
    /// The `[cluster]` section (Redis scale-out; off by default).
    pub cluster: crate::cluster::ClusterConfig,
    /// How `serve` runs (`[serve]`).
    pub serve: ServeSettings,
}

impl Default for Config {
    fn default() -> Self {
        let server = ServerConfig {
            listen: LISTEN_DEFAULT
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 3000))),
            ..ServerConfig::default()
        };
        Self {
            server,
            auth: AuthSettings::default(),
            realtime: RealtimeConfig::default(),
            orm: OrmConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
            serve: ServeSettings::default(),
        }
    }
}

/// A configuration error; the text names the option and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("{key} = {value:?} is not valid")))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ConfigError(format!(
            "{key} = {value:?} is not true or false"
        ))),
    }
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn opt_string(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()).then(|| v.to_owned())
}

impl Config {
    /// Sets one option of [`OPTIONS`] from its text form (how the environment and flags set them; lists are
    /// comma-separated).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let s = &mut self.server;
        let a = &mut self.auth;
        let r = &mut self.realtime;
        match key {
            "server.listen" => s.listen = parse(key, value)?,
            "server.shards" => s.shards = parse::<usize>(key, value)?.max(1),
            "server.pin_shards" => s.pin_shards = parse_bool(key, value)?,
            "server.shard_slice_us" => s.shard_slice_us = parse(key, value)?,
            "server.io_slice_us" => s.io_slice_us = parse(key, value)?,
            "server.socketio_paths" => {
                let paths = list(value);
                if paths.is_empty()
                    || paths
                        .iter()
                        .any(|p| !p.starts_with('/') || !p.ends_with('/'))
                {
                    return Err(ConfigError(format!(
                        "{key} = {value:?}: give one or more paths that start and end with `/`"
                    )));
                }
                s.socketio_paths = paths;
            }
            "server.ping_interval_ms" => s.ping_interval_ms = parse(key, value)?,
            "server.ping_timeout_ms" => s.ping_timeout_ms = parse(key, value)?,
            "server.connect_timeout_ms" => s.connect_timeout_ms = parse(key, value)?,
            "server.payload_bytes_max" => s.payload_bytes_max = parse(key, value)?,
            "server.http_headers_count_max" => s.http_headers_count_max = parse(key, value)?,
            "server.http_head_bytes_max" => s.http_head_bytes_max = parse(key, value)?,
            "server.http_uri_bytes_max" => s.http_uri_bytes_max = parse(key, value)?,
            "server.http_body_bytes_max" => s.http_body_bytes_max = parse(key, value)?,
            "server.ws_frame_bytes_max" => s.ws_frame_bytes_max = parse(key, value)?,
            "server.connections_per_shard_max" => s.connections_per_shard_max = parse(key, value)?,
            "server.socket_queued_bytes_max" => s.socket_queued_bytes_max = parse(key, value)?,
            "server.mesh_queue_len" => s.mesh_queue_len = parse::<usize>(key, value)?.max(1),
            "server.cors_allowed_origins" => s.cors_allowed_origins = list(value),
            "server.cors_credentials" => s.cors_credentials = parse_bool(key, value)?,
            "server.timer_tick_ms" => s.timer_tick_ms = parse::<u64>(key, value)?.max(1),
            "server.shutdown_grace_ms" => s.shutdown_grace_ms = parse(key, value)?,
            "server.namespaces_per_session_max" => {
                s.namespaces_per_session_max = parse(key, value)?
            }
            "server.attachments_per_packet_max" => {
                s.attachments_per_packet_max = parse(key, value)?
            }
            "server.acks_pending_per_socket_max" => {
                s.acks_pending_per_socket_max = parse(key, value)?
            }
            "server.partial_packet_timeout_ms" => s.partial_packet_timeout_ms = parse(key, value)?,
            "server.sessions_per_shard_max" => s.sessions_per_shard_max = parse(key, value)?,
            "server.handshakes_per_connection_per_s_max" => {
                s.handshakes_per_connection_per_s_max = parse(key, value)?
            }
            "server.heartbeats_per_session_per_s_max" => {
                s.heartbeats_per_session_per_s_max = parse(key, value)?
            }
            "server.partial_packets_bytes_per_shard_max" => {
                s.partial_packets_bytes_per_shard_max = parse(key, value)?
            }
            "auth.jwt_algorithm" => {
                a.algorithm =
                    value
                        .trim()
                        .parse()
                        .map_err(|e: crate::realtime::auth::AuthConfigError| {
                            ConfigError(format!("{key}: {e}"))
                        })?
            }
            "auth.jwt_secret" => a.secret = opt_string(value).map(Secret::from),
            "auth.jwt_public_key_file" => a.public_key_file = opt_string(value).map(PathBuf::from),
            "auth.jwt_private_key_file" => {
                a.private_key_file = opt_string(value).map(PathBuf::from)
            }
            "auth.jwt_leeway_s" => a.leeway_s = Some(parse(key, value)?),
            "auth.jwt_issuer" => a.issuer = opt_string(value),
            "auth.jwt_audience" => a.audience = opt_string(value),
            "auth.token_bytes_max" => a.token_bytes_max = Some(parse(key, value)?),
            "realtime.room_token_secret" => {
                r.room_token_secret = opt_string(value).map(Secret::from)
            }
            "realtime.room_token_ttl_s" => r.room_token_ttl_s = parse::<u64>(key, value)?.max(1),
            "realtime.auth_timeout_ms" => {
                r.session.auth_timeout_ms = parse::<u64>(key, value)?.max(1)
            }
            "realtime.rooms_per_socket_max" => r.session.rooms_per_socket_max = parse(key, value)?,
            "realtime.room_name_bytes_max" => {
                r.session.room_name_bytes_max = parse::<usize>(key, value)?.max(1)
            }
            "realtime.echo_event" => r.session.echo_event = parse_bool(key, value)?,
            "realtime.list_limit_max" => r.list_limit_max = parse::<usize>(key, value)?.max(1),
            "cluster.redis_url" => self.cluster.redis_url = opt_string(value),
            "cluster.prefix" => {
                let p = value.trim();
                if p.is_empty() || p.contains('#') {
                    return Err(ConfigError(format!(
                        "{key} = {value:?}: give a non-empty prefix without `#`"
                    )));
                }
                self.cluster.prefix = p.to_owned();
            }
            "cluster.request_timeout_ms" => {
                self.cluster.request_timeout_ms = parse::<u64>(key, value)?.max(1)
            }
            "cluster.queue_len" => self.cluster.queue_len = parse::<usize>(key, value)?.max(1),
            "cluster.message_bytes_max" => {
                self.cluster.message_bytes_max = parse::<usize>(key, value)?.max(1)
            }
            "cluster.reconnect_backoff_max_ms" => {
                self.cluster.reconnect_backoff_max_ms = parse::<u64>(key, value)?.max(1)
            }
            "server.metrics_token" => s.metrics_token = opt_string(value),
            "realtime.page_bytes_max" => r.demo.page_bytes_max = parse::<usize>(key, value)?.max(1),
            "realtime.user_writes_per_s" => r.writes.writes_per_s = parse(key, value)?,
            "realtime.user_write_bytes_per_s" => r.writes.write_bytes_per_s = parse(key, value)?,
            "realtime.company_storage_bytes_max" => {
                r.demo.company_storage_bytes_max = parse(key, value)?
            }
            "realtime.join_leave_per_s_max" => {
                r.session.join_leave_per_s_max = parse::<u32>(key, value)?.max(1)
            }
            "realtime.room_token_key_random" => r.room_token_key_random = parse_bool(key, value)?,
            "serve.dev" => self.serve.dev = parse_bool(key, value)?,
            "serve.data_dir" => self.serve.data_dir = opt_string(value).map(PathBuf::from),
            "serve.live_page" => self.serve.live_page = Some(parse_bool(key, value)?),
            "serve.listen_shared" => self.serve.listen_shared = parse_bool(key, value)?,
            "serve.db_retry_initial_ms" => {
                self.serve.db_retry_initial_ms = parse::<u64>(key, value)?.max(1)
            }
            "serve.db_retry_max_ms" => {
                self.serve.db_retry_max_ms = parse::<u64>(key, value)?.max(1)
            }
            "serve.db_exit_on_unavailable" => {
                self.serve.db_exit_on_unavailable = parse_bool(key, value)?
            }
            "serve.db_probe_interval_ms" => {
                self.serve.db_probe_interval_ms = parse::<u64>(key, value)?.max(10)
            }
            "realtime.event_per_s_max" => {
                r.session.event_per_s_max = parse::<u32>(key, value)?.max(1)
            }
            "realtime.event_data_bytes_max" => r.session.event_data_bytes_max = parse(key, value)?,
            "realtime.presence_room" => {
                r.session.presence_room = crate::realtime::presence::PresenceRoom::parse(value)
                    .map_err(|e| ConfigError(format!("{key}: {e}")))?
            }
            _ => return Err(ConfigError(format!("unknown option `{key}`"))),
        }
        Ok(())
    }

    /// Applies a TOML document (the `--config` file).
    pub fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e| ConfigError(format!("{origin}: not valid TOML: {e}")))?;
        for (section, body) in table {
            let toml::Value::Table(body) = body else {
                return Err(ConfigError(format!(
                    "{origin}: `{section}` must be a [section]"
                )));
            };
            if section == "orm" {
                self.orm = toml::Value::Table(body)
                    .try_into()
                    .map_err(|e| ConfigError(format!("{origin}: [orm]: {e}")))?;
                continue;
            }
            if !matches!(
                section.as_str(),
                "server" | "auth" | "realtime" | "cluster" | "serve"
            ) {
                return Err(ConfigError(format!(
                    "{origin}: unknown section [{section}] (expected server, auth, realtime, cluster, orm, serve)"
                )));
            }
            for (name, value) in body {
                let key = format!("{section}.{name}");
                let text = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Array(items) => {
                        let mut parts = Vec::with_capacity(items.len());
                        for item in items {
                            match item {
                                toml::Value::String(s) => parts.push(s),
                                other => {
                                    return Err(ConfigError(format!(
                                        "{origin}: {key}: expected strings, found {other}"
                                    )));
                                }
                            }
                        }
                        parts.join(",")
                    }
                    other => {
                        return Err(ConfigError(format!(
                            "{origin}: {key}: unsupported value {other}"
                        )));
                    }
                };
                self.set(&key, &text)
                    .map_err(|e| ConfigError(format!("{origin}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Applies the environment variables `get` returns (the process environment in production).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for o in OPTIONS {
            if let Some(v) = get(o.env) {
                self.set(o.key, &v)
                    .map_err(|e| ConfigError(format!("{}: {e}", o.env)))?;
            }
        }
        self.orm = std::mem::take(&mut self.orm)
            .with_env(&get)
            .map_err(ConfigError)?;
        Ok(())
    }

    /// Defaults, then the file at `path` (if any), then the process environment. Flags come after, from the caller.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(path, |k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment (tests).
    pub fn load_with(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = Config::default();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "cannot read the config file {}: {e}",
                    path.display()
                ))
            })?;
            cfg.apply_toml(&text, &path.display().to_string())?;
        }
        cfg.apply_env(env)?;
        Ok(cfg)
    }

    /// The access-token configuration, with key files read. Errors say which option to set.
    pub fn auth_config(&self) -> Result<AuthConfig, ConfigError> {
        let a = &self.auth;
        let read = |p: &PathBuf, what: &str| {
            std::fs::read_to_string(p)
                .map_err(|e| ConfigError(format!("cannot read the {what} {}: {e}", p.display())))
        };
        Ok(AuthConfig {
            algorithm: a.algorithm,
            secret: a.secret.clone(),
            public_key_pem: a
                .public_key_file
                .as_ref()
                .map(|p| read(p, "JWT public key file"))
                .transpose()?,
            private_key_pem: a
                .private_key_file
                .as_ref()
                .map(|p| read(p, "JWT private key file").map(Secret::from))
                .transpose()?,
            leeway_s: a.leeway_s.unwrap_or(LEEWAY_S_DEFAULT),
            issuer: a.issuer.clone(),
            audience: a.audience.clone(),
            token_bytes_max: a.token_bytes_max.unwrap_or(TOKEN_BYTES_MAX_DEFAULT),
        })
    }
}

impl Config {
    /// The data directory: `serve.data_dir`, else the directory of `orm.embedded_path` (`shardcast-data`).
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.serve.data_dir {
            return d.clone();
        }
        match self.orm.embedded_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The backend and where it is, for the start-up line and health logs: never credentials.
    pub fn backend_description(&self) -> String {
        use crate::orm::BackendKind;
        match self.orm.backend {
            BackendKind::Embedded => format!("embedded {}", self.orm.embedded_path.display()),
            BackendKind::Mongo => format!(
                "mongo {} database {}",
                redact_uri(&self.orm.mongo_uri),
                self.orm.mongo_database
            ),
            BackendKind::Cql => format!(
                "cql {} keyspace {}",
                self.orm.cql_nodes.join(","),
                self.orm.cql_keyspace
            ),
        }
    }
}

/// `uri` without its user information and query string (which may hold credentials): scheme, hosts and path.
pub fn redact_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.find("://") {
        Some(i) => (&uri[..i + 3], &uri[i + 3..]),
        None => ("", uri),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let host_end = rest.find('/').unwrap_or(rest.len());
    let (hosts, path) = rest.split_at(host_end);
    let hosts = match hosts.rfind('@') {
        Some(at) => &hosts[at + 1..],
        None => hosts,
    };
    format!("{scheme}{hosts}{path}")
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Hs256,
            secret: None,
            public_key_file: None,
            private_key_file: None,
            leeway_s: None,
            issuer: None,
            audience: None,
            token_bytes_max: None,
        }
    }
}

/// Parses a duration such as `90`, `90s`, `15m`, `1h`, `7d` into seconds.
pub fn parse_duration_s(text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        ConfigError(format!(
            "duration {text:?}: expected a number and s, m, h or d"
        ))
    })?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(ConfigError(format!(
                "duration {text:?}: unit must be s, m, h or d"
            )));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| ConfigError(format!("duration {text:?} is too long")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_option_can_be_set() {
        for o in OPTIONS {
            let mut c = Config::default();
            let value = match o.key {
                "server.listen" => "127.0.0.1:4000",
                "server.socketio_paths" => "/a/,/b/",
                "server.cors_allowed_origins" => "http://x",
                "auth.jwt_algorithm" => "ES256",
                k if k.ends_with("pin_shards")
                    || k.ends_with("credentials")
                    || k.ends_with("echo_event")
                    || k.ends_with("_random")
                    || k.ends_with(".dev")
                    || k.ends_with("live_page")
                    || k.ends_with("listen_shared")
                    || k.ends_with("exit_on_unavailable") =>
                {
                    "true"
                }
                k if k.ends_with("presence_room") => "{room}/presence",
                k if k.contains("secret")
                    || k.contains("data_dir")
                    || k.contains("file")
                    || k.contains("issuer")
                    || k.contains("audience") =>
                {
                    "v"
                }
                _ => "7",
            };
            c.set(o.key, value)
                .unwrap_or_else(|e| panic!("{}: {e}", o.key));
            assert!(o.env.starts_with("SHARDCAST_"), "{}", o.env);
        }
    }

    #[test]
    fn file_then_env() {
        let mut c = Config::default();
        c.apply_toml(
            "[server]\nshards = 3\nsocketio_paths = [\"/s/\"]\n[realtime]\nauth_timeout_ms = 500\n[orm]\nbackend = \"mongo\"\n",
            "test.toml",
        )
        .unwrap();
        assert_eq!(c.server.shards, 3);
        assert_eq!(c.server.socketio_paths, vec!["/s/"]);
        assert_eq!(c.realtime.session.auth_timeout_ms, 500);
        assert_eq!(c.orm.backend, crate::orm::BackendKind::Mongo);
        c.apply_env(|k| (k == "SHARDCAST_SHARDS").then(|| "5".to_string()))
            .unwrap();
        assert_eq!(c.server.shards, 5);
        assert_eq!(c.realtime.session.auth_timeout_ms, 500);
        let e = c.apply_toml("[server]\nshard = 1\n", "f.toml").unwrap_err();
        assert_eq!(e.0, "f.toml: unknown option `server.shard`");
        let e = c.apply_toml("[nope]\na = 1\n", "f.toml").unwrap_err();
        assert!(e.0.contains("unknown section [nope]"), "{e}");
    }

    #[test]
    fn uris_lose_credentials_and_queries() {
        assert_eq!(
            redact_uri("mongodb://bob:s3cret@db1:27017,db2/app?authSource=admin&password=x"),
            "mongodb://db1:27017,db2/app"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
        let mut c = Config::default();
        c.orm.backend = crate::orm::BackendKind::Mongo;
        c.orm.mongo_uri = "mongodb://u:p@h:1".into();
        assert_eq!(
            c.backend_description(),
            "mongo mongodb://h:1 database shardcast"
        );
        assert_eq!(c.data_dir(), PathBuf::from("shardcast-data"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_s("90").unwrap(), 90);
        assert_eq!(parse_duration_s("15m").unwrap(), 900);
        assert_eq!(parse_duration_s("1h").unwrap(), 3600);
        assert_eq!(parse_duration_s("2d").unwrap(), 172_800);
        assert!(parse_duration_s("1y").is_err());
        assert!(parse_duration_s("h").is_err());
    }
}
