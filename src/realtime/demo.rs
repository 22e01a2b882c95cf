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
//! **Access rule:** a caller may read and write a channel, and the messages of a channel, only when the channel's
//! `company_id` is named in the `companies` claim of their access token; otherwise 403 `forbidden`. A message's
//! channel must exist (404 `not_found` otherwise).
//!
//! A channel's `id` may be chosen by the client (1 to [`ID_BYTES_MAX`] of `A-Z a-z 0-9 _ -`; ids are global, a taken
//! one is 409 `conflict`; the check is a read before the write, so two concurrent creates of the same new id may both
//! succeed, the later write winning) or is a generated UUID. Deleting a channel does not delete its messages; they
//! become unreachable (their channel is not found). A message's `id` is a generated time UUID; its `user_id` is the
//! caller and `created_at_ms` the server's clock. Fields of a message other than the declared ones are kept as the
//! client sent them (at most [`MESSAGE_EXTRA_BYTES_MAX`] bytes of JSON), so clients can attach their own metadata.

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
    BackendError, Entity, EntitySchema, FieldType, Find, HookContext, HookError, Key, Order, Orm,
    OrmError, Patch, Repository, SchemaBuilder,
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
    messages: Repository<MessageRow>,
}

impl DemoRepositories {
    /// Creates or extends the tables.
    pub async fn open(orm: &Orm) -> Result<Self, OrmError> {
        Ok(Self {
            channels: Repository::open(orm).await?,
            messages: Repository::open(orm).await?,
        })
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

#[allow(dead_code)] // the timestamps moved to the entities' ORM hooks; kept for other demo code
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn check_member(user: &AuthenticatedUser, company: &str) -> Result<(), CrudError> {
    if user.is_member_of(company) {
        Ok(())
    } else {
        Err(CrudError::Forbidden(format!(
            "company {company:?} is not in the `companies` claim of your token"
        )))
    }
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

/// The `channels` service.
#[derive(Debug)]
pub struct ChannelService {
    repos: DemoRepositories,
}

impl ChannelService {
    /// Over the demo repositories.
    pub fn new(repos: DemoRepositories) -> Self {
        Self { repos }
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
        check_len("name", &item.name, NAME_BYTES_MAX, true)?;
        check_len("description", &item.description, TEXT_BYTES_MAX, false)?;
        if item.id.is_empty() {
            item.id = Uuid::new_v4().to_string();
        } else if !valid_id(&item.id) {
            return Err(CrudError::InvalidInput(format!(
                "`id` must be 1 to {ID_BYTES_MAX} of A-Z a-z 0-9 _ -"
            )));
        } else if self
            .repos
            .channels
            .find_one(Find::new().eq("id", item.id.as_str()))
            .await
            .map_err(store_error)?
            .is_some()
        {
            return Err(CrudError::Conflict(format!(
                "a channel with id {:?} exists",
                item.id
            )));
        }
        item.owner = user.id.clone();
        (item.created_at_ms, item.updated_at_ms) = (0, 0); // set by the hook
        let entity = self.repos.channels.save(item).await.map_err(store_error)?;
        Ok(CreateResult {
            type_name: "channel",
            entity,
        })
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
            fields = fields.set("name", name);
        }
        if let Some(d) = patch.description {
            check_len("description", &d, TEXT_BYTES_MAX, false)?;
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
        self.repos
            .channels
            .remove(&channel)
            .await
            .map_err(store_error)?;
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
        let page = self
            .repos
            .channels
            .find(
                Find::new()
                    .eq("company_id", company)
                    .eq("workspace_id", workspace)
                    .limit(limit_of(options))
                    .page_token(options.page_token.clone()),
            )
            .await
            .map_err(page_token_error)?;
        Ok(ListResult {
            type_name: "channel",
            entities: page.entities,
            next_page_token: page.next_page_token,
        })
    }
}

/// The `messages` service.
#[derive(Debug)]
pub struct MessageService {
    repos: DemoRepositories,
}

impl MessageService {
    /// Over the demo repositories.
    pub fn new(repos: DemoRepositories) -> Self {
        Self { repos }
    }

    async fn find(
        &self,
        ctx: &ExecutionContext,
        id: &str,
    ) -> Result<Option<MessageRow>, CrudError> {
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
        accessible_channel(&self.repos.channels, ctx, &row.channel_id).await?;
        Ok(Some(row))
    }
}

impl CrudService<Message> for MessageService {
    type Patch = MessagePatch;

    async fn create(
        &self,
        ctx: &ExecutionContext,
        mut item: Message,
    ) -> Result<CreateResult<Message>, CrudError> {
        let user_id = ctx.require_user()?.id.clone();
        accessible_channel(&self.repos.channels, ctx, &item.channel_id).await?;
        if item.id.is_some() {
            return Err(CrudError::InvalidInput(
                "`id` is assigned by the server".into(),
            ));
        }
        check_len("text", &item.text, TEXT_BYTES_MAX, false)?;
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
        item.user_id = user_id;
        (item.created_at_ms, item.updated_at_ms) = (0, 0); // set by the hook
        let row = self
            .repos
            .messages
            .save(item.into())
            .await
            .map_err(store_error)?;
        Ok(CreateResult {
            type_name: "message",
            entity: row.into(),
        })
    }

    async fn get(&self, ctx: &ExecutionContext, id: &str) -> Result<Option<Message>, CrudError> {
        Ok(self.find(ctx, id).await?.map(Message::from))
    }

    async fn update(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: MessagePatch,
    ) -> Result<UpdateResult<Message>, CrudError> {
        let row = self.find(ctx, id).await?.ok_or(CrudError::NotFound)?;
        let mut fields = Patch::new();
        if let Some(text) = patch.text {
            check_len("text", &text, TEXT_BYTES_MAX, false)?;
            fields = fields.set("text", text);
        }
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
        let row = self.find(ctx, id).await?.ok_or(CrudError::NotFound)?;
        self.repos
            .messages
            .remove(&row)
            .await
            .map_err(store_error)?;
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
        let page = self
            .repos
            .messages
            .find(
                Find::new()
                    .eq("channel_id", channel_id.as_str())
                    .limit(limit_of(options))
                    .page_token(options.page_token.clone()),
            )
            .await
            .map_err(page_token_error)?;
        Ok(ListResult {
            type_name: "message",
            entities: page.entities.into_iter().map(Message::from).collect(),
            next_page_token: page.next_page_token,
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

/// Registers both services, publishing to `bus`, on `api`.
pub fn register<B: EventBus + Clone + 'static>(
    api: RestApi,
    repos: &DemoRepositories,
    bus: B,
) -> RestApi {
    let channels = Rc::new(Realtime::new(
        ChannelService::new(repos.clone()),
        bus.clone(),
        channel_recipients(),
    ));
    let messages = Rc::new(Realtime::new(
        MessageService::new(repos.clone()),
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
