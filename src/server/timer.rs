//! The per-shard timer wheel: one ticking task per shard drives every heartbeat, connect timeout, ack timeout
//! and application timer of that shard, instead of one runtime timer per socket.
//!
//! A hashed wheel of `SLOTS` slots of `tick` each; an entry further away than one turn stays in its slot and is
//! skipped until its turn comes. Cancelling is O(1): the entry's flag is cleared and it is dropped when its slot
//! is next visited.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
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

    /// Run `callback` on this shard after `delay` (rounded up to the next tick).
    pub fn schedule(&self, delay: Duration, callback: impl FnOnce() + 'static) -> TimerHandle {
        let ticks = delay.as_nanos().div_ceil(self.tick.as_nanos()).max(1) as u64;
        let deadline_tick = self.current_tick.get().max(self.now_tick()) + ticks;
        let live = Rc::new(Cell::new(true));
        let entry = Entry {
            deadline_tick,
            live: live.clone(),
            callback: Box::new(callback),
        };
        self.slots.borrow_mut()[(deadline_tick % SLOTS as u64) as usize].push(entry);
        self.len.set(self.len.get() + 1);
        TimerHandle { live }
    }

    /// Fire everything due up to now. Called by the shard's ticking task.
    pub fn advance(&self) {
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
        for entry in due {
            if entry.live.replace(false) {
                (entry.callback)();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
