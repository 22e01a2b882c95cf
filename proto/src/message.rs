//! Encode once, send to many: a Socket.IO packet wrapped in its Engine.IO `message`, as shared bytes.

use std::sync::Arc;

use crate::engine::{EioVersion, Frame};
use crate::json;
use crate::payload::utf16_len;
use crate::socket::Packet;

/// One Socket.IO packet, encoded once, ready to be sent to any number of recipients of either protocol revision
/// without re-encoding: cloning it clones three `Arc`s.
///
/// - websocket: [`ws_text`](EncodedMessage::ws_text) is the text frame (`4` + packet), the same for v3 and v4;
///   then one binary frame per attachment ([`ws_binary`](EncodedMessage::ws_binary): raw for v4, prefixed with
///   the type byte 4 for v3).
/// - polling: [`frames`](EncodedMessage::frames) feeds [`encode_payload`](crate::encode_payload); the UTF-16 length
///   of the text, which v3 text payloads prefix, is computed once ([`utf16_len`](EncodedMessage::utf16_len)) for
///   callers that write v3 payloads themselves.
///
/// It is `Send + Sync`, so it can cross between shards on a queue and be held by every local recipient's
/// outgoing buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedMessage {
    text: Arc<str>,
    utf16_len: usize,
    attachments: Arc<[Arc<[u8]>]>,
    /// v3 websocket binary frames (each attachment behind a 4 byte), built once when there are attachments.
    attachments_v3: Arc<[Arc<[u8]>]>,
}

impl EncodedMessage {
    /// Encodes `packet` (text and attachments).
    pub fn new(packet: &Packet) -> EncodedMessage {
        let mut text = String::with_capacity(64);
        text.push('4');
        packet.encode_into(&mut text);
        let attachments: Vec<Arc<[u8]>> = packet
            .attachments()
            .iter()
            .map(|a| Arc::from(a.as_slice()))
            .collect();
        EncodedMessage::from_parts(text, attachments)
    }

    /// An EVENT `42<nsp,>["<name>",<arg>]` whose single argument is serialized straight into the frame (no
    /// intermediate packet, one allocation): the server's broadcast path, e.g. `realtime:resource`.
    pub fn event<T: serde::Serialize + ?Sized>(
        nsp: &str,
        name: &str,
        arg: &T,
    ) -> Result<EncodedMessage, serde_json::Error> {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(b"42");
        if nsp != "/" {
            buf.extend_from_slice(nsp.as_bytes());
            buf.push(b',');
        }
        let mut name_json = String::with_capacity(name.len() + 2);
        json::write_str(&mut name_json, name);
        buf.push(b'[');
        buf.extend_from_slice(name_json.as_bytes());
        buf.push(b',');
        serde_json::to_writer(&mut buf, arg)?;
        buf.push(b']');
        // serde_json writes valid UTF-8 and so do the lines above.
        let text =
            String::from_utf8(buf).map_err(<serde_json::Error as serde::ser::Error>::custom)?;
        Ok(EncodedMessage::from_parts(text, Vec::new()))
    }

    /// An EVENT with `args`, the JSON text of an array of arguments (`[]` for none), already encoded.
    pub fn event_raw(nsp: &str, name: &str, args: &json::RawJson) -> EncodedMessage {
        let mut text = String::with_capacity(8 + nsp.len() + name.len() + args.as_str().len());
        text.push_str("42");
        if nsp != "/" {
            text.push_str(nsp);
            text.push(',');
        }
        crate::socket::write_event_array(&mut text, name, args.as_str());
        EncodedMessage::from_parts(text, Vec::new())
    }

    fn from_parts(text: String, attachments: Vec<Arc<[u8]>>) -> EncodedMessage {
        let attachments_v3: Vec<Arc<[u8]>> = attachments
            .iter()
            .map(|a| {
                let mut v = Vec::with_capacity(a.len() + 1);
                v.push(4u8);
                v.extend_from_slice(a);
                Arc::from(v)
            })
            .collect();
        EncodedMessage {
            utf16_len: utf16_len(&text),
            text: Arc::from(text),
            attachments: Arc::from(attachments),
            attachments_v3: Arc::from(attachments_v3),
        }
    }

    /// The websocket text frame: `4` + the Socket.IO packet (same for v3 and v4).
    pub fn ws_text(&self) -> &Arc<str> {
        &self.text
    }

    /// The websocket binary frames that follow the text frame, one per attachment, for `version`.
    pub fn ws_binary(&self, version: EioVersion) -> &[Arc<[u8]>] {
        match version {
            EioVersion::V4 => &self.attachments,
            EioVersion::V3 => &self.attachments_v3,
        }
    }

    /// The attachments' data (no prefix).
    pub fn attachments(&self) -> &[Arc<[u8]>] {
        &self.attachments
    }

    /// The UTF-16 length of [`ws_text`](EncodedMessage::ws_text), for v3 text payloads.
    pub fn utf16_len(&self) -> usize {
        self.utf16_len
    }

    /// The message as polling frames: the text packet, then each attachment.
    pub fn frames(&self) -> impl Iterator<Item = Frame<'_>> {
        std::iter::once(Frame::Text(&self.text))
            .chain(self.attachments.iter().map(|a| Frame::Binary(a)))
    }
}
