//! The websocket frame layer (RFC 6455), just what a load generator needs: the client's upgrade request, frame
//! parsing from caller-supplied bytes (check-then-parse: "not enough bytes yet" is `Ok(None)`), and frame encoding
//! with or without a mask. Both sides are here so the tests' fake server shares the code.

use base64::Engine as _;

/// Frame opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// A continuation of a fragmented message.
    Continuation,
    /// A UTF-8 text frame.
    Text,
    /// A binary frame.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0,
            Opcode::Text => 1,
            Opcode::Binary => 2,
            Opcode::Close => 8,
            Opcode::Ping => 9,
            Opcode::Pong => 10,
        }
    }
}

/// A frame header parsed from the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last fragment of its message.
    pub fin: bool,
    /// The opcode.
    pub opcode: Opcode,
    /// Masking key (frames from clients carry one).
    pub mask: Option<[u8; 4]>,
    /// Bytes of header; the payload starts here.
    pub header_bytes: usize,
    /// Bytes of payload.
    pub payload_bytes: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn frame_bytes(&self) -> usize {
        self.header_bytes + self.payload_bytes
    }
}

/// Why a frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved opcode or reserved bits set.
    Invalid,
    /// The payload is larger than the configured maximum.
    TooLarge(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Invalid => f.write_str("invalid websocket frame"),
            FrameError::TooLarge(n) => {
                write!(f, "websocket frame of {n} bytes exceeds the maximum")
            }
        }
    }
}

/// Parses the header of the frame at the front of `buf`. `Ok(None)`: not enough bytes for the whole frame yet.
pub fn parse_header(buf: &[u8], frame_bytes_max: usize) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Invalid);
    }
    let opcode = Opcode::from_bits(b0 & 0x0f).ok_or(FrameError::Invalid)?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        n => (usize::from(n), 2),
    };
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < at + len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask,
        header_bytes: at,
        payload_bytes: len,
    }))
}

/// XORs `data` with the masking key (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one whole (FIN) frame to `out`, masked with `mask` if given (clients must mask).
pub fn encode_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(0x80 | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(l16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&l16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(payload);
            apply_mask(&mut out[start..], m);
        }
        None => out.extend_from_slice(payload),
    }
}

/// The client's upgrade request for `path_and_query` on `host`.
pub fn upgrade_request(host: &str, path_and_query: &str, key_seed: u64) -> String {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&key_seed.to_le_bytes());
    key[8..].copy_from_slice(&key_seed.rotate_left(17).to_be_bytes());
    let key = base64::engine::general_purpose::STANDARD.encode(key);
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Where the HTTP response head ends in `buf` (index after `\r\n\r\n`), if it has arrived.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether a response head is `101 Switching Protocols`.
pub fn is_switching_protocols(head: &[u8]) -> bool {
    head.starts_with(b"HTTP/1.1 101")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_class_and_split() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                encode_frame(&mut out, Opcode::Binary, &payload, mask);
                for cut in [0, 1, 2, 3, 9, out.len() - 1] {
                    if cut < out.len() {
                        assert_eq!(
                            parse_header(&out[..cut], 1 << 20),
                            Ok(None),
                            "len {len} cut {cut}"
                        );
                    }
                }
                let h = parse_header(&out, 1 << 20).unwrap().unwrap();
                assert_eq!(h.frame_bytes(), out.len());
                assert_eq!(h.mask, mask);
                let mut body = out[h.header_bytes..].to_vec();
                if let Some(m) = h.mask {
                    apply_mask(&mut body, m);
                }
                assert_eq!(body, payload);
            }
        }
    }

    #[test]
    fn oversized_and_reserved_frames_are_rejected() {
        let mut out = Vec::new();
        encode_frame(&mut out, Opcode::Text, &[b'a'; 200], None);
        assert_eq!(parse_header(&out, 100), Err(FrameError::TooLarge(200)));
        assert_eq!(parse_header(&[0x83, 0], 100), Err(FrameError::Invalid));
        assert_eq!(parse_header(&[0xC1, 0], 100), Err(FrameError::Invalid));
    }
}
