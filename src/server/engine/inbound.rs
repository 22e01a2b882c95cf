//! What a packet from the client is to the session, sans-IO: decoding a websocket frame (a frame that is no
//! Engine.IO packet is a parse error that closes the session) and routing a decoded packet to the close, the
//! heartbeat or the handler. [`super::session::Session`] carries the route out.

use std::borrow::Cow;

use crate::proto::EioVersion;
use crate::proto::engine::Packet;

use super::CloseReason;

/// Where a packet from the client goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// The client closes the session.
    ClientClose,
    /// A ping (v3: answered with a pong with the same data; v4: the wrong direction).
    Ping(Cow<'a, str>),
    /// A pong (v4: answers the server's ping; v3: the wrong direction).
    Pong,
    /// A noop: counts toward the flood bound, nothing else.
    Noop,
    /// A text message for the handler.
    Text(Cow<'a, str>),
    /// A binary message for the handler.
    Binary(Cow<'a, [u8]>),
    /// Not a packet a client may send: the session closes with this reason.
    Refuse(CloseReason),
}

/// Decode one websocket text frame.
pub(crate) fn decode_text(text: &str) -> Result<Packet<'_>, CloseReason> {
    Packet::decode_text(text)
        .map_err(|e| CloseReason::Protocol(format!("invalid Engine.IO packet: {e}")))
}

/// Decode one websocket binary frame of revision `version`.
pub(crate) fn decode_binary(version: EioVersion, data: &[u8]) -> Result<Packet<'_>, CloseReason> {
    Packet::decode_binary(version, data)
        .map_err(|e| CloseReason::Protocol(format!("invalid Engine.IO binary packet: {e}")))
}

/// Where a decoded packet goes.
pub(crate) fn route(packet: Packet<'_>) -> Route<'_> {
    match packet {
        Packet::Close => Route::ClientClose,
        Packet::Ping(data) => Route::Ping(data),
        Packet::Pong(_) => Route::Pong,
        Packet::Noop => Route::Noop,
        Packet::Message(text) => Route::Text(text),
        Packet::Binary(data) => Route::Binary(data),
        Packet::Open(_) | Packet::Upgrade => {
            Route::Refuse(CloseReason::Protocol("unexpected packet type".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A websocket frame from the client: text, or binary of a revision.
    enum Frame {
        Text(&'static str),
        Binary(EioVersion, &'static [u8]),
    }

    /// Decode and route each frame of `script`, expecting that route.
    fn check(script: &[(Frame, Route<'static>)]) {
        for (step, (frame, expected)) in script.iter().enumerate() {
            let decoded = match frame {
                Frame::Text(t) => decode_text(t),
                Frame::Binary(v, b) => decode_binary(*v, b),
            };
            let got = match decoded {
                Ok(p) => route(p),
                Err(reason) => Route::Refuse(reason),
            };
            assert_eq!(&got, expected, "step {step}");
        }
    }

    fn parse_error(what: &str, e: crate::proto::Error) -> Route<'static> {
        Route::Refuse(CloseReason::Protocol(format!(
            "invalid Engine.IO {what}: {e}"
        )))
    }

    #[test]
    fn frames_go_to_the_close_the_heartbeat_or_the_handler() {
        check(&[
            (Frame::Text("1"), Route::ClientClose),
            (Frame::Text("2probe"), Route::Ping("probe".into())),
            (Frame::Text("3"), Route::Pong),
            (Frame::Text("6"), Route::Noop),
            (Frame::Text("4hello"), Route::Text("hello".into())),
            (
                Frame::Binary(EioVersion::V4, &[1, 2]),
                Route::Binary(vec![1, 2].into()),
            ),
            (
                Frame::Binary(EioVersion::V3, &[4, 1, 2]),
                Route::Binary(vec![1, 2].into()),
            ),
        ]);
    }

    #[test]
    fn parse_errors_and_server_only_packets_close_the_session() {
        let unexpected = Route::Refuse(CloseReason::Protocol("unexpected packet type".into()));
        check(&[
            (
                Frame::Text(""),
                parse_error("packet", Packet::decode_text("").unwrap_err()),
            ),
            (
                Frame::Text("9"),
                parse_error("packet", Packet::decode_text("9").unwrap_err()),
            ),
            (
                Frame::Binary(EioVersion::V3, &[1]),
                parse_error(
                    "binary packet",
                    Packet::decode_binary(EioVersion::V3, &[1]).unwrap_err(),
                ),
            ),
            (Frame::Text("0{}"), unexpected.clone()),
            (Frame::Text("5"), unexpected),
        ]);
    }
}
