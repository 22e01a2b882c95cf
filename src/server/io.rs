//! Byte I/O of a connection: the [`Stream`] its reader and writer share, [`read_some`] / [`write_all`], the
//! non-blocking [`send_now`] of a websocket's corked frames, and the per-turn work bound ([`TurnBudget`]) that
//! keeps one busy connection from starving its shard.
//!
//! The stream is shared by `Rc<RefCell<_>>` between the reader and, for websockets, a writer task; a borrow lasts
//! only for one synchronous poll. glommio's stream keeps its readiness sources across polls, so dropping a pending
//! read (when racing it against a session change) loses no data.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A connection's stream, shared by its reader and writer.
pub type Stream = Rc<RefCell<TcpStream>>;

/// Bytes taken from the kernel per read.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// One receive buffer per shard: glommio's `poll_read` copies in the poll that completes, so the buffer is
    /// borrowed only during that synchronous call and idle connections own no receive buffer at all.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK]);
}

/// Read once, appending to `buf`; returns the number of bytes read (0 = end of stream). Cancel-safe: nothing is
/// appended unless the read completes.
pub async fn read_some(stream: &Stream, buf: &mut Vec<u8>) -> io::Result<usize> {
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match Pin::new(&mut *stream.borrow_mut()).poll_read(cx, &mut scratch[..]) {
                Poll::Ready(Ok(n)) => {
                    buf.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
    })
    .await
}

/// Write all of `data`.
pub async fn write_all(stream: &Stream, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        let n =
            poll_fn(|cx| Pin::new(&mut *stream.borrow_mut()).poll_write(cx, &data[off..])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        off += n;
    }
    Ok(())
}

/// Write as much of `data` to the socket `fd` as the kernel takes now, without waiting (`MSG_DONTWAIT`): the number
/// of bytes written, fewer than `data.len()` when the socket's send buffer is full (`EAGAIN`). The caller must own
/// the right to write to `fd` at this moment (no other write pending on it: bytes would interleave) and keep the
/// socket open during the call.
pub fn send_now(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while off < data.len() {
        let rest = &data[off..];
        // SAFETY: `rest` is a valid, initialised buffer of `rest.len()` bytes for the duration of the call; the
        // kernel only reads it. A closed or foreign `fd` makes the call fail (EBADF, ENOTSOCK), it cannot touch
        // our memory.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => break,
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        off += n as usize;
    }
    Ok(off)
}

/// A bound on the work one connection does before it lets the other tasks of its shard run: a connection that
/// always has bytes to read (glommio reads ready sockets without waiting) would otherwise keep its shard busy.
#[derive(Debug, Default)]
pub(crate) struct TurnBudget {
    bytes: usize,
    frames: usize,
}

impl TurnBudget {
    /// Bytes read per turn.
    pub(crate) const BYTES_PER_TURN: usize = 64 * 1024;
    /// Requests, websocket frames or packets handled per turn.
    pub(crate) const FRAMES_PER_TURN: usize = 64;

    /// The pause at the end of a turn: long enough that the task is not ready again before the executor has
    /// been to its reactor. (A plain yield puts the task back in the run queue, and glommio polls the reactor only
    /// when the queue is empty or its 100 ms time slice is over: the other sockets' readiness would wait that long.)
    const PAUSE: std::time::Duration = std::time::Duration::from_micros(50);

    /// Account for `bytes` read and `frames` handled; past either bound, let the shard's reactor and other tasks
    /// run before going on.
    pub(crate) async fn spend(&mut self, bytes: usize, frames: usize) {
        self.bytes += bytes;
        self.frames += frames;
        if self.bytes >= Self::BYTES_PER_TURN || self.frames >= Self::FRAMES_PER_TURN {
            self.bytes = 0;
            self.frames = 0;
            glommio::timer::sleep(Self::PAUSE).await;
        }
    }
}
