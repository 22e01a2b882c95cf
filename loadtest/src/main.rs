//! `shardcast-loadtest <scenario> [options]`: see `--help` and the README's "Benchmarks" section.

use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use shardcast_loadtest::net;
use shardcast_loadtest::scenario::{self, Config, Scenario};

/// Load generator for Socket.IO servers speaking the shardcast wire contract. Prints progress on stderr, then a
/// table and, as the last line of stdout, one JSON summary.
#[derive(Debug, Parser)]
#[command(name = "shardcast-loadtest", version)]
struct Args {
    /// fanout, hotroom, connect, idle, echo, publish or cluster.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The server's base URL; loopback addresses only. Repeat for the cluster scenario's nodes.
    #[arg(long = "url", default_value = "http://127.0.0.1:3000")]
    urls: Vec<String>,
    /// The Socket.IO endpoint path.
    #[arg(long, default_value = "/socket/")]
    socket_path: String,
    /// The REST collection under /api/v1; `{room}` is replaced by the channel name (room-0, room-1, ...).
    #[arg(long, default_value = "/channels/{room}/messages")]
    collection: String,
    /// The HS256 secret the server verifies access tokens with.
    #[arg(long, env = "SHARDCAST_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Extra access-token claim `key=value` (repeat); the value is JSON when it parses, else a string
    /// (e.g. `--claim companies='["loadtest"]'` for shardcast's demo services).
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// Create each room's channel first: `POST /api/v1<PATH>` with `{"resource": {"id": "room-N", "name": "room-N"}}`
    /// (e.g. `/companies/loadtest/workspaces/loadtest/channels` for shardcast's demo services).
    #[arg(long)]
    create_rooms_path: Option<String>,
    /// The server's PID, to measure its CPU time and RSS. Repeat to add other processes (the cluster scenario's
    /// other nodes and Redis): their CPU and RSS are summed.
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Name of the server in the output.
    #[arg(long, default_value = "server")]
    label: String,
    /// Clients (default: fanout 10000, hotroom 5000, connect 15000, idle 15000, echo 1000, publish 100).
    #[arg(long)]
    clients: Option<usize>,
    /// Rooms (fanout, connect, idle); hotroom and echo use one, publish one per client.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Publishes per second (default: fanout 200, publish 400).
    #[arg(long)]
    rate: Option<f64>,
    /// Measured phase in seconds (default: fanout 10, hotroom 5, idle 60, echo 10, publish 10; connect has none).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Share of clients on HTTP long-polling instead of websocket, 0..1.
    #[arg(long, default_value_t = 0.0)]
    polling_share: f64,
    /// HTTP connections publishing (and fetching room tokens); default 8, publish 64.
    #[arg(long)]
    publishers: Option<usize>,
    /// Echo requests per client per second.
    #[arg(long, default_value_t = 1.0)]
    echo_rate: f64,
    /// Bytes of padding in each published resource / echo argument.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Longest wait for late deliveries or acks after the measured phase, seconds.
    #[arg(long, default_value_t = 5.0)]
    drain_s: f64,
    /// Longest wait for every client to be ready, seconds.
    #[arg(long, default_value_t = 60.0)]
    setup_timeout_s: f64,
    /// Clients handshaking at once.
    #[arg(long, default_value_t = 512)]
    connect_concurrency: usize,
    /// Spread client connections over source addresses 127.0.0.1..=127.0.0.N (ephemeral ports are per address).
    #[arg(long, default_value_t = 8)]
    source_ips: usize,
    /// Hotroom flow control: the publisher waits while more than this many deliveries per client are pending.
    #[arg(long, default_value_t = 16)]
    outstanding_per_client_max: u64,
    /// Hard cap on the whole run, seconds: the generator stops by itself.
    #[arg(long, default_value_t = 300.0)]
    time_max_s: f64,
    /// Also append the JSON line to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url must start with http:// (got {url})"))?;
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| format!("bad port in {url}"))?,
        ),
        None => (hostport, 80),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

fn parse_claims(args: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut map = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("--claim {a}: expected key=value"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_owned()));
        map.insert(k.to_owned(), value);
    }
    Ok(map)
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("shardcast-loadtest: {e}");
            std::process::exit(2);
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut addrs = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        let (host, port) = parse_url(url)?;
        addrs.push(net::resolve_loopback(&host, port)?);
    }
    let (host, port) = parse_url(&args.urls[0])?;
    let addr = addrs[0];
    let cfg = Config {
        scenario: args.scenario,
        label: args.label,
        addr,
        addrs,
        extra_server_pids: args.server_pids.iter().skip(1).copied().collect(),
        host: format!("{host}:{port}"),
        socket_path: args.socket_path,
        collection: args.collection,
        jwt_secret: args.jwt_secret,
        claims: parse_claims(&args.claims)?,
        create_rooms_path: args.create_rooms_path,
        server_pid: args.server_pids.first().copied(),
        clients: args.clients.unwrap_or(args.scenario.default_clients()),
        rooms: args.rooms,
        publish_rate_per_s: args.rate.unwrap_or(args.scenario.default_rate_per_s()),
        duration_s: args
            .duration_s
            .unwrap_or(args.scenario.default_duration_s()),
        polling_share: args.polling_share,
        publishers: args
            .publishers
            .unwrap_or(args.scenario.default_publishers()),
        echo_rate_per_s: args.echo_rate,
        payload_bytes: args.payload_bytes,
        drain_s: args.drain_s,
        setup_timeout_s: args.setup_timeout_s,
        connect_concurrency: args.connect_concurrency,
        source_ips: args.source_ips,
        outstanding_per_client_max: args.outstanding_per_client_max,
        progress: !args.quiet,
    };
    if let Some(pid) = cfg.server_pid {
        shardcast_loadtest::procstat::sample(pid)
            .map_err(|e| format!("cannot read /proc/{pid}: {e}"))?;
    }
    let limit = net::raise_nofile_limit();
    let needed = scenario::files_needed(&cfg);
    if needed > limit {
        return Err(format!(
            "{} clients need about {needed} open files but this process may open {limit}; use --clients {} or fewer",
            cfg.clients,
            cfg.clients.saturating_sub((needed - limit) as usize)
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    let time_max = Duration::from_secs_f64(args.time_max_s);
    let summary = local
        .block_on(&rt, async {
            tokio::time::timeout(time_max, scenario::run(cfg)).await
        })
        .map_err(|_| format!("run exceeded --time-max-s {}", args.time_max_s))??;
    // Dropping the LocalSet closes every client connection.
    drop(local);
    let line = summary.json_line();
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", summary.table());
    let _ = writeln!(out, "{line}");
    if let Some(path) = args.json_out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}
