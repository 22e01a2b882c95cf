//! WebSocket: the RFC 6455 upgrade handshake by hand, client frames through our sans-IO [`frame`] reader, and
//! pre-encoded outgoing frames (headers by tungstenite's `FrameHeader`).

pub mod frame;

pub use frame::{FrameError, FrameReader, Message};

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use super::config::ServerConfig;
use super::http::Request;

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Why a websocket upgrade request is refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Not a GET.
    #[error("websocket upgrade must use GET")]
    NotGet,
    /// No `Connection: Upgrade`.
    #[error("missing Connection: Upgrade")]
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("unsupported Sec-WebSocket-Version (need 13)")]
    Version,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    NoKey,
    /// A key that is not 16 bytes in base64.
    #[error("invalid Sec-WebSocket-Key")]
    InvalidKey,
}

/// Validate an upgrade request; returns the `101 Switching Protocols` response bytes.
pub fn handshake_response(req: &Request) -> Result<Vec<u8>, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    let connection_upgrade = req.header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::NoKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .map_err(|_| HandshakeError::InvalidKey)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::InvalidKey);
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes())
}

/// A reader of client frames with our bounds: frames up to `ws_frame_bytes_max`, messages up to
/// `payload_bytes_max` (at least 1 KiB).
pub fn reader(cfg: &ServerConfig) -> FrameReader {
    FrameReader::new(cfg.ws_frame_bytes_max, cfg.payload_bytes_max.max(1024))
}

/// Append one unmasked, final, unfragmented frame (server to client) to `out`.
pub fn push_frame(out: &mut Vec<u8>, binary: bool, payload: &[u8]) {
    push_frame_header(out, binary, payload.len());
    out.extend_from_slice(payload);
}

/// Append the header (2 to 10 bytes) of one unmasked, final, unfragmented frame of `payload_len` bytes to `out`:
/// the payload follows it.
pub fn push_frame_header(out: &mut Vec<u8>, binary: bool, payload_len: usize) {
    let header = FrameHeader {
        opcode: OpCode::Data(if binary { Data::Binary } else { Data::Text }),
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload_len as u64, out);
}

/// Append one unmasked binary frame whose payload is `prefix` then `payload` (framed in place, no copy first).
pub fn push_binary_frame(out: &mut Vec<u8>, prefix: &[u8], payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    let _ = header.format((prefix.len() + payload.len()) as u64, out);
    out.extend_from_slice(prefix);
    out.extend_from_slice(payload);
}

/// Append a close frame with `code` and `reason` (cut to 120 bytes: a control frame holds at most 125).
pub fn push_close_frame(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    push_close(
        out,
        Some((u16::from(code), &reason[..floor_char_boundary(reason, 120)])),
    );
}

/// Append the answer to the client's close frame: the same code and reason (RFC 6455 5.5.1), a protocol error
/// close for a code a peer may not send, an empty close frame for an empty one.
pub fn push_close_reply(out: &mut Vec<u8>, close: Option<(u16, &str)>) {
    match close {
        Some((code, _)) if !frame::close_code_allowed(code) => push_close(
            out,
            Some((u16::from(CloseCode::Protocol), "Protocol violation")),
        ),
        other => push_close(out, other),
    }
}

/// Append a pong answering a ping with `payload` (at most 125 bytes: the reader refuses longer control frames).
pub fn push_pong(out: &mut Vec<u8>, payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Pong),
        ..FrameHeader::default()
    };
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn push_close(out: &mut Vec<u8>, close: Option<(u16, &str)>) {
    let len = close.map_or(0, |(_, reason)| 2 + reason.len());
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let _ = header.format(len as u64, out);
    if let Some((code, reason)) = close {
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
    }
}

/// The largest index <= `max` that is a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_accepts_small_frames_under_small_bounds() {
        let cfg = ServerConfig {
            socket_queued_bytes_max: 1024,
            payload_bytes_max: 10,
            ..ServerConfig::default()
        };
        let mut r = reader(&cfg);
        r.feed(&[0x81, 0x81, 1, 2, 3, 4, b'3' ^ 1]);
        assert_eq!(r.next_message(), Ok(Some(Message::Text("3"))));
    }

    #[test]
    fn close_replies_echo_the_client_or_refuse_its_code() {
        let mut out = Vec::new();
        push_close_reply(&mut out, Some((1000, "bye")));
        assert_eq!(out, [0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
        out.clear();
        push_close_reply(&mut out, None);
        assert_eq!(out, [0x88, 0]);
        out.clear();
        push_close_reply(&mut out, Some((1005, "")));
        assert_eq!(&out[..4], &[0x88, 20, 0x03, 0xea]);
        assert_eq!(&out[4..], b"Protocol violation");
        out.clear();
        push_close_frame(&mut out, CloseCode::Size, &"\u{e9}".repeat(100));
        assert_eq!(out[1], 2 + 120);
    }

    #[test]
    fn rfc6455_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_header_sizes() {
        let mut out = Vec::new();
        push_frame(&mut out, false, b"4hello");
        assert_eq!(&out[..2], &[0x81, 6]);
        let mut out = Vec::new();
        push_frame(&mut out, true, &[0u8; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }
}
