//! The `shardcast` command line.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Args, Parser, Subcommand};
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
    /// The server with Socket.IO at /socket/ and /socket.io/ (main namespace only, no application events yet).
    Serve(Common),
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
    let (cfg, app): (ServerConfig, AppFactory) = match &cli.command {
        Command::Conformance(c) => (
            c.apply(ServerConfig::conformance()),
            server::conformance::app(),
        ),
        Command::Serve(c) => (
            c.apply(ServerConfig::default()),
            Arc::new(|_shard: &std::rc::Rc<server::ShardCtx>| ShardApp {
                socketio: Some(SocketIo::new()),
                router: None,
            }),
        ),
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
    match handle.join() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast: shard failed: {e}");
            ExitCode::from(1)
        }
    }
}
