//! Every bound the decoders enforce, in one configurable struct.

/// The limits every decoder of this crate enforces on client input.
///
/// Each field is checked as bytes arrive; hitting one yields
/// [`Error::LimitExceeded`](crate::Error::LimitExceeded) carrying the [`Limit`] that was hit and its configured
/// maximum, so the caller can log it and close that one connection. The defaults are "big enough for normal use,
/// small enough to stop memory eating by a malicious client".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest polling request body, websocket message, or sum of the binary attachments of one Socket.IO packet,
    /// in bytes. Default 1,000,000, the `maxPayload` the JavaScript server advertises in its handshake.
    pub payload_bytes_max: usize,
    /// Most Engine.IO packets in one polling payload. Default 1,000.
    pub packets_per_payload_max: usize,
    /// Most binary attachments one Socket.IO packet may announce (`<count>-`). Default 16.
    pub attachments_per_packet_max: usize,
    /// Largest acknowledgement id accepted, inclusive. Default 2^53 - 1, the largest integer a JavaScript peer can
    /// represent exactly.
    pub ack_id_max: u64,
    /// Longest Socket.IO namespace (including its leading `/`), in bytes. Default 256.
    pub namespace_bytes_max: usize,
    /// Deepest nesting of JSON arrays and objects in a packet's data; the outer array of an event counts as 1.
    /// Default 32.
    pub json_depth_max: usize,
}

impl Limits {
    /// The defaults documented on each field.
    pub const DEFAULT: Limits = Limits {
        payload_bytes_max: 1_000_000,
        packets_per_payload_max: 1_000,
        attachments_per_packet_max: 16,
        ack_id_max: (1 << 53) - 1,
        namespace_bytes_max: 256,
        json_depth_max: 32,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Which field of [`Limits`] a decoder hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::payload_bytes_max`].
    PayloadBytes,
    /// [`Limits::packets_per_payload_max`].
    PacketsPerPayload,
    /// [`Limits::attachments_per_packet_max`].
    AttachmentsPerPacket,
    /// [`Limits::ack_id_max`].
    AckId,
    /// [`Limits::namespace_bytes_max`].
    NamespaceBytes,
    /// [`Limits::json_depth_max`].
    JsonDepth,
}

impl Limit {
    /// The name of the [`Limits`] field, for logs.
    pub fn field_name(self) -> &'static str {
        match self {
            Limit::PayloadBytes => "payload_bytes_max",
            Limit::PacketsPerPayload => "packets_per_payload_max",
            Limit::AttachmentsPerPacket => "attachments_per_packet_max",
            Limit::AckId => "ack_id_max",
            Limit::NamespaceBytes => "namespace_bytes_max",
            Limit::JsonDepth => "json_depth_max",
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.field_name())
    }
}
