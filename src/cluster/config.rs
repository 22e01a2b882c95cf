//! The `[cluster]` settings (`cluster.*` in the TOML file, `SHARDCAST_CLUSTER_*` / `SHARDCAST_REDIS_URL` in the
//! environment, `--redis-url` and friends on the command line; see [`crate::config::OPTIONS`]).

/// Default channel prefix, the adapter's `key` option.
pub const PREFIX_DEFAULT: &str = "socket.io";
/// Default time a request gathering answers from this node's shards may take, ms (the adapter's `requestsTimeout`).
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5000;
/// Default capacity of each queue between the shards and the Redis thread, messages.
pub const QUEUE_LEN_DEFAULT: usize = 4096;
/// Default largest channel message accepted from Redis, bytes; larger ones are counted and dropped.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 1_048_576;
/// Default longest wait between two attempts to reach Redis, ms (the wait doubles from 100 ms up to it).
pub const RECONNECT_BACKOFF_MAX_MS_DEFAULT: u64 = 5000;

/// How this process joins a socket.io cluster through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`; `None` (the default): a single process, no Redis.
    pub redis_url: Option<String>,
    /// Channel prefix (the adapter's and emitter's `key`); every node of a cluster uses the same.
    pub prefix: String,
    /// Longest wait for this node's shards when answering a request, ms.
    pub request_timeout_ms: u64,
    /// Capacity of the queue from the shards to the Redis thread and of each queue back, messages.
    pub queue_len: usize,
    /// Largest channel message read from Redis, bytes.
    pub message_bytes_max: usize,
    /// Longest wait between two connection attempts, ms.
    pub reconnect_backoff_max_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: PREFIX_DEFAULT.to_owned(),
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            queue_len: QUEUE_LEN_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            reconnect_backoff_max_ms: RECONNECT_BACKOFF_MAX_MS_DEFAULT,
        }
    }
}
