//! Exact delivery accounting, shared by every client task of the (single-threaded) generator.
//!
//! Each publish gets a per-room sequence number (`seq`) before its REST request is sent. A publish counts as
//! *expected* at every client that was ready in that room when publishing began, once its request succeeded
//! (2xx). Each client keeps a bitset of the sequence numbers it received in its room, so at the end:
//! - **missed** = expected (client, seq) pairs never received;
//! - **duplicated** = receipts of a (client, seq) pair already received (counted as they happen);
//! - **misrouted** = receipts for another room than the client's;
//! - **unexpected** = receipts of a seq whose publish did not succeed (or was never made).

use std::collections::BTreeMap;

use crate::hist::Histogram;

/// A growable bitset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bitset(Vec<u64>);

impl Bitset {
    /// Sets bit `i`; returns whether it was clear before.
    pub fn insert(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        !was
    }

    /// Whether bit `i` is set.
    pub fn contains(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Bits set.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// No bit set.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bits set in `self` and not in `other`.
    pub fn count_missing_from(&self, other: &Bitset) -> u64 {
        self.0
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.0.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }
}

/// Where a client is in its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Not connected yet.
    Idle,
    /// Authenticated and (if it has a room) joined.
    Ready,
    /// Failed before becoming ready.
    Failed,
    /// Was ready, then lost its connection.
    Lost,
}

/// The accounting of one run.
#[derive(Debug)]
pub struct Stats {
    /// Room of each client, if it has one.
    client_room: Vec<Option<u32>>,
    client_state: Vec<ClientState>,
    /// The client was ready when publishing began (only those are expected to receive).
    counted: Vec<bool>,
    received: Vec<Bitset>,
    room_members: Vec<u64>,
    next_seq: Vec<u64>,
    published_ok: Vec<Bitset>,
    frozen: bool,

    /// Clients ready (authenticated and joined).
    pub ready: u64,
    /// Clients that failed before becoming ready.
    pub failed: u64,
    /// Clients that lost their connection after becoming ready.
    pub lost: u64,
    /// Why clients failed or were lost, by reason (first 16 reasons).
    pub failures: BTreeMap<String, u64>,
    /// Time from a client's start to ready, microseconds.
    pub ready_latency: Histogram,
    /// When the last client became ready, microseconds on the run clock.
    pub last_ready_us: u64,

    /// Publishes whose REST request succeeded / failed.
    pub publishes_ok: u64,
    /// Publishes whose REST request failed (status or connection).
    pub publishes_failed: u64,
    /// Deliveries counted as expected for publishes sent so far (for flow control).
    pub expected_sent: u64,
    /// Deliveries expected for successful publishes.
    pub expected_ok: u64,
    /// First receipts of an expected or unexpected (client, seq).
    pub deliveries: u64,
    /// Repeated receipts.
    pub duplicated: u64,
    /// Receipts for a room other than the client's (or by a client without a room).
    pub misrouted: u64,
    /// `realtime:resource` events that could not be parsed.
    pub malformed: u64,
    /// Publish -> receive latency of first receipts, microseconds.
    pub latency: Histogram,
    /// Of those, the receipts on another node than the one the publish went to (cluster scenario), microseconds.
    pub latency_cross_node: Histogram,
    /// Node of each client and number of nodes (room `r` is published on node `r % nodes`); 1 node: no cross-node.
    client_node: Vec<u8>,
    nodes: usize,

    /// Echo acks requested / answered; acks for no pending request.
    pub acks_sent: u64,
    /// Acks received for a pending request.
    pub acks_received: u64,
    /// Acks matching no pending request.
    pub acks_unexpected: u64,
    /// Ack round trip, microseconds.
    pub ack_rtt: Histogram,
}

/// The end-of-run totals computed from the bitsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Expected (client, seq) pairs.
    pub expected: u64,
    /// Of those, received.
    pub received_expected: u64,
    /// Of those, never received.
    pub missed: u64,
    /// Received seqs whose publish did not succeed.
    pub unexpected: u64,
}

const FAILURE_REASONS_MAX: usize = 16;

impl Stats {
    /// Accounting for `clients` clients, rooms `0..rooms`.
    pub fn new(clients: usize, rooms: usize) -> Stats {
        Stats {
            client_room: vec![None; clients],
            client_state: vec![ClientState::Idle; clients],
            counted: vec![false; clients],
            received: vec![Bitset::default(); clients],
            room_members: vec![0; rooms],
            next_seq: vec![0; rooms],
            published_ok: vec![Bitset::default(); rooms],
            frozen: false,
            ready: 0,
            failed: 0,
            lost: 0,
            failures: BTreeMap::new(),
            ready_latency: Histogram::new(),
            last_ready_us: 0,
            publishes_ok: 0,
            publishes_failed: 0,
            expected_sent: 0,
            expected_ok: 0,
            deliveries: 0,
            duplicated: 0,
            misrouted: 0,
            malformed: 0,
            latency: Histogram::new(),
            latency_cross_node: Histogram::new(),
            client_node: Vec::new(),
            nodes: 1,
            acks_sent: 0,
            acks_received: 0,
            acks_unexpected: 0,
            ack_rtt: Histogram::new(),
        }
    }

    /// Clients.
    pub fn clients(&self) -> usize {
        self.client_state.len()
    }

    /// Rooms.
    pub fn rooms(&self) -> usize {
        self.room_members.len()
    }

    /// Clients ready in `room`.
    pub fn room_members(&self, room: u32) -> u64 {
        self.room_members.get(room as usize).copied().unwrap_or(0)
    }

    fn note_failure(&mut self, reason: &str) {
        if let Some(n) = self.failures.get_mut(reason) {
            *n += 1;
        } else if self.failures.len() < FAILURE_REASONS_MAX {
            self.failures.insert(reason.to_owned(), 1);
        } else {
            *self
                .failures
                .entry("(other reasons)".to_owned())
                .or_insert(0) += 1;
        }
    }

    /// Client `c` is ready (in `room`, if any) after `took_us` since it started, at `now_us`.
    pub fn client_ready(&mut self, c: u32, room: Option<u32>, took_us: u64, now_us: u64) {
        let i = c as usize;
        if self.client_state[i] != ClientState::Idle {
            return;
        }
        self.client_state[i] = ClientState::Ready;
        self.client_room[i] = room;
        self.ready += 1;
        self.ready_latency.record(took_us);
        self.last_ready_us = self.last_ready_us.max(now_us);
        if !self.frozen {
            self.counted[i] = true;
            if let Some(r) = room {
                self.room_members[r as usize] += 1;
            }
        }
    }

    /// Client `c` failed (before ready) or lost its connection (after), for `reason`.
    pub fn client_failed(&mut self, c: u32, reason: &str) {
        let i = c as usize;
        match self.client_state[i] {
            ClientState::Idle => {
                self.client_state[i] = ClientState::Failed;
                self.failed += 1;
            }
            ClientState::Ready => {
                self.client_state[i] = ClientState::Lost;
                self.lost += 1;
            }
            ClientState::Failed | ClientState::Lost => return,
        }
        self.note_failure(reason);
    }

    /// Marks every client that is neither ready nor failed yet as failed for `reason` (a later `client_ready` is
    /// ignored).
    pub fn fail_stragglers(&mut self, reason: &str) {
        let stragglers = self
            .client_state
            .iter()
            .filter(|s| **s == ClientState::Idle)
            .count() as u64;
        if stragglers == 0 {
            return;
        }
        for s in self
            .client_state
            .iter_mut()
            .filter(|s| **s == ClientState::Idle)
        {
            *s = ClientState::Failed;
        }
        self.failed += stragglers;
        *self.failures.entry(reason.to_owned()).or_insert(0) += stragglers;
    }

    /// Fixes the set of clients expected to receive: those ready now. Call when publishing begins.
    pub fn freeze_membership(&mut self) {
        self.frozen = true;
    }

    /// Allocates the next sequence number of `room` for a publish about to be sent.
    pub fn next_publish(&mut self, room: u32) -> u64 {
        let seq = self.next_seq[room as usize];
        self.next_seq[room as usize] += 1;
        self.expected_sent += self.room_members[room as usize];
        seq
    }

    /// The publish `seq` of `room` succeeded or failed.
    pub fn publish_done(&mut self, room: u32, seq: u64, ok: bool) {
        let members = self.room_members[room as usize];
        if ok {
            self.published_ok[room as usize].insert(seq);
            self.publishes_ok += 1;
            self.expected_ok += members;
        } else {
            self.publishes_failed += 1;
            self.expected_sent -= members;
        }
    }

    /// Spreads the clients over `nodes` servers (`client_node[c]`); room `r` is published on node `r % nodes`, so a
    /// receipt by a client on another node is counted in [`Stats::latency_cross_node`] too.
    pub fn set_nodes(&mut self, client_node: Vec<u8>, nodes: usize) {
        self.client_node = client_node;
        self.nodes = nodes.max(1);
    }

    /// Client `c` received publish `seq` of `room` (`room_matches`: the event named the room the client joined),
    /// `latency_us` after it was sent.
    pub fn delivered(&mut self, c: u32, room: u32, room_matches: bool, seq: u64, latency_us: u64) {
        let i = c as usize;
        if !room_matches || self.client_room[i] != Some(room) {
            self.misrouted += 1;
            return;
        }
        if self.received[i].insert(seq) {
            self.deliveries += 1;
            self.latency.record(latency_us);
            if self.nodes > 1
                && self.client_node.get(i).map(|n| usize::from(*n))
                    != Some(room as usize % self.nodes)
            {
                self.latency_cross_node.record(latency_us);
            }
        } else {
            self.duplicated += 1;
        }
    }

    /// Deliveries of publishes sent so far that have not arrived yet (flow control).
    pub fn outstanding(&self) -> u64 {
        self.expected_sent.saturating_sub(self.deliveries)
    }

    /// The end-of-run totals.
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            expected: 0,
            received_expected: 0,
            missed: 0,
            unexpected: 0,
        };
        for (i, got) in self.received.iter().enumerate() {
            let Some(room) = self.client_room[i] else {
                continue;
            };
            let published = &self.published_ok[room as usize];
            t.unexpected += got.count_missing_from(published);
            if self.counted[i] {
                let expected = published.len();
                let missed = published.count_missing_from(got);
                t.expected += expected;
                t.missed += missed;
                t.received_expected += expected - missed;
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missed_duplicated_misrouted_and_unexpected_are_exact() {
        // Clients 0, 1 in room 0; client 2 in room 1; client 3 joins after publishing began.
        let mut s = Stats::new(4, 2);
        s.client_ready(0, Some(0), 10, 10);
        s.client_ready(1, Some(0), 10, 10);
        s.client_ready(2, Some(1), 10, 10);
        s.freeze_membership();
        s.client_ready(3, Some(0), 10, 10);
        let a = s.next_publish(0);
        let b = s.next_publish(0);
        let c = s.next_publish(1);
        let failed = s.next_publish(1);
        assert_eq!(s.expected_sent, 6);
        s.publish_done(0, a, true);
        s.publish_done(0, b, true);
        s.publish_done(1, c, true);
        s.publish_done(1, failed, false);
        assert_eq!(s.expected_ok, 5);
        assert_eq!(s.expected_sent, 5);

        s.delivered(0, 0, true, a, 100);
        s.delivered(0, 0, true, b, 200);
        s.delivered(0, 0, true, b, 300); // duplicate
        s.delivered(1, 0, true, a, 400); // client 1 misses b
        s.delivered(2, 1, true, c, 500);
        s.delivered(2, 1, true, failed, 600); // unexpected: its publish failed
        s.delivered(2, 0, true, a, 700); // misrouted: wrong room
        s.delivered(1, 0, false, b, 700); // misrouted: wrong room name
        s.delivered(3, 0, true, a, 800); // late joiner: not expected, not missed

        assert_eq!(s.duplicated, 1);
        assert_eq!(s.misrouted, 2);
        assert_eq!(s.deliveries, 6);
        assert_eq!(s.latency.count(), 6);
        assert_eq!(s.latency.max(), 800);
        let t = s.totals();
        assert_eq!(
            t,
            Totals {
                expected: 5,
                received_expected: 4,
                missed: 1,
                unexpected: 1
            }
        );
    }

    #[test]
    fn failures_and_losses_are_counted_once() {
        let mut s = Stats::new(2, 1);
        s.client_failed(0, "refused");
        s.client_failed(0, "refused");
        s.client_ready(1, Some(0), 5, 5);
        s.client_failed(1, "closed");
        assert_eq!((s.failed, s.lost, s.ready), (1, 1, 1));
        assert_eq!(s.failures.get("refused"), Some(&1));
    }

    #[test]
    fn stragglers_become_failures_and_stay_so() {
        let mut s = Stats::new(3, 1);
        s.client_ready(0, Some(0), 5, 5);
        s.fail_stragglers("slow");
        s.client_ready(1, Some(0), 5, 5);
        assert_eq!((s.ready, s.failed, s.room_members(0)), (1, 2, 1));
        assert_eq!(s.failures.get("slow"), Some(&2));
    }
}
