//! One Engine.IO session: its phase (polling, upgrading, websocket), the outgoing queue (coalesced: a writer takes
//! everything queued since its last pass and sends it in one write) and its bound, heartbeats on the shard's timer
//! wheel, incoming packets and the close. The transports ([`super::polling`], [`super::websocket`]) drive it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::engine::Packet;
use crate::proto::{self, EioVersion, Frame, Handshake, PayloadForm};

use super::super::http::Response;
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::{Refusal, ShardMetrics};
use super::super::runtime::sid::Sid;
use super::super::runtime::signal::Signal;
use super::{CloseReason, EngineShard};

/// One Engine.IO packet queued for a session, already encoded (shared by every recipient of a broadcast).
#[derive(Debug, Clone)]
pub enum OutItem {
    /// A whole text packet, type character included (`4...`, `2`, `1`).
    Text(Arc<str>),
    /// The data of a binary message (no prefix; v3 framing adds its type byte).
    Binary(Arc<[u8]>),
}

impl OutItem {
    pub(super) fn len(&self) -> usize {
        match self {
            OutItem::Text(t) => t.len(),
            OutItem::Binary(b) => b.len() + 1,
        }
    }
    pub(super) fn frame(&self) -> Frame<'_> {
        match self {
            OutItem::Text(t) => Frame::Text(t),
            OutItem::Binary(b) => Frame::Binary(b),
        }
    }
    /// A text packet other than a message, encoded by `proto` (`Close`, `Noop`, `Ping`...).
    pub(super) fn packet(packet: &Packet<'_>) -> OutItem {
        let mut text = String::with_capacity(8);
        packet.write_text(&mut text);
        OutItem::Text(Arc::from(text))
    }
    /// A message packet with `text`, encoded by `proto`.
    pub fn message(text: &str) -> OutItem {
        OutItem::packet(&Packet::Message(text.into()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Polling,
    Upgrading,
    WebSocket,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GetEnd {
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

pub(super) struct SessState {
    pub(super) phase: Phase,
    pub(super) queue: VecDeque<OutItem>,
    pub(super) queued_bytes: usize,
    /// Websocket control bytes (probe answers, pongs, close replies) written before the queue.
    pub(super) ws_raw: Vec<u8>,
    pub(super) get_pending: bool,
    pub(super) get_end: Option<GetEnd>,
    pub(super) closed: Option<CloseReason>,
    pub(super) abort: bool,
    pub(super) awaiting_pong: bool,
    /// When the unanswered ping was sent (meaningful while `awaiting_pong`).
    pub(super) ping_sent: Instant,
    /// The handshake or the last pong: by this + pingInterval + pingTimeout a v4 session has answered a ping.
    pub(super) heartbeat_from: Instant,
    pub(super) heartbeat_gen: u64,
    pub(super) last_heard: Instant,
    /// Noops and pings received in the current one-second window, and when it began.
    pub(super) beats: u32,
    pub(super) beats_window: Instant,
}

/// How long a polling session closed by its client's `1` (with no poll pending) keeps answering one poll with `6`:
/// a poll and the closing POST sent at once on two connections may arrive in either order.
const LATE_POLL_GRACE: Duration = Duration::from_millis(100);

/// The application side of a session (the Socket.IO layer or the echo).
pub trait EngineHandler {
    /// The session opened (its open packet is already queued or sent).
    fn on_open(&self, session: &Rc<Session>);
    /// A text `message` packet (without its `4`). `Err` closes the session with that reason.
    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), CloseReason>;
    /// A binary message.
    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), CloseReason>;
    /// The session closed.
    fn on_close(&self, session: &Rc<Session>, reason: &CloseReason);
}

/// One Engine.IO session, owned by the shard that created it.
pub struct Session {
    pub(crate) sid: Sid,
    pub(crate) version: EioVersion,
    pub(crate) shard: Rc<ShardCtx>,
    engine: Rc<EngineShard>,
    supports_binary: bool,
    pub(super) st: RefCell<SessState>,
    pub(crate) changed: Signal,
    /// Notified once, when the session closes. The websocket reader waits on this one rather than on `changed`:
    /// waking it for every queued packet would cancel and resubmit its pending read each time.
    pub(super) closed_signal: Signal,
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
    pub(super) fn create(
        shard: &Rc<ShardCtx>,
        version: EioVersion,
        phase: Phase,
        supports_binary: bool,
        handler: Rc<dyn EngineHandler>,
    ) -> Rc<Session> {
        let sid = shard.new_sid();
        let engine = super::engine_shard(shard);
        let s = Rc::new(Session {
            sid: sid.clone(),
            version,
            shard: shard.clone(),
            engine: engine.clone(),
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
        engine.sessions.borrow_mut().insert(sid, s.clone());
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

    pub(super) fn handler(&self) -> Option<Rc<dyn EngineHandler>> {
        self.handler.borrow().clone()
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
                CloseReason::SlowReader {
                    queued_bytes: queued,
                    max_bytes: max,
                    control_frames: false,
                },
                CloseHow::Abort,
            );
            return false;
        }
        true
    }

    /// Queue one text packet, encoded by `proto`.
    pub(crate) fn send_packet(self: &Rc<Self>, packet: &Packet<'_>) -> bool {
        self.send_items([OutItem::packet(packet)])
    }

    /// Queue websocket control bytes (pongs, probe answers, close frames). They count toward the same
    /// `socket_queued_bytes_max` as queued packets: a client that sends pings and never reads is a slow reader.
    pub(super) fn push_ws_raw(self: &Rc<Self>, bytes: &[u8]) {
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
                CloseReason::SlowReader {
                    queued_bytes: queued,
                    max_bytes: max,
                    control_frames: true,
                },
                CloseHow::Abort,
            );
            return;
        }
        self.changed.notify();
    }

    /// Close the session. Idempotent.
    pub(crate) fn close(self: &Rc<Self>, reason: CloseReason, how: CloseHow) {
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
                        st.queue.push_back(OutItem::packet(&Packet::Close));
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
            let engine = Rc::downgrade(&self.engine);
            let sid = self.sid.clone();
            self.shard.timers().schedule(LATE_POLL_GRACE, move || {
                if let Some(engine) = engine.upgrade() {
                    let mut sessions = engine.sessions.borrow_mut();
                    if sessions.get(&sid).is_some_and(|s| s.is_closed()) {
                        sessions.remove(&sid);
                    }
                }
            });
        } else {
            self.engine.sessions.borrow_mut().remove(&self.sid);
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
        reason.log(self.shard.id(), &self.sid);
        let handler = self.handler.borrow_mut().take();
        if let Some(h) = handler {
            h.on_close(self, &reason);
        }
        self.changed.notify();
        self.closed_signal.notify();
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
            s.send_packet(&Packet::Ping("".into()));
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
                    s.close(CloseReason::PingTimeout, CloseHow::SendClose);
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
                s.close(CloseReason::PingTimeout, CloseHow::SendClose);
            } else {
                s.schedule_v3_check(window - elapsed);
            }
        });
    }

    /// Close the session now if its heartbeat deadline has passed, even if the timer that enforces it has not fired
    /// yet (a busy shard runs timers late): a request never finds alive a session the protocol says is gone. True
    /// if the session is (now) closed.
    pub(super) fn close_if_heartbeat_overdue(self: &Rc<Self>) -> bool {
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
            self.close(CloseReason::PingTimeout, CloseHow::SendClose);
        }
        overdue
    }

    // ---- incoming ----

    /// Count one noop or ping (Engine.IO or websocket) from the client: more than `heartbeats_per_session_per_s_max`
    /// in one second is a flood (they cost the shard work and the client nothing), and closes the session.
    pub(crate) fn count_heartbeat(&self) -> Result<(), CloseReason> {
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
            self.shard.metrics().refusal(Refusal::HeartbeatFlood);
            return Err(CloseReason::HeartbeatFlood { max });
        }
        Ok(())
    }

    /// Handle one received Engine.IO packet. `Err` is the reason to close the session.
    pub(super) fn on_packet(self: &Rc<Self>, packet: Packet<'_>) -> Result<(), CloseReason> {
        ShardMetrics::add(&self.shard.metrics().packets_in, 1);
        if self.version == EioVersion::V3 {
            self.st.borrow_mut().last_heard = Instant::now();
        }
        match packet {
            Packet::Close => {
                self.close(CloseReason::ClientClose, CloseHow::ClientClosed);
                Ok(())
            }
            Packet::Ping(data) => {
                if self.version == EioVersion::V4 {
                    return Err(CloseReason::Protocol(
                        "invalid heartbeat direction (ping from a v4 client)".into(),
                    ));
                }
                self.count_heartbeat()?;
                self.send_packet(&Packet::Pong(data));
                Ok(())
            }
            Packet::Pong(_) => {
                if self.version == EioVersion::V3 {
                    return Err(CloseReason::Protocol(
                        "invalid heartbeat direction (pong from a v3 client)".into(),
                    ));
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
            Packet::Open(_) | Packet::Upgrade => {
                Err(CloseReason::Protocol("unexpected packet type".into()))
            }
        }
    }

    pub(super) fn handshake(&self, upgrades: bool) -> Handshake {
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

    pub(super) fn payload_response(&self, items: &[OutItem]) -> Response {
        let frames: Vec<Frame<'_>> = items.iter().map(OutItem::frame).collect();
        let form = PayloadForm::for_frames(self.version, self.supports_binary, &frames);
        let mut body = Vec::with_capacity(items.iter().map(OutItem::len).sum::<usize>() + 16);
        proto::encode_payload(self.version, form, &frames, &mut body);
        ShardMetrics::add(&self.shard.metrics().packets_out, items.len() as u64);
        Response::new(200, form.content_type(), body)
    }
}
