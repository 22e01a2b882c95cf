//! The storage backends of the ORM and the one trait they all implement.
//!
//! A backend stores rows of one table per entity. It knows nothing about entity structs, serde or encryption: the
//! repository layer (`orm::repository`) maps entities to [`Row`]s, encrypts encrypted columns into [`Value::Blob`]s,
//! validates every query against the [`TableSchema`] and only then calls the backend. So a backend may assume that the
//! queries it receives have one of the three shapes described under [`Query`]; it must still never panic on anything.
//!
//! **Architecture Invariant:** only this module and its children import `mongodb`, `scylla` or `redb`.
//!
//! Backends run on the IO shard (`orm::io_shard`): one dedicated thread with a current-thread tokio runtime. Their
//! futures are spawned on that runtime, so they must be `Send` and may use tokio; they must not block the thread for
//! long (the embedded backend runs its blocking file work through `tokio::task::spawn_blocking`).
//!
//! # Types
//! | column type ([`ColumnType`]) | value ([`Value`]) | order used for clustering columns |
//! |---|---|---|
//! | `Text`     | `Text(String)`   | bytewise on UTF-8 (no collation) |
//! | `Json`     | `Text(String)` holding a JSON document | not allowed as a key |
//! | `Number`   | `Number(i64)`    | signed integer order |
//! | `Boolean`  | `Boolean(bool)`  | `false < true` |
//! | `Uuid`     | `Uuid(Uuid)`     | unsigned byte order of the 16 bytes |
//! | `TimeUuid` | `Uuid(Uuid)` (a v1 UUID) | by embedded timestamp, then unsigned byte order (CQL `timeuuid` order) |
//! | `Counter`  | `Number(i64)`    | not allowed as a key |
//! | `Blob`     | `Blob(Vec<u8>)`  | not allowed as a clustering column (partition key and index: equality only) |
//!
//! Encrypted columns reach the backend as `Blob` columns (deterministic ones can be partition keys or indexed). `Value::Null` means "no value"; key columns are never null.
//!
//! # Semantics every backend implements identically
//! See [`Query`] (shapes, order, ranges, IN), [`PageToken`] (pagination), [`Backend::upsert`] (partial writes),
//! [`Backend::increment`] (counters) and [`Backend::ensure_schema`] (creation and additive extension).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

pub mod cql;
pub mod embedded;
pub mod mongo;

pub use uuid::Uuid;

/// A boxed, `Send` future: what every [`Backend`] method returns (keeps the trait usable as `dyn Backend`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The type of a column as the backend stores it. Encrypted entity columns are stored as [`ColumnType::Blob`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColumnType {
    /// UTF-8 text (CQL `text`).
    Text,
    /// A JSON document serialized as text (CQL `text`). Never a key.
    Json,
    /// A 64-bit signed integer (CQL `bigint`).
    Number,
    /// CQL `boolean`.
    Boolean,
    /// Any UUID, usually v4 (CQL `uuid`).
    Uuid,
    /// A version-1 time UUID (CQL `timeuuid`), ordered by its timestamp.
    TimeUuid,
    /// A 64-bit counter (CQL `counter`), changed only by [`Backend::increment`]. A table with a counter column has only
    /// counter columns besides its primary key (the CQL rule, enforced for every backend).
    Counter,
    /// Bytes (CQL `blob`).
    Blob,
}

impl ColumnType {
    /// The lowercase name used in messages and schema metadata.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Json => "json",
            ColumnType::Number => "number",
            ColumnType::Boolean => "boolean",
            ColumnType::Uuid => "uuid",
            ColumnType::TimeUuid => "timeuuid",
            ColumnType::Counter => "counter",
            ColumnType::Blob => "blob",
        }
    }

    /// Whether a column of this type may be part of the partition key or carry a secondary index.
    pub fn is_key_type(self) -> bool {
        !matches!(self, ColumnType::Json | ColumnType::Counter)
    }

    /// Whether a column of this type may be a clustering column (it has a range order shared by all backends).
    pub fn is_clustering_type(self) -> bool {
        self.is_key_type() && self != ColumnType::Blob
    }

    /// Whether `value` is a valid value of this type (`Null` always is, for non-key columns).
    pub fn accepts(self, value: &Value) -> bool {
        matches!(
            (self, value),
            (_, Value::Null)
                | (ColumnType::Text | ColumnType::Json, Value::Text(_))
                | (ColumnType::Number | ColumnType::Counter, Value::Number(_))
                | (ColumnType::Boolean, Value::Boolean(_))
                | (ColumnType::Uuid | ColumnType::TimeUuid, Value::Uuid(_))
                | (ColumnType::Blob, Value::Blob(_))
        )
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column value. Which variant a column holds is fixed by its [`ColumnType`] (table in the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// No value (an unset column). Never used for key columns.
    Null,
    /// `Text` and `Json` columns.
    Text(String),
    /// `Number` and `Counter` columns.
    Number(i64),
    /// `Boolean` columns.
    Boolean(bool),
    /// `Uuid` and `TimeUuid` columns.
    Uuid(Uuid),
    /// `Blob` columns, and every encrypted column.
    Blob(Vec<u8>),
}

impl Value {
    /// Compares two values of the same column type in the order defined for clustering columns (module docs).
    /// Values of different variants compare by variant (never happens for validated queries).
    pub fn cmp_as(&self, other: &Value, column_type: ColumnType) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        match (self, other) {
            (Value::Uuid(a), Value::Uuid(b)) if column_type == ColumnType::TimeUuid => {
                timeuuid_sort_key(a).cmp(&timeuuid_sort_key(b))
            }
            (Value::Text(a), Value::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Number(a), Value::Number(b)) => a.cmp(b),
            (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
            (Value::Uuid(a), Value::Uuid(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Value::Blob(a), Value::Blob(b)) => a.cmp(b),
            (Value::Null, Value::Null) => Ordering::Equal,
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Text(_) => 1,
            Value::Number(_) => 2,
            Value::Boolean(_) => 3,
            Value::Uuid(_) => 4,
            Value::Blob(_) => 5,
        }
    }
}

/// The bytes whose unsigned order is the order of `TimeUuid` values: the 60-bit timestamp big-endian (8 bytes), then the
/// 16 bytes of the UUID as a tie-breaker. Non-v1 UUIDs get timestamp 0.
pub fn timeuuid_sort_key(u: &Uuid) -> [u8; 24] {
    let b = u.as_bytes();
    let mut out = [0u8; 24];
    if u.get_version_num() == 1 {
        let time_low = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let time_mid = u16::from_be_bytes([b[4], b[5]]) as u64;
        let time_hi = (u16::from_be_bytes([b[6], b[7]]) & 0x0fff) as u64;
        let ts = (time_hi << 48) | (time_mid << 32) | time_low;
        out[..8].copy_from_slice(&ts.to_be_bytes());
    }
    out[8..].copy_from_slice(b);
    out
}

/// One row: column name -> value. Columns absent from the map are "not given" (see [`Backend::upsert`]); rows returned by
/// a backend contain every column of the schema that has a value (columns without a value may be absent or `Null`).
pub type Row = BTreeMap<String, Value>;

/// Sort order of a clustering column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Ascending (the default).
    Asc,
    /// Descending: rows of a partition come largest first.
    Desc,
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnDef {
    /// Column name: ASCII letters, digits and `_`, starting with a letter, at most 48 bytes (validated by the ORM).
    pub name: String,
    /// Storage type.
    pub column_type: ColumnType,
}

/// The physical schema of one table (one entity). Built and validated by the ORM's entity schema builder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    /// Table (Mongo: collection) name; same rules as column names.
    pub name: String,
    /// Every column, key columns included, in declaration order.
    pub columns: Vec<ColumnDef>,
    /// Partition key column names (one or more).
    pub partition_key: Vec<String>,
    /// Clustering columns with their order (zero or more). Primary key = partition key + clustering columns.
    pub clustering: Vec<(String, Order)>,
    /// Columns with a secondary (global) index: never partition-key columns, never `Json`/`Counter` columns.
    pub indexes: Vec<String>,
    /// Columns with a composite local index `(partition key..., column)`: never key columns, never `Json`/`Counter`.
    /// They answer key queries with one `Eq` filter on the column (see [`Query`]).
    #[serde(default)]
    pub local_indexes: Vec<String>,
    /// Text columns with prefix search. Each has a derived column [`search_column`] in [`TableSchema::columns`] (type
    /// `Text`, written by the ORM with the lowercase value) that the backends index within the partition.
    #[serde(default)]
    pub search: Vec<String>,
}

/// The derived column holding the lowercase value of search column `column` (written by the ORM, never by users).
pub fn search_column(column: &str) -> String {
    format!("{column}__lc")
}

/// Prefixes longer than this many characters are matched on their first `SEARCH_PREFIX_CHARS_MAX` characters by the
/// index, then checked in full on the rows read (the CQL backend stores one index entry per prefix length).
pub const SEARCH_PREFIX_CHARS_MAX: usize = 24;

/// Longest TTL of a write, in seconds (Cassandra's maximum, 20 years).
pub const TTL_SECONDS_MAX: u32 = 630_720_000;

/// Milliseconds since the Unix epoch, by the system clock (the expiry clock of the embedded and MongoDB backends).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl TableSchema {
    /// The definition of column `name`.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The type of column `name`.
    pub fn column_type(&self, name: &str) -> Option<ColumnType> {
        self.column(name).map(|c| c.column_type)
    }

    /// Primary key column names: partition key, then clustering columns.
    pub fn primary_key(&self) -> impl Iterator<Item = &str> {
        self.partition_key
            .iter()
            .map(String::as_str)
            .chain(self.clustering.iter().map(|(c, _)| c.as_str()))
    }

    /// Whether `name` is a partition-key or clustering column.
    pub fn is_key(&self, name: &str) -> bool {
        self.primary_key().any(|k| k == name)
    }

    /// Whether this is a counter table (it has counter columns).
    pub fn is_counter_table(&self) -> bool {
        self.columns
            .iter()
            .any(|c| c.column_type == ColumnType::Counter)
    }
}

/// A comparison in a [`Filter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterOp {
    /// `column = value`.
    Eq(Value),
    /// `column IN (values)`: any number of values (1 or more; duplicates are ignored). Backends must handle lists of any
    /// length (chunk them if the database has a limit); rows are still returned once each.
    In(Vec<Value>),
    /// `column < value` (clustering columns only).
    Lt(Value),
    /// `column <= value` (clustering columns only).
    Le(Value),
    /// `column > value` (clustering columns only).
    Gt(Value),
    /// `column >= value` (clustering columns only).
    Ge(Value),
    /// The lowercase value of search column `column` starts with this (already lowercase, non-empty) text. Only in a key
    /// query, see [`Query`].
    Prefix(String),
}

/// One restriction of a [`Query`]; a query's filters are a conjunction (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Column name.
    pub column: String,
    /// Comparison.
    pub op: FilterOp,
}

/// The shape of a validated [`Query`] (computed by [`Query::shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryShape {
    /// Every partition-key column restricted (Eq or In); clustering columns optionally restricted.
    Key,
    /// Exactly one filter, Eq or In, on an indexed column; nothing else.
    Index,
    /// No filters: every row of the table.
    Scan,
}

/// A query, already validated by the ORM. It has exactly one of these shapes:
///
/// 1. **Key query** ([`QueryShape::Key`]): every partition-key column has exactly one `Eq` or `In` filter. Clustering
///    columns may be restricted as a prefix in declaration order: `Eq` filters on the first k clustering columns, then
///    optionally, on clustering column k+1 only, either one `In` filter or range filters (at most one of `Gt`/`Ge` and at
///    most one of `Lt`/`Le`). Nothing else. Range bounds compare in the column's order (module docs) regardless of
///    `Order::Desc` (a `Desc` column only changes the order rows come back in).
/// 2. **Index query** ([`QueryShape::Index`]): exactly one filter, `Eq` or `In`, on a column listed in
///    [`TableSchema::indexes`]; `reversed` is false.
/// 3. **Scan** ([`QueryShape::Scan`]): no filters; `reversed` is false.
/// 4. **Local query** (a key query, [`QueryShape::Key`], with [`Query::local_filter`] `Some`): every partition-key column
///    restricted as in a key query, no clustering filter, `reversed` false, and exactly one more filter: `Eq` on a column
///    of [`TableSchema::local_indexes`], or `Prefix` on a column of [`TableSchema::search`]. Within a partition, rows of an
///    `Eq` local query come in clustering order; rows of a `Prefix` query in an order chosen by the backend (embedded and
///    MongoDB: by lowercase value, then clustering order; CQL: clustering order), stable as for the other shapes.
///
/// **Order of results.** Rows come grouped by partition. Within a partition rows are in clustering order (each column in
/// its declared `Asc`/`Desc` order, lexicographically by column), or exactly the reverse when `reversed` is true. The
/// order *between* partitions (several partitions via `In`, index queries, scans) is chosen by the backend, but is the
/// same for repeated executions of the same query on unchanged data, so that page tokens work.
///
/// **Pagination.** A call returns at most `limit` rows (`limit >= 1`; the ORM caps it at its configured page maximum).
/// A page may hold fewer than `limit` rows, even zero, while [`Page::next`] is `Some`; `next == None` means the query is
/// exhausted. Passing `next` back as `page_token` with the same filters and `reversed` continues right after the last
/// returned row: following tokens until `None` returns every matching row exactly once, provided the table is not
/// written meanwhile (rows written during the iteration may or may not be returned, but no other row is lost or
/// repeated). Passing it with the same filters and the opposite `reversed` continues from the same row the other way
/// (the rows before it, in the new order); a backend that cannot do that for a query shape refuses the token with
/// [`BackendError::InvalidPageToken`] (CQL: more than one free clustering column, or a clustering `In`; MongoDB: an
/// `In` split in chunks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query {
    /// Conjunction of restrictions.
    pub filters: Vec<Filter>,
    /// Return the rows in the reverse of the order described above (key queries only).
    pub reversed: bool,
    /// Maximum number of rows in this page (>= 1).
    pub limit: u32,
    /// Continue after the previous page (from [`Page::next`] of the same query), or start at the beginning.
    pub page_token: Option<PageToken>,
}

impl Query {
    /// The shape of this query against `schema` (assumes it was validated by the ORM).
    pub fn shape(&self, schema: &TableSchema) -> QueryShape {
        if self.filters.is_empty() {
            QueryShape::Scan
        } else if self
            .filters
            .iter()
            .any(|f| schema.partition_key.contains(&f.column))
        {
            QueryShape::Key
        } else {
            QueryShape::Index
        }
    }

    /// The filter of a local query (on a local-index or search column), if this is one.
    pub fn local_filter<'a>(&'a self, schema: &TableSchema) -> Option<&'a Filter> {
        if self.shape(schema) != QueryShape::Key {
            return None;
        }
        self.filters.iter().find(|f| !schema.is_key(&f.column))
    }

    /// The filters on column `name`.
    pub fn filters_on<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a FilterOp> + 'a {
        self.filters
            .iter()
            .filter(move |f| f.column == name)
            .map(|f| &f.op)
    }
}

/// An opaque continuation token: bytes chosen by the backend that produced it (the embedded and Mongo backends store the
/// encoded key of the last returned row; the CQL backend stores the driver's paging state, plus its position in a chunked
/// `In` list, and the last returned row's step and free clustering value). The ORM hands it to users as URL-safe base64
/// without interpreting it. A token is only valid for the same table and filters (in either direction, see [`Query`]);
/// a malformed token gives [`BackendError::InvalidPageToken`], never a panic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PageToken(pub Vec<u8>);

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// The rows of this page, in the order defined by [`Query`].
    pub rows: Vec<Row>,
    /// Token for the next page; `None` when there are no more rows.
    pub next: Option<PageToken>,
}

/// Errors of a backend (and of the IO shard, which reports its own failures with the same type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The database cannot be reached right now (connection refused or lost, server selection or request timeout, IO
    /// queue full, IO shard stopped). Retrying later may succeed; nothing was written unless the database did it anyway.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The stored schema is incompatible with the declared one (changed key, changed column type, ...). Says what differs.
    #[error("incompatible schema: {0}")]
    Schema(String),
    /// The query or row does not fit the schema (the ORM validates first, so this means a bug or a stale schema).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The page token is malformed or does not belong to this query.
    #[error("invalid page token: {0}")]
    InvalidPageToken(String),
    /// A stored value cannot be decoded into its column type.
    #[error("corrupt stored data: {0}")]
    Data(String),
    /// The database rejected the operation (write error, server error). The message is the database's.
    #[error("database error: {0}")]
    Database(String),
}

/// Result type of backend operations.
pub type BackendResult<T> = Result<T, BackendError>;

/// A storage backend. Implementations are shared by the IO shard's tasks (`&self`, `Send + Sync`) and must support
/// concurrent calls. All methods take the validated [`TableSchema`] of the table they touch.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages and benches: `"embedded"`, `"mongo"`, `"cql"`.
    fn name(&self) -> &'static str;

    /// Creates the table (and its indexes) if absent. If present: the primary key (partition columns, clustering columns,
    /// their types and orders) must be identical, else [`BackendError::Schema`]; a column whose stored type differs is a
    /// [`BackendError::Schema`] error too; columns in `schema` that the table lacks are added (existing rows read them as
    /// absent); indexes in `schema` that are missing are created. Stored columns no longer declared are left alone.
    /// Idempotent; called at repository start-up.
    fn ensure_schema<'a>(&'a self, schema: &'a TableSchema) -> BoxFuture<'a, BackendResult<()>>;

    /// Reads one row by its full primary key (`key` holds exactly the primary-key columns). `None` if absent.
    fn get<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Row>>>;

    /// Runs a validated query (see [`Query`] for shapes, order and pagination).
    fn query<'a>(
        &'a self,
        schema: &'a TableSchema,
        query: &'a Query,
    ) -> BoxFuture<'a, BackendResult<Page>>;

    /// Inserts or updates one row. `row` holds every primary-key column and any subset of the other columns: given columns
    /// are written (`Value::Null` clears a column), columns not given keep their stored value. Never called on counter
    /// tables. Durable when it returns `Ok` (to the database's configured durability/consistency).
    fn upsert<'a>(&'a self, schema: &'a TableSchema, row: Row) -> BoxFuture<'a, BackendResult<()>>;

    /// Upserts several rows of one table, each with the semantics of [`Backend::upsert`]. Not atomic: on error, some
    /// rows may have been written. The default calls `upsert` row by row; backends override it to batch (the embedded
    /// store writes them in one transaction).
    fn upsert_all<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            for row in rows {
                self.upsert(schema, row).await?;
            }
            Ok(())
        })
    }

    /// Creates one row only if no row has its primary key: atomic against concurrent `insert`s of the same key (embedded:
    /// one write transaction; MongoDB: the unique primary-key index, a duplicate-key error E11000 means taken; CQL: a
    /// lightweight transaction `INSERT ... IF NOT EXISTS`). `row` holds every primary-key column and any subset of the
    /// others (`Value::Null` columns are left out). `Ok(true)` if this call created the row, `Ok(false)` if the key was
    /// taken (nothing written). Never called on counter tables. Backends that cannot do it atomically keep this
    /// default, which refuses.
    fn insert<'a>(
        &'a self,
        schema: &'a TableSchema,
        row: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        let _ = (schema, row);
        Box::pin(async move {
            Err(BackendError::InvalidQuery(format!(
                "backend `{}` has no atomic insert-if-absent",
                self.name()
            )))
        })
    }

    /// Deletes one row by its full primary key; deleting an absent row is `Ok`.
    fn delete<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// Adds `delta` (may be negative) to counter column `column` of the row with primary key `key`, creating the row
    /// with all counters at 0 first if absent. Counter columns never incremented read as 0 once the row exists (backends
    /// may return them as absent; the ORM maps absent counters to 0).
    fn increment<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        column: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// Upserts `rows` like [`Backend::upsert_all`] and sets their expiry: with `Some(ttl)` each row expires `ttl`
    /// seconds from now (1..=[`TTL_SECONDS_MAX`]); with `None` it never expires (an earlier expiry is removed). An
    /// expired row is never returned by `get` or `query`, and is removed later. The ORM's `save` calls this, never
    /// `upsert_all` directly. The default supports only `None` (for test wrappers).
    fn upsert_ttl<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
        ttl_seconds: Option<u32>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        match ttl_seconds {
            None => self.upsert_all(schema, rows),
            Some(_) => Box::pin(async move {
                Err(BackendError::InvalidQuery(format!(
                    "the {} backend does not support TTL",
                    self.name()
                )))
            }),
        }
    }

    /// Writes only `columns` (non-key columns; `Value::Null` clears one) of the row with primary key `key`, if the row
    /// exists and has not expired; returns whether it did. Columns not named keep their value, and the row keeps its
    /// expiry. The default refuses (for test wrappers).
    fn patch<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        columns: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        let _ = (schema, key, columns);
        Box::pin(async move {
            Err(BackendError::InvalidQuery(format!(
                "the {} backend does not support patch",
                self.name()
            )))
        })
    }

    /// The row with primary key `key` exactly as the database stores it, as bytes (embedded: the encoded record; Mongo:
    /// the BSON document; CQL: every cell's serialized bytes concatenated), or `None` if absent. Used by the tests that
    /// check encrypted columns are not stored in clear; not on any hot path.
    fn raw_row<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Vec<u8>>>>;

    /// Group commit, owner side: the IO shard calls this once at start. A backend that queues its writes for a group
    /// commit (the embedded store) returns `true`, calls `wake` whenever it queues a write, and from then on commits only
    /// when the owner calls [`Backend::commit_pending`]. The default (drivers that commit by themselves) returns `false`.
    fn attach_group_commit(&self, wake: std::sync::Arc<dyn Fn() + Send + Sync>) -> bool {
        let _ = wake;
        false
    }

    /// Group commit: applies every queued write in one durable transaction, answers them, and returns how many there
    /// were (0 when nothing was queued). Called by the owner thread after [`Backend::attach_group_commit`].
    fn commit_pending(&self) -> usize {
        0
    }
}
