//! The live page at `GET /` (dev mode, or `serve.live_page`): one static HTML document with its own small
//! Socket.IO client (Engine.IO v4 over a websocket: open, ping/pong, CONNECT, events). It reads `/metrics` every
//! second (shards, connections, sockets, sessions, packet rate) and `/live/stats` (rooms, realtime events, summed
//! over the shards), and with an access token (typed in, or given in the
//! URL fragment `#token=...`, which never reaches the server) creates a channel and messages over the REST API and
//! shows the `realtime:resource` events of their rooms as they arrive.
//!
//! The page holds no data: everything it shows comes from `/metrics` and `/live/stats` (counts only) or from REST and Socket.IO calls made
//! with the caller's own token, so it never exposes anything the caller could not read over REST.

use std::rc::Rc;

use crate::realtime::live::LiveShard;
use crate::server::{Response, ResponseFuture, ShardCtx};

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

/// `GET /live/stats` (with the live page): the server's rooms and realtime events, summed over every shard (asked
/// over the shard mesh; a shard whose queue is full is left out of that answer):
/// `{"shards", "shards_answered", "rooms", "events_published_total"}`. Counts only, like `/metrics`.
pub fn stats(shard: &Rc<ShardCtx>) -> ResponseFuture {
    let mut answers = Vec::with_capacity(shard.nr_shards());
    for i in 0..shard.nr_shards() {
        let (tx, rx) = tokio::sync::oneshot::channel::<(u64, u64)>();
        let sent = shard.send_to(i, move |ctx| {
            if let Some(live) = ctx.state::<LiveShard>() {
                let _ = tx.send((
                    live.owned_room_count() as u64,
                    live.stats().events_published.get(),
                ));
            }
        });
        if sent.is_ok() {
            answers.push(rx);
        }
    }
    let shards = shard.nr_shards();
    Box::pin(async move {
        let (mut answered, mut rooms, mut events) = (0u64, 0u64, 0u64);
        for rx in answers {
            // A dropped sender (the shard had no realtime state) is an error: that shard is left out.
            if let Ok((r, e)) = rx.await {
                answered += 1;
                rooms += r;
                events += e;
            }
        }
        Response::json(
            200,
            &serde_json::json!({
                "shards": shards,
                "shards_answered": answered,
                "rooms": rooms,
                "events_published_total": events,
            }),
        )
        .with_header("Cache-Control", "no-store")
    })
}
