//! Engine.IO packets (v3 and v4), one per websocket frame, and the handshake document.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The Engine.IO protocol revision: `EIO=3` (socket.io-client 2.x) or `EIO=4` (socket.io-client 3.x and 4.x).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EioVersion {
    /// Engine.IO v3: the client pings, polling payloads are length-prefixed, binary websocket frames start with the
    /// packet type byte `4`. Carries Socket.IO protocol v4.
    V3,
    /// Engine.IO v4: the server pings, polling payloads are `\x1e`-separated, binary frames are raw. Carries
    /// Socket.IO protocol v5.
    V4,
}

impl EioVersion {
    /// From the `EIO` query parameter's value (`"3"` or `"4"`); anything else is `None` (HTTP 400).
    pub fn from_query(value: &str) -> Option<EioVersion> {
        match value {
            "3" => Some(EioVersion::V3),
            "4" => Some(EioVersion::V4),
            _ => None,
        }
    }

    /// The Socket.IO revision this Engine.IO revision carries.
    pub fn socketio(self) -> crate::SioVersion {
        match self {
            EioVersion::V3 => crate::SioVersion::V4,
            EioVersion::V4 => crate::SioVersion::V5,
        }
    }
}

/// The seven Engine.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// `0`: handshake.
    Open = 0,
    /// `1`: close the transport.
    Close = 1,
    /// `2`: heartbeat (server to client in v4, client to server in v3) and upgrade probe.
    Ping = 2,
    /// `3`: heartbeat answer and probe answer.
    Pong = 3,
    /// `4`: a message (here: a Socket.IO packet or a binary attachment).
    Message = 4,
    /// `5`: upgrade complete.
    Upgrade = 5,
    /// `6`: no-op, ends a pending poll during an upgrade.
    Noop = 6,
}

impl PacketType {
    /// The type's wire character (`b'0'`..`b'6'`).
    pub fn as_char(self) -> u8 {
        b'0' + self as u8
    }

    /// From the wire character.
    pub fn from_char(c: u8) -> Option<PacketType> {
        Some(match c {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }
}

/// One Engine.IO packet. Borrowed from the input where it can be (a decoded websocket frame costs no copy);
/// [`Packet::into_owned`] detaches it.
///
/// Data after the type character of `close`, `upgrade` and `noop` is accepted and dropped, as the reference
/// parser does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0` + handshake JSON (see [`Handshake`]).
    Open(Cow<'a, str>),
    /// `1`
    Close,
    /// `2` + optional data (`2probe` during an upgrade).
    Ping(Cow<'a, str>),
    /// `3` + optional data (`3probe`).
    Pong(Cow<'a, str>),
    /// `4` + text (a Socket.IO packet).
    Message(Cow<'a, str>),
    /// A binary message (a Socket.IO attachment).
    Binary(Cow<'a, [u8]>),
    /// `5`
    Upgrade,
    /// `6`
    Noop,
}

impl<'a> Packet<'a> {
    /// The packet's type (`Binary` is a `Message`).
    pub fn packet_type(&self) -> PacketType {
        match self {
            Packet::Open(_) => PacketType::Open,
            Packet::Close => PacketType::Close,
            Packet::Ping(_) => PacketType::Ping,
            Packet::Pong(_) => PacketType::Pong,
            Packet::Message(_) | Packet::Binary(_) => PacketType::Message,
            Packet::Upgrade => PacketType::Upgrade,
            Packet::Noop => PacketType::Noop,
        }
    }

    /// Decodes a text packet: a websocket text frame, or one packet of a polling payload. Same for v3 and v4.
    pub fn decode_text(text: &'a str) -> Result<Packet<'a>, Error> {
        let &first = text.as_bytes().first().ok_or(Error::EmptyPacket)?;
        let kind = PacketType::from_char(first).ok_or(Error::UnknownPacketType(first))?;
        // The type character is ASCII, so index 1 is a character boundary.
        let data = &text[1..];
        Ok(match kind {
            PacketType::Open => Packet::Open(Cow::Borrowed(data)),
            PacketType::Close => Packet::Close,
            PacketType::Ping => Packet::Ping(Cow::Borrowed(data)),
            PacketType::Pong => Packet::Pong(Cow::Borrowed(data)),
            PacketType::Message => Packet::Message(Cow::Borrowed(data)),
            PacketType::Upgrade => Packet::Upgrade,
            PacketType::Noop => Packet::Noop,
        })
    }

    /// Decodes a binary websocket frame: v4 frames are the data itself; v3 frames start with the packet type
    /// byte, which must be 4 (message).
    pub fn decode_binary(version: EioVersion, frame: &'a [u8]) -> Result<Packet<'a>, Error> {
        match version {
            EioVersion::V4 => Ok(Packet::Binary(Cow::Borrowed(frame))),
            EioVersion::V3 => match frame.split_first() {
                None => Err(Error::EmptyPacket),
                Some((4, data)) => Ok(Packet::Binary(Cow::Borrowed(data))),
                Some((&t, _)) if t <= 6 => Err(Error::BinaryNotMessage),
                Some((&t, _)) => Err(Error::UnknownPacketType(t)),
            },
        }
    }

    /// Encodes the packet as one websocket frame of protocol `version`.
    pub fn encode(&self, version: EioVersion) -> WsFrame {
        match self {
            Packet::Binary(data) => WsFrame::Binary(ws_binary(version, data)),
            _ => {
                let mut out = String::new();
                self.write_text(&mut out);
                WsFrame::Text(out)
            }
        }
    }

    /// Appends the text form (`<type>[<data>]`) of a non-binary packet to `out`; for `Binary` nothing is written
    /// and `false` is returned.
    pub fn write_text(&self, out: &mut String) -> bool {
        let (kind, data): (PacketType, &str) = match self {
            Packet::Open(d) => (PacketType::Open, &**d),
            Packet::Close => (PacketType::Close, ""),
            Packet::Ping(d) => (PacketType::Ping, &**d),
            Packet::Pong(d) => (PacketType::Pong, &**d),
            Packet::Message(d) => (PacketType::Message, &**d),
            Packet::Upgrade => (PacketType::Upgrade, ""),
            Packet::Noop => (PacketType::Noop, ""),
            Packet::Binary(_) => return false,
        };
        out.reserve(1 + data.len());
        out.push(kind.as_char() as char);
        out.push_str(data);
        true
    }

    /// The borrowed [`Frame`] for a polling payload; text packets are encoded into `scratch` first.
    pub fn as_frame<'s>(&'s self, scratch: &'s mut String) -> Frame<'s> {
        match self {
            Packet::Binary(data) => Frame::Binary(data),
            _ => {
                scratch.clear();
                self.write_text(scratch);
                Frame::Text(scratch)
            }
        }
    }

    /// Detaches the packet from its input.
    pub fn into_owned(self) -> Packet<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        match self {
            Packet::Open(d) => Packet::Open(own(d)),
            Packet::Close => Packet::Close,
            Packet::Ping(d) => Packet::Ping(own(d)),
            Packet::Pong(d) => Packet::Pong(own(d)),
            Packet::Message(d) => Packet::Message(own(d)),
            Packet::Binary(d) => Packet::Binary(Cow::Owned(d.into_owned())),
            Packet::Upgrade => Packet::Upgrade,
            Packet::Noop => Packet::Noop,
        }
    }
}

/// A websocket frame to send, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(String),
    /// A binary frame (v3: already prefixed with the type byte 4).
    Binary(Vec<u8>),
}

/// One already-encoded Engine.IO packet, borrowed, as the polling payload encoder takes it.
///
/// `Text` is the whole text packet including its type character (`4...`, `2`, `3probe`, `6`, `0{...}`);
/// `Binary` is the data of a binary message, without any prefix (the encoders add what each form needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text packet, type character included.
    Text(&'a str),
    /// The data of a binary message.
    Binary(&'a [u8]),
}

/// The JSON body of the reference server's HTTP error answers: `{"code":<code>,"message":"<message>"}`
/// (`{"code":1,"message":"Session ID unknown"}`). The server answers its plain HTTP errors in the same shape.
pub fn error_body(code: u16, message: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(message.len() + 24);
    let _ = write!(out, "{{\"code\":{code},\"message\":");
    crate::json::write_str(&mut out, message);
    out.push('}');
    out
}

/// The binary websocket frame for message data `data`: as is for v4, prefixed with the type byte 4 for v3.
pub fn ws_binary(version: EioVersion, data: &[u8]) -> Vec<u8> {
    let prefix = ws_binary_prefix(version);
    let mut out = Vec::with_capacity(prefix.len() + data.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(data);
    out
}

/// What a binary websocket frame of protocol `version` carries before the message data: nothing for v4, the
/// packet type byte 4 (message) for v3. For writers that frame the data in place (see [`ws_binary`]).
pub fn ws_binary_prefix(version: EioVersion) -> &'static [u8] {
    match version {
        EioVersion::V4 => &[],
        EioVersion::V3 => &[4],
    }
}

/// The handshake document carried by the `open` packet: `0{"sid":...,"upgrades":[...],"pingInterval":...,
/// "pingTimeout":...,"maxPayload":...}`. `maxPayload` is absent in v3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The session id.
    pub sid: String,
    /// Transports the client may upgrade to: `["websocket"]` on polling, `[]` on a websocket-only session.
    /// (Some v3 servers omit it on websocket-only sessions; parsing then gives `[]`.)
    #[serde(default)]
    pub upgrades: Vec<String>,
    /// Heartbeat period, milliseconds.
    #[serde(rename = "pingInterval")]
    pub ping_interval_ms: u64,
    /// Heartbeat answer deadline, milliseconds.
    #[serde(rename = "pingTimeout")]
    pub ping_timeout_ms: u64,
    /// The largest polling payload the server accepts, bytes (v4 only).
    #[serde(
        rename = "maxPayload",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub max_payload_bytes: Option<u64>,
}

impl Handshake {
    /// The handshake JSON document.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(128);
        out.push_str("{\"sid\":");
        crate::json::write_str(&mut out, &self.sid);
        out.push_str(",\"upgrades\":[");
        for (i, u) in self.upgrades.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            crate::json::write_str(&mut out, u);
        }
        out.push_str("],\"pingInterval\":");
        out.push_str(&self.ping_interval_ms.to_string());
        out.push_str(",\"pingTimeout\":");
        out.push_str(&self.ping_timeout_ms.to_string());
        if let Some(max) = self.max_payload_bytes {
            out.push_str(",\"maxPayload\":");
            out.push_str(&max.to_string());
        }
        out.push('}');
        out
    }

    /// The whole `open` packet text: `0` + [`Handshake::to_json`].
    pub fn to_packet_text(&self) -> String {
        let mut out = String::from("0");
        out.push_str(&self.to_json());
        out
    }

    /// Parses the JSON document (the data of an `open` packet), for clients.
    pub fn parse(json: &str) -> Result<Handshake, Error> {
        serde_json::from_str(json).map_err(|_| Error::InvalidHandshake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_the_reference_servers() {
        assert_eq!(
            error_body(1, "Session ID unknown"),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(
            error_body(413, "a \"quoted\"\nline"),
            r#"{"code":413,"message":"a \"quoted\"\nline"}"#
        );
    }
}
