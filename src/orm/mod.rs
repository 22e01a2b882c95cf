//! # The ORM
//!
//! Entities, repositories, encryption at rest, the IO shard and its three backends (README.md, "The ORM").
//!
//! - [`entity`]: declaring an entity (schema builder, validated at start-up) and the serde mapping to rows.
//! - [`repository`]: `Repository<E>` (find / find_one / get / save / save_all / save_with_ttl / patch / remove /
//!   increment), hooks, TTL and query validation, so that every backend gets the same query shapes.
//! - [`crypto`]: encrypted columns (AES-256-GCM, deterministic AES-256-GCM-SIV for keys and indexes).
//! - [`scope`]: `Orm::run`, several repository operations in one IO-shard request (`find_in`, `save_in`, ...).
//! - [`io_shard`]: the thread with the tokio runtime that owns the backend; bounded queue in, oneshot answers out.
//! - [`backend`]: the `Backend` trait and its implementations (embedded redb, MongoDB, Cassandra/ScyllaDB).
//! - [`config`]: `OrmConfig` and its `SHARDCAST_*` environment variables.
//!
//! **Architecture Invariant:** only [`backend`] imports `mongodb`, `scylla` and `redb`.
//!
//! Start-up in one call:
//!
//! ```no_run
//! # fn main() -> Result<(), shardcast::orm::OrmError> {
//! let config = shardcast::orm::OrmConfig::from_env().map_err(shardcast::orm::OrmError::Config)?;
//! let (io_shard, orm) = shardcast::orm::start(&config)?;
//! // Repository::<MyEntity>::open(&orm).await? from any executor; keep `io_shard` alive while in use.
//! # drop((io_shard, orm)); Ok(()) }
//! ```

pub mod backend;
pub mod config;
pub mod crypto;
pub mod entity;
pub mod io_shard;
pub mod repository;
pub mod scope;

use std::sync::Arc;
use std::time::Duration;

pub use backend::{Backend, BackendError, Order};
pub use config::{BackendKind, OrmConfig};
pub use entity::{Entity, EntitySchema, FieldType, SchemaBuilder, SchemaError};
pub use entity::{HookContext, HookError};
pub use io_shard::{BackendFactory, IoHandle, IoShard, IoShardLimits};
pub use repository::{Find, FoundPage, Key, Orm, OrmError, OrmResult, Patch, Repository};
pub use scope::IoScope;

/// The factory that builds the backend `config` selects (run on the IO thread).
pub fn backend_factory(config: &OrmConfig) -> BackendFactory {
    let config = config.clone();
    Box::new(move || {
        Box::pin(async move {
            let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
            let backend: Arc<dyn Backend> =
                match config.backend {
                    BackendKind::Embedded => {
                        Arc::new(backend::embedded::EmbeddedBackend::open_with_config(
                            &config.embedded_path,
                            (config.embedded_sync_interval_ms > 0)
                                .then(|| Duration::from_millis(config.embedded_sync_interval_ms)),
                            config.embedded_wal_bytes,
                        )?)
                    }
                    BackendKind::Mongo => Arc::new(
                        backend::mongo::MongoBackend::connect(
                            &config.mongo_uri,
                            &config.mongo_database,
                            timeout,
                        )
                        .await?,
                    ),
                    BackendKind::Cql => {
                        let mut cql = backend::cql::CqlConfig::new(
                            config.cql_nodes.clone(),
                            config.cql_keyspace.clone(),
                        );
                        cql.replication = config.cql_replication.clone();
                        cql.consistency = config.cql_consistency.clone();
                        cql.credentials = config.cql_username.clone().map(|username| {
                            backend::cql::CqlCredentials {
                                username,
                                password: config.cql_password.clone().unwrap_or_default(),
                            }
                        });
                        cql.request_timeout_ms = config.request_timeout_ms;
                        // Connects on first use, so shardcast starts (and answers "unavailable") while the cluster is down.
                        Arc::new(backend::cql::CqlBackend::new(cql)?)
                    }
                };
            Ok(backend)
        })
    })
}

/// Starts the IO shard with the backend of `config` and returns it with an [`Orm`] over it.
pub fn start(config: &OrmConfig) -> OrmResult<(IoShard, Orm)> {
    let shard = IoShard::start(backend_factory(config), config.io_limits())?;
    let orm = Orm::new(shard.handle(), config)?;
    Ok((shard, orm))
}
