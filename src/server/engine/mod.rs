//! Engine.IO v3/v4. The decisions are sans-IO state machines, each tested through one `check` helper:
//! [`transport`] (which transport a session is on, what its polls, posts and websockets get, the upgrade, the
//! close), [`heartbeat`] (pings, pongs, timeouts, the flood bound), [`outbox`] (the outgoing queue and its bound) and
//! [`inbound`] (decoding a client's frame and routing the packet).
//! [`session`] holds them and carries their actions out (timers, wake-ups, the handler, the session table); one
//! driver per transport does the I/O ([`polling`], [`websocket`]); [`cork`] writes the websockets that got packets
//! in a turn at its end, one send each, without waking their writer tasks. [`close`] lists why a session ends; [`echo`] is
//! the raw echo of the conformance server.
//!
//! **Architecture Invariant:** Engine.IO knows the application above it only through [`EngineHandler`]; which
//! handler serves a new session is decided by the caller of [`handle_request`]. Every packet is encoded by
//! `crate::proto`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::proto::{self, EioVersion};

use super::config::ServerConfig;
use super::http::{self, Next, Request, Response};
use super::io::Stream;
use super::runtime::ShardCtx;
use super::runtime::metrics::ProtocolErrorKind;
use super::runtime::sid::Sid;

pub mod close;
pub(crate) mod cork;
pub mod echo;
pub mod heartbeat;
pub mod inbound;
pub mod outbox;
pub mod polling;
pub mod session;
pub mod transport;
pub mod websocket;

pub use close::CloseReason;
pub use outbox::OutItem;
pub use session::{EngineHandler, Session};

/// Which application an Engine.IO path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// The application's handler (Socket.IO), on `socketio_paths`.
    App,
    /// Raw Engine.IO echo (conformance server), on `engineio_echo_path`.
    Echo,
}

/// Makes the handler of a new session of the given revision.
pub(crate) type MakeHandler<'a> = &'a dyn Fn(EioVersion) -> Rc<dyn EngineHandler>;

/// The Engine.IO sessions of one shard (per-shard state of this layer, in [`ShardCtx::state`]).
#[derive(Default)]
pub(crate) struct EngineShard {
    pub(crate) sessions: RefCell<HashMap<Sid, Rc<Session>>>,
    /// Websocket sessions to write at the end of this turn (see [`cork`]).
    pub(crate) cork: Rc<cork::Cork>,
}

/// This shard's Engine.IO state.
pub(crate) fn engine_shard(shard: &ShardCtx) -> Rc<EngineShard> {
    shard.state_or_default::<EngineShard>()
}

/// Live sessions on this shard (what `sessions_per_shard_max` bounds).
pub(crate) fn session_count(shard: &ShardCtx) -> usize {
    engine_shard(shard).sessions.borrow().len()
}

/// Is `sid` a session of this shard?
pub(crate) fn has_session(shard: &ShardCtx, sid: &str) -> bool {
    engine_shard(shard).sessions.borrow().contains_key(sid)
}

/// Graceful shutdown: every session of this shard gets a close packet.
pub(crate) fn close_all_for_shutdown(shard: &ShardCtx) {
    let sessions: Vec<Rc<Session>> = engine_shard(shard)
        .sessions
        .borrow()
        .values()
        .cloned()
        .collect();
    tracing::info!(
        shard = shard.id(),
        sessions = sessions.len(),
        "closing the sessions for shutdown"
    );
    for s in sessions {
        s.close(CloseReason::ServerShutdown, session::CloseHow::SendClose);
    }
}

fn path_matches(configured: &str, path: &str) -> bool {
    path == configured || configured.strip_suffix('/').is_some_and(|p| p == path)
}

/// The Engine.IO endpoint served at `path`, if any.
pub(crate) fn endpoint_for(cfg: &ServerConfig, path: &str) -> Option<Endpoint> {
    if cfg
        .engineio_echo_path
        .as_deref()
        .is_some_and(|p| path_matches(p, path))
    {
        return Some(Endpoint::Echo);
    }
    cfg.socketio_paths
        .iter()
        .any(|p| path_matches(p, path))
        .then_some(Endpoint::App)
}

/// If `req` names a session owned by another shard, that shard.
pub(crate) fn foreign_owner(shard: &ShardCtx, req: &Request) -> Option<usize> {
    if shard.nr_shards() == 1 {
        return None;
    }
    endpoint_for(shard.config(), &req.path)?;
    let sid = req.query_param("sid")?;
    let owner = shard.owner_of_sid(&sid)?;
    (owner != shard.id()).then_some(owner)
}

/// Is `req` an Engine.IO handshake (a GET on an Engine.IO path without `sid`, polling or websocket)?
pub(crate) fn is_handshake(cfg: &ServerConfig, req: &Request) -> bool {
    req.method == "GET"
        && endpoint_for(cfg, &req.path).is_some()
        && req.query_param("sid").is_none()
}

/// The reference server's answer to an unknown sid.
pub(crate) fn unknown_sid_response() -> Response {
    http::error_response(400, 1, "Session ID unknown")
}

/// The Engine.IO protocol limits derived from the server configuration.
pub(crate) fn proto_limits(cfg: &ServerConfig) -> proto::Limits {
    proto::Limits {
        payload_bytes_max: cfg.payload_bytes_max,
        attachments_per_packet_max: cfg.attachments_per_packet_max,
        ..proto::Limits::DEFAULT
    }
}

/// The reference server's error answer with Engine.IO error `code` (`0` transport unknown, `1` session id
/// unknown, `2` bad handshake method, `3` bad request, `5` unsupported protocol version).
fn eio_error(code: u16, message: &str) -> Next {
    Next::Respond(http::error_response(400, code, message))
}

/// The answer to a request the session refuses.
fn refusal(e: transport::EioError) -> Next {
    match e {
        transport::EioError::UnknownSid => eio_error(1, "Session ID unknown"),
        transport::EioError::BadRequest => eio_error(3, "Bad request"),
    }
}

/// Serve one HTTP request on an Engine.IO path. A new session gets the handler `make_handler` returns. A
/// websocket whose handshake is done is left in `upgraded` (with [`Next::Done`]), for the caller to run.
pub(crate) async fn handle_request(
    shard: &Rc<ShardCtx>,
    stream: &Stream,
    buf: &mut Vec<u8>,
    req: Request,
    make_handler: MakeHandler<'_>,
    upgraded: &mut Option<websocket::Upgraded>,
) -> Next {
    if req.method == "OPTIONS" {
        return Next::Respond(http::preflight(&req));
    }
    let Some(version) = req
        .query_param("EIO")
        .as_deref()
        .and_then(EioVersion::from_query)
    else {
        shard.metrics().protocol_error(ProtocolErrorKind::EngineIo);
        return eio_error(5, "Unsupported protocol version");
    };
    let transport = req.query_param("transport");
    let sid = req.query_param("sid");
    if req.is_websocket_upgrade() {
        if transport.as_deref() != Some("websocket") {
            shard.metrics().protocol_error(ProtocolErrorKind::EngineIo);
            return eio_error(0, "Transport unknown");
        }
        let serve = websocket::serve(shard, stream, buf, req, version, sid, make_handler);
        return match serve.await {
            Ok(websocket) => {
                *upgraded = Some(websocket);
                Next::Done
            }
            Err(next) => next,
        };
    }
    match transport.as_deref() {
        Some("polling") => {}
        Some("websocket") => return eio_error(3, "Bad request"),
        _ => {
            shard.metrics().protocol_error(ProtocolErrorKind::EngineIo);
            return eio_error(0, "Transport unknown");
        }
    }
    let Some(sid) = sid else {
        if req.method != "GET" {
            return eio_error(2, "Bad handshake method");
        }
        return polling::handshake(shard, &req, version, make_handler(version));
    };
    let session = engine_shard(shard)
        .sessions
        .borrow()
        .get(sid.as_str())
        .cloned();
    let Some(s) = session else {
        shard
            .metrics()
            .protocol_error(ProtocolErrorKind::UnknownSid);
        return eio_error(1, "Session ID unknown");
    };
    if s.version != version {
        return eio_error(3, "Bad request");
    }
    // A session past its heartbeat deadline is closed here, and the request answered as for a closed session.
    s.close_if_heartbeat_overdue();
    match req.method.as_str() {
        "GET" => polling::poll_get(&s, stream, buf).await,
        "POST" => polling::poll_post(&s, &req),
        _ => eio_error(2, "Bad handshake method"),
    }
}
