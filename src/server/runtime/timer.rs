//! The per-shard timer wheel: one task per shard drives every heartbeat, connect timeout, ack timeout and
//! application timer of that shard, instead of one runtime timer per socket.
//!
//! A hashed wheel of `SLOTS` slots of `tick` each; an entry further away than one turn stays in its slot and is
//! skipped until its turn comes. Cancelling is O(1): the entry's flag is cleared and it is dropped when its slot
//! is next visited.
//!
//! The driving task does not wake every tick: it sleeps until the earliest scheduled deadline
//! ([`TimerWheel::next_deadline`], a min-heap of deadline ticks) and is woken early when a nearer timer is scheduled
//! ([`TimerWheel::rearmed`]). Heartbeats use [`TimerWheel::schedule_coalesced`], which rounds deadlines down (earlier,
//! never later) to a coarser grain so that thousands of sockets share a few wake-ups per second instead of one each.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const SLOTS: usize = 512;

struct Entry {
    deadline_tick: u64,
    live: Rc<Cell<bool>>,
    callback: Box<dyn FnOnce()>,
}

/// Handle of a scheduled timer; [`TimerHandle::cancel`] prevents it from firing. Dropping the handle does not cancel.
#[derive(Debug, Clone)]
pub struct TimerHandle {
    live: Rc<Cell<bool>>,
}

impl TimerHandle {
    /// Prevent the callback from running (no effect if it already ran).
    pub fn cancel(&self) {
        self.live.set(false);
    }
    /// True until the timer fires or is cancelled.
    pub fn is_pending(&self) -> bool {
        self.live.get()
    }
}

/// A hashed timer wheel owned by one shard.
pub struct TimerWheel {
    tick: Duration,
    start: Instant,
    current_tick: Cell<u64>,
    slots: RefCell<Vec<Vec<Entry>>>,
    len: Cell<usize>,
    /// Deadline ticks of scheduled entries (cancelled ones included until their tick passes): the earliest is
    /// where the driving task sleeps until.
    deadlines: RefCell<BinaryHeap<Reverse<u64>>>,
    /// The deadline tick pushed last (consecutive timers often share one: pushed once).
    last_pushed: Cell<u64>,
    /// The tick the driving task sleeps until (`u64::MAX`: not sleeping on a deadline).
    armed_tick: Cell<u64>,
    /// The driving task, woken when an earlier deadline than `armed_tick` is scheduled.
    driver: RefCell<Option<Waker>>,
}

impl std::fmt::Debug for TimerWheel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick", &self.tick)
            .field("len", &self.len.get())
            .finish()
    }
}

impl TimerWheel {
    /// A wheel with the given resolution (at least 1 ms).
    pub fn new(tick: Duration) -> Self {
        let tick = tick.max(Duration::from_millis(1));
        TimerWheel {
            tick,
            start: Instant::now(),
            current_tick: Cell::new(0),
            slots: RefCell::new((0..SLOTS).map(|_| Vec::new()).collect()),
            len: Cell::new(0),
            deadlines: RefCell::new(BinaryHeap::new()),
            last_pushed: Cell::new(u64::MAX),
            armed_tick: Cell::new(u64::MAX),
            driver: RefCell::new(None),
        }
    }

    /// The wheel's resolution.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Number of scheduled (possibly cancelled, not yet visited) entries.
    pub fn len(&self) -> usize {
        self.len.get()
    }

    /// True when nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.len.get() == 0
    }

    fn now_tick(&self) -> u64 {
        (self.start.elapsed().as_nanos() / self.tick.as_nanos()) as u64
    }

    fn ticks(&self, d: Duration) -> u64 {
        d.as_nanos().div_ceil(self.tick.as_nanos()).max(1) as u64
    }

    /// Run `callback` on this shard after `delay` (rounded up to the next tick).
    pub fn schedule(&self, delay: Duration, callback: impl FnOnce() + 'static) -> TimerHandle {
        let deadline_tick = self.current_tick.get().max(self.now_tick()) + self.ticks(delay);
        self.insert(deadline_tick, Box::new(callback))
    }

    /// Run `callback` after `delay`, early by up to `slack` and never late: the deadline is rounded down to a
    /// multiple of `slack` (at most half of `delay`), so timers scheduled around the same time fire in one pass
    /// (heartbeats of many sockets share a wake-up) while every deadline a protocol promises still holds.
    pub fn schedule_coalesced(
        &self,
        delay: Duration,
        slack: Duration,
        callback: impl FnOnce() + 'static,
    ) -> TimerHandle {
        let now = self.current_tick.get().max(self.now_tick());
        // Whole ticks only (rounded down): tick `now + n` starts at or before `now_instant + delay`.
        let whole = (delay.as_nanos() / self.tick.as_nanos()) as u64;
        let grain = self.ticks(slack).min(whole / 2).max(1);
        let exact = now + whole;
        self.insert((exact / grain * grain).max(now + 1), Box::new(callback))
    }

    fn insert(&self, deadline_tick: u64, callback: Box<dyn FnOnce()>) -> TimerHandle {
        let live = Rc::new(Cell::new(true));
        let entry = Entry {
            deadline_tick,
            live: live.clone(),
            callback,
        };
        self.slots.borrow_mut()[(deadline_tick % SLOTS as u64) as usize].push(entry);
        self.len.set(self.len.get() + 1);
        if self.last_pushed.replace(deadline_tick) != deadline_tick {
            self.deadlines.borrow_mut().push(Reverse(deadline_tick));
        }
        if deadline_tick < self.armed_tick.get() {
            self.armed_tick.set(deadline_tick);
            if let Some(w) = self.driver.borrow_mut().take() {
                w.wake();
            }
        }
        TimerHandle { live }
    }

    /// When the earliest scheduled timer is due (`None`: nothing scheduled). Records it as the driving task's
    /// wake-up time, so that scheduling anything earlier wakes [`TimerWheel::rearmed`].
    pub fn next_deadline(&self) -> Option<Instant> {
        let current = self.current_tick.get();
        let mut deadlines = self.deadlines.borrow_mut();
        while deadlines.peek().is_some_and(|Reverse(t)| *t <= current) {
            deadlines.pop();
        }
        if deadlines.is_empty() {
            self.last_pushed.set(u64::MAX);
        }
        let next = deadlines.peek().map(|Reverse(t)| *t);
        self.armed_tick.set(next.unwrap_or(u64::MAX));
        next.map(|t| {
            let nanos = u64::try_from(self.tick.as_nanos())
                .unwrap_or(u64::MAX)
                .saturating_mul(t);
            self.start + Duration::from_nanos(nanos)
        })
    }

    /// Resolves when a timer earlier than the last [`TimerWheel::next_deadline`] was scheduled.
    pub fn rearmed(&self) -> Rearmed<'_> {
        Rearmed {
            wheel: self,
            armed: self.armed_tick.get(),
        }
    }

    /// Fire everything due up to now. Called by the shard's driving task. A callback that panics is logged and
    /// skipped (the others still run, the shard goes on); returns how many panicked.
    pub fn advance(&self) -> usize {
        let now = self.now_tick();
        let mut due = Vec::new();
        while self.current_tick.get() < now {
            let t = self.current_tick.get() + 1;
            self.current_tick.set(t);
            let mut slots = self.slots.borrow_mut();
            let slot = &mut slots[(t % SLOTS as u64) as usize];
            let mut i = 0;
            while i < slot.len() {
                if !slot[i].live.get() {
                    slot.swap_remove(i);
                    self.len.set(self.len.get() - 1);
                } else if slot[i].deadline_tick <= t {
                    due.push(slot.swap_remove(i));
                    self.len.set(self.len.get() - 1);
                } else {
                    i += 1;
                }
            }
        }
        let mut panicked = 0;
        for entry in due {
            if entry.live.replace(false)
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(entry.callback)).is_err()
            {
                panicked += 1;
                tracing::error!("timer callback panicked; skipped");
            }
        }
        panicked
    }
}

/// Future of [`TimerWheel::rearmed`].
#[derive(Debug)]
pub struct Rearmed<'a> {
    wheel: &'a TimerWheel,
    armed: u64,
}

impl Future for Rearmed<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.wheel.armed_tick.get() < self.armed {
            return Poll::Ready(());
        }
        *self.wheel.driver.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_callback_is_isolated() {
        let wheel = TimerWheel::new(Duration::from_millis(1));
        let fired = Rc::new(Cell::new(0));
        let f = fired.clone();
        wheel.schedule(Duration::from_millis(1), || {
            panic!("boom (expected by the test)")
        });
        wheel.schedule(Duration::from_millis(1), move || f.set(f.get() + 1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(wheel.advance(), 1);
        assert_eq!(fired.get(), 1, "the other callback still ran");
        let f = fired.clone();
        wheel.schedule(Duration::from_millis(1), move || f.set(f.get() + 1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(wheel.advance(), 0);
        assert_eq!(fired.get(), 2, "the wheel keeps working");
    }

    #[test]
    fn fires_in_order_and_respects_cancel() {
        let wheel = TimerWheel::new(Duration::from_millis(1));
        let fired = Rc::new(RefCell::new(Vec::new()));
        let f1 = fired.clone();
        wheel.schedule(Duration::from_millis(2), move || f1.borrow_mut().push(1));
        let f2 = fired.clone();
        let h = wheel.schedule(Duration::from_millis(2), move || f2.borrow_mut().push(2));
        h.cancel();
        let f3 = fired.clone();
        // further than one turn of the wheel
        wheel.schedule(Duration::from_millis(SLOTS as u64 + 3), move || {
            f3.borrow_mut().push(3)
        });
        while !wheel.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            wheel.advance();
        }
        assert_eq!(*fired.borrow(), vec![1, 3]);
    }

    #[test]
    fn next_deadline_is_the_earliest_and_coalesced_deadlines_share_a_grain() {
        let wheel = TimerWheel::new(Duration::from_millis(10));
        assert_eq!(wheel.next_deadline(), None);
        let t0 = Instant::now();
        wheel.schedule(Duration::from_millis(500), || {});
        let far = wheel.next_deadline().unwrap();
        assert!(far >= t0 + Duration::from_millis(480), "{:?}", far - t0);
        // Something earlier re-arms: the deadline moves and the driver's future resolves.
        let rearmed = wheel.rearmed();
        wheel.schedule(Duration::from_millis(20), || {});
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut rearmed = std::pin::pin!(rearmed);
        assert!(rearmed.as_mut().poll(&mut cx).is_ready());
        let near = wheel.next_deadline().unwrap();
        assert!(near < far);
        // A later timer does not re-arm.
        let mut later = std::pin::pin!(wheel.rearmed());
        wheel.schedule(Duration::from_millis(300), || {});
        assert!(later.as_mut().poll(&mut cx).is_pending());

        let coarse = TimerWheel::new(Duration::from_millis(1));
        let fired = Rc::new(Cell::new(0));
        let start = Instant::now();
        for d in [1_200u64, 1_213, 1_237, 1_299] {
            let f = fired.clone();
            coarse.schedule_coalesced(
                Duration::from_millis(d),
                Duration::from_millis(100),
                move || f.set(f.get() + 1),
            );
        }
        // Rounded down to a multiple of 100 ticks: all four share the deadline tick 1200 (some 1300 if the clock
        // crossed a grain meanwhile), and none is due later than asked.
        assert!(coarse.deadlines.borrow().len() <= 2);
        let due = coarse.next_deadline().unwrap();
        assert!(due <= Instant::now() + Duration::from_millis(1_200));
        assert!(due >= start + Duration::from_millis(1_100));
        while !coarse.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            coarse.advance();
        }
        assert_eq!(fired.get(), 4);
    }
}
