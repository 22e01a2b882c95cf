//! The realtime CRUD framework: JWT authentication, the wire contract, rooms partitioned across shards, and CRUD
//! services whose changes are published to rooms.
//!
//! # Layout
//! - [`auth`]: access tokens ([`auth::AccessVerifier`], [`auth::AccessSigner`]) and room tokens ([`auth::RoomTokens`]).
//! - [`protocol`]: event names, payloads, and [`protocol::Session`], the transport-free per-socket state machine.
//! - [`rooms`]: room owners, per-shard memberships, the messages between shards and their routing.
//! - [`crud`]: [`crud::CrudService`], the result types, [`crud::Recipients`] and the [`crud::Realtime`] wrapper.
//! - [`bus`]: [`bus::EventBus`] and the in-memory bus for tests.
//! - [`presence`]: who is connected per room and per user, right across shards.
//!
//! The glue to the server and the ORM:
//! - [`live`]: the Socket.IO handlers of the wire contract on each shard, rooms across shards over the mesh, and
//!   [`live::ShardBus`], the bus whose listener delivers `realtime:resource` to sockets.
//! - [`events`]: named socket events of authenticated sockets for services, and connect/disconnect hooks.
//! - [`rest`]: the REST API generated from registered CRUD services (room tokens in `websocket`/`websockets`).
//! - [`demo`]: the `channels` and `messages` services shipped with `shardcast serve`, stored through the ORM.
//! - [`online`]: the online demo service (`online:get`, `online:set`, last-seen on the ORM), on [`events`].
//!
//! **Architecture invariant:** nothing in `auth`, `protocol`, `rooms`, `crud` and `bus` knows about sockets, runtimes
//! or databases (`tests/layering.rs` checks it). Services publish to an [`bus::EventBus`]; the server owns the bus's
//! listener, the sockets and the shards.
//!
//! # Example: a message service whose creations and deletions reach room members
//!
//! ```
//! use futures_lite::future::block_on;
//! use serde::Serialize;
//! use serde_json::json;
//! use shardcast::realtime::bus::{InMemoryBus, ResourceAction};
//! use shardcast::realtime::crud::*;
//! use std::cell::RefCell;
//!
//! #[derive(Clone, Debug, Serialize)]
//! struct Message {
//!     id: String,
//!     channel: String,
//!     text: String,
//! }
//!
//! /// A service over an in-memory list. It knows nothing about sockets or rooms.
//! #[derive(Default)]
//! struct MessageService {
//!     rows: RefCell<Vec<Message>>,
//! }
//!
//! impl CrudService<Message> for MessageService {
//!     type Patch = String; // the new text
//!
//!     async fn create(&self, ctx: &ExecutionContext, item: Message) -> Result<CreateResult<Message>, CrudError> {
//!         ctx.require_user()?;
//!         if item.text.is_empty() {
//!             return Err(CrudError::InvalidInput("text must not be empty".into()));
//!         }
//!         self.rows.borrow_mut().push(item.clone());
//!         Ok(CreateResult { type_name: "message", entity: item })
//!     }
//!
//!     async fn get(&self, _: &ExecutionContext, id: &str) -> Result<Option<Message>, CrudError> {
//!         Ok(self.rows.borrow().iter().find(|m| m.id == id).cloned())
//!     }
//!
//!     async fn update(&self, _: &ExecutionContext, id: &str, text: String) -> Result<UpdateResult<Message>, CrudError> {
//!         let mut rows = self.rows.borrow_mut();
//!         let m = rows.iter_mut().find(|m| m.id == id).ok_or(CrudError::NotFound)?;
//!         m.text = text;
//!         Ok(UpdateResult { type_name: "message", entity: m.clone() })
//!     }
//!
//!     async fn delete(&self, _: &ExecutionContext, id: &str) -> Result<DeleteResult<Message>, CrudError> {
//!         let mut rows = self.rows.borrow_mut();
//!         match rows.iter().position(|m| m.id == id) {
//!             Some(i) => Ok(DeleteResult { type_name: "message", entity: rows.remove(i), deleted: true }),
//!             None => {
//!                 let entity = Message { id: id.into(), channel: String::new(), text: String::new() };
//!                 Ok(DeleteResult { type_name: "message", entity, deleted: false })
//!             }
//!         }
//!     }
//!
//!     async fn list(&self, _: &ExecutionContext, o: &ListOptions) -> Result<ListResult<Message>, CrudError> {
//!         let entities = self.rows.borrow().iter().take(o.limit.unwrap_or(50)).cloned().collect();
//!         Ok(ListResult { type_name: "message", entities, next_page_token: None })
//!     }
//! }
//!
//! // The decorators: where each operation's result is published.
//! let in_channel = Recipient::new(
//!     Template::from_fn(|m: &Message| format!("/channels/{}/messages", m.channel)),
//!     Template::from_fn(|m: &Message| format!("/messages/{}", m.id)),
//! );
//! let recipients = Recipients::new()
//!     .created(in_channel.clone())
//!     .created(Recipient::new("/messages", "/messages").with_resource(|m: &Message| json!({ "id": m.id })))
//!     .deleted(in_channel);
//!
//! let bus = InMemoryBus::new();
//! let service = Realtime::new(MessageService::default(), bus.clone(), recipients);
//!
//! // A request context as the REST API builds it from a verified access token.
//! let user = shardcast::realtime::auth::AuthenticatedUser {
//!     id: "alice".into(),
//!     companies: vec!["acme".into()],
//!     expires_at_s: u64::MAX,
//!     claims: Default::default(),
//! };
//! let ctx = ExecutionContext::new(user, "req-1", Transport::Http);
//!
//! block_on(async {
//!     let msg = Message { id: "m1".into(), channel: "general".into(), text: "hello".into() };
//!     service.create(&ctx, msg).await.unwrap();
//!
//!     // Failures publish nothing; so does a delete that deleted nothing.
//!     let empty = Message { id: "m2".into(), channel: "general".into(), text: String::new() };
//!     assert!(service.create(&ctx, empty).await.is_err());
//!     assert!(!service.delete(&ctx, "nope").await.unwrap().deleted);
//!
//!     service.delete(&ctx, "m1").await.unwrap();
//! });
//!
//! let events = bus.take();
//! assert_eq!(events.len(), 3);
//! assert_eq!(events[0].action, ResourceAction::Created);
//! assert_eq!(events[0].room, "/channels/general/messages");
//! assert_eq!(events[0].path, "/messages/m1");
//! assert_eq!(events[0].resource, json!({ "id": "m1", "channel": "general", "text": "hello" }));
//! assert_eq!((events[1].room.as_str(), &events[1].resource), ("/messages", &json!({ "id": "m1" })));
//! assert_eq!((events[2].action, events[2].path.as_str()), (ResourceAction::Deleted, "/messages/m1"));
//!
//! // What a member of /channels/general/messages receives, encoded once for every member:
//! assert_eq!(
//!     events[0].encode_args(),
//!     r#"["realtime:resource",{"action":"created","room":"/channels/general/messages","type":"message","path":"/messages/m1","resource":{"id":"m1","channel":"general","text":"hello"}}]"#
//! );
//! ```

pub mod auth;
pub mod bus;
pub mod crud;
pub mod demo;
pub mod events;
pub mod live;
pub mod online;
pub mod presence;
pub mod protocol;
pub mod rest;
pub mod rooms;
