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
    /// Embedded store: 0 fsyncs every write before answering; N > 0 makes writes durable together every N ms.
    #[arg(long)]
    db_sync_interval_ms: Option<u64>,
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
    let online =
        futures_lite::future::block_on(shardcast::realtime::online::OnlineService::open(&orm))
            .map_err(|e| (1, format!("shardcast: cannot open the online table: {e}")))?;
    tracing::info!(
        backend = ?cfg.orm.backend,
        embedded_path = %cfg.orm.embedded_path.display(),
        algorithm = auth.algorithm.name(),
        socketio_paths = ?cfg.server.socketio_paths,
        "realtime server: REST under /api/v1, demo services channels and messages"
    );
    let session = cfg.realtime.session.clone();
    let list_limit_max = cfg.realtime.list_limit_max;
    let demo_limits = cfg.realtime.demo;
    let write_limiter = RestWriteLimiter::new(cfg.realtime.writes);
    let factory: AppFactory = Arc::new(move |shard: &std::rc::Rc<server::ShardCtx>| {
        let mut io = SocketIo::new();
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
        if let Err(e) = online.install(shard) {
            tracing::error!(error = %e, "online service not installed");
        }
        ShardApp {
            socketio: Some(io),
            router: Some(std::rc::Rc::new(api.into_router())),
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

/// Block SIGINT and SIGTERM in this thread (the shards inherit the mask) and return a thread that waits for them:
/// the first asks for a graceful shutdown, the second exits at once.
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

fn wait_signals(set: libc::sigset_t, flag: Arc<AtomicBool>) {
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
            if count == 1 {
                tracing::info!(signal = sig, "signal received, shutting down gracefully");
                flag.store(true, Ordering::Release);
            } else {
                tracing::warn!(signal = sig, "second signal, exiting now");
                std::process::exit(1);
            }
        }
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
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
    let set = block_signals();
    let handle = match server::start(cfg, app) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("shardcast: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("shardcast listening on {}", handle.local_addr);
    wait_signals(set, handle.shutdown_flag());
    let joined = handle.join();
    if let Some(io) = io_shard {
        io.stop();
    }
    match joined {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast: shard failed: {e}");
            ExitCode::from(1)
        }
    }
}
