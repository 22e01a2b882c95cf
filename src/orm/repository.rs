//! `Repository<E>`: typed access to the rows of one entity, through the IO shard.
//!
//! Every method returns a future that works on any executor (glommio shards, `futures_lite::future::block_on`, tokio):
//! the work runs on the IO shard and the answer wakes the caller.
//!
//! Queries are validated here, before anything reaches a backend, so all backends receive the same three query shapes
//! (see [`crate::orm::backend::Query`]) and a filter the backends could only answer by scanning is refused with an
//! [`OrmError::InvalidFilter`] that says what is allowed.

use std::marker::PhantomData;
use std::sync::Arc;

use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value as Json};

use super::backend::{
    Backend, BackendError, Filter, FilterOp, Page, PageToken, Query, Row, Value, now_ms,
    search_column,
};
use super::config::OrmConfig;
use super::crypto::{Cipher, CryptoError};
use super::entity::{
    Entity, EntitySchema, FieldDef, FieldType, HookContext, HookError, SchemaError, ttl_seconds,
};
use super::io_shard::IoHandle;

const TOKEN_ENGINE: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Errors of the ORM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OrmError {
    /// The entity declaration is invalid.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The filter is not supported by the entity's keys and indexes (the message says what is).
    #[error("invalid filter on `{table}`: {message}")]
    InvalidFilter {
        /// Table name.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// An entity value does not fit its declared column type, or a stored row does not fit the entity struct.
    #[error("invalid value for entity `{table}`: {message}")]
    InvalidEntity {
        /// Table name.
        table: String,
        /// What is wrong.
        message: String,
    },
    /// Encryption or decryption failed (wrong key, corrupt data, missing key).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The configuration is invalid.
    #[error("invalid ORM configuration: {0}")]
    Config(String),
    /// The backend failed (including [`BackendError::Unavailable`]).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A hook of the entity refused the write (nothing was written).
    #[error("{hook} hook of `{table}` refused the write: {message}")]
    Hook {
        /// Table name.
        table: String,
        /// `before_insert`, `before_upsert` or `before_update`.
        hook: &'static str,
        /// The hook's message.
        message: String,
    },
}

impl OrmError {
    /// Whether the database (or the IO shard) is unavailable right now; retrying later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, OrmError::Backend(BackendError::Unavailable(_)))
    }
}

/// Result type of the ORM.
pub type OrmResult<T> = Result<T, OrmError>;

/// What every repository shares: the IO shard handle, the cipher and the page limits. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Orm {
    io: IoHandle,
    cipher: Option<Arc<Cipher>>,
    page_rows_max: u32,
    page_rows_default: u32,
}

impl Orm {
    /// An ORM over the IO shard `io`, with the encryption key and page limits of `config`.
    pub fn new(io: IoHandle, config: &OrmConfig) -> OrmResult<Orm> {
        let cipher = match &config.encryption_key {
            Some(k) => Some(Arc::new(Cipher::new(&Cipher::parse_key(k)?)?)),
            None => None,
        };
        if config.page_rows_max == 0
            || config.page_rows_default == 0
            || config.page_rows_default > config.page_rows_max
        {
            return Err(OrmError::Config(format!(
                "page_rows_default ({}) must be between 1 and page_rows_max ({})",
                config.page_rows_default, config.page_rows_max
            )));
        }
        Ok(Orm {
            io,
            cipher,
            page_rows_max: config.page_rows_max,
            page_rows_default: config.page_rows_default,
        })
    }

    /// The IO shard handle.
    pub fn io(&self) -> &IoHandle {
        &self.io
    }
}

/// A restriction in a [`Find`], with its value already turned into JSON (or the serialization error).
#[derive(Debug, Clone)]
enum Op {
    Eq(Json),
    In(Vec<Json>),
    Lt(Json),
    Le(Json),
    Gt(Json),
    Ge(Json),
    Prefix(String),
}

/// A query: filters, order, page size and page token. Built with chained calls:
/// `Find::new().eq("channel_id", id).gt("id", since).reversed().limit(50)`.
#[derive(Debug, Clone, Default)]
pub struct Find {
    filters: Vec<(String, Op)>,
    errors: Vec<String>,
    reversed: bool,
    limit: Option<u32>,
    page_token: Option<String>,
}

impl Find {
    /// A query with no filters (every row; only in the backend's order, not reversed).
    pub fn new() -> Self {
        Self::default()
    }

    fn json(&mut self, column: &str, v: impl Serialize) -> Json {
        serde_json::to_value(v).unwrap_or_else(|e| {
            self.errors
                .push(format!("value for `{column}` does not serialize: {e}"));
            Json::Null
        })
    }

    fn push(mut self, column: &str, op: impl FnOnce(&mut Self) -> Op) -> Self {
        let op = op(&mut self);
        self.filters.push((column.to_string(), op));
        self
    }

    /// `column = value` (partition key, clustering or indexed columns).
    pub fn eq(self, column: &str, value: impl Serialize) -> Self {
        self.push(column, |s| Op::Eq(s.json(column, value)))
    }

    /// `column IN (values)` (partition key, clustering or indexed columns); any number of values.
    pub fn is_in<V: Serialize>(self, column: &str, values: impl IntoIterator<Item = V>) -> Self {
        self.push(column, |s| {
            Op::In(values.into_iter().map(|v| s.json(column, v)).collect())
        })
    }

    /// `column < value` (clustering columns).
    pub fn lt(self, column: &str, value: impl Serialize) -> Self {
        self.push(column, |s| Op::Lt(s.json(column, value)))
    }

    /// `column <= value` (clustering columns).
    pub fn le(self, column: &str, value: impl Serialize) -> Self {
        self.push(column, |s| Op::Le(s.json(column, value)))
    }

    /// `column > value` (clustering columns).
    pub fn gt(self, column: &str, value: impl Serialize) -> Self {
        self.push(column, |s| Op::Gt(s.json(column, value)))
    }

    /// `column >= value` (clustering columns).
    pub fn ge(self, column: &str, value: impl Serialize) -> Self {
        self.push(column, |s| Op::Ge(s.json(column, value)))
    }

    /// Case-insensitive prefix match on search column `column` (declared with `.search(column)`), within the
    /// partition(s) the query restricts. The text must not be empty.
    pub fn prefix(self, column: &str, text: &str) -> Self {
        let text = text.to_string();
        self.push(column, |_| Op::Prefix(text))
    }

    /// Reverse the clustering order (needs the partition key restricted).
    pub fn reversed(mut self) -> Self {
        self.reversed = true;
        self
    }

    /// At most `rows` entities in this page (default `page_rows_default`, at most `page_rows_max`).
    pub fn limit(mut self, rows: u32) -> Self {
        self.limit = Some(rows);
        self
    }

    /// Continue from the `next_page_token` of a previous page of the same query.
    pub fn page_token(mut self, token: Option<String>) -> Self {
        self.page_token = token;
        self
    }
}

/// The primary key of one row, for [`Repository::get`], [`Repository::increment`] and [`Repository::remove_key`].
#[derive(Debug, Clone, Default)]
pub struct Key {
    values: Vec<(String, Json)>,
    errors: Vec<String>,
}

impl Key {
    /// An empty key.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets key column `column`.
    pub fn with(mut self, column: &str, value: impl Serialize) -> Self {
        match serde_json::to_value(value) {
            Ok(v) => self.values.push((column.to_string(), v)),
            Err(e) => self
                .errors
                .push(format!("value for `{column}` does not serialize: {e}")),
        }
        self
    }
}

/// The columns a [`Repository::patch`] writes: `set` gives a column a value, `clear` removes its value. Columns not
/// named keep theirs.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    values: Vec<(String, Json)>,
    errors: Vec<String>,
}

impl Patch {
    /// An empty patch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets column `column` to `value` (a later `set` of the same column wins).
    pub fn set(mut self, column: &str, value: impl Serialize) -> Self {
        self.insert(column, value);
        self
    }

    /// Clears column `column` (it reads as `None` afterwards).
    pub fn clear(self, column: &str) -> Self {
        self.set(column, Json::Null)
    }

    /// Sets `column` in place (for hooks); a value that does not serialize is an error of the patch.
    pub fn insert(&mut self, column: &str, value: impl Serialize) {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.values.retain(|(c, _)| c != column);
                self.values.push((column.to_string(), v));
            }
            Err(e) => self
                .errors
                .push(format!("value for `{column}` does not serialize: {e}")),
        }
    }

    /// Removes `column` from the patch (for hooks).
    pub fn remove(&mut self, column: &str) {
        self.values.retain(|(c, _)| c != column);
    }

    /// The value the patch gives `column`, if it names it.
    pub fn get(&self, column: &str) -> Option<&Json> {
        self.values
            .iter()
            .find(|(c, _)| c == column)
            .map(|(_, v)| v)
    }

    /// The named columns, in order.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(c, _)| c.as_str())
    }

    /// Builds a patch from a JSON object (every member is a column; `null` clears it).
    pub fn from_json(object: Map<String, Json>) -> Self {
        Patch {
            values: object.into_iter().collect(),
            errors: Vec::new(),
        }
    }
}

/// One page of entities.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundPage<E> {
    /// The entities, in the query's order.
    pub entities: Vec<E>,
    /// Opaque token (URL-safe base64) for the next page; `None` when there are no more rows.
    pub next_page_token: Option<String>,
}

/// Typed access to one entity's table. Cheap to clone; `Send + Sync`.
#[derive(Debug)]
pub struct Repository<E> {
    pub(super) orm: Orm,
    pub(super) schema: Arc<EntitySchema>,
    _entity: PhantomData<fn() -> E>,
}

impl<E> Clone for Repository<E> {
    fn clone(&self) -> Self {
        Self {
            orm: self.orm.clone(),
            schema: self.schema.clone(),
            _entity: PhantomData,
        }
    }
}

impl<E: Entity> Repository<E> {
    /// Validates `E`'s schema and creates or extends its table (additive changes only; incompatible changes are
    /// refused with [`BackendError::Schema`]).
    pub async fn open(orm: &Orm) -> OrmResult<Self> {
        let schema = Arc::new(E::schema().build()?);
        if schema.has_encrypted() && orm.cipher.is_none() {
            return Err(OrmError::Config(format!(
                "entity `{}` has encrypted columns but no encryption key is configured (SHARDCAST_ORM_ENCRYPTION_KEY)",
                schema.name()
            )));
        }
        let s = schema.clone();
        orm.io
            .call(move |b| Box::pin(async move { b.ensure_schema(&s.table).await }))
            .await?;
        Ok(Self {
            orm: orm.clone(),
            schema,
            _entity: PhantomData,
        })
    }

    /// The ORM this repository uses (for [`Orm::run`]).
    pub fn orm(&self) -> &Orm {
        &self.orm
    }

    /// The validated schema.
    pub fn schema(&self) -> &EntitySchema {
        &self.schema
    }

    /// One page of the entities matching `find`.
    pub async fn find(&self, find: Find) -> OrmResult<FoundPage<E>> {
        let Some(query) = self.build_query(find)? else {
            return Ok(FoundPage {
                entities: Vec::new(),
                next_page_token: None,
            });
        };
        let s = self.schema.clone();
        let page = self
            .orm
            .io
            .call(move |b| Box::pin(async move { b.query(&s.table, &query).await }))
            .await?;
        self.found_page(page)
    }

    /// A backend page as entities, with its token for the next page.
    pub(super) fn found_page(&self, page: Page) -> OrmResult<FoundPage<E>> {
        let mut entities = Vec::with_capacity(page.rows.len());
        for row in page.rows {
            entities.push(self.entity_of(row)?);
        }
        Ok(FoundPage {
            entities,
            next_page_token: page.next.map(|t| TOKEN_ENGINE.encode(t.0)),
        })
    }

    /// The first entity matching `find` (its limit is set to 1).
    pub async fn find_one(&self, find: Find) -> OrmResult<Option<E>> {
        Ok(self.find(find.limit(1)).await?.entities.into_iter().next())
    }

    /// The entity with primary key `key`.
    pub async fn get(&self, key: Key) -> OrmResult<Option<E>> {
        let key = self.key_row(key)?;
        let s = self.schema.clone();
        let row = self
            .orm
            .io
            .call(move |b| Box::pin(async move { b.get(&s.table, &key).await }))
            .await?;
        row.map(|r| self.entity_of(r)).transpose()
    }

    /// Inserts or replaces `entity`: **full replace**, every declared column is written and `None` fields clear their
    /// column (use [`Repository::patch`] to write only some columns). Generated keys that are absent are filled in,
    /// the entity's `before_upsert` hook runs (on the IO shard, inside the write), and the saved entity is returned.
    /// The row expires after the entity's default TTL, if it declares one; an earlier expiry is replaced.
    pub async fn save(&self, entity: E) -> OrmResult<E> {
        let mut saved = self.save_all(vec![entity]).await?;
        saved
            .pop()
            .ok_or_else(|| self.invalid("save returned nothing".into()))
    }

    /// Saves several entities (one batch; not atomic: on error some may be written), like [`Repository::save`].
    pub async fn save_all(&self, entities: Vec<E>) -> OrmResult<Vec<E>> {
        self.save_rows(entities, self.schema.ttl_seconds).await
    }

    /// Like [`Repository::save`], with this write's TTL instead of the entity's default: `Some(ttl)` expires the row
    /// `ttl` from now (rounded up to whole seconds, 1 s to 20 years), `None` makes it never expire.
    pub async fn save_with_ttl(&self, entity: E, ttl: Option<std::time::Duration>) -> OrmResult<E> {
        let ttl = match ttl {
            None => None,
            Some(d) => Some(ttl_seconds(d).ok_or_else(|| {
                self.invalid(format!(
                    "ttl {d:?} must be between 1 second and {} seconds",
                    super::backend::TTL_SECONDS_MAX
                ))
            })?),
        };
        let mut saved = self.save_rows(vec![entity], ttl).await?;
        saved
            .pop()
            .ok_or_else(|| self.invalid("save returned nothing".into()))
    }

    async fn save_rows(&self, entities: Vec<E>, ttl: Option<u32>) -> OrmResult<Vec<E>> {
        self.check_saveable()?;
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let repo = self.clone();
        self.orm
            .io
            .call(move |b| {
                Box::pin(async move {
                    match repo.save_rows_on(&*b, entities, ttl).await {
                        // Backend errors surface to the IO shard's health tracking.
                        Err(OrmError::Backend(e)) => Err(e),
                        r => Ok(r),
                    }
                })
            })
            .await?
    }

    /// The work of [`Repository::save_all`] on the IO thread: hooks, key generation, mapping, one backend upsert.
    pub(super) async fn save_rows_on(
        &self,
        b: &dyn Backend,
        entities: Vec<E>,
        ttl: Option<u32>,
    ) -> OrmResult<Vec<E>> {
        self.check_saveable()?;
        if entities.is_empty() {
            return Ok(Vec::new());
        }
        let ctx = HookContext { now_ms: now_ms() };
        let mut rows = Vec::with_capacity(entities.len());
        let mut saved = Vec::with_capacity(entities.len());
        for mut e in entities {
            if let Err(err) = e.before_upsert(&ctx) {
                return Err(self.hook_error("before_upsert", err));
            }
            let (row, entity) = self.saved_row(&e)?;
            rows.push(row);
            saved.push(entity);
        }
        b.upsert_ttl(&self.schema.table, rows, ttl).await?;
        Ok(saved)
    }

    fn check_saveable(&self) -> OrmResult<()> {
        if self.schema.table.is_counter_table() {
            return Err(self.invalid(
                "this entity has counters: change them with `increment`, not `save`".into(),
            ));
        }
        Ok(())
    }

    fn saved_row(&self, e: &E) -> OrmResult<(Row, E)> {
        let (row, obj) = self.to_row(e, true)?;
        let entity = serde_json::from_value(Json::Object(obj)).map_err(|err| {
            self.invalid(format!(
                "entity does not deserialize after key generation: {err}"
            ))
        })?;
        Ok((row, entity))
    }

    fn hook_error(&self, hook: &'static str, e: HookError) -> OrmError {
        OrmError::Hook {
            table: self.schema.name().to_string(),
            hook,
            message: e.0,
        }
    }

    /// Writes only the columns named in `patch` of the row with primary key `key` (Cassandra: an `UPDATE` of those
    /// columns; MongoDB: `$set`/`$unset`; embedded: read-modify-write in one transaction). The entity's
    /// `before_update` hook runs first (on the IO shard) and may change the patch. Columns not named keep their
    /// value, and the row keeps its expiry. Returns the entity as read right after the write, or `None` (nothing
    /// written) when no such row exists.
    pub async fn patch(&self, key: Key, patch: Patch) -> OrmResult<Option<E>> {
        if self.schema.table.is_counter_table() {
            return Err(self.invalid(
                "this entity has counters: change them with `increment`, not `patch`".into(),
            ));
        }
        let key = self.key_row(key)?;
        let repo = self.clone();
        let found = self
            .orm
            .io
            .call(move |b| {
                Box::pin(async move {
                    let mut patch = patch;
                    let ctx = HookContext { now_ms: now_ms() };
                    if let Err(err) = E::before_update(&mut patch, &ctx) {
                        return Ok(Err(repo.hook_error("before_update", err)));
                    }
                    let columns = match repo.patch_row(&patch) {
                        Ok(c) => c,
                        Err(err) => return Ok(Err(err)),
                    };
                    let t = &repo.schema.table;
                    if !b.patch(t, &key, columns).await? {
                        return Ok(Ok(None));
                    }
                    Ok(Ok(b.get(t, &key).await?))
                })
            })
            .await??;
        found.map(|r| self.entity_of(r)).transpose()
    }

    fn patch_row(&self, patch: &Patch) -> OrmResult<Row> {
        if let Some(e) = patch.errors.first() {
            return Err(self.invalid(e.clone()));
        }
        if patch.values.is_empty() {
            return Err(self.invalid("a patch must name at least one column".into()));
        }
        let mut row = Row::new();
        for (c, j) in &patch.values {
            let f = self
                .schema
                .field(c)
                .ok_or_else(|| self.invalid(format!("field `{c}` is not a declared column")))?;
            if self.schema.table.is_key(c) {
                return Err(self.invalid(format!(
                    "`{c}` is a primary key column; a patch cannot change keys"
                )));
            }
            if f.field_type == FieldType::Counter {
                return Err(self.invalid(format!("`{c}` is a counter: use `increment`")));
            }
            let v = self.to_value(f, j)?;
            if self.schema.table.search.contains(c) {
                row.insert(search_column(c), lowercase_of(&v));
            }
            row.insert(c.clone(), v);
        }
        Ok(row)
    }

    /// Creates `entity` only if no row has its primary key, atomically on every backend (embedded: one write
    /// transaction; MongoDB: the unique primary-key index; CQL: `INSERT ... IF NOT EXISTS`): of concurrent inserts of
    /// one key exactly one gets `Some`. Generated keys that are absent are filled in. `Some(entity as stored)` if this
    /// call created the row, `None` if the key was taken (nothing written). `None` fields are not written.
    pub async fn insert(&self, entity: E) -> OrmResult<Option<E>> {
        if self.schema.table.is_counter_table() {
            return Err(self.invalid(
                "this entity has counters: change them with `increment`, not `insert`".into(),
            ));
        }
        let repo = self.clone();
        self.orm
            .io
            .call(move |b| {
                Box::pin(async move {
                    let mut e = entity;
                    let ctx = HookContext { now_ms: now_ms() };
                    if let Err(err) = e.before_insert(&ctx) {
                        return Ok(Err(repo.hook_error("before_insert", err)));
                    }
                    let (row, saved) = match repo.saved_row(&e) {
                        Ok(v) => v,
                        Err(err) => return Ok(Err(err)),
                    };
                    let created = b.insert(&repo.schema.table, row).await?;
                    Ok(Ok(created.then_some(saved)))
                })
            })
            .await?
    }

    /// Removes the row of `entity` (by its primary key). Removing an absent row is not an error.
    pub async fn remove(&self, entity: &E) -> OrmResult<()> {
        let (row, _) = self.to_row(entity, false)?;
        let key: Row = self
            .schema
            .table
            .primary_key()
            .filter_map(|k| row.get_key_value(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.remove_row(key).await
    }

    /// Removes the row with primary key `key`.
    pub async fn remove_key(&self, key: Key) -> OrmResult<()> {
        let key = self.key_row(key)?;
        self.remove_row(key).await
    }

    async fn remove_row(&self, key: Row) -> OrmResult<()> {
        self.check_full_key(&key)?;
        let s = self.schema.clone();
        self.orm
            .io
            .call(move |b| Box::pin(async move { b.delete(&s.table, &key).await }))
            .await?;
        Ok(())
    }

    /// Adds `delta` to counter `column` of the row with primary key `key` (created with zero counters if absent).
    pub async fn increment(&self, key: Key, column: &str, delta: i64) -> OrmResult<()> {
        let key = self.counter_key(key, column)?;
        let s = self.schema.clone();
        let column = column.to_string();
        self.orm
            .io
            .call(move |b| {
                Box::pin(async move { b.increment(&s.table, &key, &column, delta).await })
            })
            .await?;
        Ok(())
    }

    /// The raw stored bytes of the row with primary key `key` (tests use it to check encryption at rest).
    pub async fn raw_row(&self, key: Key) -> OrmResult<Option<Vec<u8>>> {
        let key = self.key_row(key)?;
        let s = self.schema.clone();
        Ok(self
            .orm
            .io
            .call(move |b| Box::pin(async move { b.raw_row(&s.table, &key).await }))
            .await?)
    }

    /// `key` as a row, if `column` is a counter column of this entity.
    pub(super) fn counter_key(&self, key: Key, column: &str) -> OrmResult<Row> {
        match self.schema.field(column) {
            Some(f) if f.field_type == FieldType::Counter => {}
            _ => return Err(self.invalid(format!("`{column}` is not a counter column"))),
        }
        self.key_row(key)
    }

    // -----------------------------------------------------------------------------------------------------------
    // Mapping.

    pub(super) fn invalid(&self, message: String) -> OrmError {
        OrmError::InvalidEntity {
            table: self.schema.name().to_string(),
            message,
        }
    }

    fn bad_filter(&self, message: String) -> OrmError {
        OrmError::InvalidFilter {
            table: self.schema.name().to_string(),
            message,
        }
    }

    fn aad(&self, column: &str) -> String {
        format!("{}.{}", self.schema.name(), column)
    }

    fn cipher(&self) -> OrmResult<&Cipher> {
        self.orm.cipher.as_deref().ok_or_else(|| {
            OrmError::Config(
                "encrypted column without an encryption key (SHARDCAST_ORM_ENCRYPTION_KEY)".into(),
            )
        })
    }

    /// JSON value of field `f` -> backend value.
    fn to_value(&self, f: &FieldDef, j: &Json) -> OrmResult<Value> {
        if j.is_null() {
            return Ok(Value::Null);
        }
        let wrong = |what: &str| {
            self.invalid(format!(
                "column `{}` ({:?}) expects {what}, got {j}",
                f.name, f.field_type
            ))
        };
        Ok(match f.field_type {
            FieldType::Text => {
                Value::Text(j.as_str().ok_or_else(|| wrong("a string"))?.to_string())
            }
            FieldType::Json => Value::Text(j.to_string()),
            FieldType::Number | FieldType::Counter => {
                Value::Number(j.as_i64().ok_or_else(|| wrong("a 64-bit integer"))?)
            }
            FieldType::Boolean => Value::Boolean(j.as_bool().ok_or_else(|| wrong("a boolean"))?),
            FieldType::Uuid | FieldType::TimeUuid => {
                let u: uuid::Uuid = j
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| wrong("a UUID string"))?;
                if f.field_type == FieldType::TimeUuid && u.get_version_num() != 1 {
                    return Err(wrong("a version-1 time UUID"));
                }
                Value::Uuid(u)
            }
            FieldType::Blob => {
                let arr = j.as_array().ok_or_else(|| wrong("an array of bytes"))?;
                let bytes: Option<Vec<u8>> = arr
                    .iter()
                    .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect();
                Value::Blob(bytes.ok_or_else(|| wrong("an array of bytes"))?)
            }
            FieldType::EncryptedText => {
                let s = j.as_str().ok_or_else(|| wrong("a string"))?;
                Value::Blob(self.cipher()?.encrypt(
                    &self.aad(&f.name),
                    s.as_bytes(),
                    f.deterministic,
                )?)
            }
            FieldType::EncryptedJson => {
                let s = j.to_string();
                Value::Blob(self.cipher()?.encrypt(
                    &self.aad(&f.name),
                    s.as_bytes(),
                    f.deterministic,
                )?)
            }
        })
    }

    /// Backend value -> JSON value of field `f`.
    fn to_json(&self, f: &FieldDef, v: Option<Value>) -> OrmResult<Json> {
        let corrupt = |what: &str| {
            OrmError::Backend(BackendError::Data(format!(
                "column `{}` of `{}` holds {what}, not a {:?}",
                f.name,
                self.schema.name(),
                f.field_type
            )))
        };
        let v = match v {
            None | Some(Value::Null) if f.field_type == FieldType::Counter => {
                return Ok(Json::from(0));
            }
            None | Some(Value::Null) => return Ok(Json::Null),
            Some(v) => v,
        };
        Ok(match (f.field_type, v) {
            (FieldType::Text, Value::Text(s)) => Json::String(s),
            (FieldType::Json, Value::Text(s)) => {
                serde_json::from_str(&s).map_err(|_| corrupt("invalid JSON"))?
            }
            (FieldType::Number | FieldType::Counter, Value::Number(n)) => Json::from(n),
            (FieldType::Boolean, Value::Boolean(b)) => Json::Bool(b),
            (FieldType::Uuid | FieldType::TimeUuid, Value::Uuid(u)) => {
                Json::String(u.hyphenated().to_string())
            }
            (FieldType::Blob, Value::Blob(b)) => {
                Json::Array(b.into_iter().map(Json::from).collect())
            }
            (FieldType::EncryptedText, Value::Blob(b)) => {
                let plain = self.cipher()?.decrypt(&self.aad(&f.name), &b)?;
                Json::String(String::from_utf8(plain).map_err(|_| corrupt("invalid UTF-8"))?)
            }
            (FieldType::EncryptedJson, Value::Blob(b)) => {
                let plain = self.cipher()?.decrypt(&self.aad(&f.name), &b)?;
                serde_json::from_slice(&plain).map_err(|_| corrupt("invalid JSON"))?
            }
            (_, other) => return Err(corrupt(&format!("{other:?}"))),
        })
    }

    /// Entity -> (row, entity JSON with generated keys filled in).
    fn to_row(&self, entity: &E, generate: bool) -> OrmResult<(Row, Map<String, Json>)> {
        let mut obj = match serde_json::to_value(entity) {
            Ok(Json::Object(m)) => m,
            Ok(other) => {
                return Err(self.invalid(format!(
                    "an entity must serialize to a JSON object, not {other}"
                )));
            }
            Err(e) => return Err(self.invalid(format!("entity does not serialize: {e}"))),
        };
        if let Some(unknown) = obj.keys().find(|k| self.schema.field(k).is_none()) {
            return Err(self.invalid(format!("field `{unknown}` is not a declared column")));
        }
        let mut row = Row::new();
        for f in &self.schema.fields {
            let mut j = obj.get(&f.name).cloned().unwrap_or(Json::Null);
            if j.is_null() && f.generated && generate {
                let u = match f.field_type {
                    FieldType::TimeUuid => uuid::Uuid::now_v1(&node_id()),
                    _ => uuid::Uuid::new_v4(),
                };
                j = Json::String(u.hyphenated().to_string());
                obj.insert(f.name.clone(), j.clone());
            }
            if f.field_type == FieldType::Counter {
                continue;
            }
            let v = self.to_value(f, &j)?;
            if v == Value::Null && self.schema.table.is_key(&f.name) {
                return Err(self.invalid(format!("key column `{}` has no value", f.name)));
            }
            if self.schema.table.search.contains(&f.name) {
                row.insert(search_column(&f.name), lowercase_of(&v));
            }
            row.insert(f.name.clone(), v);
        }
        Ok((row, obj))
    }

    pub(super) fn entity_of(&self, mut row: Row) -> OrmResult<E> {
        let mut obj = Map::new();
        for f in &self.schema.fields {
            obj.insert(f.name.clone(), self.to_json(f, row.remove(&f.name))?);
        }
        serde_json::from_value(Json::Object(obj)).map_err(|e| {
            self.invalid(format!(
                "stored row does not deserialize into the entity: {e}"
            ))
        })
    }

    fn check_full_key(&self, key: &Row) -> OrmResult<()> {
        let t = &self.schema.table;
        for k in t.primary_key() {
            if !matches!(key.get(k), Some(v) if *v != Value::Null) {
                return Err(self.bad_filter(format!(
                    "the key needs every primary key column ({}); `{k}` is missing",
                    t.primary_key().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(())
    }

    pub(super) fn key_row(&self, key: Key) -> OrmResult<Row> {
        if let Some(e) = key.errors.first() {
            return Err(self.bad_filter(e.clone()));
        }
        let mut row = Row::new();
        for (c, j) in &key.values {
            if !self.schema.table.is_key(c) {
                return Err(self.bad_filter(format!("`{c}` is not a primary key column")));
            }
            let f = self
                .schema
                .field(c)
                .ok_or_else(|| self.bad_filter(format!("unknown column `{c}`")))?;
            row.insert(c.clone(), self.to_value(f, j)?);
        }
        self.check_full_key(&row)?;
        Ok(row)
    }

    fn filter_value(&self, column: &str, j: &Json) -> OrmResult<Value> {
        let f = self
            .schema
            .field(column)
            .ok_or_else(|| self.bad_filter(format!("unknown column `{column}`")))?;
        let v = self.to_value(f, j)?;
        if v == Value::Null {
            return Err(self.bad_filter(format!("filter on `{column}` compares with null")));
        }
        Ok(v)
    }

    /// Validates `find` and turns it into a backend query; `None` when it cannot match anything (empty IN list).
    pub(super) fn build_query(&self, find: Find) -> OrmResult<Option<Query>> {
        if let Some(e) = find.errors.first() {
            return Err(self.bad_filter(e.clone()));
        }
        let t = &self.schema.table;
        let limit = find.limit.unwrap_or(self.orm.page_rows_default);
        if limit == 0 || limit > self.orm.page_rows_max {
            return Err(self.bad_filter(format!(
                "limit {limit} must be between 1 and {} (page_rows_max)",
                self.orm.page_rows_max
            )));
        }
        let page_token = match find.page_token {
            Some(s) => Some(PageToken(TOKEN_ENGINE.decode(s.as_bytes()).map_err(
                |_| {
                    OrmError::Backend(BackendError::InvalidPageToken(
                        "not a page token of this ORM".into(),
                    ))
                },
            )?)),
            None => None,
        };
        let mut filters = Vec::with_capacity(find.filters.len());
        let mut empty_in = false;
        for (column, op) in &find.filters {
            if t.column(column).is_none() {
                return Err(self.bad_filter(format!("unknown column `{column}`")));
            }
            let op = match op {
                Op::Eq(j) => FilterOp::Eq(self.filter_value(column, j)?),
                Op::In(js) => {
                    let mut vs = Vec::with_capacity(js.len());
                    for j in js {
                        let v = self.filter_value(column, j)?;
                        if !vs.contains(&v) {
                            vs.push(v);
                        }
                    }
                    empty_in |= vs.is_empty();
                    FilterOp::In(vs)
                }
                Op::Lt(j) => FilterOp::Lt(self.filter_value(column, j)?),
                Op::Le(j) => FilterOp::Le(self.filter_value(column, j)?),
                Op::Gt(j) => FilterOp::Gt(self.filter_value(column, j)?),
                Op::Ge(j) => FilterOp::Ge(self.filter_value(column, j)?),
                Op::Prefix(p) => {
                    if !t.search.contains(column) {
                        return Err(self.bad_filter(format!(
                            "`{column}` is not a search column (declare it with `.search(\"{column}\")`)"
                        )));
                    }
                    if p.is_empty() {
                        return Err(self.bad_filter(format!("the prefix for `{column}` is empty")));
                    }
                    if p.len() > PREFIX_BYTES_MAX {
                        return Err(self.bad_filter(format!(
                            "the prefix for `{column}` is longer than {PREFIX_BYTES_MAX} bytes (prefix_bytes_max)"
                        )));
                    }
                    FilterOp::Prefix(p.to_lowercase())
                }
            };
            filters.push(Filter {
                column: column.clone(),
                op,
            });
        }
        let query = Query {
            filters,
            reversed: find.reversed,
            limit,
            page_token,
        };
        self.check_shape(&query)?;
        Ok(if empty_in { None } else { Some(query) })
    }

    fn check_shape(&self, q: &Query) -> OrmResult<()> {
        let t = &self.schema.table;
        let is_range = |op: &FilterOp| {
            matches!(
                op,
                FilterOp::Lt(_) | FilterOp::Le(_) | FilterOp::Gt(_) | FilterOp::Ge(_)
            )
        };
        for f in &q.filters {
            let local = t.local_indexes.contains(&f.column) || t.search.contains(&f.column);
            if !t.is_key(&f.column) && !t.indexes.contains(&f.column) && !local {
                return Err(self.bad_filter(format!(
                    "column `{}` is neither a key column nor indexed; filtering on it would scan the table (declare \
                     an index on it, or filter on the partition key {:?})",
                    f.column, t.partition_key
                )));
            }
            if is_range(&f.op) && !t.clustering.iter().any(|(c, _)| *c == f.column) {
                return Err(self.bad_filter(format!(
                    "range filters (<, <=, >, >=) are only allowed on clustering columns, not on `{}`",
                    f.column
                )));
            }
        }
        let partition_filtered = q
            .filters
            .iter()
            .any(|f| t.partition_key.contains(&f.column));
        if q.filters.is_empty() || !partition_filtered {
            if q.reversed {
                return Err(self.bad_filter(format!(
                    "reversed order needs every partition key column ({}) restricted by equality or IN",
                    t.partition_key.join(", ")
                )));
            }
            if q.filters.is_empty() {
                return Ok(());
            }
            if let Some(f) = q.filters.iter().find(|f| !t.indexes.contains(&f.column)) {
                return Err(self.bad_filter(format!(
                    "`{}` has a local index or prefix search, which needs every partition key column ({}) \
                     restricted by equality or IN",
                    f.column,
                    t.partition_key.join(", ")
                )));
            }
            return match q.filters.as_slice() {
                [f] if t.indexes.contains(&f.column) && matches!(f.op, FilterOp::Eq(_) | FilterOp::In(_)) => Ok(()),
                [f] if t.indexes.contains(&f.column) => {
                    Err(self.bad_filter(format!("indexed column `{}` supports only equality and IN", f.column)))
                }
                _ => Err(self.bad_filter(format!(
                    "filters on clustering columns need every partition key column ({}) restricted by equality or IN; \
                     without the partition key, exactly one equality or IN filter on one indexed column ({}) is allowed",
                    t.partition_key.join(", "),
                    t.indexes.join(", ")
                ))),
            };
        }
        // Key query.
        for p in &t.partition_key {
            let ops: Vec<&FilterOp> = q.filters_on(p).collect();
            if ops.len() != 1 {
                return Err(self.bad_filter(format!(
                    "every partition key column ({}) needs exactly one equality or IN filter; `{p}` has {}",
                    t.partition_key.join(", "),
                    ops.len()
                )));
            }
        }
        let others: Vec<&Filter> = q.filters.iter().filter(|f| !t.is_key(&f.column)).collect();
        if let Some(f) = others.first() {
            let ok = match &f.op {
                FilterOp::Eq(_) => t.local_indexes.contains(&f.column),
                FilterOp::Prefix(_) => t.search.contains(&f.column),
                _ => false,
            };
            if !ok || others.len() > 1 {
                return Err(self.bad_filter(format!(
                    "besides the partition key, a query may filter on one column with a local index ({}) by \
                     equality, or on one search column ({}) by prefix; a global index (`{}`) cannot be combined with \
                     partition key filters",
                    t.local_indexes.join(", "),
                    t.search.join(", "),
                    f.column
                )));
            }
            if q.filters
                .iter()
                .any(|g| t.clustering.iter().any(|(c, _)| *c == g.column))
            {
                return Err(self.bad_filter(format!(
                    "a local index or prefix filter (`{}`) cannot be combined with clustering column filters",
                    f.column
                )));
            }
            if q.reversed {
                return Err(self.bad_filter(format!(
                    "a local index or prefix filter (`{}`) cannot be reversed (Cassandra refuses ORDER BY with \
                     secondary indexes)",
                    f.column
                )));
            }
            return Ok(());
        }
        let mut open = true; // still in the equality prefix
        for (c, _) in &t.clustering {
            let ops: Vec<&FilterOp> = q.filters_on(c).collect();
            if ops.is_empty() {
                open = false;
                continue;
            }
            if !open {
                return Err(self.bad_filter(format!(
                    "clustering column `{c}` is filtered but an earlier clustering column is not restricted by \
                     equality; restrict clustering columns in order ({}), with IN or ranges only on the last one",
                    t.clustering.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(", ")
                )));
            }
            match ops.as_slice() {
                [FilterOp::Eq(_)] => {}
                [FilterOp::In(_)] => open = false,
                rs if rs.iter().all(|o| is_range(o)) => {
                    let lower = rs
                        .iter()
                        .filter(|o| matches!(o, FilterOp::Gt(_) | FilterOp::Ge(_)))
                        .count();
                    let upper = rs.len() - lower;
                    if lower > 1 || upper > 1 {
                        return Err(self.bad_filter(format!(
                            "`{c}` has more than one lower or upper bound; use at most one of >, >= and one of <, <="
                        )));
                    }
                    open = false;
                }
                _ => {
                    return Err(self.bad_filter(format!(
                        "`{c}` combines equality or IN with other filters; use one equality, one IN, or range bounds"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Longest prefix of a [`Find::prefix`] search, in bytes.
pub const PREFIX_BYTES_MAX: usize = 256;

/// The derived value of a search column: its lowercase text (`Null` stays `Null`).
fn lowercase_of(v: &Value) -> Value {
    match v {
        Value::Text(s) => Value::Text(s.to_lowercase()),
        _ => Value::Null,
    }
}

/// A stable pseudo-random node id for v1 UUIDs of this process.
fn node_id() -> [u8; 6] {
    static NODE: std::sync::OnceLock<[u8; 6]> = std::sync::OnceLock::new();
    *NODE.get_or_init(|| {
        let mut n: [u8; 6] = rand::random();
        n[0] |= 0x01; // multicast bit: not a real MAC address (RFC 4122 4.5)
        n
    })
}
