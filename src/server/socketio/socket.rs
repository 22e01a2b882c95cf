//! [`Socket`]: a client's connection to one namespace, and what handlers do with it (emit, acks, rooms, data).

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::proto::socket::Packet;
use crate::proto::{EioVersion, EncodedMessage, RawJson};

use super::super::engine::session::CloseHow;
use super::super::engine::{CloseReason, OutItem, Session};
use super::super::runtime::ShardCtx;
use super::super::runtime::metrics::ShardMetrics;
use super::super::runtime::timer::TimerHandle;
use super::ack::{AckError, AckFuture, AckSlot};
use super::{Namespace, RoomRegistry};

/// What holds a session's sockets (its Socket.IO state): told when a socket leaves by the server's decision.
pub(super) trait SocketHome {
    /// The socket of namespace `nsp` left.
    fn remove_socket(&self, nsp: &str);
}

pub(super) struct SocketInner {
    pub(super) id: Rc<str>,
    pub(super) nsp: Rc<Namespace>,
    pub(super) session: Rc<Session>,
    /// The session's Socket.IO state (weak: it owns this socket).
    pub(super) conn: Weak<dyn SocketHome>,
    /// The shard's rooms.
    pub(super) registry: Rc<RoomRegistry>,
    pub(super) connected: Cell<bool>,
    pub(super) gone: Cell<bool>,
    pub(super) before_connect: RefCell<Vec<EncodedMessage>>,
    pub(super) extensions: RefCell<SocketData>,
    pub(super) acks: RefCell<HashMap<u64, Rc<AckSlot>>>,
    pub(super) next_ack: Cell<u64>,
    pub(super) rooms: RefCell<Vec<Rc<str>>>,
}

/// The values attached to a socket ([`Socket::insert_data`]), one per type. A socket usually has one (the realtime
/// layer's state), so the first is held inline and only further ones take a vector: no allocation of its own for a
/// socket with one value, where a map took one of ~150 bytes.
#[derive(Default)]
pub(super) struct SocketData {
    first: Option<(TypeId, Rc<dyn Any>)>,
    more: Vec<(TypeId, Rc<dyn Any>)>,
}

impl SocketData {
    fn get(&self, ty: TypeId) -> Option<&Rc<dyn Any>> {
        self.first
            .iter()
            .chain(self.more.iter())
            .find(|(t, _)| *t == ty)
            .map(|(_, v)| v)
    }

    /// Sets the value of type `ty`, replacing the one it had.
    fn insert(&mut self, ty: TypeId, value: Rc<dyn Any>) {
        let slot = self
            .first
            .iter_mut()
            .chain(self.more.iter_mut())
            .find(|(t, _)| *t == ty);
        if let Some((_, v)) = slot {
            *v = value;
        } else if self.first.is_none() {
            self.first = Some((ty, value));
        } else {
            self.more.push((ty, value));
        }
    }
}

/// Answers one client acknowledgement request (consumed by sending).
#[derive(Debug)]
pub struct AckSender {
    pub(super) socket: Socket,
    pub(super) id: u64,
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

/// A client's connection to one namespace. Cheap to clone; lives on the session's shard.
#[derive(Clone)]
pub struct Socket(pub(super) Rc<SocketInner>);

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
        if let Some(conn) = self.0.conn.upgrade() {
            conn.remove_socket(self.namespace());
        }
        self.gone("server namespace disconnect");
    }
    /// Close the whole Engine.IO session (all namespaces) with a close packet.
    pub fn close_session(&self) {
        self.0
            .session
            .close(CloseReason::ServerClose, CloseHow::SendClose);
    }

    /// Join a room of this namespace on this shard.
    pub fn join(&self, room: &str) {
        if self.0.rooms.borrow().iter().any(|r| &**r == room) {
            return;
        }
        self.join_shared(Rc::from(room));
    }
    /// Join a room of this namespace on this shard, keeping the caller's copy of its name (no copy of its own).
    pub fn join_shared(&self, room: Rc<str>) {
        if self.0.gone.get() || self.0.rooms.borrow().contains(&room) {
            return;
        }
        {
            let mut rooms = self.0.rooms.borrow_mut();
            // Most sockets are in one or a few rooms: grow the list one at a time, not to a vector's first 4.
            rooms.reserve_exact(1);
            rooms.push(room.clone());
        }
        self.0.registry.add(self, &room);
    }
    /// Leave a room.
    pub fn leave(&self, room: &str) {
        let pos = self.0.rooms.borrow().iter().position(|r| &**r == room);
        if let Some(pos) = pos {
            let room = {
                let mut rooms = self.0.rooms.borrow_mut();
                let room = rooms.swap_remove(pos);
                if rooms.is_empty() {
                    *rooms = Vec::new();
                }
                room
            };
            self.0.registry.remove(self, &room);
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
            .insert(TypeId::of::<T>(), rc.clone() as Rc<dyn Any>);
        rc
    }
    /// The per-socket value of type `T`.
    pub fn data<T: 'static>(&self) -> Option<Rc<T>> {
        self.0
            .extensions
            .borrow()
            .get(TypeId::of::<T>())
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

    pub(super) fn gone(&self, reason: &str) {
        if self.0.gone.replace(true) {
            return;
        }
        let rooms = std::mem::take(&mut *self.0.rooms.borrow_mut());
        for room in rooms {
            self.0.registry.remove(self, &room);
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
        let data = std::mem::take(&mut *self.0.extensions.borrow_mut());
        drop(data);
    }
}

/// Queue the frames of `msg` (text, then its attachments) on `session`.
pub(super) fn push_message(session: &Rc<Session>, msg: &EncodedMessage) -> bool {
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
