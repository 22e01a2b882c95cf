//! A shard-local change signal: waiters remember the epoch they saw and wake when it changes.
//!
//! Waiters are kept in a slab: a [`Changed`] future that is dropped before the signal fires (a connection that went
//! away while idle) removes its waker at once, so the list holds only live waiters, never one per connection ever
//! served.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Slab {
    entries: Vec<Option<Waker>>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    fn insert(&mut self, w: Waker) -> usize {
        self.live += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(w);
                i
            }
            None => {
                self.entries.push(Some(w));
                self.entries.len() - 1
            }
        }
    }
    fn remove(&mut self, i: usize) {
        if let Some(slot) = self.entries.get_mut(i)
            && slot.take().is_some()
        {
            self.live -= 1;
            self.free.push(i);
        }
    }
}

/// Single-thread, multi-waiter change notification (never blocks, never crosses shards).
#[derive(Debug, Default)]
pub struct Signal {
    epoch: Cell<u64>,
    wakers: RefCell<Slab>,
}

impl Signal {
    /// Current epoch; pass it to [`Signal::changed`].
    pub fn epoch(&self) -> u64 {
        self.epoch.get()
    }

    /// Bump the epoch and wake every waiter.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let slab = std::mem::take(&mut *self.wakers.borrow_mut());
        for w in slab.entries.into_iter().flatten() {
            w.wake();
        }
    }

    /// Resolves once the epoch differs from `seen`.
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        Changed {
            signal: self,
            seen,
            slot: None,
        }
    }

    /// Wakers registered now (one per pending [`Changed`] that was polled).
    pub fn waiters(&self) -> usize {
        self.wakers.borrow().live
    }
}

/// Future returned by [`Signal::changed`]. Dropping it unregisters its waker.
#[derive(Debug)]
pub struct Changed<'a> {
    signal: &'a Signal,
    seen: u64,
    /// Slab index of our waker; valid while the signal's epoch is still `seen` (a notify empties the slab).
    slot: Option<usize>,
}

impl Future for Changed<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.epoch.get() != self.seen {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut slab = self.signal.wakers.borrow_mut();
        match self.slot {
            Some(i) => {
                if let Some(Some(w)) = slab.entries.get_mut(i)
                    && !w.will_wake(cx.waker())
                {
                    *w = cx.waker().clone();
                }
            }
            None => {
                let i = slab.insert(cx.waker().clone());
                drop(slab);
                self.slot = Some(i);
            }
        }
        Poll::Pending
    }
}

impl Drop for Changed<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot
            && self.signal.epoch.get() == self.seen
        {
            self.signal.wakers.borrow_mut().remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn dropped_waiters_leave_the_list() {
        let signal = Signal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..10_000 {
            let mut f = Box::pin(signal.changed(signal.epoch()));
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert!(
                f.as_mut().poll(&mut cx).is_pending(),
                "a second poll adds nothing"
            );
            assert_eq!(signal.waiters(), 1);
        }
        assert_eq!(signal.waiters(), 0);
        assert!(
            signal.wakers.borrow().entries.len() <= 1,
            "slots are reused"
        );

        let mut a = Box::pin(signal.changed(signal.epoch()));
        let mut b = Box::pin(signal.changed(signal.epoch()));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert_eq!(signal.waiters(), 2);
        signal.notify();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert_eq!(signal.waiters(), 0);
        // A waiter registered after the notify, in a slot the old ones had, is not removed by their drop.
        let mut c = Box::pin(signal.changed(signal.epoch()));
        assert!(c.as_mut().poll(&mut cx).is_pending());
        drop(a);
        drop(b);
        assert_eq!(signal.waiters(), 1);
        assert!(a_is_ready_after_notify(&signal, c.as_mut(), &mut cx));
    }

    fn a_is_ready_after_notify(
        signal: &Signal,
        f: Pin<&mut Changed<'_>>,
        cx: &mut Context<'_>,
    ) -> bool {
        signal.notify();
        f.poll(cx).is_ready()
    }
}
