//! Socket.IO v5 (over Engine.IO v4) and v4 (over Engine.IO v3) on top of the Engine.IO sessions: namespaces
//! (here), sockets ([`socket`]), acks both ways ([`ack`]), the shard-local rooms ([`rooms`]) and the per-session
//! state that decodes packets, runs CONNECT with auth and its timeout, events, binary attachments and DISCONNECT
//! ([`connection`], the [`EngineHandler`](super::engine::EngineHandler) of a Socket.IO session).
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

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use crate::proto::RawJson;

use super::runtime::ShardCtx;

pub mod ack;
pub mod connection;
pub mod rooms;
pub mod socket;

pub use ack::{AckError, AckFuture, AckReply};
pub use rooms::RoomRegistry;
pub use socket::{AckSender, Socket};

/// Boxed future of a connect handler.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<(), ConnectRefusal>>>>;
pub(super) type ConnectHandler = Rc<dyn Fn(Socket, Option<RawJson>) -> ConnectFuture>;
pub(super) type EventHandler = Rc<dyn Fn(&Socket, Event)>;
pub(super) type DisconnectHandler = Rc<dyn Fn(&Socket, &str)>;

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

/// One namespace's handlers.
pub struct Namespace {
    pub(super) name: Rc<str>,
    pub(super) on_connect: Option<ConnectHandler>,
    pub(super) events: HashMap<String, EventHandler>,
    pub(super) on_any: Option<EventHandler>,
    pub(super) on_disconnect: Option<DisconnectHandler>,
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
    pub(super) fn get(&self, name: &str) -> Option<Rc<Namespace>> {
        self.namespaces.get(name).cloned()
    }
}

/// The per-shard state of this layer (in [`ShardCtx::state`]): the rooms, the app's namespaces, and the bytes
/// held by partial binary packets.
#[derive(Default)]
pub(crate) struct SioShard {
    pub(crate) rooms: Rc<RoomRegistry>,
    io: RefCell<Option<Rc<SocketIo>>>,
    /// Attachment bytes held by every partial binary packet of this shard.
    pub(crate) partial_bytes: Cell<usize>,
}

/// This shard's Socket.IO state.
pub(crate) fn sio_shard(shard: &ShardCtx) -> Rc<SioShard> {
    shard.state_or_default::<SioShard>()
}

/// Serve `io` on this shard from now on (`None`: only `/`, without handlers). Sessions made later take it.
pub(crate) fn install(shard: &ShardCtx, io: Option<SocketIo>) {
    *sio_shard(shard).io.borrow_mut() = io.map(Rc::new);
}

impl SioShard {
    pub(super) fn socketio(&self) -> Option<Rc<SocketIo>> {
        self.io.borrow().clone()
    }
}

thread_local! {
    static DEFAULT_IO: RefCell<Option<Rc<Namespace>>> = const { RefCell::new(None) };
}

/// `/` without handlers: what a shard serves when its app has no Socket.IO.
pub(super) fn default_main_namespace() -> Rc<Namespace> {
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
