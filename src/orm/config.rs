//! Configuration of the ORM: backend choice, connection settings, encryption key and IO shard limits.
//!
//! Loadable from the server's TOML configuration (`serde`, every field has a default) and from environment variables
//! ([`OrmConfig::from_env`], which starts from the defaults or from a given config and overrides what is set):
//!
//! | variable | field | default |
//! |---|---|---|
//! | `SHARDCAST_DB_BACKEND` | `backend` (`embedded`, `mongo`, `cql`) | `embedded` |
//! | `SHARDCAST_DB_PATH` | `embedded_path` | `shardcast-data/shardcast.redb` |
//! | `SHARDCAST_DB_SYNC_INTERVAL_MS` | `embedded_sync_interval_ms` (ignored: every write is durable, group commit) | 0 |
//! | `SHARDCAST_DB_WAL_BYTES` | `embedded_wal_bytes` (write-ahead log size: a checkpoint at least every that many bytes of records) | 4194304 |
//! | `SHARDCAST_MONGO_URI` | `mongo_uri` | `mongodb://127.0.0.1:27017` |
//! | `SHARDCAST_MONGO_DATABASE` | `mongo_database` | `shardcast` |
//! | `SHARDCAST_CQL_NODES` | `cql_nodes` (comma-separated `host:port`) | `127.0.0.1:9042` |
//! | `SHARDCAST_CQL_KEYSPACE` | `cql_keyspace` | `shardcast` |
//! | `SHARDCAST_CQL_USERNAME` / `SHARDCAST_CQL_PASSWORD` | `cql_username` / `cql_password` | none |
//! | `SHARDCAST_CQL_REPLICATION` | `cql_replication` (CQL map literal) | `{'class': 'SimpleStrategy', 'replication_factor': 1}` |
//! | `SHARDCAST_CQL_CONSISTENCY` | `cql_consistency` | `LOCAL_QUORUM` |
//! | `SHARDCAST_ORM_ENCRYPTION_KEY` | `encryption_key` (32 bytes: base64 or 64 hex digits) | none |
//! | `SHARDCAST_ORM_QUEUE_REQUESTS_MAX` | `queue_requests_max` | 4096 |
//! | `SHARDCAST_ORM_REQUEST_TIMEOUT_MS` | `request_timeout_ms` | 5000 |
//! | `SHARDCAST_ORM_UNAVAILABLE_RETRY_MS` | `unavailable_retry_ms` | 500 |
//! | `SHARDCAST_ORM_PAGE_ROWS_MAX` | `page_rows_max` | 10000 |
//! | `SHARDCAST_ORM_PAGE_ROWS_DEFAULT` | `page_rows_default` | 100 |

use std::path::PathBuf;

use serde::Deserialize;

use super::io_shard::IoShardLimits;

/// Which backend the IO shard runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// redb file (default).
    Embedded,
    /// MongoDB (or a MongoDB-wire server).
    Mongo,
    /// Cassandra / ScyllaDB.
    Cql,
}

impl std::str::FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "embedded" | "redb" => Ok(BackendKind::Embedded),
            "mongo" | "mongodb" => Ok(BackendKind::Mongo),
            "cql" | "cassandra" | "scylla" | "scylladb" => Ok(BackendKind::Cql),
            other => Err(format!(
                "unknown database backend `{other}` (expected embedded, mongo or cql)"
            )),
        }
    }
}

/// The ORM's configuration (see the module docs for the environment variables).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrmConfig {
    /// Backend choice.
    pub backend: BackendKind,
    /// Embedded database file.
    pub embedded_path: PathBuf,
    /// Ignored (kept so existing configurations still load): every embedded write is fsync'd before it is answered,
    /// and group commit shares one fsync among the writes that arrive together, which made the lossy interval pointless.
    pub embedded_sync_interval_ms: u64,
    /// Size of the embedded store's write-ahead log (`<embedded_path>.wal`): a durable redb commit (checkpoint) at
    /// least every that many bytes of logged writes, and at most that much to replay at start-up.
    pub embedded_wal_bytes: u64,
    /// MongoDB connection string.
    pub mongo_uri: String,
    /// MongoDB database.
    pub mongo_database: String,
    /// CQL contact points (`host:port`).
    pub cql_nodes: Vec<String>,
    /// CQL keyspace (created if absent with `cql_replication`).
    pub cql_keyspace: String,
    /// CQL user name.
    pub cql_username: Option<String>,
    /// CQL password (never logged).
    pub cql_password: Option<String>,
    /// CQL replication map used when creating the keyspace.
    pub cql_replication: String,
    /// CQL consistency level of every statement (`ONE`, `QUORUM`, `LOCAL_QUORUM`, ...).
    pub cql_consistency: String,
    /// Master key of encrypted columns (never logged).
    pub encryption_key: Option<String>,
    /// IO queue capacity and maximum concurrent requests.
    pub queue_requests_max: usize,
    /// Per-request deadline.
    pub request_timeout_ms: u64,
    /// Fail-fast window after the database was found unavailable.
    pub unavailable_retry_ms: u64,
    /// Largest page a `find` may ask for.
    pub page_rows_max: u32,
    /// Page size of a `find` that sets no limit.
    pub page_rows_default: u32,
}

impl Default for OrmConfig {
    fn default() -> Self {
        let limits = IoShardLimits::default();
        Self {
            backend: BackendKind::Embedded,
            embedded_path: PathBuf::from("shardcast-data/shardcast.redb"),
            embedded_sync_interval_ms: 0,
            embedded_wal_bytes: crate::orm::backend::embedded::wal::WAL_BYTES_DEFAULT,
            mongo_uri: "mongodb://127.0.0.1:27017".into(),
            mongo_database: "shardcast".into(),
            cql_nodes: vec!["127.0.0.1:9042".into()],
            cql_keyspace: "shardcast".into(),
            cql_username: None,
            cql_password: None,
            cql_replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            cql_consistency: "LOCAL_QUORUM".into(),
            encryption_key: None,
            queue_requests_max: limits.queue_requests_max,
            request_timeout_ms: limits.request_timeout_ms,
            unavailable_retry_ms: limits.unavailable_retry_ms,
            page_rows_max: 10_000,
            page_rows_default: 100,
        }
    }
}

impl std::fmt::Debug for OrmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |o: &Option<String>| o.as_ref().map(|_| "<redacted>");
        f.debug_struct("OrmConfig")
            .field("backend", &self.backend)
            .field("embedded_path", &self.embedded_path)
            .field("embedded_sync_interval_ms", &self.embedded_sync_interval_ms)
            .field("embedded_wal_bytes", &self.embedded_wal_bytes)
            .field("mongo_uri", &redact_uri(&self.mongo_uri))
            .field("mongo_database", &self.mongo_database)
            .field("cql_nodes", &self.cql_nodes)
            .field("cql_keyspace", &self.cql_keyspace)
            .field("cql_username", &self.cql_username)
            .field("cql_password", &redact(&self.cql_password))
            .field("cql_replication", &self.cql_replication)
            .field("cql_consistency", &self.cql_consistency)
            .field("encryption_key", &redact(&self.encryption_key))
            .field("queue_requests_max", &self.queue_requests_max)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("unavailable_retry_ms", &self.unavailable_retry_ms)
            .field("page_rows_max", &self.page_rows_max)
            .field("page_rows_default", &self.page_rows_default)
            .finish()
    }
}

/// Hides the password of a `scheme://user:password@host` URI.
fn redact_uri(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}<credentials>{}", &uri[..s + 3], &uri[at..]),
        _ => uri.to_string(),
    }
}

impl OrmConfig {
    /// The defaults overridden by the `SHARDCAST_*` environment variables that are set.
    pub fn from_env() -> Result<Self, String> {
        Self::default().with_env(|k| std::env::var(k).ok())
    }

    /// `self` overridden by the variables `get` returns (testable without touching the process environment).
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{name}={v:?} is not a valid number"))
        }
        if let Some(v) = get("SHARDCAST_DB_BACKEND") {
            self.backend = v.parse()?;
        }
        if let Some(v) = get("SHARDCAST_DB_PATH") {
            self.embedded_path = v.into();
        }
        if let Some(v) = get("SHARDCAST_DB_SYNC_INTERVAL_MS") {
            self.embedded_sync_interval_ms = num("SHARDCAST_DB_SYNC_INTERVAL_MS", v)?;
        }
        if let Some(v) = get("SHARDCAST_DB_WAL_BYTES") {
            self.embedded_wal_bytes = num("SHARDCAST_DB_WAL_BYTES", v)?;
        }
        if let Some(v) = get("SHARDCAST_MONGO_URI") {
            self.mongo_uri = v;
        }
        if let Some(v) = get("SHARDCAST_MONGO_DATABASE") {
            self.mongo_database = v;
        }
        if let Some(v) = get("SHARDCAST_CQL_NODES") {
            self.cql_nodes = v
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
        }
        if let Some(v) = get("SHARDCAST_CQL_KEYSPACE") {
            self.cql_keyspace = v;
        }
        if let Some(v) = get("SHARDCAST_CQL_USERNAME") {
            self.cql_username = Some(v);
        }
        if let Some(v) = get("SHARDCAST_CQL_PASSWORD") {
            self.cql_password = Some(v);
        }
        if let Some(v) = get("SHARDCAST_CQL_REPLICATION") {
            self.cql_replication = v;
        }
        if let Some(v) = get("SHARDCAST_CQL_CONSISTENCY") {
            self.cql_consistency = v;
        }
        if let Some(v) = get("SHARDCAST_ORM_ENCRYPTION_KEY") {
            self.encryption_key = Some(v);
        }
        if let Some(v) = get("SHARDCAST_ORM_QUEUE_REQUESTS_MAX") {
            self.queue_requests_max = num("SHARDCAST_ORM_QUEUE_REQUESTS_MAX", v)?;
        }
        if let Some(v) = get("SHARDCAST_ORM_REQUEST_TIMEOUT_MS") {
            self.request_timeout_ms = num("SHARDCAST_ORM_REQUEST_TIMEOUT_MS", v)?;
        }
        if let Some(v) = get("SHARDCAST_ORM_UNAVAILABLE_RETRY_MS") {
            self.unavailable_retry_ms = num("SHARDCAST_ORM_UNAVAILABLE_RETRY_MS", v)?;
        }
        if let Some(v) = get("SHARDCAST_ORM_PAGE_ROWS_MAX") {
            self.page_rows_max = num("SHARDCAST_ORM_PAGE_ROWS_MAX", v)?;
        }
        if let Some(v) = get("SHARDCAST_ORM_PAGE_ROWS_DEFAULT") {
            self.page_rows_default = num("SHARDCAST_ORM_PAGE_ROWS_DEFAULT", v)?;
        }
        Ok(self)
    }

    /// The IO shard limits of this configuration.
    pub fn io_limits(&self) -> IoShardLimits {
        IoShardLimits {
            queue_requests_max: self.queue_requests_max,
            request_timeout_ms: self.request_timeout_ms,
            unavailable_retry_ms: self.unavailable_retry_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_defaults_and_secrets_are_redacted() {
        let env = |k: &str| match k {
            "SHARDCAST_DB_BACKEND" => Some("mongo".to_string()),
            "SHARDCAST_MONGO_URI" => Some("mongodb://u:hunter2@h:1".to_string()),
            "SHARDCAST_CQL_NODES" => Some("a:1, b:2".to_string()),
            "SHARDCAST_ORM_ENCRYPTION_KEY" => Some("topsecret".to_string()),
            "SHARDCAST_ORM_REQUEST_TIMEOUT_MS" => Some("250".to_string()),
            _ => None,
        };
        let c = OrmConfig::default().with_env(env).expect("valid");
        assert_eq!(c.backend, BackendKind::Mongo);
        assert_eq!(c.cql_nodes, vec!["a:1", "b:2"]);
        assert_eq!(c.request_timeout_ms, 250);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("topsecret"),
            "{shown}"
        );
    }

    #[test]
    fn toml_configuration_fills_missing_fields_with_defaults() {
        let c: OrmConfig = toml::from_str(
            "backend = \"mongo\"\nmongo_uri = \"mongodb://h:1\"\nrequest_timeout_ms = 900\n",
        )
        .expect("valid TOML");
        assert_eq!(c.backend, BackendKind::Mongo);
        assert_eq!(c.mongo_uri, "mongodb://h:1");
        assert_eq!(c.request_timeout_ms, 900);
        assert_eq!(c.page_rows_max, OrmConfig::default().page_rows_max);
        assert!(
            toml::from_str::<OrmConfig>("no_such_field = 1").is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = OrmConfig::default()
            .with_env(|k| (k == "SHARDCAST_DB_BACKEND").then(|| "oracle".to_string()))
            .expect_err("invalid");
        assert!(e.contains("unknown database backend `oracle`"));
        let e = OrmConfig::default()
            .with_env(|k| (k == "SHARDCAST_ORM_QUEUE_REQUESTS_MAX").then(|| "many".to_string()))
            .expect_err("invalid");
        assert!(e.contains("SHARDCAST_ORM_QUEUE_REQUESTS_MAX"));
    }
}
