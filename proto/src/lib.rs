//! Sans-IO Engine.IO (v3, v4) and Socket.IO (v4, v5) codec: bytes in, packets out; packets in, bytes out.
//!
//! **Architecture Invariant:** this crate knows nothing about sockets, runtimes or databases. It is the only
//! place in shardcast that knows the wire format. Client input never panics it: every problem is an [`Error`],
//! every bound a field of [`Limits`], and "not enough bytes yet" is a normal outcome ([`Decoded::Partial`],
//! [`Progress::Partial`]), never an error.
//!
//! # Layout
//!
//! - [`limits`]: [`Limits`] (every bound a decoder enforces, with defaults) and [`Limit`] (which one was hit).
//! - [`error`]: [`Error`], the one error type; [`Error::LimitExceeded`] carries the [`Limit`] and its maximum.
//! - [`engine`]: Engine.IO. [`EioVersion`], [`engine::PacketType`], [`engine::Packet`] (borrowed from a
//!   websocket frame: [`engine::Packet::decode_text`], [`engine::Packet::decode_binary`];
//!   [`engine::Packet::encode`] to a [`WsFrame`]), [`Frame`] (an encoded packet as the payload encoder takes it),
//!   [`Handshake`] (the `open` document: [`Handshake::to_packet_text`], [`Handshake::parse`]).
//! - [`payload`]: HTTP long-polling bodies of both revisions. [`encode_payload`] (with [`PayloadForm`] choosing
//!   text or the v3 binary form), [`PayloadDecoder`] (streaming: `push` chunks, `finish`, `next_packet` until
//!   [`Progress::Finished`]), [`decode_payload`] (whole body), [`utf16_len`].
//! - [`socket`]: Socket.IO. [`SioVersion`], [`socket::PacketType`] (the seven wire types), [`socket::Packet`]
//!   (`Connect`, `Disconnect`, `Event { name, args, .. }`, `Ack`, `ConnectError`; binary packets carry
//!   `attachments`), [`socket::Packet::encode`], [`socket::Decoder`] (stateful: text frames and binary
//!   attachments in, [`Decoded`] out), [`socket::decode_packet`] (stateless, one text packet).
//! - [`json`]: [`RawJson`] (validated JSON text kept as sent: `parse::<T>()`, `to_value(attachments)`) and
//!   [`Value`] (JSON with binary buffers: `split_binary()` makes placeholders and attachments).
//! - [`message`]: [`EncodedMessage`], a Socket.IO packet encoded once as shared bytes (websocket text frame for
//!   v3 and v4, binary frames per revision, polling frames) for broadcasting to many recipients.
//!
//! # Receiving (server)
//!
//! ```
//! use shardcast_proto::{engine, socket, EioVersion, Limits, Decoded};
//!
//! let version = EioVersion::V4;
//! let mut sio = socket::Decoder::new(version.socketio(), Limits::default());
//! // A websocket text frame:
//! match engine::Packet::decode_text("42[\"hello\",{\"a\":1}]")? {
//!     engine::Packet::Message(text) => match sio.decode_text(&text)? {
//!         Decoded::Complete(socket::Packet::Event { name, args, .. }) => {
//!             assert_eq!(name, "hello");
//!             assert_eq!(args.as_str(), "[{\"a\":1}]");
//!         }
//!         other => panic!("{other:?}"),
//!     },
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), shardcast_proto::Error>(())
//! ```
//!
//! # Broadcasting (server)
//!
//! ```
//! use shardcast_proto::{EncodedMessage, EioVersion};
//!
//! let msg = EncodedMessage::event("/", "realtime:resource", &serde_json::json!({"action": "created"})).unwrap();
//! assert_eq!(&**msg.ws_text(), r#"42["realtime:resource",{"action":"created"}]"#);
//! // Every recipient gets a clone (three Arc clones) of the same bytes.
//! assert!(msg.ws_binary(EioVersion::V3).is_empty());
//! ```

pub mod engine;
pub mod error;
pub mod json;
pub mod limits;
pub mod message;
pub mod payload;
pub mod socket;

pub use engine::{EioVersion, Frame, Handshake, WsFrame};
pub use error::Error;
pub use json::{RawJson, Value};
pub use limits::{Limit, Limits};
pub use message::EncodedMessage;
pub use payload::{
    PayloadDecoder, PayloadForm, Progress, decode_payload, encode_payload, utf16_len,
};
pub use socket::{Decoded, SioVersion};
