//! Shards: one glommio `LocalExecutor` per core, each with its own `SO_REUSEPORT` listener, a timer wheel and a
//! bounded queue to every other shard created at start-up (glommio's channel mesh: a full send wakes nobody and
//! fails at once; a receive on another executor is woken through that executor's eventfd, so no shard ever blocks
//! on another). What a shard does with a connection is its [`ShardService`]'s business.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{FullMesh, MeshBuilder, Senders};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};

use super::super::config::ServerConfig;
use super::metrics::{PanicSite, Refusal, ShardMetrics};
use super::sched::{self, ThreadSched};
use super::{ServiceFactory, ShardCtx, ShardMessage, ShardService};

/// Submission-queue entries of each io_uring of a shard. Not for throughput: the kernel sizes a ring's cancel hash
/// table from it (cq entries / 32 buckets, at most 256), and glommio cancels its preemption timers on every park,
/// which walks one bucket chain among the pending socket polls (one per idle connection). glommio's default of 128
/// gives 8 buckets, so with 5,000 connections each park scanned ~600 polls (`io_poll_find` was 15 % of the server's
/// CPU in the fanout profile); 4,096 gives 256 buckets. Costs about 1 MiB of ring memory per shard.
const RING_DEPTH: usize = 4096;

/// Longest sleep of a shard's timer driver: how soon a requested shutdown is noticed by an idle shard.
const SHUTDOWN_POLL_MS: u64 = 50;

/// A running server: join it to wait for the end of every shard.
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the shards listen on (useful with port 0).
    pub local_addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
    joins: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl ServerHandle {
    /// Ask every shard to shut down gracefully (what SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
    /// A clone of the flag that triggers graceful shutdown.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }
    /// Wait for every shard to finish.
    pub fn join(self) -> io::Result<()> {
        for j in self.joins {
            j.join().map_err(|e| io::Error::other(e.to_string()))?;
        }
        Ok(())
    }
}

/// How long start-up waits for every shard to join glommio's channel mesh. Past it, [`start`] fails with an error
/// that says so (the process exits non-zero) instead of waiting forever. Generous: a loaded machine (load average
/// 12-16 on 2 cores) joins in well under a second.
pub const MESH_JOIN_TIMEOUT_MS: u64 = 10_000;

/// While a shard joins the mesh it wakes at least this often and polls the join again. glommio 0.9 can lose the
/// wake-up of a shared channel while its executor parks (glommio issue #261; `spin_before_park` used to hide it):
/// a join that parked on a lost wake-up never ran again. The timer makes the executor leave its park, rerun its
/// shared-channel checks (which wake every connecting channel and every receiver that has data) and poll the join.
const MESH_JOIN_POLL_MS: u64 = 5;

/// How long start-up waits for a shard to bind its listener once told the address.
const BIND_TIMEOUT_MS: u64 = 10_000;

/// What a shard reports to [`start`] during start-up.
enum StartReport {
    /// It joined the mesh (or there is no mesh: one shard) and waits for the address to bind.
    Joined,
    /// It bound its listener (here) and accepts connections from now on.
    Listening(SocketAddr),
}

/// Start `config.shards` shards. Returns once every shard listens.
///
/// Every shard first joins the channel mesh (bounded by [`MESH_JOIN_TIMEOUT_MS`]); only then are the listeners
/// bound, one shard after the other (shard 0 resolves port 0, the others bind the same port), and a shard accepts
/// as soon as it has bound. So no listener exists on a shard that cannot accept yet: the kernel never hands a
/// connection to a shard stuck in its start-up.
pub fn start_shards(config: ServerConfig, services: ServiceFactory) -> io::Result<ServerHandle> {
    let nr = config.shards.max(1);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let shutdown = Arc::new(AtomicBool::new(false));
    let metrics: Arc<[ShardMetrics]> = (0..nr).map(|_| ShardMetrics::default()).collect();
    let mesh: FullMesh<ShardMessage> = MeshBuilder::full(nr, config.mesh_queue_len.max(1));
    let mut config = config;
    let mut joins = Vec::with_capacity(nr);
    let mut shards = Vec::with_capacity(nr);
    // Stops the shards already started when start-up fails: they leave their start-up and end.
    let fail = |shutdown: &AtomicBool, e: io::Error| {
        shutdown.store(true, Ordering::Release);
        Err(e)
    };
    for id in 0..nr {
        let placement = if config.pin_shards {
            Placement::Fixed(id % cpus)
        } else {
            Placement::Unbound
        };
        let cfg_send = config.clone();
        let services = services.clone();
        let metrics = metrics.clone();
        let mesh = mesh.clone();
        let shutdown_send = shutdown.clone();
        // One channel per shard, its only sender moved into the shard: a shard thread that dies during its start-up
        // (its executor could not be built) closes it, and start-up fails instead of waiting forever.
        let (ready, ready_rx) = mpsc::channel::<io::Result<StartReport>>();
        let (addr_tx, addr_rx) = mpsc::channel::<SocketAddr>();
        let slice = ThreadSched::fair_slice_us(config.shard_slice_us);
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(256 << 10)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                if slice.slice_us.is_some()
                    && let Err(e) = sched::apply_to_current_thread(&slice)
                {
                    tracing::warn!(shard = id, error = %e, "could not set the shard's scheduler slice");
                }
                shard_main(
                    id,
                    nr,
                    cfg_send,
                    services,
                    metrics,
                    mesh,
                    shutdown_send,
                    ready,
                    addr_rx,
                )
                .await;
            });
        match spawned {
            Ok(join) => joins.push(join),
            Err(e) => return fail(&shutdown, io::Error::other(e.to_string())),
        }
        shards.push((ready_rx, addr_tx));
    }
    drop(mesh);
    let died = |id: usize| {
        io::Error::other(format!(
            "shard {id} failed to start (its io_uring executor could not be created; see the log)"
        ))
    };
    // Every shard joins the mesh (each gives up by itself after MESH_JOIN_TIMEOUT_MS; this deadline only guards
    // against a shard that never reports at all).
    let joined_by = Instant::now() + Duration::from_millis(2 * MESH_JOIN_TIMEOUT_MS);
    for (id, (ready_rx, _)) in shards.iter().enumerate() {
        let left = joined_by.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(Ok(StartReport::Joined)) => {}
            Ok(Ok(StartReport::Listening(_))) => {
                return fail(
                    &shutdown,
                    io::Error::other(format!("shard {id}: listened before the mesh was joined")),
                );
            }
            Ok(Err(e)) => return fail(&shutdown, e),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return fail(&shutdown, mesh_timeout(id));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return fail(&shutdown, died(id)),
        }
    }
    // Then the listeners, in order: shard 0 resolves port 0; the others bind the same port.
    for (id, (ready_rx, addr_tx)) in shards.iter().enumerate() {
        if addr_tx.send(config.listen).is_err() {
            return fail(&shutdown, died(id));
        }
        match ready_rx.recv_timeout(Duration::from_millis(BIND_TIMEOUT_MS)) {
            Ok(Ok(StartReport::Listening(addr))) => {
                if id == 0 {
                    config.listen = addr;
                }
            }
            Ok(Ok(StartReport::Joined)) => {
                return fail(
                    &shutdown,
                    io::Error::other(format!("shard {id}: joined the mesh twice")),
                );
            }
            Ok(Err(e)) => return fail(&shutdown, e),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return fail(
                    &shutdown,
                    io::Error::other(format!(
                        "shard {id} did not bind {} within {BIND_TIMEOUT_MS} ms",
                        config.listen
                    )),
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return fail(&shutdown, died(id)),
        }
    }
    Ok(ServerHandle {
        local_addr: config.listen,
        shutdown,
        joins,
    })
}

fn mesh_timeout(id: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the shard mesh was not formed within MESH_JOIN_TIMEOUT_MS ({MESH_JOIN_TIMEOUT_MS} ms): shard {id} did \
             not join glommio's channel mesh"
        ),
    )
}

/// Join the channel mesh within `timeout`, polling the join at least every [`MESH_JOIN_POLL_MS`] (see there).
/// `None`: not joined in time.
pub(crate) async fn join_mesh<T: Send + 'static>(
    mesh: FullMesh<T>,
    timeout: Duration,
) -> Option<glommio::Result<(Senders<T>, glommio::channels::channel_mesh::Receivers<T>), ()>> {
    let give_up = Instant::now() + timeout;
    futures_lite::future::or(async { Some(mesh.join().await) }, async {
        while Instant::now() < give_up {
            let nap = give_up
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(MESH_JOIN_POLL_MS));
            glommio::timer::sleep(nap).await;
        }
        None
    })
    .await
}

#[allow(clippy::too_many_arguments)]
async fn shard_main(
    id: usize,
    nr: usize,
    config: ServerConfig,
    services: ServiceFactory,
    metrics: Arc<[ShardMetrics]>,
    mesh: FullMesh<ShardMessage>,
    shutdown: Arc<AtomicBool>,
    ready: mpsc::Sender<io::Result<StartReport>>,
    addr_rx: mpsc::Receiver<SocketAddr>,
) {
    let ctx = Rc::new(ShardCtx::new(id, nr, config, metrics, shutdown));
    let service: Rc<dyn ShardService> = services(&ctx);

    // Join the mesh (waits for every shard), then serve the queues from every peer.
    if nr > 1 {
        let joined = join_mesh(mesh, Duration::from_millis(MESH_JOIN_TIMEOUT_MS)).await;
        let (senders, mut receivers) = match joined {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => {
                tracing::error!(shard = id, error = %e, "could not join the shard mesh");
                let _ = ready.send(Err(io::Error::other(format!(
                    "shard {id}: could not join the shard mesh: {e}"
                ))));
                return;
            }
            None => {
                tracing::error!(
                    shard = id,
                    timeout_ms = MESH_JOIN_TIMEOUT_MS,
                    "the shard mesh was not formed in time (MESH_JOIN_TIMEOUT_MS)"
                );
                let _ = ready.send(Err(mesh_timeout(id)));
                return;
            }
        };
        *ctx.mesh.borrow_mut() = Some(senders);
        for (_peer, rx) in receivers.streams() {
            let ctx = ctx.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = rx.recv().await {
                    // A panicking message (a bug) is dropped, logged and counted; the shard goes on.
                    let run = std::panic::AssertUnwindSafe(|| msg(&ctx));
                    if std::panic::catch_unwind(run).is_err() {
                        ctx.metrics().panic_caught(PanicSite::Mesh);
                        tracing::error!(shard = ctx.id, "cross-shard message panicked; dropped");
                    }
                }
            })
            .detach();
        }
    } else {
        drop(mesh);
    }
    if ready.send(Ok(StartReport::Joined)).is_err() {
        return;
    }

    // Only now the listener: `start` hands out the address once every shard joined, shard 0 first (port 0).
    let listen = loop {
        match addr_rx.try_recv() {
            Ok(addr) => break addr,
            Err(mpsc::TryRecvError::Empty) if !ctx.shutdown_flag.load(Ordering::Acquire) => {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            // Start-up failed elsewhere.
            Err(_) => return,
        }
    };
    let listener = match bind_listener(listen) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(io::Error::other(format!(
                "shard {id}: bind {listen}: {e}"
            ))));
            return;
        }
    };
    let local_addr = listener.local_addr().unwrap_or(listen);
    let _ = ready.send(Ok(StartReport::Listening(local_addr)));
    drop(ready);
    tracing::info!(shard = id, addr = %local_addr, "shard listening");

    let accept_ctx = ctx.clone();
    let accept_service = service.clone();
    let acceptor = glommio::spawn_local(async move {
        let (ctx, service) = (accept_ctx, accept_service);
        loop {
            let seen = ctx.shutdown_signal().epoch();
            if ctx.is_shutting_down() {
                break;
            }
            let accepted =
                futures_lite::future::or(async { Some(listener.accept().await) }, async {
                    ctx.shutdown_signal().changed(seen).await;
                    None
                })
                .await;
            match accepted {
                None => break,
                Some(Ok(stream)) => {
                    if ctx.connections() >= ctx.config.connections_per_shard_max {
                        ctx.metrics().refusal(Refusal::Connections);
                        // Logged at the 1st, 2nd, 4th, 8th... refusal: a connection flood must not become a
                        // log flood (every refusal is counted in shardcast_refusals_total).
                        let refused = ctx.metrics().refusals(Refusal::Connections);
                        if refused.is_power_of_two() {
                            tracing::warn!(
                                shard = ctx.id,
                                limit = ctx.config.connections_per_shard_max,
                                refused,
                                "connection refused: connections_per_shard_max reached"
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    service.accept(&ctx, stream);
                }
                Some(Err(e)) => {
                    tracing::warn!(shard = ctx.id, error = %e, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    });

    // The driver fires the timer wheel and watches the shutdown flag. It sleeps until the earliest timer (woken
    // early when a nearer one is scheduled), and at most SHUTDOWN_POLL_MS, so an idle shard wakes a few times a
    // second, not once per tick.
    let mut deadline: Option<Instant> = None;
    loop {
        let poll_by = Instant::now() + Duration::from_millis(SHUTDOWN_POLL_MS);
        let wake_at = ctx
            .timers
            .next_deadline()
            .map_or(poll_by, |t| t.min(poll_by));
        let rearmed = ctx.timers.rearmed();
        futures_lite::future::or(
            glommio::timer::sleep(wake_at.saturating_duration_since(Instant::now())),
            rearmed,
        )
        .await;
        for _ in 0..ctx.timers.advance() {
            ctx.metrics().panic_caught(PanicSite::Timer);
        }
        if ctx.shutdown_flag.load(Ordering::Acquire) && !ctx.is_shutting_down() {
            ctx.begin_shutdown(&*service);
            deadline = Some(Instant::now() + Duration::from_millis(ctx.config.shutdown_grace_ms));
        }
        if let Some(d) = deadline {
            let drained = service.is_drained(&ctx) && ctx.connections() == 0;
            if drained || Instant::now() >= d {
                tracing::info!(shard = id, drained, "shard stopped");
                break;
            }
        }
    }
    acceptor.await;
    if let Some(s) = ctx.mesh.borrow_mut().take() {
        s.close();
    }
}

/// A listening socket with `SO_REUSEPORT` (one per shard, the kernel spreads connections) and `SO_REUSEADDR`
/// (a restarted server binds again while old connections sit in TIME_WAIT).
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    let domain = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket calls; every pointer is to a live local of the size passed with it, and the
    // descriptor is owned by `owned` until it is handed to glommio.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            let rc = libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 =
                    (&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                (*sin6).sin6_flowinfo = a.flowinfo();
                (*sin6).sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        if libc::bind(
            fd,
            (&storage as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd, 1024) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpListener::from_raw_fd(owned.into_raw_fd()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mesh that is never formed (one of its two peers never joins) is reported as not joined once the timeout
    /// passed, instead of waiting forever; a formed one joins.
    #[test]
    fn join_mesh_is_bounded_and_joins_a_formed_mesh() {
        let lonely: FullMesh<u8> = MeshBuilder::full(2, 4);
        let alone = LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let started = Instant::now();
                let joined = join_mesh(lonely, Duration::from_millis(200)).await;
                (joined.is_none(), started.elapsed())
            })
            .expect("executor");
        let (timed_out, took) = alone.join().expect("join");
        assert!(
            timed_out,
            "a mesh with a missing peer was reported as joined"
        );
        assert!(
            took >= Duration::from_millis(200),
            "gave up early: {took:?}"
        );

        let pair: FullMesh<u8> = MeshBuilder::full(2, 4);
        let shards: Vec<_> = (0..2)
            .map(|_| {
                let mesh = pair.clone();
                LocalExecutorBuilder::new(Placement::Unbound)
                    .spawn(move || async move {
                        matches!(
                            join_mesh(mesh, Duration::from_millis(MESH_JOIN_TIMEOUT_MS)).await,
                            Some(Ok(_))
                        )
                    })
                    .expect("executor")
            })
            .collect();
        drop(pair);
        for s in shards {
            assert!(s.join().expect("join"), "a formed mesh did not join");
        }
    }
}
