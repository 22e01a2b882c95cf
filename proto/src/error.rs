//! The one error type of the codec.

use crate::limits::Limit;

/// Why a decoder rejected its input. Every variant means "this peer sent something invalid": the caller closes
/// that one connection (HTTP 400 on polling). "Not enough bytes yet" is never an error; it is
/// [`Decoded::Partial`](crate::Decoded::Partial) or [`Progress::Partial`](crate::Progress::Partial).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configured limit was hit; `max` is its configured value.
    #[error("limit {limit} exceeded (max {max})")]
    LimitExceeded {
        /// Which [`Limits`](crate::Limits) field.
        limit: Limit,
        /// Its configured value.
        max: u64,
    },
    /// An Engine.IO packet (or a Socket.IO packet) with no bytes at all.
    #[error("empty packet")]
    EmptyPacket,
    /// The packet type character (Engine.IO `0`-`6`, Socket.IO `0`-`6`) is not a known type; carries the byte.
    #[error("unknown packet type {0:#04x}")]
    UnknownPacketType(u8),
    /// A binary websocket frame or binary polling packet that is not an Engine.IO `message` (v3 prefixes binary
    /// data with its packet type byte, which must be 4).
    #[error("binary data in a packet that is not a message")]
    BinaryNotMessage,
    /// Text that is not valid UTF-8.
    #[error("invalid UTF-8")]
    InvalidUtf8,
    /// A `b`-prefixed polling packet whose base64 does not decode.
    #[error("invalid base64 in a binary polling packet")]
    InvalidBase64,
    /// A polling payload with no packet at all (an empty body, or an empty packet between two `\x1e`).
    #[error("empty polling payload")]
    EmptyPayload,
    /// An Engine.IO v3 polling payload whose `<length>:` (text) or `<0|1><digits>\xff` (binary) header is
    /// malformed, or whose length splits a character.
    #[error("invalid length header in a v3 polling payload")]
    InvalidPayloadLength,
    /// The payload ended (the caller called `finish`) inside a packet.
    #[error("polling payload ends inside a packet")]
    UnexpectedEnd,
    /// A binary (`<type><count>-`) Socket.IO packet whose attachment count is missing or not a number.
    #[error("invalid attachment count")]
    InvalidAttachmentCount,
    /// Something other than an acknowledgement id or the JSON payload follows the namespace (`42abc["a"]`).
    #[error("invalid ack id")]
    InvalidAckId,
    /// An acknowledgement id on a packet type that cannot carry one (CONNECT, DISCONNECT, CONNECT_ERROR).
    #[error("unexpected ack id")]
    UnexpectedAckId,
    /// An ACK / BINARY_ACK without its acknowledgement id.
    #[error("missing ack id")]
    MissingAckId,
    /// The JSON data is not valid JSON; `offset` is the byte offset of the problem within the Socket.IO packet.
    #[error("invalid JSON at byte {offset}")]
    InvalidJson {
        /// Byte offset within the decoded text.
        offset: usize,
    },
    /// Valid JSON of the wrong shape for the packet type: an EVENT whose data is not a non-empty array starting
    /// with a string (`42{}`), an ACK whose data is not an array, a CONNECT whose data is not an object,
    /// a DISCONNECT with data, a missing mandatory payload.
    #[error("invalid payload for this packet type")]
    InvalidPayload,
    /// An EVENT whose name is reserved by Socket.IO (`connect`, `connect_error`, `disconnect`, `disconnecting`,
    /// `newListener`, `removeListener`).
    #[error("reserved event name")]
    ReservedEventName,
    /// A binary frame arrived while no binary Socket.IO packet was waiting for attachments.
    #[error("unexpected binary attachment")]
    UnexpectedAttachment,
    /// A text packet arrived while a binary Socket.IO packet was still waiting for attachments.
    #[error("text packet while waiting for binary attachments")]
    ExpectedAttachment,
    /// A `{"_placeholder":true,"num":N}` whose `num` is not an index of a received attachment.
    #[error("invalid attachment placeholder")]
    InvalidPlaceholder,
    /// A handshake (`open` packet) document without the expected fields.
    #[error("invalid handshake document")]
    InvalidHandshake,
}

impl Error {
    pub(crate) fn limit(limit: Limit, max: impl TryInto<u64>) -> Error {
        Error::LimitExceeded {
            limit,
            max: max.try_into().unwrap_or(u64::MAX),
        }
    }
}
