//! One TCP connection: HTTP/1.1 requests in order (keep-alive, pipelining-safe), each routed to `/metrics`,
//! `/healthz`, Engine.IO or the app's [`Router`](super::http::Router); then possibly a websocket. A request for a
//! session of another shard hands the connection over to that shard.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;

use glommio::net::TcpStream;

use super::config::ServerConfig;
use super::engine::echo::Echo;
use super::engine::websocket::Upgraded;
use super::engine::{self, Endpoint};
use super::http::{self, HttpError, Next, Parsed, Request, Response};
use super::io::{Stream, TurnBudget, write_all};
use super::runtime::ShardCtx;
use super::runtime::metrics::{PanicSite, ProtocolErrorKind, Refusal, ShardMetrics};
use super::socketio;

/// The app's REST routes on this shard (per-shard state, set by [`super::app::start`]).
#[derive(Default)]
pub(crate) struct Routes {
    pub(crate) router: Option<Rc<dyn http::Router>>,
}

/// Response bodies larger than this are written in place after their head instead of being copied into one buffer.
const LARGE_BODY_BYTES: usize = 64 * 1024;

struct ConnGuard(Rc<ShardCtx>);
impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

/// Run [`serve`] in a task of its own; a panic there (a bug) ends that connection only, with a log line.
pub fn spawn_connection(shard: &Rc<ShardCtx>, stream: TcpStream, buf: Vec<u8>) {
    spawn_guarded(shard, serve(shard.clone(), stream, buf));
}

/// Run `fut`, a connection's work, in a task of its own that catches its panics.
fn spawn_guarded(shard: &Rc<ShardCtx>, fut: impl std::future::Future<Output = ()> + 'static) {
    use futures_lite::FutureExt;
    let id = shard.id();
    let fut = std::panic::AssertUnwindSafe(fut).catch_unwind();
    let shard = shard.clone();
    glommio::spawn_local(async move {
        if fut.await.is_err() {
            shard.metrics().panic_caught(PanicSite::Connection);
            tracing::error!(shard = id, "connection task panicked; connection dropped");
        }
    })
    .detach();
}

/// Serve one connection. `buf` holds bytes already read (when a connection is handed over between shards).
pub async fn serve(shard: Rc<ShardCtx>, stream: TcpStream, mut buf: Vec<u8>) {
    shard.connection_opened();
    let guard = ConnGuard(shard.clone());
    let stream: Stream = Rc::new(RefCell::new(stream));
    let cfg = shard.config();
    let body_max = cfg.payload_bytes_max.max(cfg.http_body_bytes_max);
    // Handshakes in the current one-second window of this connection, and when the window began.
    let mut handshakes = 0usize;
    let mut handshakes_since = std::time::Instant::now();
    let mut budget = TurnBudget::default();
    loop {
        // Parse one request (check-then-parse: Partial means read more).
        let (req, used) = loop {
            match http::parse_request(&buf, cfg, body_max) {
                Ok(Parsed::Complete(req, used)) => break (req, used),
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    reject(&shard, &stream, &e).await;
                    return;
                }
            }
            let idle = buf.is_empty();
            let seen = shard.shutdown_signal().epoch();
            if idle && shard.is_shutting_down() {
                return;
            }
            let read = futures_lite::future::or(
                async { Some(super::io::read_some(&stream, &mut buf).await) },
                async {
                    if idle {
                        shard.shutdown_signal().changed(seen).await;
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
                Some(Ok(n)) => {
                    ShardMetrics::add(&shard.metrics().bytes_in, n as u64);
                    budget.spend(n, 0).await;
                }
            }
        };
        ShardMetrics::add(&shard.metrics().http_requests, 1);
        // Pipelined requests are served without reading again: bound the work of one turn here too.
        budget.spend(0, 1).await;

        // A request for a session owned by another shard: hand the whole connection to that shard.
        if let Some(owner) = engine::foreign_owner(&shard, &req) {
            let sid = req.query_param("sid").unwrap_or_default();
            hand_over(&shard, stream, buf, owner, sid);
            return;
        }
        buf.drain(..used);
        if engine::is_handshake(cfg, &req) {
            if handshakes_since.elapsed() >= std::time::Duration::from_secs(1) {
                handshakes_since = std::time::Instant::now();
                handshakes = 0;
            }
            handshakes += 1;
            let refusal = if handshakes > cfg.handshakes_per_connection_per_s_max {
                Some((
                    Refusal::Handshakes,
                    "too many handshakes per second on one connection",
                ))
            } else if engine::session_count(&shard) >= cfg.sessions_per_shard_max {
                Some((Refusal::Sessions, "too many sessions, try again later"))
            } else {
                None
            };
            if let Some((why, message)) = refusal {
                shard.metrics().refusal(why);
                tracing::debug!(
                    shard = shard.id(),
                    handshakes,
                    reason = message,
                    "handshake refused"
                );
                let origin = req.header("origin").map(str::to_owned);
                let mut out = Vec::new();
                // Past the per-connection bound the client keeps trying: close. A full shard may have room soon.
                let keep = why == Refusal::Sessions && req.keep_alive();
                http::write_response(
                    &mut out,
                    &Response::error(503, message).with_header("Retry-After", "1"),
                    keep,
                    origin.as_deref(),
                    cfg,
                );
                if write_all(&stream, &out).await.is_err() || !keep {
                    return;
                }
                continue;
            }
        }
        let keep_alive = req.keep_alive();
        let origin = req.header("origin").map(str::to_owned);
        let mut upgraded = None;
        let next = dispatch(&shard, &stream, &mut buf, req, &mut upgraded).await;
        if let Some(websocket) = upgraded {
            // The websocket runs in a small task of its own: this one, sized for every HTTP path, ends here and
            // frees the request, the handshake and the read buffer with it.
            spawn_guarded(&shard, async move {
                let _guard = guard;
                websocket.run().await;
            });
            return;
        }
        let (resp, keep) = match next {
            Next::Respond(r) => (r, keep_alive),
            Next::RespondClose(r) => (r, false),
            Next::Done => return,
        };
        // Shutting down: the connection closes after this answer, so say so.
        let keep = keep && !shard.is_shutting_down();
        let written = if resp.body.len() > LARGE_BODY_BYTES {
            // A large body is written from the response itself, not copied behind its head.
            let mut head = Vec::with_capacity(256);
            http::write_head(&mut head, &resp, keep, origin.as_deref(), cfg);
            ShardMetrics::add(
                &shard.metrics().bytes_out,
                (head.len() + resp.body.len()) as u64,
            );
            let ok = write_all(&stream, &head).await.is_ok()
                && write_all(&stream, &resp.body).await.is_ok();
            drop(resp);
            ok
        } else {
            let mut out = Vec::with_capacity(resp.body.len() + 256);
            http::write_response(&mut out, &resp, keep, origin.as_deref(), cfg);
            ShardMetrics::add(&shard.metrics().bytes_out, out.len() as u64);
            write_all(&stream, &out).await.is_ok()
        };
        if !written || !keep {
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

/// Serve one request. A websocket upgrade leaves its session in `upgraded`, to be run by the caller.
async fn dispatch(
    shard: &Rc<ShardCtx>,
    stream: &Stream,
    buf: &mut Vec<u8>,
    req: Request,
    upgraded: &mut Option<Upgraded>,
) -> Next {
    let cfg = shard.config();
    if let Some(endpoint) = engine::endpoint_for(cfg, &req.path) {
        let make_handler = |version| match endpoint {
            Endpoint::App => socketio::connection::session_handler(shard, version),
            Endpoint::Echo => Echo::handler(),
        };
        return engine::handle_request(shard, stream, buf, req, &make_handler, upgraded).await;
    }
    if req.method == "OPTIONS" {
        return Next::Respond(http::preflight(&req));
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
        let peer = stream.borrow().peer_addr().ok();
        if let Some(refused) = metrics_refusal(cfg, &req, peer) {
            return Next::Respond(refused);
        }
        return Next::Respond(if req.method == "GET" {
            Response::new(
                200,
                "text/plain; version=0.0.4",
                super::runtime::metrics::render(shard.all_metrics()),
            )
        } else {
            Response::error(405, "method not allowed").with_header("Allow", "GET")
        });
    }
    if req.body.len() > cfg.http_body_bytes_max {
        return Next::RespondClose(Response::error(413, "request body too large"));
    }
    let router = shard.state::<Routes>().and_then(|r| r.router.clone());
    if let Some(router) = router
        && let Some(fut) = router.route(shard, req)
    {
        return Next::Respond(fut.await);
    }
    Next::Respond(Response::error(404, "not found"))
}

/// Why `/metrics` is refused to this request, if it is: with `metrics_token` set, a missing or wrong
/// `Authorization: Bearer` is 401; without it, a client not on a loopback address is 403.
fn metrics_refusal(
    cfg: &ServerConfig,
    req: &Request,
    peer: Option<std::net::SocketAddr>,
) -> Option<Response> {
    match &cfg.metrics_token {
        Some(expected) => {
            let given = req
                .header("authorization")
                .and_then(|h| h.trim().split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, t)| t.trim())
                .unwrap_or("");
            // constant time in the token's length
            let same = given.len() == expected.len()
                && given
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            (!same).then(|| {
                Response::error(401, "metrics need `Authorization: Bearer <metrics token>`")
                    .with_header("WWW-Authenticate", "Bearer")
            })
        }
        None => {
            let local = peer.is_some_and(|p| match p.ip() {
                std::net::IpAddr::V4(ip) => ip.is_loopback(),
                std::net::IpAddr::V6(ip) => {
                    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            });
            (!local).then(|| {
                Response::error(
                    403,
                    "metrics are served to loopback clients only; set server.metrics_token to allow others",
                )
            })
        }
    }
}

async fn refuse_handed_over(stream: TcpStream, resp: Response, cfg: Rc<ServerConfig>) {
    let stream: Stream = Rc::new(RefCell::new(stream));
    let mut out = Vec::new();
    http::write_response(&mut out, &resp, false, None, &cfg);
    let _ = write_all(&stream, &out).await;
}

fn hand_over(shard: &Rc<ShardCtx>, stream: Stream, buf: Vec<u8>, owner: usize, sid: String) {
    // Cheap early refusal: the owner's connection count is in the shared statistics.
    let owner_full = shard.all_metrics().get(owner).is_some_and(|m| {
        m.connections.load(std::sync::atomic::Ordering::Relaxed)
            >= shard.config().connections_per_shard_max as i64
    });
    if owner_full {
        shard.metrics().refusal(Refusal::HandOver);
        tracing::debug!(
            shard = shard.id(),
            owner,
            "hand-over refused: owner shard at connections_per_shard_max"
        );
        return;
    }
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
        // The owner checks its own bound and that the session exists before it serves anything: a made-up sid
        // with another shard's prefix must not move connections past that shard's limit.
        if ctx.connections() >= ctx.config().connections_per_shard_max {
            ctx.metrics().refusal(Refusal::HandOver);
            tracing::debug!(
                shard = ctx.id(),
                "handed-over connection refused: connections_per_shard_max reached"
            );
            return;
        }
        if !engine::has_session(ctx, &sid) {
            ctx.metrics().refusal(Refusal::HandOver);
            ctx.metrics().protocol_error(ProtocolErrorKind::UnknownSid);
            let cfg = Rc::new(ctx.config().clone());
            glommio::spawn_local(refuse_handed_over(
                stream,
                engine::unknown_sid_response(),
                cfg,
            ))
            .detach();
            return;
        }
        spawn_connection(ctx, stream, buf);
    });
    if let Err(e) = sent {
        // The message (and the descriptor it owns) was dropped, which closed the connection.
        tracing::warn!(shard = shard.id(), owner, error = %e, "cannot hand connection to its session's shard");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::parse_request;

    fn get_metrics(headers: &str) -> Request {
        let raw = format!("GET /metrics HTTP/1.1\r\n{headers}\r\n");
        match parse_request(raw.as_bytes(), &ServerConfig::default(), 0).unwrap() {
            Parsed::Complete(r, _) => r,
            Parsed::Partial => panic!("request not parsed"),
        }
    }

    #[test]
    fn metrics_answer_loopback_only_without_a_token() {
        let cfg = ServerConfig::default();
        let req = get_metrics("");
        for ok in [
            "127.0.0.1:9",
            "127.3.2.1:9",
            "[::1]:9",
            "[::ffff:127.0.0.1]:9",
        ] {
            assert!(
                metrics_refusal(&cfg, &req, Some(ok.parse().unwrap())).is_none(),
                "{ok}"
            );
        }
        for refused in [
            "10.1.2.3:9",
            "192.168.0.7:9",
            "[2001:db8::1]:9",
            "[::ffff:10.0.0.1]:9",
        ] {
            let r = metrics_refusal(&cfg, &req, Some(refused.parse().unwrap()));
            assert_eq!(r.map(|r| r.status), Some(403), "{refused}");
        }
        assert_eq!(
            metrics_refusal(&cfg, &req, None).map(|r| r.status),
            Some(403)
        );
    }

    #[test]
    fn metrics_need_the_exact_token_from_anywhere_when_one_is_set() {
        let cfg = ServerConfig {
            metrics_token: Some("metrics-token-0123456789abcdef".into()),
            ..ServerConfig::default()
        };
        let outside = Some("10.1.2.3:9".parse().unwrap());
        let good = get_metrics("Authorization: Bearer metrics-token-0123456789abcdef\r\n");
        assert!(metrics_refusal(&cfg, &good, outside).is_none());
        for bad in [
            "",
            "Authorization: Bearer metrics-token-0123456789abcdeX\r\n",
            "Authorization: Basic x\r\n",
        ] {
            let r = metrics_refusal(&cfg, &get_metrics(bad), outside);
            assert_eq!(r.map(|r| r.status), Some(401), "{bad}");
        }
    }
}
