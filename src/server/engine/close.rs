//! [`CloseReason`]: every way an Engine.IO session ends, with the reason string Socket.IO reports for it and the
//! level it is logged at. [`CloseReason::log`] is the one place a session's close is logged.

use std::fmt;

use tracing::Level;

/// Why a session ended. Its `Display` is the detailed reason handed to the application (a Socket.IO
/// `on_disconnect` sees it, `client close` excepted: that one is `client namespace disconnect`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The transport ended: the TCP stream closed, or the client sent a websocket close frame.
    TransportClose,
    /// The connection of a pending polling GET ended while it waited.
    PollAborted,
    /// Writing to the transport failed.
    WriteFailed,
    /// The websocket frame layer refused a frame (`what` says how, `detail` is the frame layer's error).
    WebSocket {
        /// `websocket message too big`, `invalid UTF-8 in websocket text` or `websocket protocol error`.
        what: &'static str,
        /// The frame layer's error.
        detail: String,
    },
    /// The stream ended inside a websocket frame.
    TruncatedFrame {
        /// Bytes received since the last complete message.
        bytes: usize,
    },
    /// No pong (v4) or no packet (v3) within pingInterval + pingTimeout.
    PingTimeout,
    /// The client sent an Engine.IO `close` packet.
    ClientClose,
    /// A packet did not parse or broke the protocol; the text says which and how.
    Protocol(String),
    /// More bytes queued for the client than `socket_queued_bytes_max`: it does not read.
    SlowReader {
        /// Bytes queued when the bound was crossed.
        queued_bytes: usize,
        /// `socket_queued_bytes_max`.
        max_bytes: usize,
        /// Websocket control frames (pongs, close replies) were part of them.
        control_frames: bool,
    },
    /// More noops and pings in one second than `heartbeats_per_session_per_s_max`.
    HeartbeatFlood {
        /// `heartbeats_per_session_per_s_max`.
        max: u32,
    },
    /// A polling POST larger than `payload_bytes_max`.
    PayloadTooLarge {
        /// The body's size.
        bytes: usize,
        /// `payload_bytes_max`.
        max_bytes: usize,
    },
    /// More than a request's worth of bytes pipelined behind a pending polling GET.
    PipelinedBehindPoll,
    /// A second polling GET while one is pending.
    OverlappingPoll,
    /// Graceful shutdown of the server.
    ServerShutdown,
    /// The application closed the session.
    ServerClose,
    /// No Socket.IO CONNECT within `connect_timeout_ms`.
    ConnectTimeout,
    /// A binary packet's attachments did not all arrive within `partial_packet_timeout_ms`.
    PartialPacketTimeout {
        /// `partial_packet_timeout_ms`.
        timeout_ms: u64,
    },
    /// The partial binary packets of the shard hold more than `partial_packets_bytes_per_shard_max`.
    PartialPacketBytes {
        /// Bytes held.
        held_bytes: usize,
        /// `partial_packets_bytes_per_shard_max`.
        max_bytes: usize,
    },
}

impl CloseReason {
    /// The reason the reference Socket.IO server reports for such a close.
    pub fn socketio_reason(&self) -> &'static str {
        match self {
            CloseReason::TransportClose | CloseReason::PollAborted => "transport close",
            CloseReason::WriteFailed
            | CloseReason::WebSocket { .. }
            | CloseReason::TruncatedFrame { .. }
            | CloseReason::OverlappingPoll => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::ClientClose => "client namespace disconnect",
            CloseReason::Protocol(_)
            | CloseReason::PayloadTooLarge { .. }
            | CloseReason::PartialPacketTimeout { .. }
            | CloseReason::PartialPacketBytes { .. } => "parse error",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::SlowReader { .. }
            | CloseReason::HeartbeatFlood { .. }
            | CloseReason::PipelinedBehindPoll
            | CloseReason::ServerClose
            | CloseReason::ConnectTimeout => "forced server close",
        }
    }

    /// The level a close for this reason is logged at: routine ends at debug, a client the server had to drop for
    /// not reading at warn, everything else at info.
    pub fn level(&self) -> Level {
        match self {
            CloseReason::TransportClose
            | CloseReason::ClientClose
            | CloseReason::ServerShutdown => Level::DEBUG,
            CloseReason::SlowReader { .. } => Level::WARN,
            _ => Level::INFO,
        }
    }

    /// Log the close of session `sid` on `shard`: the one place a session's close is logged.
    pub(crate) fn log(&self, shard: usize, sid: &str) {
        let socketio = self.socketio_reason();
        match self.level() {
            Level::DEBUG => {
                tracing::debug!(shard, sid, reason = %self, socketio, "session closed")
            }
            Level::WARN => tracing::warn!(shard, sid, reason = %self, socketio, "session closed"),
            _ => tracing::info!(shard, sid, reason = %self, socketio, "session closed"),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::TransportClose => f.write_str("transport close"),
            CloseReason::PollAborted => f.write_str("transport close (polling request aborted)"),
            CloseReason::WriteFailed => f.write_str("transport error (write failed)"),
            CloseReason::WebSocket { what, detail } => write!(f, "{what}: {detail}"),
            CloseReason::TruncatedFrame { bytes } => write!(
                f,
                "truncated websocket frame: stream ended {bytes} bytes into a frame"
            ),
            CloseReason::PingTimeout => f.write_str("ping timeout"),
            CloseReason::ClientClose => f.write_str("client close"),
            CloseReason::Protocol(what) => f.write_str(what),
            CloseReason::SlowReader {
                queued_bytes,
                max_bytes,
                control_frames: false,
            } => write!(
                f,
                "slow reader: {queued_bytes} bytes queued, socket_queued_bytes_max is {max_bytes}"
            ),
            CloseReason::SlowReader {
                queued_bytes,
                max_bytes,
                control_frames: true,
            } => write!(
                f,
                "slow reader: {queued_bytes} bytes queued (control frames included), socket_queued_bytes_max is \
                 {max_bytes}"
            ),
            CloseReason::HeartbeatFlood { max } => write!(
                f,
                "heartbeat flood: more than heartbeats_per_session_per_s_max ({max}) noops or pings in one second"
            ),
            CloseReason::PayloadTooLarge { bytes, max_bytes } => write!(
                f,
                "polling payload of {bytes} bytes exceeds payload_bytes_max {max_bytes}"
            ),
            CloseReason::PipelinedBehindPoll => {
                f.write_str("too many bytes pipelined behind a pending poll")
            }
            CloseReason::OverlappingPoll => f.write_str("overlapping polling GET requests"),
            CloseReason::ServerShutdown => f.write_str("server shutting down"),
            CloseReason::ServerClose => f.write_str("server closed the session"),
            CloseReason::ConnectTimeout => {
                f.write_str("connect timeout: no Socket.IO CONNECT received")
            }
            CloseReason::PartialPacketTimeout { timeout_ms } => write!(
                f,
                "partial binary packet: attachments not all received within partial_packet_timeout_ms \
                 ({timeout_ms} ms)"
            ),
            CloseReason::PartialPacketBytes {
                held_bytes,
                max_bytes,
            } => write!(
                f,
                "partial binary packets of this shard hold {held_bytes} bytes, \
                 partial_packets_bytes_per_shard_max is {max_bytes}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detailed reasons are what handlers saw before the enum existed; tests and clients match on them.
    #[test]
    fn reasons_read_as_before_and_carry_their_level() {
        let cases = [
            (CloseReason::TransportClose, "transport close", Level::DEBUG),
            (CloseReason::ClientClose, "client close", Level::DEBUG),
            (
                CloseReason::ServerShutdown,
                "server shutting down",
                Level::DEBUG,
            ),
            (CloseReason::PingTimeout, "ping timeout", Level::INFO),
            (
                CloseReason::SlowReader {
                    queued_bytes: 10,
                    max_bytes: 5,
                    control_frames: true,
                },
                "slow reader: 10 bytes queued (control frames included), socket_queued_bytes_max is 5",
                Level::WARN,
            ),
            (
                CloseReason::PartialPacketTimeout { timeout_ms: 7 },
                "partial binary packet: attachments not all received within partial_packet_timeout_ms (7 ms)",
                Level::INFO,
            ),
        ];
        for (reason, text, level) in cases {
            assert_eq!(reason.to_string(), text);
            assert_eq!(reason.level(), level, "{text}");
        }
        assert_eq!(
            CloseReason::ClientClose.socketio_reason(),
            "client namespace disconnect"
        );
        assert_eq!(
            CloseReason::WriteFailed.socketio_reason(),
            "transport error"
        );
    }
}
