//! The heartbeat of a session as a sans-IO state machine: inputs (the session opened, a timer fired, a pong, a
//! packet, a noop or ping from the client, a request checking the deadline), each with the time it happened, and
//! actions (send a ping, arm timer X in D, close with a reason, refuse a flood). No clock is read and no timer armed
//! here: [`super::session::Session`] feeds it and carries the actions out on the shard's timer wheel.
//!
//! The rules (protocol.md, Engine.IO "heartbeat"):
//! - v4: the server pings every pingInterval; a pong must come within pingTimeout of the ping. A session that has not
//!   answered by pingInterval + pingTimeout after its handshake or last pong is gone.
//! - v3: the client pings; the server answers (the pong is queued by the session) and closes a session from which
//!   nothing arrived for pingInterval + pingTimeout.
//! - Pings (and v3 liveness checks) may fire early, never late: an eighth of their delay, at most 100 ms and 8
//!   timer ticks, so that the heartbeats of many sessions share one wake-up of the shard. The pong deadline itself
//!   is whole ticks, not rounded further.
//! - More than `heartbeats_per_session_per_s_max` noops and pings (Engine.IO or websocket) in one second is a flood.

use std::time::{Duration, Instant};

use crate::proto::EioVersion;

use super::CloseReason;

/// What the heartbeat depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeartbeatConfig {
    pub(crate) version: EioVersion,
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
    /// The timer wheel's tick.
    pub(crate) tick: Duration,
    pub(crate) beats_per_s_max: u32,
}

impl HeartbeatConfig {
    fn window(&self) -> Duration {
        self.ping_interval + self.ping_timeout
    }
    /// How early a timer of `delay` may fire (see the module doc).
    fn slack(&self, delay: Duration) -> Duration {
        (delay / 8)
            .min(Duration::from_millis(100))
            .min(self.tick * 8)
    }
}

/// The heartbeat's timers. A ping generation tells a stale timer (armed before the last pong) from the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// v4: time to send a ping.
    Ping { generation: u64 },
    /// v4: the pong to the ping of this generation is due.
    Pong { generation: u64 },
    /// v3: time to check that the client was heard from.
    Liveness,
}

/// Something that happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// The session was created (its handshake).
    Opened,
    /// A timer armed by [`Action::Arm`] fired.
    Fired(Timer),
    /// The client sent a pong (right from a v4 client only).
    Pong,
    /// The client sent a ping (right from a v3 client only).
    ClientPing,
    /// A packet arrived from the client (v3: it is alive).
    Packet,
    /// A noop or a ping (Engine.IO or websocket) arrived from the client.
    Beat,
    /// A request for the session arrived: is its deadline past? (A busy shard runs timers late.)
    Check,
}

/// What the session must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Queue a ping packet.
    SendPing,
    /// Queue the pong to the client's ping (with the ping's data).
    SendPong,
    /// Arm `timer` to fire after `delay`, or up to `slack` earlier.
    Arm {
        timer: Timer,
        delay: Duration,
        slack: Duration,
    },
    /// The client is gone: close the session with a close packet.
    Close(CloseReason),
    /// The input is refused; the session must close with this reason (a flood, a heartbeat in the wrong direction).
    Refuse(CloseReason),
}

/// The heartbeat state of one session.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    cfg: HeartbeatConfig,
    awaiting_pong: bool,
    /// When the unanswered ping was sent (meaningful while `awaiting_pong`).
    ping_sent: Instant,
    /// The handshake or the last pong: by this + pingInterval + pingTimeout a v4 session has answered a ping.
    heartbeat_from: Instant,
    generation: u64,
    last_heard: Instant,
    /// Noops and pings received in the current one-second window, and when it began.
    beats: u32,
    beats_window: Instant,
}

impl Heartbeat {
    pub(crate) fn new(cfg: HeartbeatConfig, now: Instant) -> Heartbeat {
        Heartbeat {
            cfg,
            awaiting_pong: false,
            ping_sent: now,
            heartbeat_from: now,
            generation: 0,
            last_heard: now,
            beats: 0,
            beats_window: now,
        }
    }

    fn arm(&self, timer: Timer, delay: Duration, slack: Duration) -> Action {
        Action::Arm {
            timer,
            delay,
            slack,
        }
    }

    fn arm_ping(&self) -> Action {
        let delay = self.cfg.ping_interval;
        self.arm(
            Timer::Ping {
                generation: self.generation,
            },
            delay,
            self.cfg.slack(delay),
        )
    }

    /// Handle one input that happened at `now`.
    pub(crate) fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let v4 = self.cfg.version == EioVersion::V4;
        match input {
            Input::Opened if v4 => vec![self.arm_ping()],
            Input::Opened => {
                let window = self.cfg.window();
                vec![self.arm(Timer::Liveness, window, self.cfg.slack(window))]
            }
            Input::Fired(Timer::Ping { generation }) => {
                if generation != self.generation {
                    return Vec::new();
                }
                self.awaiting_pong = true;
                self.ping_sent = now;
                // The pong may take the whole pingTimeout from the ping's actual send (never later than due).
                vec![
                    Action::SendPing,
                    self.arm(
                        Timer::Pong { generation },
                        self.cfg.ping_timeout,
                        Duration::ZERO,
                    ),
                ]
            }
            Input::Fired(Timer::Pong { generation }) => {
                if generation == self.generation && self.awaiting_pong {
                    vec![Action::Close(CloseReason::PingTimeout)]
                } else {
                    Vec::new()
                }
            }
            Input::Fired(Timer::Liveness) => {
                let window = self.cfg.window();
                let elapsed = now.saturating_duration_since(self.last_heard);
                // Within a tick of the window counts as expired: the next check would come after it.
                if elapsed + self.cfg.tick >= window {
                    vec![Action::Close(CloseReason::PingTimeout)]
                } else {
                    let delay = window - elapsed;
                    vec![self.arm(Timer::Liveness, delay, self.cfg.slack(delay))]
                }
            }
            Input::Pong if !v4 => vec![Action::Refuse(CloseReason::Protocol(
                "invalid heartbeat direction (pong from a v3 client)".into(),
            ))],
            Input::ClientPing if v4 => vec![Action::Refuse(CloseReason::Protocol(
                "invalid heartbeat direction (ping from a v4 client)".into(),
            ))],
            Input::ClientPing => match self.handle(Input::Beat, now) {
                refused if !refused.is_empty() => refused,
                _ => vec![Action::SendPong],
            },
            Input::Pong => {
                if !self.awaiting_pong {
                    return Vec::new();
                }
                self.awaiting_pong = false;
                self.generation += 1;
                self.heartbeat_from = now;
                vec![self.arm_ping()]
            }
            Input::Packet => {
                if !v4 {
                    self.last_heard = now;
                }
                Vec::new()
            }
            Input::Beat => {
                if now.saturating_duration_since(self.beats_window) >= Duration::from_secs(1) {
                    self.beats_window = now;
                    self.beats = 0;
                }
                self.beats += 1;
                if self.beats > self.cfg.beats_per_s_max {
                    vec![Action::Refuse(CloseReason::HeartbeatFlood {
                        max: self.cfg.beats_per_s_max,
                    })]
                } else {
                    Vec::new()
                }
            }
            Input::Check => {
                let overdue = if v4 {
                    (self.awaiting_pong
                        && now.saturating_duration_since(self.ping_sent) >= self.cfg.ping_timeout)
                        || now.saturating_duration_since(self.heartbeat_from) >= self.cfg.window()
                } else {
                    now.saturating_duration_since(self.last_heard) >= self.cfg.window()
                };
                if overdue {
                    vec![Action::Close(CloseReason::PingTimeout)]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK_MS: u64 = 10;

    fn cfg(version: EioVersion) -> HeartbeatConfig {
        HeartbeatConfig {
            version,
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            tick: Duration::from_millis(TICK_MS),
            beats_per_s_max: 3,
        }
    }

    fn arm(timer: Timer, delay_us: u64, slack_us: u64) -> Action {
        Action::Arm {
            timer,
            delay: Duration::from_micros(delay_us),
            slack: Duration::from_micros(slack_us),
        }
    }

    const PING0: Timer = Timer::Ping { generation: 0 };
    const PONG0: Timer = Timer::Pong { generation: 0 };
    const PING1: Timer = Timer::Ping { generation: 1 };
    const TIMEOUT: Action = Action::Close(CloseReason::PingTimeout);

    /// Feed `script` (at milliseconds since the handshake, this input, these actions expected) to a new heartbeat.
    fn check(version: EioVersion, script: &[(u64, Input, Vec<Action>)]) {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(cfg(version), t0);
        for (step, (at_ms, input, expected)) in script.iter().enumerate() {
            let got = hb.handle(*input, t0 + Duration::from_millis(*at_ms));
            assert_eq!(&got, expected, "step {step}: {input:?} at {at_ms} ms");
        }
    }

    #[test]
    fn v4_pings_every_interval_and_a_pong_rearms() {
        check(
            EioVersion::V4,
            &[
                // A ping is due by pingInterval, an eighth of it early at most.
                (0, Input::Opened, vec![arm(PING0, 300_000, 37_500)]),
                (
                    290,
                    Input::Fired(PING0),
                    vec![Action::SendPing, arm(PONG0, 200_000, 0)],
                ),
                (350, Input::Pong, vec![arm(PING1, 300_000, 37_500)]),
                // The answered ping's pong timer and a second pong do nothing.
                (490, Input::Fired(PONG0), vec![]),
                (495, Input::Pong, vec![]),
                // A stale ping timer (armed before the pong) sends nothing.
                (500, Input::Fired(PING0), vec![]),
                (
                    650,
                    Input::Fired(PING1),
                    vec![
                        Action::SendPing,
                        arm(Timer::Pong { generation: 1 }, 200_000, 0),
                    ],
                ),
            ],
        );
    }

    #[test]
    fn v4_without_a_pong_closes_at_the_pong_deadline_or_when_a_request_finds_it_late() {
        check(
            EioVersion::V4,
            &[
                (0, Input::Opened, vec![arm(PING0, 300_000, 37_500)]),
                (
                    300,
                    Input::Fired(PING0),
                    vec![Action::SendPing, arm(PONG0, 200_000, 0)],
                ),
                (499, Input::Check, vec![]),
                (500, Input::Fired(PONG0), vec![TIMEOUT]),
            ],
        );
        // Timers late (a busy shard): a request finds the session past pingInterval + pingTimeout.
        check(
            EioVersion::V4,
            &[
                (0, Input::Opened, vec![arm(PING0, 300_000, 37_500)]),
                (499, Input::Check, vec![]),
                (500, Input::Check, vec![TIMEOUT]),
            ],
        );
        // ... or more than pingTimeout after an unanswered ping.
        check(
            EioVersion::V4,
            &[
                (
                    100,
                    Input::Fired(PING0),
                    vec![Action::SendPing, arm(PONG0, 200_000, 0)],
                ),
                (299, Input::Check, vec![]),
                (300, Input::Check, vec![TIMEOUT]),
            ],
        );
    }

    #[test]
    fn v3_answers_pings_and_closes_a_silent_session() {
        check(
            EioVersion::V3,
            &[
                (
                    0,
                    Input::Opened,
                    vec![arm(Timer::Liveness, 500_000, 62_500)],
                ),
                (200, Input::Packet, vec![]),
                (210, Input::ClientPing, vec![Action::SendPong]),
                // Heard at 200: the next check is due 500 ms after that.
                (
                    450,
                    Input::Fired(Timer::Liveness),
                    vec![arm(Timer::Liveness, 250_000, 31_250)],
                ),
                // Within a tick of the window counts as expired.
                (691, Input::Fired(Timer::Liveness), vec![TIMEOUT]),
            ],
        );
        check(
            EioVersion::V3,
            &[
                (200, Input::Packet, vec![]),
                (699, Input::Check, vec![]),
                (700, Input::Check, vec![TIMEOUT]),
            ],
        );
    }

    #[test]
    fn heartbeats_in_the_wrong_direction_are_refused() {
        let refused = |what: &str| {
            vec![Action::Refuse(CloseReason::Protocol(format!(
                "invalid heartbeat direction ({what})"
            )))]
        };
        check(
            EioVersion::V4,
            &[(10, Input::ClientPing, refused("ping from a v4 client"))],
        );
        check(
            EioVersion::V3,
            &[(10, Input::Pong, refused("pong from a v3 client"))],
        );
    }

    #[test]
    fn more_beats_than_the_bound_in_one_second_are_a_flood() {
        let flood = vec![Action::Refuse(CloseReason::HeartbeatFlood { max: 3 })];
        check(
            EioVersion::V4,
            &[
                (0, Input::Beat, vec![]),
                (1, Input::Beat, vec![]),
                (2, Input::Beat, vec![]),
                (3, Input::Beat, flood.clone()),
                // A new one-second window.
                (1000, Input::Beat, vec![]),
            ],
        );
        // v3 pings count too, and a refused one gets no pong.
        check(
            EioVersion::V3,
            &[
                (0, Input::ClientPing, vec![Action::SendPong]),
                (1, Input::Beat, vec![]),
                (2, Input::Beat, vec![]),
                (3, Input::ClientPing, flood),
            ],
        );
    }
}
