//! HTTP long-polling payloads: several Engine.IO packets in one request or response body.
//!
//! - v4: packets joined by `\x1e`; a binary message is `b` + base64 of its data.
//! - v3 text form: `<length>:<packet>` repeated, where length counts UTF-16 code units as JavaScript's
//!   `String.length` does; a binary message is `b4` + base64. An empty payload is `0:`.
//! - v3 binary form (`Content-Type: application/octet-stream`, for XHR2 clients without `b64=1`):
//!   `<0 text|1 binary><length as one byte per decimal digit>\xff<packet>` repeated; text lengths count UTF-8
//!   bytes, binary packets start with the type byte 4 which the length includes. (The v3 protocol document's
//!   example omits that byte; the reference implementation, which clients run, writes it.)

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::engine::{EioVersion, Frame, Packet};
use crate::error::Error;
use crate::limits::{Limit, Limits};

/// The two body forms of a polling payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadForm {
    /// Text (`text/plain; charset=UTF-8`): every v4 payload, and v3 payloads without binary or for `b64=1` clients.
    Text,
    /// The v3 binary form (`application/octet-stream`).
    Binary,
}

impl PayloadForm {
    /// The form of a received body, from its `Content-Type` (v4 bodies are always text).
    pub fn from_content_type(version: EioVersion, content_type: Option<&str>) -> PayloadForm {
        match (version, content_type) {
            (EioVersion::V3, Some(ct))
                if ct.trim_start().starts_with("application/octet-stream") =>
            {
                PayloadForm::Binary
            }
            _ => PayloadForm::Text,
        }
    }

    /// The form to send `frames` in: binary only for a v3 client that supports binary (no `b64=1` in its query)
    /// when at least one frame is binary.
    pub fn for_frames(
        version: EioVersion,
        supports_binary: bool,
        frames: &[Frame<'_>],
    ) -> PayloadForm {
        if version == EioVersion::V3
            && supports_binary
            && frames.iter().any(|f| matches!(f, Frame::Binary(_)))
        {
            PayloadForm::Binary
        } else {
            PayloadForm::Text
        }
    }

    /// The `Content-Type` header value for a body of this form.
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadForm::Text => "text/plain; charset=UTF-8",
            PayloadForm::Binary => "application/octet-stream",
        }
    }
}

/// The number of UTF-16 code units of `s` (JavaScript's `s.length`), the unit of v3 text payload lengths.
pub fn utf16_len(s: &str) -> usize {
    s.bytes()
        .map(|b| usize::from((b & 0xC0) != 0x80) + usize::from(b >= 0xF0))
        .sum()
}

/// Appends the polling payload carrying `frames` to `out`.
pub fn encode_payload(
    version: EioVersion,
    form: PayloadForm,
    frames: &[Frame<'_>],
    out: &mut Vec<u8>,
) {
    match (version, form) {
        (EioVersion::V4, _) => {
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    out.push(0x1e);
                }
                match frame {
                    Frame::Text(t) => out.extend_from_slice(t.as_bytes()),
                    Frame::Binary(b) => {
                        out.push(b'b');
                        push_base64(out, b);
                    }
                }
            }
        }
        (EioVersion::V3, PayloadForm::Text) => {
            if frames.is_empty() {
                out.extend_from_slice(b"0:");
            }
            for frame in frames {
                match frame {
                    Frame::Text(t) => {
                        out.extend_from_slice(utf16_len(t).to_string().as_bytes());
                        out.push(b':');
                        out.extend_from_slice(t.as_bytes());
                    }
                    Frame::Binary(b) => {
                        let len = 2 + base64::encoded_len(b.len(), true).unwrap_or(usize::MAX);
                        out.extend_from_slice(len.to_string().as_bytes());
                        out.extend_from_slice(b":b4");
                        push_base64(out, b);
                    }
                }
            }
        }
        (EioVersion::V3, PayloadForm::Binary) => {
            for frame in frames {
                let (flag, len) = match frame {
                    Frame::Text(t) => (0u8, t.len()),
                    Frame::Binary(b) => (1u8, b.len() + 1),
                };
                out.push(flag);
                out.extend(len.to_string().bytes().map(|d| d - b'0'));
                out.push(0xff);
                match frame {
                    Frame::Text(t) => out.extend_from_slice(t.as_bytes()),
                    Frame::Binary(b) => {
                        out.push(4);
                        out.extend_from_slice(b);
                    }
                }
            }
        }
    }
}

fn push_base64(out: &mut Vec<u8>, data: &[u8]) {
    let mut s = String::new();
    BASE64.encode_string(data, &mut s);
    out.extend_from_slice(s.as_bytes());
}

/// The outcome of asking a [`PayloadDecoder`] for its next packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress<T> {
    /// The next packet.
    Complete(T),
    /// More bytes are needed (push them, or call [`PayloadDecoder::finish`] when the body has ended).
    Partial,
    /// The body has ended and every packet has been returned.
    Finished,
}

/// Decodes a polling request body as it streams in: [`push`](PayloadDecoder::push) bytes as they arrive,
/// [`finish`](PayloadDecoder::finish) at the end of the body, and take packets with
/// [`next_packet`](PayloadDecoder::next_packet) until it says [`Progress::Finished`]. Gives the same packets for
/// every split of the same body.
#[derive(Debug)]
pub struct PayloadDecoder {
    version: EioVersion,
    form: PayloadForm,
    limits: Limits,
    buf: Vec<u8>,
    /// Start of the first byte not yet returned as a packet.
    pos: usize,
    /// v4: where to resume the search for `\x1e`.
    search_from: usize,
    /// v3 text: the packet being measured.
    v3: Option<V3Text>,
    /// v3: a length header has been read (so an empty body is told apart from `0:`).
    seen_header: bool,
    finished: bool,
    done: bool,
    packets: usize,
}

#[derive(Debug, Clone, Copy)]
struct V3Text {
    /// First byte of the packet.
    start: usize,
    /// UTF-16 units announced.
    units_needed: usize,
    /// Bytes measured so far end here.
    scanned_to: usize,
    /// UTF-16 units measured so far.
    units: usize,
}

impl PayloadDecoder {
    /// A decoder for one body of `form`, speaking `version`, enforcing `limits`.
    pub fn new(version: EioVersion, form: PayloadForm, limits: Limits) -> PayloadDecoder {
        PayloadDecoder {
            version,
            form,
            limits,
            buf: Vec::new(),
            pos: 0,
            search_from: 0,
            v3: None,
            seen_header: false,
            finished: false,
            done: false,
            packets: 0,
        }
    }

    /// Appends the next bytes of the body. Fails once the body exceeds
    /// [`Limits::payload_bytes_max`](crate::Limits::payload_bytes_max).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), Error> {
        if self.buf.len() + chunk.len() > self.limits.payload_bytes_max {
            return Err(Error::limit(
                Limit::PayloadBytes,
                self.limits.payload_bytes_max,
            ));
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// Marks the end of the body.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// The next packet, [`Progress::Partial`] if more bytes are needed, or [`Progress::Finished`].
    pub fn next_packet(&mut self) -> Result<Progress<Packet<'static>>, Error> {
        if self.done {
            return Ok(Progress::Finished);
        }
        match (self.version, self.form) {
            (EioVersion::V4, _) => self.next_v4(),
            (EioVersion::V3, PayloadForm::Text) => self.next_v3_text(),
            (EioVersion::V3, PayloadForm::Binary) => self.next_v3_binary(),
        }
    }

    fn count_packet(&mut self) -> Result<(), Error> {
        self.packets += 1;
        if self.packets > self.limits.packets_per_payload_max {
            return Err(Error::limit(
                Limit::PacketsPerPayload,
                self.limits.packets_per_payload_max,
            ));
        }
        Ok(())
    }

    fn next_v4(&mut self) -> Result<Progress<Packet<'static>>, Error> {
        let end = match self.buf[self.search_from..].iter().position(|&b| b == 0x1e) {
            Some(k) => self.search_from + k,
            None if !self.finished => {
                self.search_from = self.buf.len();
                return Ok(Progress::Partial);
            }
            None => {
                if self.buf.is_empty() {
                    return Err(Error::EmptyPayload);
                }
                self.done = true;
                self.buf.len()
            }
        };
        let start = self.pos;
        self.pos = (end + 1).min(self.buf.len());
        self.search_from = self.pos;
        self.count_packet()?;
        let segment = &self.buf[start..end];
        let packet = match segment.split_first() {
            None => return Err(Error::EmptyPacket),
            Some((b'b', b64)) => Packet::Binary(Cow::Owned(
                BASE64.decode(b64).map_err(|_| Error::InvalidBase64)?,
            )),
            Some(_) => {
                let text = std::str::from_utf8(segment).map_err(|_| Error::InvalidUtf8)?;
                Packet::decode_text(text)?.into_owned()
            }
        };
        Ok(Progress::Complete(packet))
    }

    fn next_v3_text(&mut self) -> Result<Progress<Packet<'static>>, Error> {
        loop {
            let mut msg = match self.v3 {
                Some(m) => m,
                None => {
                    // `<digits>:`
                    let rest = &self.buf[self.pos..];
                    let Some(colon) = rest.iter().position(|&b| !b.is_ascii_digit()) else {
                        if !self.finished {
                            return Ok(Progress::Partial);
                        }
                        if rest.is_empty() {
                            if !self.seen_header {
                                return Err(Error::EmptyPayload);
                            }
                            self.done = true;
                            return Ok(Progress::Finished);
                        }
                        return Err(Error::UnexpectedEnd);
                    };
                    if rest[colon] != b':' || colon == 0 || colon > 20 {
                        return Err(Error::InvalidPayloadLength);
                    }
                    let n = rest[..colon].iter().fold(0usize, |n, &d| {
                        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
                    });
                    if n > self.limits.payload_bytes_max {
                        return Err(Error::limit(
                            Limit::PayloadBytes,
                            self.limits.payload_bytes_max,
                        ));
                    }
                    let start = self.pos + colon + 1;
                    self.seen_header = true;
                    V3Text {
                        start,
                        units_needed: n,
                        scanned_to: start,
                        units: 0,
                    }
                }
            };
            // Measure `units_needed` UTF-16 units of whole characters.
            let mut k = msg.scanned_to;
            while msg.units < msg.units_needed {
                let Some(&lead) = self.buf.get(k) else { break };
                let (width, units) = match lead {
                    0x00..=0x7f => (1, 1),
                    0xc0..=0xdf => (2, 1),
                    0xe0..=0xef => (3, 1),
                    0xf0..=0xf7 => (4, 2),
                    _ => return Err(Error::InvalidUtf8),
                };
                if k + width > self.buf.len() {
                    break;
                }
                k += width;
                msg.units += units;
            }
            msg.scanned_to = k;
            if msg.units < msg.units_needed {
                if self.finished {
                    return Err(Error::UnexpectedEnd);
                }
                self.v3 = Some(msg);
                return Ok(Progress::Partial);
            }
            if msg.units > msg.units_needed {
                // The length ends inside a surrogate pair.
                return Err(Error::InvalidPayloadLength);
            }
            self.v3 = None;
            self.pos = k;
            if k == msg.start {
                // `0:`: no packet.
                continue;
            }
            self.count_packet()?;
            let text =
                std::str::from_utf8(&self.buf[msg.start..k]).map_err(|_| Error::InvalidUtf8)?;
            return decode_v3_text_packet(text).map(Progress::Complete);
        }
    }

    fn next_v3_binary(&mut self) -> Result<Progress<Packet<'static>>, Error> {
        let rest = &self.buf[self.pos..];
        let Some(&flag) = rest.first() else {
            if !self.finished {
                return Ok(Progress::Partial);
            }
            if !self.seen_header {
                return Err(Error::EmptyPayload);
            }
            self.done = true;
            return Ok(Progress::Finished);
        };
        if flag > 1 {
            return Err(Error::InvalidPayloadLength);
        }
        let Some(ff) = rest.iter().skip(1).position(|&b| b > 9).map(|p| p + 1) else {
            return if self.finished {
                Err(Error::UnexpectedEnd)
            } else {
                Ok(Progress::Partial)
            };
        };
        if rest[ff] != 0xff || ff == 1 || ff > 21 {
            return Err(Error::InvalidPayloadLength);
        }
        let n = rest[1..ff].iter().fold(0usize, |n, &d| {
            n.saturating_mul(10).saturating_add(usize::from(d))
        });
        if n > self.limits.payload_bytes_max {
            return Err(Error::limit(
                Limit::PayloadBytes,
                self.limits.payload_bytes_max,
            ));
        }
        let Some(data) = rest.get(ff + 1..ff + 1 + n) else {
            return if self.finished {
                Err(Error::UnexpectedEnd)
            } else {
                Ok(Progress::Partial)
            };
        };
        self.seen_header = true;
        let packet = if flag == 0 {
            let text = std::str::from_utf8(data).map_err(|_| Error::InvalidUtf8)?;
            decode_v3_text_packet(text)?
        } else {
            match data.split_first() {
                None => return Err(Error::EmptyPacket),
                Some((4, bin)) => Packet::Binary(Cow::Owned(bin.to_vec())),
                Some((&t, _)) if t <= 6 => return Err(Error::BinaryNotMessage),
                Some((&t, _)) => return Err(Error::UnknownPacketType(t)),
            }
        };
        self.pos += ff + 1 + n;
        self.count_packet()?;
        Ok(Progress::Complete(packet))
    }
}

/// One packet of a v3 payload: text, or `b<type><base64>`.
fn decode_v3_text_packet(text: &str) -> Result<Packet<'static>, Error> {
    match text.as_bytes() {
        [] => Err(Error::EmptyPacket),
        [b'b', b'4', b64 @ ..] => Ok(Packet::Binary(Cow::Owned(
            BASE64.decode(b64).map_err(|_| Error::InvalidBase64)?,
        ))),
        [b'b', t, ..] if (b'0'..=b'6').contains(t) => Err(Error::BinaryNotMessage),
        [b'b', t, ..] => Err(Error::UnknownPacketType(*t)),
        [b'b'] => Err(Error::EmptyPacket),
        _ => Ok(Packet::decode_text(text)?.into_owned()),
    }
}

/// Decodes a whole polling body at once (a convenience over [`PayloadDecoder`]).
pub fn decode_payload(
    version: EioVersion,
    form: PayloadForm,
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<Packet<'static>>, Error> {
    let mut decoder = PayloadDecoder::new(version, form, *limits);
    decoder.push(body)?;
    decoder.finish();
    let mut packets = Vec::new();
    loop {
        match decoder.next_packet()? {
            Progress::Complete(p) => packets.push(p),
            Progress::Finished => return Ok(packets),
            // After `finish` the decoder never asks for more bytes.
            Progress::Partial => return Err(Error::UnexpectedEnd),
        }
    }
}
