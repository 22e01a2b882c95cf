//! The client's answers to server emits with ack: [`AckFuture`] waits for one (bounded in time, and in number per
//! socket); [`AckReply`] is the answer, [`AckError`] why none came. (A socket answers a client's request with
//! [`super::AckSender`].)

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::proto::RawJson;

use super::super::runtime::timer::TimerHandle;

/// The answer to a server-to-client emit with ack.
#[derive(Debug, Clone)]
pub struct AckReply {
    /// The acknowledgement's arguments, a JSON array.
    pub args: RawJson,
    /// Binary attachments.
    pub attachments: Vec<Vec<u8>>,
}

/// Why an emit with ack did not get its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// No answer within the timeout.
    #[error("ack timed out")]
    Timeout,
    /// The socket disconnected first (or was not connected).
    #[error("socket disconnected")]
    Disconnected,
    /// `acks_pending_per_socket_max` acks already wait on this socket.
    #[error("too many pending acks on this socket")]
    TooManyPending,
}

#[derive(Default)]
pub(super) struct AckSlot {
    result: RefCell<Option<Result<AckReply, AckError>>>,
    waker: RefCell<Option<Waker>>,
    pub(super) timer: RefCell<Option<TimerHandle>>,
}

impl AckSlot {
    pub(super) fn complete(&self, r: Result<AckReply, AckError>) {
        if self.result.borrow().is_some() {
            return;
        }
        *self.result.borrow_mut() = Some(r);
        if let Some(t) = self.timer.borrow_mut().take() {
            t.cancel();
        }
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Future of [`Socket::emit_with_ack`].
pub struct AckFuture {
    pub(super) slot: Rc<AckSlot>,
}

impl std::fmt::Debug for AckFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckFuture")
    }
}

impl Future for AckFuture {
    type Output = Result<AckReply, AckError>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(r) = self.slot.result.borrow_mut().take() {
            return Poll::Ready(r);
        }
        *self.slot.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
