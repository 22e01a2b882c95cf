//! Which transport a session is on and what its requests get, as a sans-IO state machine: inputs (a polling GET
//! arrives, is woken or ends; a POST arrives; a websocket for the session opens, probes, upgrades or is abandoned;
//! the session closes) and actions (answer the poll with a noop, a close or the queued packets; keep it waiting;
//! refuse with an Engine.IO error; close; refuse a second websocket; ...). The drivers ([`super::polling`],
//! [`super::websocket`]) and [`super::session::Session`] carry them out.
//!
//! The rules (protocol.md, Engine.IO "transports" and "upgrade"):
//! - one GET at a time: a second one while one is pending closes the session, the first is answered with a close;
//! - during an upgrade the pending GET is answered with a noop after the probe, and polling ends at the upgrade;
//! - after the upgrade (and while it runs) polling requests get 400 and a second websocket is closed at once;
//! - a server close answers a pending GET with a close packet, or queues one on the websocket; a client close
//!   answers it with a noop, and one late GET (sent beside the closing POST) still gets that noop.

use crate::proto::{EioVersion, Handshake};

use super::super::config::ServerConfig;
use super::CloseReason;

/// The handshake (`open` packet) of a new session on `phase`: on polling it offers the websocket upgrade, on a
/// websocket nothing; v4 announces maxPayload, v3 has no such field.
pub(crate) fn handshake(
    sid: &str,
    version: EioVersion,
    phase: Phase,
    cfg: &ServerConfig,
) -> Handshake {
    Handshake {
        sid: sid.to_owned(),
        upgrades: if phase == Phase::Polling {
            vec!["websocket".into()]
        } else {
            Vec::new()
        },
        ping_interval_ms: cfg.ping_interval_ms,
        ping_timeout_ms: cfg.ping_timeout_ms,
        max_payload_bytes: (version == EioVersion::V4).then_some(cfg.payload_bytes_max as u64),
    }
}

/// The transport of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Polling,
    /// A websocket probes; polling still works.
    Upgrading,
    WebSocket,
}

/// The packet a pending poll is answered with when it is not the queued packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GetEnd {
    Noop,
    Close,
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseHow {
    /// Server-initiated: send an Engine.IO `close` packet (a pending poll is answered with `1`).
    SendClose,
    /// The client asked to close: a pending poll is answered with `6`.
    ClientClosed,
    /// The transport is gone or must be dropped at once (slow reader): nothing more is written.
    Abort,
}

/// The Engine.IO errors a request of a session may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EioError {
    /// Code 1, "Session ID unknown" (also: the session is closed).
    UnknownSid,
    /// Code 3, "Bad request".
    BadRequest,
}

/// Something that happened to the session's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// A polling GET arrives.
    PollArrives,
    /// The pending GET was woken; `queued`: packets wait in the outgoing queue.
    PollWakes { queued: bool },
    /// The pending GET ended (answered, or its connection is gone).
    PollEnds,
    /// A polling POST arrives.
    PostArrives,
    /// A websocket with the session's sid finished its handshake.
    WebSocketOpens,
    /// The upgrading websocket sent the probe (`2probe`; its `3probe` is already queued).
    Probe,
    /// The upgrading websocket sent the upgrade packet.
    Upgrade,
    /// The upgrading websocket ended before the upgrade.
    UpgradeAbandoned,
    /// The session closes.
    Close(CloseHow),
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Go on serving the request (a GET waits, a POST is read, a websocket probes).
    Serve,
    /// Answer the pending GET with this packet.
    AnswerPoll(GetEnd),
    /// Answer the pending GET with every queued packet.
    AnswerPollWithQueue,
    /// Keep the GET waiting.
    Wait,
    /// Answer the request with this error.
    Refuse(EioError),
    /// Close the session with a close packet, for this reason.
    Close(CloseReason),
    /// Accept the websocket at the HTTP level and close it at once: the session has one.
    RefuseWebSocket,
    /// The websocket may just end: the session is gone.
    EndWebSocket,
    /// The session now runs on the websocket.
    Upgraded,
    /// The upgrade was abandoned: the session is back on polling.
    BackToPolling,
    /// Wake the pending GET and the writers.
    Wake,
    /// Queue the Engine.IO close packet as the session's last.
    QueueClosePacket,
    /// The session is closed; it was on `phase`. `late_poll`: keep it for one late poll before forgetting it.
    Closed { phase: Phase, late_poll: bool },
}

/// The transport state of one session.
#[derive(Debug)]
pub(crate) struct Transport {
    phase: Phase,
    get_pending: bool,
    get_end: Option<GetEnd>,
    closed: bool,
    aborted: bool,
}

impl Transport {
    pub(crate) fn new(phase: Phase) -> Transport {
        Transport {
            phase,
            get_pending: false,
            get_end: None,
            closed: false,
            aborted: false,
        }
    }
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }
    /// Nothing more may be written (slow reader, transport gone).
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted
    }
    /// Drop the transport at once (a slow reader), closed or not.
    pub(crate) fn abort(&mut self) {
        self.aborted = true;
    }

    /// Handle one input.
    pub(crate) fn handle(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::PollArrives => {
                if self.closed {
                    // Closed by the client just before: one poll gets the noop, later ones 400.
                    if !self.get_pending && self.get_end == Some(GetEnd::Noop) {
                        self.get_end = None;
                        return vec![Action::AnswerPoll(GetEnd::Noop)];
                    }
                    return vec![Action::Refuse(EioError::UnknownSid)];
                }
                if self.phase == Phase::WebSocket {
                    return vec![Action::Refuse(EioError::BadRequest)];
                }
                if self.get_pending {
                    return vec![
                        Action::Close(CloseReason::OverlappingPoll),
                        Action::Refuse(EioError::BadRequest),
                    ];
                }
                self.get_pending = true;
                vec![Action::Serve]
            }
            Input::PollWakes { queued } => {
                if let Some(end) = self.get_end.take() {
                    vec![Action::AnswerPoll(end)]
                } else if queued {
                    vec![Action::AnswerPollWithQueue]
                } else if self.closed {
                    vec![Action::Refuse(EioError::UnknownSid)]
                } else if self.phase == Phase::Upgrading {
                    vec![Action::AnswerPoll(GetEnd::Noop)]
                } else {
                    vec![Action::Wait]
                }
            }
            Input::PollEnds => {
                self.get_pending = false;
                Vec::new()
            }
            Input::PostArrives => {
                if self.closed {
                    vec![Action::Refuse(EioError::UnknownSid)]
                } else if self.phase == Phase::WebSocket {
                    vec![Action::Refuse(EioError::BadRequest)]
                } else {
                    vec![Action::Serve]
                }
            }
            Input::WebSocketOpens => {
                if self.closed {
                    vec![Action::EndWebSocket]
                } else if self.phase != Phase::Polling {
                    vec![Action::RefuseWebSocket]
                } else {
                    self.phase = Phase::Upgrading;
                    vec![Action::Serve]
                }
            }
            Input::Probe => {
                if self.get_pending {
                    self.get_end = Some(GetEnd::Noop);
                }
                vec![Action::Wake]
            }
            Input::Upgrade => {
                self.phase = Phase::WebSocket;
                vec![Action::Upgraded, Action::Wake]
            }
            Input::UpgradeAbandoned => {
                if self.phase == Phase::Upgrading {
                    self.phase = Phase::Polling;
                    vec![Action::BackToPolling, Action::Wake]
                } else {
                    Vec::new()
                }
            }
            Input::Close(how) => {
                if self.closed {
                    return Vec::new();
                }
                self.closed = true;
                let mut actions = Vec::new();
                let mut late_poll = false;
                match how {
                    CloseHow::SendClose => {
                        if self.get_pending {
                            self.get_end = Some(GetEnd::Close);
                        } else if self.phase == Phase::WebSocket {
                            actions.push(Action::QueueClosePacket);
                        }
                    }
                    CloseHow::ClientClosed => {
                        if self.get_pending {
                            self.get_end = Some(GetEnd::Noop);
                        } else if self.phase == Phase::Polling {
                            // A poll sent together with the closing POST may reach us just after it (another
                            // connection, maybe another shard): it gets the noop it would have got had it come first.
                            self.get_end = Some(GetEnd::Noop);
                            late_poll = true;
                        }
                    }
                    CloseHow::Abort => self.aborted = true,
                }
                actions.push(Action::Closed {
                    phase: self.phase,
                    late_poll,
                });
                actions
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Action::*;

    /// Feed `script` (input, expected actions) to the transport of a session that starts on `phase`.
    fn check(phase: Phase, script: &[(Input, Vec<Action>)]) {
        let mut t = Transport::new(phase);
        for (step, (input, expected)) in script.iter().enumerate() {
            assert_eq!(&t.handle(*input), expected, "step {step}: {input:?}");
        }
    }

    const WAKE_EMPTY: Input = Input::PollWakes { queued: false };
    const WAKE_QUEUED: Input = Input::PollWakes { queued: true };

    fn closed(phase: Phase, late_poll: bool) -> Action {
        Closed { phase, late_poll }
    }

    #[test]
    fn the_handshake_offers_the_upgrade_on_polling_and_max_payload_on_v4() {
        let cfg = ServerConfig::default();
        let open = |version, phase| handshake("00abc", version, phase, &cfg);
        let expected = |upgrades: &[&str], max_payload_bytes| Handshake {
            sid: "00abc".into(),
            upgrades: upgrades.iter().map(|u| u.to_string()).collect(),
            ping_interval_ms: cfg.ping_interval_ms,
            ping_timeout_ms: cfg.ping_timeout_ms,
            max_payload_bytes,
        };
        let max = Some(cfg.payload_bytes_max as u64);
        assert_eq!(
            open(EioVersion::V4, Phase::Polling),
            expected(&["websocket"], max)
        );
        assert_eq!(open(EioVersion::V4, Phase::WebSocket), expected(&[], max));
        assert_eq!(
            open(EioVersion::V3, Phase::Polling),
            expected(&["websocket"], None)
        );
        assert_eq!(open(EioVersion::V3, Phase::WebSocket), expected(&[], None));
    }

    #[test]
    fn a_poll_waits_for_packets_and_a_post_is_served() {
        check(
            Phase::Polling,
            &[
                (Input::PollArrives, vec![Serve]),
                (WAKE_EMPTY, vec![Wait]),
                (Input::PostArrives, vec![Serve]),
                (WAKE_QUEUED, vec![AnswerPollWithQueue]),
                (Input::PollEnds, vec![]),
                (Input::PollArrives, vec![Serve]),
            ],
        );
    }

    #[test]
    fn an_overlapping_get_closes_the_session_and_the_first_gets_a_close() {
        check(
            Phase::Polling,
            &[
                (Input::PollArrives, vec![Serve]),
                (
                    Input::PollArrives,
                    vec![
                        Close(CloseReason::OverlappingPoll),
                        Refuse(EioError::BadRequest),
                    ],
                ),
                // What the session's close then does: the first poll gets the close packet.
                (
                    Input::Close(CloseHow::SendClose),
                    vec![closed(Phase::Polling, false)],
                ),
                (WAKE_QUEUED, vec![AnswerPoll(GetEnd::Close)]),
                (Input::PollEnds, vec![]),
                (Input::PollArrives, vec![Refuse(EioError::UnknownSid)]),
                (Input::PostArrives, vec![Refuse(EioError::UnknownSid)]),
            ],
        );
    }

    #[test]
    fn the_upgrade_probes_answers_the_poll_with_a_noop_and_ends_polling() {
        check(
            Phase::Polling,
            &[
                (Input::PollArrives, vec![Serve]),
                (Input::WebSocketOpens, vec![Serve]),
                // A second websocket while the first upgrades is closed at once.
                (Input::WebSocketOpens, vec![RefuseWebSocket]),
                (Input::Probe, vec![Wake]),
                (WAKE_QUEUED, vec![AnswerPoll(GetEnd::Noop)]),
                (Input::PollEnds, vec![]),
                // While upgrading, a new poll is answered with a noop at once.
                (Input::PollArrives, vec![Serve]),
                (WAKE_EMPTY, vec![AnswerPoll(GetEnd::Noop)]),
                (Input::PollEnds, vec![]),
                (Input::Upgrade, vec![Upgraded, Wake]),
                (Input::PollArrives, vec![Refuse(EioError::BadRequest)]),
                (Input::PostArrives, vec![Refuse(EioError::BadRequest)]),
                (Input::WebSocketOpens, vec![RefuseWebSocket]),
                // A server close goes out on the websocket.
                (
                    Input::Close(CloseHow::SendClose),
                    vec![QueueClosePacket, closed(Phase::WebSocket, false)],
                ),
                (Input::Close(CloseHow::SendClose), vec![]),
            ],
        );
    }

    #[test]
    fn an_abandoned_upgrade_goes_back_to_polling() {
        check(
            Phase::Polling,
            &[
                (Input::WebSocketOpens, vec![Serve]),
                (Input::UpgradeAbandoned, vec![BackToPolling, Wake]),
                (Input::UpgradeAbandoned, vec![]),
                (Input::PollArrives, vec![Serve]),
                (WAKE_EMPTY, vec![Wait]),
            ],
        );
    }

    #[test]
    fn a_client_close_answers_the_pending_or_one_late_poll_with_a_noop() {
        check(
            Phase::Polling,
            &[
                (Input::PollArrives, vec![Serve]),
                (
                    Input::Close(CloseHow::ClientClosed),
                    vec![closed(Phase::Polling, false)],
                ),
                (WAKE_EMPTY, vec![AnswerPoll(GetEnd::Noop)]),
            ],
        );
        check(
            Phase::Polling,
            &[
                (
                    Input::Close(CloseHow::ClientClosed),
                    vec![closed(Phase::Polling, true)],
                ),
                (Input::PollArrives, vec![AnswerPoll(GetEnd::Noop)]),
                (Input::PollArrives, vec![Refuse(EioError::UnknownSid)]),
            ],
        );
    }

    #[test]
    fn a_closed_session_takes_no_websocket_and_an_abort_writes_nothing() {
        let mut t = Transport::new(Phase::WebSocket);
        assert_eq!(
            t.handle(Input::Close(CloseHow::Abort)),
            vec![closed(Phase::WebSocket, false)]
        );
        assert!(t.is_aborted());
        assert_eq!(t.handle(Input::WebSocketOpens), vec![EndWebSocket]);
    }
}
