//! What a run is: the scenario and every option of a run ([`Config`]), shared by the runner and the report.

use std::net::SocketAddr;

/// Which scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// C clients in R rooms; P publishes per second to random rooms.
    Fanout,
    /// C clients in one room; publish as fast as the server delivers.
    Hotroom,
    /// C clients connect, authenticate and join as fast as possible.
    Connect,
    /// C idle clients held for D seconds.
    Idle,
    /// C clients emit `echo` with an ack at a fixed rate.
    Echo,
    /// C clients in C rooms (each room has exactly one member); P REST creates per second to random rooms. Measures
    /// the server CPU per CRUD event: REST parse + JWT + durable store write + bus + one delivery.
    Publish,
    /// Fanout over several servers of one cluster (`--url` repeated, e.g. two shardcast nodes and Redis): C clients
    /// in R rooms, client `i` on node `(i / R) % N` so every room has members on every node; room `r` is published
    /// (REST create) on node `r % N`. Reports the cross-node latency apart; `--server-pid` may be repeated (Redis
    /// included) and the CPU is the sum.
    Cluster,
}

impl Scenario {
    /// The default client count (performance.md).
    pub fn default_clients(self) -> usize {
        match self {
            Scenario::Fanout => 10_000,
            Scenario::Hotroom => 5_000,
            Scenario::Connect | Scenario::Idle => 15_000,
            Scenario::Echo => 1_000,
            Scenario::Publish => 100,
            Scenario::Cluster => 2_000,
        }
    }

    /// The default measured duration, seconds.
    pub fn default_duration_s(self) -> f64 {
        match self {
            Scenario::Fanout => 10.0,
            Scenario::Hotroom => 5.0,
            Scenario::Connect => 0.0,
            Scenario::Idle => 60.0,
            Scenario::Echo | Scenario::Publish | Scenario::Cluster => 10.0,
        }
    }

    /// The default publish rate, per second (fanout 200, publish 400; the others do not publish at a rate).
    pub fn default_rate_per_s(self) -> f64 {
        match self {
            Scenario::Publish => 400.0,
            _ => 200.0,
        }
    }

    /// The default number of publishing HTTP connections: publish waits for every durable write, so it needs more
    /// requests in flight to reach its rate (4,000/s at a few ms per durable write).
    pub fn default_publishers(self) -> usize {
        match self {
            Scenario::Publish => 64,
            _ => 8,
        }
    }

    pub(crate) fn joins_rooms(self) -> bool {
        !matches!(self, Scenario::Echo)
    }
}

/// Everything a run needs (see `--help` for each option).
#[derive(Debug, Clone)]
pub struct Config {
    /// The scenario.
    pub scenario: Scenario,
    /// Label of the server in the output.
    pub label: String,
    /// Server address (loopback only).
    pub addr: SocketAddr,
    /// Every server of the run, `addr` first (the cluster scenario's nodes; one otherwise).
    pub addrs: Vec<SocketAddr>,
    /// Further processes whose CPU and RSS are added to the server's (the other nodes, Redis).
    pub extra_server_pids: Vec<u32>,
    /// `Host` header.
    pub host: String,
    /// Socket.IO path.
    pub socket_path: String,
    /// The REST collection, `{room}` replaced by the room's channel name.
    pub collection: String,
    /// HS256 secret of access tokens.
    pub jwt_secret: String,
    /// Extra claims put into every access token (e.g. `companies` for shardcast's demo services).
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// If set, each room's channel is created first with `POST /api/v1<path>` and
    /// `{"resource": {"id": <channel>, "name": <channel>}}` (2xx or 409 accepted).
    pub create_rooms_path: Option<String>,
    /// Server PID for CPU and RSS.
    pub server_pid: Option<u32>,
    /// Clients.
    pub clients: usize,
    /// Rooms (fanout, connect, idle; publish has one room per client).
    pub rooms: usize,
    /// Publishes per second (fanout, publish).
    pub publish_rate_per_s: f64,
    /// Measured phase, seconds.
    pub duration_s: f64,
    /// Share of clients on HTTP long-polling, 0..=1.
    pub polling_share: f64,
    /// HTTP connections publishing.
    pub publishers: usize,
    /// Echo requests per client per second.
    pub echo_rate_per_s: f64,
    /// Bytes of padding in each published resource and echo request.
    pub payload_bytes: usize,
    /// Longest wait for late deliveries after publishing stops, seconds.
    pub drain_s: f64,
    /// Longest wait for all clients to be ready, seconds.
    pub setup_timeout_s: f64,
    /// Clients between "connecting" and "ready" at once.
    pub connect_concurrency: usize,
    /// Source addresses 127.0.0.1..=127.0.0.N.
    pub source_ips: usize,
    /// Hotroom flow control: undelivered deliveries allowed per client.
    pub outstanding_per_client_max: u64,
    /// Print progress every second to stderr.
    pub progress: bool,
}
