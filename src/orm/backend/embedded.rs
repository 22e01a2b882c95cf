//! The embedded backend: one redb database file, no server.
//!
//! # Layout in the file
//! - Table `__shardcast_schema`: table name -> the stored [`TableSchema`] as JSON (checked and extended by
//!   [`Backend::ensure_schema`]).
//! - Table `t:<name>`: encoded primary key -> encoded row (every column with a value, keys included).
//! - Table `i:<name>:<column>` per secondary index: encoded column value ++ encoded primary key -> empty.
//! - Table `l:<name>:<column>` per local index and per search column (its derived lowercase column): encoded partition
//!   key ++ encoded column value ++ encoded primary key -> empty. An equality lookup is a prefix scan of
//!   `partition ++ value` (rows come in clustering order); a prefix search is a prefix scan of `partition ++ escaped
//!   prefix bytes` (the text encoding without its terminator is a byte prefix of every longer text).
//! - Table `x:<name>`: expiry (ms since the epoch, big-endian) ++ encoded primary key -> empty, for rows with a TTL.
//!   The row itself holds its expiry under the reserved name `_expires_ms`; reads skip a row whose expiry has passed,
//!   and a background thread deletes expired rows, at most [`SWEEP_ROWS_MAX`] per [`SWEEP_INTERVAL`].
//!
//! # Key encoding
//! A primary key is the concatenation of the encoded partition-key columns (ascending) and the encoded clustering
//! columns; a `Desc` clustering column has every byte of its encoding inverted. Each column encoding is prefix-free
//! (fixed width, or escaped and terminated), so the unsigned byte order of encoded keys is exactly the documented row
//! order, and inverting a component reverses it. Encodings: text/blob: bytes with `00` escaped as `00 FF`, then `00 01`;
//! number: big-endian with the sign bit flipped; boolean: one byte; uuid: 16 bytes; timeuuid: the 24-byte
//! [`timeuuid_sort_key`].
//!
//! # Durability: group commit through a write-ahead log
//! Every acknowledged write is durable: before its future completes, what it wrote is in a synced record of the
//! write-ahead log ([`wal`], the file `<database>.wal`), so it survives a crash (`kill -9`, power loss). Writes are not
//! committed one by one: each write is queued as a job, and [`Backend::commit_pending`] applies every queued job in
//! one redb write transaction, appends the group's effects (the row-level puts and deletes of every table it touched,
//! index and expiry tables included) to the log as one record, syncs it (one `pwrite` + one `fdatasync`), commits the
//! transaction with `Durability::None` (visible to every later read, not synced), then answers all of them. Writes
//! queued while a commit runs wait for the next one, so under load one sync serves many writes, and a lone write still
//! gets its own sync at once.
//!
//! **Checkpoints.** A redb commit with `Durability::Immediate` makes every earlier non-durable commit durable. The log
//! has a fixed capacity (`wal_bytes`, default [`wal::WAL_BYTES_DEFAULT`]); the group that does not fit in the rest of
//! it is committed that way instead of being logged, and the same commit stores the next epoch of the log (table
//! `__shardcast_wal`), after which the log restarts at offset 0. The other durable commits (schema changes, the
//! expiry sweep, shutdown) are checkpoints too. A crash anywhere leaves either the old epoch (the last durable redb
//! state plus that epoch's records in the log) or the new one (everything in redb): nothing acknowledged is lost.
//!
//! **Open.** The log's records of the stored epoch are read from offset 0 until the first one that is torn, zeroed,
//! from another epoch (an earlier lap's stale block) or out of sequence; they are applied again (puts and deletes of
//! whole rows: replaying twice gives the same store as once) and a checkpoint starts a new epoch before the store
//! serves.
//!
//! Who calls `commit_pending`: inside the IO shard, its thread does, each time every ready request has run
//! ([`Backend::attach_group_commit`]); redb and the log then run on the IO shard's own thread, with no thread pool in
//! the path. Used on its own (tests, benches), a write commits the queue itself when it is first polled (the classic
//! leader/follower group commit: whoever holds the commit lock commits everybody's queued jobs).
//!
//! A job that fails (bad key, corrupt row) must not leave half its writes in the shared transaction: the transaction is
//! aborted, the jobs that succeeded before it are applied again in a fresh transaction and committed, and the failed job
//! alone gets its error; nothing of it is logged. Jobs are therefore `FnMut` (re-runnable); each job is applied at most
//! twice.
//!
//! There is no lossy mode any more: `orm.embedded_sync_interval_ms` is accepted for compatibility and ignored.
//!
//! # Page tokens
//! `[1, reversed as u8, last returned key...]`: the next page starts strictly after (before, when reversed) that key,
//! in the data table (key and scan queries) or the index table (index and local queries). A token is a position, so
//! it is also valid for the same query in the other direction: a reversed query given a token of a forward page
//! continues with the rows before that position (the `reversed` byte only records where the token came from).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableError,
};

mod commit;
pub mod wal;

use commit::{Job, Outcome, Tx, WriteJob};
use wal::Wal;

use super::{
    Backend, BackendError, BackendResult, BoxFuture, ColumnType, FilterOp, Order, Page, PageToken,
    Query, QueryShape, Row, TableSchema, Value, timeuuid_sort_key,
};

const SCHEMA_TABLE: TableDefinition<'static, &str, &str> =
    TableDefinition::new("__shardcast_schema");
const TOKEN_VERSION: u8 = 1;
/// Reserved row field holding the expiry of a row with a TTL (ms since the Unix epoch).
const EXPIRES_FIELD: &str = "_expires_ms";
/// Most expired rows one background sweep deletes (its bounded cost: one write transaction of that size).
pub const SWEEP_ROWS_MAX: usize = 1000;
/// Time between two background sweeps of expired rows.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

type Bytes = Vec<u8>;

/// The group-commit queue (see "Durability" in the module docs).
struct GroupCommit {
    db: Arc<Database>,
    pending: Mutex<Vec<Box<dyn WriteJob>>>,
    /// Held while a transaction is being applied and made durable: one committer at a time, and the owner of the log.
    committing: Mutex<Wal>,
    /// Set by [`Backend::attach_group_commit`]: the owner's thread commits; writers only queue and call `wake`.
    owner_wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
    attached: AtomicBool,
    /// Groups made durable and writes they carried (for benches and the metrics of the commit path).
    commits: AtomicU64,
    writes: AtomicU64,
    /// Groups logged (one append + sync each) and checkpoints (durable redb commits).
    logged: AtomicU64,
    checkpoints: AtomicU64,
    /// Records replayed from the log when the store was opened.
    replayed: usize,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("attached", &self.attached.load(Ordering::Relaxed))
            .field("commits", &self.commits.load(Ordering::Relaxed))
            .field("writes", &self.writes.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for GroupCommit {
    /// A clean shutdown leaves an empty log: its records are checkpointed into redb.
    fn drop(&mut self) {
        if let Ok(wal) = self.committing.get_mut()
            && !wal.is_empty()
            && let Err(e) = commit::checkpoint(&self.db, wal)
        {
            tracing::warn!(error = %e, "embedded store: checkpoint at close failed (the log is replayed at the next open)");
        }
    }
}

/// Counters of the commit path since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Groups made durable by one log append + sync.
    pub logged: u64,
    /// Durable redb commits that restarted the log (full log, schema changes, sweeps; the one at open included).
    pub checkpoints: u64,
    /// Records replayed from the log at open.
    pub replayed: usize,
}

/// The embedded redb backend. Cheap to share: the database handle is behind an `Arc`.
#[derive(Debug, Clone)]
pub struct EmbeddedBackend {
    db: Arc<Database>,
    path: PathBuf,
    group: Arc<GroupCommit>,
}

impl EmbeddedBackend {
    /// Opens (or creates) the database file at `path` and its log `<path>.wal` with the default log size; the parent
    /// directory is created if missing. Every acknowledged write is durable (see "Durability" in the module docs).
    pub fn open(path: impl AsRef<Path>) -> BackendResult<Self> {
        Self::open_with_wal_bytes(path, wal::WAL_BYTES_DEFAULT)
    }

    /// [`EmbeddedBackend::open`] with a log of `wal_bytes` (at least [`wal::WAL_BYTES_MIN`]): a checkpoint every
    /// `wal_bytes` of records at most; the log replayed at open is at most that long.
    pub fn open_with_wal_bytes(path: impl AsRef<Path>, wal_bytes: u64) -> BackendResult<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BackendError::Unavailable(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let db = Database::create(&path).map_err(|e| {
            BackendError::Unavailable(format!(
                "cannot open embedded database {}: {e}",
                path.display()
            ))
        })?;
        let (wal, replayed) = commit::open_log(&db, &Wal::path_for(&path), wal_bytes)?;
        let db = Arc::new(db);
        let group = Arc::new(GroupCommit {
            db: db.clone(),
            pending: Mutex::new(Vec::new()),
            committing: Mutex::new(wal),
            owner_wake: Mutex::new(None),
            attached: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            logged: AtomicU64::new(0),
            checkpoints: AtomicU64::new(1),
            replayed,
        });
        spawn_sweeper(Arc::downgrade(&group))?;
        Ok(Self { db, path, group })
    }

    /// Deletes up to `rows_max` expired rows now (the background sweep does this every [`SWEEP_INTERVAL`]);
    /// returns how many expiry entries it processed.
    pub fn sweep_expired(&self, rows_max: usize) -> BackendResult<usize> {
        sweep_expired_sync(&self.db, &self.group.committing, rows_max)
    }

    /// Kept for compatibility: the sync interval is ignored, every acknowledged write is durable (group commit makes
    /// the lossy mode pointless).
    pub fn open_with_sync_interval(
        path: impl AsRef<Path>,
        sync_interval: Option<Duration>,
    ) -> BackendResult<Self> {
        if sync_interval.is_some_and(|d| !d.is_zero()) {
            tracing::warn!(
                "orm.embedded_sync_interval_ms is ignored: every write is durable (group commit)"
            );
        }
        Self::open(path)
    }

    /// Opens the store as `OrmConfig` says: the sync interval is ignored (see
    /// [`EmbeddedBackend::open_with_sync_interval`]), the log holds `wal_bytes`.
    pub fn open_with_config(
        path: impl AsRef<Path>,
        sync_interval: Option<Duration>,
        wal_bytes: u64,
    ) -> BackendResult<Self> {
        if sync_interval.is_some_and(|d| !d.is_zero()) {
            tracing::warn!(
                "orm.embedded_sync_interval_ms is ignored: every write is durable (group commit)"
            );
        }
        Self::open_with_wal_bytes(path, wal_bytes)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The write-ahead log file.
    pub fn wal_path(&self) -> PathBuf {
        Wal::path_for(&self.path)
    }

    /// Groups made durable so far, and the writes they carried (writes / commits is the mean group size).
    pub fn commit_stats(&self) -> (u64, u64) {
        (
            self.group.commits.load(Ordering::Relaxed),
            self.group.writes.load(Ordering::Relaxed),
        )
    }

    /// How the groups were made durable, and what the open replayed.
    pub fn log_stats(&self) -> LogStats {
        LogStats {
            logged: self.group.logged.load(Ordering::Relaxed),
            checkpoints: self.group.checkpoints.load(Ordering::Relaxed),
            replayed: self.group.replayed,
        }
    }

    /// Checkpoints now: one durable redb commit, then the log restarts (it happens by itself when the log is full).
    pub fn checkpoint(&self) -> BackendResult<()> {
        self.commit_now();
        let mut wal = self.group.committing.lock().map_err(|_| {
            BackendError::Database("embedded store: the commit lock is poisoned".into())
        })?;
        commit::checkpoint(&self.db, &mut wal)?;
        self.group.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn raw_row_sync(&self, schema: &TableSchema, key: &Row) -> BackendResult<Option<Vec<u8>>> {
        let k = encode_primary_key(schema, key)?;
        let txn = self.db.begin_read().map_err(db_err)?;
        let name = data_table_name(&schema.name);
        let table = match txn.open_table(data_def(&name)) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        Ok(table
            .get(k.as_slice())
            .map_err(db_err)?
            .map(|v| v.value().to_vec()))
    }

    /// Queues a write for the next group commit and waits until it is durable. `f` may run twice (see "Durability").
    fn grouped<T: Send + 'static>(
        &self,
        f: impl FnMut(&Tx) -> BackendResult<T> + Send + 'static,
    ) -> BoxFuture<'static, BackendResult<T>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn WriteJob> = Box::new(Job {
            f,
            out: None,
            answer: tx,
        });
        let queued = match self.group.pending.lock() {
            Ok(mut p) => {
                p.push(job);
                true
            }
            Err(_) => false,
        };
        let this = self.clone();
        Box::pin(async move {
            if !queued {
                return Err(BackendError::Database(
                    "embedded store: the write queue is poisoned".into(),
                ));
            }
            if this.group.attached.load(Ordering::Acquire) {
                let wake = this.group.owner_wake.lock().ok().and_then(|w| w.clone());
                if let Some(wake) = wake {
                    wake();
                }
            } else {
                this.commit_now();
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => Err(BackendError::Unavailable(
                    "embedded store: stopped before the write was committed".into(),
                )),
            }
        })
    }

    /// Commits every queued write now, on the calling thread; returns how many writes were committed.
    fn commit_now(&self) -> usize {
        let Ok(mut wal) = self.group.committing.lock() else {
            return 0;
        };
        let jobs = match self.group.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return 0,
        };
        let n = jobs.len();
        if n > 0 {
            for outcome in commit::commit_jobs(&self.db, &mut wal, jobs) {
                match outcome {
                    Outcome::Logged => self.group.logged.fetch_add(1, Ordering::Relaxed),
                    Outcome::Checkpoint => self.group.checkpoints.fetch_add(1, Ordering::Relaxed),
                    Outcome::Nothing => 0,
                };
            }
            self.group.commits.fetch_add(1, Ordering::Relaxed);
            self.group.writes.fetch_add(n as u64, Ordering::Relaxed);
        }
        n
    }
}

fn db_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Database(format!("embedded store: {e}"))
}

fn data_table_name(table: &str) -> String {
    format!("t:{table}")
}

fn index_table_name(table: &str, column: &str) -> String {
    format!("i:{table}:{column}")
}

fn data_def(name: &str) -> TableDefinition<'_, &'static [u8], &'static [u8]> {
    TableDefinition::new(name)
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding of keys and rows.

fn encode_escaped(out: &mut Bytes, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

/// Appends the order-preserving encoding of `value` (a column of type `t`) to `out`, inverted when `order` is `Desc`.
fn encode_key_value(
    out: &mut Bytes,
    column: &str,
    t: ColumnType,
    value: &Value,
    order: Order,
) -> BackendResult<()> {
    let start = out.len();
    match (t, value) {
        (ColumnType::Text, Value::Text(s)) => encode_escaped(out, s.as_bytes()),
        (ColumnType::Blob, Value::Blob(b)) => encode_escaped(out, b),
        (ColumnType::Number, Value::Number(n)) => {
            out.extend_from_slice(&((*n as u64) ^ (1 << 63)).to_be_bytes())
        }
        (ColumnType::Boolean, Value::Boolean(b)) => out.push(u8::from(*b)),
        (ColumnType::Uuid, Value::Uuid(u)) => out.extend_from_slice(u.as_bytes()),
        (ColumnType::TimeUuid, Value::Uuid(u)) => out.extend_from_slice(&timeuuid_sort_key(u)),
        _ => {
            return Err(BackendError::InvalidQuery(format!(
                "value {value:?} does not fit key column `{column}` of type {t}"
            )));
        }
    }
    if order == Order::Desc {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
    Ok(())
}

fn key_value<'a>(row: &'a Row, column: &str) -> BackendResult<&'a Value> {
    match row.get(column) {
        Some(Value::Null) | None => Err(BackendError::InvalidQuery(format!(
            "key column `{column}` has no value"
        ))),
        Some(v) => Ok(v),
    }
}

fn encode_partition_key(schema: &TableSchema, row: &Row) -> BackendResult<Bytes> {
    let mut out = Vec::new();
    for c in &schema.partition_key {
        let t = schema.column_type(c).unwrap_or(ColumnType::Blob);
        encode_key_value(&mut out, c, t, key_value(row, c)?, Order::Asc)?;
    }
    Ok(out)
}

fn encode_primary_key(schema: &TableSchema, row: &Row) -> BackendResult<Bytes> {
    let mut out = encode_partition_key(schema, row)?;
    for (c, order) in &schema.clustering {
        let t = schema.column_type(c).unwrap_or(ColumnType::Blob);
        encode_key_value(&mut out, c, t, key_value(row, c)?, *order)?;
    }
    Ok(out)
}

fn put_len(out: &mut Bytes, n: usize) {
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn encode_row(row: &Row) -> Bytes {
    let mut out = Vec::with_capacity(64);
    put_len(&mut out, row.len());
    for (name, v) in row {
        put_len(&mut out, name.len());
        out.extend_from_slice(name.as_bytes());
        match v {
            Value::Null => out.push(0),
            Value::Text(s) => {
                out.push(1);
                put_len(&mut out, s.len());
                out.extend_from_slice(s.as_bytes());
            }
            Value::Number(n) => {
                out.push(2);
                out.extend_from_slice(&n.to_be_bytes());
            }
            Value::Boolean(b) => {
                out.push(3);
                out.push(u8::from(*b));
            }
            Value::Uuid(u) => {
                out.push(4);
                out.extend_from_slice(u.as_bytes());
            }
            Value::Blob(b) => {
                out.push(5);
                put_len(&mut out, b.len());
                out.extend_from_slice(b);
            }
        }
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> BackendResult<&'a [u8]> {
        if self.0.len() < n {
            return Err(BackendError::Data(
                "truncated row in the embedded store".into(),
            ));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn len(&mut self) -> BackendResult<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn string(&mut self) -> BackendResult<String> {
        let n = self.len()?;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| BackendError::Data("invalid UTF-8 in the embedded store".into()))
    }
}

fn decode_row(bytes: &[u8]) -> BackendResult<Row> {
    let mut r = Reader(bytes);
    let n = r.len()?;
    let mut row = Row::new();
    for _ in 0..n {
        let name = r.string()?;
        let tag = r.take(1)?[0];
        let v = match tag {
            0 => Value::Null,
            1 => Value::Text(r.string()?),
            2 => {
                let b = r.take(8)?;
                Value::Number(i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            }
            3 => Value::Boolean(r.take(1)?[0] != 0),
            4 => {
                let b = r.take(16)?;
                Value::Uuid(
                    uuid::Uuid::from_slice(b).map_err(|e| BackendError::Data(e.to_string()))?,
                )
            }
            5 => {
                let n = r.len()?;
                Value::Blob(r.take(n)?.to_vec())
            }
            t => {
                return Err(BackendError::Data(format!(
                    "unknown value tag {t} in the embedded store"
                )));
            }
        };
        row.insert(name, v);
    }
    Ok(row)
}

/// The smallest byte string greater than every string that starts with `prefix` (`None`: no such bound).
fn prefix_end(prefix: &[u8]) -> Option<Bytes> {
    let mut p = prefix.to_vec();
    while let Some(last) = p.pop() {
        if last != 0xFF {
            p.push(last + 1);
            return Some(p);
        }
    }
    None
}

/// A half-open byte range `[start, end)`; `end == None` is unbounded.
#[derive(Debug, Clone)]
struct Segment {
    start: Bytes,
    end: Option<Bytes>,
}

impl Segment {
    fn prefix(p: Bytes) -> Self {
        let end = prefix_end(&p);
        Segment { start: p, end }
    }
}

fn cartesian(lists: &[Vec<Bytes>]) -> Vec<Bytes> {
    let mut acc: Vec<Bytes> = vec![Vec::new()];
    for list in lists {
        let mut next = Vec::with_capacity(acc.len() * list.len());
        for a in &acc {
            for b in list {
                let mut k = a.clone();
                k.extend_from_slice(b);
                next.push(k);
            }
        }
        acc = next;
    }
    acc
}

fn encode_values(
    column: &str,
    t: ColumnType,
    op: &FilterOp,
    order: Order,
) -> BackendResult<Vec<Bytes>> {
    let values: &[Value] = match op {
        FilterOp::Eq(v) => std::slice::from_ref(v),
        FilterOp::In(vs) => vs,
        _ => {
            return Err(BackendError::InvalidQuery(format!(
                "range filter on `{column}` here is not allowed"
            )));
        }
    };
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let mut b = Vec::new();
        encode_key_value(&mut b, column, t, v, order)?;
        out.push(b);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The sorted, disjoint byte ranges of the data table that a key query covers.
fn key_segments(schema: &TableSchema, query: &Query) -> BackendResult<Vec<Segment>> {
    let mut lists = Vec::new();
    for c in &schema.partition_key {
        let t = schema.column_type(c).unwrap_or(ColumnType::Blob);
        let op = query.filters_on(c).next().ok_or_else(|| {
            BackendError::InvalidQuery(format!("partition key column `{c}` is not restricted"))
        })?;
        lists.push(encode_values(c, t, op, Order::Asc)?);
    }
    let mut segments = Vec::new();
    let mut prefixes = cartesian(&lists);
    for (c, order) in &schema.clustering {
        let t = schema.column_type(c).unwrap_or(ColumnType::Blob);
        let ops: Vec<&FilterOp> = query.filters_on(c).collect();
        if ops.is_empty() {
            break;
        }
        if let [op @ (FilterOp::Eq(_) | FilterOp::In(_))] = ops.as_slice() {
            let vals = encode_values(c, t, op, *order)?;
            let is_eq = matches!(op, FilterOp::Eq(_));
            prefixes = cartesian(&[prefixes, vals]);
            if is_eq {
                continue;
            }
            break;
        }
        // Range filters on this clustering column: bounds in the encoded (possibly inverted) space.
        for p in &prefixes {
            let mut start: Bytes = p.clone();
            let mut end: Option<Bytes> = prefix_end(p);
            for op in &ops {
                let (v, lower_in_value_order, inclusive) = match op {
                    FilterOp::Gt(v) => (v, true, false),
                    FilterOp::Ge(v) => (v, true, true),
                    FilterOp::Lt(v) => (v, false, false),
                    FilterOp::Le(v) => (v, false, true),
                    _ => {
                        return Err(BackendError::InvalidQuery(format!(
                            "`{c}` mixes equality and range filters"
                        )));
                    }
                };
                let mut e = p.clone();
                encode_key_value(&mut e, c, t, v, *order)?;
                // In encoded order, a `Desc` column's lower value bound is an upper byte bound.
                let lower_in_bytes = lower_in_value_order == (*order == Order::Asc);
                if lower_in_bytes {
                    let s = if inclusive {
                        e
                    } else {
                        prefix_end(&e).unwrap_or(e)
                    };
                    if s > start {
                        start = s;
                    }
                } else {
                    let en = if inclusive { prefix_end(&e) } else { Some(e) };
                    if let Some(en) = en
                        && end.as_ref().is_none_or(|cur| en < *cur)
                    {
                        end = Some(en);
                    }
                }
            }
            segments.push(Segment { start, end });
        }
        segments.sort_by(|a, b| a.start.cmp(&b.start));
        return Ok(segments);
    }
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes.into_iter().map(Segment::prefix).collect())
}

fn index_segments(schema: &TableSchema, query: &Query) -> BackendResult<(String, Vec<Segment>)> {
    let f = query
        .filters
        .first()
        .ok_or_else(|| BackendError::InvalidQuery("index query without filter".into()))?;
    let t = schema
        .column_type(&f.column)
        .ok_or_else(|| BackendError::InvalidQuery(format!("unknown column `{}`", f.column)))?;
    let vals = encode_values(&f.column, t, &f.op, Order::Asc)?;
    Ok((
        f.column.clone(),
        vals.into_iter().map(Segment::prefix).collect(),
    ))
}

fn encode_token(reversed: bool, key: &[u8]) -> PageToken {
    let mut t = Vec::with_capacity(key.len() + 2);
    t.push(TOKEN_VERSION);
    t.push(u8::from(reversed));
    t.extend_from_slice(key);
    PageToken(t)
}

fn decode_token(token: &PageToken) -> BackendResult<Bytes> {
    match token.0.as_slice() {
        [TOKEN_VERSION, 0 | 1, key @ ..] => Ok(key.to_vec()),
        _ => Err(BackendError::InvalidPageToken(
            "not a token of the embedded store".into(),
        )),
    }
}

/// Scans `segments` of `table` in order (or reverse), starting after `after`, returning up to `limit` (key, value) pairs
/// and whether more may follow.
fn scan_segments<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    segments: &[Segment],
    reversed: bool,
    after: Option<&[u8]>,
    limit: usize,
) -> BackendResult<(Vec<(Bytes, Bytes)>, bool)> {
    let mut out = Vec::new();
    let order: Box<dyn Iterator<Item = &Segment>> = if reversed {
        Box::new(segments.iter().rev())
    } else {
        Box::new(segments.iter())
    };
    for seg in order {
        let mut lo: Bound<&[u8]> = Bound::Included(seg.start.as_slice());
        let mut hi: Bound<&[u8]> = match &seg.end {
            Some(e) => Bound::Excluded(e.as_slice()),
            None => Bound::Unbounded,
        };
        if let Some(a) = after {
            if reversed {
                if a <= seg.start.as_slice() {
                    continue;
                }
                if seg.end.as_ref().is_none_or(|e| a < e.as_slice()) {
                    hi = Bound::Excluded(a);
                }
            } else {
                if seg.end.as_ref().is_some_and(|e| a >= e.as_slice()) {
                    continue;
                }
                if a >= seg.start.as_slice() {
                    lo = Bound::Excluded(a);
                }
            }
        }
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(h)) = (lo, hi)
            && l >= h
        {
            continue;
        }
        let range = table.range::<&[u8]>((lo, hi)).map_err(db_err)?;
        let iter: Box<dyn Iterator<Item = _>> = if reversed {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for item in iter {
            let (k, v) = item.map_err(db_err)?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
    }
    Ok((out, false))
}

/// [`scan_segments`] of the local or global index table `name` (its keys end with the row's primary key); a table
/// not created yet has no entries.
fn scan_side_table(
    txn: &ReadTransaction,
    name: &str,
    segments: &[Segment],
    reversed: bool,
    after: Option<&[u8]>,
    limit: usize,
) -> BackendResult<(Vec<(Bytes, Bytes)>, bool)> {
    match txn.open_table(data_def(name)) {
        Ok(table) => scan_segments(&table, segments, reversed, after, limit),
        Err(TableError::TableDoesNotExist(_)) => Ok((Vec::new(), false)),
        Err(e) => Err(db_err(e)),
    }
}

fn run_query(db: &Database, schema: &TableSchema, query: &Query) -> BackendResult<Page> {
    let after = match &query.page_token {
        Some(t) => Some(decode_token(t)?),
        None => None,
    };
    let limit = query.limit.max(1) as usize;
    let txn = db.begin_read().map_err(db_err)?;
    let data_name = data_table_name(&schema.name);
    let data = match txn.open_table(data_def(&data_name)) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(Page::default()),
        Err(e) => return Err(db_err(e)),
    };
    let (entries, more, from_index) = match query.shape(schema) {
        QueryShape::Scan => {
            let segs = [Segment {
                start: Vec::new(),
                end: None,
            }];
            let (e, m) = scan_segments(&data, &segs, query.reversed, after.as_deref(), limit)?;
            (e, m, false)
        }
        QueryShape::Key if query.local_filter(schema).is_some() => {
            let (column, segs) = local_segments(schema, query)?;
            let name = local_table_name(&schema.name, &column);
            let (e, m) =
                scan_side_table(&txn, &name, &segs, query.reversed, after.as_deref(), limit)?;
            (e, m, true)
        }
        QueryShape::Key => {
            let segs = key_segments(schema, query)?;
            let (e, m) = scan_segments(&data, &segs, query.reversed, after.as_deref(), limit)?;
            (e, m, false)
        }
        QueryShape::Index => {
            let (column, segs) = index_segments(schema, query)?;
            let name = index_table_name(&schema.name, &column);
            let (e, m) =
                scan_side_table(&txn, &name, &segs, query.reversed, after.as_deref(), limit)?;
            (e, m, true)
        }
    };
    let mut rows = Vec::with_capacity(entries.len());
    let mut last = None;
    let now = super::now_ms();
    for (k, v) in entries {
        let row = if from_index {
            let (_, pk) = split_index_key(&k)?;
            match data.get(pk).map_err(db_err)? {
                Some(row) => Some(decode_row(row.value())?),
                None => None,
            }
        } else {
            Some(decode_row(&v)?)
        };
        if let Some(row) = row.and_then(|r| live_row(r, now)) {
            rows.push(row);
        }
        last = Some(k);
    }

    let next = match (more, last) {
        (true, Some(k)) => Some(encode_token(query.reversed, &k)),
        _ => None,
    };
    Ok(Page { rows, next })
}

/// Index keys are `u32 length of the encoded value ++ encoded value ++ primary key`... but the length prefix would break
/// the value order, so they are `encoded value ++ primary key ++ u32 length of the primary key`.
fn index_key(value_enc: &[u8], pk: &[u8]) -> Bytes {
    let mut k = Vec::with_capacity(value_enc.len() + pk.len() + 4);
    k.extend_from_slice(value_enc);
    k.extend_from_slice(pk);
    k.extend_from_slice(&(pk.len() as u32).to_be_bytes());
    k
}

fn split_index_key(k: &[u8]) -> BackendResult<(&[u8], &[u8])> {
    if k.len() < 4 {
        return Err(BackendError::Data("truncated index key".into()));
    }
    let (rest, len) = k.split_at(k.len() - 4);
    let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if n > rest.len() {
        return Err(BackendError::Data("bad index key".into()));
    }
    Ok(rest.split_at(rest.len() - n))
}

/// The key of `row` in a side table for `column`: `prefix()` ++ value ++ primary key ++ u32 length of the primary
/// key; `None` when the row has no value in `column` (then `prefix` is not called).
fn side_entry(
    schema: &TableSchema,
    column: &str,
    row: &Row,
    pk: &[u8],
    prefix: impl FnOnce() -> BackendResult<Bytes>,
) -> BackendResult<Option<Bytes>> {
    match row.get(column) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let t = schema.column_type(column).unwrap_or(ColumnType::Blob);
            let mut e = prefix()?;
            encode_key_value(&mut e, column, t, v, Order::Asc)?;
            Ok(Some(index_key(&e, pk)))
        }
    }
}

fn index_entry(
    schema: &TableSchema,
    column: &str,
    row: &Row,
    pk: &[u8],
) -> BackendResult<Option<Bytes>> {
    side_entry(schema, column, row, pk, || Ok(Vec::new()))
}

/// Writes `new` at `pk` inside `tx`, replacing `old`, and keeps the index tables in step.
fn write_row(
    tx: &Tx,
    schema: &TableSchema,
    pk: &[u8],
    old: Option<&Row>,
    new: &Row,
) -> BackendResult<()> {
    tx.put(&data_table_name(&schema.name), pk, &encode_row(new))?;
    for column in &schema.indexes {
        let before = match old {
            Some(o) => index_entry(schema, column, o, pk)?,
            None => None,
        };
        let after = index_entry(schema, column, new, pk)?;
        if before == after {
            continue;
        }
        let iname = index_table_name(&schema.name, column);
        if let Some(b) = before {
            tx.delete(&iname, &b)?;
        }
        if let Some(a) = after {
            tx.put(&iname, &a, &[])?;
        }
    }
    write_aux(tx, schema, pk, old, Some(new))
}

fn local_table_name(table: &str, column: &str) -> String {
    format!("l:{table}:{column}")
}

fn expiry_table_name(table: &str) -> String {
    format!("x:{table}")
}

/// The columns with a local table: local indexes, then the derived columns of search columns.
fn local_columns(schema: &TableSchema) -> Vec<String> {
    schema
        .local_indexes
        .iter()
        .cloned()
        .chain(schema.search.iter().map(|c| super::search_column(c)))
        .collect()
}

fn expires_of(row: &Row) -> Option<i64> {
    match row.get(EXPIRES_FIELD) {
        Some(Value::Number(n)) => Some(*n),
        _ => None,
    }
}

fn is_expired(row: &Row, now_ms: i64) -> bool {
    expires_of(row).is_some_and(|e| e <= now_ms)
}

/// `row` without its reserved fields, or `None` if it has expired.
fn live_row(mut row: Row, now_ms: i64) -> Option<Row> {
    if is_expired(&row, now_ms) {
        return None;
    }
    row.remove(EXPIRES_FIELD);
    Some(row)
}

/// The local-table key of `row` for `column`: partition ++ value ++ primary key ++ u32 length of the primary key.
fn local_entry(
    schema: &TableSchema,
    column: &str,
    row: &Row,
    pk: &[u8],
) -> BackendResult<Option<Bytes>> {
    side_entry(schema, column, row, pk, || {
        encode_partition_key(schema, row)
    })
}

fn expiry_entry(row: &Row, pk: &[u8]) -> Option<Bytes> {
    expires_of(row).map(|e| {
        let mut k = (e.max(0) as u64).to_be_bytes().to_vec();
        k.extend_from_slice(pk);
        k
    })
}

/// Keeps the local tables and the expiry table in step with a change of the row at `pk` from `old` to `new`
/// (`None`: absent).
fn write_aux(
    tx: &Tx,
    schema: &TableSchema,
    pk: &[u8],
    old: Option<&Row>,
    new: Option<&Row>,
) -> BackendResult<()> {
    for column in local_columns(schema) {
        let before = match old {
            Some(o) => local_entry(schema, &column, o, pk)?,
            None => None,
        };
        let after = match new {
            Some(n) => local_entry(schema, &column, n, pk)?,
            None => None,
        };
        if before == after {
            continue;
        }
        let lname = local_table_name(&schema.name, &column);
        if let Some(b) = before {
            tx.delete(&lname, &b)?;
        }
        if let Some(a) = after {
            tx.put(&lname, &a, &[])?;
        }
    }
    let before = old.and_then(|o| expiry_entry(o, pk));
    let after = new.and_then(|n| expiry_entry(n, pk));
    if before != after {
        let xname = expiry_table_name(&schema.name);
        if let Some(b) = before {
            tx.delete(&xname, &b)?;
        }
        if let Some(a) = after {
            tx.put(&xname, &a, &[])?;
        }
    }
    Ok(())
}

/// The segments of the local table that a local query covers (one per partition).
fn local_segments(schema: &TableSchema, query: &Query) -> BackendResult<(String, Vec<Segment>)> {
    let f = query
        .local_filter(schema)
        .ok_or_else(|| BackendError::InvalidQuery("not a local query".into()))?;
    let mut lists = Vec::new();
    for c in &schema.partition_key {
        let t = schema.column_type(c).unwrap_or(ColumnType::Blob);
        let op = query.filters_on(c).next().ok_or_else(|| {
            BackendError::InvalidQuery(format!("partition key column `{c}` is not restricted"))
        })?;
        lists.push(encode_values(c, t, op, Order::Asc)?);
    }
    let (column, tail) = match &f.op {
        FilterOp::Eq(v) => {
            let t = schema.column_type(&f.column).unwrap_or(ColumnType::Blob);
            let mut e = Vec::new();
            encode_key_value(&mut e, &f.column, t, v, Order::Asc)?;
            (f.column.clone(), e)
        }
        FilterOp::Prefix(p) => {
            let mut e = Vec::new();
            encode_escaped(&mut e, p.as_bytes());
            e.truncate(e.len() - 2); // no terminator: a byte prefix of every text starting with `p`
            (super::search_column(&f.column), e)
        }
        _ => {
            return Err(BackendError::InvalidQuery(format!(
                "local filter on `{}` must be an equality or a prefix",
                f.column
            )));
        }
    };
    let mut prefixes = cartesian(&[cartesian(&lists), vec![tail]]);
    prefixes.sort();
    prefixes.dedup();
    Ok((column, prefixes.into_iter().map(Segment::prefix).collect()))
}

/// Applies a patch (`Backend::patch`) to the row at `pk` inside `tx`: read, merge, write; `false` (nothing written) if
/// the row is absent or expired. Re-runnable: it only reads its arguments.
fn patch_in(tx: &Tx, schema: &TableSchema, pk: &[u8], columns: &Row) -> BackendResult<bool> {
    let Some(old) = read_row(tx, schema, pk)? else {
        return Ok(false);
    };
    if is_expired(&old, super::now_ms()) {
        return Ok(false);
    }
    let mut new = old.clone();
    for (c, v) in columns {
        if schema.is_key(c) || c == EXPIRES_FIELD {
            return Err(BackendError::InvalidQuery(format!(
                "a patch cannot write `{c}`"
            )));
        }
        if *v == Value::Null {
            new.remove(c);
        } else {
            new.insert(c.clone(), v.clone());
        }
    }
    write_row(tx, schema, pk, Some(&old), &new)?;
    Ok(true)
}

/// Deletes up to `rows_max` expired rows (of every table) in one write transaction; returns how many it deleted.
/// Deletes up to `rows_max` expired rows in one durable commit, which is a checkpoint (taken under the commit lock).
fn sweep_expired_sync(
    db: &Database,
    committing: &Mutex<Wal>,
    rows_max: usize,
) -> BackendResult<usize> {
    let schemas: Vec<TableSchema> = {
        let txn = db.begin_read().map_err(db_err)?;
        let meta = match txn.open_table(SCHEMA_TABLE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(0),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in meta.iter().map_err(db_err)? {
            let (_, json) = item.map_err(db_err)?;
            if let Ok(s) = serde_json::from_str::<TableSchema>(json.value()) {
                out.push(s);
            }
        }
        out
    };
    let now = super::now_ms().max(0) as u64;
    // Find the due entries with a read transaction first, so an idle sweep never takes the write lock.
    let mut due_per_table: Vec<(usize, Vec<Bytes>)> = Vec::new();
    {
        let txn = db.begin_read().map_err(db_err)?;
        let mut found = 0;
        for (i, schema) in schemas.iter().enumerate() {
            if found >= rows_max {
                break;
            }
            let x = match txn.open_table(data_def(&expiry_table_name(&schema.name))) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => continue,
                Err(e) => return Err(db_err(e)),
            };
            let end = (now + 1).to_be_bytes();
            let mut due = Vec::new();
            for item in x.range::<&[u8]>(..end.as_slice()).map_err(db_err)? {
                if found >= rows_max {
                    break;
                }
                due.push(item.map_err(db_err)?.0.value().to_vec());
                found += 1;
            }
            if !due.is_empty() {
                due_per_table.push((i, due));
            }
        }
    }
    if due_per_table.is_empty() {
        return Ok(0);
    }
    let mut wal = committing.lock().map_err(|_| {
        BackendError::Database("embedded store: the commit lock is poisoned".into())
    })?;
    let tx = Tx::begin(db, Durability::Immediate)?;
    let mut done = 0;
    for (i, due) in due_per_table {
        let schema = &schemas[i];
        let xname = expiry_table_name(&schema.name);
        for k in due {
            let pk = &k[8.min(k.len())..];
            match read_row(&tx, schema, pk)? {
                Some(old) if expiry_entry(&old, pk).as_deref() == Some(k.as_slice()) => {
                    delete_row(&tx, schema, pk, &old)?;
                }
                _ => tx.delete(&xname, &k)?,
            }
            done += 1;
        }
    }
    if done > 0 {
        commit::commit_checkpoint(tx.into_txn(), &mut wal)?;
    } else {
        tx.abort();
    }
    Ok(done)
}

/// Deletes the row `old` at `pk` and its index, local and expiry entries.
fn delete_row(tx: &Tx, schema: &TableSchema, pk: &[u8], old: &Row) -> BackendResult<()> {
    tx.delete(&data_table_name(&schema.name), pk)?;
    for column in &schema.indexes {
        if let Some(e) = index_entry(schema, column, old, pk)? {
            tx.delete(&index_table_name(&schema.name, column), &e)?;
        }
    }
    write_aux(tx, schema, pk, Some(old), None)
}

/// The background thread that deletes expired rows, [`SWEEP_ROWS_MAX`] at most per [`SWEEP_INTERVAL`].
fn spawn_sweeper(group: std::sync::Weak<GroupCommit>) -> BackendResult<()> {
    std::thread::Builder::new()
        .name("shardcast-redb-sweep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(SWEEP_INTERVAL);
                let Some(group) = group.upgrade() else { return };
                if let Err(e) = sweep_expired_sync(&group.db, &group.committing, SWEEP_ROWS_MAX) {
                    tracing::warn!(error = %e, "embedded store: sweeping expired rows failed");
                }
            }
        })
        .map(drop)
        .map_err(|e| BackendError::Unavailable(format!("cannot start the sweep thread: {e}")))
}

fn read_row(tx: &Tx, schema: &TableSchema, pk: &[u8]) -> BackendResult<Option<Row>> {
    let data_name = data_table_name(&schema.name);
    let data = tx.txn().open_table(data_def(&data_name)).map_err(db_err)?;
    let row = data.get(pk).map_err(db_err)?;
    match row {
        Some(bytes) => Ok(Some(decode_row(bytes.value())?)),
        None => Ok(None),
    }
}

/// Checks and extends the stored schema in one durable commit, which is a checkpoint (the caller holds the commit
/// lock and passes the log).
fn ensure_schema_sync(db: &Database, wal: &mut Wal, schema: &TableSchema) -> BackendResult<()> {
    let mut txn = db.begin_write().map_err(db_err)?;
    txn.set_durability(Durability::Immediate).map_err(db_err)?;
    let stored: Option<TableSchema> = {
        let meta = txn.open_table(SCHEMA_TABLE).map_err(db_err)?;
        let s = meta.get(schema.name.as_str()).map_err(db_err)?;
        match s {
            Some(json) => Some(serde_json::from_str(json.value()).map_err(|e| {
                BackendError::Data(format!("stored schema of `{}`: {e}", schema.name))
            })?),
            None => None,
        }
    };
    let mut merged = match stored {
        None => schema.clone(),
        Some(old) => {
            check_compatible(&old, schema)?;
            let mut m = old.clone();
            for c in &schema.columns {
                if m.column(&c.name).is_none() {
                    m.columns.push(c.clone());
                }
            }
            m
        }
    };
    // New indexes: build them from the existing rows.
    let old_indexes = merged.indexes.clone();
    let new_indexes: Vec<String> = schema
        .indexes
        .iter()
        .filter(|i| !old_indexes.contains(i))
        .cloned()
        .collect();
    merged.indexes.extend(new_indexes.iter().cloned());
    // New local indexes and search columns: build their local tables from the existing rows.
    let old_locals = local_columns(&merged);
    for c in &schema.local_indexes {
        if !merged.local_indexes.contains(c) {
            merged.local_indexes.push(c.clone());
        }
    }
    for c in &schema.search {
        if !merged.search.contains(c) {
            merged.search.push(c.clone());
        }
    }
    let new_locals: Vec<String> = local_columns(&merged)
        .into_iter()
        .filter(|c| !old_locals.contains(c))
        .collect();
    if !new_locals.is_empty() {
        let data_name = data_table_name(&schema.name);
        let data = txn.open_table(data_def(&data_name)).map_err(db_err)?;
        for column in &new_locals {
            let lname = local_table_name(&schema.name, column);
            let mut local = txn.open_table(data_def(&lname)).map_err(db_err)?;
            for item in data.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let row = decode_row(v.value())?;
                if let Some(e) = local_entry(&merged, column, &row, k.value())? {
                    local.insert(e.as_slice(), [].as_slice()).map_err(db_err)?;
                }
            }
        }
    }
    {
        let data_name = data_table_name(&schema.name);
        let data = txn.open_table(data_def(&data_name)).map_err(db_err)?;
        for column in &schema.indexes {
            let iname = index_table_name(&schema.name, column);
            let mut index = txn.open_table(data_def(&iname)).map_err(db_err)?;
            if !new_indexes.contains(column) {
                continue;
            }
            for item in data.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let row = decode_row(v.value())?;
                if let Some(e) = index_entry(&merged, column, &row, k.value())? {
                    index.insert(e.as_slice(), [].as_slice()).map_err(db_err)?;
                }
            }
        }
    }
    {
        let json = serde_json::to_string(&merged).map_err(|e| BackendError::Data(e.to_string()))?;
        let mut meta = txn.open_table(SCHEMA_TABLE).map_err(db_err)?;
        meta.insert(schema.name.as_str(), json.as_str())
            .map_err(db_err)?;
    }
    commit::commit_checkpoint(txn, wal)
}

/// Checks that `new` can be applied to a table stored with schema `old` (same primary key, same column types).
pub(crate) fn check_compatible(old: &TableSchema, new: &TableSchema) -> BackendResult<()> {
    let key_desc = |s: &TableSchema| {
        let part: Vec<String> = s
            .partition_key
            .iter()
            .map(|c| format!("{c} {}", s.column_type(c).map(|t| t.name()).unwrap_or("?")))
            .collect();
        let clus: Vec<String> = s
            .clustering
            .iter()
            .map(|(c, o)| {
                format!(
                    "{c} {} {o:?}",
                    s.column_type(c).map(|t| t.name()).unwrap_or("?")
                )
            })
            .collect();
        format!(
            "partition ({}) clustering ({})",
            part.join(", "),
            clus.join(", ")
        )
    };
    let (a, b) = (key_desc(old), key_desc(new));
    if a != b {
        return Err(BackendError::Schema(format!(
            "table `{}`: the primary key changed from {a} to {b}; primary keys cannot be changed in place",
            new.name
        )));
    }
    for c in &new.columns {
        if let Some(t) = old.column_type(&c.name)
            && t != c.column_type
        {
            return Err(BackendError::Schema(format!(
                "table `{}`: column `{}` is stored as {t} but declared as {}; column types cannot be changed",
                new.name, c.name, c.column_type
            )));
        }
    }
    Ok(())
}

impl Backend for EmbeddedBackend {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn raw_row<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Vec<u8>>>> {
        Box::pin(async move { self.raw_row_sync(schema, key) })
    }

    fn ensure_schema<'a>(&'a self, schema: &'a TableSchema) -> BoxFuture<'a, BackendResult<()>> {
        // Ordered after the writes queued before it (they are committed first), like every other write.
        Box::pin(async move {
            self.commit_now();
            let mut wal = self.group.committing.lock().map_err(|_| {
                BackendError::Database("embedded store: the commit lock is poisoned".into())
            })?;
            ensure_schema_sync(&self.db, &mut wal, schema)?;
            self.group.checkpoints.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    fn get<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Row>>> {
        // Reads run on the calling thread (inside the IO shard: its own), borrowing the schema and key: no copies.
        Box::pin(async move {
            let pk = encode_primary_key(schema, key)?;
            let txn = self.db.begin_read().map_err(db_err)?;
            let name = data_table_name(&schema.name);
            let table = match txn.open_table(data_def(&name)) {
                Ok(t) => t,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(e)),
            };
            let v = table.get(pk.as_slice()).map_err(db_err)?;
            match v {
                Some(v) => Ok(live_row(decode_row(v.value())?, super::now_ms())),
                None => Ok(None),
            }
        })
    }

    fn query<'a>(
        &'a self,
        schema: &'a TableSchema,
        query: &'a Query,
    ) -> BoxFuture<'a, BackendResult<Page>> {
        Box::pin(async move { run_query(&self.db, schema, query) })
    }

    fn upsert<'a>(&'a self, schema: &'a TableSchema, row: Row) -> BoxFuture<'a, BackendResult<()>> {
        self.upsert_all(schema, vec![row])
    }

    fn upsert_all<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        let schema = schema.clone();
        self.grouped(move |tx| {
            for row in &rows {
                let pk = encode_primary_key(&schema, row)?;
                let old = read_row(tx, &schema, &pk)?;
                let mut new = old.clone().unwrap_or_default();
                for (c, v) in row {
                    if *v == Value::Null {
                        new.remove(c);
                    } else {
                        new.insert(c.clone(), v.clone());
                    }
                }
                write_row(tx, &schema, &pk, old.as_ref(), &new)?;
            }
            Ok(())
        })
    }

    fn upsert_ttl<'a>(
        &'a self,
        schema: &'a TableSchema,
        mut rows: Vec<Row>,
        ttl_seconds: Option<u32>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        // The expiry is one more field of the row, so the ordinary upsert path writes (or, as Null, removes) it and
        // `write_row` keeps the expiry table in step.
        let expires = match ttl_seconds {
            Some(s) => Value::Number(super::now_ms().saturating_add(i64::from(s) * 1000)),
            None => Value::Null,
        };
        for row in &mut rows {
            row.insert(EXPIRES_FIELD.to_string(), expires.clone());
        }
        self.upsert_all(schema, rows)
    }

    fn patch<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        columns: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        let schema = schema.clone();
        let key = key.clone();
        // Joins the group commit; `patch_in` only reads and writes inside `tx`, so a re-run (after another write of
        // the batch failed) gives the same result.
        self.grouped(move |tx| {
            let pk = encode_primary_key(&schema, &key)?;
            patch_in(tx, &schema, &pk, &columns)
        })
    }

    fn insert<'a>(
        &'a self,
        schema: &'a TableSchema,
        row: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        let schema = schema.clone();
        // Joins the group commit: the read of the key and the write are in the batch's one write transaction (redb
        // has one writer at a time), so of two inserts of a key the second sees the first.
        self.grouped(move |tx| {
            let pk = encode_primary_key(&schema, &row)?;
            if read_row(tx, &schema, &pk)?.is_some() {
                return Ok(false);
            }
            let new: Row = row
                .iter()
                .filter(|(_, v)| **v != Value::Null)
                .map(|(c, v)| (c.clone(), v.clone()))
                .collect();
            write_row(tx, &schema, &pk, None, &new)?;
            Ok(true)
        })
    }

    fn delete<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<()>> {
        let schema = schema.clone();
        let pk = match encode_primary_key(&schema, key) {
            Ok(pk) => pk,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        self.grouped(move |tx| {
            if let Some(old) = read_row(tx, &schema, &pk)? {
                delete_row(tx, &schema, &pk, &old)?;
            }
            Ok(())
        })
    }

    fn increment<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        column: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        if schema.column_type(column) != Some(ColumnType::Counter) {
            let e = BackendError::InvalidQuery(format!("`{column}` is not a counter column"));
            return Box::pin(async move { Err(e) });
        }
        let schema = schema.clone();
        let key = key.clone();
        let column = column.to_string();
        self.grouped(move |tx| {
            let pk = encode_primary_key(&schema, &key)?;
            let old = read_row(tx, &schema, &pk)?;
            let mut new = match &old {
                Some(r) => r.clone(),
                None => {
                    let mut r = Row::new();
                    for k in schema.primary_key() {
                        r.insert(k.to_string(), key_value(&key, k)?.clone());
                    }
                    r
                }
            };
            let current = match new.get(&column) {
                Some(Value::Number(n)) => *n,
                _ => 0,
            };
            new.insert(column.clone(), Value::Number(current.wrapping_add(delta)));
            write_row(tx, &schema, &pk, old.as_ref(), &new)?;
            Ok(())
        })
    }

    fn attach_group_commit(&self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        if let Ok(mut w) = self.group.owner_wake.lock() {
            *w = Some(wake);
            self.group.attached.store(true, Ordering::Release);
            return true;
        }
        false
    }

    fn commit_pending(&self) -> usize {
        self.commit_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_deletes_expired_rows_in_bounded_batches() {
        let dir = std::env::temp_dir().join(format!(
            "shardcast-sweep-{}-{}",
            std::process::id(),
            super::super::now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let db = Database::create(dir.join("db.redb")).expect("db");
        let (wal, _) = commit::open_log(&db, &dir.join("db.redb.wal"), 0).expect("log");
        let committing = Mutex::new(wal);
        let schema = TableSchema {
            name: "s".into(),
            columns: vec![
                super::super::ColumnDef {
                    name: "k".into(),
                    column_type: ColumnType::Number,
                },
                super::super::ColumnDef {
                    name: "v".into(),
                    column_type: ColumnType::Text,
                },
            ],
            partition_key: vec!["k".into()],
            clustering: vec![],
            indexes: vec!["v".into()],
            local_indexes: vec![],
            search: vec![],
        };
        ensure_schema_sync(&db, &mut committing.lock().expect("lock"), &schema).expect("schema");
        let now = super::super::now_ms();
        let tx = Tx::begin(&db, Durability::Immediate).expect("txn");
        for k in 0..5i64 {
            let mut row = Row::from([
                ("k".to_string(), Value::Number(k)),
                ("v".to_string(), Value::Text("x".into())),
            ]);
            if k < 3 {
                row.insert(EXPIRES_FIELD.into(), Value::Number(now - 1000));
            } else if k == 3 {
                row.insert(EXPIRES_FIELD.into(), Value::Number(now + 600_000));
            }
            let pk = encode_primary_key(&schema, &row).expect("pk");
            write_row(&tx, &schema, &pk, None, &row).expect("write");
        }
        tx.into_txn().commit().expect("commit");
        let count = |name: String| {
            let txn = db.begin_read().expect("read");
            let t = txn.open_table(data_def(&name)).expect("table");
            t.iter().expect("iter").count()
        };
        assert_eq!(count(data_table_name("s")), 5);
        assert_eq!(
            sweep_expired_sync(&db, &committing, 2).expect("sweep"),
            2,
            "at most rows_max per sweep"
        );
        assert_eq!(sweep_expired_sync(&db, &committing, 2).expect("sweep"), 1);
        assert_eq!(
            sweep_expired_sync(&db, &committing, 2).expect("sweep"),
            0,
            "the live and unexpired rows stay"
        );
        assert_eq!(count(data_table_name("s")), 2);
        assert_eq!(
            count(index_table_name("s", "v")),
            2,
            "index entries go with the rows"
        );
        assert_eq!(count(expiry_table_name("s")), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn enc(t: ColumnType, v: Value, o: Order) -> Bytes {
        let mut b = Vec::new();
        encode_key_value(&mut b, "c", t, &v, o).expect("encodes");
        b
    }

    #[test]
    fn key_encoding_preserves_order_and_desc_reverses_it() {
        let nums = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for w in nums.windows(2) {
            assert!(
                enc(ColumnType::Number, Value::Number(w[0]), Order::Asc)
                    < enc(ColumnType::Number, Value::Number(w[1]), Order::Asc)
            );
            assert!(
                enc(ColumnType::Number, Value::Number(w[0]), Order::Desc)
                    > enc(ColumnType::Number, Value::Number(w[1]), Order::Desc)
            );
        }
        let texts = ["", "\0", "\0a", "a", "a\0", "ab", "b"];
        for w in texts.windows(2) {
            let a = |s: &str, o| enc(ColumnType::Text, Value::Text(s.into()), o);
            assert!(
                a(w[0], Order::Asc) < a(w[1], Order::Asc),
                "{:?} < {:?}",
                w[0],
                w[1]
            );
            assert!(
                a(w[0], Order::Desc) > a(w[1], Order::Desc),
                "{:?} > {:?} desc",
                w[0],
                w[1]
            );
        }
    }

    #[test]
    fn rows_round_trip_and_truncated_rows_are_errors() {
        let mut row = Row::new();
        row.insert("a".into(), Value::Text("x".into()));
        row.insert("b".into(), Value::Number(-3));
        row.insert("c".into(), Value::Blob(vec![0, 1, 2]));
        row.insert("d".into(), Value::Uuid(uuid::Uuid::new_v4()));
        row.insert("e".into(), Value::Boolean(true));
        let bytes = encode_row(&row);
        assert_eq!(decode_row(&bytes).expect("decodes"), row);
        for n in 0..bytes.len() {
            assert!(decode_row(&bytes[..n]).is_err());
        }
    }

    /// Every byte table of `db` (data, index, local and expiry tables), for comparing stores.
    fn dump(db: &Database) -> std::collections::BTreeMap<String, Vec<(Bytes, Bytes)>> {
        let txn = db.begin_read().expect("read");
        let mut out = std::collections::BTreeMap::new();
        for handle in txn.list_tables().expect("tables") {
            let name = redb::TableHandle::name(&handle).to_string();
            if !["t:", "i:", "l:", "x:"].iter().any(|p| name.starts_with(p)) {
                continue;
            }
            let t = txn.open_table(data_def(&name)).expect("table");
            let rows = t
                .iter()
                .expect("iter")
                .map(|r| {
                    let (k, v) = r.expect("row");
                    (k.value().to_vec(), v.value().to_vec())
                })
                .collect();
            out.insert(name, rows);
        }
        out
    }

    /// A crash image (the files as a SIGKILL would leave them) of a store after writes of every kind: redb alone holds
    /// the state of the last checkpoint; applying the log's records once gives the live store's state, and applying
    /// them a second time changes nothing.
    #[test]
    fn replaying_the_log_once_or_twice_gives_the_live_state() {
        use futures_lite::future::block_on;
        let dir = std::env::temp_dir().join(format!(
            "shardcast-replay-{}-{}",
            std::process::id(),
            super::super::now_ms()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("db.redb");
        let backend = EmbeddedBackend::open(&path).expect("open");
        let schema = TableSchema {
            name: "r".into(),
            columns: vec![
                super::super::ColumnDef {
                    name: "k".into(),
                    column_type: ColumnType::Number,
                },
                super::super::ColumnDef {
                    name: "v".into(),
                    column_type: ColumnType::Text,
                },
                super::super::ColumnDef {
                    name: "hits".into(),
                    column_type: ColumnType::Counter,
                },
            ],
            partition_key: vec!["k".into()],
            clustering: vec![],
            indexes: vec!["v".into()],
            local_indexes: vec![],
            search: vec!["v".into()],
        };
        block_on(backend.ensure_schema(&schema)).expect("schema");
        let row = |k: i64, v: &str| {
            Row::from([
                ("k".to_string(), Value::Number(k)),
                ("v".to_string(), Value::Text(v.into())),
            ])
        };
        let key = |k: i64| Row::from([("k".to_string(), Value::Number(k))]);
        block_on(backend.upsert(&schema, row(1, "a"))).expect("upsert");
        block_on(backend.upsert(&schema, row(2, "b"))).expect("upsert");
        block_on(backend.upsert(&schema, row(1, "c"))).expect("upsert: moves the index entry");
        block_on(backend.delete(&schema, &key(2))).expect("delete");
        block_on(backend.upsert_ttl(&schema, vec![row(3, "d")], Some(600))).expect("ttl");
        block_on(backend.patch(
            &schema,
            &key(1),
            Row::from([("v".to_string(), Value::Text("e".into()))]),
        ))
        .expect("patch");
        assert!(block_on(backend.insert(&schema, row(4, "f"))).expect("insert"));
        block_on(backend.increment(&schema, &key(4), "hits", 5)).expect("increment");
        let live = dump(&backend.db);
        assert!(live["i:r:v"].len() == 3 && live["x:r"].len() == 1 && live["t:r"].len() == 3);

        let image = dir.join("image");
        std::fs::create_dir_all(&image).expect("image dir");
        std::fs::copy(&path, image.join("db.redb")).expect("copy db");
        std::fs::copy(backend.wal_path(), image.join("db.redb.wal")).expect("copy log");
        let db = Database::create(image.join("db.redb")).expect("the image opens");
        assert!(
            dump(&db)["t:r"].is_empty(),
            "redb alone has the last checkpoint: no row"
        );
        let epoch = commit::stored_epoch(&db).expect("epoch").expect("a lap");
        let content = std::fs::read(image.join("db.redb.wal")).expect("log");
        let records = wal::scan(&content, epoch);
        assert_eq!(records.len(), 8, "one record per acknowledged write");
        for round in 0..2 {
            let txn = db.begin_write().expect("txn");
            for r in &records {
                commit::apply_record(&txn, r).expect("replays");
            }
            txn.commit().expect("commit");
            assert_eq!(dump(&db), live, "replay {round}");
        }
        drop(db);
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn index_keys_split_back() {
        let k = index_key(b"value\0\x01", b"pk-bytes");
        let (v, pk) = split_index_key(&k).expect("splits");
        assert_eq!(v, b"value\0\x01");
        assert_eq!(pk, b"pk-bytes");
    }
}
