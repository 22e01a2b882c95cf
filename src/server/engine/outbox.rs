//! The outgoing queue of a session, sans-IO: packets queued by the handler and the heartbeat, websocket control
//! frames (pongs, probe answers, close replies), and the one bound on both, `socket_queued_bytes_max`. A writer
//! takes everything queued since its last pass (coalesced: one write). Past the bound the queue is emptied at once
//! (nothing more will be written, so the memory comes back now) and the session must close as a slow reader.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crate::proto::Frame;
use crate::proto::engine::Packet;

use super::super::ws;
use super::CloseReason;

/// One Engine.IO packet queued for a session, already encoded (shared by every recipient of a broadcast).
#[derive(Debug, Clone)]
pub enum OutItem {
    /// A whole text packet, type character included (`4...`, `2`, `1`).
    Text(Arc<str>),
    /// The data of a binary message (no prefix; v3 framing adds its type byte).
    Binary(Arc<[u8]>),
    /// A whole text packet with its websocket frame header built once, for every member of a broadcast
    /// ([`OutItem::framed_text`]); polling members get the text alone.
    Framed(Rc<FramedText>),
}

/// A text packet and the header of the websocket text frame that carries it, shared by the recipients of one
/// broadcast on one shard: the header is encoded once per event, not once per member.
#[derive(Debug)]
pub struct FramedText {
    text: Arc<str>,
    /// The frame header (2 to 10 bytes: the server's frames are unmasked).
    header: [u8; 10],
    header_len: u8,
}

impl FramedText {
    /// The text packet (type character included).
    pub(super) fn text(&self) -> &str {
        &self.text
    }
    /// The websocket frame header of the text.
    pub(super) fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }
}

impl OutItem {
    /// The text packet `text` with its websocket frame header encoded now, to be queued for many sessions (clones
    /// share it).
    pub fn framed_text(text: &Arc<str>) -> OutItem {
        let mut head = Vec::with_capacity(10);
        ws::push_frame_header(&mut head, false, text.len());
        let mut header = [0u8; 10];
        let header_len = head.len().min(header.len());
        header[..header_len].copy_from_slice(&head[..header_len]);
        OutItem::Framed(Rc::new(FramedText {
            text: text.clone(),
            header,
            header_len: header_len as u8,
        }))
    }
    pub(super) fn len(&self) -> usize {
        match self {
            OutItem::Text(t) => t.len(),
            OutItem::Binary(b) => b.len() + 1,
            OutItem::Framed(f) => f.text.len(),
        }
    }
    pub(super) fn frame(&self) -> Frame<'_> {
        match self {
            OutItem::Text(t) => Frame::Text(t),
            OutItem::Binary(b) => Frame::Binary(b),
            OutItem::Framed(f) => Frame::Text(f.text()),
        }
    }
    /// A text packet other than a message, encoded by `proto` (`Close`, `Noop`, `Ping`...).
    pub(super) fn packet(packet: &Packet<'_>) -> OutItem {
        let mut text = String::with_capacity(8);
        packet.write_text(&mut text);
        OutItem::Text(Arc::from(text))
    }
    /// A message packet with `text`, encoded by `proto`.
    pub fn message(text: &str) -> OutItem {
        OutItem::packet(&Packet::Message(text.into()))
    }
}

/// What queuing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued; the queue was empty before: wake the writer (or the pending poll).
    Wake,
    /// Queued behind what was already there (the writer is already woken).
    Behind,
    /// Over the bound: everything was dropped, the session must close with this reason.
    Overflow(CloseReason),
}

/// The outgoing queue of one session and its bound.
#[derive(Debug)]
pub(crate) struct Outbox {
    items: VecDeque<OutItem>,
    item_bytes: usize,
    /// Websocket control bytes, written before the items.
    control: Vec<u8>,
    max_bytes: usize,
}

impl Outbox {
    /// An empty queue bounded at `max_bytes` (`socket_queued_bytes_max`).
    pub(crate) fn new(max_bytes: usize) -> Outbox {
        Outbox {
            items: VecDeque::new(),
            item_bytes: 0,
            control: Vec::new(),
            max_bytes,
        }
    }

    fn queued_bytes(&self) -> usize {
        self.item_bytes + self.control.len()
    }

    fn overflow(&mut self, control_frames: bool) -> Queued {
        let queued_bytes = self.queued_bytes();
        *self = Outbox::new(self.max_bytes);
        Queued::Overflow(CloseReason::SlowReader {
            queued_bytes,
            max_bytes: self.max_bytes,
            control_frames,
        })
    }

    /// Queue packets (all of them, then check the bound).
    pub(crate) fn push_items(&mut self, items: impl IntoIterator<Item = OutItem>) -> Queued {
        let was_empty = self.items.is_empty();
        for item in items {
            self.item_bytes += item.len();
            self.items.push_back(item);
        }
        if self.queued_bytes() > self.max_bytes {
            self.overflow(false)
        } else if was_empty && !self.items.is_empty() {
            Queued::Wake
        } else {
            Queued::Behind
        }
    }

    /// Queue websocket control bytes; they count toward the same bound: a client that sends pings and never reads
    /// is a slow reader. The writer is always woken.
    pub(crate) fn push_control(&mut self, bytes: &[u8]) -> Queued {
        self.control.extend_from_slice(bytes);
        if self.queued_bytes() > self.max_bytes {
            self.overflow(true)
        } else {
            Queued::Wake
        }
    }

    /// Queue the last packet of a closing session (its close packet), past the bound: nothing follows it.
    pub(crate) fn push_last(&mut self, item: OutItem) {
        self.items.push_back(item);
    }

    /// True if no packet is queued (control bytes aside).
    pub(crate) fn has_no_items(&self) -> bool {
        self.items.is_empty()
    }

    /// Take every queued packet (a poll's answer).
    pub(crate) fn take_items(&mut self) -> Vec<OutItem> {
        self.drain_items().collect()
    }

    /// Take every queued packet, in order, without collecting them (a websocket writer's pass, a corked flush).
    pub(crate) fn drain_items(&mut self) -> std::collections::vec_deque::Drain<'_, OutItem> {
        self.item_bytes = 0;
        self.items.drain(..)
    }

    /// Append the queued control bytes to `out`.
    pub(crate) fn take_control_into(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.control);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of a script: queue packets of these lengths, control bytes, or take the packets.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Items(&'static [usize]),
        Control(usize),
        Take,
    }

    /// What a step gave: the queuing outcome, or the lengths of the packets taken.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Got {
        Queued(Queued),
        Taken(Vec<usize>),
    }

    fn text(len: usize) -> OutItem {
        OutItem::Text(Arc::from("x".repeat(len)))
    }

    /// Run `script` (step, expected outcome) on an outbox bounded at `max_bytes`.
    fn check(max_bytes: usize, script: &[(Op, Got)]) {
        let mut outbox = Outbox::new(max_bytes);
        for (step, (op, expected)) in script.iter().enumerate() {
            let got = match *op {
                Op::Items(lens) => Got::Queued(outbox.push_items(lens.iter().map(|&n| text(n)))),
                Op::Control(n) => Got::Queued(outbox.push_control(&vec![0; n])),
                Op::Take => Got::Taken(outbox.take_items().iter().map(OutItem::len).collect()),
            };
            assert_eq!(&got, expected, "step {step}: {op:?}");
        }
    }

    fn slow(queued_bytes: usize, control_frames: bool) -> Got {
        Got::Queued(Queued::Overflow(CloseReason::SlowReader {
            queued_bytes,
            max_bytes: 10,
            control_frames,
        }))
    }

    #[test]
    fn the_first_packet_wakes_the_writer_and_a_pass_takes_them_all() {
        check(
            10,
            &[
                (Op::Items(&[2]), Got::Queued(Queued::Wake)),
                (Op::Items(&[3, 1]), Got::Queued(Queued::Behind)),
                (Op::Take, Got::Taken(vec![2, 3, 1])),
                (Op::Take, Got::Taken(vec![])),
                (Op::Items(&[10]), Got::Queued(Queued::Wake)),
            ],
        );
    }

    #[test]
    fn packets_and_control_frames_share_the_bound_and_an_overflow_drops_everything() {
        check(
            10,
            &[
                (Op::Items(&[4]), Got::Queued(Queued::Wake)),
                (Op::Control(6), Got::Queued(Queued::Wake)),
                (Op::Items(&[1]), slow(11, false)),
                (Op::Take, Got::Taken(vec![])),
            ],
        );
        // Pongs to a client that never reads.
        check(
            10,
            &[
                (Op::Control(5), Got::Queued(Queued::Wake)),
                (Op::Control(5), Got::Queued(Queued::Wake)),
                (Op::Control(1), slow(11, true)),
                (Op::Items(&[10]), Got::Queued(Queued::Wake)),
            ],
        );
        // A binary packet counts its data and the v3 type byte.
        let mut outbox = Outbox::new(10);
        assert_eq!(
            outbox.push_items([OutItem::Binary(Arc::from(&[0u8; 10][..]))]),
            Queued::Overflow(CloseReason::SlowReader {
                queued_bytes: 11,
                max_bytes: 10,
                control_frames: false,
            })
        );
    }
}
