//! Socket.IO v5 (over Engine.IO v4) and v4 (over Engine.IO v3) on top of the Engine.IO sessions: namespaces,
//! CONNECT with auth, connect timeout, events, acks both ways, binary attachments, DISCONNECT, the handler API
//! and the shard-local rooms.
//!
//! # Handler API in one example
//!
//! ```no_run
//! use std::sync::Arc;
//! use shardcast::proto::RawJson;
//! use shardcast::server::{AppFactory, ShardApp, SocketIo};
//!
//! let app: AppFactory = Arc::new(|_shard| {
//!     let mut io = SocketIo::new();
//!     io.namespace("/")
//!         .on_connect(|_socket, _auth| async { Ok(()) })
//!         .on("join", |socket, event| {
//!             let room: String = event.args.parse::<(String,)>().map(|(r,)| r).unwrap_or_default();
//!             socket.join(&room);
//!             if let Some(ack) = event.ack {
//!                 ack.send(RawJson::new("[true]").unwrap());
//!             }
//!         })
//!         .on("say", |socket, event| {
//!             // encode once, send the same frames to every member of the room on this shard
//!             let msg = shardcast::proto::EncodedMessage::event_raw("/", "said", &event.args);
//!             socket.shard().broadcast("/", "lobby", &msg);
//!         });
//!     ShardApp { socketio: Some(io), router: None }
//! });
//! ```

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::proto::socket::{Decoder, Packet};
use crate::proto::{Decoded, EioVersion, EncodedMessage, RawJson, SioVersion};

use super::engine::{CloseHow, EngineHandler, OutItem, Session};
use super::metrics::{ProtocolErrorKind, ShardMetrics};
use super::shard::{ShardApp, ShardCtx};
use super::timer::TimerHandle;

/// Boxed future of a connect handler.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<(), ConnectRefusal>>>>;
type ConnectHandler = Rc<dyn Fn(Socket, Option<RawJson>) -> ConnectFuture>;
type EventHandler = Rc<dyn Fn(&Socket, Event)>;
type DisconnectHandler = Rc<dyn Fn(&Socket, &str)>;

/// Why a CONNECT is refused; sent to the client as CONNECT_ERROR.
#[derive(Debug, Clone)]
pub struct ConnectRefusal {
    /// `message` of the CONNECT_ERROR (v5 `{"message":...}`, v4 a plain string).
    pub message: String,
    /// Optional `data` (v5 only): `{"message":...,"data":<data>}`.
    pub data: Option<RawJson>,
}

impl ConnectRefusal {
    /// A refusal with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        ConnectRefusal {
            message: message.into(),
            data: None,
        }
    }
}

/// An event received from a client.
#[derive(Debug)]
pub struct Event {
    /// Event name (first element of the array).
    pub name: String,
    /// The remaining arguments, a JSON array; binary arguments are `{"_placeholder":true,"num":N}`.
    pub args: RawJson,
    /// Binary attachments in `num` order.
    pub attachments: Vec<Vec<u8>>,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<AckSender>,
}

/// Answers one client acknowledgement request (consumed by sending).
#[derive(Debug)]
pub struct AckSender {
    socket: Socket,
    id: u64,
}

impl AckSender {
    /// Send the ACK with `args` (a JSON array).
    pub fn send(self, args: RawJson) -> bool {
        self.send_with_binary(args, Vec::new())
    }
    /// Send the ACK with `args` containing placeholders for `attachments` (a BINARY_ACK if non-empty).
    pub fn send_with_binary(self, args: RawJson, attachments: Vec<Vec<u8>>) -> bool {
        let packet = Packet::Ack {
            nsp: self.socket.namespace().to_owned(),
            id: self.id,
            args,
            attachments,
        };
        self.socket.send_packet(&EncodedMessage::new(&packet))
    }
}

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
struct AckSlot {
    result: RefCell<Option<Result<AckReply, AckError>>>,
    waker: RefCell<Option<Waker>>,
    timer: RefCell<Option<TimerHandle>>,
}

impl AckSlot {
    fn complete(&self, r: Result<AckReply, AckError>) {
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
    slot: Rc<AckSlot>,
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

/// One namespace's handlers.
pub struct Namespace {
    name: Rc<str>,
    on_connect: Option<ConnectHandler>,
    events: HashMap<String, EventHandler>,
    on_any: Option<EventHandler>,
    on_disconnect: Option<DisconnectHandler>,
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Namespace {
    /// Decide on a CONNECT (sees the auth payload). `Ok` accepts, `Err` answers CONNECT_ERROR. Without a handler
    /// every CONNECT is accepted. Emits made on the socket before the decision are sent after the CONNECT reply.
    pub fn on_connect<F, Fut>(&mut self, f: F) -> &mut Self
    where
        F: Fn(Socket, Option<RawJson>) -> Fut + 'static,
        Fut: Future<Output = Result<(), ConnectRefusal>> + 'static,
    {
        self.on_connect = Some(Rc::new(move |s, auth| Box::pin(f(s, auth))));
        self
    }
    /// Handle the event `name`.
    pub fn on(&mut self, name: &str, f: impl Fn(&Socket, Event) + 'static) -> &mut Self {
        self.events.insert(name.to_owned(), Rc::new(f));
        self
    }
    /// Handle every event without a handler of its own.
    pub fn on_any(&mut self, f: impl Fn(&Socket, Event) + 'static) -> &mut Self {
        self.on_any = Some(Rc::new(f));
        self
    }
    /// Called once when a connected socket leaves, with the reason (`client namespace disconnect`,
    /// `server namespace disconnect`, `transport close`, `ping timeout`, `server shutting down`, ...).
    pub fn on_disconnect(&mut self, f: impl Fn(&Socket, &str) + 'static) -> &mut Self {
        self.on_disconnect = Some(Rc::new(f));
        self
    }
}

/// The namespaces of a shard's Socket.IO server.
#[derive(Debug)]
pub struct SocketIo {
    namespaces: HashMap<String, Rc<Namespace>>,
}

impl Default for SocketIo {
    fn default() -> Self {
        SocketIo::new()
    }
}

impl SocketIo {
    /// The main namespace `/` only, with no handlers.
    pub fn new() -> Self {
        let mut io = SocketIo {
            namespaces: HashMap::new(),
        };
        io.namespace("/");
        io
    }
    /// The namespace `name` (created if new; `name` starts with `/`).
    pub fn namespace(&mut self, name: &str) -> &mut Namespace {
        let ns = self.namespaces.entry(name.to_owned()).or_insert_with(|| {
            Rc::new(Namespace {
                name: Rc::from(name),
                on_connect: None,
                events: HashMap::new(),
                on_any: None,
                on_disconnect: None,
            })
        });
        // Namespaces are only configured before the shard serves, when no other reference exists.
        Rc::get_mut(ns).expect("namespaces are configured before the shard starts serving")
    }
    fn get(&self, name: &str) -> Option<Rc<Namespace>> {
        self.namespaces.get(name).cloned()
    }
}

struct SocketInner {
    id: Rc<str>,
    nsp: Rc<Namespace>,
    session: Rc<Session>,
    connected: Cell<bool>,
    gone: Cell<bool>,
    before_connect: RefCell<Vec<EncodedMessage>>,
    extensions: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    acks: RefCell<HashMap<u64, Rc<AckSlot>>>,
    next_ack: Cell<u64>,
    rooms: RefCell<Vec<Rc<str>>>,
}

/// A client's connection to one namespace. Cheap to clone; lives on the session's shard.
#[derive(Clone)]
pub struct Socket(Rc<SocketInner>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.0.nsp.name)
            .finish()
    }
}

impl Socket {
    /// The socket id (sent to the client in the CONNECT reply).
    pub fn id(&self) -> &str {
        &self.0.id
    }
    /// The Engine.IO session id.
    pub fn session_id(&self) -> &str {
        self.0.session.sid()
    }
    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.0.nsp.name
    }
    /// The shard this socket lives on.
    pub fn shard(&self) -> &Rc<ShardCtx> {
        &self.0.session.shard
    }
    /// Engine.IO revision of the client (V3 = socket.io-client 2.x).
    pub fn protocol(&self) -> EioVersion {
        self.0.session.version()
    }
    /// Connected (CONNECT accepted and not yet disconnected).
    pub fn is_connected(&self) -> bool {
        self.0.connected.get() && !self.0.gone.get()
    }

    /// Queue an already encoded packet (same frames for every recipient). False if the socket is gone.
    pub fn send_packet(&self, msg: &EncodedMessage) -> bool {
        if self.0.gone.get() {
            return false;
        }
        if !self.0.connected.get() {
            self.0.before_connect.borrow_mut().push(msg.clone());
            return true;
        }
        push_message(&self.0.session, msg)
    }
    /// Emit `event` with `args` (a JSON array of arguments).
    pub fn emit(&self, event: &str, args: &RawJson) -> bool {
        self.send_packet(&EncodedMessage::event_raw(self.namespace(), event, args))
    }
    /// Emit `event` with one serializable argument.
    pub fn emit_value<T: serde::Serialize + ?Sized>(&self, event: &str, arg: &T) -> bool {
        match EncodedMessage::event(self.namespace(), event, arg) {
            Ok(m) => self.send_packet(&m),
            Err(e) => {
                tracing::error!(error = %e, event, "emit_value: argument does not serialize");
                false
            }
        }
    }
    /// Emit `event` with `args` holding placeholders for `attachments` (a BINARY_EVENT if non-empty).
    pub fn emit_binary(&self, event: &str, args: RawJson, attachments: Vec<Vec<u8>>) -> bool {
        let packet = Packet::Event {
            nsp: self.namespace().to_owned(),
            id: None,
            name: event.to_owned(),
            args,
            attachments,
        };
        self.send_packet(&EncodedMessage::new(&packet))
    }
    /// Emit `event` and wait for the client's acknowledgement, at most `timeout` (timer wheel resolution).
    pub fn emit_with_ack(
        &self,
        event: &str,
        args: RawJson,
        attachments: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> AckFuture {
        let slot = Rc::new(AckSlot::default());
        if !self.is_connected() {
            slot.complete(Err(AckError::Disconnected));
            return AckFuture { slot };
        }
        if self.0.acks.borrow().len() >= self.shard().config().acks_pending_per_socket_max {
            slot.complete(Err(AckError::TooManyPending));
            return AckFuture { slot };
        }
        let id = self.0.next_ack.get();
        self.0.next_ack.set(id + 1);
        self.0.acks.borrow_mut().insert(id, slot.clone());
        let weak = Rc::downgrade(&self.0);
        let timer = self.shard().schedule(timeout, move || {
            if let Some(inner) = weak.upgrade() {
                let slot = inner.acks.borrow_mut().remove(&id);
                if let Some(slot) = slot {
                    slot.complete(Err(AckError::Timeout));
                }
            }
        });
        *slot.timer.borrow_mut() = Some(timer);
        let packet = Packet::Event {
            nsp: self.namespace().to_owned(),
            id: Some(id),
            name: event.to_owned(),
            args,
            attachments,
        };
        self.send_packet(&EncodedMessage::new(&packet));
        AckFuture { slot }
    }
    /// Disconnect this socket from its namespace (sends DISCONNECT; the session stays open).
    pub fn disconnect(&self) {
        if self.0.gone.get() {
            return;
        }
        if self.0.connected.get() {
            let packet = Packet::Disconnect {
                nsp: self.namespace().to_owned(),
            };
            push_message(&self.0.session, &EncodedMessage::new(&packet));
        }
        if let Some(conn) = sio_conn(&self.0.session) {
            conn.sockets.borrow_mut().remove(self.namespace());
        }
        self.gone("server namespace disconnect");
    }
    /// Close the whole Engine.IO session (all namespaces) with a close packet.
    pub fn close_session(&self) {
        self.0
            .session
            .close("server closed the session".into(), CloseHow::SendClose);
    }

    /// Join a room of this namespace on this shard.
    pub fn join(&self, room: &str) {
        if self.0.gone.get() || self.0.rooms.borrow().iter().any(|r| &**r == room) {
            return;
        }
        let room: Rc<str> = Rc::from(room);
        self.0.rooms.borrow_mut().push(room.clone());
        self.shard().rooms.add(self, &room);
    }
    /// Leave a room.
    pub fn leave(&self, room: &str) {
        let pos = self.0.rooms.borrow().iter().position(|r| &**r == room);
        if let Some(pos) = pos {
            let room = self.0.rooms.borrow_mut().swap_remove(pos);
            self.shard().rooms.remove(self, &room);
        }
    }
    /// Rooms this socket is in.
    pub fn rooms(&self) -> Vec<Rc<str>> {
        self.0.rooms.borrow().clone()
    }

    /// Attach a per-socket value of type `T` (replaces a previous one).
    pub fn insert_data<T: 'static>(&self, value: T) -> Rc<T> {
        let rc = Rc::new(value);
        self.0
            .extensions
            .borrow_mut()
            .insert(TypeId::of::<T>(), rc.clone());
        rc
    }
    /// The per-socket value of type `T`.
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.0
            .extensions
            .borrow()
            .get(&TypeId::of::<T>())
            .cloned()
            .and_then(|rc| rc.downcast::<T>().ok())
    }
    /// Run `f` after `delay` on the shard's timer wheel if this socket is still connected then
    /// (e.g. an authentication deadline).
    pub fn schedule(&self, delay: Duration, f: impl FnOnce(&Socket) + 'static) -> TimerHandle {
        let weak = Rc::downgrade(&self.0);
        self.shard().schedule(delay, move || {
            if let Some(inner) = weak.upgrade() {
                let s = Socket(inner);
                if !s.0.gone.get() {
                    f(&s);
                }
            }
        })
    }

    fn gone(&self, reason: &str) {
        if self.0.gone.replace(true) {
            return;
        }
        let rooms = std::mem::take(&mut *self.0.rooms.borrow_mut());
        for room in rooms {
            self.shard().rooms.remove(self, &room);
        }
        let acks: Vec<Rc<AckSlot>> = self.0.acks.borrow_mut().drain().map(|(_, s)| s).collect();
        for a in acks {
            a.complete(Err(AckError::Disconnected));
        }
        if self.0.connected.get() {
            ShardMetrics::gauge(&self.shard().metrics().sockets, -1);
            if let Some(h) = self.0.nsp.on_disconnect.clone() {
                h(self, reason);
            }
        }
        self.0.extensions.borrow_mut().clear();
    }
}

fn push_message(session: &Rc<Session>, msg: &EncodedMessage) -> bool {
    let text = OutItem::Text(msg.ws_text().clone());
    if msg.attachments().is_empty() {
        session.send_items([text])
    } else {
        session.send_items(
            std::iter::once(text)
                .chain(msg.attachments().iter().map(|a| OutItem::Binary(a.clone()))),
        )
    }
}

/// room -> members (socket id -> socket).
type RoomsOfNamespace = HashMap<Rc<str>, HashMap<Rc<str>, Socket>>;

/// The shard's rooms: namespace -> room -> members (socket id -> socket).
#[derive(Default)]
pub struct RoomRegistry {
    rooms: RefCell<HashMap<Rc<str>, RoomsOfNamespace>>,
}

impl std::fmt::Debug for RoomRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomRegistry").finish_non_exhaustive()
    }
}

impl RoomRegistry {
    fn add(&self, socket: &Socket, room: &Rc<str>) {
        let nsp: Rc<str> = socket.0.nsp.name.clone();
        self.rooms
            .borrow_mut()
            .entry(nsp)
            .or_default()
            .entry(room.clone())
            .or_default()
            .insert(socket.0.id.clone(), socket.clone());
    }
    fn remove(&self, socket: &Socket, room: &str) {
        let mut rooms = self.rooms.borrow_mut();
        if let Some(by_room) = rooms.get_mut(socket.namespace()) {
            if let Some(members) = by_room.get_mut(room) {
                members.remove(socket.id());
                if members.is_empty() {
                    by_room.remove(room);
                }
            }
            if by_room.is_empty() {
                rooms.remove(socket.namespace());
            }
        }
    }
    /// The members of `room` in namespace `nsp` on this shard.
    pub fn members(&self, nsp: &str, room: &str) -> Vec<Socket> {
        self.rooms
            .borrow()
            .get(nsp)
            .and_then(|r| r.get(room))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
    /// Number of members of `room` on this shard.
    pub fn len(&self, nsp: &str, room: &str) -> usize {
        self.rooms
            .borrow()
            .get(nsp)
            .and_then(|r| r.get(room))
            .map_or(0, HashMap::len)
    }
    /// True if no room has members on this shard.
    pub fn is_empty(&self) -> bool {
        self.rooms.borrow().is_empty()
    }
    /// Queue `msg` (encoded once) for every member of `room`; returns how many sockets it was queued for.
    pub fn broadcast(&self, nsp: &str, room: &str, msg: &EncodedMessage) -> usize {
        let sessions: Vec<Rc<Session>> =
            match self.rooms.borrow().get(nsp).and_then(|r| r.get(room)) {
                Some(m) => m
                    .values()
                    .filter(|s| s.is_connected())
                    .map(|s| s.0.session.clone())
                    .collect(),
                None => return 0,
            };
        sessions.iter().filter(|s| push_message(s, msg)).count()
    }
}

impl ShardCtx {
    /// The shard's rooms.
    pub fn rooms(&self) -> &RoomRegistry {
        &self.rooms
    }
    /// Queue `msg` for every member of `room` of namespace `nsp` on this shard (see [`RoomRegistry::broadcast`]).
    pub fn broadcast(&self, nsp: &str, room: &str, msg: &EncodedMessage) -> usize {
        self.rooms.broadcast(nsp, room, msg)
    }
}

// ---- the per-session Socket.IO state ----

pub(crate) struct SioConn {
    app: Rc<ShardApp>,
    version: SioVersion,
    decoder: RefCell<Decoder>,
    sockets: RefCell<HashMap<String, Socket>>,
    connecting: RefCell<Vec<String>>,
    seen_connect: Cell<bool>,
    connect_timer: RefCell<Option<TimerHandle>>,
    /// Fires `partial_packet_timeout_ms` after a binary packet's text if its attachments are not all in by then.
    partial_timer: RefCell<Option<TimerHandle>>,
    /// Attachment bytes this session's partial packet holds (counted in [`PARTIAL_BYTES`] too).
    partial_bytes: Cell<usize>,
}

thread_local! {
    /// Attachment bytes held by every partial binary packet of this shard (one executor per thread).
    static PARTIAL_BYTES: Cell<usize> = const { Cell::new(0) };
}

thread_local! {
    static DEFAULT_IO: RefCell<Option<Rc<Namespace>>> = const { RefCell::new(None) };
}

fn default_main_namespace() -> Rc<Namespace> {
    DEFAULT_IO.with(|d| {
        d.borrow_mut()
            .get_or_insert_with(|| {
                Rc::new(Namespace {
                    name: Rc::from("/"),
                    on_connect: None,
                    events: HashMap::new(),
                    on_any: None,
                    on_disconnect: None,
                })
            })
            .clone()
    })
}

impl SioConn {
    fn namespace(&self, name: &str) -> Option<Rc<Namespace>> {
        match &self.app.socketio {
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
            connected: Cell::new(false),
            gone: Cell::new(false),
            before_connect: RefCell::new(Vec::new()),
            extensions: RefCell::new(HashMap::new()),
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
            if let Some(conn) = sio_conn(&session) {
                conn.connecting
                    .borrow_mut()
                    .retain(|n| n != socket.namespace());
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
                self.sockets.borrow_mut().insert(nsp, socket.clone());
                push_message(session, &EncodedMessage::new(&p));
                let early = std::mem::take(&mut *socket.0.before_connect.borrow_mut());
                for m in early {
                    push_message(session, &m);
                }
            }
            Err(refusal) => {
                let p = match (self.version, refusal.data) {
                    (SioVersion::V5, Some(data)) => {
                        let mut text = String::from("{\"message\":");
                        text.push_str(&serde_json::Value::String(refusal.message).to_string());
                        text.push_str(",\"data\":");
                        text.push_str(data.as_str());
                        text.push('}');
                        match RawJson::new(text) {
                            Ok(d) => Packet::ConnectError { nsp, data: d },
                            Err(_) => Packet::connect_error(
                                self.version,
                                socket.namespace(),
                                "Not authorized",
                            ),
                        }
                    }
                    _ => Packet::connect_error(self.version, &nsp, &refusal.message),
                };
                socket.0.gone.set(true);
                push_message(session, &EncodedMessage::new(&p));
            }
        }
    }

    fn dispatch(&self, session: &Rc<Session>, packet: Packet) -> Result<(), String> {
        if self.version == SioVersion::V5
            && !self.seen_connect.get()
            && !matches!(packet, Packet::Connect { .. })
        {
            return Err("first Socket.IO packet is not CONNECT".into());
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
            Packet::ConnectError { .. } => Err("CONNECT_ERROR packet from a client".into()),
        }
    }

    fn handle(
        &self,
        session: &Rc<Session>,
        decoded: Result<Decoded<Packet>, crate::proto::Error>,
    ) -> Result<(), String> {
        match decoded {
            Ok(Decoded::Complete(p)) => self.dispatch(session, p),
            Ok(Decoded::Partial) => Ok(()),
            Err(e) => {
                session
                    .shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::SocketIo);
                Err(format!("invalid Socket.IO packet: {e}"))
            }
        }
    }
}

impl SioConn {
    /// This session's partial packet is complete, dropped or gone: its bytes leave the shard's count.
    fn release_partial_bytes(&self) {
        let mine = self.partial_bytes.replace(0);
        if mine > 0 {
            PARTIAL_BYTES.with(|b| b.set(b.get().saturating_sub(mine)));
        }
    }

    /// A binary packet's text arrived: its attachments (bounded in bytes by `payload_bytes_max`, counted as they
    /// arrive) must all be in within `partial_packet_timeout_ms`, or the session is closed and what was held freed.
    fn arm_partial_timer(&self, session: &Rc<Session>) {
        let timeout_ms = session.shard.config().partial_packet_timeout_ms;
        let weak = Rc::downgrade(session);
        let t = session
            .shard
            .schedule(Duration::from_millis(timeout_ms), move || {
                let Some(s) = weak.upgrade() else { return };
                let waiting = s
                    .sio_handler()
                    .is_some_and(|c| c.decoder.borrow().is_waiting_for_attachments());
                if waiting {
                    s.shard.metrics().protocol_error(ProtocolErrorKind::SocketIo);
                    s.close(
                        format!(
                            "partial binary packet: attachments not all received within partial_packet_timeout_ms ({timeout_ms} ms)"
                        )
                        .into(),
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
    session
        .shard
        .metrics()
        .panic_caught(super::metrics::PanicSite::Handler);
    tracing::error!(shard = session.shard.id(), sid = %session.sid(), "{what} panicked; its socket is disconnected");
}

fn sio_conn(session: &Rc<Session>) -> Option<Rc<SioHandler>> {
    session.sio_handler()
}

/// The [`EngineHandler`] of Socket.IO sessions.
pub(crate) struct SioHandler(SioConn);

impl std::ops::Deref for SioHandler {
    type Target = SioConn;
    fn deref(&self) -> &SioConn {
        &self.0
    }
}

pub(crate) fn session_handler(shard: &Rc<ShardCtx>, version: EioVersion) -> Rc<SioHandler> {
    let app = shard.app.borrow().clone();
    let limits = super::engine::proto_limits(shard.config());
    Rc::new(SioHandler(SioConn {
        app,
        version: version.socketio(),
        decoder: RefCell::new(Decoder::new(version.socketio(), limits)),
        sockets: RefCell::new(HashMap::new()),
        connecting: RefCell::new(Vec::new()),
        seen_connect: Cell::new(false),
        connect_timer: RefCell::new(None),
        partial_timer: RefCell::new(None),
        partial_bytes: Cell::new(0),
    }))
}

impl EngineHandler for SioHandler {
    fn on_open(&self, session: &Rc<Session>) {
        if self.version.implicit_main_connect() {
            self.begin_connect(session, "/", None);
            return;
        }
        let weak = Rc::downgrade(session);
        let timeout = Duration::from_millis(session.shard.config().connect_timeout_ms);
        let t = session.shard.schedule(timeout, move || {
            if let Some(s) = weak.upgrade() {
                let connected = s.sio_handler().is_some_and(|c| c.seen_connect.get());
                if !connected {
                    s.close(
                        "connect timeout: no Socket.IO CONNECT received".into(),
                        CloseHow::SendClose,
                    );
                }
            }
        });
        *self.connect_timer.borrow_mut() = Some(t);
    }

    fn on_text(&self, session: &Rc<Session>, text: &str) -> Result<(), String> {
        let decoded = self.decoder.borrow_mut().decode_text(text);
        if matches!(decoded, Ok(Decoded::Partial)) {
            self.arm_partial_timer(session);
        }
        self.handle(session, decoded)
    }

    fn on_binary(&self, session: &Rc<Session>, data: &[u8]) -> Result<(), String> {
        let decoded = self.decoder.borrow_mut().decode_binary(data);
        if self.decoder.borrow().is_waiting_for_attachments() {
            self.partial_bytes
                .set(self.partial_bytes.get() + data.len());
            let held = PARTIAL_BYTES.with(|b| {
                b.set(b.get() + data.len());
                b.get()
            });
            let max = session.shard.config().partial_packets_bytes_per_shard_max;
            if held > max {
                session
                    .shard
                    .metrics()
                    .protocol_error(ProtocolErrorKind::SocketIo);
                return Err(format!(
                    "partial binary packets of this shard hold {held} bytes, partial_packets_bytes_per_shard_max is {max}"
                ));
            }
        } else {
            self.release_partial_bytes();
            if let Some(t) = self.partial_timer.borrow_mut().take() {
                t.cancel();
            }
        }
        self.handle(session, decoded)
    }

    fn on_close(&self, _session: &Rc<Session>, reason: &str) {
        if let Some(t) = self.connect_timer.borrow_mut().take() {
            t.cancel();
        }
        if let Some(t) = self.partial_timer.borrow_mut().take() {
            t.cancel();
        }
        self.release_partial_bytes();
        let sockets: Vec<Socket> = self.sockets.borrow_mut().drain().map(|(_, s)| s).collect();
        let reason = if reason.starts_with("client close") {
            "client namespace disconnect"
        } else {
            reason
        };
        for s in sockets {
            s.gone(reason);
        }
    }

    fn as_any(self: Rc<Self>) -> Rc<dyn Any> {
        self
    }
}

/// Socket ids in CONNECT replies: `{"sid":"<id>"}`.
fn sid_json(id: &str) -> RawJson {
    RawJson::from_serialize(&serde_json::json!({ "sid": id }))
        .unwrap_or_else(|_| RawJson::empty_array())
}
