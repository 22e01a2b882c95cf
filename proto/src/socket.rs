//! Socket.IO packets (protocol v5 over Engine.IO v4, protocol v4 over Engine.IO v3): types, encoding, and the
//! stateful decoder that reassembles binary attachments.

use crate::error::Error;
use crate::json::{self, RawJson, ScanError};
use crate::limits::{Limit, Limits};

/// The Socket.IO protocol revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SioVersion {
    /// Protocol v4 (socket.io 1.x/2.x, over Engine.IO v3): the client is connected to `/` implicitly (the server
    /// sends `40` right after the handshake), CONNECT carries no auth payload (a namespace may carry a
    /// `?query`), CONNECT_ERROR's data is a plain JSON string.
    V4,
    /// Protocol v5 (socket.io 3.x/4.x, over Engine.IO v4): every namespace is connected explicitly with an
    /// optional auth object, CONNECT_ERROR's data is `{"message":...}`.
    V5,
}

impl SioVersion {
    /// True for v4: the server must send CONNECT for `/` without waiting for the client's.
    pub fn implicit_main_connect(self) -> bool {
        self == SioVersion::V4
    }
}

/// The seven Socket.IO packet types, as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// `0`
    Connect = 0,
    /// `1`
    Disconnect = 1,
    /// `2`
    Event = 2,
    /// `3`
    Ack = 3,
    /// `4` (called ERROR in protocol v4)
    ConnectError = 4,
    /// `5`
    BinaryEvent = 5,
    /// `6`
    BinaryAck = 6,
}

impl PacketType {
    /// From the wire character.
    pub fn from_char(c: u8) -> Option<PacketType> {
        Some(match c {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    /// The wire character.
    pub fn as_char(self) -> u8 {
        b'0' + self as u8
    }

    fn allows_ack_id(self) -> bool {
        matches!(
            self,
            PacketType::Event | PacketType::Ack | PacketType::BinaryEvent | PacketType::BinaryAck
        )
    }
}

/// Event names the reference implementation refuses to receive from a peer.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// One Socket.IO packet.
///
/// The data stays the peer's JSON text ([`RawJson`], validated and depth-checked): an EVENT decodes to its name
/// and the JSON array of its remaining arguments, nothing is parsed into a tree. Binary packets carry their
/// attachments in order; the JSON holds `{"_placeholder":true,"num":N}` where attachment `N` belongs
/// ([`RawJson::to_value`] puts them back in place). An EVENT or ACK with attachments is encoded as
/// BINARY_EVENT / BINARY_ACK; one without as EVENT / ACK (so `50-["a"]` decodes to an `Event` that re-encodes
/// as `2["a"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT. Client to server: optional auth object (v5). Server to client: `{"sid":...}` (v5) or none (v4).
    Connect {
        /// Namespace, `/` for the main one.
        nsp: String,
        /// The JSON object, if any.
        data: Option<RawJson>,
    },
    /// DISCONNECT from a namespace.
    Disconnect {
        /// Namespace.
        nsp: String,
    },
    /// EVENT or BINARY_EVENT.
    Event {
        /// Namespace.
        nsp: String,
        /// Acknowledgement id, if the sender wants an ACK.
        id: Option<u64>,
        /// The event name (the first array element, unescaped).
        name: String,
        /// The remaining arguments as a JSON array (`[]` if none).
        args: RawJson,
        /// Binary attachments, in `num` order.
        attachments: Vec<Vec<u8>>,
    },
    /// ACK or BINARY_ACK.
    Ack {
        /// Namespace.
        nsp: String,
        /// The id of the acknowledged EVENT.
        id: u64,
        /// The acknowledgement's arguments, a JSON array.
        args: RawJson,
        /// Binary attachments, in `num` order.
        attachments: Vec<Vec<u8>>,
    },
    /// CONNECT_ERROR (ERROR in v4). See [`Packet::connect_error`].
    ConnectError {
        /// Namespace.
        nsp: String,
        /// `{"message":...}` (v5) or a JSON string (v4).
        data: RawJson,
    },
}

impl Packet {
    /// An EVENT with `args` (a JSON array, `[]` for none) and no attachments.
    pub fn event(nsp: &str, name: &str, args: RawJson) -> Packet {
        Packet::Event {
            nsp: nsp.to_owned(),
            id: None,
            name: name.to_owned(),
            args,
            attachments: Vec::new(),
        }
    }

    /// A CONNECT_ERROR in the form the protocol revision expects: `{"message":"<message>"}` for v5, the JSON
    /// string `"<message>"` for v4.
    pub fn connect_error(version: SioVersion, nsp: &str, message: &str) -> Packet {
        let mut data = String::with_capacity(message.len() + 16);
        match version {
            SioVersion::V5 => {
                data.push_str("{\"message\":");
                json::write_str(&mut data, message);
                data.push('}');
            }
            SioVersion::V4 => json::write_str(&mut data, message),
        }
        Packet::ConnectError {
            nsp: nsp.to_owned(),
            data: RawJson::new_unchecked(data),
        }
    }

    /// A v5 CONNECT_ERROR carrying `data` beside its message: `{"message":"<message>","data":<data>}`.
    pub fn connect_error_with_data(nsp: &str, message: &str, data: &RawJson) -> Packet {
        let mut body = String::with_capacity(message.len() + data.as_str().len() + 24);
        body.push_str("{\"message\":");
        json::write_str(&mut body, message);
        body.push_str(",\"data\":");
        body.push_str(data.as_str());
        body.push('}');
        Packet::ConnectError {
            nsp: nsp.to_owned(),
            data: RawJson::new_unchecked(body),
        }
    }

    /// The wire type this packet encodes to.
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Connect { .. } => PacketType::Connect,
            Packet::Disconnect { .. } => PacketType::Disconnect,
            Packet::Event { attachments, .. } if attachments.is_empty() => PacketType::Event,
            Packet::Event { .. } => PacketType::BinaryEvent,
            Packet::Ack { attachments, .. } if attachments.is_empty() => PacketType::Ack,
            Packet::Ack { .. } => PacketType::BinaryAck,
            Packet::ConnectError { .. } => PacketType::ConnectError,
        }
    }

    /// The namespace.
    pub fn nsp(&self) -> &str {
        match self {
            Packet::Connect { nsp, .. }
            | Packet::Disconnect { nsp }
            | Packet::Event { nsp, .. }
            | Packet::Ack { nsp, .. }
            | Packet::ConnectError { nsp, .. } => nsp,
        }
    }

    /// The binary attachments (empty for non-binary packets).
    pub fn attachments(&self) -> &[Vec<u8>] {
        match self {
            Packet::Event { attachments, .. } | Packet::Ack { attachments, .. } => attachments,
            _ => &[],
        }
    }

    /// Appends the packet's text form (without the Engine.IO `4`) to `out`. Attachments are not written; send
    /// them as the following binary frames ([`crate::EncodedMessage`] does both).
    pub fn encode_into(&self, out: &mut String) {
        let kind = self.packet_type();
        out.push(kind.as_char() as char);
        let attachments = self.attachments().len();
        if attachments > 0 {
            out.push_str(&attachments.to_string());
            out.push('-');
        }
        let nsp = self.nsp();
        if nsp != "/" {
            out.push_str(nsp);
            out.push(',');
        }
        match self {
            Packet::Connect { data, .. } => {
                if let Some(d) = data {
                    out.push_str(d.as_str());
                }
            }
            Packet::Disconnect { .. } => {}
            Packet::Event { id, name, args, .. } => {
                if let Some(id) = id {
                    out.push_str(&id.to_string());
                }
                write_event_array(out, name, args.as_str());
            }
            Packet::Ack { id, args, .. } => {
                out.push_str(&id.to_string());
                out.push_str(args.as_str());
            }
            Packet::ConnectError { data, .. } => out.push_str(data.as_str()),
        }
    }

    /// The packet's text form (without the Engine.IO `4`).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut out);
        out
    }

    fn encoded_len_hint(&self) -> usize {
        let data = match self {
            Packet::Connect { data, .. } => data.as_ref().map_or(0, |d| d.as_str().len()),
            Packet::Disconnect { .. } => 0,
            Packet::Event { name, args, .. } => name.len() + args.as_str().len() + 4,
            Packet::Ack { args, .. } => args.as_str().len(),
            Packet::ConnectError { data, .. } => data.as_str().len(),
        };
        24 + self.nsp().len() + data
    }
}

/// Writes `[<name>` + the elements of the JSON array `args` + `]`.
pub(crate) fn write_event_array(out: &mut String, name: &str, args: &str) {
    out.push('[');
    json::write_str(out, name);
    // `args` is a JSON array: append its elements after the name.
    let b = args.as_bytes();
    let inner_start = json::skip_ws(b, 1);
    if b.get(inner_start) == Some(&b']') {
        out.push(']');
    } else {
        out.push(',');
        out.push_str(&args[inner_start..]);
    }
}

/// The outcome of feeding a frame to a [`Decoder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole packet.
    Complete(T),
    /// More frames are needed (a binary packet is waiting for attachments).
    Partial,
}

/// The stateful Socket.IO decoder of one connection: text packets in, packets out, with binary packets held
/// until their attachments (the following binary frames) have all arrived.
#[derive(Debug)]
pub struct Decoder {
    version: SioVersion,
    limits: Limits,
    /// Boxed: a decoder lives as long as its connection, and is almost never waiting (the packet is ~150 bytes).
    pending: Option<Box<Pending>>,
}

#[derive(Debug)]
struct Pending {
    packet: Packet,
    expected: usize,
    attachments: Vec<Vec<u8>>,
    bytes: usize,
}

impl Decoder {
    /// A decoder for a connection speaking `version`, enforcing `limits`.
    pub fn new(version: SioVersion, limits: Limits) -> Decoder {
        Decoder {
            version,
            limits,
            pending: None,
        }
    }

    /// True while a binary packet waits for attachments.
    pub fn is_waiting_for_attachments(&self) -> bool {
        self.pending.is_some()
    }

    /// Decodes the text of an Engine.IO `message` (without its `4`).
    pub fn decode_text(&mut self, text: &str) -> Result<Decoded<Packet>, Error> {
        if self.pending.is_some() {
            return Err(Error::ExpectedAttachment);
        }
        let (packet, expected) = decode_packet(self.version, text, &self.limits)?;
        if expected == 0 {
            Ok(Decoded::Complete(packet))
        } else {
            self.pending = Some(Box::new(Pending {
                packet,
                expected,
                attachments: Vec::with_capacity(expected),
                bytes: 0,
            }));
            Ok(Decoded::Partial)
        }
    }

    /// Takes the data of a binary Engine.IO message as the next attachment of the waiting packet.
    pub fn decode_binary(&mut self, data: &[u8]) -> Result<Decoded<Packet>, Error> {
        let pending = self.pending.as_mut().ok_or(Error::UnexpectedAttachment)?;
        pending.bytes = pending.bytes.saturating_add(data.len());
        if pending.bytes > self.limits.payload_bytes_max {
            self.pending = None;
            return Err(Error::limit(
                Limit::PayloadBytes,
                self.limits.payload_bytes_max,
            ));
        }
        pending.attachments.push(data.to_vec());
        if pending.attachments.len() < pending.expected {
            return Ok(Decoded::Partial);
        }
        let Some(pending) = self.pending.take() else {
            return Ok(Decoded::Partial);
        };
        let Pending {
            mut packet,
            attachments: received,
            ..
        } = *pending;
        if let Packet::Event { attachments, .. } | Packet::Ack { attachments, .. } = &mut packet {
            *attachments = received;
        }
        Ok(Decoded::Complete(packet))
    }
}

/// Decodes one Socket.IO packet's text. Returns the packet (attachments empty) and how many attachments must
/// follow. Stateless; [`Decoder`] is the stateful wrapper.
pub fn decode_packet(
    version: SioVersion,
    text: &str,
    limits: &Limits,
) -> Result<(Packet, usize), Error> {
    if text.len() > limits.payload_bytes_max {
        return Err(Error::limit(Limit::PayloadBytes, limits.payload_bytes_max));
    }
    let s = text.as_bytes();
    let &first = s.first().ok_or(Error::EmptyPacket)?;
    let kind = PacketType::from_char(first).ok_or(Error::UnknownPacketType(first))?;
    let mut i = 1;

    // <count>- for binary packets.
    let mut attachments = 0usize;
    if matches!(kind, PacketType::BinaryEvent | PacketType::BinaryAck) {
        let start = i;
        while let Some(c) = s.get(i).filter(|c| c.is_ascii_digit()) {
            attachments = attachments
                .saturating_mul(10)
                .saturating_add(usize::from(c - b'0'));
            i += 1;
        }
        if i == start || s.get(i) != Some(&b'-') {
            return Err(Error::InvalidAttachmentCount);
        }
        if attachments > limits.attachments_per_packet_max {
            return Err(Error::limit(
                Limit::AttachmentsPerPacket,
                limits.attachments_per_packet_max,
            ));
        }
        i += 1;
    }

    // <nsp>, (runs to the first comma, or to the end).
    let nsp = if s.get(i) == Some(&b'/') {
        let start = i;
        let end = s[i..]
            .iter()
            .position(|&c| c == b',')
            .map_or(s.len(), |p| i + p);
        if end - start > limits.namespace_bytes_max {
            return Err(Error::limit(
                Limit::NamespaceBytes,
                limits.namespace_bytes_max,
            ));
        }
        i = if end < s.len() { end + 1 } else { end };
        // `/` and `,` are ASCII: both ends are character boundaries.
        &text[start..end]
    } else {
        "/"
    };

    // <ack id>
    let mut id = None;
    if s.get(i).is_some_and(u8::is_ascii_digit) {
        if !kind.allows_ack_id() {
            return Err(Error::UnexpectedAckId);
        }
        let mut n: u64 = 0;
        while let Some(c) = s.get(i).filter(|c| c.is_ascii_digit()) {
            n = n.saturating_mul(10).saturating_add(u64::from(c - b'0'));
            i += 1;
        }
        if n > limits.ack_id_max {
            return Err(Error::limit(Limit::AckId, limits.ack_id_max));
        }
        id = Some(n);
    }

    // <JSON>
    let data = if i < s.len() {
        if kind.allows_ack_id()
            && id.is_none()
            && !matches!(s[i], b'[' | b'{' | b'"' | b' ' | b'\t' | b'\n' | b'\r')
        {
            // `42abc["a"]`: neither an ack id nor a payload follows the namespace.
            return Err(Error::InvalidAckId);
        }
        let end = json::scan_value(s, i, limits.json_depth_max)
            .map_err(|e| json::scan_error(e, 0, limits.json_depth_max))?;
        let end = json::skip_ws(s, end);
        if end != s.len() {
            return Err(Error::InvalidJson { offset: end });
        }
        Some((i, &text[i..]))
    } else {
        None
    };

    let nsp = nsp.to_owned();
    let packet = match kind {
        PacketType::Connect => {
            let data = match data {
                None => None,
                Some((start, d)) => {
                    if s[json::skip_ws(s, start)] != b'{' {
                        return Err(Error::InvalidPayload);
                    }
                    Some(RawJson::new_unchecked(d.to_owned()))
                }
            };
            Packet::Connect { nsp, data }
        }
        PacketType::Disconnect => {
            if data.is_some() {
                return Err(Error::InvalidPayload);
            }
            Packet::Disconnect { nsp }
        }
        PacketType::Event | PacketType::BinaryEvent => {
            let (start, _) = data.ok_or(Error::InvalidPayload)?;
            let (name, args) = split_event(text, start, limits)?;
            Packet::Event {
                nsp,
                id,
                name,
                args,
                attachments: Vec::new(),
            }
        }
        PacketType::Ack | PacketType::BinaryAck => {
            let id = id.ok_or(Error::MissingAckId)?;
            let (start, d) = data.ok_or(Error::InvalidPayload)?;
            if s[json::skip_ws(s, start)] != b'[' {
                return Err(Error::InvalidPayload);
            }
            Packet::Ack {
                nsp,
                id,
                args: RawJson::new_unchecked(d.to_owned()),
                attachments: Vec::new(),
            }
        }
        PacketType::ConnectError => {
            let (start, d) = data.ok_or(Error::InvalidPayload)?;
            let c = s[json::skip_ws(s, start)];
            let ok = match version {
                SioVersion::V5 => c == b'{' || c == b'"',
                SioVersion::V4 => true,
            };
            if !ok {
                return Err(Error::InvalidPayload);
            }
            Packet::ConnectError {
                nsp,
                data: RawJson::new_unchecked(d.to_owned()),
            }
        }
    };
    Ok((packet, attachments))
}

/// Splits a validated EVENT array starting at `text[start..]` into its name and the array of the other args.
fn split_event(text: &str, start: usize, limits: &Limits) -> Result<(String, RawJson), Error> {
    let s = text.as_bytes();
    let mut i = json::skip_ws(s, start);
    if s[i] != b'[' {
        return Err(Error::InvalidPayload);
    }
    i = json::skip_ws(s, i + 1);
    if s.get(i) != Some(&b'"') {
        // Empty array, or a first element that is not a string.
        return Err(Error::InvalidPayload);
    }
    let name_end = json::scan_string(s, i).map_err(|e| match e {
        ScanError::Invalid(o) => Error::InvalidJson { offset: o },
        ScanError::TooDeep => Error::limit(Limit::JsonDepth, limits.json_depth_max),
    })?;
    let raw_name = &text[i + 1..name_end - 1];
    let name = if raw_name.contains('\\') {
        serde_json::from_str::<String>(&text[i..name_end])
            .map_err(|_| Error::InvalidJson { offset: i })?
    } else {
        raw_name.to_owned()
    };
    if RESERVED_EVENTS.contains(&name.as_str()) {
        return Err(Error::ReservedEventName);
    }
    let j = json::skip_ws(s, name_end);
    // The array was validated: after the name comes `,` or `]`.
    let args = if s[j] == b',' {
        let mut a = String::with_capacity(s.len() - j);
        a.push('[');
        a.push_str(text[j + 1..].trim_end_matches([' ', '\t', '\n', '\r']));
        a
    } else {
        "[]".to_owned()
    };
    Ok((name, RawJson::new_unchecked(args)))
}

/// Splits a v4 CONNECT namespace into the namespace and its query (`/admin?token=1` -> (`/admin`, `token=1`)).
pub fn split_namespace_query(nsp: &str) -> (&str, Option<&str>) {
    match nsp.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (nsp, None),
    }
}
