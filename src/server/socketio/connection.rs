//! The Socket.IO state of one Engine.IO session ([`SioConn`], its [`EngineHandler`]): packet decoding with the
//! binary-attachment bounds, CONNECT with auth and the connect timeout, events, acks from the client, DISCONNECT.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::proto::socket::{Decoder, Packet};
use crate::proto::{Decoded, EioVersion, EncodedMessage, RawJson, SioVersion};

use super::super::engine::session::CloseHow;
use super::super::engine::{CloseReason, EngineHandler, Session, proto_limits};
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::{PanicSite, ProtocolErrorKind, ShardMetrics};
use super::super::runtime::timer::TimerHandle;
use super::socket::{AckSender, Socket, SocketData, SocketHome, SocketInner, push_message};
use super::{
    AckReply, ConnectRefusal, Event, Namespace, SioShard, SocketIo, default_main_namespace,
    sio_shard,
};

/// The connected sockets of one session, one per namespace: at most `namespaces_per_session_max` (a few), so
/// searched by namespace name, the first held inline (most sessions have one socket: no allocation for it) and any
/// further ones in a vector.
#[derive(Default)]
struct SessionSockets {
    first: Option<Socket>,
    more: Vec<Socket>,
}

impl SessionSockets {
    fn iter(&self) -> impl Iterator<Item = &Socket> {
        self.first.iter().chain(self.more.iter())
    }
    fn get(&self, nsp: &str) -> Option<&Socket> {
        self.iter().find(|s| s.namespace() == nsp)
    }
    fn contains_key(&self, nsp: &str) -> bool {
        self.get(nsp).is_some()
    }
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more.len()
    }
    /// Add `socket`, replacing the one of its namespace if there is one.
    fn insert(&mut self, socket: Socket) {
        self.remove(socket.namespace());
        if self.first.is_none() {
            self.first = Some(socket);
        } else {
            self.more.push(socket);
        }
    }
    fn remove(&mut self, nsp: &str) -> Option<Socket> {
        if self.first.as_ref().is_some_and(|s| s.namespace() == nsp) {
            let socket = self.first.take();
            self.first = self.more.pop();
            if self.more.is_empty() {
                self.more = Vec::new();
            }
            return socket;
        }
        let at = self.more.iter().position(|s| s.namespace() == nsp)?;
        let socket = self.more.swap_remove(at);
        if self.more.is_empty() {
            self.more = Vec::new();
        }
        Some(socket)
    }
    fn take_all(&mut self) -> Vec<Socket> {
        let mut all: Vec<Socket> = self.first.take().into_iter().collect();
        all.append(&mut self.more);
        self.more = Vec::new();
        all
    }
}

/// The Socket.IO state of one Engine.IO session: its decoder, its sockets (one per namespace) and its timers. The
/// session owns it as its [`EngineHandler`]; its sockets and timers reach it through weak references.
pub(crate) struct SioConn {
    me: Weak<SioConn>,
    shard_state: Rc<SioShard>,
    io: Option<Rc<SocketIo>>,
    version: SioVersion,
    decoder: RefCell<Decoder>,
    sockets: RefCell<SessionSockets>,
    connecting: RefCell<Vec<String>>,
    seen_connect: Cell<bool>,
    connect_timer: RefCell<Option<TimerHandle>>,
    /// Fires `partial_packet_timeout_ms` after a binary packet's text if its attachments are not all in by then.
    partial_timer: RefCell<Option<TimerHandle>>,
    /// Attachment bytes this session's partial packet holds (counted in `SioShard::partial_bytes` too).
    partial_bytes: Cell<usize>,
}

impl SioConn {
    fn namespace(&self, name: &str) -> Option<Rc<Namespace>> {
        match &self.io {
            Some(io) => io.get(name),
            None => (name == "/").then(default_main_namespace),
        }
    }

    fn begin_connect(&self, session: &Rc<Session>, nsp_name: &str, auth: Option<RawJson>) {
        self.seen_connect.set(true);
        if let Some(t) = self.connect_timer.borrow_mut().take() {
            t.cancel();
        }
        if self.sockets.borrow().contains_key(nsp_name)
            || self.connecting.borrow().iter().any(|n| n == nsp_name)
        {
            return;
        }
        let Some(ns) = self.namespace(nsp_name) else {
            let p = Packet::connect_error(self.version, nsp_name, "Invalid namespace");
            push_message(session, &EncodedMessage::new(&p));
            return;
        };
        let cfg = session.shard.config();
        if self.sockets.borrow().len() + self.connecting.borrow().len()
            >= cfg.namespaces_per_session_max
        {
            let p = Packet::connect_error(self.version, nsp_name, "Too many namespaces");
            push_message(session, &EncodedMessage::new(&p));
            return;
        }
        let socket = Socket(Rc::new(SocketInner {
            id: session.shard.new_sid().into(),
            nsp: ns.clone(),
            session: session.clone(),
            conn: self.me.clone() as Weak<dyn SocketHome>,
            registry: self.shard_state.rooms.clone(),
            connected: Cell::new(false),
            gone: Cell::new(false),
            before_connect: RefCell::new(Vec::new()),
            extensions: RefCell::new(SocketData::default()),
            acks: RefCell::new(HashMap::new()),
            next_ack: Cell::new(0),
            rooms: RefCell::new(Vec::new()),
        }));
        let Some(handler) = ns.on_connect.clone() else {
            self.finish_connect(session, socket, Ok(()));
            return;
        };
        self.connecting.borrow_mut().push(nsp_name.to_owned());
        let session = session.clone();
        let me = self.me.clone();
        let fut = {
            let socket = socket.clone();
            // The handler call and its future run under catch_unwind: a panic refuses this one socket.
            async move {
                use futures_lite::FutureExt;
                let call = std::panic::AssertUnwindSafe(|| handler(socket, auth));
                match std::panic::catch_unwind(call) {
                    Ok(fut) => std::panic::AssertUnwindSafe(fut).catch_unwind().await,
                    Err(p) => Err(p),
                }
            }
        };
        glommio::spawn_local(async move {
            let decision = match fut.await {
                Ok(d) => d,
                Err(_) => {
                    handler_panicked(&session, "connect handler");
                    Err(ConnectRefusal::new("Internal server error"))
                }
            };
            if let Some(conn) = me.upgrade() {
                {
                    let mut connecting = conn.connecting.borrow_mut();
                    connecting.retain(|n| n != socket.namespace());
                    if connecting.is_empty() {
                        // a connected session keeps no list of pending namespaces
                        *connecting = Vec::new();
                    }
                }
                conn.finish_connect(&session, socket, decision);
            }
        })
        .detach();
    }

    fn finish_connect(
        &self,
        session: &Rc<Session>,
        socket: Socket,
        decision: Result<(), ConnectRefusal>,
    ) {
        if session.is_closed() {
            return;
        }
        let nsp = socket.namespace().to_owned();
        match decision {
            Ok(()) => {
                let data = match self.version {
                    SioVersion::V5 => Some(sid_json(socket.id())),
                    SioVersion::V4 => None,
                };
                let p = Packet::Connect {
                    nsp: nsp.clone(),
                    data,
                };
                socket.0.connected.set(true);
                ShardMetrics::gauge(&session.shard.metrics().sockets, 1);
                self.sockets.borrow_mut().insert(socket.clone());
                push_message(session, &EncodedMessage::new(&p));
                let early = std::mem::take(&mut *socket.0.before_connect.borrow_mut());
                for m in early {
                    push_message(session, &m);
                }
            }
            Err(refusal) => {
                let p = match (self.version, refusal.data) {
                    (SioVersion::V5, Some(data)) => {
                        Packet::connect_error_with_data(&nsp, &refusal.message, &data)
                    }
                    _ => Packet::connect_error(self.version, &nsp, &refusal.message),
                };
                socket.0.gone.set(true);
                push_message(session, &EncodedMessage::new(&p));
            }
        }
    }

    fn dispatch(&self, session: &Rc<Session>, packet: Packet) -> Result<(), CloseReason> {
        if self.version == SioVersion::V5
            && !self.seen_connect.get()
            && !matches!(packet, Packet::Connect { .. })
        {
            return Err(CloseReason::Protocol(
                "first Socket.IO packet is not CONNECT".into(),
            ));
        }
        match packet {
            Packet::Connect { nsp, data } => {
                let (name, query) = crate::proto::socket::split_namespace_query(&nsp);
                let auth = match (self.version, data, query) {
                    (SioVersion::V4, _, Some(q)) => {
                        // v4 carries auth in the namespace query: hand it over as {"query":"..."}.
                        RawJson::from_serialize(&serde_json::json!({ "query": q })).ok()
                    }
                    (_, d, _) => d,
                };
                self.begin_connect(session, name, auth);
                Ok(())
            }
            Packet::Disconnect { nsp } => {
                let s = self.sockets.borrow_mut().remove(&nsp);
                if let Some(s) = s {
                    s.gone("client namespace disconnect");
                }
                Ok(())
            }
            Packet::Event {
                nsp,
                id,
                name,
                args,
                attachments,
            } => {
                let s = self.sockets.borrow().get(&nsp).cloned();
                let Some(s) = s else { return Ok(()) };
                let handler =
                    s.0.nsp
                        .events
                        .get(&name)
                        .cloned()
                        .or_else(|| s.0.nsp.on_any.clone());
                if let Some(h) = handler {
                    let ack = id.map(|id| AckSender {
                        socket: s.clone(),
                        id,
                    });
                    let event = Event {
                        name,
                        args,
                        attachments,
                        ack,
                    };
                    // A panicking handler (a bug) ends this socket only.
                    let call = std::panic::AssertUnwindSafe(|| h(&s, event));
                    if std::panic::catch_unwind(call).is_err() {
                        handler_panicked(session, "event handler");
                        s.disconnect();
                    }
                }
                Ok(())
            }
            Packet::Ack {
                nsp,
                id,
                args,
                attachments,
            } => {
                let s = self.sockets.borrow().get(&nsp).cloned();
                if let Some(s) = s {
                    let slot = s.0.acks.borrow_mut().remove(&id);
                    if let Some(slot) = slot {
                        slot.complete(Ok(AckReply { args, attachments }));
                    }
                }
                Ok(())
            }
            Packet::ConnectError { .. } => Err(CloseReason::Protocol(
                "CONNECT_ERROR packet from a client".into(),
            )),
        }
    }

    fn handle(
        &self,
        session: &Rc<Session>,
        decoded: Result<Decoded<Packet>, crate::proto::Error>,
    ) -> Result<(), CloseReason> {
        match decoded {
            Ok(Decoded::Complete(p)) => self.dispatch(session, p),
            Ok(Decoded::Partial) => Ok(()),
            Err(e) => {
                session
                    .shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::SocketIo);
                Err(CloseReason::Protocol(format!(
                    "invalid Socket.IO packet: {e}"
                )))
            }
        }
    }
}

impl SioConn {
    /// This session's partial packet is complete, dropped or gone: its bytes leave the shard's count.
    fn release_partial_bytes(&self) {
        let mine = self.partial_bytes.replace(0);
        if mine > 0 {
            let held = &self.shard_state.partial_bytes;
            held.set(held.get().saturating_sub(mine));
        }
    }

    /// A binary packet's text arrived: its attachments (bounded in bytes by `payload_bytes_max`, counted as they
    /// arrive) must all be in within `partial_packet_timeout_ms`, or the session is closed and what was held freed.
    fn arm_partial_timer(&self, session: &Rc<Session>) {
        let timeout_ms = session.shard.config().partial_packet_timeout_ms;
        let weak = Rc::downgrade(session);
        let me = self.me.clone();
        let t = session
            .shard
            .schedule(Duration::from_millis(timeout_ms), move || {
                let Some(s) = weak.upgrade() else { return };
                let waiting = me
                    .upgrade()
                    .is_some_and(|c| c.decoder.borrow().is_waiting_for_attachments());
                if waiting {
                    s.shard
                        .metrics()
                        .protocol_error(ProtocolErrorKind::SocketIo);
                    s.close(
                        CloseReason::PartialPacketTimeout { timeout_ms },
                        CloseHow::SendClose,
                    );
                }
            });
        if let Some(old) = self.partial_timer.borrow_mut().replace(t) {
            old.cancel();
        }
    }
}

fn handler_panicked(session: &Rc<Session>, what: &str) {
    session.shard.metrics().panic_caught(PanicSite::Handler);
    tracing::error!(shard = session.shard.id(), sid = %session.sid(), "{what} panicked; its socket is disconnected");
}

/// The [`EngineHandler`] of a new Socket.IO session of revision `version` on this shard, serving the namespaces
/// installed on the shard now.
pub(crate) fn session_handler(shard: &Rc<ShardCtx>, version: EioVersion) -> Rc<dyn EngineHandler> {
    let shard_state = sio_shard(shard);
    let io = shard_state.socketio();
    let limits = proto_limits(shard.config());
    Rc::new_cyclic(|me| SioConn {
        me: me.clone(),
        shard_state,
        io,
        version: version.socketio(),
        decoder: RefCell::new(Decoder::new(version.socketio(), limits)),
        sockets: RefCell::new(SessionSockets::default()),
        connecting: RefCell::new(Vec::new()),
        seen_connect: Cell::new(false),
        connect_timer: RefCell::new(None),
        partial_timer: RefCell::new(None),
        partial_bytes: Cell::new(0),
    })
}

impl SocketHome for SioConn {
    fn remove_socket(&self, nsp: &str) {
        self.sockets.borrow_mut().remove(nsp);
    }
}

impl EngineHandler for SioConn {
    fn on_open(&self, session: &Rc<Session>) {
        if self.version.implicit_main_connect() {
            self.begin_connect(session, "/", None);
            return;
        }
        let weak = Rc::downgrade(session);
        let me = self.me.clone();
        let timeout = Duration::from_millis(session.shard.config().connect_timeout_ms);
        let t = session.shard.schedule(timeout, move || {
            if let Some(s) = weak.upgrade() {
                let connected = me.upgrade().is_some_and(|c| c.seen_connect.get());
                if !connected {
                    s.close(CloseReason::ConnectTimeout, CloseHow::SendClose);
                }
            }
        });
        *self.connect_timer.borrow_mut() = Some(t);
    }

    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), CloseReason> {
        let decoded = self.decoder.borrow_mut().decode_text(text);
        if matches!(decoded, Ok(Decoded::Partial)) {
            self.arm_partial_timer(session);
        }
        self.handle(session, decoded)
    }

    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), CloseReason> {
        let decoded = self.decoder.borrow_mut().decode_binary(data);
        if self.decoder.borrow().is_waiting_for_attachments() {
            self.partial_bytes
                .set(self.partial_bytes.get() + data.len());
            let shard_held = &self.shard_state.partial_bytes;
            shard_held.set(shard_held.get() + data.len());
            let held = shard_held.get();
            let max = session.shard.config().partial_packets_bytes_per_shard_max;
            if held > max {
                session
                    .shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::SocketIo);
                return Err(CloseReason::PartialPacketBytes {
                    held_bytes: held,
                    max_bytes: max,
                });
            }
        } else {
            self.release_partial_bytes();
            if let Some(t) = self.partial_timer.borrow_mut().take() {
                t.cancel();
            }
        }
        self.handle(session, decoded)
    }

    fn on_close(&self, _session: &Rc<Session>, reason: &CloseReason) {
        if let Some(t) = self.connect_timer.borrow_mut().take() {
            t.cancel();
        }
        if let Some(t) = self.partial_timer.borrow_mut().take() {
            t.cancel();
        }
        self.release_partial_bytes();
        let sockets = self.sockets.borrow_mut().take_all();
        let reason = match reason {
            CloseReason::ClientClose => "client namespace disconnect".to_owned(),
            other => other.to_string(),
        };
        for s in sockets {
            s.gone(&reason);
        }
    }
}

/// Socket ids in CONNECT replies: `{"sid":"<id>"}`.
fn sid_json(id: &str) -> RawJson {
    RawJson::from_serialize(&serde_json::json!({ "sid": id }))
        .unwrap_or_else(|_| RawJson::empty_array())
}
