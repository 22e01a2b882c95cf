//! WebSocket: the RFC 6455 upgrade handshake by hand, frames through tungstenite's frame layer
//! (`WebSocketContext` over in-memory buffers, so no runtime is involved), and pre-encoded outgoing frames.

use std::io::{self, Read, Write};

use base64::Engine as _;
use sha1::{Digest, Sha1};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

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

/// tungstenite configuration from ours.
pub fn ws_config(cfg: &ServerConfig) -> WebSocketConfig {
    // tungstenite only writes control frames here (pongs, close replies): a small read chunk keeps idle
    // connections cheap; our own queue bounds what waits to be written.
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_frame_size(Some(cfg.ws_frame_bytes_max))
        .max_message_size(Some(cfg.payload_bytes_max.max(1024)))
}

/// In-memory duplex buffer tungstenite reads frames from and writes control frames into.
#[derive(Debug, Default)]
pub struct WsIo {
    /// Bytes received from the socket and not yet consumed by tungstenite.
    pub input: Vec<u8>,
    pos: usize,
    /// Bytes tungstenite wants to send (pongs, close frames).
    pub output: Vec<u8>,
}

impl WsIo {
    /// Append received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }
}

impl Read for WsIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.input[self.pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        if self.pos == self.input.len() {
            // fully consumed: release the buffer so an idle connection holds none
            self.input = Vec::new();
            self.pos = 0;
        }
        Ok(n)
    }
}

impl Write for WsIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Server side frame reader: tungstenite's context plus its buffers.
#[allow(missing_debug_implementations)]
pub struct WsReader {
    /// tungstenite's protocol state.
    pub ctx: WebSocketContext,
    /// Its buffers.
    pub io: WsIo,
}

impl WsReader {
    /// A server-role reader with our limits.
    pub fn new(cfg: &ServerConfig) -> Self {
        WsReader {
            ctx: WebSocketContext::new(Role::Server, Some(ws_config(cfg))),
            io: WsIo::default(),
        }
    }
}

/// Append one unmasked, final, unfragmented frame (server to client) to `out`.
pub fn push_frame(out: &mut Vec<u8>, binary: bool, payload: &[u8]) {
    let header = FrameHeader {
        opcode: OpCode::Data(if binary { Data::Binary } else { Data::Text }),
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
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
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&u16::from(code).to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(120)]);
    let header = FrameHeader {
        opcode: OpCode::Control(Control::Close),
        ..FrameHeader::default()
    };
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(&payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_for_small_bounds() {
        let cfg = ServerConfig {
            socket_queued_bytes_max: 1024,
            payload_bytes_max: 10,
            ..ServerConfig::default()
        };
        let mut r = WsReader::new(&cfg);
        r.io.feed(&[0x81, 0x81, 1, 2, 3, 4, b'3' ^ 1]);
        assert!(r.ctx.read(&mut r.io).is_ok());
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

#[cfg(test)]
mod reader_tests {
    use super::*;

    #[test]
    fn reads_masked_frames_fed_in_pieces() {
        let cfg = ServerConfig::default();
        let mut r = WsReader::new(&cfg);
        let frame = [0x81u8, 0x81, 1, 2, 3, 4, b'3' ^ 1];
        r.io.feed(&frame);
        let m = r.ctx.read(&mut r.io).unwrap();
        assert_eq!(m, tungstenite::Message::text("3"));
    }
}
