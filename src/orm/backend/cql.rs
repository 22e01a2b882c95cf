//! The Cassandra / ScyllaDB backend: the CQL native protocol through the `scylla` driver.
//!
//! # Statements
//! Every statement is prepared (prepared statements are cached per CQL text, at most
//! [`CqlConfig::prepared_statements_max`]) and executed with bound values: no value is ever written into CQL text.
//! Identifiers (keyspace, table, column and index names) come from the validated [`TableSchema`] and [`CqlConfig`] and
//! are always double-quoted (with `"` doubled), so their case is kept and reserved words are harmless. The one place
//! where configuration reaches CQL text as literals is the replication map of `CREATE KEYSPACE` (DDL has no bind
//! markers): it is parsed and checked by [`parse_replication`] and rendered again from the parsed form.
//!
//! # Schema
//! | [`ColumnType`] | CQL type |
//! |---|---|
//! | `Text`, `Json` | `text` |
//! | `Number` | `bigint` |
//! | `Boolean` | `boolean` |
//! | `Uuid` | `uuid` |
//! | `TimeUuid` | `timeuuid` |
//! | `Counter` | `counter` |
//! | `Blob` | `blob` |
//!
//! The keyspace is created with `CREATE KEYSPACE IF NOT EXISTS` on the first connection. [`Backend::ensure_schema`]
//! reads `system_schema.columns`: an absent table is created (`CREATE TABLE IF NOT EXISTS` with the partition key,
//! the clustering columns and `WITH CLUSTERING ORDER BY`); a present one must have the same partition key, clustering
//! columns and orders, and the same type for every declared column that it stores, else [`BackendError::Schema`] says
//! what differs; declared columns it lacks are added with `ALTER TABLE ... ADD`. Secondary indexes are created with
//! `CREATE INDEX IF NOT EXISTS` unless `system_schema.indexes` already has an index on the column: storage-attached
//! (`USING 'sai'`) on Cassandra 5 and newer, the server's default index elsewhere (ScyllaDB, older Cassandra), see
//! [`CqlIndexKind`].
//!
//! # TTL, patch, local indexes, prefix search
//! - A write with a TTL is `INSERT ... USING TTL ?`; it also stores the expiry (ms since the epoch) in the hidden column
//!   `shardcast_expires_ms`, which `patch` reads to keep the row's remaining TTL. Cassandra itself never returns an
//!   expired cell.
//! - `patch` reads that column (absent row: nothing written), then runs `UPDATE ... USING TTL <remaining> SET <the
//!   named columns> WHERE <key> IF EXISTS`, a lightweight transaction, so a row deleted between the two statements is
//!   not brought back with only the patched columns (`[applied]` false: nothing written).
//! - A local index is a storage-attached index (SAI) on the column (the server's default index for blobs and on
//!   servers without SAI), queried as `WHERE <partition key> AND column = ?`: SAI combines with the partition
//!   restriction and reads only that partition. A materialised view would need `materialized_views_enabled` (off by
//!   default in Cassandra 5, and marked experimental), and an ORM-maintained lookup table would need a read before
//!   every write; SAI needs neither. Cassandra refuses `ORDER BY` on a query that uses an index, so local queries
//!   cannot be reversed (the ORM refuses it on every backend).
//! - Prefix search: Cassandra 5.0's SAI has no `LIKE` (that is SASI, disabled by default, or later SAI versions) and
//!   no range on text (5.0.8 refuses `LIKE` on an SAI column and asks for `ALLOW FILTERING` for a text range), so each search column `c` gets a hidden `set<text>` column `c__pfx` holding the lowercase
//!   value's prefixes of 1 to [`super::SEARCH_PREFIX_CHARS_MAX`] characters, with an SAI index; a search is
//!   `WHERE <partition key> AND c__pfx CONTAINS ?`, and a longer prefix is checked in full on the rows read.
//!
//! # Queries and page tokens
//! A query runs as a sequence of *steps*; each step is one prepared `SELECT` on one partition (or, for an index query,
//! for one indexed value; for a scan, the whole table), paged by the driver:
//! - key query: one step per partition of the cartesian product of the partition-key `Eq`/`In` values (sorted by
//!   [`Value::cmp_as`], duplicates removed) and, when the next clustering column has an `In` filter, per chunk of at
//!   most [`CqlConfig::in_chunk_values_max`] of its values. The chunks are cut from the values sorted in the server's
//!   order for that column, so concatenating the chunks' results keeps clustering order. A reversed query walks the
//!   partitions and chunks backwards and adds `ORDER BY` with every clustering column flipped, so its result is exactly
//!   the reverse of the forward one.
//! - index query: one step per distinct value of the `Eq`/`In` filter (`column = ?`).
//! - scan: one step.
//!
//! When several steps start from their beginning, their first pages are read concurrently (at most
//! [`CqlConfig::query_concurrency_max`] at once) and used in order while they fit in the page; so a query over 1,000
//! partitions costs about 1,000 / 16 round trips, not 1,000.
//!
//! A page token is `[2, fingerprint: 8 bytes, step: 8 bytes BE, flags, step of the last returned row: 8 bytes, that
//! row's value of the free clustering column (u32 length + tagged bytes), the driver's paging state...]`; the
//! fingerprint is a hash of the statement and the normalized forward query, so a token given to another query is
//! refused with [`BackendError::InvalidPageToken`]. The same query in the other direction accepts the token: it
//! resumes by keyset from the last returned row (`<free column> < value` or `>`, on that row's step, then the
//! following steps), when the query leaves at most its last clustering column free and has no clustering `In`
//! (other tokens are refused in the other direction).
//!
//! # Connection
//! The session is opened on first use. While the cluster cannot be reached, calls fail at once with
//! [`BackendError::Unavailable`] (a new connection attempt is made at most every [`CqlConfig::reconnect_delay_ms`]);
//! once connected, the driver reconnects by itself after node restarts, and requests in between fail with
//! `Unavailable`.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::ColumnIterator;
use scylla::errors::{DbError, ExecutionError, PrepareError, RequestAttemptError};
use scylla::response::query_result::QueryResult;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{Counter, CqlTimeuuid, CqlValue};
use tokio::sync::OnceCell;

use super::{
    Backend, BackendError, BackendResult, BoxFuture, ColumnDef, ColumnType, FilterOp, Order, Page,
    PageToken, Query, QueryShape, Row, TableSchema, Uuid, Value,
};

const TOKEN_VERSION: u8 = 2;
/// Bytes before the paging state in a page token: version, fingerprint, step.
const TOKEN_HEADER_BYTES: usize = 30;
/// Longest identifier Cassandra accepts for keyspaces (and what we use for generated index names).
const NAME_BYTES_MAX: usize = 48;
/// Request timeout of schema statements (they wait for schema agreement), at least.
const DDL_TIMEOUT_MIN_MS: u64 = 60_000;
/// Hidden column holding the expiry of a row written with a TTL (ms since the Unix epoch).
const EXPIRES_COLUMN: &str = "shardcast_expires_ms";

/// The hidden `set<text>` column holding the prefixes of search column `column`.
fn prefix_column(column: &str) -> String {
    format!("{column}__pfx")
}

/// The lowercase prefixes (1 to `SEARCH_PREFIX_CHARS_MAX` characters) stored for derived value `v`.
fn prefixes_of(v: Option<&Value>) -> Option<CqlValue> {
    let Some(Value::Text(s)) = v else {
        return None;
    };
    let mut out = Vec::new();
    for (i, (at, c)) in s.char_indices().enumerate() {
        if i >= super::SEARCH_PREFIX_CHARS_MAX {
            break;
        }
        out.push(CqlValue::Text(s[..at + c.len_utf8()].to_string()));
    }
    (!out.is_empty()).then_some(CqlValue::Set(out))
}

// ---------------------------------------------------------------------------------------------------------------
// Configuration.

/// User name and password for `PasswordAuthenticator`. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct CqlCredentials {
    /// Role name.
    pub username: String,
    /// Password (never logged).
    pub password: String,
}

impl fmt::Debug for CqlCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Which kind of secondary index [`Backend::ensure_schema`] creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CqlIndexKind {
    /// `Sai` when the server says it is Cassandra 5 or newer (`system.local.release_version`), else `Native`.
    #[default]
    Auto,
    /// Storage-attached indexes (`CREATE INDEX ... USING 'sai'`, Cassandra 5+).
    Sai,
    /// The server's default secondary index (`CREATE INDEX ...`; global indexes on ScyllaDB).
    Native,
}

/// Settings of the CQL backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlConfig {
    /// Contact points, `host:port` (one is enough; the driver discovers the others).
    pub nodes: Vec<String>,
    /// Keyspace of every table: ASCII letters, digits and `_`, starting with a letter, at most 48 bytes.
    pub keyspace: String,
    /// Replication map used by `CREATE KEYSPACE IF NOT EXISTS`, as a CQL map literal, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}` (checked by [`parse_replication`]). An existing keyspace keeps
    /// its replication.
    pub replication: String,
    /// Consistency level of every statement: `ANY`, `ONE`, `TWO`, `THREE`, `QUORUM`, `ALL`, `LOCAL_QUORUM`,
    /// `EACH_QUORUM` or `LOCAL_ONE` (case-insensitive).
    pub consistency: String,
    /// Credentials, when the cluster requires authentication.
    pub credentials: Option<CqlCredentials>,
    /// Kind of secondary indexes created by `ensure_schema`.
    pub index_kind: CqlIndexKind,
    /// Timeout of opening a connection to a node.
    pub connect_timeout_ms: u64,
    /// Client-side timeout of one request (schema statements get at least 60 s).
    pub request_timeout_ms: u64,
    /// After a failed first connection, calls fail at once with `Unavailable` for this long before the next attempt.
    pub reconnect_delay_ms: u64,
    /// Most values of an `In` list on a clustering column bound in one statement; longer lists are split in chunks.
    pub in_chunk_values_max: usize,
    /// Most prepared statements kept in the cache (it is emptied when full).
    pub prepared_statements_max: usize,
    /// Most writes of one `upsert_all` in flight at once.
    pub write_concurrency_max: usize,
    /// Most steps of one query (partitions of an `In` list, values of an index `In`, chunks) read at once.
    pub query_concurrency_max: usize,
}

impl CqlConfig {
    /// A configuration with the given contact points and keyspace and the defaults: `SimpleStrategy` with replication
    /// factor 1, `LOCAL_QUORUM`, no credentials, [`CqlIndexKind::Auto`], 5 s connect timeout, 12 s request timeout,
    /// 500 ms reconnect delay, 100 values per `In` chunk, 1024 cached statements, 32 writes in flight per `upsert_all`, 16 query steps read at once.
    pub fn new(nodes: Vec<String>, keyspace: impl Into<String>) -> Self {
        Self {
            nodes,
            keyspace: keyspace.into(),
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: "LOCAL_QUORUM".into(),
            credentials: None,
            index_kind: CqlIndexKind::Auto,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 12_000,
            reconnect_delay_ms: 500,
            in_chunk_values_max: 100,
            prepared_statements_max: 1024,
            write_concurrency_max: 32,
            query_concurrency_max: 16,
        }
    }
}

/// Parses a consistency level name (`LOCAL_QUORUM`, `one`, ...).
fn parse_consistency(s: &str) -> BackendResult<Consistency> {
    Ok(
        match s.trim().to_ascii_uppercase().replace('-', "_").as_str() {
            "ANY" => Consistency::Any,
            "ONE" => Consistency::One,
            "TWO" => Consistency::Two,
            "THREE" => Consistency::Three,
            "QUORUM" => Consistency::Quorum,
            "ALL" => Consistency::All,
            "LOCAL_QUORUM" => Consistency::LocalQuorum,
            "EACH_QUORUM" => Consistency::EachQuorum,
            "LOCAL_ONE" => Consistency::LocalOne,
            other => {
                return Err(BackendError::InvalidQuery(format!(
                    "unknown CQL consistency level `{other}` (expected ANY, ONE, TWO, THREE, QUORUM, ALL, LOCAL_QUORUM, \
                 EACH_QUORUM or LOCAL_ONE)"
                )));
            }
        },
    )
}

/// Parses a keyspace replication map literal such as `{'class': 'SimpleStrategy', 'replication_factor': 1}`.
///
/// Keys and values are single-quoted strings or unsigned integers made of ASCII letters, digits, `_`, `-`, `.` and `:`
/// only (data-centre names, strategy class names, factors such as `3` or `'3/1'` are not accepted: transient
/// replication is not supported). `class` is required. Returns the map in key order.
pub fn parse_replication(s: &str) -> BackendResult<BTreeMap<String, String>> {
    let bad =
        |why: &str| BackendError::InvalidQuery(format!("invalid CQL replication map `{s}`: {why}"));
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| bad("expected `{...}`"))?;
    let atom = |t: &str| -> BackendResult<String> {
        let t = t.trim();
        let t = match t.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
            Some(q) => q,
            None if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => t,
            None => {
                return Err(bad(&format!(
                    "`{t}` is neither a quoted string nor a number"
                )));
            }
        };
        if t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
        {
            return Err(bad(&format!(
                "`{t}` has characters outside letters, digits, `_`, `-`, `.`, `:`"
            )));
        }
        Ok(t.to_string())
    };
    let mut map = BTreeMap::new();
    for entry in inner.split(',').filter(|e| !e.trim().is_empty()) {
        let (k, v) = entry
            .split_once(':')
            .ok_or_else(|| bad(&format!("`{entry}` is not `key: value`")))?;
        let k = atom(k)?;
        if map.insert(k.clone(), atom(v)?).is_some() {
            return Err(bad(&format!("`{k}` appears twice")));
        }
    }
    if !map.contains_key("class") {
        return Err(bad("`class` is missing"));
    }
    Ok(map)
}

fn render_replication(map: &BTreeMap<String, String>) -> String {
    let entries: Vec<String> = map.iter().map(|(k, v)| format!("'{k}': '{v}'")).collect();
    format!("{{{}}}", entries.join(", "))
}

fn is_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_BYTES_MAX
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A double-quoted CQL identifier.
fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

// ---------------------------------------------------------------------------------------------------------------
// The backend.

struct Connected {
    session: Session,
    sai: bool,
}

/// The Cassandra / ScyllaDB backend (see the module docs). Cheap to share behind an `Arc`; all methods take `&self`.
pub struct CqlBackend {
    config: CqlConfig,
    consistency: Consistency,
    replication: String,
    connected: OnceCell<Arc<Connected>>,
    last_connect_failure: Mutex<Option<(Instant, String)>>,
    statements: Mutex<HashMap<String, PreparedStatement>>,
}

impl fmt::Debug for CqlBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlBackend")
            .field("config", &self.config)
            .field("connected", &self.connected.initialized())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CqlBackend {
    /// Checks `config` and returns the backend; no connection is made until the first call (or [`Self::connect`]).
    pub fn new(config: CqlConfig) -> BackendResult<Self> {
        if config.nodes.is_empty() {
            return Err(BackendError::InvalidQuery(
                "no CQL contact point configured".into(),
            ));
        }
        if !is_identifier(&config.keyspace) {
            return Err(BackendError::InvalidQuery(format!(
                "invalid CQL keyspace name `{}` (ASCII letters, digits and `_`, starting with a letter, at most \
                 {NAME_BYTES_MAX} bytes)",
                config.keyspace
            )));
        }
        if config.in_chunk_values_max == 0 {
            return Err(BackendError::InvalidQuery(
                "in_chunk_values_max must be at least 1".into(),
            ));
        }
        let consistency = parse_consistency(&config.consistency)?;
        let replication = render_replication(&parse_replication(&config.replication)?);
        Ok(Self {
            config,
            consistency,
            replication,
            connected: OnceCell::new(),
            last_connect_failure: Mutex::new(None),
            statements: Mutex::new(HashMap::new()),
        })
    }

    /// Connects now (normally done on first use): opens the session and creates the keyspace if absent.
    pub async fn connect(&self) -> BackendResult<()> {
        self.conn().await.map(|_| ())
    }

    /// The configuration.
    pub fn config(&self) -> &CqlConfig {
        &self.config
    }

    async fn conn(&self) -> BackendResult<&Arc<Connected>> {
        if let Some(c) = self.connected.get() {
            return Ok(c);
        }
        if let Some((at, msg)) = lock(&self.last_connect_failure).as_ref()
            && at.elapsed() < Duration::from_millis(self.config.reconnect_delay_ms)
        {
            return Err(BackendError::Unavailable(msg.clone()));
        }
        match self.connected.get_or_try_init(|| self.open()).await {
            Ok(c) => {
                *lock(&self.last_connect_failure) = None;
                Ok(c)
            }
            Err(e) => {
                let msg = match &e {
                    BackendError::Unavailable(m) => m.clone(),
                    other => other.to_string(),
                };
                *lock(&self.last_connect_failure) = Some((Instant::now(), msg));
                Err(e)
            }
        }
    }

    async fn open(&self) -> BackendResult<Arc<Connected>> {
        let connect_timeout = Duration::from_millis(self.config.connect_timeout_ms.max(1));
        let profile = ExecutionProfile::builder()
            .consistency(self.consistency)
            .request_timeout(Some(Duration::from_millis(
                self.config.request_timeout_ms.max(1),
            )))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.config.nodes)
            .connection_timeout(connect_timeout)
            .default_execution_profile_handle(profile.into_handle());
        if let Some(c) = &self.config.credentials {
            builder = builder.user(&c.username, &c.password);
        }
        let nodes = self.config.nodes.join(",");
        let session = match tokio::time::timeout(connect_timeout * 3, builder.build()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(BackendError::Unavailable(format!(
                    "cannot connect to CQL nodes {nodes}: {e}"
                )));
            }
            Err(_) => {
                return Err(BackendError::Unavailable(format!(
                    "cannot connect to CQL nodes {nodes}: no answer within {} ms",
                    connect_timeout.as_millis() * 3
                )));
            }
        };
        let ddl = format!(
            "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {}",
            q(&self.config.keyspace),
            self.replication
        );
        self.run_ddl(&session, &ddl).await?;
        let sai = match self.config.index_kind {
            CqlIndexKind::Sai => true,
            CqlIndexKind::Native => false,
            CqlIndexKind::Auto => {
                let stmt = self
                    .prepared(&session, "SELECT release_version FROM system.local")
                    .await?;
                let res = session.execute_unpaged(&stmt, ()).await.map_err(exec_err)?;
                let version: Option<String> = res
                    .into_rows_result()
                    .ok()
                    .and_then(|r| r.maybe_first_row::<(Option<String>,)>().ok().flatten())
                    .and_then(|(v,)| v);
                version
                    .as_deref()
                    .and_then(|v| v.split('.').next())
                    .and_then(|m| m.parse::<u32>().ok())
                    .is_some_and(|major| major >= 5)
            }
        };
        Ok(Arc::new(Connected { session, sai }))
    }

    /// The prepared statement for `cql`, from the cache or prepared now.
    async fn prepared(&self, session: &Session, cql: &str) -> BackendResult<PreparedStatement> {
        if let Some(p) = lock(&self.statements).get(cql) {
            return Ok(p.clone());
        }
        let p = session.prepare(cql).await.map_err(prepare_err)?;
        let mut cache = lock(&self.statements);
        if cache.len() >= self.config.prepared_statements_max.max(1) {
            cache.clear();
        }
        cache.insert(cql.to_string(), p.clone());
        Ok(p)
    }

    async fn run_ddl(&self, session: &Session, cql: &str) -> BackendResult<()> {
        let mut stmt = self.prepared(session, cql).await?;
        stmt.set_request_timeout(Some(Duration::from_millis(
            self.config.request_timeout_ms.max(DDL_TIMEOUT_MIN_MS),
        )));
        session.execute_unpaged(&stmt, ()).await.map_err(exec_err)?;
        Ok(())
    }

    fn table(&self, schema: &TableSchema) -> String {
        format!("{}.{}", q(&self.config.keyspace), q(&schema.name))
    }

    // ---- schema ------------------------------------------------------------------------------------------------

    async fn stored_columns(
        &self,
        session: &Session,
        table: &str,
    ) -> BackendResult<Vec<StoredColumn>> {
        let mut stmt = self
            .prepared(
                session,
                "SELECT column_name, kind, position, clustering_order, type FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ?",
            )
            .await?;
        stmt.set_consistency(Consistency::One);
        let res = session
            .execute_unpaged(&stmt, (self.config.keyspace.as_str(), table))
            .await
            .map_err(exec_err)?;
        let rows = res
            .into_rows_result()
            .map_err(|e| BackendError::Database(e.to_string()))?;
        let mut out = Vec::new();
        for r in rows
            .rows::<(String, String, i32, String, String)>()
            .map_err(|e| BackendError::Database(e.to_string()))?
        {
            let (name, kind, position, clustering_order, typ) =
                r.map_err(|e| BackendError::Data(e.to_string()))?;
            out.push(StoredColumn {
                name,
                kind,
                position,
                clustering_order,
                typ,
            });
        }
        Ok(out)
    }

    async fn stored_index_targets(
        &self,
        session: &Session,
        table: &str,
    ) -> BackendResult<Vec<String>> {
        let mut stmt = self
            .prepared(
                session,
                "SELECT index_name, options FROM system_schema.indexes WHERE keyspace_name = ? AND table_name = ?",
            )
            .await?;
        stmt.set_consistency(Consistency::One);
        let res = session
            .execute_unpaged(&stmt, (self.config.keyspace.as_str(), table))
            .await
            .map_err(exec_err)?;
        let rows = res
            .into_rows_result()
            .map_err(|e| BackendError::Database(e.to_string()))?;
        let mut out = Vec::new();
        for r in rows
            .rows::<(String, Option<BTreeMap<String, String>>)>()
            .map_err(|e| BackendError::Database(e.to_string()))?
        {
            let (_, options) = r.map_err(|e| BackendError::Data(e.to_string()))?;
            if let Some(target) = options.as_ref().and_then(|o| o.get("target")) {
                out.push(unquote_target(target));
            }
        }
        Ok(out)
    }

    async fn ensure_schema_impl(&self, schema: &TableSchema) -> BackendResult<()> {
        check_schema_names(schema)?;
        let c = self.conn().await?;
        let session = &c.session;
        let mut stored = self.stored_columns(session, &schema.name).await?;
        if stored.is_empty() {
            self.run_ddl(session, &create_table_cql(&self.table(schema), schema))
                .await
                .map_err(|e| schema_context(schema, e))?;
            stored = self.stored_columns(session, &schema.name).await?;
        }
        let missing = compare_schema(schema, &stored)?;
        for col in missing {
            let ddl = format!(
                "ALTER TABLE {} ADD {} {}",
                self.table(schema),
                q(&col.name),
                cql_type(col.column_type)
            );
            if let Err(e) = self.run_ddl(session, &ddl).await {
                // Another process may have added it meanwhile: accept that if the stored column now matches.
                let again = self.stored_columns(session, &schema.name).await?;
                if compare_schema(schema, &again)?
                    .iter()
                    .any(|m| m.name == col.name)
                {
                    return Err(schema_context(schema, e));
                }
            }
        }
        self.ensure_extras(session, schema, c).await?;
        let targets = self.stored_index_targets(session, &schema.name).await?;
        for column in &schema.indexes {
            if targets.iter().any(|t| t == column) {
                continue;
            }
            let name = index_name(&schema.name, column);
            // SAI (Cassandra 5.0) does not index blobs: those get the server's default index.
            let sai = c.sai && column_type(schema, column)? != ColumnType::Blob;
            let using = if sai { " USING 'sai'" } else { "" };
            let ddl = format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({}){using}",
                q(&name),
                self.table(schema),
                q(column)
            );
            self.run_ddl(session, &ddl)
                .await
                .map_err(|e| schema_context(schema, e))?;
        }
        for column in &schema.indexes {
            self.wait_until_queryable(session, schema, column).await?;
        }
        Ok(())
    }

    /// The hidden columns (expiry, prefix sets) and the indexes of local indexes and search columns.
    async fn ensure_extras(
        &self,
        session: &Session,
        schema: &TableSchema,
        c: &Connected,
    ) -> BackendResult<()> {
        if schema.is_counter_table() {
            return Ok(()); // counters only: no TTL, no patch, no local indexes (the ORM refuses them)
        }
        let stored = self.stored_columns(session, &schema.name).await?;
        let mut hidden = vec![(EXPIRES_COLUMN.to_string(), "bigint")];
        hidden.extend(
            schema
                .search
                .iter()
                .map(|c| (prefix_column(c), "set<text>")),
        );
        for (name, typ) in &hidden {
            if stored.iter().any(|s| s.name == *name) {
                continue;
            }
            let ddl = format!("ALTER TABLE {} ADD {} {typ}", self.table(schema), q(name));
            if let Err(e) = self.run_ddl(session, &ddl).await {
                let again = self.stored_columns(session, &schema.name).await?;
                if !again.iter().any(|s| s.name == *name) {
                    return Err(schema_context(schema, e));
                }
            }
        }
        let mut wanted: Vec<(String, String, bool)> = Vec::new(); // (index name, column, sai)
        for column in &schema.local_indexes {
            let sai = c.sai && column_type(schema, column)? != ColumnType::Blob;
            // Named apart from a global index on the same column; at most 48 bytes like every index name.
            let name = index_name(&schema.name, &format!("{column}__local"));
            wanted.push((name, column.clone(), sai));
        }
        for column in &schema.search {
            let p = prefix_column(column);
            wanted.push((index_name(&schema.name, &p), p, c.sai));
        }
        for (name, column, sai) in &wanted {
            let using = if *sai { " USING 'sai'" } else { "" };
            let ddl = format!(
                "CREATE INDEX IF NOT EXISTS {} ON {} ({}){using}",
                q(name),
                self.table(schema),
                q(column)
            );
            self.run_ddl(session, &ddl)
                .await
                .map_err(|e| schema_context(schema, e))?;
        }
        for column in &schema.local_indexes {
            self.wait_until_queryable(session, schema, column).await?;
        }
        for column in &schema.search {
            let cql = format!(
                "SELECT {} FROM {} WHERE {} CONTAINS ? LIMIT 1",
                q(&schema.partition_key[0]),
                self.table(schema),
                q(&prefix_column(column))
            );
            self.wait_until_answers(
                session,
                schema,
                &cql,
                vec![Some(CqlValue::Text("a".into()))],
            )
            .await?;
        }
        Ok(())
    }

    /// Runs `cql` until the index it needs answers (see [`CqlBackend::wait_until_queryable`]).
    async fn wait_until_answers(
        &self,
        session: &Session,
        schema: &TableSchema,
        cql: &str,
        probe: Vec<Option<CqlValue>>,
    ) -> BackendResult<()> {
        let stmt = self.prepared(session, cql).await?;
        let deadline = Instant::now()
            + Duration::from_millis(self.config.request_timeout_ms.max(DDL_TIMEOUT_MIN_MS));
        loop {
            match session.execute_unpaged(&stmt, &probe).await {
                Ok(_) => return Ok(()),
                Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::ReadFailure { .. },
                    msg,
                ))) if Instant::now() < deadline => {
                    tracing::debug!(table = %schema.name, "index not queryable yet: {msg}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(schema_context(schema, exec_err(e))),
            }
        }
    }

    /// The `INSERT ... USING TTL ?` of `row` with its expiry and prefix sets, and its bound values.
    fn insert_ttl_statement(
        &self,
        schema: &TableSchema,
        row: &Row,
        ttl_seconds: Option<u32>,
    ) -> BackendResult<(String, Vec<Option<CqlValue>>)> {
        let (_, mut values) = self.insert_statement(schema, row)?;
        let mut names: Vec<String> = row.keys().map(|n| q(n)).collect();
        names.push(q(EXPIRES_COLUMN));
        values.push(
            ttl_seconds
                .map(|s| CqlValue::BigInt(super::now_ms().saturating_add(i64::from(s) * 1000))),
        );
        for c in &schema.search {
            let derived = super::search_column(c);
            if row.contains_key(&derived) {
                names.push(q(&prefix_column(c)));
                values.push(prefixes_of(row.get(&derived)));
            }
        }
        values.push(Some(CqlValue::Int(ttl_seconds.unwrap_or(0) as i32)));
        let marks = vec!["?"; names.len()].join(", ");
        let cql = format!(
            "INSERT INTO {} ({}) VALUES ({marks}) USING TTL ?",
            self.table(schema),
            names.join(", ")
        );
        Ok((cql, values))
    }

    async fn upsert_ttl_impl(
        &self,
        schema: &TableSchema,
        rows: Vec<Row>,
        ttl_seconds: Option<u32>,
    ) -> BackendResult<()> {
        self.write_rows(rows, |row| {
            self.insert_ttl_statement(schema, row, ttl_seconds)
        })
        .await
    }

    async fn patch_impl(
        &self,
        schema: &TableSchema,
        key: &Row,
        columns: Row,
    ) -> BackendResult<bool> {
        if schema.is_counter_table() {
            return Err(BackendError::InvalidQuery(format!(
                "table `{}` is a counter table",
                schema.name
            )));
        }
        let c = Arc::clone(self.conn().await?);
        let keys = key_values(schema, key)?;
        let read = format!(
            "SELECT {} FROM {} WHERE {}",
            q(EXPIRES_COLUMN),
            self.table(schema),
            key_where(schema)
        );
        let mut stmt = self.prepared(&c.session, &read).await?;
        stmt.set_is_idempotent(true);
        let res = c
            .session
            .execute_unpaged(&stmt, keys.clone())
            .await
            .map_err(exec_err)?;
        let rows = res
            .into_rows_result()
            .map_err(|e| BackendError::Database(e.to_string()))?;
        let found = match rows
            .rows::<(Option<i64>,)>()
            .map_err(|e| BackendError::Data(e.to_string()))?
            .next()
        {
            Some(r) => Some(r.map_err(|e| BackendError::Data(e.to_string()))?.0),
            None => None,
        };
        let Some(expires) = found else {
            return Ok(false);
        };
        let ttl = match expires {
            None => 0,
            Some(e) => {
                let left = e - super::now_ms();
                if left <= 0 {
                    return Ok(false);
                }
                ((left + 999) / 1000).min(i64::from(super::TTL_SECONDS_MAX)) as i32
            }
        };
        let mut sets = Vec::new();
        let mut values = vec![Some(CqlValue::Int(ttl))];
        for (name, v) in &columns {
            if schema.is_key(name) {
                return Err(BackendError::InvalidQuery(format!(
                    "a patch cannot write key column `{name}`"
                )));
            }
            let t = column_type(schema, name)?;
            sets.push(format!("{} = ?", q(name)));
            values.push(to_cql(name, t, v)?);
        }
        for s in &schema.search {
            let derived = super::search_column(s);
            if columns.contains_key(&derived) {
                sets.push(format!("{} = ?", q(&prefix_column(s))));
                values.push(prefixes_of(columns.get(&derived)));
            }
        }
        if sets.is_empty() {
            return Ok(false);
        }
        values.extend(keys);
        // `IF EXISTS` (a lightweight transaction): a row deleted (or expired) since the read above is not brought back
        // with only the patched columns.
        let cql = format!(
            "UPDATE {} USING TTL ? SET {} WHERE {} IF EXISTS",
            self.table(schema),
            sets.join(", "),
            key_where(schema)
        );
        let stmt = self.prepared(&c.session, &cql).await?;
        let res = c
            .session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        applied_of(res, "UPDATE IF EXISTS")
    }

    /// Waits until the index on `column` answers queries: a new index is built in the background, and Cassandra
    /// fails reads that need it until then ("The secondary index ... is not yet available", a read failure).
    async fn wait_until_queryable(
        &self,
        session: &Session,
        schema: &TableSchema,
        column: &str,
    ) -> BackendResult<()> {
        let t = column_type(schema, column)?;
        let cql = format!(
            "SELECT {} FROM {} WHERE {} = ? LIMIT 1",
            q(&schema.partition_key[0]),
            self.table(schema),
            q(column)
        );
        let stmt = self.prepared(session, &cql).await?;
        let probe = vec![Some(probe_value(t))];
        let deadline = Instant::now()
            + Duration::from_millis(self.config.request_timeout_ms.max(DDL_TIMEOUT_MIN_MS));
        loop {
            match session.execute_unpaged(&stmt, &probe).await {
                Ok(_) => return Ok(()),
                Err(ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                    DbError::ReadFailure { .. },
                    msg,
                ))) if Instant::now() < deadline => {
                    tracing::debug!(table = %schema.name, column, "index not queryable yet: {msg}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(schema_context(schema, exec_err(e))),
            }
        }
    }

    // ---- rows ----------------------------------------------------------------------------------------------------

    async fn get_impl(&self, schema: &TableSchema, key: &Row) -> BackendResult<Option<Row>> {
        let c = self.conn().await?;
        let cql = format!(
            "SELECT {} FROM {} WHERE {}",
            select_list(schema),
            self.table(schema),
            key_where(schema)
        );
        let mut stmt = self.prepared(&c.session, &cql).await?;
        stmt.set_is_idempotent(true);
        let values = key_values(schema, key)?;
        let res = c
            .session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        let mut rows = decode_rows(schema, res)?;
        Ok(if rows.is_empty() {
            None
        } else {
            Some(rows.swap_remove(0))
        })
    }

    async fn raw_row_impl(
        &self,
        schema: &TableSchema,
        key: &Row,
    ) -> BackendResult<Option<Vec<u8>>> {
        let c = self.conn().await?;
        let cql = format!(
            "SELECT {} FROM {} WHERE {}",
            select_list(schema),
            self.table(schema),
            key_where(schema)
        );
        let stmt = self.prepared(&c.session, &cql).await?;
        let values = key_values(schema, key)?;
        let res = c
            .session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        let rows = res
            .into_rows_result()
            .map_err(|e| BackendError::Database(e.to_string()))?;
        let mut iter = rows
            .rows::<ColumnIterator<'_, '_>>()
            .map_err(|e| BackendError::Database(e.to_string()))?;
        let Some(row) = iter.next() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        for col in row.map_err(|e| BackendError::Data(e.to_string()))? {
            let col = col.map_err(|e| BackendError::Data(e.to_string()))?;
            if let Some(slice) = col.slice {
                out.extend_from_slice(slice.as_slice());
            }
        }
        Ok(Some(out))
    }

    /// The `INSERT` of `row` and its bound values.
    fn insert_statement(
        &self,
        schema: &TableSchema,
        row: &Row,
    ) -> BackendResult<(String, Vec<Option<CqlValue>>)> {
        if schema.is_counter_table() {
            return Err(BackendError::InvalidQuery(format!(
                "table `{}` is a counter table: its rows change only through increments",
                schema.name
            )));
        }
        for k in schema.primary_key() {
            if matches!(row.get(k), None | Some(Value::Null)) {
                return Err(BackendError::InvalidQuery(format!(
                    "key column `{k}` has no value"
                )));
            }
        }
        let mut names = Vec::with_capacity(row.len());
        let mut values = Vec::with_capacity(row.len());
        for (name, v) in row {
            let t = column_type(schema, name)?;
            names.push(q(name));
            values.push(to_cql(name, t, v)?);
        }
        let marks = vec!["?"; names.len()].join(", ");
        let cql = format!(
            "INSERT INTO {} ({}) VALUES ({marks})",
            self.table(schema),
            names.join(", ")
        );
        Ok((cql, values))
    }

    async fn upsert_impl(&self, schema: &TableSchema, row: Row) -> BackendResult<()> {
        let (cql, values) = self.insert_statement(schema, &row)?;
        let c = self.conn().await?;
        let mut stmt = self.prepared(&c.session, &cql).await?;
        stmt.set_is_idempotent(true);
        c.session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    /// `INSERT ... IF NOT EXISTS` (a lightweight transaction, serial consistency of the driver's default); the first
    /// column of the answer, `[applied]`, says whether this statement created the row.
    async fn insert_if_absent_impl(&self, schema: &TableSchema, row: Row) -> BackendResult<bool> {
        let row: Row = row.into_iter().filter(|(_, v)| *v != Value::Null).collect();
        // The same columns as an upsert (expiry and prefix sets included), so an inserted row is found by every
        // query an upserted one is.
        let (cql, values) = self.insert_ttl_statement(schema, &row, None)?;
        let cql = cql.replacen(" USING TTL ?", " IF NOT EXISTS USING TTL ?", 1);
        let c = self.conn().await?;
        let stmt = self.prepared(&c.session, &cql).await?;
        let res = c
            .session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        applied_of(res, "INSERT IF NOT EXISTS")
    }

    /// Writes each row with the (idempotent) statement `statement` makes of it, with up to
    /// [`CqlConfig::write_concurrency_max`] requests in flight; on the first error the writes not yet sent are dropped
    /// (some rows may have been written, as the trait allows).
    async fn write_rows(
        &self,
        rows: Vec<Row>,
        statement: impl Fn(&Row) -> BackendResult<(String, Vec<Option<CqlValue>>)>,
    ) -> BackendResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let c = Arc::clone(self.conn().await?);
        let mut tasks = tokio::task::JoinSet::new();
        let in_flight_max = self.config.write_concurrency_max.max(1);
        for row in rows {
            let (cql, values) = statement(&row)?;
            let mut stmt = self.prepared(&c.session, &cql).await?;
            stmt.set_is_idempotent(true);
            while tasks.len() >= in_flight_max {
                join_one(&mut tasks).await?;
            }
            let c = Arc::clone(&c);
            tasks.spawn(async move {
                c.session
                    .execute_unpaged(&stmt, values)
                    .await
                    .map(|_| ())
                    .map_err(exec_err)
            });
        }
        while !tasks.is_empty() {
            join_one(&mut tasks).await?;
        }
        Ok(())
    }

    /// [`CqlBackend::write_rows`] of plain upserts.
    async fn upsert_all_impl(&self, schema: &TableSchema, rows: Vec<Row>) -> BackendResult<()> {
        self.write_rows(rows, |row| self.insert_statement(schema, row))
            .await
    }

    async fn delete_impl(&self, schema: &TableSchema, key: &Row) -> BackendResult<()> {
        let cql = format!(
            "DELETE FROM {} WHERE {}",
            self.table(schema),
            key_where(schema)
        );
        let values = key_values(schema, key)?;
        let c = self.conn().await?;
        let mut stmt = self.prepared(&c.session, &cql).await?;
        stmt.set_is_idempotent(true);
        c.session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    async fn increment_impl(
        &self,
        schema: &TableSchema,
        key: &Row,
        column: &str,
        delta: i64,
    ) -> BackendResult<()> {
        if column_type(schema, column)? != ColumnType::Counter {
            return Err(BackendError::InvalidQuery(format!(
                "column `{column}` is not a counter"
            )));
        }
        let cql = format!(
            "UPDATE {} SET {c} = {c} + ? WHERE {}",
            self.table(schema),
            key_where(schema),
            c = q(column)
        );
        let mut values = vec![Some(CqlValue::Counter(Counter(delta)))];
        values.extend(key_values(schema, key)?);
        let conn = self.conn().await?;
        let stmt = self.prepared(&conn.session, &cql).await?;
        conn.session
            .execute_unpaged(&stmt, values)
            .await
            .map_err(exec_err)?;
        Ok(())
    }

    // ---- queries -------------------------------------------------------------------------------------------------

    async fn query_impl(&self, schema: &TableSchema, query: &Query) -> BackendResult<Page> {
        let plan = Plan::build(schema, query, self.config.in_chunk_values_max)?;
        let cql = plan.cql(&self.table(schema), schema);
        // The fingerprint is that of the forward query, so a token is accepted in both directions.
        let forward = Query {
            reversed: false,
            page_token: None,
            ..query.clone()
        };
        let fplan = Plan::build(schema, &forward, self.config.in_chunk_values_max)?;
        let fingerprint = fingerprint(
            &schema.name,
            &fplan.cql(&self.table(schema), schema),
            &fplan,
        );
        let limit = query.limit.max(1) as usize;
        let mut rows: Vec<Row> = Vec::new();
        if plan.steps == 0 {
            return Ok(Page::default());
        }
        let free = match &plan.plan {
            Plan::Key { .. } => free_column(schema, query, &plan.plan).ok().flatten(),
            _ => None,
        };
        let value_of = |r: &Row| free.as_ref().and_then(|f| r.get(f).cloned());
        let mut last: Option<(u64, Option<Value>)> = None;
        let c = Arc::clone(self.conn().await?);
        let (mut step, mut state, from_token) = match &query.page_token {
            None => (0, PagingState::start(), false),
            Some(t) => {
                let token = decode_token(t, fingerprint, plan.steps)?;
                if token.reversed == query.reversed && !token.keyset {
                    (token.step, token.state, true)
                } else {
                    // Resume from the last returned row, by keyset: the rest of its step, then the next steps.
                    let free = free_column(schema, query, &plan.plan)?;
                    let (last_step, value) = token.last.ok_or_else(|| {
                        BackendError::InvalidPageToken(
                            "the token holds no row to resume from".into(),
                        )
                    })?;
                    let s = if token.reversed == query.reversed {
                        last_step
                    } else {
                        plan.steps - 1 - last_step
                    };
                    if let (Some(col), Some(v)) = (free, value) {
                        let finished = self
                            .keyset_step(&c, schema, query, &col, v, s, limit, &mut rows)
                            .await?;
                        if let Some(r) = rows.last() {
                            last = Some((s, value_of(r)));
                        }
                        if !finished {
                            let next = last.as_ref().map(|(st, v)| (*st, v.as_ref()));
                            return Ok(Page {
                                rows,
                                next: Some(encode_token(
                                    fingerprint,
                                    s,
                                    &PagingState::start(),
                                    query.reversed,
                                    true,
                                    next,
                                )),
                            });
                        }
                    }
                    if s + 1 >= plan.steps {
                        return Ok(Page { rows, next: None });
                    }
                    (s + 1, PagingState::start(), false)
                }
            }
        };
        let mut base = self.prepared(&c.session, &cql).await?;
        base.set_is_idempotent(true);
        let concurrency = self.config.query_concurrency_max.max(1) as u64;
        let mut first = true;
        while step < plan.steps && rows.len() < limit {
            let remaining = limit - rows.len();
            let resumed = first && from_token && state.as_bytes_slice().is_some();
            first = false;
            let fresh = state.as_bytes_slice().is_none();
            if fresh && concurrency > 1 && plan.steps - step > 1 {
                // Several steps start here: fetch their first pages at once, then take them in order while they fit.
                let n = concurrency.min(plan.steps - step);
                let mut pages = Vec::with_capacity(n as usize);
                for j in 0..n {
                    pages.push(tokio::spawn(fetch_page(
                        Arc::clone(&c),
                        base.clone(),
                        plan.values(step + j)?,
                        PagingState::start(),
                        remaining,
                    )));
                }
                for page in pages {
                    let (res, paging) = page.await.map_err(|e| {
                        BackendError::Database(format!("CQL read task failed: {e}"))
                    })??;
                    let got = long_prefix_filter(schema, query, decode_rows(schema, res)?);
                    if rows.len() + got.len() > limit {
                        // Does not fit: this step is fetched again with the room left (the rest are dropped).
                        break;
                    }
                    if let Some(r) = got.last() {
                        last = Some((step, value_of(r)));
                    }
                    rows.extend(got);
                    match paging.into_paging_control_flow() {
                        ControlFlow::Continue(next) => {
                            state = next;
                            break;
                        }
                        ControlFlow::Break(()) => step += 1,
                    }
                }
                continue;
            }
            let (res, paging) = match fetch_page(
                Arc::clone(&c),
                base.clone(),
                plan.values(step)?,
                state,
                remaining,
            )
            .await
            {
                Ok(r) => r,
                // A resumed page the server refuses (not for availability) means a forged paging state.
                Err(BackendError::Database(m)) if resumed => {
                    return Err(BackendError::InvalidPageToken(format!(
                        "the server refused the paging state: {m}"
                    )));
                }
                Err(e) => return Err(e),
            };
            let got = long_prefix_filter(schema, query, decode_rows(schema, res)?);
            if let Some(r) = got.last() {
                last = Some((step, value_of(r)));
            }
            rows.extend(got);
            match paging.into_paging_control_flow() {
                ControlFlow::Continue(next) => state = next,
                ControlFlow::Break(()) => {
                    step += 1;
                    state = PagingState::start();
                }
            }
        }
        if step < plan.steps && state.as_bytes_slice().is_some() {
            // A page that ended exactly on the last row of its step still carries a paging state: look one row
            // ahead, so a full last page does not hand out a token to an empty page.
            let (res, paging) = fetch_page(
                Arc::clone(&c),
                base.clone(),
                plan.values(step)?,
                state.clone(),
                1,
            )
            .await?;
            if decode_rows(schema, res)?.is_empty()
                && matches!(paging.into_paging_control_flow(), ControlFlow::Break(()))
            {
                step += 1;
                state = PagingState::start();
            }
        }
        let next = (step < plan.steps).then(|| {
            let l = last.as_ref().map(|(st, v)| (*st, v.as_ref()));
            encode_token(fingerprint, step, &state, query.reversed, false, l)
        });
        Ok(Page { rows, next })
    }

    /// Reads step `step` of `query` from just after the row whose free clustering column `column` holds `value` (in
    /// the query's direction), appending up to `limit` rows in all to `rows`; returns whether the step is finished.
    #[allow(clippy::too_many_arguments)]
    async fn keyset_step(
        &self,
        c: &Arc<Connected>,
        schema: &TableSchema,
        query: &Query,
        column: &str,
        value: Value,
        step: u64,
        limit: usize,
        rows: &mut Vec<Row>,
    ) -> BackendResult<bool> {
        // The last row satisfied the query's bounds, so "strictly after it" replaces the bound on that side.
        let mut q = query.clone();
        q.page_token = None;
        q.filters.retain(|f| {
            f.column != column
                || !(if query.reversed {
                    matches!(f.op, FilterOp::Lt(_) | FilterOp::Le(_))
                } else {
                    matches!(f.op, FilterOp::Gt(_) | FilterOp::Ge(_))
                })
        });
        q.filters.push(super::Filter {
            column: column.to_string(),
            op: if query.reversed {
                FilterOp::Lt(value)
            } else {
                FilterOp::Gt(value)
            },
        });
        let plan = Plan::build(schema, &q, self.config.in_chunk_values_max)?;
        let cql = plan.cql(&self.table(schema), schema);
        let mut stmt = self.prepared(&c.session, &cql).await?;
        stmt.set_is_idempotent(true);
        let mut state = PagingState::start();
        loop {
            let (res, paging) = fetch_page(
                Arc::clone(c),
                stmt.clone(),
                plan.values(step)?,
                state,
                limit - rows.len(),
            )
            .await?;
            rows.extend(decode_rows(schema, res)?);
            match paging.into_paging_control_flow() {
                ControlFlow::Continue(next) if rows.len() < limit => state = next,
                ControlFlow::Continue(_) => return Ok(false),
                ControlFlow::Break(()) => return Ok(true),
            }
        }
    }
}

impl Backend for CqlBackend {
    fn name(&self) -> &'static str {
        "cql"
    }

    fn upsert_ttl<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
        ttl_seconds: Option<u32>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.upsert_ttl_impl(schema, rows, ttl_seconds))
    }

    fn patch<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        columns: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.patch_impl(schema, key, columns))
    }

    fn ensure_schema<'a>(&'a self, schema: &'a TableSchema) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.ensure_schema_impl(schema))
    }

    fn get<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Row>>> {
        Box::pin(self.get_impl(schema, key))
    }

    fn query<'a>(
        &'a self,
        schema: &'a TableSchema,
        query: &'a Query,
    ) -> BoxFuture<'a, BackendResult<Page>> {
        Box::pin(self.query_impl(schema, query))
    }

    fn upsert<'a>(&'a self, schema: &'a TableSchema, row: Row) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.upsert_impl(schema, row))
    }

    fn insert<'a>(
        &'a self,
        schema: &'a TableSchema,
        row: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.insert_if_absent_impl(schema, row))
    }

    fn upsert_all<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.upsert_all_impl(schema, rows))
    }

    fn delete<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.delete_impl(schema, key))
    }

    fn increment<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        column: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.increment_impl(schema, key, column, delta))
    }

    fn raw_row<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Vec<u8>>>> {
        Box::pin(self.raw_row_impl(schema, key))
    }
}

fn describe_key<'a>(
    partition: impl Iterator<Item = (&'a str, &'a str)>,
    clustering: impl Iterator<Item = (&'a str, &'a str, String)>,
) -> String {
    let p: Vec<String> = partition.map(|(n, t)| format!("{n} {t}")).collect();
    let mut out = format!("(({})", p.join(", "));
    for (n, t, o) in clustering {
        out.push_str(&format!(", {n} {t} {o}"));
    }
    out.push(')');
    out
}

/// One page of `stmt` (at most `page_rows` rows) from `state` on; `'static`, so it can run as its own task.
async fn fetch_page(
    c: Arc<Connected>,
    mut stmt: PreparedStatement,
    values: Vec<Option<CqlValue>>,
    state: PagingState,
    page_rows: usize,
) -> BackendResult<(QueryResult, PagingStateResponse)> {
    stmt.set_page_size(i32::try_from(page_rows).unwrap_or(i32::MAX));
    c.session
        .execute_single_page(&stmt, values, state)
        .await
        .map_err(exec_err)
}

async fn join_one(tasks: &mut tokio::task::JoinSet<BackendResult<()>>) -> BackendResult<()> {
    match tasks.join_next().await {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(BackendError::Database(format!(
            "CQL write task failed: {e}"
        ))),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Schema helpers.

#[derive(Debug, Clone)]
struct StoredColumn {
    name: String,
    kind: String,
    position: i32,
    clustering_order: String,
    typ: String,
}

fn cql_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text | ColumnType::Json => "text",
        ColumnType::Number => "bigint",
        ColumnType::Boolean => "boolean",
        ColumnType::Uuid => "uuid",
        ColumnType::TimeUuid => "timeuuid",
        ColumnType::Counter => "counter",
        ColumnType::Blob => "blob",
    }
}

fn check_schema_names(schema: &TableSchema) -> BackendResult<()> {
    let names = std::iter::once(&schema.name).chain(schema.columns.iter().map(|c| &c.name));
    for n in names {
        if !is_identifier(n) {
            return Err(BackendError::InvalidQuery(format!(
                "`{n}` is not a valid table or column name (ASCII letters, digits and `_`, starting with a letter, \
                 at most {NAME_BYTES_MAX} bytes)"
            )));
        }
    }
    for k in schema
        .primary_key()
        .chain(schema.indexes.iter().map(String::as_str))
    {
        if schema.column(k).is_none() {
            return Err(BackendError::InvalidQuery(format!(
                "key or index column `{k}` is not declared"
            )));
        }
    }
    if schema.partition_key.is_empty() {
        return Err(BackendError::InvalidQuery(format!(
            "table `{}` has no partition key",
            schema.name
        )));
    }
    Ok(())
}

fn create_table_cql(table: &str, schema: &TableSchema) -> String {
    let cols: Vec<String> = schema
        .columns
        .iter()
        .map(|c| format!("{} {}", q(&c.name), cql_type(c.column_type)))
        .collect();
    let pk: Vec<String> = schema.partition_key.iter().map(|c| q(c)).collect();
    let mut key = format!("({})", pk.join(", "));
    for (c, _) in &schema.clustering {
        key.push_str(", ");
        key.push_str(&q(c));
    }
    let mut cql = format!(
        "CREATE TABLE IF NOT EXISTS {table} ({}, PRIMARY KEY ({key}))",
        cols.join(", ")
    );
    if !schema.clustering.is_empty() {
        let order: Vec<String> = schema
            .clustering
            .iter()
            .map(|(c, o)| {
                format!(
                    "{} {}",
                    q(c),
                    if *o == Order::Desc { "DESC" } else { "ASC" }
                )
            })
            .collect();
        cql.push_str(&format!(" WITH CLUSTERING ORDER BY ({})", order.join(", ")));
    }
    cql
}

/// Checks the stored columns against the declared schema; returns the declared columns the table lacks.
fn compare_schema<'s>(
    schema: &'s TableSchema,
    stored: &[StoredColumn],
) -> BackendResult<Vec<&'s ColumnDef>> {
    let err = |what: String| BackendError::Schema(format!("table `{}`: {what}", schema.name));
    // The primary key, written as `((p1 type, ...), c1 type asc, ...)`, stored and declared.
    let mut pk: Vec<&StoredColumn> = stored
        .iter()
        .filter(|c| c.kind == "partition_key")
        .collect();
    pk.sort_by_key(|c| c.position);
    let mut ck: Vec<&StoredColumn> = stored.iter().filter(|c| c.kind == "clustering").collect();
    ck.sort_by_key(|c| c.position);
    let stored_key = describe_key(
        pk.iter().map(|c| (c.name.as_str(), c.typ.as_str())),
        ck.iter().map(|c| {
            (
                c.name.as_str(),
                c.typ.as_str(),
                c.clustering_order.to_ascii_lowercase(),
            )
        }),
    );
    let declared_type = |c: &str| schema.column_type(c).map_or("?", cql_type);
    let declared_key = describe_key(
        schema
            .partition_key
            .iter()
            .map(|c| (c.as_str(), declared_type(c))),
        schema.clustering.iter().map(|(c, o)| {
            let order = if *o == Order::Desc { "desc" } else { "asc" };
            (c.as_str(), declared_type(c), order.to_string())
        }),
    );
    if stored_key != declared_key {
        return Err(err(format!(
            "the stored primary key is {stored_key}, the declared one is {declared_key}; a primary key (partition \
             key, clustering columns, their types and order) cannot be changed in place"
        )));
    }
    let mut missing = Vec::new();
    for col in &schema.columns {
        match stored.iter().find(|s| s.name == col.name) {
            None => missing.push(col),
            Some(s) => {
                if s.typ != cql_type(col.column_type) {
                    return Err(err(format!(
                        "column `{}` is stored as `{}` but declared as {} (CQL `{}`)",
                        col.name,
                        s.typ,
                        col.column_type,
                        cql_type(col.column_type)
                    )));
                }
                if s.kind == "static" {
                    return Err(err(format!(
                        "column `{}` is stored as a static column",
                        col.name
                    )));
                }
            }
        }
    }
    let stored_regular: Vec<&StoredColumn> =
        stored.iter().filter(|c| c.kind == "regular").collect();
    if !stored_regular.is_empty() && !missing.is_empty() {
        let stored_counter = stored_regular.iter().any(|c| c.typ == "counter");
        if stored_counter != schema.is_counter_table() {
            return Err(err(format!(
                "the stored table {} a counter table but the declared one {}",
                if stored_counter { "is" } else { "is not" },
                if schema.is_counter_table() {
                    "is"
                } else {
                    "is not"
                }
            )));
        }
    }
    Ok(missing)
}

fn schema_context(schema: &TableSchema, e: BackendError) -> BackendError {
    match e {
        BackendError::Database(m) | BackendError::InvalidQuery(m) => BackendError::Schema(format!(
            "table `{}`: the server refused the schema change: {m}",
            schema.name
        )),
        other => other,
    }
}

/// An index `target` option as stored in `system_schema.indexes` (`col`, `"Col"`, or `values(col)`) -> column name.
fn unquote_target(t: &str) -> String {
    match t.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => t.to_string(),
    }
}

/// FNV-1a, 64 bits (stable across builds, unlike `DefaultHasher`).
fn fnv64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.iter().chain(std::iter::once(&0xFFu8)) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// `<table>_<column>_<hash>`, shortened to at most 48 bytes; the hash keeps distinct (table, column) pairs distinct.
fn index_name(table: &str, column: &str) -> String {
    let hash = fnv64(&[table.as_bytes(), column.as_bytes()]) as u32;
    let mut base = format!("{table}_{column}");
    base.truncate(NAME_BYTES_MAX - 9);
    format!("{base}_{hash:08x}")
}

// ---------------------------------------------------------------------------------------------------------------
// Values.

fn column_type(schema: &TableSchema, name: &str) -> BackendResult<ColumnType> {
    schema.column_type(name).ok_or_else(|| {
        BackendError::InvalidQuery(format!("table `{}` has no column `{name}`", schema.name))
    })
}

fn to_cql(column: &str, t: ColumnType, v: &Value) -> BackendResult<Option<CqlValue>> {
    Ok(Some(match (t, v) {
        (_, Value::Null) => return Ok(None),
        (ColumnType::Text | ColumnType::Json, Value::Text(s)) => CqlValue::Text(s.clone()),
        (ColumnType::Number, Value::Number(n)) => CqlValue::BigInt(*n),
        (ColumnType::Counter, Value::Number(n)) => CqlValue::Counter(Counter(*n)),
        (ColumnType::Boolean, Value::Boolean(b)) => CqlValue::Boolean(*b),
        (ColumnType::Uuid, Value::Uuid(u)) => CqlValue::Uuid(*u),
        (ColumnType::TimeUuid, Value::Uuid(u)) => CqlValue::Timeuuid(CqlTimeuuid::from(*u)),
        (ColumnType::Blob, Value::Blob(b)) => CqlValue::Blob(b.clone()),
        _ => {
            return Err(BackendError::InvalidQuery(format!(
                "value {v:?} does not fit column `{column}` of type {t}"
            )));
        }
    }))
}

fn key_value(column: &str, t: ColumnType, v: &Value) -> BackendResult<CqlValue> {
    to_cql(column, t, v)?
        .ok_or_else(|| BackendError::InvalidQuery(format!("key column `{column}` has no value")))
}

fn from_cql(column: &str, v: CqlValue) -> BackendResult<Value> {
    Ok(match v {
        CqlValue::Text(s) | CqlValue::Ascii(s) => Value::Text(s),
        CqlValue::BigInt(n) => Value::Number(n),
        CqlValue::Counter(c) => Value::Number(c.0),
        CqlValue::Int(n) => Value::Number(i64::from(n)),
        CqlValue::Boolean(b) => Value::Boolean(b),
        CqlValue::Uuid(u) => Value::Uuid(u),
        CqlValue::Timeuuid(t) => Value::Uuid(t.into()),
        CqlValue::Blob(b) => Value::Blob(b),
        CqlValue::Empty => Value::Null,
        other => {
            return Err(BackendError::Data(format!(
                "column `{column}` holds a CQL value of an unexpected type: {other:?}"
            )));
        }
    })
}

/// Some value of type `t`, for probing an index.
fn probe_value(t: ColumnType) -> CqlValue {
    match t {
        ColumnType::Text | ColumnType::Json => CqlValue::Text(String::new()),
        ColumnType::Number => CqlValue::BigInt(0),
        ColumnType::Counter => CqlValue::Counter(Counter(0)),
        ColumnType::Boolean => CqlValue::Boolean(false),
        ColumnType::Uuid => CqlValue::Uuid(Uuid::nil()),
        // The smallest version-1 UUID (a timeuuid column refuses other versions).
        ColumnType::TimeUuid => CqlValue::Timeuuid(CqlTimeuuid::from(Uuid::from_u128(
            0x1000_8000_0000_0000_0000,
        ))),
        ColumnType::Blob => CqlValue::Blob(Vec::new()),
    }
}

fn select_list(schema: &TableSchema) -> String {
    schema
        .columns
        .iter()
        .map(|c| q(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_where(schema: &TableSchema) -> String {
    schema
        .primary_key()
        .map(|k| format!("{} = ?", q(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn key_values(schema: &TableSchema, key: &Row) -> BackendResult<Vec<Option<CqlValue>>> {
    schema
        .primary_key()
        .map(|k| {
            let v = key.get(k).unwrap_or(&Value::Null);
            Ok(Some(key_value(k, column_type(schema, k)?, v)?))
        })
        .collect()
}

/// The first column of a lightweight transaction's answer, `[applied]`: whether the statement (`what`, named in the
/// errors) wrote.
fn applied_of(res: QueryResult, what: &str) -> BackendResult<bool> {
    let rows = res
        .into_rows_result()
        .map_err(|e| BackendError::Database(e.to_string()))?;
    let mut iter = rows
        .rows::<ColumnIterator<'_, '_>>()
        .map_err(|e| BackendError::Database(e.to_string()))?;
    let Some(row) = iter.next() else {
        return Err(BackendError::Database(format!(
            "{what} returned no [applied] row"
        )));
    };
    let mut cols = row.map_err(|e| BackendError::Data(e.to_string()))?;
    let applied = cols
        .next()
        .transpose()
        .map_err(|e| BackendError::Data(e.to_string()))?
        .and_then(|c| c.slice.map(|s| s.as_slice().first().copied()))
        .flatten()
        .ok_or_else(|| BackendError::Data("[applied] has no value".into()))?;
    Ok(applied != 0)
}

fn decode_rows(schema: &TableSchema, res: QueryResult) -> BackendResult<Vec<Row>> {
    let rows = res
        .into_rows_result()
        .map_err(|e| BackendError::Database(e.to_string()))?;
    let mut out = Vec::with_capacity(rows.rows_num());
    for r in rows
        .rows::<scylla::value::Row>()
        .map_err(|e| BackendError::Data(e.to_string()))?
    {
        let r = r.map_err(|e| BackendError::Data(e.to_string()))?;
        let mut row = Row::new();
        for (col, v) in schema.columns.iter().zip(r.columns) {
            if let Some(v) = v {
                let v = from_cql(&col.name, v)?;
                if v != Value::Null {
                    row.insert(col.name.clone(), v);
                }
            }
        }
        out.push(row);
    }
    Ok(out)
}

/// Cassandra's order of values of column type `t` (`UUIDType`, `TimeUUIDType`; the others as [`Value::cmp_as`]).
fn server_cmp(t: ColumnType, a: &Value, b: &Value) -> Ordering {
    fn reorder(msb: u64) -> i64 {
        ((msb << 48) | ((msb << 16) & 0xFFFF_0000_0000) | (msb >> 32)) as i64
    }
    match (t, a, b) {
        (ColumnType::Uuid, Value::Uuid(x), Value::Uuid(y)) => {
            let ((xm, xl), (ym, yl)) = (x.as_u64_pair(), y.as_u64_pair());
            let (xv, yv) = ((xm >> 12) & 0xF, (ym >> 12) & 0xF);
            xv.cmp(&yv)
                .then_with(|| {
                    if xv == 1 {
                        reorder(xm).cmp(&reorder(ym))
                    } else {
                        xm.cmp(&ym)
                    }
                })
                .then_with(|| xl.cmp(&yl))
        }
        (ColumnType::TimeUuid, Value::Uuid(x), Value::Uuid(y)) => {
            let ((xm, xl), (ym, yl)) = (x.as_u64_pair(), y.as_u64_pair());
            let signed_bytes = |l: u64| (l ^ 0x0080_8080_8080_8080) as i64;
            reorder(xm)
                .cmp(&reorder(ym))
                .then_with(|| signed_bytes(xl).cmp(&signed_bytes(yl)))
        }
        _ => a.cmp_as(b, t),
    }
}

fn sorted_unique(
    t: ColumnType,
    values: &[Value],
    cmp: fn(ColumnType, &Value, &Value) -> Ordering,
) -> Vec<Value> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| cmp(t, a, b));
    v.dedup();
    v
}

// ---------------------------------------------------------------------------------------------------------------
// Query plans.

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one plan per query, never stored in bulk
enum Plan {
    Scan,
    Index {
        column: String,
        values: Vec<CqlValue>,
    },
    Key {
        /// Distinct values of each partition-key column, in the order partitions are visited (forward).
        partition: Vec<Vec<CqlValue>>,
        /// Values of the `=` restrictions on the first clustering columns.
        clustering_eq: Vec<(String, CqlValue)>,
        /// `In` on the next clustering column: its chunks, in the order they are visited (already reversed if needed).
        clustering_in: Option<(String, Vec<Vec<CqlValue>>)>,
        /// A local-index or prefix restriction: its CQL condition and bound value.
        local: Option<(String, CqlValue)>,
        /// Range restrictions on the next clustering column: (column, operator, value).
        ranges: Vec<(String, &'static str, CqlValue)>,
        /// `ORDER BY` clause (reversed queries only).
        order_by: Option<String>,
        reversed: bool,
        partitions: u64,
    },
}

impl Plan {
    fn build(schema: &TableSchema, query: &Query, chunk: usize) -> BackendResult<PlanWithSteps> {
        let plan = match query.shape(schema) {
            QueryShape::Scan => Plan::Scan,
            QueryShape::Index => {
                let [f] = query.filters.as_slice() else {
                    return Err(BackendError::InvalidQuery(
                        "an index query has exactly one filter".into(),
                    ));
                };
                let t = column_type(schema, &f.column)?;
                let raw: &[Value] = match &f.op {
                    FilterOp::Eq(v) => std::slice::from_ref(v),
                    FilterOp::In(vs) => vs,
                    _ => {
                        return Err(BackendError::InvalidQuery(format!(
                            "range filter on indexed column `{}`",
                            f.column
                        )));
                    }
                };
                let values = sorted_unique(t, raw, |t, a, b| a.cmp_as(b, t))
                    .iter()
                    .map(|v| key_value(&f.column, t, v))
                    .collect::<BackendResult<_>>()?;
                Plan::Index {
                    column: f.column.clone(),
                    values,
                }
            }
            QueryShape::Key => Self::key_plan(schema, query, chunk)?,
        };
        let steps = match &plan {
            Plan::Scan => 1,
            Plan::Index { values, .. } => values.len() as u64,
            Plan::Key {
                partitions,
                clustering_in,
                ..
            } => {
                let chunks = clustering_in.as_ref().map_or(1, |(_, c)| c.len() as u64);
                partitions.checked_mul(chunks).ok_or_else(|| {
                    BackendError::InvalidQuery(
                        "the IN lists of this query select too many partitions".into(),
                    )
                })?
            }
        };
        Ok(PlanWithSteps { plan, steps })
    }

    fn key_plan(schema: &TableSchema, query: &Query, chunk: usize) -> BackendResult<Plan> {
        let mut partition = Vec::new();
        let mut partitions: u64 = 1;
        for c in &schema.partition_key {
            let t = column_type(schema, c)?;
            let ops: Vec<&FilterOp> = query.filters_on(c).collect();
            let raw: &[Value] = match ops.as_slice() {
                [FilterOp::Eq(v)] => std::slice::from_ref(v),
                [FilterOp::In(vs)] => vs,
                _ => {
                    return Err(BackendError::InvalidQuery(format!(
                        "partition key column `{c}` needs exactly one `=` or IN filter"
                    )));
                }
            };
            let vals: Vec<CqlValue> = sorted_unique(t, raw, |t, a, b| a.cmp_as(b, t))
                .iter()
                .map(|v| key_value(c, t, v))
                .collect::<BackendResult<_>>()?;
            partitions = partitions.checked_mul(vals.len() as u64).ok_or_else(|| {
                BackendError::InvalidQuery(
                    "the IN lists of this query select too many partitions".into(),
                )
            })?;
            partition.push(vals);
        }
        let mut clustering_eq = Vec::new();
        let mut clustering_in = None;
        let mut ranges = Vec::new();
        for (c, order) in &schema.clustering {
            let t = column_type(schema, c)?;
            let ops: Vec<&FilterOp> = query.filters_on(c).collect();
            match ops.as_slice() {
                [] => break,
                [FilterOp::Eq(v)] => {
                    clustering_eq.push((c.clone(), key_value(c, t, v)?));
                    continue;
                }
                [FilterOp::In(vs)] => {
                    let mut sorted = sorted_unique(t, vs, server_cmp);
                    if (*order == Order::Desc) != query.reversed {
                        sorted.reverse();
                    }
                    let vals: Vec<CqlValue> = sorted
                        .iter()
                        .map(|v| key_value(c, t, v))
                        .collect::<BackendResult<_>>()?;
                    let chunks: Vec<Vec<CqlValue>> =
                        vals.chunks(chunk).map(<[CqlValue]>::to_vec).collect();
                    clustering_in = Some((c.clone(), chunks));
                    break;
                }
                ranges_ops => {
                    for op in ranges_ops {
                        let (sym, v) = match op {
                            FilterOp::Gt(v) => (">", v),
                            FilterOp::Ge(v) => (">=", v),
                            FilterOp::Lt(v) => ("<", v),
                            FilterOp::Le(v) => ("<=", v),
                            _ => {
                                return Err(BackendError::InvalidQuery(format!(
                                    "`{c}` mixes equality and range filters"
                                )));
                            }
                        };
                        ranges.push((c.clone(), sym, key_value(c, t, v)?));
                    }
                    break;
                }
            }
        }
        let order_by = (query.reversed && !schema.clustering.is_empty()).then(|| {
            schema
                .clustering
                .iter()
                .map(|(c, o)| {
                    format!(
                        "{} {}",
                        q(c),
                        if *o == Order::Desc { "ASC" } else { "DESC" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        let local = match query.local_filter(schema) {
            None => None,
            Some(f) => match &f.op {
                FilterOp::Eq(v) => {
                    let t = column_type(schema, &f.column)?;
                    Some((format!("{} = ?", q(&f.column)), key_value(&f.column, t, v)?))
                }
                FilterOp::Prefix(p) => {
                    let head: String = p.chars().take(super::SEARCH_PREFIX_CHARS_MAX).collect();
                    Some((
                        format!("{} CONTAINS ?", q(&prefix_column(&f.column))),
                        CqlValue::Text(head),
                    ))
                }
                _ => {
                    return Err(BackendError::InvalidQuery(format!(
                        "local filter on `{}` must be an equality or a prefix",
                        f.column
                    )));
                }
            },
        };
        Ok(Plan::Key {
            partition,
            clustering_eq,
            clustering_in,
            local,
            ranges,
            order_by,
            reversed: query.reversed,
            partitions,
        })
    }
}

#[derive(Debug)]
struct PlanWithSteps {
    plan: Plan,
    steps: u64,
}

impl PlanWithSteps {
    fn cql(&self, table: &str, schema: &TableSchema) -> String {
        let mut cql = format!("SELECT {} FROM {table}", select_list(schema));
        match &self.plan {
            Plan::Scan => {}
            Plan::Index { column, .. } => cql.push_str(&format!(" WHERE {} = ?", q(column))),
            Plan::Key {
                clustering_eq,
                clustering_in,
                ranges,
                order_by,
                local,
                ..
            } => {
                let mut conds: Vec<String> = schema
                    .partition_key
                    .iter()
                    .map(|c| format!("{} = ?", q(c)))
                    .collect();
                conds.extend(clustering_eq.iter().map(|(c, _)| format!("{} = ?", q(c))));
                if let Some((c, _)) = clustering_in {
                    conds.push(format!("{} IN ?", q(c)));
                }
                conds.extend(ranges.iter().map(|(c, op, _)| format!("{} {op} ?", q(c))));
                if let Some((cond, _)) = local {
                    conds.push(cond.clone());
                }
                cql.push_str(" WHERE ");
                cql.push_str(&conds.join(" AND "));
                if let Some(o) = order_by {
                    cql.push_str(" ORDER BY ");
                    cql.push_str(o);
                }
            }
        }
        cql
    }

    /// The bound values of step `step` (< `self.steps`).
    fn values(&self, step: u64) -> BackendResult<Vec<Option<CqlValue>>> {
        match &self.plan {
            Plan::Scan => Ok(Vec::new()),
            Plan::Index { values, .. } => {
                let v = usize::try_from(step).ok().and_then(|i| values.get(i));
                Ok(vec![Some(v.cloned().ok_or_else(|| {
                    BackendError::InvalidPageToken("step out of range".into())
                })?)])
            }
            Plan::Key {
                partition,
                clustering_eq,
                clustering_in,
                ranges,
                reversed,
                partitions,
                local,
                ..
            } => {
                let chunks = clustering_in.as_ref().map_or(1, |(_, c)| c.len() as u64);
                let mut p = step / chunks;
                let chunk = (step % chunks) as usize;
                if p >= *partitions {
                    return Err(BackendError::InvalidPageToken("step out of range".into()));
                }
                if *reversed {
                    p = partitions - 1 - p;
                }
                // Mixed radix: the first partition-key column is the most significant digit.
                let mut digits = vec![0usize; partition.len()];
                for (i, vals) in partition.iter().enumerate().rev() {
                    let n = vals.len() as u64;
                    digits[i] = (p % n) as usize;
                    p /= n;
                }
                let mut out: Vec<Option<CqlValue>> = partition
                    .iter()
                    .zip(&digits)
                    .map(|(vals, &d)| Some(vals[d].clone()))
                    .collect();
                out.extend(clustering_eq.iter().map(|(_, v)| Some(v.clone())));
                if let Some((_, chunks)) = clustering_in {
                    out.push(Some(CqlValue::List(chunks[chunk].clone())));
                }
                out.extend(ranges.iter().map(|(_, _, v)| Some(v.clone())));
                if let Some((_, v)) = local {
                    out.push(Some(v.clone()));
                }
                Ok(out)
            }
        }
    }
}

/// Keeps the rows whose derived value starts with the whole prefix, when the prefix is longer than the stored ones.
fn long_prefix_filter(schema: &TableSchema, query: &Query, rows: Vec<Row>) -> Vec<Row> {
    let Some(FilterOp::Prefix(p)) = query.local_filter(schema).map(|f| &f.op) else {
        return rows;
    };
    if p.chars().count() <= super::SEARCH_PREFIX_CHARS_MAX {
        return rows;
    }
    let Some(column) = query
        .local_filter(schema)
        .map(|f| super::search_column(&f.column))
    else {
        return rows;
    };
    rows.into_iter()
        .filter(|r| matches!(r.get(&column), Some(Value::Text(t)) if t.starts_with(p.as_str())))
        .collect()
}

fn fingerprint(table: &str, cql: &str, plan: &PlanWithSteps) -> u64 {
    let described = format!("{plan:?}");
    fnv64(&[table.as_bytes(), cql.as_bytes(), described.as_bytes()])
}

/// A decoded page token.
struct Token {
    step: u64,
    state: PagingState,
    /// Direction of the query that made it.
    reversed: bool,
    /// Made by the keyset path (its paging state is empty; resume from `last`).
    keyset: bool,
    /// The step of the last returned row and that row's value of the free clustering column (if it has one).
    last: Option<(u64, Option<Value>)>,
}

fn encode_value(v: Option<&Value>, out: &mut Vec<u8>) {
    let mut b = Vec::new();
    match v {
        Some(Value::Text(t)) => {
            b.push(1);
            b.extend_from_slice(t.as_bytes());
        }
        Some(Value::Number(n)) => {
            b.push(2);
            b.extend_from_slice(&n.to_be_bytes());
        }
        Some(Value::Boolean(x)) => b.extend_from_slice(&[3, u8::from(*x)]),
        Some(Value::Uuid(u)) => {
            b.push(4);
            b.extend_from_slice(u.as_bytes());
        }
        _ => {}
    }
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(&b);
}

fn decode_value(b: &[u8]) -> Option<Option<Value>> {
    Some(match b.split_first() {
        None => None,
        Some((1, t)) => Some(Value::Text(String::from_utf8(t.to_vec()).ok()?)),
        Some((2, n)) => Some(Value::Number(i64::from_be_bytes(n.try_into().ok()?))),
        Some((3, [x])) => Some(Value::Boolean(*x != 0)),
        Some((4, u)) => Some(Value::Uuid(Uuid::from_slice(u).ok()?)),
        _ => return None,
    })
}

fn encode_token(
    fingerprint: u64,
    step: u64,
    state: &PagingState,
    reversed: bool,
    keyset: bool,
    last: Option<(u64, Option<&Value>)>,
) -> PageToken {
    let mut t = Vec::with_capacity(TOKEN_HEADER_BYTES + 64);
    t.push(TOKEN_VERSION);
    t.extend_from_slice(&fingerprint.to_be_bytes());
    t.extend_from_slice(&step.to_be_bytes());
    t.push(u8::from(reversed) | (u8::from(keyset) << 1) | (u8::from(last.is_some()) << 2));
    let (last_step, value) = last.unwrap_or((0, None));
    t.extend_from_slice(&last_step.to_be_bytes());
    encode_value(value, &mut t);
    if let Some(s) = state.as_bytes_slice() {
        t.extend_from_slice(s);
    }
    PageToken(t)
}

fn decode_token(token: &PageToken, fingerprint: u64, steps: u64) -> BackendResult<Token> {
    let bad = |m: &str| BackendError::InvalidPageToken(m.into());
    let b = token.0.as_slice();
    if b.len() < TOKEN_HEADER_BYTES || b[0] != TOKEN_VERSION {
        return Err(bad("not a token of the CQL backend"));
    }
    let u64_at = |i: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[i..i + 8]);
        u64::from_be_bytes(x)
    };
    if u64_at(1) != fingerprint {
        return Err(bad("the token belongs to another query"));
    }
    let step = u64_at(9);
    if step >= steps {
        return Err(bad("the token points past the end of the query"));
    }
    let flags = b[17];
    let last_step = u64_at(18);
    let vlen = u32::from_be_bytes([b[26], b[27], b[28], b[29]]) as usize;
    let rest = &b[TOKEN_HEADER_BYTES..];
    if rest.len() < vlen || flags > 7 || last_step >= steps {
        return Err(bad("not a token of the CQL backend"));
    }
    let value = decode_value(&rest[..vlen]).ok_or_else(|| bad("not a token of the CQL backend"))?;
    let state = &rest[vlen..];
    let state = if state.is_empty() {
        PagingState::start()
    } else {
        PagingState::new_from_raw_bytes(state)
    };
    Ok(Token {
        step,
        state,
        reversed: flags & 1 != 0,
        keyset: flags & 2 != 0,
        last: (flags & 4 != 0).then_some((last_step, value)),
    })
}

/// The clustering column a key query leaves free (the first one without an equality filter), when it is the last
/// clustering column: then "after the last returned row" is one bound on it. `Ok(None)`: no free column (at most one
/// row per step). Other queries cannot switch direction.
fn free_column(schema: &TableSchema, query: &Query, plan: &Plan) -> BackendResult<Option<String>> {
    let refuse = || {
        BackendError::InvalidPageToken(
            "on Cassandra, a page token can change direction only for key queries that leave at most the last \
             clustering column free and have no IN on a clustering column"
                .into(),
        )
    };
    let Plan::Key {
        clustering_in,
        local,
        ..
    } = plan
    else {
        return Err(refuse());
    };
    if clustering_in.is_some() || local.is_some() {
        return Err(refuse());
    }
    let free: Vec<&String> = schema
        .clustering
        .iter()
        .map(|(c, _)| c)
        .filter(|c| !query.filters_on(c).any(|op| matches!(op, FilterOp::Eq(_))))
        .collect();
    match free.as_slice() {
        [] => Ok(None),
        [c] if schema.clustering.last().is_some_and(|(l, _)| l == *c) => Ok(Some((*c).clone())),
        _ => Err(refuse()),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors.

fn db_error_is_unavailable(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Unavailable { .. }
            | DbError::Overloaded
            | DbError::IsBootstrapping
            | DbError::ReadTimeout { .. }
            | DbError::WriteTimeout { .. }
            | DbError::TruncateError
            | DbError::RateLimitReached { .. }
    )
}

fn attempt_err(e: &RequestAttemptError) -> BackendError {
    match e {
        RequestAttemptError::DbError(db, msg) if db_error_is_unavailable(db) => {
            BackendError::Unavailable(format!("{db}: {msg}"))
        }
        RequestAttemptError::DbError(db, msg) => BackendError::Database(format!("{db}: {msg}")),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => BackendError::Unavailable(e.to_string()),
        RequestAttemptError::SerializationError(_) => BackendError::InvalidQuery(e.to_string()),
        _ => BackendError::Database(e.to_string()),
    }
}

fn exec_err(e: ExecutionError) -> BackendError {
    match &e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => BackendError::Unavailable(e.to_string()),
        ExecutionError::LastAttemptError(a) => attempt_err(a),
        ExecutionError::PrepareError(p) => prepare_err(p.clone()),
        ExecutionError::BadQuery(_) => BackendError::InvalidQuery(e.to_string()),
        _ => BackendError::Database(e.to_string()),
    }
}

fn prepare_err(e: PrepareError) -> BackendError {
    match &e {
        PrepareError::ConnectionPoolError(_) => BackendError::Unavailable(e.to_string()),
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_err(first_attempt),
        _ => BackendError::Database(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_maps_are_parsed_strictly() {
        let m = parse_replication("{'class': 'SimpleStrategy', 'replication_factor': 1}").unwrap();
        assert_eq!(m.get("class").map(String::as_str), Some("SimpleStrategy"));
        assert_eq!(
            render_replication(&m),
            "{'class': 'SimpleStrategy', 'replication_factor': '1'}"
        );
        let nts =
            parse_replication("{ 'class' : 'NetworkTopologyStrategy', 'dc-1': 3, 'eu.west': '2' }")
                .unwrap();
        assert_eq!(nts.len(), 3);
        for bad in [
            "",
            "{}",
            "{'replication_factor': 1}",
            "{'class': 'SimpleStrategy'} AND durable_writes = false",
            "{'class': 'Simple'Strategy'}",
            "{'class': 'SimpleStrategy', 'x': 'a b'}",
            "{'class': 'SimpleStrategy', 'class': 'SimpleStrategy'}",
            "{'class': SimpleStrategy}",
        ] {
            assert!(parse_replication(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn consistency_names() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(parse_consistency(" ONE ").unwrap(), Consistency::One);
        assert!(parse_consistency("most").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(q("userId"), "\"userId\"");
        assert_eq!(q("a\"b"), "\"a\"\"b\"");
        assert!(is_identifier("users_2"));
        assert!(!is_identifier("2users"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier(&"a".repeat(49)));
    }

    #[test]
    fn index_names_are_short_and_distinct() {
        let long = "t".repeat(48);
        let a = index_name(&long, "column_with_a_long_name");
        assert!(a.len() <= NAME_BYTES_MAX);
        assert!(is_identifier(&a));
        assert_ne!(index_name("a_b", "c"), index_name("a", "b_c"));
    }

    #[test]
    fn server_order_of_timeuuids_follows_the_timestamp() {
        let node = [1, 2, 3, 4, 5, 6];
        let early = Uuid::new_v1(uuid::Timestamp::from_gregorian_time(1_000, 7), &node);
        let late = Uuid::new_v1(
            uuid::Timestamp::from_gregorian_time(1_000_000_000, 0),
            &node,
        );
        // The low time bits make `late` smaller in byte order, but the timestamp decides.
        assert_eq!(
            server_cmp(
                ColumnType::TimeUuid,
                &Value::Uuid(early),
                &Value::Uuid(late)
            ),
            Ordering::Less
        );
        assert_eq!(
            server_cmp(
                ColumnType::TimeUuid,
                &Value::Uuid(late),
                &Value::Uuid(early)
            ),
            Ordering::Greater
        );
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(u128::MAX >> 1));
        assert_eq!(
            server_cmp(ColumnType::Uuid, &Value::Uuid(a), &Value::Uuid(b)),
            Ordering::Less
        );
    }

    fn schema() -> TableSchema {
        let col = |n: &str, t| ColumnDef {
            name: n.into(),
            column_type: t,
        };
        TableSchema {
            name: "events".into(),
            columns: vec![
                col("room", ColumnType::Text),
                col("at", ColumnType::Number),
                col("body", ColumnType::Text),
            ],
            partition_key: vec!["room".into()],
            clustering: vec![("at".into(), Order::Desc)],
            indexes: vec![],
            local_indexes: vec![],
            search: vec![],
        }
    }

    #[test]
    fn create_table_has_keys_and_clustering_order() {
        let cql = create_table_cql("\"ks\".\"events\"", &schema());
        assert_eq!(
            cql,
            "CREATE TABLE IF NOT EXISTS \"ks\".\"events\" (\"room\" text, \"at\" bigint, \"body\" text, \
             PRIMARY KEY ((\"room\"), \"at\")) WITH CLUSTERING ORDER BY (\"at\" DESC)"
        );
    }

    fn stored(name: &str, kind: &str, position: i32, order: &str, typ: &str) -> StoredColumn {
        StoredColumn {
            name: name.into(),
            kind: kind.into(),
            position,
            clustering_order: order.into(),
            typ: typ.into(),
        }
    }

    #[test]
    fn schema_comparison_adds_columns_and_refuses_changes() {
        let s = schema();
        let base = vec![
            stored("room", "partition_key", 0, "none", "text"),
            stored("at", "clustering", 0, "desc", "bigint"),
        ];
        let missing = compare_schema(&s, &base).unwrap();
        assert_eq!(
            missing.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["body"]
        );

        let mut wrong_type = base.clone();
        wrong_type.push(stored("body", "regular", -1, "none", "blob"));
        assert!(matches!(
            compare_schema(&s, &wrong_type),
            Err(BackendError::Schema(_))
        ));

        let wrong_order = vec![
            stored("room", "partition_key", 0, "none", "text"),
            stored("at", "clustering", 0, "asc", "bigint"),
        ];
        assert!(matches!(
            compare_schema(&s, &wrong_order),
            Err(BackendError::Schema(_))
        ));

        let key_type = vec![
            stored("room", "partition_key", 0, "none", "uuid"),
            stored("at", "clustering", 0, "desc", "bigint"),
        ];
        match compare_schema(&s, &key_type) {
            Err(BackendError::Schema(m)) => {
                assert!(m.contains("primary key") && m.contains("room uuid"), "{m}")
            }
            other => panic!("expected a schema error, got {other:?}"),
        }

        let wrong_key = vec![stored("at", "partition_key", 0, "none", "bigint")];
        assert!(matches!(
            compare_schema(&s, &wrong_key),
            Err(BackendError::Schema(_))
        ));
    }

    #[test]
    fn key_plans_visit_partitions_and_chunks_in_order() {
        let s = schema();
        let query = Query {
            filters: vec![
                super::super::Filter {
                    column: "room".into(),
                    op: FilterOp::In(vec![
                        Value::Text("b".into()),
                        Value::Text("a".into()),
                        Value::Text("b".into()),
                    ]),
                },
                super::super::Filter {
                    column: "at".into(),
                    op: FilterOp::In((0..5).map(Value::Number).collect()),
                },
            ],
            reversed: false,
            limit: 10,
            page_token: None,
        };
        let plan = Plan::build(&s, &query, 2).unwrap();
        // 2 partitions x 3 chunks.
        assert_eq!(plan.steps, 6);
        let cql = plan.cql("t", &s);
        assert_eq!(
            cql,
            "SELECT \"room\", \"at\", \"body\" FROM t WHERE \"room\" = ? AND \"at\" IN ?"
        );
        let first = plan.values(0).unwrap();
        assert_eq!(first[0], Some(CqlValue::Text("a".into())));
        // `at` is DESC: the first chunk holds the largest values.
        assert_eq!(
            first[1],
            Some(CqlValue::List(vec![
                CqlValue::BigInt(4),
                CqlValue::BigInt(3)
            ]))
        );
        let last = plan.values(5).unwrap();
        assert_eq!(last[0], Some(CqlValue::Text("b".into())));
        assert_eq!(last[1], Some(CqlValue::List(vec![CqlValue::BigInt(0)])));

        let reversed = Query {
            reversed: true,
            ..query
        };
        let plan = Plan::build(&s, &reversed, 2).unwrap();
        assert!(plan.cql("t", &s).ends_with("ORDER BY \"at\" ASC"));
        let first = plan.values(0).unwrap();
        assert_eq!(first[0], Some(CqlValue::Text("b".into())));
        assert_eq!(
            first[1],
            Some(CqlValue::List(vec![
                CqlValue::BigInt(0),
                CqlValue::BigInt(1)
            ]))
        );
    }

    #[test]
    fn tokens_are_checked() {
        let v = Value::Text("last".into());
        let t = encode_token(
            7,
            3,
            &PagingState::new_from_raw_bytes(vec![1u8, 2, 3]),
            true,
            false,
            Some((2, Some(&v))),
        );
        let tok = decode_token(&t, 7, 4).unwrap();
        assert_eq!((tok.step, tok.reversed, tok.keyset), (3, true, false));
        assert_eq!(tok.last, Some((2, Some(v))));
        assert_eq!(
            tok.state.as_bytes_slice().map(|s| s.to_vec()),
            Some(vec![1, 2, 3])
        );
        assert!(matches!(
            decode_token(&t, 8, 4),
            Err(BackendError::InvalidPageToken(_))
        ));
        assert!(matches!(
            decode_token(&t, 7, 3),
            Err(BackendError::InvalidPageToken(_))
        ));
        assert!(matches!(
            decode_token(&PageToken(vec![1, 2]), 7, 4),
            Err(BackendError::InvalidPageToken(_))
        ));
        let fresh = encode_token(7, 0, &PagingState::start(), false, true, None);
        let tok = decode_token(&fresh, 7, 1).unwrap();
        assert_eq!((tok.step, tok.keyset, tok.last), (0, true, None));
        assert!(tok.state.as_bytes_slice().is_none());
    }
}
