//! The MongoDB backend (official `mongodb` driver; tested against SecantusDB, a MongoDB-wire server).
//!
//! # Layout
//! - One collection per table, named after it; one document per row, one field per column (`_id` is the driver's
//!   ObjectId and is never used by the ORM).
//! - A unique compound index `shardcast_pk` on the primary key (partition columns ascending, clustering columns in their
//!   declared order), so rows are unique per key and key queries are index scans; one index `shardcast_idx_<column>`
//!   per secondary index.
//! - Per local index a compound index `shardcast_local_<column>` on (partition columns, column, clustering columns);
//!   per search column one on (partition columns, derived lowercase column, clustering columns): a prefix search is
//!   an anchored regex `^<escaped lowercase prefix>` on the derived column, which the index answers as a range (a
//!   case-insensitive regex `/^abc/i` on the original column could not use the index bounds).
//! - Rows with a TTL hold their expiry in the date field `_expires_at`, with a TTL index `shardcast_ttl`
//!   (`expireAfterSeconds: 0`) on it; the server deletes them in the background (about once a minute), and until then
//!   every read adds `_expires_at` absent or in the future to its filter, so an expired row is never returned.
//! - Collection `__shardcast_schema`: `{ _id: <table>, schema: <TableSchema as JSON> }`, checked and extended by
//!   [`Backend::ensure_schema`].
//!
//! # Values
//! text/json: string; number/counter: int64; boolean: bool; uuid: binary subtype 4; blob: binary subtype 0; timeuuid:
//! binary subtype 0x80 holding the 24-byte [`timeuuid_sort_key`] (timestamp first), so that MongoDB's order of binary
//! values (length, subtype, then bytes) is the timeuuid order.
//!
//! # Pagination
//! Keyset pagination, never skip: results are sorted on the primary key (index queries: the indexed column, then the
//! primary key), and the page token is the chunk index (see below) and the BSON document of the sort-key values of the
//! last returned row. The next page
//! adds `(k1 > v1) or (k1 = v1 and k2 > v2) or ...` (with `<` for descending fields) to the filter. The token is a
//! position, so the same query in the other direction accepts it and continues before it (unless the query is split in
//! chunks, whose order depends on the direction).
//! An `In` list longer than [`IN_CHUNK_VALUES`] on the leading sort field is split into sorted chunks queried in
//! order, so no single `$in` is huge.
//!
//! # Errors
//! Network errors, server-selection timeouts and pool clears are [`BackendError::Unavailable`]; write errors (duplicate
//! key, validation, ...) are [`BackendError::Database`] with the server's message. Nothing is swallowed.

use std::time::Duration;

use mongodb::bson::{self, Bson, Document, doc, spec::BinarySubtype};
use mongodb::error::ErrorKind;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{
    Backend, BackendError, BackendResult, BoxFuture, ColumnType, FilterOp, Order, Page, PageToken,
    Query, QueryShape, Row, TableSchema, Value, timeuuid_sort_key,
};

const SCHEMA_COLLECTION: &str = "__shardcast_schema";
const TIMEUUID_SUBTYPE: u8 = 0x80;
/// Upsert statements per `update` command in `upsert_all` (well under MongoDB's 100,000 and 16 MiB limits).
pub const UPSERT_BATCH_ROWS: usize = 500;
/// Longest `$in` list sent in one query; longer `In` filters on the leading sort field are split (see `query_impl`).
pub const IN_CHUNK_VALUES: usize = 100;
/// The field holding the expiry of a row with a TTL.
const EXPIRES_FIELD: &str = "_expires_at";

/// The MongoDB backend: a driver client and one database.
#[derive(Debug, Clone)]
pub struct MongoBackend {
    client: Client,
    db: Database,
}

impl MongoBackend {
    /// Connects lazily to `uri` (the driver connects on first use) and uses database `database`.
    /// `server_selection_timeout` bounds how long an operation waits for a reachable server before failing with
    /// [`BackendError::Unavailable`]. Must be called inside a tokio runtime (the IO shard's).
    pub async fn connect(
        uri: &str,
        database: &str,
        server_selection_timeout: Duration,
    ) -> BackendResult<Self> {
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            BackendError::Unavailable(format!("invalid MongoDB URI or DNS failure: {e}"))
        })?;
        options.server_selection_timeout = Some(server_selection_timeout);
        options.connect_timeout = Some(server_selection_timeout);
        options.app_name = Some("shardcast".into());
        let client = Client::with_options(options).map_err(mongo_err)?;
        let db = client.database(database);
        Ok(Self { client, db })
    }

    /// The driver's client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The database (for the tests' clean-up).
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn coll(&self, schema: &TableSchema) -> Collection<Document> {
        self.db.collection(&schema.name)
    }
}

fn mongo_err(e: mongodb::error::Error) -> BackendError {
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => {
            BackendError::Unavailable(format!("MongoDB: {e}"))
        }
        ErrorKind::Shutdown => BackendError::Unavailable("MongoDB client shut down".into()),
        _ if e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError") =>
        {
            BackendError::Unavailable(format!("MongoDB: {e}"))
        }
        _ => BackendError::Database(format!("MongoDB: {e}")),
    }
}

fn to_bson(t: ColumnType, v: &Value) -> Bson {
    match (t, v) {
        (_, Value::Null) => Bson::Null,
        (_, Value::Text(s)) => Bson::String(s.clone()),
        (_, Value::Number(n)) => Bson::Int64(*n),
        (_, Value::Boolean(b)) => Bson::Boolean(*b),
        (ColumnType::TimeUuid, Value::Uuid(u)) => Bson::Binary(bson::Binary {
            subtype: BinarySubtype::UserDefined(TIMEUUID_SUBTYPE),
            bytes: timeuuid_sort_key(u).to_vec(),
        }),
        (_, Value::Uuid(u)) => Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Uuid,
            bytes: u.as_bytes().to_vec(),
        }),
        (_, Value::Blob(b)) => Bson::Binary(bson::Binary {
            subtype: BinarySubtype::Generic,
            bytes: b.clone(),
        }),
    }
}

fn from_bson(column: &str, t: ColumnType, b: &Bson) -> BackendResult<Value> {
    let bad = || BackendError::Data(format!("MongoDB field `{column}` holds {b:?}, not a {t}"));
    Ok(match (t, b) {
        (_, Bson::Null) => Value::Null,
        (ColumnType::Text | ColumnType::Json, Bson::String(s)) => Value::Text(s.clone()),
        (ColumnType::Number | ColumnType::Counter, Bson::Int64(n)) => Value::Number(*n),
        (ColumnType::Number | ColumnType::Counter, Bson::Int32(n)) => Value::Number(i64::from(*n)),
        (ColumnType::Boolean, Bson::Boolean(v)) => Value::Boolean(*v),
        (ColumnType::TimeUuid, Bson::Binary(bin)) if bin.bytes.len() == 24 => {
            Value::Uuid(uuid::Uuid::from_slice(&bin.bytes[8..]).map_err(|_| bad())?)
        }
        (ColumnType::Uuid, Bson::Binary(bin)) => {
            Value::Uuid(uuid::Uuid::from_slice(&bin.bytes).map_err(|_| bad())?)
        }
        (ColumnType::Blob, Bson::Binary(bin)) => Value::Blob(bin.bytes.clone()),
        _ => return Err(bad()),
    })
}

fn col_type(schema: &TableSchema, c: &str) -> BackendResult<ColumnType> {
    schema.column_type(c).ok_or_else(|| {
        BackendError::InvalidQuery(format!("unknown column `{c}` in table `{}`", schema.name))
    })
}

fn row_from_doc(schema: &TableSchema, d: &Document) -> BackendResult<Row> {
    let mut row = Row::new();
    for c in &schema.columns {
        if let Some(b) = d.get(&c.name) {
            let v = from_bson(&c.name, c.column_type, b)?;
            if v != Value::Null {
                row.insert(c.name.clone(), v);
            }
        }
    }
    Ok(row)
}

fn key_filter(schema: &TableSchema, key: &Row) -> BackendResult<Document> {
    let mut f = Document::new();
    for k in schema.primary_key() {
        let v = match key.get(k) {
            Some(Value::Null) | None => {
                return Err(BackendError::InvalidQuery(format!(
                    "key column `{k}` has no value"
                )));
            }
            Some(v) => v,
        };
        f.insert(k, to_bson(col_type(schema, k)?, v));
    }
    Ok(f)
}

/// Sort fields (name, +1/-1) of a query, before reversal.
fn sort_fields(schema: &TableSchema, shape: QueryShape, query: &Query) -> Vec<(String, i32)> {
    let mut fields = Vec::new();
    if shape == QueryShape::Index
        && let Some(f) = query.filters.first()
    {
        fields.push((f.column.clone(), 1));
    }
    for p in &schema.partition_key {
        fields.push((p.clone(), 1));
    }
    if let Some(f) = query.local_filter(schema) {
        fields.push((local_field(f), 1));
    }
    for (c, o) in &schema.clustering {
        if !fields.iter().any(|(n, _)| n == c) {
            fields.push((c.clone(), if *o == Order::Desc { -1 } else { 1 }));
        }
    }
    fields
}

/// The field a local filter reads: the column, or the derived lowercase column of a prefix search.
fn local_field(f: &super::Filter) -> String {
    match f.op {
        FilterOp::Prefix(_) => super::search_column(&f.column),
        _ => f.column.clone(),
    }
}

/// `^` and `text` with every regex metacharacter escaped.
fn anchored_regex(text: &str) -> String {
    let mut r = String::with_capacity(text.len() + 8);
    r.push('^');
    for c in text.chars() {
        if "\\^$.|?*+()[]{}-/#&~ ".contains(c) {
            r.push('\\');
        }
        r.push(c);
    }
    r
}

/// Rows that have not expired at `now_ms`.
fn live_condition(now_ms: i64) -> Document {
    let now = bson::DateTime::from_millis(now_ms);
    doc! { "$or": [ { EXPIRES_FIELD: { "$exists": false } }, { EXPIRES_FIELD: { "$gt": now } } ] }
}

fn filter_doc(schema: &TableSchema, query: &Query) -> BackendResult<Document> {
    let mut conds = vec![live_condition(super::now_ms())];
    for f in &query.filters {
        if let FilterOp::Prefix(p) = &f.op {
            let field = super::search_column(&f.column);
            conds.push(doc! { field: { "$regex": anchored_regex(p) } });
            continue;
        }
        let t = col_type(schema, &f.column)?;
        let cond = match &f.op {
            FilterOp::Eq(v) => doc! { f.column.as_str(): to_bson(t, v) },
            FilterOp::In(vs) => {
                let arr: Vec<Bson> = vs.iter().map(|v| to_bson(t, v)).collect();
                doc! { f.column.as_str(): { "$in": arr } }
            }
            FilterOp::Lt(v) => doc! { f.column.as_str(): { "$lt": to_bson(t, v) } },
            FilterOp::Le(v) => doc! { f.column.as_str(): { "$lte": to_bson(t, v) } },
            FilterOp::Gt(v) => doc! { f.column.as_str(): { "$gt": to_bson(t, v) } },
            FilterOp::Ge(v) => doc! { f.column.as_str(): { "$gte": to_bson(t, v) } },
            FilterOp::Prefix(_) => continue,
        };
        conds.push(cond);
    }
    Ok(match conds.len() {
        0 => Document::new(),
        _ => doc! { "$and": conds },
    })
}

fn decode_token(
    token: &PageToken,
    reversed: bool,
    chunked: bool,
    fields: &[(String, i32)],
) -> BackendResult<(usize, Document)> {
    let bad = |m: &str| BackendError::InvalidPageToken(m.into());
    let (flag, rest) = token.0.split_first().ok_or_else(|| bad("empty token"))?;
    if *flag > 1 || (chunked && *flag != u8::from(reversed)) {
        return Err(bad(
            "the token was made for the opposite order of a query split in IN chunks",
        ));
    }
    if rest.len() < 4 {
        return Err(bad("not a token of the MongoDB backend"));
    }
    let (chunk, body) = rest.split_at(4);
    let chunk = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
    let d = Document::from_reader(body).map_err(|_| bad("not a token of the MongoDB backend"))?;
    if fields.iter().any(|(n, _)| !d.contains_key(n)) || d.len() != fields.len() {
        return Err(bad("the token belongs to another query"));
    }
    Ok((chunk, d))
}

/// The query split into chunks along the first non-equality sort field, if it has a long `In` list (see
/// [`MongoBackend::query_impl`]); otherwise the query itself.
fn chunked_queries(
    schema: &TableSchema,
    query: &Query,
    fields: &[(String, i32)],
) -> BackendResult<Vec<Query>> {
    for (name, dir) in fields {
        let ops: Vec<&FilterOp> = query.filters_on(name).collect();
        match ops.as_slice() {
            [FilterOp::Eq(_)] => continue,
            [FilterOp::In(values)] if values.len() > IN_CHUNK_VALUES => {
                let t = col_type(schema, name)?;
                let mut sorted: Vec<Value> = values.clone();
                sorted.sort_by(|a, b| a.cmp_as(b, t));
                sorted.dedup();
                if *dir < 0 {
                    sorted.reverse();
                }
                return Ok(sorted
                    .chunks(IN_CHUNK_VALUES)
                    .map(|chunk| {
                        let mut q = query.clone();
                        for f in &mut q.filters {
                            if f.column == *name {
                                f.op = FilterOp::In(chunk.to_vec());
                            }
                        }
                        q
                    })
                    .collect());
            }
            _ => break,
        }
    }
    Ok(vec![query.clone()])
}

/// `(k1 > v1) or (k1 = v1 and k2 > v2) or ...` with each comparison following its field's direction.
fn after_condition(fields: &[(String, i32)], last: &Document) -> Document {
    let mut alternatives = Vec::new();
    for i in 0..fields.len() {
        let mut clause = Document::new();
        for (name, _) in &fields[..i] {
            clause.insert(name.as_str(), last.get(name).cloned().unwrap_or(Bson::Null));
        }
        let (name, dir) = &fields[i];
        let op = if *dir > 0 { "$gt" } else { "$lt" };
        clause.insert(
            name.as_str(),
            doc! { op: last.get(name).cloned().unwrap_or(Bson::Null) },
        );
        alternatives.push(Bson::Document(clause));
    }
    doc! { "$or": alternatives }
}

impl MongoBackend {
    async fn ensure_schema_impl(&self, schema: &TableSchema) -> BackendResult<()> {
        let meta: Collection<Document> = self.db.collection(SCHEMA_COLLECTION);
        let stored = meta
            .find_one(doc! { "_id": schema.name.as_str() })
            .await
            .map_err(mongo_err)?;
        let mut merged = match stored {
            None => schema.clone(),
            Some(d) => {
                let json = d.get_str("schema").map_err(|_| {
                    BackendError::Data(format!("stored schema of `{}` is malformed", schema.name))
                })?;
                let old: TableSchema = serde_json::from_str(json).map_err(|e| {
                    BackendError::Data(format!("stored schema of `{}`: {e}", schema.name))
                })?;
                super::embedded::check_compatible(&old, schema)?;
                let mut m = old;
                for c in &schema.columns {
                    if m.column(&c.name).is_none() {
                        m.columns.push(c.clone());
                    }
                }
                for i in &schema.indexes {
                    if !m.indexes.contains(i) {
                        m.indexes.push(i.clone());
                    }
                }
                for i in &schema.local_indexes {
                    if !m.local_indexes.contains(i) {
                        m.local_indexes.push(i.clone());
                    }
                }
                for i in &schema.search {
                    if !m.search.contains(i) {
                        m.search.push(i.clone());
                    }
                }
                m
            }
        };
        merged.name = schema.name.clone();
        let coll = self.coll(schema);
        let mut keys = Document::new();
        for (name, dir) in sort_fields(schema, QueryShape::Key, &Query::default()) {
            keys.insert(name, dir);
        }
        let pk = IndexModel::builder()
            .keys(keys)
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .name("shardcast_pk".to_string())
                    .build(),
            )
            .build();
        coll.create_index(pk).await.map_err(mongo_err)?;
        for column in &merged.indexes {
            let model = IndexModel::builder()
                .keys(doc! { column.as_str(): 1 })
                .options(
                    IndexOptions::builder()
                        .name(format!("shardcast_idx_{column}"))
                        .build(),
                )
                .build();
            coll.create_index(model).await.map_err(mongo_err)?;
        }
        let locals = merged
            .local_indexes
            .iter()
            .map(|c| (c.clone(), c.clone()))
            .chain(
                merged
                    .search
                    .iter()
                    .map(|c| (c.clone(), super::search_column(c))),
            );
        for (name, field) in locals {
            let mut keys = Document::new();
            for p in &merged.partition_key {
                keys.insert(p.as_str(), 1);
            }
            keys.insert(field.as_str(), 1);
            for (c, o) in &merged.clustering {
                keys.insert(c.as_str(), if *o == Order::Desc { -1 } else { 1 });
            }
            let model = IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(format!("shardcast_local_{name}"))
                        .build(),
                )
                .build();
            coll.create_index(model).await.map_err(mongo_err)?;
        }
        let ttl = IndexModel::builder()
            .keys(doc! { EXPIRES_FIELD: 1 })
            .options(
                IndexOptions::builder()
                    .name("shardcast_ttl".to_string())
                    .expire_after(Duration::from_secs(0))
                    .build(),
            )
            .build();
        coll.create_index(ttl).await.map_err(mongo_err)?;
        let json = serde_json::to_string(&merged).map_err(|e| BackendError::Data(e.to_string()))?;
        meta.update_one(
            doc! { "_id": schema.name.as_str() },
            doc! { "$set": { "schema": json } },
        )
        .upsert(true)
        .await
        .map_err(mongo_err)?;
        Ok(())
    }

    /// Runs a query as a sequence of "chunks": when the first non-equality sort field has an `In` list longer than
    /// [`IN_CHUNK_VALUES`], its values are sorted in the field's direction and split, and the chunks are queried in
    /// order (a long `$in` is much slower than several short ones on some servers). Each chunk is sorted and paged by
    /// keyset; the token holds the chunk index and the sort-key values of the last returned row.
    async fn query_impl(&self, schema: &TableSchema, query: &Query) -> BackendResult<Page> {
        let shape = query.shape(schema);
        let mut fields = sort_fields(schema, shape, query);
        if query.reversed {
            for f in &mut fields {
                f.1 = -f.1;
            }
        }
        let chunks = chunked_queries(schema, query, &fields)?;
        let (first_chunk, mut after) = match &query.page_token {
            Some(token) => {
                let (i, last) = decode_token(token, query.reversed, chunks.len() > 1, &fields)?;
                if i >= chunks.len() {
                    return Err(BackendError::InvalidPageToken(
                        "the token belongs to another query".into(),
                    ));
                }
                (i, Some(last))
            }
            None => (0, None),
        };
        let mut sort = Document::new();
        for (n, d) in &fields {
            sort.insert(n.as_str(), *d);
        }
        let limit = query.limit.max(1) as usize;
        let mut docs: Vec<(usize, Document)> = Vec::new();
        let mut more = false;
        for (i, chunk) in chunks.iter().enumerate().skip(first_chunk) {
            let mut filter = filter_doc(schema, chunk)?;
            if let Some(last) = after.take() {
                let cond = after_condition(&fields, &last);
                filter = if filter.is_empty() {
                    cond
                } else {
                    doc! { "$and": [filter, cond] }
                };
            }
            let wanted = limit + 1 - docs.len();
            let mut cursor = self
                .coll(schema)
                .find(filter)
                .sort(sort.clone())
                .limit(wanted as i64)
                .await
                .map_err(mongo_err)?;
            while cursor.advance().await.map_err(mongo_err)? {
                let d: Document = cursor.deserialize_current().map_err(mongo_err)?;
                docs.push((i, d));
            }
            if docs.len() > limit {
                more = true;
                break;
            }
        }
        docs.truncate(limit);
        let mut rows = Vec::with_capacity(docs.len());
        for (_, d) in &docs {
            rows.push(row_from_doc(schema, d)?);
        }
        let next = match (more, docs.last()) {
            (true, Some((chunk, last))) => {
                let mut t = Document::new();
                for (n, _) in &fields {
                    t.insert(n.as_str(), last.get(n).cloned().unwrap_or(Bson::Null));
                }
                let mut bytes = vec![u8::from(query.reversed)];
                bytes.extend_from_slice(&(*chunk as u32).to_be_bytes());
                t.to_writer(&mut bytes)
                    .map_err(|e| BackendError::Data(e.to_string()))?;
                Some(PageToken(bytes))
            }
            _ => None,
        };
        Ok(Page { rows, next })
    }

    /// Upserts in batches of [`UPSERT_BATCH_ROWS`] statements per `update` command (one round trip per batch),
    /// ordered, stopping at the first write error, which is returned.
    async fn upsert_all_impl(&self, schema: &TableSchema, rows: Vec<Row>) -> BackendResult<()> {
        self.upsert_expiring(schema, rows, None).await
    }

    /// Upserts like [`MongoBackend::upsert_all_impl`]; with `Some(expiry)` (`Some(None)`: none) also sets (removes)
    /// the row's `_expires_at`.
    async fn upsert_expiring(
        &self,
        schema: &TableSchema,
        rows: Vec<Row>,
        expiry: Option<Option<bson::DateTime>>,
    ) -> BackendResult<()> {
        for chunk in rows.chunks(UPSERT_BATCH_ROWS) {
            let mut updates = Vec::with_capacity(chunk.len());
            for row in chunk {
                let (q, mut u) = upsert_statement(schema, row)?;
                match expiry {
                    Some(Some(at)) => {
                        if let Ok(set) = u.get_document_mut("$set") {
                            set.insert(EXPIRES_FIELD, at);
                        }
                    }
                    Some(None) => {
                        let mut unset = u.get_document("$unset").cloned().unwrap_or_default();
                        unset.insert(EXPIRES_FIELD, "");
                        u.insert("$unset", unset);
                    }
                    None => {}
                }
                updates.push(doc! { "q": q, "u": u, "upsert": true, "multi": false });
            }
            let command =
                doc! { "update": schema.name.as_str(), "updates": updates, "ordered": true };
            let reply = self.db.run_command(command).await.map_err(mongo_err)?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(first) = errors.first()
            {
                return Err(BackendError::Database(format!(
                    "MongoDB write error ({} of {} rows in the batch failed): {first}",
                    errors.len(),
                    chunk.len()
                )));
            }
            if let Ok(e) = reply.get_document("writeConcernError") {
                return Err(BackendError::Database(format!(
                    "MongoDB write concern error: {e}"
                )));
            }
        }
        Ok(())
    }

    async fn upsert_impl(&self, schema: &TableSchema, row: Row) -> BackendResult<()> {
        let (filter, update) = upsert_statement(schema, &row)?;
        self.coll(schema)
            .update_one(filter, update)
            .upsert(true)
            .await
            .map_err(mongo_err)?;
        Ok(())
    }
}

/// Whether `e` is MongoDB's duplicate-key error (code 11000, `E11000 duplicate key error ...`).
fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    use mongodb::error::WriteFailure;
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .is_some_and(|w| w.iter().any(|w| w.code == 11000)),
        _ => e.to_string().contains("E11000"),
    }
}

impl MongoBackend {
    /// `insert_one` of the row's non-null columns; the unique `shardcast_pk` index turns a taken key into E11000.
    async fn insert_impl(&self, schema: &TableSchema, row: Row) -> BackendResult<bool> {
        let mut document = Document::new();
        for k in schema.primary_key() {
            if matches!(row.get(k), None | Some(Value::Null)) {
                return Err(BackendError::InvalidQuery(format!(
                    "key column `{k}` has no value"
                )));
            }
        }
        for (c, v) in &row {
            if *v != Value::Null {
                document.insert(c.as_str(), to_bson(col_type(schema, c)?, v));
            }
        }
        match self.coll(schema).insert_one(document).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(mongo_err(e)),
        }
    }
}

/// The filter and update document of an upsert of `row`.
fn upsert_statement(schema: &TableSchema, row: &Row) -> BackendResult<(Document, Document)> {
    let filter = key_filter(schema, row)?;
    let mut set = Document::new();
    let mut unset = Document::new();
    for (c, v) in row {
        let t = col_type(schema, c)?;
        if *v == Value::Null {
            unset.insert(c.as_str(), "");
        } else {
            set.insert(c.as_str(), to_bson(t, v));
        }
    }
    let mut update = doc! { "$set": set };
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    Ok((filter, update))
}

impl Backend for MongoBackend {
    fn name(&self) -> &'static str {
        "mongo"
    }

    fn ensure_schema<'a>(&'a self, schema: &'a TableSchema) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.ensure_schema_impl(schema))
    }

    fn get<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Row>>> {
        Box::pin(async move {
            let filter =
                doc! { "$and": [key_filter(schema, key)?, live_condition(super::now_ms())] };
            match self
                .coll(schema)
                .find_one(filter)
                .await
                .map_err(mongo_err)?
            {
                Some(d) => Ok(Some(row_from_doc(schema, &d)?)),
                None => Ok(None),
            }
        })
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

    fn upsert_all<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(self.upsert_all_impl(schema, rows))
    }

    fn upsert_ttl<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
        ttl_seconds: Option<u32>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        let expiry = ttl_seconds.map(|s| {
            bson::DateTime::from_millis(super::now_ms().saturating_add(i64::from(s) * 1000))
        });
        Box::pin(self.upsert_expiring(schema, rows, Some(expiry)))
    }

    fn patch<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        columns: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(async move {
            let filter =
                doc! { "$and": [key_filter(schema, key)?, live_condition(super::now_ms())] };
            let mut set = Document::new();
            let mut unset = Document::new();
            for (c, v) in &columns {
                if schema.is_key(c) {
                    return Err(BackendError::InvalidQuery(format!(
                        "a patch cannot write key column `{c}`"
                    )));
                }
                let t = col_type(schema, c)?;
                if *v == Value::Null {
                    unset.insert(c.as_str(), "");
                } else {
                    set.insert(c.as_str(), to_bson(t, v));
                }
            }
            let mut update = Document::new();
            if !set.is_empty() {
                update.insert("$set", set);
            }
            if !unset.is_empty() {
                update.insert("$unset", unset);
            }
            if update.is_empty() {
                return Ok(false);
            }
            let r = self
                .coll(schema)
                .update_one(filter, update)
                .await
                .map_err(mongo_err)?;
            Ok(r.matched_count > 0)
        })
    }

    fn insert<'a>(
        &'a self,
        schema: &'a TableSchema,
        row: Row,
    ) -> BoxFuture<'a, BackendResult<bool>> {
        Box::pin(self.insert_impl(schema, row))
    }

    fn delete<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<()>> {
        Box::pin(async move {
            let filter = key_filter(schema, key)?;
            self.coll(schema)
                .delete_one(filter)
                .await
                .map_err(mongo_err)?;
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
        Box::pin(async move {
            if schema.column_type(column) != Some(ColumnType::Counter) {
                return Err(BackendError::InvalidQuery(format!(
                    "`{column}` is not a counter column"
                )));
            }
            let filter = key_filter(schema, key)?;
            self.coll(schema)
                .update_one(filter, doc! { "$inc": { column: delta } })
                .upsert(true)
                .await
                .map_err(mongo_err)?;
            Ok(())
        })
    }

    fn raw_row<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Vec<u8>>>> {
        Box::pin(async move {
            let filter = key_filter(schema, key)?;
            match self
                .coll(schema)
                .find_one(filter)
                .await
                .map_err(mongo_err)?
            {
                Some(d) => {
                    let mut bytes = Vec::new();
                    d.to_writer(&mut bytes)
                        .map_err(|e| BackendError::Data(e.to_string()))?;
                    Ok(Some(bytes))
                }
                None => Ok(None),
            }
        })
    }
}
