//! The `shardcast` command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shardcast::app::{dev, health, keys, startup};
use shardcast::config::{Config, parse_duration_s};
use shardcast::orm::{IoShard, Key, Repository};
use shardcast::realtime::auth::{
    AccessSigner, AccessVerifier, AuthConfigError, JwtAlgorithm, RoomTokens, Secret,
    parse_claim_arg,
};
use shardcast::realtime::demo::{self, Channel, DemoRepositories};
use shardcast::realtime::live;
use shardcast::realtime::online::OnlineService;
use shardcast::realtime::protocol::SessionContext;
use shardcast::realtime::rest::RestApi;
use shardcast::realtime::rest::UserWriteLimiter as RestWriteLimiter;
use shardcast::server::{self, AppFactory, Router, ServerConfig, ShardApp, SocketIo, sched};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "shardcast",
    version,
    about = "Shard-per-core realtime Socket.IO server"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The Engine.IO/Socket.IO conformance server: raw Engine.IO echo at /engine.io/, the test app at /socket.io/,
    /// pingInterval 300 ms, pingTimeout 200 ms, maxPayload 1000000, connectTimeout 1000 ms.
    Conformance(Common),
    /// The realtime server: Socket.IO at /socket/ and /socket.io/ (authenticate, realtime:join/leave,
    /// realtime:resource), the REST API of the demo services under /api/v1, /metrics, /healthz and /readyz.
    Serve(Box<ServeArgs>),
    /// Print a signed access token for trying the server out (same configuration as `serve`).
    Token(TokenArgs),
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    common: Common,
    /// TOML configuration file (see the README's Configuration section).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Authentication timeout of a socket (ms).
    #[arg(long)]
    auth_timeout_ms: Option<u64>,
    /// Rooms one socket may be in at once.
    #[arg(long)]
    rooms_per_socket_max: Option<usize>,
    /// Lifetime of room tokens handed out by the REST API (seconds).
    #[arg(long)]
    room_token_ttl_s: Option<u64>,
    /// Answer `echo` events of authenticated sockets with an ack carrying their arguments (round-trip measurements).
    #[arg(long)]
    echo_event: bool,
    /// Database backend: embedded, mongo or cql.
    #[arg(long)]
    db_backend: Option<String>,
    /// Embedded database file.
    #[arg(long)]
    db_path: Option<std::path::PathBuf>,
    /// Ignored (kept for old command lines): every embedded write is durable before it is answered (group commit).
    #[arg(long)]
    db_sync_interval_ms: Option<u64>,
    /// Join a socket.io cluster through this Redis (`redis://host:port`); overrides cluster.redis_url.
    #[arg(long)]
    redis_url: Option<String>,
    /// Channel prefix of the cluster (the adapter's `key`); overrides cluster.prefix.
    #[arg(long)]
    cluster_prefix: Option<String>,
    /// Dev mode: a random JWT secret created once in the data directory (mode 0600) and reused, a printed demo
    /// token and next commands, the live page at `/`.
    #[arg(long)]
    dev: bool,
    /// Data directory (dev mode's secret); default: the directory of the embedded database file.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Serve the live page at `/` outside dev mode too.
    #[arg(long)]
    live_page: bool,
    /// Start even if another process already listens on the address (the kernel then splits connections).
    #[arg(long)]
    listen_shared: bool,
    /// MongoDB connection string (implies --db-backend mongo unless given).
    #[arg(long)]
    mongo_uri: Option<String>,
    /// Cassandra/ScyllaDB contact points, comma-separated (implies --db-backend cql unless given).
    #[arg(long, value_delimiter = ',')]
    cql_nodes: Vec<String>,
    /// Cassandra/ScyllaDB keyspace.
    #[arg(long)]
    cql_keyspace: Option<String>,
    /// Exit when the database does not answer at start-up, instead of retrying with backoff.
    #[arg(long)]
    db_exit_on_unavailable: bool,
}

#[derive(Args, Debug)]
struct TokenArgs {
    /// TOML configuration file (the same one `serve` uses).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The user id (`sub` claim).
    #[arg(long)]
    sub: String,
    /// Lifetime: a number of seconds, or with a unit: 90s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Extra claim `key=value` (repeat); the value is JSON when it parses, e.g. companies='["acme"]', else a string.
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// Data directory whose dev-mode secret (`serve --dev`) signs the token when no secret is configured.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct Common {
    /// Address to listen on (every shard binds it with SO_REUSEPORT). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Number of shards (default: number of CPUs).
    #[arg(long)]
    shards: Option<usize>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Override Engine.IO pingInterval (ms).
    #[arg(long)]
    ping_interval_ms: Option<u64>,
    /// Override Engine.IO pingTimeout (ms).
    #[arg(long)]
    ping_timeout_ms: Option<u64>,
    /// Override maxPayload (bytes).
    #[arg(long)]
    payload_bytes_max: Option<usize>,
    /// Override the per-socket send queue bound (bytes).
    #[arg(long)]
    socket_queued_bytes_max: Option<usize>,
    /// Override the per-shard connection limit.
    #[arg(long)]
    connections_per_shard_max: Option<usize>,
    /// Allowed CORS origins (repeat; `*` for any).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Override the per-shard session limit.
    #[arg(long)]
    sessions_per_shard_max: Option<usize>,
    /// Override the bound on Engine.IO handshakes per TCP connection per second.
    #[arg(long)]
    handshakes_per_connection_per_s_max: Option<usize>,
    /// Override the time a binary packet may wait for its attachments (ms).
    #[arg(long)]
    partial_packet_timeout_ms: Option<u64>,
    /// Override the rate bound on noops and pings per session (per second).
    #[arg(long)]
    heartbeats_per_session_per_s_max: Option<u32>,
    /// Override the bound on attachment bytes held by the partial binary packets of one shard.
    #[arg(long)]
    partial_packets_bytes_per_shard_max: Option<usize>,
}

impl Common {
    fn apply(&self, mut cfg: ServerConfig) -> ServerConfig {
        if let Some(l) = self.listen {
            cfg.listen = l;
        }
        if let Some(n) = self.shards {
            cfg.shards = n.max(1);
        }
        if self.no_pin {
            cfg.pin_shards = false;
        }
        if let Some(v) = self.ping_interval_ms {
            cfg.ping_interval_ms = v;
        }
        if let Some(v) = self.ping_timeout_ms {
            cfg.ping_timeout_ms = v;
        }
        if let Some(v) = self.payload_bytes_max {
            cfg.payload_bytes_max = v;
        }
        if let Some(v) = self.socket_queued_bytes_max {
            cfg.socket_queued_bytes_max = v;
        }
        if let Some(v) = self.connections_per_shard_max {
            cfg.connections_per_shard_max = v;
        }
        if !self.cors_origins.is_empty() {
            cfg.cors_allowed_origins = self.cors_origins.clone();
        }
        if let Some(v) = self.sessions_per_shard_max {
            cfg.sessions_per_shard_max = v;
        }
        if let Some(v) = self.handshakes_per_connection_per_s_max {
            cfg.handshakes_per_connection_per_s_max = v;
        }
        if let Some(v) = self.partial_packet_timeout_ms {
            cfg.partial_packet_timeout_ms = v;
        }
        if let Some(v) = self.heartbeats_per_session_per_s_max {
            cfg.heartbeats_per_session_per_s_max = v;
        }
        if let Some(v) = self.partial_packets_bytes_per_shard_max {
            cfg.partial_packets_bytes_per_shard_max = v;
        }
        cfg
    }
}

impl ServeArgs {
    /// Defaults < file < environment < these flags.
    fn config(&self) -> Result<Config, String> {
        let mut cfg = Config::load(self.config.as_deref()).map_err(|e| e.to_string())?;
        cfg.server = self.common.apply(cfg.server);
        if let Some(v) = self.auth_timeout_ms {
            cfg.realtime.session.auth_timeout_ms = v.max(1);
        }
        if let Some(v) = self.rooms_per_socket_max {
            cfg.realtime.session.rooms_per_socket_max = v;
        }
        if self.echo_event {
            cfg.realtime.session.echo_event = true;
        }
        if let Some(v) = self.room_token_ttl_s {
            cfg.realtime.room_token_ttl_s = v.max(1);
        }
        if let Some(v) = &self.db_backend {
            cfg.orm.backend = v.parse()?;
        }
        if let Some(v) = &self.db_path {
            cfg.orm.embedded_path = v.clone();
        }
        if let Some(v) = self.db_sync_interval_ms {
            cfg.orm.embedded_sync_interval_ms = v;
        }
        if let Some(v) = &self.redis_url {
            cfg.set("cluster.redis_url", v).map_err(|e| e.to_string())?;
        }
        if let Some(v) = &self.cluster_prefix {
            cfg.set("cluster.prefix", v).map_err(|e| e.to_string())?;
        }
        if let Some(v) = &self.mongo_uri {
            cfg.orm.mongo_uri = v.clone();
            if self.db_backend.is_none() {
                cfg.orm.backend = shardcast::orm::BackendKind::Mongo;
            }
        }
        if !self.cql_nodes.is_empty() {
            cfg.orm.cql_nodes = self.cql_nodes.clone();
            if self.db_backend.is_none() {
                cfg.orm.backend = shardcast::orm::BackendKind::Cql;
            }
        }
        if let Some(v) = &self.cql_keyspace {
            cfg.orm.cql_keyspace = v.clone();
        }
        if self.dev {
            cfg.serve.dev = true;
        }
        if let Some(v) = &self.data_dir {
            cfg.serve.data_dir = Some(v.clone());
        }
        if self.live_page {
            cfg.serve.live_page = Some(true);
        }
        if self.listen_shared {
            cfg.serve.listen_shared = true;
        }
        if self.db_exit_on_unavailable {
            cfg.serve.db_exit_on_unavailable = true;
        }
        Ok(cfg)
    }
}

const NO_SECRET_HELP: &str = "shardcast: no JWT secret configured, and there is no built-in default.
Access tokens are verified with HS256 and a secret you choose. Set one, e.g.:

    export SHARDCAST_JWT_SECRET=\"$(head -c 32 /dev/urandom | base64)\"

or `jwt_secret = \"...\"` in the [auth] section of a --config file (or use RS256/ES256 with
auth.jwt_public_key_file). Then `shardcast token --sub alice --claim companies='[\"acme\"]'` prints a token.
To try shardcast out, `shardcast serve --dev` makes a secret once, keeps it in the data directory (mode 0600) and
prints a token; `shardcast token` run there finds it by itself.";

fn auth_error(e: &AuthConfigError) -> String {
    match e {
        AuthConfigError::MissingSecret | AuthConfigError::EmptySecret => NO_SECRET_HELP.to_string(),
        other => format!("shardcast: {other}"),
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    let run = || -> Result<String, String> {
        let mut cfg =
            Config::load(args.config.as_deref()).map_err(|e| format!("shardcast: {e}"))?;
        if let Some(d) = &args.data_dir {
            cfg.serve.data_dir = Some(d.clone());
        }
        if cfg.auth.secret.is_none() && cfg.auth.algorithm == JwtAlgorithm::Hs256 {
            // The secret `serve --dev` keeps in the data directory, if it ran there.
            cfg.auth.secret = dev::load(&cfg.data_dir()).map_err(|e| format!("shardcast: {e}"))?;
        }
        let auth = cfg.auth_config().map_err(|e| format!("shardcast: {e}"))?;
        let signer = AccessSigner::new(&auth).map_err(|e| auth_error(&e))?;
        let ttl = parse_duration_s(&args.ttl).map_err(|e| format!("shardcast: --ttl: {e}"))?;
        let mut extra = serde_json::Map::new();
        for c in &args.claims {
            let (k, v) = parse_claim_arg(c).map_err(|e| format!("shardcast: --claim: {e}"))?;
            extra.insert(k, v);
        }
        signer
            .sign(&args.sub, ttl, &extra)
            .map_err(|e| format!("shardcast: {e}"))
    };
    match run() {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// The IO shard once the database answered (it may come later, from the start-up retry thread); stopped at exit.
#[derive(Debug, Clone, Default)]
struct IoSlot(Arc<Mutex<Option<IoShard>>>);

impl IoSlot {
    fn stop(self) {
        let io = self.0.lock().ok().and_then(|mut g| g.take());
        if let Some(io) = io {
            io.stop();
        }
    }
}

/// What a successful database start gives: the IO shard, the demo tables, and a repository the health probe reads.
type DbParts = (
    IoShard,
    DemoRepositories,
    Repository<Channel>,
    OnlineService,
);

fn connect_db(cfg: &shardcast::orm::OrmConfig) -> Result<DbParts, shardcast::orm::OrmError> {
    let (io_shard, orm) = shardcast::orm::start(cfg)?;
    let repos = futures_lite::future::block_on(DemoRepositories::open(&orm))?;
    let probe = futures_lite::future::block_on(Repository::<Channel>::open(&orm))?;
    let online = futures_lite::future::block_on(OnlineService::open(&orm))?;
    Ok((io_shard, repos, probe, online))
}

/// One cheap read through the IO shard: `Err` (with the driver's words, for the log) when the database is unreachable.
fn probe_db(repo: &Repository<Channel>) -> Result<(), String> {
    let key = Key::new()
        .with("company_id", "_health")
        .with("workspace_id", "_health")
        .with("id", "_health");
    match futures_lite::future::block_on(repo.get(key)) {
        Ok(_) => Ok(()),
        Err(e) if e.is_unavailable() => Err(e.to_string()),
        Err(e) => {
            tracing::debug!(error = %e, "health probe: the database answered with an error");
            Ok(())
        }
    }
}

/// At most `chars` characters of a (driver) error, for messages on a terminal; the whole text goes to the log.
fn short(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

/// Printed once the server listens.
type Banner = Box<dyn FnOnce(SocketAddr)>;

/// Everything `serve` needs before the shards start: the verifier, the room tokens, the database (or its start-up
/// retry loop), the health state and each shard's app.
fn serve_app(cfg: &mut Config) -> Result<(AppFactory, IoSlot, Option<Banner>), (u8, String)> {
    let mut dev_secret = None;
    if cfg.serve.dev && cfg.auth.secret.is_none() && cfg.auth.algorithm == JwtAlgorithm::Hs256 {
        let dir = cfg.data_dir();
        let (secret, origin) =
            dev::load_or_create(&dir).map_err(|e| (2, format!("shardcast: dev mode: {e}")))?;
        cfg.auth.secret = Some(secret);
        dev_secret = Some((dev::secret_path(&dir), origin));
    }
    let auth = cfg
        .auth_config()
        .map_err(|e| (2, format!("shardcast: {e}")))?;
    let verifier = AccessVerifier::new(&auth).map_err(|e| (2, auth_error(&e)))?;
    let room_secret = match (&cfg.realtime.room_token_secret, &auth.secret) {
        (Some(s), _) => s.clone(),
        (None, _) if cfg.realtime.room_token_key_random => Secret::random(),
        (None, Some(access)) if auth.algorithm == JwtAlgorithm::Hs256 => {
            keys::room_token_key(access)
        }
        (None, _) => {
            tracing::warn!(
                "no HS256 access secret to derive the room-token key from: using a random key per process, so room \
                 tokens die with it; set realtime.room_token_secret (the same on every node)"
            );
            Secret::random()
        }
    };
    let room_tokens = RoomTokens::new(&room_secret, cfg.realtime.room_token_ttl_s, auth.leeway_s)
        .map_err(|e| (2, format!("shardcast: realtime.room_token_secret: {e}")))?;
    let backend = cfg.backend_description();
    let health = health::Health::new(cfg.server.shards.max(1), backend.clone());
    let repos_slot: Arc<OnceLock<DemoRepositories>> = Arc::new(OnceLock::new());
    let online_slot: Arc<OnceLock<OnlineService>> = Arc::new(OnceLock::new());
    let io_slot = IoSlot::default();
    let probe_interval = Duration::from_millis(cfg.serve.db_probe_interval_ms.max(10));
    let install = {
        let repos_slot = repos_slot.clone();
        let io_slot = io_slot.clone();
        let online_slot = online_slot.clone();
        let health = health.clone();
        let io_sched = sched::ThreadSched::fair_slice_us(cfg.server.io_slice_us);
        move |(io, repos, probe, online): DbParts| {
            if let Ok(mut g) = io_slot.0.lock() {
                *g = Some(io);
            }
            if io_sched.slice_us.is_some() {
                for tid in sched::threads_named("shardcast-io") {
                    if let Err(e) = sched::apply_to_thread(tid, &io_sched) {
                        tracing::warn!(error = %e, "could not set the IO thread's scheduler slice");
                    }
                }
            }
            let _ = repos_slot.set(repos);
            let _ = online_slot.set(online);
            health.set_up();
            let spawned =
                health::spawn_probe(health.clone(), probe_interval, move || probe_db(&probe));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the database health probe");
            }
        }
    };
    match connect_db(&cfg.orm) {
        Ok(parts) => install(parts),
        Err(e) if e.is_unavailable() && !cfg.serve.db_exit_on_unavailable => {
            health.set_down(&e.to_string());
            let orm_cfg = cfg.orm.clone();
            let (first, max) = (cfg.serve.db_retry_initial_ms, cfg.serve.db_retry_max_ms);
            tracing::warn!(
                backend = %backend,
                retry_initial_ms = first,
                retry_max_ms = max,
                "the database is unavailable at start-up: serving (REST and /readyz answer 503) and retrying with backoff"
            );
            std::thread::Builder::new()
                .name("shardcast-db-retry".into())
                .spawn(move || {
                    let mut wait = first.max(1);
                    loop {
                        std::thread::sleep(Duration::from_millis(wait));
                        match connect_db(&orm_cfg) {
                            Ok(parts) => return install(parts),
                            Err(e) if e.is_unavailable() => {
                                tracing::debug!(error = %e, wait_ms = wait, "database still unavailable");
                                wait = wait.saturating_mul(2).min(max.max(1));
                            }
                            Err(e) => {
                                eprintln!("shardcast: the database answered but cannot be used: {e}");
                                std::process::exit(1);
                            }
                        }
                    }
                })
                .map_err(|e| (1, format!("shardcast: cannot start a thread: {e}")))?;
        }
        Err(e) => {
            tracing::debug!(error = %e, "database start-up failed");
            let hint = if e.is_unavailable() {
                " (serve.db_exit_on_unavailable is set; without it serve waits for the database)"
            } else {
                ""
            };
            return Err((
                1,
                format!(
                    "shardcast: cannot start the database ({backend}){hint}: {}",
                    short(&e.to_string(), 300)
                ),
            ));
        }
    }
    let live_page = cfg.serve.live_page_enabled();
    tracing::info!(
        backend = %backend,
        algorithm = auth.algorithm.name(),
        socketio_paths = ?cfg.server.socketio_paths,
        dev = cfg.serve.dev,
        live_page,
        "realtime server: REST under /api/v1, demo services channels and messages"
    );
    let cluster = if cfg.cluster.redis_url.is_some() {
        // Room tokens handed out by one node are checked by the others: the key must be the same everywhere, either
        // `realtime.room_token_secret` or the one derived from the shared HS256 access secret (never a random one).
        let random_key =
            cfg.realtime.room_token_key_random || auth.algorithm != JwtAlgorithm::Hs256;
        if cfg.realtime.room_token_secret.is_none() && random_key {
            return Err((
                2,
                "shardcast: cluster.redis_url is set but the room-token key would be random per process \
                 (realtime.room_token_key_random, or an RS256/ES256 access key): realtime.room_token_secret must be \
                 set, the same on every node (room tokens handed out by one node are checked by the others)"
                    .into(),
            ));
        }
        let c = shardcast::cluster::Cluster::start(
            cfg.cluster.clone(),
            cfg.server.shards,
            Default::default(),
        )
        .map_err(|e| (2, format!("shardcast: {e}")))?;
        tracing::info!(uid = c.uid(), prefix = %cfg.cluster.prefix, "cluster: this node's uid");
        let watched = c.clone();
        health.watch_cluster(move || watched.stats().state());
        Some(c)
    } else {
        None
    };
    let banner: Option<Banner> = match dev_secret {
        Some((path, origin)) => {
            let signer = AccessSigner::new(&auth).map_err(|e| (2, auth_error(&e)))?;
            let mut claims = serde_json::Map::new();
            claims.insert("companies".into(), serde_json::json!(["acme"]));
            let token = signer
                .sign("alice", 86_400, &claims)
                .map_err(|e| (2, format!("shardcast: {e}")))?;
            Some(Box::new(move |addr: SocketAddr| {
                print_dev_banner(addr, &path, origin, &token)
            }))
        }
        None => None,
    };
    let session = cfg.realtime.session.clone();
    let list_limit_max = cfg.realtime.list_limit_max;
    let demo_limits = cfg.realtime.demo;
    let write_limiter = RestWriteLimiter::new(cfg.realtime.writes);
    let factory: AppFactory = Arc::new(move |shard: &std::rc::Rc<server::ShardCtx>| {
        let mut io = SocketIo::new();
        if let Some(c) = &cluster {
            shardcast::cluster::node::install(shard, c);
        }
        let bus = live::install(
            shard,
            &mut io,
            SessionContext {
                access: verifier.clone(),
                rooms: room_tokens.clone(),
                config: session.clone(),
            },
        );
        let repos = repos_slot.clone();
        let verifier = verifier.clone();
        let room_tokens = room_tokens.clone();
        let write_limiter = write_limiter.clone();
        // The REST API is built on this shard once the database answered (503 `unavailable` until then).
        let make: health::LazyRouter = Box::new(move || {
            let repos = repos.get()?;
            let api = RestApi::new(verifier.clone(), room_tokens.clone())
                .with_list_limit_max(list_limit_max)
                .with_write_limiter(write_limiter.clone());
            let router: std::rc::Rc<dyn Router> = std::rc::Rc::new(
                demo::register_with(api, repos, bus.clone(), demo_limits).into_router(),
            );
            Some(router)
        });
        health.shard_started();
        let mut router: std::rc::Rc<dyn Router> =
            std::rc::Rc::new(health::ServeRouter::new(health.clone(), live_page, make));
        if let Some(c) = &cluster {
            router = std::rc::Rc::new(shardcast::cluster::node::ReadyRouter::new(
                c.clone(),
                Some(router),
            ));
        }
        // The online service (socket events online:get / online:set / online:last_seen, last seen) is installed on
        // every shard at once; it uses the database once the start-up retry loop has connected it.
        if let Err(e) = OnlineService::install_when_ready(shard, online_slot.clone()) {
            tracing::error!(error = %e, "online service not installed");
        }
        ShardApp {
            socketio: Some(io),
            router: Some(router),
        }
    });
    Ok((factory, io_slot, banner))
}

/// The dev banner on stdout. Written as one block and never fatal: a closed stdout (nobody reading) must not stop
/// the server.
fn print_dev_banner(
    addr: SocketAddr,
    secret: &std::path::Path,
    origin: dev::SecretOrigin,
    token: &str,
) {
    use std::io::Write;
    let made = match origin {
        dev::SecretOrigin::Created => "created now",
        dev::SecretOrigin::Reused => "reused",
    };
    let base = format!("http://{addr}");
    let mut text = format!(
        "dev mode: JWT secret in {} ({made}, mode 0600; `shardcast token` finds it there by itself)\n\
         live page: {base}/#token={token}\n\
         demo access token of user alice, company acme, valid 24 h:\n\
         TOKEN={token}\n\
         next, in another shell at the repository root:\n\
         \x20 TOKEN=$(cargo run -q --release -- token --sub alice --claim companies='[\"acme\"]')\n\
         \x20 curl -s -X POST {base}/api/v1/companies/acme/workspaces/main/channels -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20   -d '{{\"resource\": {{\"id\": \"general\", \"name\": \"General\"}}}}'\n",
        secret.display()
    );
    if !addr.ip().is_loopback() {
        text.push_str(&format!(
            "warning: dev mode on a non-loopback address ({addr}): anyone who can reach it can use the demo\n"
        ));
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Events of the database drivers let through per [`DRIVER_LOG_WINDOW_S`] window: a database that is down makes
/// them log several lines a second; shardcast's own health log says it once.
const DRIVER_LOG_EVENTS_PER_WINDOW_MAX: u32 = 5;
/// See [`DRIVER_LOG_EVENTS_PER_WINDOW_MAX`].
const DRIVER_LOG_WINDOW_S: u64 = 60;

fn driver_log_allowed(meta: &tracing::Metadata<'_>) -> bool {
    use std::sync::atomic::{AtomicU32, AtomicU64};
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let target = meta.target();
    if !meta.is_event() || !(target.starts_with("mongodb") || target.starts_with("scylla")) {
        return true;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / DRIVER_LOG_WINDOW_S)
        .unwrap_or(0);
    if WINDOW.swap(now, Ordering::AcqRel) != now {
        COUNT.store(0, Ordering::Release);
    }
    COUNT.fetch_add(1, Ordering::AcqRel) < DRIVER_LOG_EVENTS_PER_WINDOW_MAX
}

fn init_logging(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal (and never with NO_COLOR set): logs that go to a file stay plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // A dynamic filter: asked for every event (its callsite interest is "sometimes"), so it can count them.
    let limit = tracing_subscriber::filter::dynamic_filter_fn(|meta, _cx| driver_log_allowed(meta));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "json" {
        registry.with(fmt.json().with_filter(limit)).init();
    } else {
        registry.with(fmt.with_filter(limit)).init();
    }
}

/// Block SIGINT and SIGTERM in the calling thread. Called first thing in `main`, before any thread exists (the IO
/// shard, its tokio runtime and blocking pool, the redb sync thread, the shards): every thread inherits the mask, so
/// the kernel can deliver these signals to none of them, and only [`wait_signals`]'s `sigwait` receives them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc calls on a local, zero-initialized sigset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Where the signal thread finds the running server's shutdown flag (`None` while starting up).
type ShutdownSlot = Arc<std::sync::Mutex<Option<Arc<AtomicBool>>>>;

/// A thread that waits for SIGINT/SIGTERM. Once the server runs (its flag is in `slot`), the first signal sets that
/// flag (graceful shutdown: the shards stop accepting, close every session and drain; then the IO shard finishes and
/// makes its writes durable) and a second one exits at once. A signal during start-up exits at once: nothing has
/// been acknowledged yet. Exiting at once uses status 128 + the signal number, as the default action would.
fn wait_signals(set: libc::sigset_t) -> ShutdownSlot {
    let slot: ShutdownSlot = Arc::default();
    let shared = slot.clone();
    std::thread::spawn(move || {
        let mut count = 0;
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is a valid sigset and `sig` a valid out pointer.
            let rc = unsafe { libc::sigwait(&set, &mut sig) };
            if rc != 0 {
                continue;
            }
            count += 1;
            let flag = shared.lock().ok().and_then(|f| f.clone());
            match flag {
                Some(flag) if count == 1 => {
                    tracing::info!(signal = sig, "signal received, shutting down gracefully");
                    flag.store(true, Ordering::Release);
                }
                Some(_) => {
                    tracing::warn!(signal = sig, "second signal, exiting now");
                    std::process::exit(128 + sig);
                }
                None => {
                    tracing::warn!(signal = sig, "signal during start-up, exiting now");
                    std::process::exit(128 + sig);
                }
            }
        }
    });
    slot
}

/// The loud start-up checks: io_uring (memlock included), then the listen address unless sharing it on purpose.
fn preflight(listen: SocketAddr, listen_shared: bool) -> Result<(), String> {
    startup::check_io_uring()?;
    if !listen_shared {
        startup::check_listen_free(listen)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    // Before anything can start a thread (see `block_signals`).
    let set = block_signals();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let shutdown_slot = wait_signals(set);
    let mut io_shard = None;
    let mut banner = None;
    let (cfg, app): (ServerConfig, AppFactory) = match &cli.command {
        Command::Conformance(c) => {
            let cfg = c.apply(ServerConfig::conformance());
            if let Err(e) = preflight(cfg.listen, false) {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
            (cfg, server::conformance::app())
        }
        Command::Token(args) => return token(args),
        Command::Serve(args) => {
            let mut cfg = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shardcast: {e}");
                    return ExitCode::from(2);
                }
            };
            // Before the database (which may take request_timeout_ms to answer) and before dev mode writes anything.
            if let Err(e) = preflight(cfg.server.listen, cfg.serve.listen_shared) {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
            match serve_app(&mut cfg) {
                Ok((app, io, b)) => {
                    io_shard = Some(io);
                    banner = b;
                    (cfg.server, app)
                }
                Err((code, e)) => {
                    eprintln!("{e}");
                    return ExitCode::from(code);
                }
            }
        }
    };
    let handle = match server::start(cfg, app) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("shardcast: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("shardcast listening on {}", handle.local_addr);
    if let Ok(mut slot) = shutdown_slot.lock() {
        *slot = Some(handle.shutdown_flag());
    }
    if let Some(b) = banner {
        b(handle.local_addr);
    }
    let joined = handle.join();
    if let Some(io) = io_shard {
        // Every shard has ended, so no request is waiting for the database: stopping the IO shard drops the backend,
        // which makes every acknowledged write durable (the embedded store's final sync in any sync mode).
        io.stop();
        tracing::info!("database closed");
    }
    tracing::info!("shut down");
    match joined {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast: shard failed: {e}");
            ExitCode::from(1)
        }
    }
}
