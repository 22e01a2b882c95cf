//! The `shardcast` command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
use shardcast::config::{Config, parse_duration_s};
use shardcast::realtime::auth::{
    AccessSigner, AccessVerifier, AuthConfigError, RoomTokens, Secret, parse_claim_arg,
};
use shardcast::realtime::demo::{self, DemoRepositories};
use shardcast::realtime::live;
use shardcast::realtime::protocol::SessionContext;
use shardcast::realtime::rest::RestApi;
use shardcast::realtime::rest::UserWriteLimiter as RestWriteLimiter;
use shardcast::server::{self, AppFactory, ServerConfig, ShardApp, SocketIo};

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
    /// realtime:resource), the REST API of the demo services under /api/v1, /metrics and /healthz.
    Serve(ServeArgs),
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
        Ok(cfg)
    }
}

const NO_SECRET_HELP: &str = "shardcast: no JWT secret configured, and there is no built-in default.
Access tokens are verified with HS256 and a secret you choose. Set one, e.g.:

    export SHARDCAST_JWT_SECRET=\"$(head -c 32 /dev/urandom | base64)\"

or `jwt_secret = \"...\"` in the [auth] section of a --config file (or use RS256/ES256 with
auth.jwt_public_key_file). Then `shardcast token --sub alice --claim companies='[\"acme\"]'` prints a token.";

fn auth_error(e: &AuthConfigError) -> String {
    match e {
        AuthConfigError::MissingSecret | AuthConfigError::EmptySecret => NO_SECRET_HELP.to_string(),
        other => format!("shardcast: {other}"),
    }
}

fn token(args: &TokenArgs) -> ExitCode {
    let run = || -> Result<String, String> {
        let cfg = Config::load(args.config.as_deref()).map_err(|e| format!("shardcast: {e}"))?;
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

/// Everything `serve` needs before the shards start: the verifier, the room tokens, the ORM and its tables.
fn serve_app(cfg: &Config) -> Result<(AppFactory, shardcast::orm::IoShard), (u8, String)> {
    let auth = cfg
        .auth_config()
        .map_err(|e| (2, format!("shardcast: {e}")))?;
    let verifier = AccessVerifier::new(&auth).map_err(|e| (2, auth_error(&e)))?;
    let room_secret = cfg
        .realtime
        .room_token_secret
        .clone()
        .unwrap_or_else(Secret::random);
    let room_tokens = RoomTokens::new(&room_secret, cfg.realtime.room_token_ttl_s, auth.leeway_s)
        .map_err(|e| (2, format!("shardcast: realtime.room_token_secret: {e}")))?;
    let (io_shard, orm) = shardcast::orm::start(&cfg.orm)
        .map_err(|e| (1, format!("shardcast: cannot start the database: {e}")))?;
    let repos = futures_lite::future::block_on(DemoRepositories::open(&orm))
        .map_err(|e| (1, format!("shardcast: cannot open the demo tables: {e}")))?;
    tracing::info!(
        backend = ?cfg.orm.backend,
        embedded_path = %cfg.orm.embedded_path.display(),
        algorithm = auth.algorithm.name(),
        socketio_paths = ?cfg.server.socketio_paths,
        "realtime server: REST under /api/v1, demo services channels and messages"
    );
    let cluster = if cfg.cluster.redis_url.is_some() {
        if cfg.realtime.room_token_secret.is_none() {
            return Err((
                2,
                "shardcast: cluster.redis_url is set, so realtime.room_token_secret must be set too, the same on \
                 every node (room tokens handed out by one node are checked by the others)"
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
        Some(c)
    } else {
        None
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
        let api = RestApi::new(verifier.clone(), room_tokens.clone())
            .with_list_limit_max(list_limit_max)
            .with_write_limiter(write_limiter.clone());
        let api = demo::register_with(api, &repos, bus, demo_limits);
        let mut router: std::rc::Rc<dyn server::Router> = std::rc::Rc::new(api.into_router());
        if let Some(c) = &cluster {
            router = std::rc::Rc::new(shardcast::cluster::node::ReadyRouter::new(
                c.clone(),
                Some(router),
            ));
        }
        ShardApp {
            socketio: Some(io),
            router: Some(router),
        }
    });
    Ok((factory, io_shard))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
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

fn main() -> ExitCode {
    // Before anything can start a thread (see `block_signals`).
    let set = block_signals();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let shutdown_slot = wait_signals(set);
    let mut io_shard = None;
    let (cfg, app): (ServerConfig, AppFactory) = match &cli.command {
        Command::Conformance(c) => (
            c.apply(ServerConfig::conformance()),
            server::conformance::app(),
        ),
        Command::Token(args) => return token(args),
        Command::Serve(args) => {
            let cfg = match args.config() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("shardcast: {e}");
                    return ExitCode::from(2);
                }
            };
            match serve_app(&cfg) {
                Ok((app, io)) => {
                    io_shard = Some(io);
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
