//! Engine.IO v3/v4 sessions on this shard: handshake, long-polling (one GET and one POST at a time), websocket,
//! the polling -> websocket upgrade (probe, noop, upgrade), heartbeats on the shard's timer wheel, close reasons,
//! the per-session outgoing queue (coalesced: a writer takes everything queued since its last pass and sends it in
//! one write) and its bound.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::Message;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, OpCode};

use crate::proto::engine::Packet;
use crate::proto::{self, EioVersion, Frame, Handshake, PayloadForm};

use super::config::ServerConfig;
use super::conn::{self, Next, Stream};
use super::http::{Request, Response};
use super::metrics::{ProtocolErrorKind, ShardMetrics};
use super::shard::ShardCtx;
use super::sid::Sid;
use super::ws;

/// Which application an Engine.IO path serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// Socket.IO on top.
    SocketIo,
    /// Raw Engine.IO echo (conformance server).
    Echo,
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
        .then_some(Endpoint::SocketIo)
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
    Response::json(
        400,
        &serde_json::json!({ "code": 1, "message": "Session ID unknown" }),
    )
}

/// One Engine.IO packet queued for a session, already encoded (shared by every recipient of a broadcast).
#[derive(Debug, Clone)]
pub enum OutItem {
    /// A whole text packet, type character included (`4...`, `2`, `1`).
    Text(Arc<str>),
    /// The data of a binary message (no prefix; v3 framing adds its type byte).
    Binary(Arc<[u8]>),
}

impl OutItem {
    fn len(&self) -> usize {
        match self {
            OutItem::Text(t) => t.len(),
            OutItem::Binary(b) => b.len() + 1,
        }
    }
    fn frame(&self) -> Frame<'_> {
        match self {
            OutItem::Text(t) => Frame::Text(t),
            OutItem::Binary(b) => Frame::Binary(b),
        }
    }
    fn text(s: &str) -> OutItem {
        OutItem::Text(Arc::from(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Polling,
    Upgrading,
    WebSocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GetEnd {
    Noop,
    Close,
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseHow {
    /// Server-initiated: send an Engine.IO `close` packet (a pending poll is answered with `1`).
    SendClose,
    /// The client asked to close: a pending poll is answered with `6`.
    ClientClosed,
    /// The transport is gone or must be dropped at once (slow reader): nothing more is written.
    Abort,
}

struct SessState {
    phase: Phase,
    queue: VecDeque<OutItem>,
    queued_bytes: usize,
    /// Websocket control bytes (probe answers, pongs, close replies) written before the queue.
    ws_raw: Vec<u8>,
    get_pending: bool,
    get_end: Option<GetEnd>,
    closed: Option<Cow<'static, str>>,
    abort: bool,
    awaiting_pong: bool,
    /// When the unanswered ping was sent (meaningful while `awaiting_pong`).
    ping_sent: Instant,
    /// The handshake or the last pong: by this + pingInterval + pingTimeout a v4 session has answered a ping.
    heartbeat_from: Instant,
    heartbeat_gen: u64,
    last_heard: Instant,
    /// Noops and pings received in the current one-second window, and when it began.
    beats: u32,
    beats_window: Instant,
}

/// How long a polling session closed by its client's `1` (with no poll pending) keeps answering one poll with `6`:
/// a poll and the closing POST sent at once on two connections may arrive in either order.
const LATE_POLL_GRACE: Duration = Duration::from_millis(100);

/// The application side of a session (the Socket.IO layer or the echo).
pub(crate) trait EngineHandler {
    /// The session opened (its open packet is already queued or sent).
    fn on_open(&self, session: &Rc<Session>);
    /// A text `message` packet (without its `4`). `Err` closes the session with that reason.
    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), String>;
    /// A binary message.
    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), String>;
    /// The session closed.
    fn on_close(&self, session: &Rc<Session>, reason: &str);
    /// For downcasting to the concrete handler.
    fn as_any(self: Rc<Self>) -> Rc<dyn std::any::Any>;
}

/// One Engine.IO session, owned by the shard that created it.
pub struct Session {
    pub(crate) sid: Sid,
    pub(crate) version: EioVersion,
    pub(crate) shard: Rc<ShardCtx>,
    supports_binary: bool,
    st: RefCell<SessState>,
    pub(crate) changed: super::signal::Signal,
    /// Notified once, when the session closes. The websocket reader waits on this one rather than on `changed`:
    /// waking it for every queued packet would cancel and resubmit its pending read each time.
    closed_signal: super::signal::Signal,
    handler: RefCell<Option<Rc<dyn EngineHandler>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("sid", &self.sid)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn create(
        shard: &Rc<ShardCtx>,
        version: EioVersion,
        phase: Phase,
        supports_binary: bool,
        handler: Rc<dyn EngineHandler>,
    ) -> Rc<Session> {
        let sid = shard.new_sid();
        let s = Rc::new(Session {
            sid: sid.clone(),
            version,
            shard: shard.clone(),
            supports_binary,
            st: RefCell::new(SessState {
                phase,
                queue: VecDeque::new(),
                queued_bytes: 0,
                ws_raw: Vec::new(),
                get_pending: false,
                get_end: None,
                closed: None,
                abort: false,
                awaiting_pong: false,
                ping_sent: Instant::now(),
                heartbeat_from: Instant::now(),
                heartbeat_gen: 0,
                last_heard: Instant::now(),
                beats: 0,
                beats_window: Instant::now(),
            }),
            changed: Default::default(),
            closed_signal: Default::default(),
            handler: RefCell::new(Some(handler)),
        });
        shard.sessions.borrow_mut().insert(sid, s.clone());
        let m = shard.metrics();
        ShardMetrics::gauge(
            if phase == Phase::WebSocket {
                &m.sessions_websocket
            } else {
                &m.sessions_polling
            },
            1,
        );
        s.start_heartbeat();
        s
    }

    /// The session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// The Engine.IO revision of this session.
    pub fn version(&self) -> EioVersion {
        self.version
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.st.borrow().closed.is_some()
    }

    fn handler(&self) -> Option<Rc<dyn EngineHandler>> {
        self.handler.borrow().clone()
    }

    pub(crate) fn sio_handler(&self) -> Option<Rc<super::socketio::SioHandler>> {
        self.handler()
            .and_then(|h| h.as_any().downcast::<super::socketio::SioHandler>().ok())
    }

    /// Queue packets; all of them or none (closed session). Closes the session as a slow reader when its queue
    /// exceeds `socket_queued_bytes_max`. Returns false if the session is (now) closed.
    pub(crate) fn send_items(self: &Rc<Self>, items: impl IntoIterator<Item = OutItem>) -> bool {
        let max = self.shard.config().socket_queued_bytes_max;
        let over;
        {
            let mut st = self.st.borrow_mut();
            if st.closed.is_some() {
                return false;
            }
            let was_empty = st.queue.is_empty();
            for item in items {
                st.queued_bytes += item.len();
                st.queue.push_back(item);
            }
            over = st.queued_bytes + st.ws_raw.len() > max;
            if !over && was_empty && !st.queue.is_empty() {
                drop(st);
                self.changed.notify();
            }
        }
        if over {
            let queued = {
                let mut st = self.st.borrow_mut();
                let queued = st.queued_bytes + st.ws_raw.len();
                // Nothing more will be written: give the memory back now, not when the last reference goes.
                st.ws_raw = Vec::new();
                st.queue = VecDeque::new();
                st.queued_bytes = 0;
                queued
            };
            ShardMetrics::add(&self.shard.metrics().slow_reader_disconnects, 1);
            self.close(
                format!("slow reader: {queued} bytes queued, socket_queued_bytes_max is {max}")
                    .into(),
                CloseHow::Abort,
            );
            return false;
        }
        true
    }

    /// Queue one text packet (`4` + text for a message).
    pub(crate) fn send_text_packet(self: &Rc<Self>, packet_text: String) -> bool {
        self.send_items([OutItem::Text(Arc::from(packet_text))])
    }

    /// Queue websocket control bytes (pongs, probe answers, close frames). They count toward the same
    /// `socket_queued_bytes_max` as queued packets: a client that sends pings and never reads is a slow reader.
    fn push_ws_raw(self: &Rc<Self>, bytes: &[u8]) {
        let max = self.shard.config().socket_queued_bytes_max;
        let queued = {
            let mut st = self.st.borrow_mut();
            if st.abort {
                return;
            }
            st.ws_raw.extend_from_slice(bytes);
            st.queued_bytes + st.ws_raw.len()
        };
        if queued > max {
            ShardMetrics::add(&self.shard.metrics().slow_reader_disconnects, 1);
            {
                let mut st = self.st.borrow_mut();
                st.abort = true;
                st.ws_raw = Vec::new();
                st.queue = VecDeque::new();
                st.queued_bytes = 0;
            }
            self.close(
                format!(
                    "slow reader: {queued} bytes queued (control frames included), socket_queued_bytes_max is {max}"
                )
                .into(),
                CloseHow::Abort,
            );
            return;
        }
        self.changed.notify();
    }

    /// Close the session. Idempotent.
    pub(crate) fn close(self: &Rc<Self>, reason: Cow<'static, str>, how: CloseHow) {
        let phase;
        let mut late_poll = false;
        {
            let mut st = self.st.borrow_mut();
            if st.closed.is_some() {
                return;
            }
            phase = st.phase;
            match how {
                CloseHow::SendClose => {
                    if st.get_pending {
                        st.get_end = Some(GetEnd::Close);
                    } else if phase == Phase::WebSocket {
                        st.queue.push_back(OutItem::text("1"));
                    }
                }
                CloseHow::ClientClosed => {
                    if st.get_pending {
                        st.get_end = Some(GetEnd::Noop);
                    } else if phase == Phase::Polling {
                        // A poll sent together with the closing POST may reach us just after it (another
                        // connection, maybe another shard): it gets the `6` it would have got had it come first.
                        st.get_end = Some(GetEnd::Noop);
                        late_poll = true;
                    }
                }
                CloseHow::Abort => st.abort = true,
            }
            st.closed = Some(reason.clone());
        }
        if late_poll {
            let shard = Rc::downgrade(&self.shard);
            let sid = self.sid.clone();
            self.shard.timers().schedule(LATE_POLL_GRACE, move || {
                if let Some(shard) = shard.upgrade() {
                    let mut sessions = shard.sessions.borrow_mut();
                    if sessions.get(&sid).is_some_and(|s| s.is_closed()) {
                        sessions.remove(&sid);
                    }
                }
            });
        } else {
            self.shard.sessions.borrow_mut().remove(&self.sid);
        }
        let m = self.shard.metrics();
        ShardMetrics::gauge(
            if phase == Phase::WebSocket {
                &m.sessions_websocket
            } else {
                &m.sessions_polling
            },
            -1,
        );
        let routine =
            ["client close", "transport close", "server shutting down"].contains(&reason.as_ref());
        if routine {
            tracing::debug!(shard = self.shard.id(), sid = %self.sid, reason = %reason, "session closed");
        } else if reason.starts_with("slow reader") {
            tracing::warn!(shard = self.shard.id(), sid = %self.sid, reason = %reason, "session closed");
        } else {
            tracing::info!(shard = self.shard.id(), sid = %self.sid, reason = %reason, "session closed");
        }
        let handler = self.handler.borrow_mut().take();
        if let Some(h) = handler {
            h.on_close(self, &reason);
        }
        self.changed.notify();
        self.closed_signal.notify();
    }

    pub(crate) fn close_for_shutdown(self: &Rc<Self>) {
        self.close("server shutting down".into(), CloseHow::SendClose);
    }

    // ---- heartbeat ----

    fn start_heartbeat(self: &Rc<Self>) {
        let cfg = self.shard.config();
        match self.version {
            EioVersion::V4 => self.schedule_ping(Duration::from_millis(cfg.ping_interval_ms)),
            EioVersion::V3 => {
                let window = Duration::from_millis(cfg.ping_interval_ms + cfg.ping_timeout_ms);
                self.schedule_v3_check(window);
            }
        }
    }

    /// Pings (and v3 liveness checks) may fire this early, never late, so that the heartbeats of many sessions share
    /// one wake-up of the shard: an eighth of the interval, at most 100 ms and at most 8 timer ticks (a fine timer
    /// tick asks for precise heartbeats). A ping thus never comes later than
    /// pingInterval, the client then has the whole pingTimeout to answer, and a silent session is closed by
    /// pingInterval + pingTimeout after its handshake or last pong, as the protocol says.
    fn heartbeat_slack(&self, d: Duration) -> Duration {
        (d / 8)
            .min(Duration::from_millis(100))
            .min(self.shard.timers().tick() * 8)
    }

    fn schedule_ping(self: &Rc<Self>, delay: Duration) {
        let weak = Rc::downgrade(self);
        let gen_ = self.st.borrow().heartbeat_gen;
        let timers = self.shard.timers();
        timers.schedule_coalesced(delay, self.heartbeat_slack(delay), move || {
            let Some(s) = weak.upgrade() else { return };
            {
                let mut st = s.st.borrow_mut();
                if st.closed.is_some() || st.heartbeat_gen != gen_ {
                    return;
                }
                st.awaiting_pong = true;
                st.ping_sent = Instant::now();
            }
            s.send_items([OutItem::text("2")]);
            // The pong may take the whole pingTimeout from now, the ping's actual send (never later than due):
            // whole ticks, not rounded further. Pings sent in one pass still share this deadline.
            let timeout = Duration::from_millis(s.shard.config().ping_timeout_ms);
            let weak = Rc::downgrade(&s);
            let timers = s.shard.timers();
            timers.schedule_coalesced(timeout, Duration::ZERO, move || {
                let Some(s) = weak.upgrade() else { return };
                let expired = {
                    let st = s.st.borrow();
                    st.closed.is_none() && st.heartbeat_gen == gen_ && st.awaiting_pong
                };
                if expired {
                    s.close("ping timeout".into(), CloseHow::SendClose);
                }
            });
        });
    }

    fn schedule_v3_check(self: &Rc<Self>, delay: Duration) {
        let weak = Rc::downgrade(self);
        let timers = self.shard.timers();
        timers.schedule_coalesced(delay, self.heartbeat_slack(delay), move || {
            let Some(s) = weak.upgrade() else { return };
            let cfg = s.shard.config();
            let window = Duration::from_millis(cfg.ping_interval_ms + cfg.ping_timeout_ms);
            let elapsed = {
                let st = s.st.borrow();
                if st.closed.is_some() {
                    return;
                }
                st.last_heard.elapsed()
            };
            // Within a tick of the window counts as expired: the next check would come after it.
            if elapsed + s.shard.timers().tick() >= window {
                s.close("ping timeout".into(), CloseHow::SendClose);
            } else {
                s.schedule_v3_check(window - elapsed);
            }
        });
    }

    /// Close the session now if its heartbeat deadline has passed, even if the timer that enforces it has not fired
    /// yet (a busy shard runs timers late): a request never finds alive a session the protocol says is gone. True
    /// if the session is (now) closed.
    fn close_if_heartbeat_overdue(self: &Rc<Self>) -> bool {
        let cfg = self.shard.config();
        let overdue = {
            let st = self.st.borrow();
            if st.closed.is_some() {
                return true;
            }
            match self.version {
                EioVersion::V4 => {
                    let timeout = Duration::from_millis(cfg.ping_timeout_ms);
                    let interval = Duration::from_millis(cfg.ping_interval_ms);
                    (st.awaiting_pong && st.ping_sent.elapsed() >= timeout)
                        || st.heartbeat_from.elapsed() >= interval + timeout
                }
                EioVersion::V3 => {
                    st.last_heard.elapsed()
                        >= Duration::from_millis(cfg.ping_interval_ms + cfg.ping_timeout_ms)
                }
            }
        };
        if overdue {
            self.close("ping timeout".into(), CloseHow::SendClose);
        }
        overdue
    }

    // ---- incoming ----

    /// Count one noop or ping (Engine.IO or websocket) from the client: more than `heartbeats_per_session_per_s_max`
    /// in one second is a flood (they cost the shard work and the client nothing), and closes the session.
    pub(crate) fn count_heartbeat(&self) -> Result<(), String> {
        let max = self.shard.config().heartbeats_per_session_per_s_max;
        let mut st = self.st.borrow_mut();
        let now = Instant::now();
        if now.duration_since(st.beats_window) >= Duration::from_secs(1) {
            st.beats_window = now;
            st.beats = 0;
        }
        st.beats += 1;
        if st.beats > max {
            drop(st);
            self.shard
                .metrics()
                .refusal(super::metrics::Refusal::HeartbeatFlood);
            return Err(format!(
                "heartbeat flood: more than heartbeats_per_session_per_s_max ({max}) noops or pings in one second"
            ));
        }
        Ok(())
    }

    /// Handle one received Engine.IO packet. `Err` is the reason to close the session.
    fn on_packet(self: &Rc<Self>, packet: Packet<'_>) -> Result<(), String> {
        ShardMetrics::add(&self.shard.metrics().packets_in, 1);
        if self.version == EioVersion::V3 {
            self.st.borrow_mut().last_heard = Instant::now();
        }
        match packet {
            Packet::Close => {
                self.close("client close".into(), CloseHow::ClientClosed);
                Ok(())
            }
            Packet::Ping(data) => {
                if self.version == EioVersion::V4 {
                    return Err("invalid heartbeat direction (ping from a v4 client)".into());
                }
                self.count_heartbeat()?;
                let mut text = String::with_capacity(1 + data.len());
                Packet::Pong(data).write_text(&mut text);
                self.send_text_packet(text);
                Ok(())
            }
            Packet::Pong(_) => {
                if self.version == EioVersion::V3 {
                    return Err("invalid heartbeat direction (pong from a v3 client)".into());
                }
                let rearm = {
                    let mut st = self.st.borrow_mut();
                    let was = st.awaiting_pong;
                    st.awaiting_pong = false;
                    if was {
                        st.heartbeat_gen += 1;
                        st.heartbeat_from = Instant::now();
                    }
                    was
                };
                if rearm {
                    self.schedule_ping(Duration::from_millis(self.shard.config().ping_interval_ms));
                }
                Ok(())
            }
            Packet::Message(text) => match self.handler() {
                Some(h) => h.on_text(self, &text),
                None => Ok(()),
            },
            Packet::Binary(data) => match self.handler() {
                Some(h) => h.on_binary(self, &data),
                None => Ok(()),
            },
            Packet::Noop => self.count_heartbeat(),
            Packet::Open(_) | Packet::Upgrade => Err("unexpected packet type".into()),
        }
    }

    fn handshake(&self, upgrades: bool) -> Handshake {
        let cfg = self.shard.config();
        Handshake {
            sid: self.sid.to_string(),
            upgrades: if upgrades {
                vec!["websocket".into()]
            } else {
                Vec::new()
            },
            ping_interval_ms: cfg.ping_interval_ms,
            ping_timeout_ms: cfg.ping_timeout_ms,
            max_payload_bytes: (self.version == EioVersion::V4)
                .then_some(cfg.payload_bytes_max as u64),
        }
    }

    fn payload_response(&self, items: &[OutItem]) -> Response {
        let frames: Vec<Frame<'_>> = items.iter().map(OutItem::frame).collect();
        let form = PayloadForm::for_frames(self.version, self.supports_binary, &frames);
        let mut body = Vec::with_capacity(items.iter().map(OutItem::len).sum::<usize>() + 16);
        proto::encode_payload(self.version, form, &frames, &mut body);
        ShardMetrics::add(&self.shard.metrics().packets_out, items.len() as u64);
        Response::new(200, form.content_type(), body)
    }
}

fn limits(cfg: &ServerConfig) -> proto::Limits {
    proto::Limits {
        payload_bytes_max: cfg.payload_bytes_max,
        attachments_per_packet_max: cfg.attachments_per_packet_max,
        ..proto::Limits::DEFAULT
    }
}

/// The Engine.IO protocol limits derived from the server configuration.
pub(crate) fn proto_limits(cfg: &ServerConfig) -> proto::Limits {
    limits(cfg)
}

fn eio_error(code: u8, message: &str) -> Next {
    Next::Respond(Response::json(
        400,
        &serde_json::json!({ "code": code, "message": message }),
    ))
}

fn make_handler(
    shard: &Rc<ShardCtx>,
    endpoint: Endpoint,
    version: EioVersion,
) -> Rc<dyn EngineHandler> {
    match endpoint {
        Endpoint::Echo => Rc::new(Echo),
        Endpoint::SocketIo => super::socketio::session_handler(shard, version),
    }
}

/// Serve one HTTP request on an Engine.IO path.
pub(crate) async fn handle_request(
    shard: &Rc<ShardCtx>,
    stream: &Stream,
    buf: &mut Vec<u8>,
    req: Request,
    endpoint: Endpoint,
) -> Next {
    if req.method == "OPTIONS" {
        return Next::Respond(conn::preflight(&req));
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
        return websocket(shard, stream, buf, req, version, sid, endpoint).await;
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
        let supports_binary = req.query_param("b64").is_none();
        let handler = make_handler(shard, endpoint, version);
        let s = Session::create(
            shard,
            version,
            Phase::Polling,
            supports_binary,
            handler.clone(),
        );
        let open = OutItem::Text(Arc::from(s.handshake(true).to_packet_text()));
        handler.on_open(&s);
        // The handshake answer carries the open packet and whatever on_open queued (v3: the implicit `40`).
        let mut items = vec![open];
        {
            let mut st = s.st.borrow_mut();
            items.extend(st.queue.drain(..));
            st.queued_bytes = 0;
        }
        return Next::Respond(s.payload_response(&items));
    };
    let session = shard.sessions.borrow().get(sid.as_str()).cloned();
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
        "GET" => poll_get(&s, stream, buf).await,
        "POST" => poll_post(&s, &req),
        _ => eio_error(2, "Bad handshake method"),
    }
}

struct GetGuard<'a>(&'a Session);
impl Drop for GetGuard<'_> {
    fn drop(&mut self) {
        self.0.st.borrow_mut().get_pending = false;
    }
}

async fn poll_get(s: &Rc<Session>, stream: &Stream, buf: &mut Vec<u8>) -> Next {
    {
        let mut st = s.st.borrow_mut();
        if st.closed.is_some() {
            // Closed by the client within LATE_POLL_GRACE: one poll gets the `6`, later ones 400.
            if !st.get_pending && st.get_end == Some(GetEnd::Noop) {
                st.get_end = None;
                drop(st);
                return Next::Respond(s.payload_response(&[OutItem::text("6")]));
            }
            return eio_error(1, "Session ID unknown");
        }
        if st.phase == Phase::WebSocket {
            return eio_error(3, "Bad request");
        }
        if st.get_pending {
            drop(st);
            s.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            s.close(
                "overlapping polling GET requests".into(),
                CloseHow::SendClose,
            );
            return eio_error(3, "Bad request");
        }
    }
    s.st.borrow_mut().get_pending = true;
    let _guard = GetGuard(s);
    let limit = s.shard.config().http_head_bytes_max + s.shard.config().payload_bytes_max;
    loop {
        let seen = s.changed.epoch();
        {
            let mut st = s.st.borrow_mut();
            if let Some(end) = st.get_end.take() {
                let item = OutItem::text(if end == GetEnd::Noop { "6" } else { "1" });
                drop(st);
                return Next::Respond(s.payload_response(&[item]));
            }
            if !st.queue.is_empty() {
                let items: Vec<OutItem> = st.queue.drain(..).collect();
                st.queued_bytes = 0;
                drop(st);
                return Next::Respond(s.payload_response(&items));
            }
            if st.closed.is_some() {
                return eio_error(1, "Session ID unknown");
            }
            if st.phase == Phase::Upgrading {
                drop(st);
                return Next::Respond(s.payload_response(&[OutItem::text("6")]));
            }
        }
        let read =
            futures_lite::future::or(async { Some(conn::read_some(stream, buf).await) }, async {
                s.changed.changed(seen).await;
                None
            })
            .await;
        match read {
            None => {}
            Some(Ok(0)) | Some(Err(_)) => {
                s.close(
                    "transport close (polling request aborted)".into(),
                    CloseHow::Abort,
                );
                return Next::Done;
            }
            Some(Ok(n)) => {
                ShardMetrics::add(&s.shard.metrics().bytes_in, n as u64);
                if buf.len() > limit {
                    s.close(
                        "too many bytes pipelined behind a pending poll".into(),
                        CloseHow::Abort,
                    );
                    return Next::Done;
                }
            }
        }
    }
}

fn poll_post(s: &Rc<Session>, req: &Request) -> Next {
    {
        let st = s.st.borrow();
        if st.closed.is_some() {
            return eio_error(1, "Session ID unknown");
        }
        if st.phase == Phase::WebSocket {
            return eio_error(3, "Bad request");
        }
    }
    let cfg = s.shard.config();
    if req.body.len() > cfg.payload_bytes_max {
        s.shard
            .metrics()
            .protocol_error(ProtocolErrorKind::EngineIo);
        s.close(
            format!(
                "polling payload of {} bytes exceeds payload_bytes_max {}",
                req.body.len(),
                cfg.payload_bytes_max
            )
            .into(),
            CloseHow::SendClose,
        );
        return Next::RespondClose(Response::error(413, "payload too large"));
    }
    let form = PayloadForm::from_content_type(s.version, req.header("content-type"));
    let packets = match proto::decode_payload(s.version, form, &req.body, &limits(cfg)) {
        Ok(p) => p,
        Err(e) => {
            s.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            s.close(
                format!("invalid polling payload: {e}").into(),
                CloseHow::SendClose,
            );
            return eio_error(3, "Bad request");
        }
    };
    for p in packets {
        if s.is_closed() {
            break;
        }
        if let Err(reason) = s.on_packet(p) {
            s.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            s.close(reason.into(), CloseHow::SendClose);
            return eio_error(3, "Bad request");
        }
    }
    Next::Respond(Response::new(200, "text/html", "ok"))
}

// ---- websocket transport ----

async fn websocket(
    shard: &Rc<ShardCtx>,
    stream: &Stream,
    buf: &mut Vec<u8>,
    req: Request,
    version: EioVersion,
    sid: Option<String>,
    endpoint: Endpoint,
) -> Next {
    let existing = match &sid {
        Some(sid) => {
            let s = shard.sessions.borrow().get(sid.as_str()).cloned();
            let Some(s) = s else {
                shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::UnknownSid);
                return eio_error(1, "Session ID unknown");
            };
            if s.version != version || s.close_if_heartbeat_overdue() {
                return eio_error(3, "Bad request");
            }
            Some(s)
        }
        None => None,
    };
    let accept = match ws::handshake_response(&req) {
        Ok(a) => a,
        Err(msg) => {
            shard.metrics().protocol_error(ProtocolErrorKind::WebSocket);
            return Next::RespondClose(Response::error(400, msg));
        }
    };
    if conn::write_all(stream, &accept).await.is_err() {
        return Next::Done;
    }
    let session = match existing {
        Some(s) => {
            if s.is_closed() {
                return Next::Done;
            }
            if s.st.borrow().phase != Phase::Polling {
                // The session is upgrading or upgraded on another websocket: this one is accepted (as the protocol's
                // test suite expects) and closed at once, and the session is left as it is.
                refuse_second_websocket(&s, stream).await;
                return Next::Done;
            }
            s.st.borrow_mut().phase = Phase::Upgrading;
            s
        }
        None => {
            let delay = shard.config().eio3_websocket_open_delay_ms;
            if version == EioVersion::V3 && delay > 0 {
                // The open packet in a later read than the 101 (see `eio3_websocket_open_delay_ms`).
                glommio::timer::sleep(Duration::from_millis(delay)).await;
            }
            let handler = make_handler(shard, endpoint, version);
            let s = Session::create(shard, version, Phase::WebSocket, true, handler.clone());
            let open = OutItem::Text(Arc::from(s.handshake(false).to_packet_text()));
            s.send_items([open]);
            handler.on_open(&s);
            s
        }
    };
    let leftover = std::mem::take(buf);
    run_websocket(session, stream.clone(), leftover).await;
    Next::Done
}

/// A websocket for a session that already has one: close it (normal close frame) without reading from it, so it
/// can neither take the session over nor close it.
async fn refuse_second_websocket(s: &Rc<Session>, stream: &Stream) {
    s.shard
        .metrics()
        .protocol_error(ProtocolErrorKind::EngineIo);
    tracing::info!(
        shard = s.shard.id(),
        sid = %s.sid,
        "second websocket for a session that is upgrading or upgraded: closed, the session keeps its transport"
    );
    let mut out = Vec::new();
    close_frame(
        &mut out,
        CloseCode::Policy,
        "session already has a websocket",
    );
    let _ = conn::write_all(stream, &out).await;
}

async fn run_websocket(s: Rc<Session>, stream: Stream, leftover: Vec<u8>) {
    let cfg = s.shard.config().clone();
    let mut reader = ws::WsReader::new(&cfg);
    reader.io.feed(&leftover);
    let done = Rc::new(Cell::new(false));
    let peer_closed = Rc::new(Cell::new(false));
    let writer = glommio::spawn_local(ws_writer(
        s.clone(),
        stream.clone(),
        done.clone(),
        peer_closed.clone(),
    ));
    let mut upgrading = s.st.borrow().phase == Phase::Upgrading;
    let mut rbuf = Vec::new();
    // Bytes received since the last complete message: non-zero at the end of the stream means it ended inside a
    // frame. (Exact when no partial frame follows a complete one in the same read.)
    let mut since_message = leftover.len();
    let mut budget = conn::TurnBudget::default();
    'conn: loop {
        // Everything buffered first (several frames may be in one read).
        loop {
            if s.is_closed() || done.get() {
                break 'conn;
            }
            let msg = match reader.ctx.read(&mut reader.io) {
                Ok(m) => m,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break;
                }
                Err(tungstenite::Error::ConnectionClosed)
                | Err(tungstenite::Error::AlreadyClosed) => {
                    peer_closed.set(true);
                    end_ws(
                        &s,
                        upgrading,
                        &done,
                        "transport close".into(),
                        CloseHow::Abort,
                    );
                    break 'conn;
                }
                Err(e) => {
                    s.shard
                        .metrics()
                        .protocol_error(ProtocolErrorKind::WebSocket);
                    let (code, what) = match &e {
                        tungstenite::Error::Capacity(_) => {
                            (CloseCode::Size, "websocket message too big")
                        }
                        tungstenite::Error::Utf8(_) => {
                            (CloseCode::Invalid, "invalid UTF-8 in websocket text")
                        }
                        _ => (CloseCode::Protocol, "websocket protocol error"),
                    };
                    let mut out = Vec::new();
                    close_frame(&mut out, code, what);
                    s.push_ws_raw(&out);
                    peer_closed.set(true);
                    // The close frame is already queued: no Engine.IO close packet may follow it.
                    end_ws(
                        &s,
                        upgrading,
                        &done,
                        format!("{what}: {e}").into(),
                        CloseHow::ClientClosed,
                    );
                    break 'conn;
                }
            };
            since_message = 0;
            let result = match msg {
                Message::Text(t) => {
                    if upgrading {
                        match t.as_str() {
                            "2probe" => {
                                let mut out = Vec::new();
                                ws::push_frame(&mut out, false, b"3probe");
                                s.push_ws_raw(&out);
                                let mut st = s.st.borrow_mut();
                                if st.get_pending {
                                    st.get_end = Some(GetEnd::Noop);
                                }
                                drop(st);
                                s.changed.notify();
                                Ok(())
                            }
                            "5" => {
                                upgrading = false;
                                s.st.borrow_mut().phase = Phase::WebSocket;
                                let m = s.shard.metrics();
                                ShardMetrics::gauge(&m.sessions_polling, -1);
                                ShardMetrics::gauge(&m.sessions_websocket, 1);
                                s.changed.notify();
                                Ok(())
                            }
                            other => Packet::decode_text(other)
                                .map_err(|e| format!("invalid Engine.IO packet: {e}"))
                                .and_then(|p| s.on_packet(p)),
                        }
                    } else {
                        Packet::decode_text(t.as_str())
                            .map_err(|e| format!("invalid Engine.IO packet: {e}"))
                            .and_then(|p| s.on_packet(p))
                    }
                }
                Message::Binary(b) => Packet::decode_binary(s.version, &b)
                    .map_err(|e| format!("invalid Engine.IO binary packet: {e}"))
                    .and_then(|p| s.on_packet(p)),
                Message::Close(_) => {
                    // tungstenite queues its close reply and writes it on the next read or flush: flush now, so
                    // that the closing handshake completes (RFC 6455 5.5.1) before the connection ends.
                    let _ = reader.ctx.flush(&mut reader.io);
                    peer_closed.set(true);
                    end_ws(
                        &s,
                        upgrading,
                        &done,
                        "transport close".into(),
                        CloseHow::ClientClosed,
                    );
                    Ok(())
                }
                Message::Ping(_) => s.count_heartbeat(),
                Message::Pong(_) | Message::Frame(_) => Ok(()),
            };
            if !reader.io.output.is_empty() {
                let out = std::mem::take(&mut reader.io.output);
                s.push_ws_raw(&out);
            }
            if let Err(reason) = result {
                s.shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::EngineIo);
                s.close(reason.into(), CloseHow::SendClose);
                break 'conn;
            }
            // Bound the frames one turn handles (a 64 KiB read holds thousands of small frames); the loop's top
            // checks again whether the session ended meanwhile.
            budget.spend(0, 1).await;
        }
        if !reader.io.output.is_empty() {
            let out = std::mem::take(&mut reader.io.output);
            s.push_ws_raw(&out);
        }
        let seen = s.closed_signal.epoch();
        if s.is_closed() || done.get() {
            break;
        }
        // Only the session's end interrupts the read: outgoing packets are the writer's business.
        let read = futures_lite::future::or(
            async { Some(conn::read_some(&stream, &mut rbuf).await) },
            async {
                s.closed_signal.changed(seen).await;
                None
            },
        )
        .await;
        match read {
            None => {}
            Some(Ok(0)) | Some(Err(_)) => {
                peer_closed.set(true);
                let reason: Cow<'static, str> = if since_message > 0 {
                    s.shard
                        .metrics()
                        .protocol_error(ProtocolErrorKind::WebSocket);
                    format!(
                        "truncated websocket frame: stream ended {since_message} bytes into a frame"
                    )
                    .into()
                } else {
                    "transport close".into()
                };
                end_ws(&s, upgrading, &done, reason, CloseHow::Abort);
                break;
            }
            Some(Ok(n)) => {
                ShardMetrics::add(&s.shard.metrics().bytes_in, n as u64);
                since_message += n;
                reader.io.feed(&rbuf);
                rbuf = Vec::new();
                budget.spend(n, 0).await;
            }
        }
    }
    done.set(true);
    s.changed.notify();
    writer.await;
}

/// The websocket ended: an unfinished upgrade leaves the session on polling, otherwise the session closes.
fn end_ws(
    s: &Rc<Session>,
    upgrading: bool,
    done: &Cell<bool>,
    reason: Cow<'static, str>,
    how: CloseHow,
) {
    done.set(true);
    if upgrading && s.st.borrow().phase == Phase::Upgrading {
        s.st.borrow_mut().phase = Phase::Polling;
        s.changed.notify();
        return;
    }
    s.close(reason, how);
}

fn close_frame(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(&payload);
}

fn push_item_frame(out: &mut Vec<u8>, version: EioVersion, item: &OutItem) {
    match item {
        OutItem::Text(t) => ws::push_frame(out, false, t.as_bytes()),
        OutItem::Binary(b) => match version {
            EioVersion::V4 => ws::push_frame(out, true, b),
            EioVersion::V3 => {
                let header = FrameHeader {
                    opcode: OpCode::Data(tungstenite::protocol::frame::coding::Data::Binary),
                    ..FrameHeader::default()
                };
                let _ = header.format(b.len() as u64 + 1, out);
                out.push(4);
                out.extend_from_slice(b);
            }
        },
    }
}

async fn ws_writer(
    s: Rc<Session>,
    stream: Stream,
    done: Rc<Cell<bool>>,
    peer_closed: Rc<Cell<bool>>,
) {
    let mut out: Vec<u8> = Vec::new();
    loop {
        let seen = s.changed.epoch();
        let finished = match s.websocket_writer_pass(&mut out, done.get(), peer_closed.get()) {
            WriterPass::Aborted => return,
            WriterPass::Finished => true,
            WriterPass::Open => false,
        };
        if !out.is_empty() {
            let written = futures_lite::future::or(
                async { Some(conn::write_all(&stream, &out).await) },
                async {
                    // A slow reader is dropped without waiting for its socket to drain.
                    loop {
                        let seen = s.changed.epoch();
                        if s.st.borrow().abort {
                            return None;
                        }
                        s.changed.changed(seen).await;
                    }
                },
            )
            .await;
            out.clear();
            match written {
                Some(Ok(())) => {}
                Some(Err(_)) => {
                    s.close("transport error (write failed)".into(), CloseHow::Abort);
                    return;
                }
                None => return,
            }
        }
        if finished {
            return;
        }
        if out.capacity() > 16 * 1024 {
            out = Vec::new();
        }
        s.changed.changed(seen).await;
    }
}

/// The raw Engine.IO echo of the conformance server: every message goes back as it came.
struct Echo;

impl EngineHandler for Echo {
    fn on_open(&self, _session: &Rc<Session>) {}
    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), String> {
        let mut t = String::with_capacity(text.len() + 1);
        t.push('4');
        t.push_str(text);
        session.send_text_packet(t);
        Ok(())
    }
    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), String> {
        session.send_items([OutItem::Binary(Arc::from(data))]);
        Ok(())
    }
    fn on_close(&self, _session: &Rc<Session>, _reason: &str) {}
    fn as_any(self: Rc<Self>) -> Rc<dyn std::any::Any> {
        self
    }
}

// ---- the websocket transport without a socket (see `super::memory`) ----

/// What one pass of the websocket writer left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterPass {
    /// More may be queued later.
    Open,
    /// The session ended; this pass wrote its last bytes (if any) and nothing follows.
    Finished,
    /// The session was aborted (slow reader, transport gone): nothing was written and nothing may be.
    Aborted,
}

impl Session {
    /// A new Socket.IO session already on the websocket transport, without a connection: what a websocket handshake
    /// without `sid` creates (session in the websocket phase, its open packet queued, the handler's `on_open` run).
    pub(crate) fn open_websocket_in_memory(
        shard: &Rc<ShardCtx>,
        version: EioVersion,
    ) -> Rc<Session> {
        let handler = make_handler(shard, Endpoint::SocketIo, version);
        let s = Session::create(shard, version, Phase::WebSocket, true, handler.clone());
        let open = OutItem::Text(Arc::from(s.handshake(false).to_packet_text()));
        s.send_items([open]);
        handler.on_open(&s);
        s
    }

    /// One websocket text message from the client, handled as the websocket reader handles it: decoded as an
    /// Engine.IO packet and dispatched. An invalid packet closes the session (close packet, then a close frame) and
    /// `Err` carries the reason.
    pub(crate) fn receive_websocket_text(self: &Rc<Self>, text: &str) -> Result<(), String> {
        let result = Packet::decode_text(text)
            .map_err(|e| format!("invalid Engine.IO packet: {e}"))
            .and_then(|p| self.on_packet(p));
        self.close_on_packet_error(result)
    }

    /// One websocket binary message from the client; see [`Session::receive_websocket_text`].
    pub(crate) fn receive_websocket_binary(self: &Rc<Self>, data: &[u8]) -> Result<(), String> {
        let result = Packet::decode_binary(self.version, data)
            .map_err(|e| format!("invalid Engine.IO binary packet: {e}"))
            .and_then(|p| self.on_packet(p));
        self.close_on_packet_error(result)
    }

    fn close_on_packet_error(self: &Rc<Self>, result: Result<(), String>) -> Result<(), String> {
        if let Err(reason) = &result {
            self.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            self.close(reason.clone().into(), CloseHow::SendClose);
        }
        result
    }

    /// The websocket transport ended without a close frame (end of stream): the session closes with
    /// `transport close` and nothing more is written to it.
    pub(crate) fn websocket_transport_closed(self: &Rc<Self>) {
        self.close("transport close".into(), CloseHow::Abort);
    }

    /// One pass of the websocket writer (`ws_writer`, and in-memory connections), appending to `out` the bytes
    /// to write now: control frames first, then one frame per queued packet, then a normal close frame if the
    /// session has closed and the peer did not close first. `done`: the transport's reader has ended.
    pub(crate) fn websocket_writer_pass(
        &self,
        out: &mut Vec<u8>,
        done: bool,
        peer_closed: bool,
    ) -> WriterPass {
        let start = out.len();
        let finished;
        {
            let mut st = self.st.borrow_mut();
            if st.abort {
                return WriterPass::Aborted;
            }
            out.append(&mut st.ws_raw);
            if st.phase == Phase::WebSocket {
                let n = st.queue.len();
                for item in st.queue.drain(..) {
                    push_item_frame(out, self.version, &item);
                }
                st.queued_bytes = 0;
                if n > 0 {
                    ShardMetrics::add(&self.shard.metrics().packets_out, n as u64);
                }
            }
            finished = done || peer_closed || st.closed.is_some();
            if finished && !peer_closed && st.closed.is_some() {
                close_frame(out, CloseCode::Normal, "");
            }
        }
        if out.len() > start {
            ShardMetrics::add(&self.shard.metrics().bytes_out, (out.len() - start) as u64);
        }
        if finished {
            WriterPass::Finished
        } else {
            WriterPass::Open
        }
    }
}
