//! The IO shard: one dedicated thread with a current-thread tokio runtime that owns the storage backend.
//!
//! Network shards (glommio executors), plain threads and tests all reach it the same way: [`IoHandle::call`] pushes a
//! job on a bounded lock-free queue (`crossbeam::queue::ArrayQueue`) and returns a future that completes through a
//! oneshot channel. That future is runtime-agnostic: the IO thread wakes the caller's `Waker` from its own thread, which
//! glommio 0.9 supports (a foreign wake goes through the executor's notifier, `task/raw.rs: do_wake`), and which
//! `futures_lite::future::block_on` and tokio support too.
//!
//! **Architecture Invariant:** a caller is never blocked by the IO shard. A full queue gives
//! [`BackendError::Unavailable`] at once; every request is bounded by `request_timeout_ms`; after a request fails with
//! `Unavailable`, further requests fail at once for `unavailable_retry_ms` (then the next request probes the database
//! again), so a database that is down costs callers nothing but an error.
//!
//! The number of requests running on the IO thread at once is bounded by `queue_requests_max` too (a semaphore), so
//! memory stays bounded when the database is slow.
//!
//! **Group commit.** The loop works in turns: it starts every queued request, lets them all run until they wait, asks
//! the backend to commit what they queued ([`Backend::commit_pending`]: the embedded store applies every queued write
//! in one redb transaction and fsyncs it, on this thread), lets the answered requests finish, then sends every answer
//! of the turn at once (so a network shard is woken once per batch, not once per answer; MongoDB and Cassandra answers
//! are batched the same way). Requests that arrive during a commit wait for the next turn. No thread pool is involved.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::backend::{Backend, BackendError, BackendResult, BoxFuture};

type Job = Box<dyn FnOnce(Arc<dyn Backend>) -> BoxFuture<'static, ()> + Send>;

/// Builds the backend on the IO thread, inside its tokio runtime (drivers need one to connect).
pub type BackendFactory =
    Box<dyn FnOnce() -> BoxFuture<'static, BackendResult<Arc<dyn Backend>>> + Send>;

/// Limits of the IO shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoShardLimits {
    /// Capacity of the request queue, and maximum number of requests running at once.
    pub queue_requests_max: usize,
    /// Deadline of one request, from the moment it starts running on the IO thread.
    pub request_timeout_ms: u64,
    /// After an `Unavailable` failure, how long new requests fail at once before the database is tried again.
    pub unavailable_retry_ms: u64,
}

impl Default for IoShardLimits {
    fn default() -> Self {
        Self {
            queue_requests_max: 4096,
            request_timeout_ms: 5000,
            unavailable_retry_ms: 500,
        }
    }
}

struct Shared {
    queue: ArrayQueue<Job>,
    notify: tokio::sync::Notify,
    stopping: AtomicBool,
    limits: IoShardLimits,
    started: Instant,
    /// Milliseconds since `started` until which requests fail at once (0: healthy).
    down_until_ms: AtomicU64,
    last_unavailable: std::sync::Mutex<String>,
    backend_name: &'static str,
    /// Answers ready to be sent to their callers, sent together by [`flush_outbox`].
    outbox: std::sync::Mutex<Vec<Box<dyn FnOnce() + Send>>>,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn down_error(&self) -> Option<BackendError> {
        let until = self.down_until_ms.load(Ordering::Acquire);
        if until != 0 && self.now_ms() < until {
            let last = self
                .last_unavailable
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            return Some(BackendError::Unavailable(format!(
                "{} backend marked down after a failure, retrying within {} ms ({last})",
                self.backend_name, self.limits.unavailable_retry_ms
            )));
        }
        None
    }

    fn record<T>(&self, r: &BackendResult<T>) {
        match r {
            Err(BackendError::Unavailable(m)) => {
                if let Ok(mut last) = self.last_unavailable.lock() {
                    *last = m.clone();
                }
                let until = self.now_ms() + self.limits.unavailable_retry_ms.max(1);
                self.down_until_ms.store(until, Ordering::Release);
            }
            _ => {
                if self.down_until_ms.load(Ordering::Relaxed) != 0 {
                    self.down_until_ms.store(0, Ordering::Release);
                }
            }
        }
    }
}

/// A cloneable, `Send + Sync` handle to the IO shard. Requests made after the shard stopped fail with `Unavailable`.
#[derive(Clone)]
pub struct IoHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for IoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoHandle")
            .field("backend", &self.shared.backend_name)
            .field("queued", &self.shared.queue.len())
            .field("limits", &self.shared.limits)
            .finish()
    }
}

/// The IO shard itself: owns the thread. Dropping it stops the thread (pending requests fail with `Unavailable`).
#[derive(Debug)]
pub struct IoShard {
    handle: IoHandle,
    thread: Option<JoinHandle<()>>,
}

impl IoShard {
    /// Starts the IO thread, builds the backend there with `factory`, and returns once the backend is ready (or with the
    /// factory's error).
    pub fn start(factory: BackendFactory, limits: IoShardLimits) -> BackendResult<IoShard> {
        let limits = IoShardLimits {
            queue_requests_max: limits.queue_requests_max.max(1),
            ..limits
        };
        let (ready_tx, ready_rx) =
            std::sync::mpsc::sync_channel::<BackendResult<(Arc<Shared>, IoHandle)>>(1);
        let thread = std::thread::Builder::new()
            .name("shardcast-io".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(BackendError::Unavailable(format!(
                            "cannot start tokio: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let backend = match factory().await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let shared = Arc::new(Shared {
                        queue: ArrayQueue::new(limits.queue_requests_max),
                        notify: tokio::sync::Notify::new(),
                        stopping: AtomicBool::new(false),
                        limits,
                        started: Instant::now(),
                        down_until_ms: AtomicU64::new(0),
                        last_unavailable: std::sync::Mutex::new(String::new()),
                        backend_name: backend.name(),
                        outbox: std::sync::Mutex::new(Vec::new()),
                    });
                    let handle = IoHandle {
                        shared: shared.clone(),
                    };
                    if ready_tx.send(Ok((shared.clone(), handle))).is_err() {
                        return;
                    }
                    run(shared, backend).await;
                });
            })
            .map_err(|e| BackendError::Unavailable(format!("cannot spawn the IO thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok((_, handle))) => Ok(IoShard {
                handle,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(BackendError::Unavailable(
                    "the IO thread ended during start-up".into(),
                ))
            }
        }
    }

    /// A handle for callers (clone it freely, one per network shard).
    pub fn handle(&self) -> IoHandle {
        self.handle.clone()
    }

    /// Stops the thread and waits for it; requests still queued or running fail with `Unavailable`.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.handle.shared.stopping.store(true, Ordering::Release);
        self.handle.shared.notify.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        while self.handle.shared.queue.pop().is_some() {}
    }
}

impl Drop for IoShard {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Sends every answer queued since the last call; returns how many. Answers leave in one burst per loop turn, so a
/// network shard is woken once per batch (glommio coalesces foreign wakes that arrive while it has not run yet).
fn flush_outbox(shared: &Shared) -> usize {
    let answers = match shared.outbox.lock() {
        Ok(mut o) => std::mem::take(&mut *o),
        Err(_) => return 0,
    };
    let n = answers.len();
    for answer in answers {
        answer();
    }
    n
}

/// Period of the IO thread's always-pending timer (see `run`): shorter than the default `request_timeout_ms`.
const TIMER_HEARTBEAT_MS: u64 = 1000;

/// The IO thread's loop. Each turn: start every queued request (up to the concurrency bound), let them all run until
/// they wait; with a group-commit backend (embedded), commit every write they queued in one durable transaction and
/// let the answered requests finish; then send all answers at once. Requests arriving meanwhile wait for the next turn.
async fn run(shared: Arc<Shared>, backend: Arc<dyn Backend>) {
    // tokio wakes its own timer driver (an eventfd write and one more loop turn) whenever a new timer is due before
    // the driver's next wake-up. Every request arms its `request_timeout_ms` timer, and between requests no timer is
    // pending, so without this each request paid that wake-up. A timer that is always pending, due at most
    // `TIMER_HEARTBEAT_MS` away, keeps the driver's next wake-up earlier than any request deadline of a longer timeout.
    // It only adds one wake-up per `TIMER_HEARTBEAT_MS`; deadlines fire exactly as before.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(TIMER_HEARTBEAT_MS)).await;
        }
    });
    let wake_shared = shared.clone();
    let grouped = backend.attach_group_commit(Arc::new(move || wake_shared.notify.notify_one()));
    let permits = Arc::new(tokio::sync::Semaphore::new(
        shared.limits.queue_requests_max,
    ));
    loop {
        let stopping = shared.stopping.load(Ordering::Acquire);
        let mut progress = 0;
        if !stopping {
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                let Some(job) = shared.queue.pop() else { break };
                let fut = job(backend.clone());
                tokio::spawn(async move {
                    fut.await;
                    drop(permit);
                });
                progress += 1;
            }
        }
        if grouped {
            // Let every request that is ready run up to its write (or its answer).
            tokio::task::yield_now().await;
            let committed = backend.commit_pending();
            if committed > 0 {
                progress += committed;
                // Let the requests whose writes are now durable finish and queue their answers.
                tokio::task::yield_now().await;
            }
        }
        progress += flush_outbox(&shared);
        if stopping {
            return;
        }
        if progress == 0 {
            shared.notify.notified().await;
        }
    }
}

impl IoHandle {
    /// The backend's name (`"embedded"`, `"mongo"`, `"cql"`).
    pub fn backend_name(&self) -> &'static str {
        self.shared.backend_name
    }

    /// Runs `f` against the backend on the IO thread. Fails at once with `Unavailable` if the queue is full, the shard
    /// stopped, or the database was found down less than `unavailable_retry_ms` ago; fails with `Unavailable` when the
    /// request takes longer than `request_timeout_ms`. The returned future works on any executor.
    pub fn call<T, F>(
        &self,
        f: F,
    ) -> impl std::future::Future<Output = BackendResult<T>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Backend>) -> BoxFuture<'static, BackendResult<T>> + Send + 'static,
    {
        let shared = self.shared.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<BackendResult<T>>();
        let early = if shared.stopping.load(Ordering::Acquire) {
            Some(BackendError::Unavailable("the IO shard has stopped".into()))
        } else if let Some(e) = shared.down_error() {
            Some(e)
        } else {
            let timeout = Duration::from_millis(shared.limits.request_timeout_ms.max(1));
            let job_shared = shared.clone();
            let job: Job = Box::new(move |backend| {
                Box::pin(async move {
                    let r = match job_shared.down_error() {
                        Some(e) => Err(e),
                        None => match tokio::time::timeout(timeout, f(backend)).await {
                            Ok(r) => r,
                            Err(_) => Err(BackendError::Unavailable(format!(
                                "request timed out after {} ms (request_timeout_ms)",
                                timeout.as_millis()
                            ))),
                        },
                    };
                    job_shared.record(&r);
                    let answer: Box<dyn FnOnce() + Send> = Box::new(move || {
                        let _ = tx.send(r);
                    });
                    match job_shared.outbox.lock() {
                        Ok(mut o) => o.push(answer),
                        Err(_) => answer(),
                    }
                    job_shared.notify.notify_one();
                })
            });
            match shared.queue.push(job) {
                Ok(()) => {
                    shared.notify.notify_one();
                    None
                }
                Err(_) => Some(BackendError::Unavailable(format!(
                    "IO queue full ({} requests, queue_requests_max)",
                    shared.limits.queue_requests_max
                ))),
            }
        };
        async move {
            if let Some(e) = early {
                return Err(e);
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Unavailable(
                    "the IO shard stopped before answering".into(),
                )),
            }
        }
    }
}
