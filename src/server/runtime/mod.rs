//! The shard runtime, the bottom layer: one glommio executor per core ([`shard`]), the bounded cross-shard mesh,
//! the per-shard timer wheel ([`timer`]), the shutdown [`signal`], session ids ([`sid`]), statistics
//! ([`metrics`]) and [`ShardCtx`], what a shard owns.
//!
//! **Architecture Invariant:** the runtime knows no HTTP, Engine.IO or Socket.IO type. A shard hands every accepted
//! connection to the [`ShardService`] the layer above installed at start-up, and the per-shard state of the upper
//! layers (sessions, rooms, routes) lives in their own structs, stored with [`ShardCtx::set_state`].

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use glommio::channels::channel_mesh::Senders;
use glommio::net::TcpStream;

use super::config::ServerConfig;

pub mod metrics;
pub mod sched;
pub mod shard;
pub mod sid;
pub mod signal;
pub mod timer;

use metrics::{PanicSite, ShardMetrics};
use sid::Sid;
use signal::Signal;
use timer::{TimerHandle, TimerWheel};

/// A message for another shard: a closure run there with that shard's context.
pub type ShardMessage = Box<dyn FnOnce(&Rc<ShardCtx>) + Send>;

/// Error of [`ShardCtx::send_to`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshError {
    /// The destination's queue is full (`mesh_queue_len`); the message was dropped.
    #[error("queue to shard {0} is full")]
    Full(usize),
    /// No such shard.
    #[error("no shard {0}")]
    NoSuchShard(usize),
}

/// What the layers above plug into a shard: built once on each shard, inside its executor, before it accepts.
pub trait ShardService {
    /// Serve one accepted TCP connection (the runtime already checked `connections_per_shard_max`).
    fn accept(&self, shard: &Rc<ShardCtx>, stream: TcpStream);
    /// Graceful shutdown began on this shard: end what the service holds (sessions get a close).
    fn begin_shutdown(&self, shard: &Rc<ShardCtx>);
    /// True once nothing the service holds is left to drain (no live session).
    fn is_drained(&self, shard: &Rc<ShardCtx>) -> bool;
}

/// Builds the [`ShardService`] of each shard (see [`shard::start_shards`]).
pub type ServiceFactory = Arc<dyn Fn(&Rc<ShardCtx>) -> Rc<dyn ShardService> + Send + Sync>;

/// Everything one shard's runtime owns. Reached as `Rc<ShardCtx>` from handlers, timers and cross-shard messages.
pub struct ShardCtx {
    id: usize,
    nr_shards: usize,
    config: Rc<ServerConfig>,
    timers: TimerWheel,
    all_metrics: Arc<[ShardMetrics]>,
    mesh: RefCell<Option<Senders<ShardMessage>>>,
    state: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    shutdown_flag: Arc<AtomicBool>,
    shutting_down: Cell<bool>,
    shutdown_signal: Signal,
    connections: Cell<usize>,
}

impl std::fmt::Debug for ShardCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCtx")
            .field("id", &self.id)
            .field("nr_shards", &self.nr_shards)
            .finish_non_exhaustive()
    }
}

impl ShardCtx {
    fn new(
        id: usize,
        nr_shards: usize,
        config: ServerConfig,
        all_metrics: Arc<[ShardMetrics]>,
        shutdown_flag: Arc<AtomicBool>,
    ) -> ShardCtx {
        ShardCtx {
            id,
            nr_shards,
            timers: TimerWheel::new(Duration::from_millis(config.timer_tick_ms)),
            config: Rc::new(config),
            all_metrics,
            mesh: RefCell::new(None),
            state: RefCell::new(HashMap::new()),
            shutdown_flag,
            shutting_down: Cell::new(false),
            shutdown_signal: Signal::default(),
            connections: Cell::new(0),
        }
    }

    /// This shard's index, `0..nr_shards()`.
    pub fn id(&self) -> usize {
        self.id
    }
    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }
    /// The server configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
    /// This shard's timer wheel.
    pub fn timers(&self) -> &TimerWheel {
        &self.timers
    }
    /// Run `f` on this shard after `delay` (timer wheel resolution).
    pub fn schedule(&self, delay: Duration, f: impl FnOnce() + 'static) -> TimerHandle {
        self.timers.schedule(delay, f)
    }
    /// This shard's statistics.
    pub fn metrics(&self) -> &ShardMetrics {
        &self.all_metrics[self.id]
    }
    pub(crate) fn all_metrics(&self) -> &[ShardMetrics] {
        &self.all_metrics
    }
    /// Tasks registered to wake on shutdown (idle keep-alive connections, the acceptor): only live waiters, never
    /// one per connection served.
    pub fn shutdown_waiters(&self) -> usize {
        self.shutdown_signal.waiters()
    }
    /// True once graceful shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.get()
    }
    /// Notified once, when graceful shutdown begins.
    pub(crate) fn shutdown_signal(&self) -> &Signal {
        &self.shutdown_signal
    }

    /// TCP connections this shard serves now.
    pub(crate) fn connections(&self) -> usize {
        self.connections.get()
    }
    /// A connection task began (counted in `connections_per_shard_max` and the `connections` gauge).
    pub(crate) fn connection_opened(&self) {
        self.connections.set(self.connections.get() + 1);
        ShardMetrics::gauge(&self.metrics().connections, 1);
    }
    /// A connection task ended.
    pub(crate) fn connection_closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
        ShardMetrics::gauge(&self.metrics().connections, -1);
    }

    /// Store a per-shard value of type `T` (replaces a previous one).
    pub fn set_state<T: 'static>(&self, value: T) -> Rc<T> {
        let rc = Rc::new(value);
        self.state
            .borrow_mut()
            .insert(TypeId::of::<T>(), rc.clone());
        rc
    }
    /// The per-shard value of type `T`, if set.
    pub fn state<T: 'static>(&self) -> Option<Rc<T>> {
        self.state
            .borrow()
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|rc| rc.downcast::<T>().ok())
    }
    /// The per-shard value of type `T`, made with `T::default()` on first use.
    pub(crate) fn state_or_default<T: Default + 'static>(&self) -> Rc<T> {
        match self.state::<T>() {
            Some(s) => s,
            None => self.set_state(T::default()),
        }
    }

    /// Run `f` on shard `shard` with its context. Never blocks: if that shard's queue is full the message is
    /// dropped and [`MeshError::Full`] returned at once. Sending to oneself runs `f` in a new local task.
    pub fn send_to(
        self: &Rc<Self>,
        shard: usize,
        f: impl FnOnce(&Rc<ShardCtx>) + Send + 'static,
    ) -> Result<(), MeshError> {
        if shard >= self.nr_shards {
            return Err(MeshError::NoSuchShard(shard));
        }
        if shard == self.id {
            let me = self.clone();
            glommio::spawn_local(async move {
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&me))).is_err() {
                    me.metrics().panic_caught(PanicSite::Mesh);
                    tracing::error!(shard = me.id, "shard message panicked; dropped");
                }
            })
            .detach();
            return Ok(());
        }
        let mesh = self.mesh.borrow();
        let Some(senders) = mesh.as_ref() else {
            return Err(MeshError::NoSuchShard(shard));
        };
        match senders.try_send_to(shard, Box::new(f)) {
            Ok(()) => Ok(()),
            Err(_) => {
                ShardMetrics::add(&self.metrics().mesh_full, 1);
                Err(MeshError::Full(shard))
            }
        }
    }

    /// A new Engine.IO session id (or socket id) owned by this shard: its index, then 128 bits from a CSPRNG
    /// (see [`Sid`]).
    pub(crate) fn new_sid(&self) -> Sid {
        Sid::random(self.id)
    }

    /// The shard that owns a session id (see [`Sid`]); `None` if it does not have the shape of one of ours.
    pub fn owner_of_sid(&self, sid: &str) -> Option<usize> {
        Sid::owner_of(sid).filter(|&shard| shard < self.nr_shards)
    }

    fn begin_shutdown(self: &Rc<Self>, service: &dyn ShardService) {
        if self.shutting_down.replace(true) {
            return;
        }
        tracing::info!(shard = self.id, "graceful shutdown begins");
        self.shutdown_signal.notify();
        service.begin_shutdown(self);
    }
}
