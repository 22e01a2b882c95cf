//! The internal event bus between CRUD services and sockets.
//!
//! A [`Realtime`](super::crud::Realtime) wrapper publishes one [`ResourceEvent`] per recipient of a successful
//! operation; the bus's listener delivers it. The server's bus encodes the event once and hands it to the room's
//! owner shard ([`super::rooms`]); [`InMemoryBus`] records events for tests and examples. **Services never see the
//! bus's listener, nor any socket.**

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

pub use super::protocol::{ResourceAction, ResourceEvent};

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
    fn evict_room(&self, room: &str) {
        (**self).evict_room(room)
    }
}

impl<B: EventBus + ?Sized> EventBus for Rc<B> {
    fn publish(&self, event: ResourceEvent) -> impl Future<Output = Result<(), BusError>> {
        (**self).publish(event)
    }
    fn evict_room(&self, room: &str) {
        (**self).evict_room(room)
    }
}

/// A bus that records every event, in order. Cloning shares the record (one shard, `!Sync`).
#[derive(Clone, Debug, Default)]
pub struct InMemoryBus {
    events: Rc<RefCell<Vec<ResourceEvent>>>,
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
}
