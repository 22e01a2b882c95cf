//! The server side of RFC 6455's frame layer, sans-IO: client frames in, messages out. Bytes are read into the
//! connection's own buffer only while a frame is incomplete; a complete frame is unmasked in place and handed out
//! as a borrowed message, and the buffer is freed once everything in it is consumed, so an idle websocket holds
//! no buffer at all. A fragmented message is collected (up to the message bound) and freed once handed out.
//!
//! The checks and their order of precedence follow tungstenite 0.30's (which this replaced): frame size at the
//! header, then the reserved bits, the mask, control frame rules, fragment order, message size, UTF-8.

/// Why the client's frames are refused; the connection is then closed with [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame longer than the frame bound.
    #[error("frame of {size} bytes over the bound of {max} bytes")]
    FrameTooBig {
        /// The frame's declared payload length.
        size: u64,
        /// The bound.
        max: usize,
    },
    /// A message longer than the message bound.
    #[error("message of {size} bytes over the bound of {max} bytes")]
    MessageTooBig {
        /// The message's length so far.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A text message or close reason that is not UTF-8.
    #[error("invalid UTF-8")]
    Utf8,
    /// Any other violation of RFC 6455.
    #[error("{0}")]
    Protocol(&'static str),
}

impl FrameError {
    /// The close code to send: 1009 for a size, 1007 for UTF-8, otherwise 1002.
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::FrameTooBig { .. } | FrameError::MessageTooBig { .. } => 1009,
            FrameError::Utf8 => 1007,
            FrameError::Protocol(_) => 1002,
        }
    }
}

/// One message from the client, borrowed from the reader until its next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping; the answer is a pong with the same payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame, with its code and reason if it had any.
    Close(Option<(u16, &'a str)>),
}

/// Bytes of the longest frame header: 2, 8 of extended length, 4 of mask.
const HEADER_BYTES_MAX: usize = 14;

/// A fragmented message being collected.
#[derive(Debug)]
struct Fragmented {
    binary: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be valid UTF-8 (text only).
    utf8_checked: usize,
    /// Handed out: freed at the next call.
    complete: bool,
}

/// A server's reader of client frames, with its bounds.
#[derive(Debug)]
pub struct FrameReader {
    /// Received bytes; `pos` is where the unconsumed ones start. Empty (no allocation) when all are consumed.
    input: Vec<u8>,
    pos: usize,
    fragmented: Option<Box<Fragmented>>,
    frame_bytes_max: usize,
    message_bytes_max: usize,
}

/// A frame header.
struct Header {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    header_len: usize,
}

impl FrameReader {
    /// A reader refusing frames over `frame_bytes_max` and messages over `message_bytes_max` bytes.
    pub fn new(frame_bytes_max: usize, message_bytes_max: usize) -> Self {
        FrameReader {
            input: Vec::new(),
            pos: 0,
            fragmented: None,
            frame_bytes_max,
            message_bytes_max,
        }
    }

    /// The buffer received bytes are appended to (what is pending of a partial frame, or nothing).
    pub fn input(&mut self) -> &mut Vec<u8> {
        self.release_consumed();
        &mut self.input
    }

    /// Append received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input().extend_from_slice(bytes);
    }

    /// Bytes held (pending input and a fragmented message), for tests and accounting.
    pub fn held_bytes(&self) -> usize {
        self.input.capacity() + self.fragmented.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Drop what was handed out; keep a partial frame in a buffer sized to it.
    fn release_consumed(&mut self) {
        if self.fragmented.as_ref().is_some_and(|f| f.complete) {
            self.fragmented = None;
        }
        if self.pos == self.input.len() {
            if self.input.capacity() > 0 {
                self.input = Vec::new();
            }
            self.pos = 0;
        } else if self.pos > 0 {
            self.input.drain(..self.pos);
            self.input.shrink_to_fit();
            self.pos = 0;
        }
    }

    fn parse_header(&self) -> Result<Option<Header>, FrameError> {
        let b = &self.input[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let (first, second) = (b[0], b[1]);
        let (len, mut at) = match second & 0x7f {
            126 => {
                let Some(l) = b.get(2..4) else {
                    return Ok(None);
                };
                (u64::from(u16::from_be_bytes([l[0], l[1]])), 4)
            }
            127 => {
                let Some(l) = b.get(2..10) else {
                    return Ok(None);
                };
                let mut be = [0u8; 8];
                be.copy_from_slice(l);
                (u64::from_be_bytes(be), 10)
            }
            n => (u64::from(n), 2),
        };
        let opcode = first & 0x0f;
        if matches!(opcode, 3..=7 | 11..=15) {
            return Err(FrameError::Protocol("invalid opcode"));
        }
        // refused as soon as its length is known
        if len > self.frame_bytes_max as u64 {
            return Err(FrameError::FrameTooBig {
                size: len,
                max: self.frame_bytes_max,
            });
        }
        let masked = second & 0x80 != 0;
        let mut mask = [0u8; 4];
        if masked {
            let Some(m) = b.get(at..at + 4) else {
                return Ok(None);
            };
            mask.copy_from_slice(m);
            at += 4;
        }
        debug_assert!(at <= HEADER_BYTES_MAX);
        if first & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits are not zero"));
        }
        if !masked {
            return Err(FrameError::Protocol("unmasked frame from the client"));
        }
        Ok(Some(Header {
            fin: first & 0x80 != 0,
            opcode,
            mask,
            len: len as usize,
            header_len: at,
        }))
    }

    /// The next complete message, `None` when more bytes are needed. After an error the reader must not be used.
    pub fn next_message(&mut self) -> Result<Option<Message<'_>>, FrameError> {
        self.release_consumed();
        loop {
            let Some(h) = self.parse_header()? else {
                return Ok(None);
            };
            let start = self.pos + h.header_len;
            if self.input.len() - start < h.len {
                return Ok(None);
            }
            let end = start + h.len;
            self.pos = end;
            for (i, byte) in self.input[start..end].iter_mut().enumerate() {
                *byte ^= h.mask[i & 3];
            }
            if h.opcode >= 8 {
                if !h.fin {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if h.len > 125 {
                    return Err(FrameError::Protocol("control frame over 125 bytes"));
                }
                let payload = &self.input[start..end];
                return Ok(Some(match h.opcode {
                    8 => Message::Close(close_payload(payload)?),
                    9 => Message::Ping(payload),
                    _ => Message::Pong,
                }));
            }
            match (h.opcode, self.fragmented.is_some()) {
                (0, false) => {
                    return Err(FrameError::Protocol("continuation frame without a start"));
                }
                (0, true) => {}
                (_, true) => {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                (_, false) if h.fin => {
                    if h.len > self.message_bytes_max {
                        return Err(FrameError::MessageTooBig {
                            size: h.len,
                            max: self.message_bytes_max,
                        });
                    }
                    let payload = &self.input[start..end];
                    return Ok(Some(if h.opcode == 1 {
                        Message::Text(std::str::from_utf8(payload).map_err(|_| FrameError::Utf8)?)
                    } else {
                        Message::Binary(payload)
                    }));
                }
                (_, false) => {
                    self.fragmented = Some(Box::new(Fragmented {
                        binary: h.opcode == 2,
                        data: Vec::new(),
                        utf8_checked: 0,
                        complete: false,
                    }));
                }
            }
            let max = self.message_bytes_max;
            let f = self.fragmented.as_mut().expect("a fragmented message");
            if f.data.len() > max || h.len > max - f.data.len() {
                return Err(FrameError::MessageTooBig {
                    size: f.data.len() + h.len,
                    max,
                });
            }
            f.data.extend_from_slice(&self.input[start..end]);
            if !f.binary {
                match std::str::from_utf8(&f.data[f.utf8_checked..]) {
                    Ok(_) => f.utf8_checked = f.data.len(),
                    // an incomplete character at the end may be completed by the next fragment
                    Err(e) if e.error_len().is_none() && !h.fin => {
                        f.utf8_checked += e.valid_up_to()
                    }
                    Err(_) => return Err(FrameError::Utf8),
                }
            }
            if h.fin {
                f.complete = true;
                let f = self.fragmented.as_ref().expect("a fragmented message");
                return Ok(Some(if f.binary {
                    Message::Binary(&f.data)
                } else {
                    // validated above, fragment by fragment
                    Message::Text(std::str::from_utf8(&f.data).map_err(|_| FrameError::Utf8)?)
                }));
            }
        }
    }
}

/// A close frame's code and reason: none, or a code of two bytes and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> Result<Option<(u16, &str)>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some((u16::from_be_bytes([*a, *b]), reason)))
        }
    }
}

/// May a peer send this close code (RFC 6455 7.4)? The answer to one that may not is a protocol error close.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    fn reader() -> FrameReader {
        FrameReader::new(1 << 20, 1000)
    }

    #[test]
    fn text_binary_and_control_frames() {
        let mut r = reader();
        let mut bytes = frame(0x81, b"4hello");
        bytes.extend(frame(0x82, &[1, 2, 3]));
        bytes.extend(frame(0x89, b"hb"));
        bytes.extend(frame(0x8a, b""));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        r.feed(&bytes);
        assert_eq!(r.next_message(), Ok(Some(Message::Text("4hello"))));
        assert_eq!(r.next_message(), Ok(Some(Message::Binary(&[1, 2, 3]))));
        assert_eq!(r.next_message(), Ok(Some(Message::Ping(b"hb"))));
        assert_eq!(r.next_message(), Ok(Some(Message::Pong)));
        assert_eq!(
            r.next_message(),
            Ok(Some(Message::Close(Some((1000, "bye")))))
        );
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(r.held_bytes(), 0, "everything consumed: no buffer kept");
    }

    #[test]
    fn a_frame_fed_byte_by_byte_keeps_only_what_is_pending() {
        let mut r = reader();
        let bytes = frame(0x81, &[b'x'; 300]);
        for (i, b) in bytes.iter().enumerate() {
            assert_eq!(r.next_message(), Ok(None));
            // amortised growth: at most twice what is pending (and the allocator's smallest, 8 bytes)
            assert!(
                r.held_bytes() <= (2 * i).max(8),
                "{} held after {i}",
                r.held_bytes()
            );
            r.feed(&[*b]);
        }
        assert_eq!(r.next_message(), Ok(Some(Message::Text(&"x".repeat(300)))));
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn a_partial_frame_after_a_complete_one_is_kept_alone() {
        let mut r = reader();
        let mut bytes = frame(0x81, &[b'a'; 100]);
        let second = frame(0x81, b"2probe");
        bytes.extend_from_slice(&second[..3]);
        r.feed(&bytes);
        assert!(matches!(r.next_message(), Ok(Some(Message::Text(_)))));
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(r.held_bytes(), 3, "the buffer shrank to the partial frame");
        r.feed(&second[3..]);
        assert_eq!(r.next_message(), Ok(Some(Message::Text("2probe"))));
    }

    #[test]
    fn fragments_are_collected_with_control_frames_between() {
        let mut r = reader();
        let mut bytes = frame(0x01, "h\u{e9}".as_bytes()[..2].as_ref());
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x00, &"h\u{e9}".as_bytes()[2..]));
        bytes.extend(frame(0x80, b"llo"));
        r.feed(&bytes);
        assert_eq!(r.next_message(), Ok(Some(Message::Ping(b"p"))));
        assert_eq!(r.next_message(), Ok(Some(Message::Text("h\u{e9}llo"))));
        assert_eq!(r.next_message(), Ok(None));
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn violations_are_refused_with_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (frame(0x81, &[b'x'; 1001]), 1009),
            (frame(0x81, &[0xff, 0xfe]), 1007),
            (frame(0x88, &[0x03, 0xe8, 0xff]), 1007),
            (frame(0x88, &[0x03]), 1002),
            (frame(0xc1, b"x"), 1002),
            (frame(0x83, b"x"), 1002),
            (frame(0x8b, b"x"), 1002),
            (frame(0x09, b"x"), 1002),
            (frame(0x89, &[0; 126]), 1002),
            (frame(0x80, b"x"), 1002),
            ([frame(0x01, b"x"), frame(0x81, b"y")].concat(), 1002),
            (
                [frame(0x01, &[b'x'; 600]), frame(0x80, &[b'y'; 600])].concat(),
                1009,
            ),
            ([frame(0x01, &[0xc3]), frame(0x80, &[0x28])].concat(), 1007),
            (vec![0x81, 0x02, b'h', b'i'], 1002),
        ];
        for (bytes, code) in cases {
            let mut r = reader();
            r.feed(&bytes);
            let got = loop {
                match r.next_message() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("{bytes:x?}: no error"),
                    Err(e) => break e,
                }
            };
            assert_eq!(got.close_code(), code, "{bytes:x?}: {got}");
        }
    }

    #[test]
    fn a_frame_over_the_bound_is_refused_at_its_header() {
        let mut r = FrameReader::new(100, 1000);
        r.feed(&[0x82, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert_eq!(
            r.next_message(),
            Err(FrameError::FrameTooBig {
                size: 1 << 32,
                max: 100
            })
        );
    }

    #[test]
    fn close_codes_a_peer_may_send() {
        for ok in [1000, 1001, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert!(close_code_allowed(ok), "{ok}");
        }
        for bad in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert!(!close_code_allowed(bad), "{bad}");
        }
    }
}
