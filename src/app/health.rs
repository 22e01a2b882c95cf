//! Database health and readiness: the state behind `/readyz`, one log line when the backend goes down and one when
//! it comes back, the probe that refreshes it, and the per-shard router that serves `/readyz`, the live page and,
//! once the database answered, the REST API (503 `unavailable` before that).
//!
//! `/healthz` (served by the server itself) stays liveness: it answers while the process runs. `/readyz` answers 200
//! only when every shard started, the database answers and no shutdown began; 503 otherwise, with the reason.
//!
//! Clustered, `/readyz`'s body also says where the Redis adapter stands (`"cluster": "up" | "connecting" | "down"`)
//! without changing its status: with Redis down the node still serves its own clients (local delivery, REST), so a
//! load balancer must keep sending it traffic. `/readyz/cluster` ([`crate::cluster::node::READY_PATH`]) is the
//! probe that answers 503 while Redis is unreachable, for whoever wants to act on that.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::json;

use crate::cluster::AdapterState;
use crate::realtime::rest::UNAVAILABLE_MESSAGE;
use crate::server::{Request, Response, ResponseFuture, Router, ShardCtx};

/// What the last contact with the database said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbState {
    /// Not reached yet (start-up, retrying).
    Connecting,
    /// Answered.
    Up,
    /// Did not answer (unreachable, timed out).
    Down,
}

impl DbState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => DbState::Up,
            2 => DbState::Down,
            _ => DbState::Connecting,
        }
    }
    /// The lowercase name `/readyz` reports.
    pub fn name(self) -> &'static str {
        match self {
            DbState::Connecting => "connecting",
            DbState::Up => "up",
            DbState::Down => "down",
        }
    }
}

/// Reads the cluster adapter's state (set when `cluster.redis_url` is).
struct ClusterWatch(Box<dyn Fn() -> AdapterState + Send + Sync>);

impl std::fmt::Debug for ClusterWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClusterWatch").field(&(self.0)()).finish()
    }
}

/// Shared by every shard, the start-up retry loop and the probe.
#[derive(Debug)]
pub struct Health {
    db: AtomicU8,
    shards_started: AtomicUsize,
    shards: usize,
    backend: String,
    cluster: OnceLock<ClusterWatch>,
}

impl Health {
    /// For a server of `shards` shards over `backend` (its name and address, no credentials: it is logged).
    pub fn new(shards: usize, backend: String) -> Arc<Self> {
        Arc::new(Self {
            db: AtomicU8::new(0),
            shards_started: AtomicUsize::new(0),
            shards,
            backend,
            cluster: OnceLock::new(),
        })
    }

    /// Clustered: `/readyz` reports what `state` says (e.g. `move || cluster.stats().state()`); set once.
    pub fn watch_cluster(&self, state: impl Fn() -> AdapterState + Send + Sync + 'static) {
        let _ = self.cluster.set(ClusterWatch(Box::new(state)));
    }

    /// The database's state.
    pub fn db(&self) -> DbState {
        DbState::from_u8(self.db.load(Ordering::Acquire))
    }

    /// A shard finished its start-up.
    pub fn shard_started(&self) {
        self.shards_started.fetch_add(1, Ordering::AcqRel);
    }

    /// The database answered. Logs once when it was down (or not reached yet).
    pub fn set_up(&self) {
        match DbState::from_u8(self.db.swap(1, Ordering::AcqRel)) {
            DbState::Up => {}
            DbState::Down => tracing::info!(backend = %self.backend, "database reachable again"),
            DbState::Connecting => tracing::info!(backend = %self.backend, "database connected"),
        }
    }

    /// The database did not answer; `detail` is the driver's error (log only). Logs once per outage.
    pub fn set_down(&self, detail: &str) {
        if DbState::from_u8(self.db.swap(2, Ordering::AcqRel)) != DbState::Down {
            tracing::warn!(
                backend = %self.backend,
                error = %detail,
                "database unreachable: REST answers 503 and /readyz 503 until it is back"
            );
        }
    }

    /// `/readyz`: status code and body.
    pub fn readyz(&self, shutting_down: bool) -> (u16, serde_json::Value) {
        let started = self.shards_started.load(Ordering::Acquire);
        let db = self.db();
        let ready = !shutting_down && started >= self.shards && db == DbState::Up;
        let mut body = json!({
            "status": if ready { "ready" } else { "unavailable" },
            "shards": {"started": started, "total": self.shards},
            "database": db.name(),
            "shutting_down": shutting_down,
        });
        // Reported, not required: local delivery goes on without Redis (see the module's documentation).
        if let Some(watch) = self.cluster.get() {
            body["cluster"] = json!((watch.0)().name());
        }
        (if ready { 200 } else { 503 }, body)
    }
}

/// Runs `probe` every `interval` on a thread of its own and records its answer: `Ok` up, `Err(detail)` down.
/// `probe` must be bounded in time (the IO shard's `request_timeout_ms` bounds a database call).
pub fn spawn_probe(
    health: Arc<Health>,
    interval: Duration,
    probe: impl Fn() -> Result<(), String> + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shardcast-health".into())
        .spawn(move || {
            loop {
                match probe() {
                    Ok(()) => health.set_up(),
                    Err(e) => health.set_down(&e),
                }
                std::thread::sleep(interval);
            }
        })
        .map(drop)
}

/// Builds the REST router of one shard once the database is there (`None`: not yet).
pub type LazyRouter = Box<dyn Fn() -> Option<Rc<dyn Router>>>;

/// The router of one shard: `/readyz`, the live page at `/` when enabled, then the application's routes.
pub struct ServeRouter {
    health: Arc<Health>,
    live_page: bool,
    inner: RefCell<Option<Rc<dyn Router>>>,
    make: LazyRouter,
}

impl std::fmt::Debug for ServeRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeRouter")
            .field("live_page", &self.live_page)
            .field("ready", &self.inner.borrow().is_some())
            .finish_non_exhaustive()
    }
}

impl ServeRouter {
    /// `make` is tried on each request until it gives the application's router.
    pub fn new(health: Arc<Health>, live_page: bool, make: LazyRouter) -> Self {
        Self {
            health,
            live_page,
            inner: RefCell::new(None),
            make,
        }
    }

    fn inner(&self) -> Option<Rc<dyn Router>> {
        if let Some(r) = self.inner.borrow().as_ref() {
            return Some(r.clone());
        }
        let r = (self.make)()?;
        *self.inner.borrow_mut() = Some(r.clone());
        Some(r)
    }
}

/// The 503 answer of every request the database is needed for while it is unavailable.
pub fn unavailable() -> Response {
    Response::json(
        503,
        &json!({"code": "unavailable", "message": UNAVAILABLE_MESSAGE}),
    )
    .with_header("Retry-After", "1")
}

fn ready(r: Response) -> Option<ResponseFuture> {
    Some(Box::pin(async move { r }))
}

impl Router for ServeRouter {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let get = request.method == "GET" || request.method == "HEAD";
        match request.path.as_str() {
            "/readyz" => {
                if !get {
                    return ready(
                        Response::error(405, "method not allowed").with_header("Allow", "GET"),
                    );
                }
                let (status, body) = self.health.readyz(shard.is_shutting_down());
                return ready(
                    Response::json(status, &body).with_header("Cache-Control", "no-store"),
                );
            }
            "/" | "/index.html" if self.live_page && get => {
                return ready(super::page::response());
            }
            "/live/stats" if self.live_page && get => return Some(super::page::stats(shard)),
            _ => {}
        }
        match self.inner() {
            Some(r) => r.route(shard, request),
            None if request.path.starts_with("/api/") => ready(unavailable()),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_every_shard_the_database_and_no_shutdown() {
        let h = Health::new(2, "embedded".into());
        assert_eq!(h.readyz(false).0, 503);
        h.shard_started();
        h.shard_started();
        assert_eq!(h.readyz(false).1["database"], "connecting");
        h.set_up();
        assert_eq!(h.readyz(false).0, 200);
        assert_eq!(h.readyz(true).0, 503, "shutdown begun");
        h.set_down("connection refused");
        let (code, body) = h.readyz(false);
        assert_eq!(code, 503);
        assert_eq!(body["database"], "down");
        assert!(
            !body.to_string().contains("refused"),
            "no driver detail in the body"
        );
        h.set_up();
        assert_eq!(h.readyz(false).0, 200);
        assert!(h.readyz(false).1.get("cluster").is_none(), "not clustered");
    }

    #[test]
    fn a_clustered_node_reports_the_adapter_but_stays_ready_without_redis() {
        let h = Health::new(1, "embedded".into());
        h.shard_started();
        h.set_up();
        let state = Arc::new(AtomicU8::new(0));
        let s = state.clone();
        h.watch_cluster(move || match s.load(Ordering::Acquire) {
            0 => AdapterState::Up,
            _ => AdapterState::Down,
        });
        let (code, body) = h.readyz(false);
        assert_eq!((code, body["cluster"].as_str()), (200, Some("up")));
        state.store(1, Ordering::Release);
        let (code, body) = h.readyz(false);
        assert_eq!((code, body["cluster"].as_str()), (200, Some("down")));
        h.set_down("gone");
        assert_eq!(h.readyz(false).0, 503, "the database still decides");
    }
}
