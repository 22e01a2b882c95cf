//! The shard's cork (the uWS pattern): websocket sessions that got packets during this executor turn, written at
//! the end of the turn by one flusher task, each with **one** non-blocking send of everything it got (several
//! frames in one send when several events reached it in the turn), straight from the broadcasting shard without
//! waking the session's writer task.
//!
//! A session is corked only when its writer task is idle (its sink, in `session.rs`, is `Sink::Idle`): nothing
//! queued, no write pending, no bytes left over. A short write or `EAGAIN` hands the rest to the writer task
//! (`Sink::Writing`), which writes it first and everything queued after it in order; the session is not corked again until its writer has written
//! everything and is idle. A lone event gets no added latency: the flusher is woken by the first session corked in
//! a turn and runs as soon as the tasks already ready have run (no timer).
//!
//! **Invariant:** at any moment at most one party may write to a websocket: the flusher (synchronously, only while
//! the sink is idle) or the writer task (from the moment it takes bytes until it is idle again). Bytes never
//! interleave and frames leave in the order they were queued.

use std::cell::RefCell;
use std::rc::Rc;

use super::super::runtime::signal::Signal;
use super::session::Session;

/// Capacity of the flusher's send buffer kept between turns; a turn that needed more gives it back.
const FLUSH_BUFFER_KEPT_BYTES: usize = 64 * 1024;

/// The sessions of one shard corked this turn, and the flusher that writes them.
#[derive(Default)]
pub(crate) struct Cork {
    corked: RefCell<Vec<Rc<Session>>>,
    /// Notified when the first session of a turn is corked.
    ready: Signal,
    started: std::cell::Cell<bool>,
}

impl std::fmt::Debug for Cork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cork")
            .field("corked", &self.corked.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Cork {
    /// List `session` for the end of this turn (the caller marks it corked so it is listed once); the first of a
    /// turn wakes the flusher, started on first use.
    pub(super) fn add(self: &Rc<Self>, session: Rc<Session>) {
        let first = {
            let mut corked = self.corked.borrow_mut();
            corked.push(session);
            corked.len() == 1
        };
        if !self.started.replace(true) {
            glommio::spawn_local(flush_loop(self.clone())).detach();
        }
        if first {
            self.ready.notify();
        }
    }
}

/// The shard's flusher: every time sessions were corked, one send per session.
async fn flush_loop(cork: Rc<Cork>) {
    let mut sessions: Vec<Rc<Session>> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    loop {
        let seen = cork.ready.epoch();
        std::mem::swap(&mut sessions, &mut *cork.corked.borrow_mut());
        for s in sessions.drain(..) {
            s.flush_corked(&mut out);
            out.clear();
        }
        if out.capacity() > FLUSH_BUFFER_KEPT_BYTES {
            out = Vec::new();
        }
        // Sessions corked while this pass ran (a close's handler broadcasting) notified after `seen`.
        cork.ready.changed(seen).await;
    }
}
