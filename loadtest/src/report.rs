//! The result of a run: one JSON line (machine-readable, stable field names with units last) and a human table.

use serde::Serialize;

use crate::config::{Config, Scenario};
use crate::hist::Histogram;
use crate::stats::Stats;

/// Percentiles of a histogram, microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles {
    /// Values counted.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Of `h`.
    pub fn of(h: &Histogram) -> Percentiles {
        Percentiles {
            count: h.count(),
            p50: h.quantile(0.5),
            p99: h.quantile(0.99),
            p999: h.quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One run's results. `None` fields did not apply or could not be measured (no `--server-pid`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario.
    pub scenario: Scenario,
    /// Server label.
    pub server: String,
    /// Clients started.
    pub clients: usize,
    /// Of those, on long-polling.
    pub polling_clients: usize,
    /// Rooms.
    pub rooms: usize,
    /// Clients that became ready.
    pub clients_ready: u64,
    /// Clients that failed before ready.
    pub clients_failed: u64,
    /// Clients that lost their connection after ready.
    pub clients_lost: u64,
    /// Failure reasons and counts.
    pub failures: std::collections::BTreeMap<String, u64>,
    /// Length of the measured phase, seconds.
    pub measured_s: f64,
    /// Whole run, seconds.
    pub wall_s: f64,
    /// From the first connection attempt until the last client was ready, seconds.
    pub connect_s: Option<f64>,
    /// Clients ready per second of `connect_s`.
    pub connections_per_s: Option<f64>,
    /// Time from a client's start to ready.
    pub connect_latency_us: Option<Percentiles>,
    /// Successful publishes.
    pub publishes_ok: u64,
    /// Failed publishes.
    pub publishes_failed: u64,
    /// Publishes per second achieved.
    pub publishes_per_s: f64,
    /// Expected deliveries.
    pub deliveries_expected: u64,
    /// First receipts.
    pub deliveries: u64,
    /// Deliveries per second over the measured phase.
    pub deliveries_per_s: f64,
    /// Expected and never received.
    pub missed: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received in the wrong room.
    pub misrouted: u64,
    /// Received although the publish failed.
    pub unexpected: u64,
    /// `realtime:resource` events that did not parse.
    pub malformed: u64,
    /// Publish -> receive latency.
    pub latency_us: Percentiles,
    /// Servers the clients were spread over (cluster scenario: the nodes; 1 otherwise).
    pub nodes: usize,
    /// Publish -> receive latency of the deliveries on another node than the publish's (cluster scenario).
    pub latency_cross_node_us: Option<Percentiles>,
    /// Echo requests sent.
    pub acks_sent: u64,
    /// Echo acks received.
    pub acks_received: u64,
    /// Echo round trip.
    pub ack_rtt_us: Percentiles,
    /// Server CPU (utime + stime) during the measured phase (connect: during connecting), seconds.
    pub server_cpu_s: Option<f64>,
    /// Server CPU during the measured phase as a share of one core, percent.
    pub server_cpu_pct_one_core: Option<f64>,
    /// Server CPU per delivery, microseconds.
    pub server_cpu_us_per_delivery: Option<f64>,
    /// Server CPU per echo ack, microseconds.
    pub server_cpu_us_per_ack: Option<f64>,
    /// Server CPU per successful publish (a CRUD event: REST create, store, bus and its deliveries), microseconds.
    pub server_cpu_us_per_crud_event: Option<f64>,
    /// The publish rate asked for (fanout, publish), per second.
    pub publish_rate_target_per_s: Option<f64>,
    /// Server CPU per connection (connect + authenticate + join), microseconds.
    pub server_connect_cpu_us_per_connection: Option<f64>,
    /// Server RSS before any client connected, bytes.
    pub server_rss_before_bytes: Option<u64>,
    /// Server RSS at the end of the measured phase, bytes.
    pub server_rss_after_bytes: Option<u64>,
    /// (RSS after - RSS before) / ready clients, bytes.
    pub server_rss_per_connection_bytes: Option<f64>,
    /// The load generator's own CPU, seconds.
    pub loadtest_cpu_s: f64,
}

impl Summary {
    /// An empty summary for `cfg`.
    pub fn new(cfg: &Config, rooms: usize, polling: usize) -> Summary {
        let empty = Percentiles::of(&Histogram::new());
        Summary {
            scenario: cfg.scenario,
            server: cfg.label.clone(),
            clients: cfg.clients,
            polling_clients: polling,
            rooms,
            clients_ready: 0,
            clients_failed: 0,
            clients_lost: 0,
            failures: Default::default(),
            measured_s: 0.0,
            wall_s: 0.0,
            connect_s: None,
            connections_per_s: None,
            connect_latency_us: None,
            publishes_ok: 0,
            publishes_failed: 0,
            publishes_per_s: 0.0,
            deliveries_expected: 0,
            deliveries: 0,
            deliveries_per_s: 0.0,
            missed: 0,
            duplicated: 0,
            misrouted: 0,
            unexpected: 0,
            malformed: 0,
            latency_us: empty,
            nodes: if cfg.scenario == Scenario::Cluster {
                cfg.addrs.len().max(1)
            } else {
                1
            },
            latency_cross_node_us: None,
            acks_sent: 0,
            acks_received: 0,
            ack_rtt_us: empty,
            server_cpu_s: None,
            server_cpu_pct_one_core: None,
            server_cpu_us_per_delivery: None,
            server_cpu_us_per_ack: None,
            server_cpu_us_per_crud_event: None,
            publish_rate_target_per_s: matches!(
                cfg.scenario,
                Scenario::Fanout | Scenario::Publish | Scenario::Cluster
            )
            .then_some(cfg.publish_rate_per_s),
            server_connect_cpu_us_per_connection: None,
            server_rss_before_bytes: None,
            server_rss_after_bytes: None,
            server_rss_per_connection_bytes: None,
            loadtest_cpu_s: 0.0,
        }
    }

    /// Copies the accounting of `s` over a measured phase of `measured_s` seconds.
    pub fn fill_from(&mut self, _cfg: &Config, s: &Stats, measured_s: f64) {
        let t = s.totals();
        self.clients_ready = s.ready;
        self.clients_failed = s.failed;
        self.clients_lost = s.lost;
        self.failures = s.failures.clone();
        self.measured_s = measured_s;
        self.publishes_ok = s.publishes_ok;
        self.publishes_failed = s.publishes_failed;
        self.publishes_per_s = per_s(s.publishes_ok, measured_s);
        self.deliveries_expected = t.expected;
        self.deliveries = s.deliveries;
        self.deliveries_per_s = per_s(s.deliveries, measured_s);
        self.missed = t.missed;
        self.duplicated = s.duplicated;
        self.misrouted = s.misrouted;
        self.unexpected = t.unexpected;
        self.malformed = s.malformed;
        self.latency_us = Percentiles::of(&s.latency);
        self.latency_cross_node_us =
            (self.nodes > 1).then(|| Percentiles::of(&s.latency_cross_node));
        self.acks_sent = s.acks_sent;
        self.acks_received = s.acks_received;
        self.ack_rtt_us = Percentiles::of(&s.ack_rtt);
    }

    /// The JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
        row(
            "scenario / server",
            format!("{:?} / {}", self.scenario, self.server),
        );
        row(
            "clients ready / failed / lost",
            format!(
                "{} / {} / {} (of {}, {} polling)",
                self.clients_ready,
                self.clients_failed,
                self.clients_lost,
                self.clients,
                self.polling_clients
            ),
        );
        for (reason, n) in &self.failures {
            row("  failure", format!("{n} x {reason}"));
        }
        row("rooms", self.rooms.to_string());
        row("measured phase s", format!("{:.2}", self.measured_s));
        row(
            "connect s / connections/s",
            format!(
                "{} / {}",
                opt(self.connect_s, 2),
                opt(self.connections_per_s, 0)
            ),
        );
        if let Some(c) = &self.connect_latency_us {
            row(
                "connect latency us p50/p99/max",
                format!("{} / {} / {}", c.p50, c.p99, c.max),
            );
        }
        match self.scenario {
            Scenario::Fanout | Scenario::Hotroom | Scenario::Publish | Scenario::Cluster => {
                row(
                    "publishes ok / failed (per s)",
                    format!(
                        "{} / {} ({:.0})",
                        self.publishes_ok, self.publishes_failed, self.publishes_per_s
                    ),
                );
                row(
                    "deliveries / expected",
                    format!("{} / {}", self.deliveries, self.deliveries_expected),
                );
                row("deliveries/s", format!("{:.0}", self.deliveries_per_s));
                row(
                    "missed / duplicated / misrouted / unexpected",
                    format!(
                        "{} / {} / {} / {}",
                        self.missed, self.duplicated, self.misrouted, self.unexpected
                    ),
                );
                let l = &self.latency_us;
                row(
                    "latency us p50/p99/p999/max",
                    format!("{} / {} / {} / {}", l.p50, l.p99, l.p999, l.max),
                );
                if let Some(l) = &self.latency_cross_node_us {
                    row(
                        "cross-node latency us p50/p99/p999/max",
                        format!("{} / {} / {} / {}", l.p50, l.p99, l.p999, l.max),
                    );
                }
                row(
                    "server CPU us/delivery",
                    opt(self.server_cpu_us_per_delivery, 3),
                );
                row(
                    "server CPU us/CRUD event",
                    opt(self.server_cpu_us_per_crud_event, 2),
                );
            }
            Scenario::Echo => {
                row(
                    "acks sent / received",
                    format!("{} / {}", self.acks_sent, self.acks_received),
                );
                let l = &self.ack_rtt_us;
                row(
                    "ack rtt us p50/p99/p999/max",
                    format!("{} / {} / {} / {}", l.p50, l.p99, l.p999, l.max),
                );
                row("server CPU us/ack", opt(self.server_cpu_us_per_ack, 3));
            }
            Scenario::Connect | Scenario::Idle => {}
        }
        row(
            "server CPU us/connection",
            opt(self.server_connect_cpu_us_per_connection, 1),
        );
        row("server CPU s (measured phase)", opt(self.server_cpu_s, 3));
        row(
            "server CPU % of one core",
            opt(self.server_cpu_pct_one_core, 2),
        );
        row(
            "server RSS before / after MiB",
            format!(
                "{} / {}",
                opt(
                    self.server_rss_before_bytes.map(|b| b as f64 / 1048576.0),
                    1
                ),
                opt(self.server_rss_after_bytes.map(|b| b as f64 / 1048576.0), 1)
            ),
        );
        row(
            "server RSS per connection bytes",
            opt(self.server_rss_per_connection_bytes, 0),
        );
        row("loadtest CPU s", format!("{:.2}", self.loadtest_cpu_s));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        out
    }
}

fn per_s(n: u64, s: f64) -> f64 {
    if s > 0.0 {
        (n as f64 / s * 10.0).round() / 10.0
    } else {
        0.0
    }
}
