//! The Redis connection of one process: one subscriber connection (PSUBSCRIBE/SUBSCRIBE; one connection keeps the
//! order of the channel messages) and one multiplexed connection for PUBLISH and PUBSUB, over the `redis` crate.
//!
//! Why `redis` (redis-rs): it is binary-safe (payloads are bytes, MessagePack goes through unchanged), its async
//! pub/sub connection is a plain stream that simply ends when the server goes away, which lets
//! [`super::adapter`] own the reconnect policy (backoff, resubscribe, the state `/metrics` reports) instead of a
//! hidden one, and it speaks RESP2, which every Redis since 2.x and the Node adapter's clients use (RESP3 push
//! messages are not needed for classic pub/sub). Only this file names the crate.

use std::time::Duration;

use futures_lite::StreamExt;

/// Longest wait for a TCP connection and the subscriptions to be acknowledged.
pub const CONNECT_TIMEOUT_MS: u64 = 3000;

/// A connection error, as text (nothing secret: the URL is not included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(pub String);

impl From<redis::RedisError> for RedisError {
    fn from(e: redis::RedisError) -> Self {
        RedisError(e.to_string())
    }
}

/// One message read from a subscription.
#[derive(Debug, Clone)]
pub struct ChannelMessage {
    /// The channel it was published on.
    pub channel: String,
    /// True if it matched the pattern subscription (a broadcast channel).
    pub from_pattern: bool,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// The subscriber side, already subscribed.
pub struct Subscriber {
    stream: std::pin::Pin<Box<dyn futures_lite::Stream<Item = redis::Msg> + Send>>,
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber").finish_non_exhaustive()
    }
}

impl Subscriber {
    /// The next message; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<ChannelMessage> {
        let msg = self.stream.next().await?;
        Some(ChannelMessage {
            channel: msg.get_channel_name().to_owned(),
            from_pattern: msg.from_pattern(),
            payload: msg.get_payload_bytes().to_vec(),
        })
    }
}

/// The publisher side (cheap to clone: one multiplexed connection).
#[derive(Clone)]
pub struct Publisher {
    conn: redis::aio::MultiplexedConnection,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// PUBLISH; returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<i64, RedisError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query_async::<i64>(&mut conn)
            .await?)
    }

    /// PUBSUB NUMSUB of one channel: the number of nodes of the cluster when it is a request channel.
    pub async fn numsub(&self, channel: &str) -> Result<i64, RedisError> {
        let mut conn = self.conn.clone();
        let (_name, n): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }
}

/// Connects both sides and subscribes: PSUBSCRIBE `patterns`, SUBSCRIBE `channels`.
pub async fn connect(
    url: &str,
    patterns: &[String],
    channels: &[String],
) -> Result<(Subscriber, Publisher), RedisError> {
    let client = redis::Client::open(url)?;
    let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
    let work = async {
        let mut pubsub = client.get_async_pubsub().await?;
        for p in patterns {
            pubsub.psubscribe(p).await?;
        }
        for c in channels {
            pubsub.subscribe(c).await?;
        }
        let conn = client.get_multiplexed_async_connection().await?;
        Ok::<_, redis::RedisError>((pubsub, conn))
    };
    let (pubsub, conn) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| RedisError(format!("no answer within {CONNECT_TIMEOUT_MS} ms")))??;
    Ok((
        Subscriber {
            stream: Box::pin(pubsub.into_on_message()),
        },
        Publisher { conn },
    ))
}
