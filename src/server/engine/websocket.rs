//! The websocket transport: a new session on a websocket, or the upgrade of a polling session (probe, noop to the
//! pending poll, upgrade), then a reader (this task) and a writer task driving the [`Session`]. Also the same
//! transport without a socket, for in-memory connections.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tungstenite::protocol::frame::coding::CloseCode;

use crate::proto::engine::Packet;
use crate::proto::{self, EioVersion};

use super::super::http::{Next, Request, Response};
use super::super::io::{self, Stream, TurnBudget};
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::{ProtocolErrorKind, ShardMetrics};
use super::super::ws::{self, FrameError, Message};
use super::outbox::OutItem;
use super::session::{CloseHow, EngineHandler, Phase, Session, Sink};
use super::transport::{Action, Input};
use super::{CloseReason, MakeHandler, eio_error, engine_shard, inbound};

/// The data of the upgrade's probe ping and its pong.
const PROBE: &str = "probe";

/// A websocket whose handshake is done, with its session: [`Upgraded::run`] serves it, in a task of its own so
/// that an idle websocket holds none of the HTTP path's state.
#[allow(missing_debug_implementations)]
pub(crate) struct Upgraded {
    session: Rc<Session>,
    stream: Stream,
    /// Bytes read after the upgrade request (the first frames, if the client sent them early).
    leftover: Vec<u8>,
}

impl Upgraded {
    /// Read and write the websocket until it or its session ends.
    pub(crate) async fn run(self) {
        run_websocket(self.session, self.stream, self.leftover).await;
    }
}

/// Serve a websocket upgrade request: a new session (no `sid`) with the handler `make_handler` returns, or the
/// upgrade of the polling session `sid`. `Ok` is the accepted websocket, to be run; `Err` what to answer or do
/// instead.
pub(super) async fn serve(
    shard: &Rc<ShardCtx>,
    stream: &Stream,
    buf: &mut Vec<u8>,
    req: Request,
    version: EioVersion,
    sid: Option<String>,
    make_handler: MakeHandler<'_>,
) -> Result<Upgraded, Next> {
    let existing = match &sid {
        Some(sid) => {
            let s = engine_shard(shard)
                .sessions
                .borrow()
                .get(sid.as_str())
                .cloned();
            let Some(s) = s else {
                shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::UnknownSid);
                return Err(eio_error(1, "Session ID unknown"));
            };
            if s.version != version || s.close_if_heartbeat_overdue() {
                return Err(eio_error(3, "Bad request"));
            }
            Some(s)
        }
        None => None,
    };
    let accept = match ws::handshake_response(&req) {
        Ok(a) => a,
        Err(e) => {
            shard.metrics().protocol_error(ProtocolErrorKind::WebSocket);
            return Err(Next::RespondClose(Response::error(400, &e.to_string())));
        }
    };
    drop(req);
    let written = io::write_all(stream, &accept).await;
    drop(accept);
    if written.is_err() {
        return Err(Next::Done);
    }
    let session = match existing {
        Some(s) => {
            let actions = s.st.borrow_mut().transport.handle(Input::WebSocketOpens);
            match actions.as_slice() {
                [Action::Serve] => {}
                [Action::RefuseWebSocket] => {
                    // The session is upgrading or upgraded on another websocket: this one is accepted (as the
                    // protocol's test suite expects) and closed at once, and the session is left as it is.
                    refuse_second_websocket(&s, stream).await;
                    return Err(Next::Done);
                }
                _ => return Err(Next::Done),
            }
            s
        }
        None => {
            let delay = shard.config().eio3_websocket_open_delay_ms;
            if version == EioVersion::V3 && delay > 0 {
                // The open packet in a later read than the 101 (see `eio3_websocket_open_delay_ms`).
                glommio::timer::sleep(Duration::from_millis(delay)).await;
            }
            let handler = make_handler(version);
            let s = Session::create(shard, version, Phase::WebSocket, true, handler.clone());
            let open = OutItem::Text(Arc::from(s.handshake(Phase::WebSocket).to_packet_text()));
            s.send_items([open]);
            handler.on_open(&s);
            s
        }
    };
    Ok(Upgraded {
        session,
        stream: stream.clone(),
        leftover: std::mem::take(buf),
    })
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
    ws::push_close_frame(
        &mut out,
        CloseCode::Policy,
        "session already has a websocket",
    );
    let _ = io::write_all(stream, &out).await;
}

async fn run_websocket(s: Rc<Session>, stream: Stream, leftover: Vec<u8>) {
    let mut reader = ws::reader(s.shard.config());
    reader.feed(&leftover);
    // Bytes received since the last complete message: non-zero at the end of the stream means it ended inside a
    // frame. (Exact when no partial frame follows a complete one in the same read.)
    let mut since_message = leftover.len();
    drop(leftover);
    let done = Rc::new(Cell::new(false));
    let peer_closed = Rc::new(Cell::new(false));
    let writer = glommio::spawn_local(ws_writer(
        s.clone(),
        stream.clone(),
        done.clone(),
        peer_closed.clone(),
    ));
    let mut upgrading = s.st.borrow().transport.phase() == Phase::Upgrading;
    let mut budget = TurnBudget::default();
    'conn: loop {
        // Everything buffered first (several frames may be in one read).
        loop {
            if s.is_closed() || done.get() {
                break 'conn;
            }
            let msg = match reader.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    s.shard
                        .metrics()
                        .protocol_error(ProtocolErrorKind::WebSocket);
                    let (code, what) = match &e {
                        FrameError::FrameTooBig { .. } | FrameError::MessageTooBig { .. } => {
                            (CloseCode::Size, "websocket message too big")
                        }
                        FrameError::Utf8 => (CloseCode::Invalid, "invalid UTF-8 in websocket text"),
                        _ => (CloseCode::Protocol, "websocket protocol error"),
                    };
                    let mut out = Vec::new();
                    ws::push_close_frame(&mut out, code, what);
                    s.push_ws_raw(&out);
                    peer_closed.set(true);
                    // The close frame is already queued: no Engine.IO close packet may follow it.
                    end_ws(
                        &s,
                        upgrading,
                        &done,
                        CloseReason::WebSocket {
                            what,
                            detail: e.to_string(),
                        },
                        CloseHow::ClientClosed,
                    );
                    break 'conn;
                }
            };
            since_message = 0;
            let result = match msg {
                Message::Text(t) => {
                    let packet = inbound::decode_text(t);
                    if upgrading {
                        match packet {
                            Ok(Packet::Ping(data)) if data == PROBE => {
                                let mut probe = String::new();
                                Packet::Pong(PROBE.into()).write_text(&mut probe);
                                let mut out = Vec::new();
                                ws::push_frame(&mut out, false, probe.as_bytes());
                                s.push_ws_raw(&out);
                                s.st.borrow_mut().transport.handle(Input::Probe);
                                s.changed.notify();
                                Ok(())
                            }
                            // Exactly the upgrade packet: data after it is an unexpected packet, as before.
                            Ok(Packet::Upgrade) if t.len() == 1 => {
                                upgrading = false;
                                s.st.borrow_mut().transport.handle(Input::Upgrade);
                                let m = s.shard.metrics();
                                ShardMetrics::gauge(&m.sessions_polling, -1);
                                ShardMetrics::gauge(&m.sessions_websocket, 1);
                                s.changed.notify();
                                Ok(())
                            }
                            other => other.and_then(|p| s.on_packet(p)),
                        }
                    } else {
                        packet.and_then(|p| s.on_packet(p))
                    }
                }
                Message::Binary(b) => {
                    inbound::decode_binary(s.version, b).and_then(|p| s.on_packet(p))
                }
                Message::Close(close) => {
                    // Answer the close frame now, so that the closing handshake completes (RFC 6455 5.5.1) before
                    // the connection ends.
                    let mut out = Vec::new();
                    ws::push_close_reply(&mut out, close);
                    s.push_ws_raw(&out);
                    peer_closed.set(true);
                    end_ws(
                        &s,
                        upgrading,
                        &done,
                        CloseReason::TransportClose,
                        CloseHow::ClientClosed,
                    );
                    Ok(())
                }
                Message::Ping(payload) => {
                    let counted = s.count_heartbeat();
                    if counted.is_ok() {
                        let mut out = Vec::new();
                        ws::push_pong(&mut out, payload);
                        s.push_ws_raw(&out);
                    }
                    counted
                }
                Message::Pong => Ok(()),
            };
            if let Err(reason) = result {
                s.shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::EngineIo);
                s.close(reason, CloseHow::SendClose);
                break 'conn;
            }
            // Bound the frames one turn handles (a 64 KiB read holds thousands of small frames); the loop's top
            // checks again whether the session ended meanwhile.
            budget.spend(0, 1).await;
        }
        let seen = s.closed_signal.epoch();
        if s.is_closed() || done.get() {
            break;
        }
        // Only the session's end interrupts the read: outgoing packets are the writer's business. Bytes go straight
        // into the reader's buffer (empty unless a frame is partial).
        let read = futures_lite::future::or(
            async { Some(io::read_some(&stream, reader.input()).await) },
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
                let reason = if since_message > 0 {
                    s.shard
                        .metrics()
                        .protocol_error(ProtocolErrorKind::WebSocket);
                    CloseReason::TruncatedFrame {
                        bytes: since_message,
                    }
                } else {
                    CloseReason::TransportClose
                };
                end_ws(&s, upgrading, &done, reason, CloseHow::Abort);
                break;
            }
            Some(Ok(n)) => {
                ShardMetrics::add(&s.shard.metrics().bytes_in, n as u64);
                since_message += n;
                budget.spend(n, 0).await;
            }
        }
    }
    done.set(true);
    s.changed.notify();
    writer.await;
}

/// The websocket ended: an unfinished upgrade leaves the session on polling, otherwise the session closes.
fn end_ws(s: &Rc<Session>, upgrading: bool, done: &Cell<bool>, reason: CloseReason, how: CloseHow) {
    done.set(true);
    if upgrading {
        let actions = s.st.borrow_mut().transport.handle(Input::UpgradeAbandoned);
        if actions.contains(&Action::BackToPolling) {
            s.changed.notify();
            return;
        }
    }
    s.close(reason, how);
}

fn push_item_frame(out: &mut Vec<u8>, version: EioVersion, item: &OutItem) {
    match item {
        OutItem::Text(t) => ws::push_frame(out, false, t.as_bytes()),
        OutItem::Binary(b) => {
            ws::push_binary_frame(out, proto::engine::ws_binary_prefix(version), b)
        }
        OutItem::Framed(f) => {
            out.extend_from_slice(f.header());
            out.extend_from_slice(f.text().as_bytes());
        }
    }
}

/// Sets the session's sink back to [`Sink::Detached`] when the writer task ends (or is dropped): nothing may write
/// to its socket directly after that.
struct DetachOnDrop(Rc<Session>);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        self.0.st.borrow_mut().sink = Sink::Detached;
    }
}

async fn ws_writer(
    s: Rc<Session>,
    stream: Stream,
    done: Rc<Cell<bool>>,
    peer_closed: Rc<Cell<bool>>,
) {
    let fd = stream.borrow().as_raw_fd();
    let _detach = DetachOnDrop(s.clone());
    let mut out: Vec<u8> = Vec::new();
    loop {
        let seen = s.changed.epoch();
        let finished = match s.websocket_writer_pass(&mut out, done.get(), peer_closed.get()) {
            WriterPass::Aborted => return,
            WriterPass::Finished => true,
            WriterPass::Open => false,
        };
        if !out.is_empty() {
            s.st.borrow_mut().sink = Sink::Writing;
            ShardMetrics::add(&s.shard.metrics().websocket_sends, 1);
            let written = futures_lite::future::or(
                async { Some(io::write_all(&stream, &out).await) },
                async {
                    // A slow reader is dropped without waiting for its socket to drain.
                    loop {
                        let seen = s.changed.epoch();
                        if s.st.borrow().transport.is_aborted() {
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
                    s.close(CloseReason::WriteFailed, CloseHow::Abort);
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
        if s.changed.epoch() != seen {
            // Queued while this pass wrote: another pass now, still owning the socket.
            continue;
        }
        // Everything is written and nothing is queued: until something is, the shard's flusher writes this socket
        // (see `super::cork`). Packets queued from now on cork the session instead of waking this task.
        s.st.borrow_mut().sink = Sink::Idle(fd);
        s.changed.changed(seen).await;
        s.st.borrow_mut().sink = Sink::Writing;
    }
}
// ---- the websocket transport without a socket (see `crate::server::memory`) ----

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
        handler: Rc<dyn EngineHandler>,
    ) -> Rc<Session> {
        let s = Session::create(shard, version, Phase::WebSocket, true, handler.clone());
        let open = OutItem::Text(Arc::from(s.handshake(Phase::WebSocket).to_packet_text()));
        s.send_items([open]);
        handler.on_open(&s);
        s
    }

    /// One websocket text message from the client, handled as the websocket reader handles it: decoded as an
    /// Engine.IO packet and dispatched. An invalid packet closes the session (close packet, then a close frame) and
    /// `Err` carries the reason.
    pub(crate) fn receive_websocket_text(self: &Rc<Self>, text: &str) -> Result<(), CloseReason> {
        let result = inbound::decode_text(text).and_then(|p| self.on_packet(p));
        self.close_on_packet_error(result)
    }

    /// One websocket binary message from the client; see [`Session::receive_websocket_text`].
    pub(crate) fn receive_websocket_binary(
        self: &Rc<Self>,
        data: &[u8],
    ) -> Result<(), CloseReason> {
        let result = inbound::decode_binary(self.version, data).and_then(|p| self.on_packet(p));
        self.close_on_packet_error(result)
    }

    fn close_on_packet_error(
        self: &Rc<Self>,
        result: Result<(), CloseReason>,
    ) -> Result<(), CloseReason> {
        if let Err(reason) = &result {
            self.shard
                .metrics()
                .protocol_error(ProtocolErrorKind::EngineIo);
            self.close(reason.clone(), CloseHow::SendClose);
        }
        result
    }

    /// The websocket transport ended without a close frame (end of stream): the session closes with
    /// `transport close` and nothing more is written to it.
    pub(crate) fn websocket_transport_closed(self: &Rc<Self>) {
        self.close(CloseReason::TransportClose, CloseHow::Abort);
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
        let finished;
        let start;
        {
            let mut st = self.st.borrow_mut();
            if st.transport.is_aborted() {
                return WriterPass::Aborted;
            }
            // What a direct send left over comes first (it may end inside a frame); it was counted when framed.
            out.append(&mut st.unsent);
            start = out.len();
            st.outbox.take_control_into(out);
            if st.transport.phase() == Phase::WebSocket {
                let n = frame_items(&mut st.outbox, out, self.version);
                if n > 0 {
                    ShardMetrics::add(&self.shard.metrics().packets_out, n as u64);
                }
            }
            let closed = st.transport.is_closed();
            finished = done || peer_closed || closed;
            if finished && !peer_closed && closed {
                ws::push_close_frame(out, CloseCode::Normal, "");
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

    /// The shard's flusher's pass on this corked session (see [`super::cork`]): if its writer is still idle and
    /// the session open, frame everything queued into `out` and send it now without waiting; what the socket does
    /// not take now goes to the writer task, which then owns the socket until it has written everything.
    pub(super) fn flush_corked(self: &Rc<Self>, out: &mut Vec<u8>) {
        let fd = {
            let mut st = self.st.borrow_mut();
            st.corked = false;
            let Sink::Idle(fd) = st.sink else {
                // The writer task was woken meanwhile (a close, an upgrade step): it takes what is queued.
                return;
            };
            if st.transport.is_closed() || st.transport.phase() != Phase::WebSocket {
                return;
            }
            st.outbox.take_control_into(out);
            let n = frame_items(&mut st.outbox, out, self.version);
            if out.is_empty() {
                return;
            }
            let m = self.shard.metrics();
            ShardMetrics::add(&m.packets_out, n as u64);
            ShardMetrics::add(&m.bytes_out, out.len() as u64);
            ShardMetrics::add(&m.websocket_sends, 1);
            fd
        };
        match io::send_now(fd, out) {
            Ok(n) if n == out.len() => {}
            Ok(n) => {
                // A full send buffer: the writer task writes the rest (waiting for the socket), in order, and
                // everything queued after it.
                ShardMetrics::add(&self.shard.metrics().websocket_sends_short, 1);
                {
                    let mut st = self.st.borrow_mut();
                    st.unsent.extend_from_slice(&out[n..]);
                    st.sink = Sink::Writing;
                }
                self.changed.notify();
            }
            Err(_) => self.close(CloseReason::WriteFailed, CloseHow::Abort),
        }
    }
}

/// Frame every queued packet of `outbox` into `out`, in order; returns how many.
fn frame_items(
    outbox: &mut super::outbox::Outbox,
    out: &mut Vec<u8>,
    version: EioVersion,
) -> usize {
    let mut n = 0;
    for item in outbox.drain_items() {
        push_item_frame(out, version, &item);
        n += 1;
    }
    n
}
