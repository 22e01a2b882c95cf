//! The internal event bus between CRUD services and sockets.
//!
//! A [`Realtime`](super::crud::Realtime) wrapper publishes one [`ResourceEvent`] per recipient of a successful
//! operation; the bus's listener delivers it. Services also publish events with no resource attached
//! ([`EventBus::publish_event`], [`publish_event_to`]): members of the room receive them as `realtime:event {name,
//! data}`, exactly like the events clients send. The server's bus encodes the event once and hands it to the room's
//! owner shard ([`super::rooms`]); [`InMemoryBus`] records events for tests and examples. **Services never see the
//! bus's listener, nor any socket.**

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use serde_json::Value;

pub use super::protocol::{ResourceAction, ResourceEvent};

/// A service's event for one room, delivered to its members as `realtime:event {name: room, data}`.
#[derive(Clone, Debug, PartialEq)]
pub struct RoomEvent {
    /// The room (the `name` members receive).
    pub room: String,
    /// What members receive as `data`.
    pub data: Value,
}

impl RoomEvent {
    /// An event for `room`.
    pub fn new(room: impl Into<String>, data: Value) -> Self {
        Self {
            room: room.into(),
            data,
        }
    }

    /// The Socket.IO event arguments `["realtime:event",{"name":...,"data":...}]` as JSON text.
    pub fn encode_args(&self) -> String {
        super::protocol::EventPayload::encode_args(&self.room, &self.data)
    }
}

/// Publishes `data` to every room of `rooms` (Twake's `publish({room(s), data})`): one [`RoomEvent`] each. Tries
/// every room; returns the first error.
pub async fn publish_event_to<B, I>(bus: &B, rooms: I, data: &Value) -> Result<(), BusError>
where
    B: EventBus + ?Sized,
    I: IntoIterator,
    I::Item: Into<String>,
{
    let mut result = Ok(());
    for room in rooms {
        let r = bus.publish_event(RoomEvent::new(room, data.clone())).await;
        if result.is_ok() {
            result = r;
        }
    }
    result
}

/// Why an event could not be handed to the bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The bus is shutting down.
    #[error("the event bus is closed")]
    Closed,
    /// A bounded queue on the way is full and the bus does not wait.
    #[error("the event bus is full")]
    Full,
}

/// Where successful CRUD operations publish their changes.
///
/// The future may wait for room on a bounded queue (back-pressure); it never waits for delivery to sockets.
pub trait EventBus {
    /// Hands `event` to the bus.
    fn publish(&self, event: ResourceEvent) -> impl Future<Output = Result<(), BusError>>;

    /// Hands a service's `realtime:event` for one room to the bus; same queues and guarantees as [`Self::publish`].
    fn publish_event(&self, event: RoomEvent) -> impl Future<Output = Result<(), BusError>>;

    /// Removes every member of `room`, wherever it is (a deleted channel's room). Never waits. The default does nothing
    /// (buses without members, like [`InMemoryBus`]).
    fn evict_room(&self, room: &str) {
        let _ = room;
    }
}

impl<B: EventBus + ?Sized> EventBus for &B {
    fn publish(&self, event: ResourceEvent) -> impl Future<Output = Result<(), BusError>> {
        (**self).publish(event)
    }
    fn publish_event(&self, event: RoomEvent) -> impl Future<Output = Result<(), BusError>> {
        (**self).publish_event(event)
    }
    fn evict_room(&self, room: &str) {
        (**self).evict_room(room)
    }
}

impl<B: EventBus + ?Sized> EventBus for Rc<B> {
    fn publish(&self, event: ResourceEvent) -> impl Future<Output = Result<(), BusError>> {
        (**self).publish(event)
    }
    fn publish_event(&self, event: RoomEvent) -> impl Future<Output = Result<(), BusError>> {
        (**self).publish_event(event)
    }
    fn evict_room(&self, room: &str) {
        (**self).evict_room(room)
    }
}

/// A bus that records every event, in order. Cloning shares the record (one shard, `!Sync`).
#[derive(Clone, Debug, Default)]
pub struct InMemoryBus {
    events: Rc<RefCell<Vec<ResourceEvent>>>,
    room_events: Rc<RefCell<Vec<RoomEvent>>>,
}

impl InMemoryBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of the events published so far.
    pub fn events(&self) -> Vec<ResourceEvent> {
        self.events.borrow().clone()
    }

    /// A copy of the service events ([`EventBus::publish_event`]) published so far.
    pub fn room_events(&self) -> Vec<RoomEvent> {
        self.room_events.borrow().clone()
    }

    /// Removes and returns the events published so far.
    pub fn take(&self) -> Vec<ResourceEvent> {
        std::mem::take(&mut *self.events.borrow_mut())
    }

    /// Number of events published so far.
    pub fn len(&self) -> usize {
        self.events.borrow().len()
    }

    /// True when nothing was published.
    pub fn is_empty(&self) -> bool {
        self.events.borrow().is_empty()
    }
}

impl EventBus for InMemoryBus {
    fn publish(&self, event: ResourceEvent) -> impl Future<Output = Result<(), BusError>> {
        self.events.borrow_mut().push(event);
        std::future::ready(Ok(()))
    }
    fn publish_event(&self, event: RoomEvent) -> impl Future<Output = Result<(), BusError>> {
        self.room_events.borrow_mut().push(event);
        std::future::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(path: &str) -> ResourceEvent {
        ResourceEvent {
            action: ResourceAction::Updated,
            room: "/r".into(),
            type_name: "thing".into(),
            path: path.into(),
            resource: json!({}),
        }
    }

    #[test]
    fn in_memory_bus_records_in_order_and_shares_between_clones() {
        fn via<B: EventBus>(bus: B, e: ResourceEvent) {
            futures_lite::future::block_on(bus.publish(e)).unwrap();
        }
        let bus = InMemoryBus::new();
        let clone = bus.clone();
        via(bus.clone(), event("/a"));
        via(&clone, event("/b"));
        via(Rc::new(clone.clone()), event("/c"));
        assert_eq!(bus.len(), 3);
        let paths: Vec<String> = bus.take().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["/a", "/b", "/c"]);
        assert!(clone.is_empty());
    }

    #[test]
    fn service_events_go_to_every_room() {
        let bus = InMemoryBus::new();
        futures_lite::future::block_on(publish_event_to(&bus, ["/a", "/b"], &json!({"x": 1})))
            .unwrap();
        assert_eq!(
            bus.room_events(),
            [
                RoomEvent::new("/a", json!({"x": 1})),
                RoomEvent::new("/b", json!({"x": 1}))
            ]
        );
        assert_eq!(
            bus.room_events()[0].encode_args(),
            r#"["realtime:event",{"name":"/a","data":{"x":1}}]"#
        );
        assert!(bus.is_empty());
    }
}
