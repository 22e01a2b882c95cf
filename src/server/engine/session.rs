//! One Engine.IO session: its phase (polling, upgrading, websocket), the outgoing queue (coalesced: a writer takes
//! everything queued since its last pass and sends it in one write) and its bound, heartbeats on the shard's timer
//! wheel, incoming packets and the close. The transports ([`super::polling`], [`super::websocket`]) drive it.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::proto::engine::Packet;
use crate::proto::{self, EioVersion, Frame, Handshake, PayloadForm};

use super::super::http::Response;
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::{Refusal, ShardMetrics};
use super::super::runtime::sid::Sid;
use super::super::runtime::signal::Signal;
use super::heartbeat::{Action, Heartbeat, HeartbeatConfig, Input};
use super::inbound::{self, Route};
use super::outbox::{OutItem, Outbox, Queued};
use super::transport::{self, Transport};
use super::{CloseReason, EngineShard};

pub(crate) use super::transport::{CloseHow, GetEnd, Phase};

/// Who writes a websocket session's socket now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// No socket to write to directly (polling, upgrading, in-memory, or the writer task has ended): queuing wakes
    /// the writer or the pending poll.
    Detached,
    /// The writer task is idle with nothing queued: the shard's flusher may write to this socket.
    Idle(RawFd),
    /// The writer task owns the socket (a write pending, or bytes left over by a short direct send).
    Writing,
}

pub(super) struct SessState {
    /// The transport and what requests get (sans-IO, see [`super::transport`]).
    pub(super) transport: Transport,
    /// Packets and websocket control bytes to write, and their bound (sans-IO, see [`super::outbox`]).
    pub(super) outbox: Outbox,
    /// The heartbeat (sans-IO, see [`super::heartbeat`]).
    pub(super) heartbeat: Heartbeat,
    /// Who may write the websocket now: the shard's flusher (idle writer) or the writer task (see [`super::cork`]).
    pub(super) sink: Sink,
    /// Listed in the shard's cork for the end of this turn.
    pub(super) corked: bool,
    /// Bytes a direct send left over (short write or `EAGAIN`); the writer task writes them before anything else.
    pub(super) unsent: Vec<u8>,
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
                transport: Transport::new(phase),
                outbox: Outbox::new(shard.config().socket_queued_bytes_max),
                heartbeat: Heartbeat::new(heartbeat_config(shard, version), Instant::now()),
                sink: Sink::Detached,
                corked: false,
                unsent: Vec::new(),
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
        let _ = s.heartbeat(Input::Opened);
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
        self.st.borrow().transport.is_closed()
    }

    pub(super) fn handler(&self) -> Option<Rc<dyn EngineHandler>> {
        self.handler.borrow().clone()
    }

    /// Queue packets; all of them or none (closed session). Closes the session as a slow reader when its queue
    /// exceeds `socket_queued_bytes_max`. Returns false if the session is (now) closed.
    pub(crate) fn send_items(self: &Rc<Self>, items: impl IntoIterator<Item = OutItem>) -> bool {
        let queued = {
            let mut st = self.st.borrow_mut();
            if st.transport.is_closed() {
                return false;
            }
            st.outbox.push_items(items)
        };
        self.after_queuing(queued)
    }

    /// Wake the writer (or cork the session for the end of the turn, when its writer is idle), or close a slow
    /// reader. False if the session is (now) closed.
    fn after_queuing(self: &Rc<Self>, queued: Queued) -> bool {
        match queued {
            Queued::Wake => {
                let cork = {
                    let mut st = self.st.borrow_mut();
                    let idle = matches!(st.sink, Sink::Idle(_))
                        && st.transport.phase() == Phase::WebSocket;
                    if idle && !st.corked {
                        st.corked = true;
                        Some(true)
                    } else if idle {
                        Some(false)
                    } else {
                        None
                    }
                };
                match cork {
                    Some(true) => self.engine.cork.add(self.clone()),
                    Some(false) => {}
                    None => self.changed.notify(),
                }
            }
            Queued::Behind => {}
            Queued::Overflow(reason) => {
                ShardMetrics::add(&self.shard.metrics().slow_reader_disconnects, 1);
                self.st.borrow_mut().transport.abort();
                self.close(reason, CloseHow::Abort);
                return false;
            }
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
        let queued = {
            let mut st = self.st.borrow_mut();
            if st.transport.is_aborted() {
                return;
            }
            st.outbox.push_control(bytes)
        };
        self.after_queuing(queued);
    }

    /// Close the session. Idempotent.
    pub(crate) fn close(self: &Rc<Self>, reason: CloseReason, how: CloseHow) {
        let actions = {
            let mut st = self.st.borrow_mut();
            let actions = st.transport.handle(transport::Input::Close(how));
            if actions.contains(&transport::Action::QueueClosePacket) {
                st.outbox.push_last(OutItem::packet(&Packet::Close));
            }
            actions
        };
        let Some((phase, late_poll)) = actions.iter().find_map(|a| match a {
            transport::Action::Closed { phase, late_poll } => Some((*phase, *late_poll)),
            _ => None,
        }) else {
            return;
        };
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

    /// Feed the heartbeat one input that happened now and carry out its actions: queue a ping, arm timers on the
    /// shard's wheel, close a silent session. `Ok(true)`: the client's ping must be answered (v3). `Err`: the input
    /// is refused and the session must close with that reason. Nothing happens to a closed session.
    fn heartbeat(self: &Rc<Self>, input: Input) -> Result<bool, CloseReason> {
        let actions = {
            let mut st = self.st.borrow_mut();
            if st.transport.is_closed() {
                return Ok(false);
            }
            st.heartbeat.handle(input, Instant::now())
        };
        let mut pong = false;
        for action in actions {
            match action {
                Action::SendPing => {
                    self.send_packet(&Packet::Ping("".into()));
                }
                Action::SendPong => pong = true,
                Action::Arm {
                    timer,
                    delay,
                    slack,
                } => {
                    let weak = Rc::downgrade(self);
                    self.shard
                        .timers()
                        .schedule_coalesced(delay, slack, move || {
                            if let Some(s) = weak.upgrade() {
                                let _ = s.heartbeat(Input::Fired(timer));
                            }
                        });
                }
                Action::Close(reason) => self.close(reason, CloseHow::SendClose),
                Action::Refuse(reason) => {
                    if matches!(reason, CloseReason::HeartbeatFlood { .. }) {
                        self.shard.metrics().refusal(Refusal::HeartbeatFlood);
                    }
                    return Err(reason);
                }
            }
        }
        Ok(pong)
    }

    /// Close the session now if its heartbeat deadline has passed, even if the timer that enforces it has not fired
    /// yet (a busy shard runs timers late): a request never finds alive a session the protocol says is gone. True
    /// if the session is (now) closed.
    pub(super) fn close_if_heartbeat_overdue(self: &Rc<Self>) -> bool {
        let _ = self.heartbeat(Input::Check);
        self.is_closed()
    }

    // ---- incoming ----

    /// Count one noop or ping (Engine.IO or websocket) from the client: more than `heartbeats_per_session_per_s_max`
    /// in one second is a flood (they cost the shard work and the client nothing), and closes the session.
    pub(crate) fn count_heartbeat(self: &Rc<Self>) -> Result<(), CloseReason> {
        self.heartbeat(Input::Beat).map(|_| ())
    }

    /// Handle one received Engine.IO packet. `Err` is the reason to close the session.
    pub(super) fn on_packet(self: &Rc<Self>, packet: Packet<'_>) -> Result<(), CloseReason> {
        ShardMetrics::add(&self.shard.metrics().packets_in, 1);
        self.heartbeat(Input::Packet)?;
        match inbound::route(packet) {
            Route::ClientClose => {
                self.close(CloseReason::ClientClose, CloseHow::ClientClosed);
                Ok(())
            }
            Route::Ping(data) => {
                if self.heartbeat(Input::ClientPing)? {
                    self.send_packet(&Packet::Pong(data));
                }
                Ok(())
            }
            Route::Pong => self.heartbeat(Input::Pong).map(|_| ()),
            Route::Text(text) => match self.handler() {
                Some(h) => h.on_text(self, &text),
                None => Ok(()),
            },
            Route::Binary(data) => match self.handler() {
                Some(h) => h.on_binary(self, &data),
                None => Ok(()),
            },
            Route::Noop => self.count_heartbeat(),
            Route::Refuse(reason) => Err(reason),
        }
    }

    /// The handshake (`open` packet) of this new session on `phase` (see [`transport::handshake`]).
    pub(super) fn handshake(&self, phase: Phase) -> Handshake {
        transport::handshake(&self.sid, self.version, phase, self.shard.config())
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

/// The heartbeat settings of a session of revision `version` on `shard`.
fn heartbeat_config(shard: &ShardCtx, version: EioVersion) -> HeartbeatConfig {
    let cfg = shard.config();
    HeartbeatConfig {
        version,
        ping_interval: Duration::from_millis(cfg.ping_interval_ms),
        ping_timeout: Duration::from_millis(cfg.ping_timeout_ms),
        tick: shard.timers().tick(),
        beats_per_s_max: cfg.heartbeats_per_session_per_s_max,
    }
}
