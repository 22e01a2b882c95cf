//! The live page at `GET /` (dev mode, or `serve.live_page`): one static HTML document with its own small
//! Socket.IO client (Engine.IO v4 over a websocket: open, ping/pong, CONNECT, events). It reads `/metrics` every
//! second (shards, connections, sockets, sessions, packet rate), and with an access token (typed in, or given in the
//! URL fragment `#token=...`, which never reaches the server) creates a channel and messages over the REST API and
//! shows the `realtime:resource` events of their rooms as they arrive.
//!
//! The page holds no data: everything it shows comes from `/metrics` (public) or from REST and Socket.IO calls made
//! with the caller's own token, so it never exposes anything the caller could not read over REST.

use crate::server::Response;

/// The page.
pub const HTML: &str = include_str!("page.html");

/// The answer to `GET /`.
pub fn response() -> Response {
    Response::new(200, "text/html; charset=utf-8", HTML)
        .with_header("Cache-Control", "no-store")
        .with_header(
            "Content-Security-Policy",
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:",
        )
        .with_header("X-Content-Type-Options", "nosniff")
}
