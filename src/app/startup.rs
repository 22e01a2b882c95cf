//! Loud start-up checks, run by `serve` and `conformance` before any shard starts, so a machine that cannot run
//! shardcast gets one clear message and a non-zero exit instead of a hang: io_uring (with the locked-memory limit
//! glommio needs) and a listen address that another process already holds.

use std::net::SocketAddr;

/// The smallest `RLIMIT_MEMLOCK` glommio accepts for an executor (its `Reactor::new` refuses less), bytes.
pub const MEMLOCK_BYTES_MIN: u64 = 512 * 1024;

/// How long an address found in use is probed again before `serve` refuses it, ms.
pub const LISTEN_PROBE_RETRY_MS: u64 = 2000;

/// Ring depth and registered I/O memory of the trial executor: the shards' own settings (`server::shard`).
const TRIAL_RING_DEPTH: usize = 4096;
const TRIAL_IO_MEMORY_BYTES: usize = 256 << 10;

fn kib(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", v / 1024)
    }
}

/// The soft and hard `RLIMIT_MEMLOCK` of this process, bytes.
pub fn memlock_limits() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return (libc::RLIM_INFINITY, libc::RLIM_INFINITY);
    }
    (r.rlim_cur, r.rlim_max)
}

fn memlock_help(soft: u64, hard: u64) -> String {
    format!(
        "shardcast: cannot create an io_uring ring: the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {} \
         (hard limit {}), and each shard's io_uring needs at least {}.\n\
         Raise it, then start again:\n\
         \x20   ulimit -l unlimited                      # this shell (up to the hard limit)\n\
         \x20   LimitMEMLOCK=infinity                    # systemd unit\n\
         \x20   docker run --ulimit memlock=-1:-1 ...    # docker\n\
         \x20   '* - memlock unlimited' in /etc/security/limits.conf   # every login",
        kib(soft),
        kib(hard),
        kib(MEMLOCK_BYTES_MIN)
    )
}

/// Checks that this process can create a shard's io_uring: the locked-memory limit first (named in the message,
/// with how to raise it), then a trial executor with the shards' ring depth (io_uring disabled by the kernel or a
/// seccomp profile, an old kernel). `Err` is the whole message for the user.
pub fn check_io_uring() -> Result<(), String> {
    let (soft, hard) = memlock_limits();
    if soft < MEMLOCK_BYTES_MIN {
        return Err(memlock_help(soft, hard));
    }
    let trial = std::thread::Builder::new()
        .name("shardcast-uring-check".into())
        .spawn(|| {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(TRIAL_IO_MEMORY_BYTES)
                .ring_depth(TRIAL_RING_DEPTH)
                .make()
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .map_err(|e| format!("shardcast: cannot start a thread: {e}"))?;
    match trial.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) if e.contains("MemLock") || e.contains("memlock") => {
            Err(memlock_help(soft, hard))
        }
        Ok(Err(e)) => Err(format!(
            "shardcast: cannot create an io_uring ring: {e}\n\
             shardcast needs Linux 5.8 or newer with io_uring enabled (sysctl kernel.io_uring_disabled = 0; in a \
             container, a seccomp profile that allows io_uring_setup), and a locked-memory limit of at least {} \
             (now {}).",
            kib(MEMLOCK_BYTES_MIN),
            kib(soft)
        )),
        Err(_) => {
            Err("shardcast: cannot create an io_uring ring (the trial executor panicked)".into())
        }
    }
}

/// Refuses an address another process already listens on: binds a probe socket without `SO_REUSEPORT` (the
/// shards' sockets use it, so without this probe two servers on one port would both start and split the traffic).
/// Port 0 is never taken. `Err` is the whole message for the user.
pub fn check_listen_free(addr: SocketAddr) -> Result<(), String> {
    if addr.port() == 0 {
        return Ok(());
    }
    // std's bind sets SO_REUSEADDR (so TIME_WAIT leftovers of a previous run do not count) and never SO_REUSEPORT.
    // The listening socket of a server that just died can outlive it by a moment (io_uring tears its ring down
    // after the process is gone), so an address in use is probed again for LISTEN_PROBE_RETRY_MS before refusing.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(LISTEN_PROBE_RETRY_MS);
    let mut probe = std::net::TcpListener::bind(addr);
    while matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::AddrInUse)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
        probe = std::net::TcpListener::bind(addr);
    }
    match probe {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "shardcast: {addr} is already in use by another process (is another shardcast still running? \
             `ss -ltnp 'sport = :{port}'` shows who).\n\
             Stop it, or choose another address with --listen, or pass --listen-shared to share the port on \
             purpose (the kernel then splits connections between the processes).",
            port = addr.port()
        )),
        Err(e) => Err(format!("shardcast: cannot listen on {addr}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_held_by_another_socket_is_refused_and_port_0_is_not_probed() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let e = check_listen_free(addr).unwrap_err();
        assert!(e.contains("already in use"), "{e}");
        assert!(e.contains("--listen-shared"), "{e}");
        drop(held);
        check_listen_free(addr).expect("free again");
        check_listen_free("127.0.0.1:0".parse().expect("addr")).expect("port 0");
    }
}
