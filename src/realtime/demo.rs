//! The demo services shipped with `shardcast serve`, modelled on Twake: `channels` and their `messages`, stored
//! through the ORM and published to rooms.
//!
//! | service | partition key | clustering | rooms (created, updated, deleted) | path |
//! |---|---|---|---|---|
//! | channels | `company_id`, `workspace_id` | `id` ascending (indexed) | `/companies/{company_id}/workspaces/{workspace_id}/channels` | `/channels/{id}` |
//! | messages | `channel_id` | `id` (timeuuid) descending: newest first (indexed) | `/channels/{channel_id}/messages` | `/messages/{id}` |
//!
//! REST (under `/api/v1`): `POST|GET /companies/{company_id}/workspaces/{workspace_id}/channels`,
//! `GET|PATCH|DELETE /channels/{id}`, `POST|GET /channels/{channel_id}/messages`, `GET|PATCH|DELETE /messages/{id}`.
//!
//! **Access rules** (the README's REST section has the same table):
//!
//! | request | allowed to | otherwise |
//! |---|---|---|
//! | create, list, get, update, delete a channel | members of the channel's company (`companies` claim) | 403 |
//! | create, list, get a message | members of its channel's company | 403 (404 if the channel does not exist) |
//! | update (`PATCH`), delete a message | its author (`user_id` = token `sub`), or a member whose [`ADMIN_CLAIM`] claim names the channel's company | 403 |
//!
//! **Channel ids are unique across companies, and creating one is atomic on every backend.** A client may choose the
//! id (1 to [`ID_BYTES_MAX`] of `A-Z a-z 0-9 _ -`) or get a generated UUID. Every id is claimed in the `channel_ids`
//! table (partition `id`, clustering `generation` descending) with the ORM's atomic
//! [`Repository::insert`](crate::orm::Repository::insert) (embedded: one transaction; MongoDB: the unique key index,
//! E11000 means taken; Cassandra: `INSERT ... IF NOT EXISTS`): of concurrent creates of one id exactly one wins, the
//! others get 409 `conflict`. The claim outlives its channel: deleting a channel deletes its messages, removes every
//! member from its messages room, and marks the claim deleted. Only the same company may create that id again (a new
//! generation of the claim, inserted atomically too); for every other company it stays 409 `conflict`, so a room
//! token or an old member of a deleted channel can never see another company's data. If a delete stops half way
//! (crash, database error) the claim stays live and the id taken, never reused with old data.
//!
//! A message's `id` is a generated time UUID; its `user_id` is the caller and `created_at_ms` the server's clock.
//! Fields of a message other than the declared ones are kept as the client sent them (at most
//! [`MESSAGE_EXTRA_BYTES_MAX`] bytes of JSON), so clients can attach their own metadata. Text is bounded by its
//! **JSON-encoded** size ([`TEXT_BYTES_MAX`]: a control character counts as the six bytes of `\u0001`).
//!
//! **Bounded lists:** a list answer holds at most `limit` rows and at most [`DemoLimits::page_bytes_max`] bytes of
//! resources (at least one row); when it is cut, `next_page_token` continues after its last row. Rows are read from the
//! database in chunks of at most [`LIST_CHUNK_ROWS`] so one request never holds more than one chunk besides its page.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::auth::AuthenticatedUser;
use super::bus::EventBus;
use super::crud::{
    CreateResult, CrudError, CrudService, DeleteResult, ExecutionContext, ListOptions, ListResult,
    Realtime, Recipient, Recipients, Template, UpdateResult,
};
use super::rest::{Collection, RestApi};
use crate::orm::{
    BackendError, Entity, EntitySchema, FieldType, Find, HookContext, HookError, IoScope, Key,
    Order, Orm, OrmError, Patch, Repository, SchemaBuilder,
};

/// Longest client-chosen channel id, bytes.
pub const ID_BYTES_MAX: usize = 64;
/// Longest channel name, bytes.
pub const NAME_BYTES_MAX: usize = 256;
/// Longest message text, bytes.
pub const TEXT_BYTES_MAX: usize = 64 * 1024;
/// Largest JSON of a message's extra fields, bytes.
pub const MESSAGE_EXTRA_BYTES_MAX: usize = 16 * 1024;
/// Page size of a list without `limit`.
pub const LIST_LIMIT_DEFAULT: usize = 50;
/// Default of [`DemoLimits::page_bytes_max`]: bytes of resources in one list answer.
pub const PAGE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Rows read from the database per chunk of a list.
pub const LIST_CHUNK_ROWS: u32 = 100;
/// The access-token claim that makes a user an administrator of companies: an array of company ids. An administrator
/// of a channel's company may edit and delete every message of that channel.
pub const ADMIN_CLAIM: &str = "admin_companies";
/// Rows deleted per database round trip when a channel's messages are deleted.
pub const DELETE_CHUNK_ROWS: u32 = 200;

/// The bounds of the demo services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DemoLimits {
    /// Most bytes of JSON resources in one list answer (at least one row is always returned). Default
    /// [`PAGE_BYTES_MAX_DEFAULT`].
    pub page_bytes_max: usize,
    /// Per-company storage quota: bytes of message text and extra fields (JSON-encoded) a company may store; a create
    /// that would go over it is 403 `quota_exceeded`. `0` (the default) turns it off. Counted in table
    /// `company_usage` while the quota is on; concurrent creates may overshoot it by what they add.
    pub company_storage_bytes_max: u64,
}

impl Default for DemoLimits {
    fn default() -> Self {
        Self {
            page_bytes_max: PAGE_BYTES_MAX_DEFAULT,
            company_storage_bytes_max: 0,
        }
    }
}

/// A channel of a workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Company (partition key, from the URL).
    pub company_id: String,
    /// Workspace (partition key, from the URL).
    pub workspace_id: String,
    /// Id: chosen by the client or a generated UUID.
    #[serde(default)]
    pub id: String,
    /// Display name (required, 1 to [`NAME_BYTES_MAX`] bytes).
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// The user who created it (set by the server).
    #[serde(default)]
    pub owner: String,
    /// Creation time, milliseconds since the epoch (set by the server).
    #[serde(default)]
    pub created_at_ms: i64,
    /// Time of the last change, milliseconds since the epoch (set by the server).
    #[serde(default)]
    pub updated_at_ms: i64,
}

/// The timestamps of the demo entities, set by their ORM hooks on the IO shard: `created_at_ms` when the entity
/// has none (the services clear what a client sent), `updated_at_ms` on every write.
fn stamp(created_at_ms: &mut i64, updated_at_ms: &mut i64, ctx: &HookContext) {
    if *created_at_ms <= 0 {
        *created_at_ms = ctx.now_ms;
    }
    *updated_at_ms = ctx.now_ms;
}

impl Entity for Channel {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("channels")
            .column("company_id", FieldType::Text)
            .column("workspace_id", FieldType::Text)
            .column("id", FieldType::Text)
            .column("name", FieldType::Text)
            .column("description", FieldType::Text)
            .column("owner", FieldType::Text)
            .column("created_at_ms", FieldType::Number)
            .column("updated_at_ms", FieldType::Number)
            .partition_key(&["company_id", "workspace_id"])
            .clustering("id", Order::Asc)
            .index("id")
    }

    fn before_upsert(&mut self, ctx: &HookContext) -> Result<(), HookError> {
        stamp(&mut self.created_at_ms, &mut self.updated_at_ms, ctx);
        Ok(())
    }

    fn before_update(patch: &mut Patch, ctx: &HookContext) -> Result<(), HookError> {
        patch.insert("updated_at_ms", ctx.now_ms);
        Ok(())
    }
}

/// What `PATCH /channels/{id}` may change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
}

/// The claim of a channel id (table `channel_ids`): which company holds it, and whether its channel was deleted. One
/// row per generation; the newest (largest `generation`) is the current one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ChannelClaim {
    id: String,
    generation: i64,
    company_id: String,
    workspace_id: String,
    deleted: bool,
}

impl Entity for ChannelClaim {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("channel_ids")
            .column("id", FieldType::Text)
            .column("generation", FieldType::Number)
            .column("company_id", FieldType::Text)
            .column("workspace_id", FieldType::Text)
            .column("deleted", FieldType::Boolean)
            .partition_key(&["id"])
            .clustering("generation", Order::Desc)
    }
}

/// Bytes stored per company (table `company_usage`, a counter), kept while a storage quota is on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct CompanyUsage {
    company_id: String,
    bytes: i64,
}

impl Entity for CompanyUsage {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("company_usage")
            .column("company_id", FieldType::Text)
            .column("bytes", FieldType::Counter)
            .partition_key(&["company_id"])
    }
}

/// A message of a channel, as clients see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel (partition key, from the URL).
    #[serde(default)]
    pub channel_id: String,
    /// Generated time UUID.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Author (set by the server).
    #[serde(default)]
    pub user_id: String,
    /// The text.
    #[serde(default)]
    pub text: String,
    /// Creation time, milliseconds since the epoch (set by the server).
    #[serde(default)]
    pub created_at_ms: i64,
    /// Time of the last change, milliseconds since the epoch (set by the server).
    #[serde(default)]
    pub updated_at_ms: i64,
    /// Any other fields, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a message is stored: the extra fields go to one JSON column.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MessageRow {
    channel_id: String,
    id: Option<Uuid>,
    user_id: String,
    text: String,
    created_at_ms: i64,
    #[serde(default)]
    updated_at_ms: i64,
    extra: Option<Value>,
}

impl Entity for MessageRow {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("messages")
            .column("channel_id", FieldType::Text)
            .column("id", FieldType::TimeUuid)
            .generated()
            .column("user_id", FieldType::Text)
            .column("text", FieldType::Text)
            .column("created_at_ms", FieldType::Number)
            .column("extra", FieldType::Json)
            .column("updated_at_ms", FieldType::Number)
            .partition_key(&["channel_id"])
            .clustering("id", Order::Desc)
            .index("id")
    }

    fn before_upsert(&mut self, ctx: &HookContext) -> Result<(), HookError> {
        stamp(&mut self.created_at_ms, &mut self.updated_at_ms, ctx);
        Ok(())
    }

    fn before_update(patch: &mut Patch, ctx: &HookContext) -> Result<(), HookError> {
        patch.insert("updated_at_ms", ctx.now_ms);
        Ok(())
    }
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Message {
            channel_id: r.channel_id,
            id: r.id,
            user_id: r.user_id,
            text: r.text,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
            extra: match r.extra {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            },
        }
    }
}

impl From<Message> for MessageRow {
    fn from(m: Message) -> Self {
        MessageRow {
            channel_id: m.channel_id,
            id: m.id,
            user_id: m.user_id,
            text: m.text,
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
            extra: (!m.extra.is_empty()).then_some(Value::Object(m.extra)),
        }
    }
}

/// What `PATCH /messages/{id}` may change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagePatch {
    /// New text.
    pub text: Option<String>,
}

/// The repositories of the demo services; open once at start-up, clone onto every shard.
#[derive(Clone, Debug)]
pub struct DemoRepositories {
    channels: Repository<Channel>,
    claims: Repository<ChannelClaim>,
    messages: Repository<MessageRow>,
    usage: Repository<CompanyUsage>,
}

impl DemoRepositories {
    /// Creates or extends the tables.
    pub async fn open(orm: &Orm) -> Result<Self, OrmError> {
        Ok(Self {
            channels: Repository::open(orm).await?,
            claims: Repository::open(orm).await?,
            messages: Repository::open(orm).await?,
            usage: Repository::open(orm).await?,
        })
    }
}

impl DemoRepositories {
    /// [`DemoRepositories::check_quota`] inside an IO-shard request: `Ok(Err(quota_exceeded))` when `company` storing
    /// `adding` more bytes goes over its quota.
    async fn quota_in(
        &self,
        scope: &IoScope,
        limits: &DemoLimits,
        company: &str,
        adding: i64,
    ) -> Result<Result<(), CrudError>, OrmError> {
        let max = limits.company_storage_bytes_max;
        if max == 0 || adding <= 0 {
            return Ok(Ok(()));
        }
        let key = Key::new().with("company_id", company);
        let used = self
            .usage
            .get_in(scope, key)
            .await?
            .map_or(0, |u| u.bytes.max(0));
        Ok(over_quota(company, used, adding, max))
    }

    /// [`DemoRepositories::count_usage`] inside an IO-shard request (a failure is logged, never fails the write).
    async fn count_usage_in(&self, scope: &IoScope, company: &str, delta: i64) {
        let key = Key::new().with("company_id", company);
        if let Err(e) = self.usage.increment_in(scope, key, "bytes", delta).await {
            tracing::warn!(company, error = %e, "company storage usage not counted");
        }
    }
}

/// 403 `quota_exceeded` if `company`, storing `used` bytes, goes over `max` by storing `adding` more.
fn over_quota(company: &str, used: i64, adding: i64, max: u64) -> Result<(), CrudError> {
    if used.saturating_add(adding) as u64 > max {
        return Err(CrudError::QuotaExceeded(format!(
            "company {company:?} stores {used} bytes; {adding} more would pass its quota of {max}"
        )));
    }
    Ok(())
}

/// What a message counts against its company's storage quota: its text and extra fields as JSON.
fn stored_bytes(m: &MessageRow) -> i64 {
    let extra = m
        .extra
        .as_ref()
        .and_then(|e| serde_json::to_vec(e).ok())
        .map_or(0, |v| v.len());
    (json_string_len(&m.text) + extra) as i64
}

impl DemoRepositories {
    /// Adds `delta` bytes to `company`'s usage (when a quota is on).
    async fn count_usage(&self, limits: &DemoLimits, company: &str, delta: i64) {
        if limits.company_storage_bytes_max == 0 || delta == 0 {
            return;
        }
        let key = crate::orm::Key::new().with("company_id", company);
        if let Err(e) = self.usage.increment(key, "bytes", delta).await {
            tracing::warn!(company, error = %e, "company storage usage not counted");
        }
    }

    /// 403 `quota_exceeded` if `company` storing `adding` more bytes goes over its quota.
    async fn check_quota(
        &self,
        limits: &DemoLimits,
        company: &str,
        adding: i64,
    ) -> Result<(), CrudError> {
        let max = limits.company_storage_bytes_max;
        if max == 0 || adding <= 0 {
            return Ok(());
        }
        let key = crate::orm::Key::new().with("company_id", company);
        let used = self
            .usage
            .get(key)
            .await
            .map_err(store_error)?
            .map_or(0, |u| u.bytes.max(0));
        over_quota(company, used, adding, max)
    }
}

fn store_error(e: OrmError) -> CrudError {
    if e.is_unavailable() {
        CrudError::Unavailable(e.to_string())
    } else {
        match e {
            OrmError::InvalidFilter { .. } | OrmError::InvalidEntity { .. } => {
                CrudError::InvalidInput(e.to_string())
            }
            other => CrudError::Internal(other.to_string()),
        }
    }
}

fn check_member(user: &AuthenticatedUser, company: &str) -> Result<(), CrudError> {
    if user.is_member_of(company) {
        Ok(())
    } else {
        Err(not_member(company))
    }
}

fn not_member(company: &str) -> CrudError {
    CrudError::Forbidden(format!(
        "company {company:?} is not in the `companies` claim of your token"
    ))
}

/// The checks of a new message that need no database: no client-chosen id, text and extra fields within bounds.
fn check_new_message(item: &Message) -> Result<(), CrudError> {
    if item.id.is_some() {
        return Err(CrudError::InvalidInput(
            "`id` is assigned by the server".into(),
        ));
    }
    check_encoded_len("text", &item.text, TEXT_BYTES_MAX)?;
    if !item.extra.is_empty() {
        let size = serde_json::to_vec(&item.extra)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MESSAGE_EXTRA_BYTES_MAX {
            return Err(CrudError::InvalidInput(format!(
                "the extra fields take {size} bytes of JSON, more than {MESSAGE_EXTRA_BYTES_MAX}"
            )));
        }
    }
    Ok(())
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_len(field: &str, value: &str, max: usize, required: bool) -> Result<(), CrudError> {
    if required && value.trim().is_empty() {
        return Err(CrudError::InvalidInput(format!(
            "`{field}` must not be empty"
        )));
    }
    if value.len() > max {
        return Err(CrudError::InvalidInput(format!(
            "`{field}` is longer than {max} bytes"
        )));
    }
    Ok(())
}

fn limit_of(options: &ListOptions) -> u32 {
    options
        .limit
        .unwrap_or(LIST_LIMIT_DEFAULT)
        .min(u32::MAX as usize) as u32
}

/// The size of `s` as a JSON string, quotes excluded: what it takes in every answer and event (`"` `\\` and the
/// short escapes count 2, other control characters 6, everything else its UTF-8 bytes).
pub fn json_string_len(s: &str) -> usize {
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// [`check_len`] on the JSON-encoded size of `value`.
fn check_encoded_len(field: &str, value: &str, max: usize) -> Result<(), CrudError> {
    let n = json_string_len(value);
    if n > max {
        return Err(CrudError::InvalidInput(format!(
            "`{field}` takes {n} bytes as JSON, more than {max}"
        )));
    }
    Ok(())
}

/// True when `user` may edit and delete every message of `company`'s channels ([`ADMIN_CLAIM`]).
pub fn is_company_admin(user: &AuthenticatedUser, company: &str) -> bool {
    user.is_member_of(company)
        && user
            .claims
            .get(ADMIN_CLAIM)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(company)))
}

const CURSOR_ENGINE: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The `next_page_token` of a list cut after the row whose key is `last`: `kind` tells channels from messages.
fn cursor_token(kind: char, last: &str) -> String {
    use base64::Engine;
    CURSOR_ENGINE.encode(format!("{kind}{last}"))
}

/// The key a `page_token` of [`cursor_token`] continues after.
fn cursor_of(kind: char, token: Option<&String>) -> Result<Option<String>, CrudError> {
    use base64::Engine;
    let Some(token) = token else { return Ok(None) };
    let bad = || CrudError::InvalidInput("invalid page_token".into());
    let bytes = CURSOR_ENGINE.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let key = text.strip_prefix(kind).ok_or_else(bad)?;
    Ok(Some(key.to_owned()))
}

/// One list answer being filled: at most `limit` rows and `bytes_max` bytes of JSON (at least one row).
struct PageFill<T> {
    rows: Vec<T>,
    bytes: usize,
    limit: usize,
    bytes_max: usize,
    cut: bool,
}

impl<T: Serialize> PageFill<T> {
    fn new(limit: usize, bytes_max: usize) -> Self {
        Self {
            rows: Vec::new(),
            bytes: 0,
            limit: limit.max(1),
            bytes_max,
            cut: false,
        }
    }

    /// Adds `row` if it fits; false (and the page is cut) if it does not.
    fn push(&mut self, row: T) -> bool {
        if self.rows.len() >= self.limit {
            self.cut = true;
            return false;
        }
        let size = serde_json::to_vec(&row).map(|v| v.len()).unwrap_or(0) + 1;
        if !self.rows.is_empty() && self.bytes + size > self.bytes_max {
            self.cut = true;
            return false;
        }
        self.bytes += size;
        self.rows.push(row);
        true
    }

    fn full(&self) -> bool {
        self.cut || self.rows.len() >= self.limit
    }

    /// Rows still wanted, as a chunk size.
    fn chunk(&self) -> u32 {
        (self.limit - self.rows.len()).clamp(1, LIST_CHUNK_ROWS as usize) as u32
    }

    /// Fills the page with `repo`'s entities matching `find` (in chunks of [`PageFill::chunk`] at the start), each
    /// turned into a row by `row`; true when the entities ran out before the page was cut (no later page).
    async fn fill_from<E: Entity>(
        &mut self,
        repo: &Repository<E>,
        find: &Find,
        row: impl Fn(E) -> T,
    ) -> Result<bool, CrudError> {
        let chunk = self.chunk();
        let mut token = None;
        loop {
            let page = repo
                .find(find.clone().limit(chunk).page_token(token))
                .await
                .map_err(page_token_error)?;
            for e in page.entities {
                if !self.push(row(e)) {
                    break;
                }
            }
            if page.next_page_token.is_none() && !self.cut {
                return Ok(true);
            }
            if self.full() {
                return Ok(false);
            }
            token = page.next_page_token;
        }
    }
}

fn page_token_error(e: OrmError) -> CrudError {
    match e {
        OrmError::InvalidFilter { message, .. } => CrudError::InvalidInput(message),
        OrmError::Backend(BackendError::InvalidPageToken(m)) => {
            CrudError::InvalidInput(format!("invalid page_token: {m}"))
        }
        other => store_error(other),
    }
}

/// Finds a channel by id (global index) and checks the caller may use it.
async fn accessible_channel(
    channels: &Repository<Channel>,
    ctx: &ExecutionContext,
    id: &str,
) -> Result<Channel, CrudError> {
    let user = ctx.require_user()?;
    if !valid_id(id) {
        return Err(CrudError::NotFound);
    }
    let channel = channels
        .find_one(Find::new().eq("id", id))
        .await
        .map_err(store_error)?
        .ok_or(CrudError::NotFound)?;
    check_member(user, &channel.company_id)?;
    Ok(channel)
}

/// What a deleted channel's messages room needs from the realtime layer: every member removed, on every shard.
pub type RoomEvictor = Rc<dyn Fn(&str)>;

/// The `channels` service.
pub struct ChannelService {
    repos: DemoRepositories,
    limits: DemoLimits,
    evict: RoomEvictor,
}

impl std::fmt::Debug for ChannelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelService")
            .field("repos", &self.repos)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ChannelService {
    /// Over the demo repositories; deleting a channel evicts nobody from rooms (see [`ChannelService::with_evictor`]).
    pub fn new(repos: DemoRepositories) -> Self {
        Self {
            repos,
            limits: DemoLimits::default(),
            evict: Rc::new(|_: &str| {}),
        }
    }

    /// Bounds list answers by `limits`.
    pub fn with_limits(mut self, limits: DemoLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Calls `evict` with a deleted channel's messages room.
    pub fn with_evictor(mut self, evict: RoomEvictor) -> Self {
        self.evict = evict;
        self
    }

    /// The current claim of `id`, if it was ever claimed.
    async fn current_claim(&self, id: &str) -> Result<Option<ChannelClaim>, CrudError> {
        self.repos
            .claims
            .find_one(Find::new().eq("id", id))
            .await
            .map_err(store_error)
    }

    /// Claims `id` for `company` atomically, or 409.
    async fn claim(
        &self,
        id: &str,
        company: &str,
        workspace: &str,
    ) -> Result<ChannelClaim, CrudError> {
        let taken = || CrudError::Conflict(format!("a channel with id {id:?} exists"));
        let generation = match self.current_claim(id).await? {
            None => {
                // A channel stored before ids were claimed: claim its id for its company, then refuse.
                let legacy = self
                    .repos
                    .channels
                    .find_one(Find::new().eq("id", id))
                    .await
                    .map_err(store_error)?;
                if let Some(c) = legacy {
                    let backfill = ChannelClaim {
                        id: id.to_owned(),
                        generation: 0,
                        company_id: c.company_id,
                        workspace_id: c.workspace_id,
                        deleted: false,
                    };
                    self.repos
                        .claims
                        .insert(backfill)
                        .await
                        .map_err(store_error)?;
                    return Err(taken());
                }
                0
            }
            Some(c) if c.deleted && c.company_id == company => c.generation + 1,
            Some(_) => return Err(taken()),
        };
        let claim = ChannelClaim {
            id: id.to_owned(),
            generation,
            company_id: company.to_owned(),
            workspace_id: workspace.to_owned(),
            deleted: false,
        };
        self.repos
            .claims
            .insert(claim)
            .await
            .map_err(store_error)?
            .ok_or_else(taken)
    }

    /// Deletes every message of `channel_id`, a chunk per round trip.
    async fn delete_messages(&self, channel_id: &str, company: &str) -> Result<(), CrudError> {
        loop {
            let page = self
                .repos
                .messages
                .find(
                    Find::new()
                        .eq("channel_id", channel_id)
                        .limit(DELETE_CHUNK_ROWS),
                )
                .await
                .map_err(store_error)?;
            if page.entities.is_empty() && page.next_page_token.is_none() {
                return Ok(());
            }
            let mut freed = 0;
            for m in &page.entities {
                self.repos.messages.remove(m).await.map_err(store_error)?;
                freed += stored_bytes(m);
            }
            self.repos.count_usage(&self.limits, company, -freed).await;
        }
    }
}

impl CrudService<Channel> for ChannelService {
    type Patch = ChannelPatch;

    async fn create(
        &self,
        ctx: &ExecutionContext,
        mut item: Channel,
    ) -> Result<CreateResult<Channel>, CrudError> {
        let user = ctx.require_user()?;
        check_member(user, &item.company_id)?;
        for (f, v) in [
            ("company_id", &item.company_id),
            ("workspace_id", &item.workspace_id),
        ] {
            if !valid_id(v) {
                return Err(CrudError::InvalidInput(format!(
                    "`{f}` must be 1 to {ID_BYTES_MAX} of A-Z a-z 0-9 _ -"
                )));
            }
        }
        check_encoded_len("name", &item.name, NAME_BYTES_MAX)?;
        check_len("name", &item.name, NAME_BYTES_MAX, true)?;
        check_encoded_len("description", &item.description, TEXT_BYTES_MAX)?;
        if item.id.is_empty() {
            item.id = Uuid::new_v4().to_string();
        } else if !valid_id(&item.id) {
            return Err(CrudError::InvalidInput(format!(
                "`id` must be 1 to {ID_BYTES_MAX} of A-Z a-z 0-9 _ -"
            )));
        }
        let claim = self
            .claim(&item.id, &item.company_id, &item.workspace_id)
            .await?;
        item.owner = user.id.clone();
        (item.created_at_ms, item.updated_at_ms) = (0, 0); // set by the hook
        match self.repos.channels.save(item).await {
            Ok(entity) => Ok(CreateResult {
                type_name: "channel",
                entity,
            }),
            Err(e) => {
                // Give the id back (best effort): the channel was not written.
                let released = ChannelClaim {
                    deleted: true,
                    ..claim
                };
                if let Err(e2) = self.repos.claims.save(released).await {
                    tracing::warn!(error = %e2, "channel id claim not released after a failed create");
                }
                Err(store_error(e))
            }
        }
    }

    async fn get(&self, ctx: &ExecutionContext, id: &str) -> Result<Option<Channel>, CrudError> {
        match accessible_channel(&self.repos.channels, ctx, id).await {
            Ok(c) => Ok(Some(c)),
            Err(CrudError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn update(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: ChannelPatch,
    ) -> Result<UpdateResult<Channel>, CrudError> {
        let channel = accessible_channel(&self.repos.channels, ctx, id).await?;
        let mut fields = Patch::new();
        if let Some(name) = patch.name {
            check_len("name", &name, NAME_BYTES_MAX, true)?;
            check_encoded_len("name", &name, NAME_BYTES_MAX)?;
            fields = fields.set("name", name);
        }
        if let Some(d) = patch.description {
            check_encoded_len("description", &d, TEXT_BYTES_MAX)?;
            fields = fields.set("description", d);
        }
        // Only the named columns are written (a concurrent change of another column is kept).
        let key = Key::new()
            .with("company_id", &channel.company_id)
            .with("workspace_id", &channel.workspace_id)
            .with("id", &channel.id);
        let entity = self
            .repos
            .channels
            .patch(key, fields)
            .await
            .map_err(store_error)?
            .ok_or(CrudError::NotFound)?;
        Ok(UpdateResult {
            type_name: "channel",
            entity,
        })
    }

    async fn delete(
        &self,
        ctx: &ExecutionContext,
        id: &str,
    ) -> Result<DeleteResult<Channel>, CrudError> {
        let channel = accessible_channel(&self.repos.channels, ctx, id).await?;
        // Order matters: the channel disappears first (nothing reaches its messages any more), then its messages and
        // its room's members, and only then is the id released to its company.
        self.repos
            .channels
            .remove(&channel)
            .await
            .map_err(store_error)?;
        (self.evict)(&messages_room(&channel.id));
        self.delete_messages(&channel.id, &channel.company_id)
            .await?;
        if let Some(claim) = self.current_claim(&channel.id).await?
            && claim.company_id == channel.company_id
            && !claim.deleted
        {
            self.repos
                .claims
                .save(ChannelClaim {
                    deleted: true,
                    ..claim
                })
                .await
                .map_err(store_error)?;
        }
        Ok(DeleteResult {
            type_name: "channel",
            entity: channel,
            deleted: true,
        })
    }

    async fn list(
        &self,
        ctx: &ExecutionContext,
        options: &ListOptions,
    ) -> Result<ListResult<Channel>, CrudError> {
        let user = ctx.require_user()?;
        let (Some(company), Some(workspace)) = (
            options.filters.get("company_id"),
            options.filters.get("workspace_id"),
        ) else {
            return Err(CrudError::InvalidInput(
                "company_id and workspace_id are required".into(),
            ));
        };
        if let Some(k) = options
            .filters
            .keys()
            .find(|k| *k != "company_id" && *k != "workspace_id")
        {
            return Err(CrudError::InvalidInput(format!("unknown filter `{k}`")));
        }
        check_member(user, company)?;
        let after = cursor_of('c', options.page_token.as_ref())?;
        let mut fill = PageFill::new(limit_of(options) as usize, self.limits.page_bytes_max);
        let mut find = Find::new()
            .eq("company_id", company)
            .eq("workspace_id", workspace);
        if let Some(after) = &after {
            find = find.gt("id", after.as_str());
        }
        let exhausted = fill.fill_from(&self.repos.channels, &find, |c| c).await?;
        let next_page_token = match fill.rows.last() {
            Some(last) if !exhausted => Some(cursor_token('c', &last.id)),
            None if !exhausted => options.page_token.clone(),
            _ => None,
        };
        Ok(ListResult {
            type_name: "channel",
            entities: fill.rows,
            next_page_token,
        })
    }
}

/// The `messages` service.
#[derive(Debug)]
pub struct MessageService {
    repos: DemoRepositories,
    limits: DemoLimits,
}

impl MessageService {
    /// Over the demo repositories.
    pub fn new(repos: DemoRepositories) -> Self {
        Self {
            repos,
            limits: DemoLimits::default(),
        }
    }

    /// Bounds list answers by `limits`.
    pub fn with_limits(mut self, limits: DemoLimits) -> Self {
        self.limits = limits;
        self
    }

    async fn find(
        &self,
        ctx: &ExecutionContext,
        id: &str,
    ) -> Result<Option<(MessageRow, Channel)>, CrudError> {
        ctx.require_user()?;
        let Ok(uuid) = Uuid::parse_str(id) else {
            return Ok(None);
        };
        let row = self
            .repos
            .messages
            .find_one(Find::new().eq("id", uuid))
            .await
            .map_err(store_error)?;
        let Some(row) = row else { return Ok(None) };
        let channel = accessible_channel(&self.repos.channels, ctx, &row.channel_id).await?;
        Ok(Some((row, channel)))
    }

    /// The message `id` if the caller may change it: its author, or an administrator of its company.
    async fn find_own(
        &self,
        ctx: &ExecutionContext,
        id: &str,
    ) -> Result<(MessageRow, Channel), CrudError> {
        let (row, channel) = self.find(ctx, id).await?.ok_or(CrudError::NotFound)?;
        let user = ctx.require_user()?;
        if row.user_id != user.id && !is_company_admin(user, &channel.company_id) {
            return Err(CrudError::Forbidden(format!(
                "only the author of a message, or a user whose `{ADMIN_CLAIM}` claim names company {:?}, may change it",
                channel.company_id
            )));
        }
        Ok((row, channel))
    }
}

impl CrudService<Message> for MessageService {
    type Patch = MessagePatch;

    /// One IO-shard request (`Orm::run`): the channel is read, the caller's access checked and the message stored
    /// together, so a create crosses to the IO thread once each way. Nothing is written unless the check passes.
    async fn create(
        &self,
        ctx: &ExecutionContext,
        mut item: Message,
    ) -> Result<CreateResult<Message>, CrudError> {
        let user = ctx.require_user()?;
        if !valid_id(&item.channel_id) {
            return Err(CrudError::NotFound);
        }
        // Checked before the request, reported after the access check (a caller without access learns nothing).
        let invalid = check_new_message(&item).err();
        item.user_id = user.id.clone();
        (item.created_at_ms, item.updated_at_ms) = (0, 0); // set by the hook
        let row = MessageRow::from(item);
        let quota = (self.limits.company_storage_bytes_max > 0).then(|| stored_bytes(&row));
        let companies = user.companies.clone();
        let repos = self.repos.clone();
        let limits = self.limits;
        let created = self
            .repos
            .messages
            .orm()
            .run(move |scope| {
                Box::pin(async move {
                    let find = Find::new().eq("id", row.channel_id.as_str());
                    let Some(channel) = repos.channels.find_one_in(&scope, find).await? else {
                        return Ok(Err(CrudError::NotFound));
                    };
                    if !companies.contains(&channel.company_id) {
                        return Ok(Err(not_member(&channel.company_id)));
                    }
                    if let Some(e) = invalid {
                        return Ok(Err(e));
                    }
                    let company = channel.company_id;
                    if let Some(size) = quota
                        && let Err(e) = repos.quota_in(&scope, &limits, &company, size).await?
                    {
                        return Ok(Err(e));
                    }
                    let row = repos.messages.save_in(&scope, row).await?;
                    if let Some(size) = quota {
                        repos.count_usage_in(&scope, &company, size).await;
                    }
                    Ok(Ok(row))
                })
            })
            .await
            .map_err(store_error)??;
        Ok(CreateResult {
            type_name: "message",
            entity: created.into(),
        })
    }

    async fn get(&self, ctx: &ExecutionContext, id: &str) -> Result<Option<Message>, CrudError> {
        Ok(self.find(ctx, id).await?.map(|(m, _)| Message::from(m)))
    }

    async fn update(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: MessagePatch,
    ) -> Result<UpdateResult<Message>, CrudError> {
        let (row, channel) = self.find_own(ctx, id).await?;
        let before = stored_bytes(&row);
        let mut after = row.clone();
        let mut fields = Patch::new();
        if let Some(text) = patch.text {
            check_encoded_len("text", &text, TEXT_BYTES_MAX)?;
            after.text = text.clone();
            fields = fields.set("text", text);
        }
        let delta = stored_bytes(&after) - before;
        self.repos
            .check_quota(&self.limits, &channel.company_id, delta)
            .await?;
        // Only the named columns are written (a concurrent change of another column is kept).
        let key = Key::new()
            .with("channel_id", &row.channel_id)
            .with("id", row.id);
        let row = self
            .repos
            .messages
            .patch(key, fields)
            .await
            .map_err(store_error)?
            .ok_or(CrudError::NotFound)?;
        self.repos
            .count_usage(&self.limits, &channel.company_id, delta)
            .await;
        Ok(UpdateResult {
            type_name: "message",
            entity: row.into(),
        })
    }

    async fn delete(
        &self,
        ctx: &ExecutionContext,
        id: &str,
    ) -> Result<DeleteResult<Message>, CrudError> {
        let (row, channel) = self.find_own(ctx, id).await?;
        self.repos
            .messages
            .remove(&row)
            .await
            .map_err(store_error)?;
        self.repos
            .count_usage(&self.limits, &channel.company_id, -stored_bytes(&row))
            .await;
        Ok(DeleteResult {
            type_name: "message",
            entity: row.into(),
            deleted: true,
        })
    }

    async fn list(
        &self,
        ctx: &ExecutionContext,
        options: &ListOptions,
    ) -> Result<ListResult<Message>, CrudError> {
        let Some(channel_id) = options.filters.get("channel_id") else {
            return Err(CrudError::InvalidInput("channel_id is required".into()));
        };
        if let Some(k) = options.filters.keys().find(|k| *k != "channel_id") {
            return Err(CrudError::InvalidInput(format!("unknown filter `{k}`")));
        }
        accessible_channel(&self.repos.channels, ctx, channel_id).await?;
        let after = match cursor_of('m', options.page_token.as_ref())? {
            Some(k) => Some(
                Uuid::parse_str(&k)
                    .map_err(|_| CrudError::InvalidInput("invalid page_token".into()))?,
            ),
            None => None,
        };
        let mut find = Find::new().eq("channel_id", channel_id.as_str());
        if let Some(after) = after {
            // newest first: the next page holds the older ids
            find = find.lt("id", after);
        }
        let mut fill = PageFill::new(limit_of(options) as usize, self.limits.page_bytes_max);
        let exhausted = fill
            .fill_from(&self.repos.messages, &find, Message::from)
            .await?;
        let next_page_token = match fill.rows.last() {
            Some(last) if !exhausted => last.id.map(|id| cursor_token('m', &id.to_string())),
            None if !exhausted => options.page_token.clone(),
            _ => None,
        };
        Ok(ListResult {
            type_name: "message",
            entities: fill.rows,
            next_page_token,
        })
    }
}

/// The room of a workspace's channels.
pub fn channels_room(company: &str, workspace: &str) -> String {
    format!("/companies/{company}/workspaces/{workspace}/channels")
}

/// The room of a channel's messages.
pub fn messages_room(channel: &str) -> String {
    format!("/channels/{channel}/messages")
}

/// Where channel changes are published.
pub fn channel_recipients() -> Recipients<Channel> {
    Recipients::new().all(Recipient::new(
        Template::from_fn(|c: &Channel| channels_room(&c.company_id, &c.workspace_id)),
        Template::from_fn(|c: &Channel| format!("/channels/{}", c.id)),
    ))
}

/// Where message changes are published.
pub fn message_recipients() -> Recipients<Message> {
    Recipients::new().all(Recipient::new(
        Template::from_fn(|m: &Message| messages_room(&m.channel_id)),
        Template::from_fn(|m: &Message| {
            format!(
                "/messages/{}",
                m.id.map(|u| u.to_string()).unwrap_or_default()
            )
        }),
    ))
}

fn param<'a>(p: &'a super::rest::Params, name: &str) -> &'a str {
    p.get(name).map(String::as_str).unwrap_or_default()
}

/// Registers both services, publishing to `bus`, on `api`, with the default [`DemoLimits`].
pub fn register<B: EventBus + Clone + 'static>(
    api: RestApi,
    repos: &DemoRepositories,
    bus: B,
) -> RestApi {
    register_with(api, repos, bus, DemoLimits::default())
}

/// Registers both services, publishing to `bus`, on `api`; lists bounded by `limits`. Deleting a channel evicts the
/// members of its messages room through [`EventBus::evict_room`].
pub fn register_with<B: EventBus + Clone + 'static>(
    api: RestApi,
    repos: &DemoRepositories,
    bus: B,
    limits: DemoLimits,
) -> RestApi {
    let evict_bus = bus.clone();
    let channels = Rc::new(Realtime::new(
        ChannelService::new(repos.clone())
            .with_limits(limits)
            .with_evictor(Rc::new(move |room: &str| evict_bus.evict_room(room))),
        bus.clone(),
        channel_recipients(),
    ));
    let messages = Rc::new(Realtime::new(
        MessageService::new(repos.clone()).with_limits(limits),
        bus,
        message_recipients(),
    ));
    api.register(
        Collection::new(
            "/companies/{company_id}/workspaces/{workspace_id}/channels",
            "/channels/{id}",
            |p| {
                vec![channels_room(
                    param(p, "company_id"),
                    param(p, "workspace_id"),
                )]
            },
        ),
        channels,
    )
    .register(
        Collection::new("/channels/{channel_id}/messages", "/messages/{id}", |p| {
            vec![messages_room(param(p, "channel_id"))]
        }),
        messages,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_len_is_the_encoded_size() {
        for s in [
            "",
            "plain",
            "é\"\\",
            "\u{1}\n\t\u{1f}\u{7f}",
            "\u{8}\u{c}\r",
        ] {
            let encoded = serde_json::to_string(s).unwrap();
            assert_eq!(json_string_len(s), encoded.len() - 2, "{s:?}");
        }
        assert_eq!(json_string_len(&"\u{1}".repeat(1000)), 6000);
        assert!(check_encoded_len("text", &"\u{1}".repeat(11_000), TEXT_BYTES_MAX).is_err());
        assert!(check_encoded_len("text", &"a".repeat(TEXT_BYTES_MAX), TEXT_BYTES_MAX).is_ok());
    }

    #[test]
    fn page_fill_cuts_by_rows_and_bytes_but_keeps_one_row() {
        let mut fill = PageFill::new(10, 26);
        assert!(fill.push("0123456789")); // 12 bytes + 1
        assert!(fill.push("0123456789"));
        assert!(!fill.push("x"));
        assert!(fill.cut && fill.full());
        assert_eq!(fill.rows.len(), 2);
        let mut big = PageFill::new(10, 5);
        assert!(big.push("far more than five bytes"));
        assert!(!big.push("a"));
        let mut rows = PageFill::new(2, 1 << 20);
        assert!(rows.push(1) && rows.push(2) && !rows.push(3));
        assert_eq!(rows.chunk(), 1);
        assert_eq!(PageFill::<u8>::new(1000, 1).chunk(), LIST_CHUNK_ROWS);
    }

    #[test]
    fn cursor_tokens_round_trip_and_refuse_other_kinds() {
        let t = cursor_token('m', "abc");
        assert_eq!(cursor_of('m', Some(&t)).unwrap().as_deref(), Some("abc"));
        assert!(cursor_of('c', Some(&t)).is_err());
        assert!(cursor_of('m', Some(&"!!".to_string())).is_err());
        assert_eq!(cursor_of('m', None).unwrap(), None);
    }

    #[test]
    fn admin_claim_names_companies_the_user_belongs_to() {
        let mut user = AuthenticatedUser {
            id: "carol".into(),
            companies: vec!["acme".into()],
            expires_at_s: u64::MAX,
            claims: Default::default(),
        };
        assert!(!is_company_admin(&user, "acme"));
        user.claims
            .insert(ADMIN_CLAIM.into(), serde_json::json!(["acme", "other"]));
        assert!(is_company_admin(&user, "acme"));
        // an admin claim for a company the token is not a member of grants nothing
        assert!(!is_company_admin(&user, "other"));
        user.claims
            .insert(ADMIN_CLAIM.into(), serde_json::json!(true));
        assert!(!is_company_admin(&user, "acme"));
    }
}
