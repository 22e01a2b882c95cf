//! The six scenarios of `performance.md`, each a sequence of phases over one set of clients, measured by
//! sampling the server's `/proc` entry at the edges of the measured phase.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::client::{self, ClientSpec, Shared};
pub use crate::config::{Config, Scenario};
use crate::http::HttpConn;
use crate::procstat;
use crate::report::{Percentiles, Summary};
use crate::stats::Stats;

/// A small deterministic generator (xorshift64*) for room choice: no dependency, same sequence every run.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// Next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % n.max(1)
    }
}

#[derive(serde::Serialize)]
struct AccessClaims<'a> {
    sub: &'a str,
    exp: u64,
    iat: u64,
    #[serde(flatten)]
    extra: &'a serde_json::Map<String, serde_json::Value>,
}

/// The HS256 signing key for `secret` (which must not be empty).
pub fn signing_key(secret: &str) -> Result<jsonwebtoken::EncodingKey, String> {
    jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| format!("JWT secret: {e}"))
}

/// An HS256 access token `{sub, iat, exp}` valid for an hour.
pub fn access_token(
    key: &jsonwebtoken::EncodingKey,
    sub: &str,
    extra: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = AccessClaims {
        sub,
        exp: now + 3600,
        iat: now,
        extra,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        key,
    )
    .unwrap_or_default()
}

#[derive(Deserialize)]
struct RoomToken {
    room: String,
    token: String,
}

#[derive(Deserialize)]
struct ListResponse {
    websockets: Vec<RoomToken>,
}

/// The channel name of room `r`.
pub fn channel_name(r: usize) -> String {
    format!("room-{r}")
}

fn collection_path(cfg: &Config, r: usize) -> String {
    format!(
        "/api/v1{}",
        cfg.collection.replace("{room}", &channel_name(r))
    )
}

fn server_sample(cfg: &Config) -> Option<procstat::Sample> {
    let mut total = cfg.server_pid.and_then(|p| procstat::sample(p).ok())?;
    for p in &cfg.extra_server_pids {
        let s = procstat::sample(*p).ok()?;
        total.cpu_us += s.cpu_us;
        total.rss_bytes += s.rss_bytes;
    }
    Some(total)
}

/// The servers of the run (at least `cfg.addr`).
fn nodes(cfg: &Config) -> Vec<SocketAddr> {
    if cfg.addrs.is_empty() {
        vec![cfg.addr]
    } else {
        cfg.addrs.clone()
    }
}

/// Open files this run needs: one per websocket client, two per polling client, the publishers, and slack.
pub fn files_needed(cfg: &Config) -> u64 {
    let polling = polling_count(cfg);
    (cfg.clients + polling + cfg.publishers.max(8) + 64) as u64
}

fn polling_count(cfg: &Config) -> usize {
    (cfg.clients as f64 * cfg.polling_share.clamp(0.0, 1.0)).round() as usize
}

/// Runs the configured scenario and returns its summary. Errors are setup failures (server unreachable, REST
/// contract not met); client-level failures are counted in the summary.
pub async fn run(cfg: Config) -> Result<Summary, String> {
    let key = signing_key(&cfg.jwt_secret)?;
    let start = Instant::now();
    let self_cpu0 = procstat::self_cpu_us();
    let rooms = match cfg.scenario {
        Scenario::Fanout | Scenario::Connect | Scenario::Idle | Scenario::Cluster => {
            cfg.rooms.max(1)
        }
        Scenario::Hotroom | Scenario::Echo => 1,
        // Rooms of exactly one member.
        Scenario::Publish => cfg.clients.max(1),
    };
    let polling = polling_count(&cfg);
    let payload: String = "x".repeat(cfg.payload_bytes);
    let shared = Rc::new(Shared {
        addr: cfg.addr,
        host: cfg.host.clone(),
        socket_path: cfg.socket_path.clone(),
        source_ips: cfg.source_ips,
        start,
        stats: std::cell::RefCell::new(Stats::new(cfg.clients, rooms)),
        handshakes: Arc::new(Semaphore::new(cfg.connect_concurrency.max(1))),
        echo_payload: serde_json::json!({ "pad": payload }).to_string(),
        echo_on: Cell::new(false),
    });
    let phase = Rc::new(Cell::new("tokens"));
    let progress = cfg.progress.then(|| {
        tokio::task::spawn_local(progress_loop(
            cfg.clone(),
            Rc::clone(&shared),
            Rc::clone(&phase),
        ))
    });

    // Tokens: access tokens minted here, room tokens from the server's REST API (not measured).
    let mut specs = Vec::with_capacity(cfg.clients);
    let servers = nodes(&cfg);
    let node_of = |i: usize| {
        if cfg.scenario == Scenario::Cluster {
            (i / rooms) % servers.len()
        } else {
            0
        }
    };
    if cfg.scenario == Scenario::Cluster {
        let client_node = (0..cfg.clients).map(|i| node_of(i) as u8).collect();
        shared
            .stats
            .borrow_mut()
            .set_nodes(client_node, servers.len());
    }
    for i in 0..cfg.clients {
        specs.push(ClientSpec {
            id: i as u32,
            access_token: access_token(&key, &format!("user-{i}"), &cfg.claims),
            room: None,
            polling: polling > 0
                && (i * polling) / cfg.clients != ((i + 1) * polling) / cfg.clients,
            echo_every: (cfg.scenario == Scenario::Echo && cfg.echo_rate_per_s > 0.0)
                .then(|| Duration::from_secs_f64(1.0 / cfg.echo_rate_per_s)),
            addr: Some(servers[node_of(i)]),
        });
    }
    if let Some(path) = &cfg.create_rooms_path
        && cfg.scenario.joins_rooms()
    {
        // Each node has its own store: the channels exist on every one.
        for addr in &servers {
            create_rooms(&cfg, *addr, path, rooms, &key).await?;
        }
    }
    if cfg.scenario.joins_rooms() {
        fetch_room_tokens(&cfg, rooms, &mut specs).await?;
    }

    // Connect everyone.
    phase.set("connect");
    let before_connect = server_sample(&cfg);
    let connect_start_us = shared.now_us();
    for spec in specs {
        tokio::task::spawn_local(client::run(spec, Rc::clone(&shared)));
    }
    let setup_deadline = Instant::now() + Duration::from_secs_f64(cfg.setup_timeout_s);
    loop {
        let (ready, failed) = {
            let s = shared.stats.borrow();
            (s.ready, s.failed)
        };
        if (ready + failed) as usize >= cfg.clients || Instant::now() >= setup_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after_connect = server_sample(&cfg);
    shared
        .stats
        .borrow_mut()
        .fail_stragglers("not ready within --setup-timeout-s");
    let connect_end_us = {
        let s = shared.stats.borrow();
        if s.ready > 0 {
            s.last_ready_us
        } else {
            shared.now_us()
        }
    };
    shared.stats.borrow_mut().freeze_membership();

    let mut summary = Summary::new(&cfg, rooms, polling);
    {
        let s = shared.stats.borrow();
        let connect_s = (connect_end_us.saturating_sub(connect_start_us)) as f64 / 1e6;
        summary.connect_s = Some(connect_s);
        summary.connections_per_s = (connect_s > 0.0).then(|| s.ready as f64 / connect_s);
        summary.connect_latency_us = Some(Percentiles::of(&s.ready_latency));
        if let (Some(a), Some(b)) = (before_connect, after_connect) {
            let cpu = b.cpu_us.saturating_sub(a.cpu_us);
            summary.server_connect_cpu_us_per_connection =
                (s.ready > 0).then(|| cpu as f64 / s.ready as f64);
            summary.server_rss_before_bytes = Some(a.rss_bytes);
        }
    }

    let measured_start = Instant::now();
    let m0 = server_sample(&cfg);
    match cfg.scenario {
        Scenario::Fanout | Scenario::Hotroom | Scenario::Publish | Scenario::Cluster => {
            phase.set("publish");
            publish(&cfg, &shared, rooms, &key).await;
            phase.set("drain");
            let deadline = Instant::now() + Duration::from_secs_f64(cfg.drain_s);
            while Instant::now() < deadline {
                let (got, want) = {
                    let s = shared.stats.borrow();
                    (s.deliveries, s.expected_ok)
                };
                if got >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Scenario::Connect => {}
        Scenario::Idle | Scenario::Echo => {
            phase.set(if cfg.scenario == Scenario::Idle {
                "hold"
            } else {
                "echo"
            });
            shared.echo_on.set(cfg.scenario == Scenario::Echo);
            tokio::time::sleep(Duration::from_secs_f64(cfg.duration_s)).await;
            shared.echo_on.set(false);
            if cfg.scenario == Scenario::Echo {
                phase.set("drain");
                let deadline = Instant::now() + Duration::from_secs_f64(cfg.drain_s);
                while Instant::now() < deadline {
                    let answered = {
                        let s = shared.stats.borrow();
                        s.acks_received + s.acks_unexpected >= s.acks_sent
                    };
                    if answered {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    let m1 = server_sample(&cfg);
    let measured_s = measured_start.elapsed().as_secs_f64();
    phase.set("report");
    if let Some(p) = progress {
        p.abort();
    }

    let s = shared.stats.borrow();
    summary.fill_from(&cfg, &s, measured_s);
    if let (Some(a), Some(b)) = (m0, m1) {
        let cpu_us = b.cpu_us.saturating_sub(a.cpu_us);
        summary.server_cpu_s = Some(cpu_us as f64 / 1e6);
        summary.server_cpu_pct_one_core =
            (measured_s > 0.0).then(|| cpu_us as f64 / 1e4 / measured_s);
        summary.server_rss_after_bytes = Some(b.rss_bytes);
        if let Some(before) = summary.server_rss_before_bytes {
            summary.server_rss_per_connection_bytes =
                (s.ready > 0).then(|| (b.rss_bytes as f64 - before as f64) / s.ready as f64);
        }
        summary.server_cpu_us_per_delivery =
            (s.deliveries > 0).then(|| cpu_us as f64 / s.deliveries as f64);
        summary.server_cpu_us_per_ack =
            (s.acks_received > 0).then(|| cpu_us as f64 / s.acks_received as f64);
        summary.server_cpu_us_per_crud_event = (matches!(
            cfg.scenario,
            Scenario::Fanout | Scenario::Hotroom | Scenario::Publish | Scenario::Cluster
        ) && s.publishes_ok > 0)
            .then(|| cpu_us as f64 / s.publishes_ok as f64);
    }
    if cfg.scenario == Scenario::Connect {
        // The measured phase of `connect` is the connecting itself.
        summary.server_cpu_s = summary
            .server_connect_cpu_us_per_connection
            .map(|per| per * s.ready as f64 / 1e6);
        summary.server_cpu_pct_one_core = match (summary.server_cpu_s, summary.connect_s) {
            (Some(cpu), Some(t)) if t > 0.0 => Some(cpu / t * 100.0),
            _ => None,
        };
    }
    summary.loadtest_cpu_s = (procstat::self_cpu_us().saturating_sub(self_cpu0)) as f64 / 1e6;
    summary.wall_s = start.elapsed().as_secs_f64();
    Ok(summary)
}

async fn create_rooms(
    cfg: &Config,
    addr: SocketAddr,
    path: &str,
    rooms: usize,
    key: &jsonwebtoken::EncodingKey,
) -> Result<(), String> {
    let mut conn = HttpConn::new(addr, &cfg.host, None);
    let auth = format!(
        "Bearer {}",
        access_token(key, "loadtest-admin", &cfg.claims)
    );
    let url = format!("/api/v1{path}");
    for r in 0..rooms {
        let name = channel_name(r);
        let body = serde_json::json!({ "resource": { "id": name, "name": name } }).to_string();
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        let resp = conn
            .request("POST", &url, &headers, body.as_bytes())
            .await
            .map_err(|e| format!("POST {url}: {e}"))?;
        if !(200..300).contains(&resp.status) && resp.status != 409 {
            return Err(format!(
                "POST {url} ({name}): status {} ({})",
                resp.status,
                String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            ));
        }
    }
    Ok(())
}

/// (room name, room token) per client, filled by the token workers.
type TokenSlots = Rc<std::cell::RefCell<Vec<Option<(String, String)>>>>;

async fn fetch_room_tokens(
    cfg: &Config,
    rooms: usize,
    specs: &mut [ClientSpec],
) -> Result<(), String> {
    let workers = cfg.publishers.clamp(1, 64);
    let next = Rc::new(Cell::new(0usize));
    let results: TokenSlots = Rc::new(std::cell::RefCell::new(vec![None; specs.len()]));
    let tokens: Rc<Vec<String>> = Rc::new(specs.iter().map(|s| s.access_token.clone()).collect());
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (next, results, tokens, cfg) = (
            Rc::clone(&next),
            Rc::clone(&results),
            Rc::clone(&tokens),
            cfg.clone(),
        );
        handles.push(tokio::task::spawn_local(async move {
            let mut conn = HttpConn::new(cfg.addr, &cfg.host, None);
            loop {
                let i = next.get();
                if i >= tokens.len() {
                    return Ok::<(), String>(());
                }
                next.set(i + 1);
                let r = i % rooms;
                let path = format!("{}?websockets=true", collection_path(&cfg, r));
                let auth = format!("Bearer {}", tokens[i]);
                let resp = conn
                    .request("GET", &path, &[("Authorization", &auth)], b"")
                    .await
                    .map_err(|e| format!("GET {path}: {e}"))?;
                if resp.status != 200 {
                    return Err(format!(
                        "GET {path}: status {} ({})",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    ));
                }
                let list: ListResponse = serde_json::from_slice(&resp.body).map_err(|e| {
                    format!("GET {path}: body is not {{\"websockets\": [{{room, token}}]}}: {e}")
                })?;
                let first = list
                    .websockets
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("GET {path}: empty websockets list"))?;
                results.borrow_mut()[i] = Some((first.room, first.token));
            }
        }));
    }
    for h in handles {
        h.await.map_err(|e| format!("token worker: {e}"))??;
    }
    let mut results = results.borrow_mut();
    for (i, spec) in specs.iter_mut().enumerate() {
        let (room, token) = results[i].take().ok_or("room token missing")?;
        spec.room = Some(((i % rooms) as u32, room, token));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct PublishBody<'a> {
    resource: PublishedResource<'a>,
}

#[derive(serde::Serialize)]
struct PublishedResource<'a> {
    room_index: u32,
    seq: u64,
    sent_at_us: u64,
    text: &'a str,
}

async fn publish(cfg: &Config, shared: &Rc<Shared>, rooms: usize, key: &jsonwebtoken::EncodingKey) {
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.duration_s);
    let workers = cfg.publishers.max(1);
    let pad: Rc<str> = "x".repeat(cfg.payload_bytes).into();
    let access = Rc::new(format!(
        "Bearer {}",
        access_token(key, "publisher", &cfg.claims)
    ));
    let mut handles = Vec::new();
    for w in 0..workers {
        let (shared, cfg, pad, access) = (
            Rc::clone(shared),
            cfg.clone(),
            Rc::clone(&pad),
            Rc::clone(&access),
        );
        handles.push(tokio::task::spawn_local(async move {
            // One connection per node; room `r` is published on node `r % N` (one node but in the cluster scenario).
            let servers = nodes(&cfg);
            let mut conns: Vec<HttpConn> = servers
                .iter()
                .map(|a| HttpConn::new(*a, &cfg.host, None))
                .collect();
            let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let at_a_rate = matches!(
                cfg.scenario,
                Scenario::Fanout | Scenario::Publish | Scenario::Cluster
            );
            let mut ticker = (at_a_rate && cfg.publish_rate_per_s > 0.0).then(|| {
                let period = Duration::from_secs_f64(workers as f64 / cfg.publish_rate_per_s);
                // Stagger the workers over one period.
                let first = tokio::time::Instant::now() + period.mul_f64(w as f64 / workers as f64);
                let mut t = tokio::time::interval_at(first, period);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            let outstanding_max = cfg.outstanding_per_client_max * cfg.clients as u64;
            while Instant::now() < deadline {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    None => {
                        // As fast as the server delivers: wait while too much is undelivered.
                        while shared.stats.borrow().outstanding() > outstanding_max {
                            if Instant::now() >= deadline {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                let room = rng.below(rooms as u64) as u32;
                let seq = shared.stats.borrow_mut().next_publish(room);
                let body = PublishBody {
                    resource: PublishedResource {
                        room_index: room,
                        seq,
                        sent_at_us: shared.now_us(),
                        text: &pad,
                    },
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let path = collection_path(&cfg, room as usize);
                let headers = [("Authorization", access.as_str()), ("Content-Type", "application/json")];
                let conn = &mut conns[room as usize % servers.len()];
                let ok = matches!(conn.request("POST", &path, &headers, &body).await, Ok(r) if (200..300).contains(&r.status));
                shared.stats.borrow_mut().publish_done(room, seq, ok);
            }
        }));
    }
    for h in handles {
        let _ = h.await;
    }
}

async fn progress_loop(cfg: Config, shared: Rc<Shared>, phase: Rc<Cell<&'static str>>) {
    let mut t = tokio::time::interval(Duration::from_secs(1));
    t.tick().await;
    let mut last_deliveries = 0;
    let mut last_acks = 0;
    loop {
        t.tick().await;
        let s = shared.stats.borrow();
        eprintln!(
            "[{:>6.1}s] {:?} {:<8} ready {}/{} failed {} lost {} deliveries/s {} acks/s {} duplicated {}",
            shared.start.elapsed().as_secs_f64(),
            cfg.scenario,
            phase.get(),
            s.ready,
            cfg.clients,
            s.failed,
            s.lost,
            s.deliveries - last_deliveries,
            s.acks_received - last_acks,
            s.duplicated,
        );
        last_deliveries = s.deliveries;
        last_acks = s.acks_received;
    }
}
