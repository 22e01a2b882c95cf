//! One TCP connection: HTTP/1.1 requests in order (keep-alive, pipelining-safe), then possibly a websocket.
//!
//! The stream is shared by `Rc<RefCell<_>>` between the reader and, for websockets, a writer task; a borrow lasts
//! only for one synchronous poll. glommio's stream keeps its readiness sources across polls, so dropping a pending
//! read (when racing it against a session change) loses no data.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::engine;
use super::http::{self, HttpError, Parsed, Request, Response};
use super::metrics::{ProtocolErrorKind, ShardMetrics};
use super::shard::ShardCtx;

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

struct ConnGuard(Rc<ShardCtx>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0
            .connections
            .set(self.0.connections.get().saturating_sub(1));
        ShardMetrics::gauge(&self.0.metrics().connections, -1);
    }
}

/// What the request dispatcher did with the connection.
pub(crate) enum Next {
    /// Send this response, then continue if keep-alive.
    Respond(Response),
    /// Send this response and close.
    RespondClose(Response),
    /// The connection was taken over (websocket, handed to another shard) or must simply close.
    Done,
}

/// Run [`serve`] in a task of its own; a panic there (a bug) ends that connection only, with a log line.
pub fn spawn_connection(shard: &Rc<ShardCtx>, stream: TcpStream, buf: Vec<u8>) {
    use futures_lite::FutureExt;
    let id = shard.id();
    let fut = std::panic::AssertUnwindSafe(serve(shard.clone(), stream, buf)).catch_unwind();
    glommio::spawn_local(async move {
        if fut.await.is_err() {
            tracing::error!(shard = id, "connection task panicked; connection dropped");
        }
    })
    .detach();
}

/// Serve one connection. `buf` holds bytes already read (when a connection is handed over between shards).
pub async fn serve(shard: Rc<ShardCtx>, stream: TcpStream, mut buf: Vec<u8>) {
    shard.connections.set(shard.connections.get() + 1);
    ShardMetrics::gauge(&shard.metrics().connections, 1);
    let _guard = ConnGuard(shard.clone());
    let stream: Stream = Rc::new(RefCell::new(stream));
    let cfg = shard.config().clone();
    let body_max = cfg.payload_bytes_max.max(cfg.http_body_bytes_max);
    loop {
        // Parse one request (check-then-parse: Partial means read more).
        let (req, used) = loop {
            match http::parse_request(&buf, &cfg, body_max) {
                Ok(Parsed::Complete(req, used)) => break (req, used),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    reject(&shard, &stream, &e).await;
                    return;
                }
            }
            let idle = buf.is_empty();
            let seen = shard.shutdown_signal.epoch();
            if idle && shard.is_shutting_down() {
                return;
            }
            let read = futures_lite::future::or(
                async { Some(read_some(&stream, &mut buf).await) },
                async {
                    if idle {
                        shard.shutdown_signal.changed(seen).await;
                        None
                    } else {
                        std::future::pending().await
                    }
                },
            )
            .await;
            match read {
                None => return,
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(n)) => ShardMetrics::add(&shard.metrics().bytes_in, n as u64),
            }
        };
        ShardMetrics::add(&shard.metrics().http_requests, 1);

        // A request for a session owned by another shard: hand the whole connection to that shard.
        if let Some(owner) = engine::foreign_owner(&shard, &req) {
            hand_over(&shard, stream, buf, owner);
            return;
        }
        buf.drain(..used);
        let keep_alive = req.keep_alive();
        let origin = req.header("origin").map(str::to_owned);
        let next = dispatch(&shard, &stream, &mut buf, req).await;
        let (resp, keep) = match next {
            Next::Respond(r) => (r, keep_alive),
            Next::RespondClose(r) => (r, false),
            Next::Done => return,
        };
        // Shutting down: the connection closes after this answer, so say so.
        let keep = keep && !shard.is_shutting_down();
        let mut out = Vec::with_capacity(resp.body.len() + 256);
        http::write_response(&mut out, &resp, keep, origin.as_deref(), &cfg);
        ShardMetrics::add(&shard.metrics().bytes_out, out.len() as u64);
        if write_all(&stream, &out).await.is_err() || !keep {
            return;
        }
        if buf.is_empty() && buf.capacity() > 0 {
            // idle keep-alive connections hold no buffer
            buf = Vec::new();
        }
    }
}

async fn reject(shard: &Rc<ShardCtx>, stream: &Stream, e: &HttpError) {
    shard.metrics().protocol_error(ProtocolErrorKind::Http);
    tracing::info!(shard = shard.id(), status = e.status(), reason = %e, "HTTP request rejected, closing connection");
    let mut out = Vec::new();
    http::write_response(
        &mut out,
        &Response::error(e.status(), &e.to_string()),
        false,
        None,
        shard.config(),
    );
    let _ = write_all(stream, &out).await;
}

async fn dispatch(shard: &Rc<ShardCtx>, stream: &Stream, buf: &mut Vec<u8>, req: Request) -> Next {
    let cfg = shard.config();
    if let Some(kind) = engine::endpoint_for(cfg, &req.path) {
        return engine::handle_request(shard, stream, buf, req, kind).await;
    }
    if req.method == "OPTIONS" {
        return Next::Respond(preflight(&req));
    }
    let path = req.path.as_str();
    if path == "/healthz" {
        return Next::Respond(if req.method == "GET" || req.method == "HEAD" {
            Response::json(200, &serde_json::json!({"status":"ok","shard":shard.id()}))
        } else {
            Response::error(405, "method not allowed").with_header("Allow", "GET")
        });
    }
    if path == "/metrics" {
        return Next::Respond(if req.method == "GET" {
            Response::new(
                200,
                "text/plain; version=0.0.4",
                super::metrics::render(shard.all_metrics()),
            )
        } else {
            Response::error(405, "method not allowed").with_header("Allow", "GET")
        });
    }
    if req.body.len() > cfg.http_body_bytes_max {
        return Next::RespondClose(Response::error(413, "request body too large"));
    }
    let router = shard.app.borrow().router.clone();
    if let Some(router) = router
        && let Some(fut) = router.route(shard, req)
    {
        return Next::Respond(fut.await);
    }
    Next::Respond(Response::error(404, "not found"))
}

/// CORS preflight answer.
pub(crate) fn preflight(req: &Request) -> Response {
    let mut r = Response {
        status: 204,
        headers: Vec::new(),
        body: Vec::new(),
    };
    r.headers.push((
        "Access-Control-Allow-Methods".into(),
        "GET, POST, PUT, PATCH, DELETE, OPTIONS".into(),
    ));
    if let Some(h) = req.header("access-control-request-headers") {
        r.headers
            .push(("Access-Control-Allow-Headers".into(), h.to_string()));
    }
    r.headers
        .push(("Access-Control-Max-Age".into(), "600".into()));
    r
}

fn hand_over(shard: &Rc<ShardCtx>, stream: Stream, buf: Vec<u8>, owner: usize) {
    // Duplicate the descriptor so the owner gets its own, then drop ours (closing only our copy).
    let fd = {
        let s = stream.borrow();
        // SAFETY: `dup` of a descriptor we hold open; the result is checked before use.
        unsafe { libc::dup(s.as_raw_fd()) }
    };
    drop(stream);
    if fd < 0 {
        tracing::warn!(shard = shard.id(), "dup failed; dropping connection");
        return;
    }
    // SAFETY: `fd` is a fresh descriptor from dup that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ShardMetrics::add(&shard.metrics().connections_handed_over, 1);
    let sent = shard.send_to(owner, move |ctx| {
        // SAFETY: the descriptor is a connected TCP socket owned by `fd`, whose ownership moves to the stream.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        spawn_connection(ctx, stream, buf);
    });
    if let Err(e) = sent {
        // The message (and the descriptor it owns) was dropped, which closed the connection.
        tracing::warn!(shard = shard.id(), owner, error = %e, "cannot hand connection to its session's shard");
    }
}
