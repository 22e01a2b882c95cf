//! Thread scheduling: the CPU-scheduler settings of the server's busy threads (`sched_setattr(2)`).
//!
//! A shard wakes for a few microseconds of work per event (a REST request, an IO answer, a broadcast). When the
//! load generator, the IO thread or another process runs on its CPU, how long that wake-up waits for the CPU is the
//! scheduler's choice, and it dominates the tail latency on shared cores (README, "Latency on shared cores").
//! Linux's EEVDF scheduler (6.6+) takes a per-thread *slice request* for ordinary (`SCHED_OTHER`) threads
//! (`sched_attr.sched_runtime`, honoured since 6.12, 0.1-100 ms): a thread that asks for a short slice gets an early
//! virtual deadline when it wakes, so it preempts a thread that runs a long slice (the kernel's `PREEMPT_SHORT`),
//! while its share of the CPU stays what its nice value gives. No privilege is needed, so it is safe as a default:
//! a kernel without it ignores the field, and a failure is logged, never fatal.

use std::io;

/// `sched_attr` of `sched_setattr(2)`, `SCHED_ATTR_SIZE_VER1` (56 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct SchedAttr {
    size: u32,
    sched_policy: u32,
    sched_flags: u64,
    sched_nice: i32,
    sched_priority: u32,
    sched_runtime: u64,
    sched_deadline: u64,
    sched_period: u64,
    sched_util_min: u32,
    sched_util_max: u32,
}

/// Shortest and longest slice the kernel accepts for a fair thread, microseconds (values outside are clamped by it).
pub const SLICE_US_MIN: u64 = 100;
/// See [`SLICE_US_MIN`].
pub const SLICE_US_MAX: u64 = 100_000;

/// The scheduler class of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `SCHED_OTHER`: the ordinary fair class.
    Normal,
    /// `SCHED_BATCH`: fair, but never preempts a running thread when it wakes (for throughput work).
    Batch,
}

impl Policy {
    fn raw(self) -> u32 {
        match self {
            Policy::Normal => libc::SCHED_OTHER as u32,
            Policy::Batch => libc::SCHED_BATCH as u32,
        }
    }
}

/// What [`apply`] sets on a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadSched {
    /// Scheduler class.
    pub policy: Policy,
    /// Nice value (the thread's share of the CPU among fair threads). Lowering it below the current value needs
    /// `CAP_SYS_NICE`; 0 is the default.
    pub nice: i32,
    /// Slice request in microseconds, `None` for the kernel's default (`base_slice_ns`).
    pub slice_us: Option<u64>,
}

impl ThreadSched {
    /// A fair thread that asks for a `slice_us` slice (`0`: the kernel's default), nice 0.
    pub fn fair_slice_us(slice_us: u64) -> ThreadSched {
        ThreadSched {
            policy: Policy::Normal,
            nice: 0,
            slice_us: (slice_us > 0).then(|| slice_us.clamp(SLICE_US_MIN, SLICE_US_MAX)),
        }
    }

    fn attr(&self) -> SchedAttr {
        SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            sched_policy: self.policy.raw(),
            sched_nice: self.nice,
            sched_runtime: self.slice_us.map_or(0, |us| us * 1_000),
            ..SchedAttr::default()
        }
    }
}

/// Applies `s` to the calling thread.
pub fn apply_to_current_thread(s: &ThreadSched) -> io::Result<()> {
    apply_to_thread(0, s)
}

/// Applies `s` to thread `tid` of this process (`0`: the calling thread).
pub fn apply_to_thread(tid: libc::pid_t, s: &ThreadSched) -> io::Result<()> {
    let attr = s.attr();
    // SAFETY: `attr` is a live, fully initialised `sched_attr` whose `size` field says how many bytes it has; the
    // kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &attr as *const SchedAttr,
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The slice of thread `tid` of this process (`0`: the calling thread) as the kernel reports it, microseconds: the
/// requested one, else the kernel's default; `0` on kernels before 6.12.
pub fn slice_us_of_thread(tid: libc::pid_t) -> io::Result<u64> {
    let mut attr = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: `attr` is writable and `size` bytes long; the kernel writes at most `size` bytes into it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut SchedAttr,
            size,
            0u32,
        )
    };
    if rc == 0 {
        Ok(attr.sched_runtime / 1_000)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The threads of this process whose name (`/proc/self/task/*/comm`) is `name`: how `serve` finds a thread another
/// layer started (the IO shard's `shardcast-io`) to apply its setting.
pub fn threads_named(name: &str) -> Vec<libc::pid_t> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            (comm.trim_end() == name)
                .then(|| t.file_name().to_str()?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attr_has_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
        let a = ThreadSched::fair_slice_us(250).attr();
        assert_eq!(a.size, 56);
        assert_eq!(a.sched_policy, libc::SCHED_OTHER as u32);
        assert_eq!(a.sched_runtime, 250_000);
    }

    #[test]
    fn slices_are_clamped_to_what_the_kernel_takes_and_zero_means_default() {
        assert_eq!(ThreadSched::fair_slice_us(0).slice_us, None);
        assert_eq!(ThreadSched::fair_slice_us(1).slice_us, Some(SLICE_US_MIN));
        assert_eq!(
            ThreadSched::fair_slice_us(1 << 40).slice_us,
            Some(SLICE_US_MAX)
        );
    }

    #[test]
    fn a_named_thread_is_found() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("sched-test-x".into())
            .spawn(move || {
                // The new thread names itself before it runs this closure: search only once it runs.
                ready_tx.send(()).ok();
                rx.recv().ok()
            })
            .expect("thread");
        ready_rx.recv().expect("the thread started");
        let found = threads_named("sched-test-x");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(threads_named("sched-test-none").is_empty());
        drop(tx);
        t.join().expect("join");
    }

    /// On a kernel with slice requests (6.12+) the calling thread reads back what it set; on an older one the call
    /// still succeeds (the field is ignored) or fails with an error, never a panic.
    #[test]
    fn a_thread_can_set_its_own_slice() {
        std::thread::spawn(|| {
            let set = apply_to_current_thread(&ThreadSched::fair_slice_us(300));
            if set.is_ok() {
                let read = slice_us_of_thread(0).expect("sched_getattr");
                assert!(read == 300 || read == 0, "read back {read} us");
            }
        })
        .join()
        .expect("thread");
    }
}
