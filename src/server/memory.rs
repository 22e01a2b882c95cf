//! In-memory connections: a real Engine.IO session on the websocket transport, with the Socket.IO handler of the
//! shard's app, and no network under it. What the client would send is fed in as websocket messages; what the
//! server would write is drained out as the exact websocket frame bytes its writer task produces.
//!
//! Useful to test handlers without sockets, and to measure the server's own work per message (`benches/fanout.rs`
//! drains 10,000 of them after each room broadcast).
//!
//! ```no_run
//! # use std::rc::Rc;
//! # use shardcast::server::ShardCtx;
//! # fn on_shard(shard: &Rc<ShardCtx>) {
//! use shardcast::proto::EioVersion;
//!
//! let conn = shard.connect_in_memory(EioVersion::V4);
//! conn.feed_text("40").expect("CONNECT to the main namespace");
//! let bytes = conn.drain(); // the open packet's frame, then the CONNECT reply's frame
//! # let _ = bytes;
//! # }
//! ```
//!
//! An in-memory connection is driven only by its owner's calls: no task reads or writes it, so nothing is written
//! until [`InMemoryConnection::drain_into`] is called, and the session's queue bound (`socket_queued_bytes_max`)
//! applies between two drains exactly as between two passes of a websocket writer.

use std::cell::Cell;
use std::rc::Rc;

use crate::proto::EioVersion;

use super::engine::Session;
use super::engine::websocket::WriterPass;
use super::runtime::ShardCtx;
use super::socketio;

/// Why an in-memory connection did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InMemoryError {
    /// The session was already closed; the message was not delivered.
    #[error("the session is closed")]
    Closed,
    /// The message was refused (not a valid Engine.IO packet, or its handler rejected it): the session is now closed
    /// with this reason, as a websocket connection would be, and the close is waiting to be drained.
    #[error("message refused, session closed: {0}")]
    Refused(String),
}

/// The client end of an Engine.IO session on the websocket transport, without a network connection. Made by
/// [`ShardCtx::connect_in_memory`]; lives on that shard (`!Send`).
///
/// Dropping it ends the transport (like the TCP stream ending): the session closes with `transport close`.
pub struct InMemoryConnection {
    session: Rc<Session>,
    peer_closed: Cell<bool>,
    finished: Cell<bool>,
}

impl std::fmt::Debug for InMemoryConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryConnection")
            .field("sid", &self.session.sid())
            .field("closed", &self.session.is_closed())
            .finish_non_exhaustive()
    }
}

impl ShardCtx {
    /// Open an Engine.IO session of revision `version` on this shard, already on the websocket transport, with the
    /// Socket.IO handler of this shard's app: what a websocket handshake to a Socket.IO path without `sid` creates,
    /// without the handshake and without a socket. Its open packet is queued (and, for v3, the implicit CONNECT to
    /// `/`); a v4 client must feed a CONNECT (`40`) before the connect timeout, as over a network.
    ///
    /// The session counts in the shard's sessions and metrics like any other, is closed by graceful shutdown, and
    /// is not a TCP connection (`connections_per_shard_max` does not apply). The session takes the app the shard
    /// serves when it is created: call this once the [`super::AppFactory`] has returned (a task spawned by the
    /// factory is polled at once, so it must yield first).
    pub fn connect_in_memory(self: &Rc<Self>, version: EioVersion) -> InMemoryConnection {
        InMemoryConnection {
            session: Session::open_websocket_in_memory(
                self,
                version,
                socketio::connection::session_handler(self, version),
            ),
            peer_closed: Cell::new(false),
            finished: Cell::new(false),
        }
    }
}

impl InMemoryConnection {
    /// The Engine.IO session id.
    pub fn sid(&self) -> &str {
        self.session.sid()
    }

    /// The Engine.IO revision of the session.
    pub fn version(&self) -> EioVersion {
        self.session.version()
    }

    /// True once the session closed (by the server, by a refused message or by [`Self::close_transport`]).
    pub fn is_closed(&self) -> bool {
        self.session.is_closed()
    }

    /// The client sends one websocket text message holding the Engine.IO packet `packet` (`40` connects to `/`,
    /// `42["event",...]` emits an event, `3` answers a ping). It is handled at once, as the websocket reader handles
    /// it; handlers that complete later (an asynchronous `on_connect`) run when the shard's executor gets to them.
    pub fn feed_text(&self, packet: &str) -> Result<(), InMemoryError> {
        if self.session.is_closed() {
            return Err(InMemoryError::Closed);
        }
        self.session
            .receive_websocket_text(packet)
            .map_err(|reason| InMemoryError::Refused(reason.to_string()))
    }

    /// The client sends one websocket binary message (a Socket.IO attachment; with Engine.IO v3 its first byte is
    /// the packet type `4`). See [`Self::feed_text`].
    pub fn feed_binary(&self, data: &[u8]) -> Result<(), InMemoryError> {
        if self.session.is_closed() {
            return Err(InMemoryError::Closed);
        }
        self.session
            .receive_websocket_binary(data)
            .map_err(|reason| InMemoryError::Refused(reason.to_string()))
    }

    /// Append to `out` the bytes the websocket writer would write now: one unmasked frame per queued Engine.IO
    /// packet, in order (and the normal close frame once the server closed the session). Empties the session's
    /// queue. Returns the number of bytes appended. The HTTP `101` answer of the handshake is not part of them.
    pub fn drain_into(&self, out: &mut Vec<u8>) -> usize {
        if self.finished.get() {
            return 0;
        }
        let start = out.len();
        if self
            .session
            .websocket_writer_pass(out, false, self.peer_closed.get())
            != WriterPass::Open
        {
            self.finished.set(true);
        }
        out.len() - start
    }

    /// The bytes the websocket writer would write now, as a new buffer (see [`Self::drain_into`]).
    pub fn drain(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.drain_into(&mut out);
        out
    }

    /// End the transport as a TCP stream ending would: the session closes with `transport close` (a connected
    /// socket's `on_disconnect` sees that reason) and nothing more is written. Idempotent.
    pub fn close_transport(&self) {
        if self.peer_closed.replace(true) {
            return;
        }
        self.finished.set(true);
        self.session.websocket_transport_closed();
    }
}

impl Drop for InMemoryConnection {
    fn drop(&mut self) {
        self.close_transport();
    }
}
