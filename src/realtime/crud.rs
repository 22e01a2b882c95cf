//! CRUD services and the decorator equivalent.
//!
//! A service implements [`CrudService<E>`] and knows nothing about sockets. Wrapping it in [`Realtime`] with a set of
//! [`Recipients`] declares, per operation, where its result is published: each [`Recipient`] has a room and a path
//! that are fixed strings or functions of the result entity ([`Template`]), and an optional projection of the entity
//! into the `resource` clients receive (the entity serialised with serde by default).
//!
//! Publishing rules of [`Realtime`]:
//! - `create` publishes `created` to the `created` recipients; `update` publishes `updated`; `delete` publishes
//!   `deleted` **only when [`DeleteResult::deleted`] is true**; `save` publishes `saved` when the operation was
//!   [`SaveOperation::Created`] or [`SaveOperation::Updated`] (not for [`SaveOperation::Exists`]: nothing changed).
//! - A failed operation (`Err`) publishes nothing. `get` and `list` never publish.
//! - Events go out after the operation succeeded, one per recipient, in declaration order. A bus error is logged and
//!   does not turn the successful operation into a failure.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::auth::AuthenticatedUser;
use super::bus::{BusError, EventBus, ResourceAction, ResourceEvent};

/// Which way a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// The REST API.
    Http,
    /// A Socket.IO event.
    WebSocket,
    /// Server-internal code (start-up, jobs, tests).
    Internal,
}

/// Who is calling, and how; passed to every service call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionContext {
    /// The authenticated caller, if any.
    pub user: Option<AuthenticatedUser>,
    /// An id for logs and error reports.
    pub request_id: String,
    /// How the request arrived.
    pub transport: Transport,
    /// The request's method (`GET`, `POST`, ...); empty for internal work.
    pub method: String,
    /// The request's path parameters by name (`company_id`, `channel_id`, ... of the route that matched).
    pub path_params: BTreeMap<String, String>,
}

impl ExecutionContext {
    /// A context for an authenticated caller.
    pub fn new(
        user: AuthenticatedUser,
        request_id: impl Into<String>,
        transport: Transport,
    ) -> Self {
        Self {
            user: Some(user),
            request_id: request_id.into(),
            transport,
            method: String::new(),
            path_params: BTreeMap::new(),
        }
    }

    /// A context for server-internal work, with no user.
    pub fn internal(request_id: impl Into<String>) -> Self {
        Self {
            user: None,
            request_id: request_id.into(),
            transport: Transport::Internal,
            method: String::new(),
            path_params: BTreeMap::new(),
        }
    }

    /// With the request's method.
    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// With the request's path parameters.
    pub fn with_path_params<K: Into<String>, V: Into<String>>(
        mut self,
        params: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.path_params = params
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// The path parameter `name`, if the route had one.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.path_params.get(name).map(String::as_str)
    }

    /// The caller, or [`CrudError::Unauthenticated`].
    pub fn require_user(&self) -> Result<&AuthenticatedUser, CrudError> {
        self.user.as_ref().ok_or(CrudError::Unauthenticated)
    }
}

/// Paging and filtering of `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Most entities to return (the service applies its own default and maximum).
    pub limit: Option<usize>,
    /// Opaque token from a previous [`ListResult::next_page_token`].
    pub page_token: Option<String>,
    /// Service-specific filters, e.g. `channel_id` for messages (REST query parameters other than the paging ones).
    pub filters: BTreeMap<String, String>,
}

/// A service error. [`CrudError::code`] is the stable code of the REST API's JSON errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrudError {
    /// No authenticated caller.
    #[error("authentication required")]
    Unauthenticated,
    /// The caller may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such entity.
    #[error("not found")]
    NotFound,
    /// The input is invalid.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The change conflicts with the current state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The service does not offer this operation.
    #[error("operation {0} is not supported by this service")]
    Unsupported(&'static str),
    /// The change would take the caller's company over its storage quota.
    #[error("storage quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The store is unavailable or failed; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CrudError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound => "not_found",
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict(_) => "conflict",
            Self::Unsupported(_) => "unsupported",
            Self::QuotaExceeded(_) => "quota_exceeded",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status the REST API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Unauthenticated => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound => 404,
            Self::InvalidInput(_) => 400,
            Self::Conflict(_) => 409,
            Self::Unsupported(_) => 405,
            Self::QuotaExceeded(_) => 403,
            Self::Unavailable(_) => 503,
            Self::Internal(_) => 500,
        }
    }
}

/// The result of `create`.
#[derive(Clone, Debug, PartialEq)]
pub struct CreateResult<E> {
    /// Entity type name, e.g. `message` (the `type` of `realtime:resource`).
    pub type_name: &'static str,
    /// The created entity.
    pub entity: E,
}

/// The result of `update`.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateResult<E> {
    /// Entity type name.
    pub type_name: &'static str,
    /// The entity after the update.
    pub entity: E,
}

/// What `save` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveOperation {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed.
    Updated,
    /// It existed unchanged.
    Exists,
}

/// The result of `save` (create or update).
#[derive(Clone, Debug, PartialEq)]
pub struct SaveResult<E> {
    /// Entity type name.
    pub type_name: &'static str,
    /// The entity as stored.
    pub entity: E,
    /// What happened.
    pub operation: SaveOperation,
}

/// The result of `delete`.
#[derive(Clone, Debug, PartialEq)]
pub struct DeleteResult<E> {
    /// Entity type name.
    pub type_name: &'static str,
    /// The deleted entity (or, when nothing was deleted, the entity as identified by the request).
    pub entity: E,
    /// True if something was deleted.
    pub deleted: bool,
}

/// The result of `list`.
#[derive(Clone, Debug, PartialEq)]
pub struct ListResult<E> {
    /// Entity type name.
    pub type_name: &'static str,
    /// One page of entities.
    pub entities: Vec<E>,
    /// Token for the next page, `None` on the last one.
    pub next_page_token: Option<String>,
}

/// A CRUD service over entities `E`. Implementations never touch sockets; wrap them in [`Realtime`] to publish.
///
/// The futures are driven on the shard that received the request, so they need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait CrudService<E> {
    /// What `update` takes (often a struct of optional fields).
    type Patch;

    /// Creates an entity.
    async fn create(&self, ctx: &ExecutionContext, item: E) -> Result<CreateResult<E>, CrudError>;

    /// The entity with this id, or `None`.
    async fn get(&self, ctx: &ExecutionContext, id: &str) -> Result<Option<E>, CrudError>;

    /// Applies `patch` to the entity with this id.
    async fn update(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: Self::Patch,
    ) -> Result<UpdateResult<E>, CrudError>;

    /// Deletes the entity with this id.
    async fn delete(&self, ctx: &ExecutionContext, id: &str) -> Result<DeleteResult<E>, CrudError>;

    /// One page of entities.
    async fn list(
        &self,
        ctx: &ExecutionContext,
        options: &ListOptions,
    ) -> Result<ListResult<E>, CrudError>;

    /// Creates or updates. Services that do not offer it keep this default.
    async fn save(&self, ctx: &ExecutionContext, item: E) -> Result<SaveResult<E>, CrudError> {
        let _ = (ctx, item);
        Err(CrudError::Unsupported("save"))
    }
}

/// A function of the entity and the request's context.
pub type ContextFn<E, T> = Arc<dyn Fn(&E, &ExecutionContext) -> T + Send + Sync>;

/// A room or path: a fixed string, or computed from the result entity and, if needed, the request's context (user,
/// path parameters, method, transport).
pub enum Template<E> {
    /// The same string for every entity.
    Fixed(String),
    /// A function of the entity.
    Computed(Arc<dyn Fn(&E) -> String + Send + Sync>),
    /// A function of the entity and the request's [`ExecutionContext`].
    Contextual(ContextFn<E, String>),
}

impl<E> Template<E> {
    /// A fixed string.
    pub fn fixed(s: impl Into<String>) -> Self {
        Self::Fixed(s.into())
    }

    /// Computed from the entity, e.g. `Template::from_fn(|m: &Message| format!("/messages/{}", m.id))`.
    pub fn from_fn(f: impl Fn(&E) -> String + Send + Sync + 'static) -> Self {
        Self::Computed(Arc::new(f))
    }

    /// Computed from the entity and the request's context: Twake's `(entity, context) => path`. Here the room of a
    /// channel comes from the URL's `company_id`, which the entity does not carry:
    ///
    /// ```
    /// use shardcast::realtime::crud::{ExecutionContext, Template};
    ///
    /// struct Channel {
    ///     id: String,
    /// }
    /// let room = Template::from_ctx_fn(|c: &Channel, ctx: &ExecutionContext| {
    ///     format!("/companies/{}/channels/{}", ctx.param("company_id").unwrap_or_default(), c.id)
    /// });
    /// let ctx = ExecutionContext::internal("req-1").with_path_params([("company_id", "acme")]);
    /// let channel = Channel { id: "c1".into() };
    /// assert_eq!(room.render_in(&channel, &ctx), "/companies/acme/channels/c1");
    /// ```
    pub fn from_ctx_fn(
        f: impl Fn(&E, &ExecutionContext) -> String + Send + Sync + 'static,
    ) -> Self {
        Self::Contextual(Arc::new(f))
    }

    /// The string for `entity` with no request context ([`ExecutionContext::internal`]).
    pub fn render(&self, entity: &E) -> String {
        self.render_in(entity, &ExecutionContext::internal(""))
    }

    /// The string for `entity` in the request `ctx`.
    pub fn render_in(&self, entity: &E, ctx: &ExecutionContext) -> String {
        match self {
            Self::Fixed(s) => s.clone(),
            Self::Computed(f) => f(entity),
            Self::Contextual(f) => f(entity, ctx),
        }
    }
}

impl<E> Clone for Template<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Fixed(s) => Self::Fixed(s.clone()),
            Self::Computed(f) => Self::Computed(f.clone()),
            Self::Contextual(f) => Self::Contextual(f.clone()),
        }
    }
}

impl<E> fmt::Debug for Template<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(s) => f.debug_tuple("Fixed").field(s).finish(),
            Self::Computed(_) => f.write_str("Computed(<fn>)"),
            Self::Contextual(_) => f.write_str("Contextual(<fn>)"),
        }
    }
}

impl<E> From<&str> for Template<E> {
    fn from(s: &str) -> Self {
        Self::Fixed(s.to_owned())
    }
}

impl<E> From<String> for Template<E> {
    fn from(s: String) -> Self {
        Self::Fixed(s)
    }
}

/// A projection of the entity into the `resource` field.
pub type Projection<E> = Arc<dyn Fn(&E) -> Value + Send + Sync>;

/// One place an operation's result is published: a room, the resource's path, and optionally what `resource`
/// contains.
pub struct Recipient<E> {
    /// The room.
    pub room: Template<E>,
    /// The resource's path.
    pub path: Template<E>,
    /// The `resource` payload; `None` serialises the entity.
    pub resource: Option<Projection<E>>,
    /// Several rooms per call, computed from the entity and the context; when set it replaces [`Self::room`].
    pub rooms: Option<ContextFn<E, Vec<String>>>,
}

impl<E> Recipient<E> {
    /// A recipient publishing the serialised entity.
    pub fn new(room: impl Into<Template<E>>, path: impl Into<Template<E>>) -> Self {
        Self {
            room: room.into(),
            path: path.into(),
            resource: None,
            rooms: None,
        }
    }

    /// A recipient publishing to every room `rooms(entity, ctx)` returns (one event per room, all with `path`).
    pub fn to_rooms(
        rooms: impl Fn(&E, &ExecutionContext) -> Vec<String> + Send + Sync + 'static,
        path: impl Into<Template<E>>,
    ) -> Self {
        Self {
            room: Template::fixed(""),
            path: path.into(),
            resource: None,
            rooms: Some(Arc::new(rooms)),
        }
    }

    /// The rooms `entity` goes to in `ctx`.
    pub fn rooms_in(&self, entity: &E, ctx: &ExecutionContext) -> Vec<String> {
        match &self.rooms {
            Some(f) => f(entity, ctx),
            None => vec![self.room.render_in(entity, ctx)],
        }
    }

    /// Publishes `f(entity)` instead of the serialised entity.
    pub fn with_resource(mut self, f: impl Fn(&E) -> Value + Send + Sync + 'static) -> Self {
        self.resource = Some(Arc::new(f));
        self
    }
}

impl<E> Clone for Recipient<E> {
    fn clone(&self) -> Self {
        Self {
            room: self.room.clone(),
            path: self.path.clone(),
            resource: self.resource.clone(),
            rooms: self.rooms.clone(),
        }
    }
}

impl<E> fmt::Debug for Recipient<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipient")
            .field("room", &self.room)
            .field("path", &self.path)
            .field("resource", &self.resource.as_ref().map(|_| "<fn>"))
            .field("rooms", &self.rooms.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// Per operation, where its result is published (the `@RealtimeCreated`, `@RealtimeUpdated`, `@RealtimeDeleted`,
/// `@RealtimeSaved` decorators of the seed).
pub struct Recipients<E> {
    /// Published with action `created` after `create`.
    pub created: Vec<Recipient<E>>,
    /// Published with action `updated` after `update`.
    pub updated: Vec<Recipient<E>>,
    /// Published with action `deleted` after a `delete` that deleted something.
    pub deleted: Vec<Recipient<E>>,
    /// Published with action `saved` after a `save` that created or updated.
    pub saved: Vec<Recipient<E>>,
    /// Where a service's non-CRUD events go: `realtime:resource` with action `event`
    /// ([`Realtime::publish_resource_event`]) and `realtime:event` ([`Realtime::publish_room_event`]).
    pub event: Vec<Recipient<E>>,
}

impl<E> Default for Recipients<E> {
    fn default() -> Self {
        Self {
            created: Vec::new(),
            updated: Vec::new(),
            deleted: Vec::new(),
            saved: Vec::new(),
            event: Vec::new(),
        }
    }
}

impl<E> Clone for Recipients<E> {
    fn clone(&self) -> Self {
        Self {
            created: self.created.clone(),
            updated: self.updated.clone(),
            deleted: self.deleted.clone(),
            saved: self.saved.clone(),
            event: self.event.clone(),
        }
    }
}

impl<E> fmt::Debug for Recipients<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recipients")
            .field("created", &self.created)
            .field("updated", &self.updated)
            .field("deleted", &self.deleted)
            .field("saved", &self.saved)
            .field("event", &self.event)
            .finish()
    }
}

impl<E> Recipients<E> {
    /// No recipients.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a recipient for `created`.
    pub fn created(mut self, r: Recipient<E>) -> Self {
        self.created.push(r);
        self
    }

    /// Adds a recipient for `updated`.
    pub fn updated(mut self, r: Recipient<E>) -> Self {
        self.updated.push(r);
        self
    }

    /// Adds a recipient for `deleted`.
    pub fn deleted(mut self, r: Recipient<E>) -> Self {
        self.deleted.push(r);
        self
    }

    /// Adds a recipient for `saved`.
    pub fn saved(mut self, r: Recipient<E>) -> Self {
        self.saved.push(r);
        self
    }

    /// Adds a recipient for a service's events (action `event`, and `realtime:event`).
    pub fn event(mut self, r: Recipient<E>) -> Self {
        self.event.push(r);
        self
    }

    /// Adds the same recipient to all four operations (not to [`Self::event`]).
    pub fn all(self, r: Recipient<E>) -> Self {
        self.created(r.clone())
            .updated(r.clone())
            .deleted(r.clone())
            .saved(r)
    }

    /// The distinct rooms `entity` is published to, over all operations, in declaration order. The REST API hands
    /// out room tokens for these (`websocket: {room, token}`).
    pub fn rooms_for(&self, entity: &E) -> Vec<String> {
        self.rooms_for_in(entity, &ExecutionContext::internal(""))
    }

    /// [`Self::rooms_for`] in the request `ctx` (for recipients computed from the context).
    pub fn rooms_for_in(&self, entity: &E, ctx: &ExecutionContext) -> Vec<String> {
        let mut rooms: Vec<String> = Vec::new();
        for r in self
            .created
            .iter()
            .chain(&self.updated)
            .chain(&self.deleted)
            .chain(&self.saved)
            .chain(&self.event)
        {
            for room in r.rooms_in(entity, ctx) {
                if !rooms.contains(&room) {
                    rooms.push(room);
                }
            }
        }
        rooms
    }

    /// The events `entity` produces for `action`, one per recipient.
    pub fn events(&self, action: ResourceAction, type_name: &str, entity: &E) -> Vec<ResourceEvent>
    where
        E: Serialize,
    {
        self.events_in(action, type_name, entity, &ExecutionContext::internal(""))
    }

    /// The events `entity` produces for `action` in the request `ctx`: one per recipient and room.
    pub fn events_in(
        &self,
        action: ResourceAction,
        type_name: &str,
        entity: &E,
        ctx: &ExecutionContext,
    ) -> Vec<ResourceEvent>
    where
        E: Serialize,
    {
        self.events_and_resource_in(action, type_name, entity, ctx)
            .0
    }

    /// [`Self::events_in`], and `entity` serialised (`serde_json::to_value`) as the events of recipients without a
    /// projection carry it: a caller that answers with the resource (the REST API) reuses it instead of serialising
    /// the entity again. `None` when no recipient of `action` publishes the entity unprojected.
    pub fn events_and_resource_in(
        &self,
        action: ResourceAction,
        type_name: &str,
        entity: &E,
        ctx: &ExecutionContext,
    ) -> (Vec<ResourceEvent>, Option<Value>)
    where
        E: Serialize,
    {
        let list = match action {
            ResourceAction::Created => &self.created,
            ResourceAction::Updated => &self.updated,
            ResourceAction::Deleted => &self.deleted,
            ResourceAction::Saved => &self.saved,
            ResourceAction::Event => &self.event,
        };
        let mut serialised: Option<Value> = None;
        let mut events = Vec::with_capacity(list.len());
        for r in list {
            let projected;
            let resource: &Value = match &r.resource {
                Some(project) => {
                    projected = project(entity);
                    &projected
                }
                None => {
                    if serialised.is_none() {
                        match serde_json::to_value(entity) {
                            Ok(v) => serialised = Some(v),
                            Err(e) => {
                                tracing::warn!(type_name, error = %e, "entity does not serialise; event not published");
                                continue;
                            }
                        }
                    }
                    match &serialised {
                        Some(v) => v,
                        None => continue,
                    }
                }
            };
            let path = r.path.render_in(entity, ctx);
            for room in r.rooms_in(entity, ctx) {
                events.push(ResourceEvent {
                    action,
                    room,
                    type_name: type_name.to_owned(),
                    path: path.clone(),
                    resource: resource.clone(),
                });
            }
        }
        (events, serialised)
    }
}

/// A [`CrudService`] that publishes the results of another one (the decorators).
#[derive(Debug)]
pub struct Realtime<S, B, E> {
    inner: S,
    bus: B,
    recipients: Recipients<E>,
}

impl<S, B, E> Realtime<S, B, E> {
    /// Wraps `inner`, publishing to `bus` as `recipients` declare.
    pub fn new(inner: S, bus: B, recipients: Recipients<E>) -> Self {
        Self {
            inner,
            bus,
            recipients,
        }
    }

    /// The wrapped service.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The declared recipients.
    pub fn recipients(&self) -> &Recipients<E> {
        &self.recipients
    }
}

impl<S, B: EventBus, E: Serialize> Realtime<S, B, E> {
    /// Publishes `entity`'s events for `action`; returns the entity serialised as they carry it (see
    /// [`Recipients::events_and_resource_in`]). A bus error is logged, never returned: the operation succeeded.
    async fn publish(
        &self,
        ctx: &ExecutionContext,
        action: ResourceAction,
        type_name: &str,
        entity: &E,
    ) -> Option<Value> {
        let (events, resource) = self
            .recipients
            .events_and_resource_in(action, type_name, entity, ctx);
        let _ = self.publish_all(action, type_name, events).await;
        resource
    }

    async fn try_publish(
        &self,
        ctx: &ExecutionContext,
        action: ResourceAction,
        type_name: &str,
        entity: &E,
    ) -> Result<(), BusError> {
        let events = self.recipients.events_in(action, type_name, entity, ctx);
        self.publish_all(action, type_name, events).await
    }

    /// Hands every event to the bus; the first error, if any (each is logged).
    async fn publish_all(
        &self,
        action: ResourceAction,
        type_name: &str,
        events: Vec<ResourceEvent>,
    ) -> Result<(), BusError> {
        let mut result = Ok(());
        for event in events {
            if let Err(e) = self.bus.publish(event).await {
                tracing::warn!(type_name, action = action.as_str(), error = %e, "realtime event not published");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Publishes a non-CRUD change of `entity` to its [`Recipients::event`] recipients, as `realtime:resource` with
    /// action `event` (the rooms, paths and projection of those recipients). Tries every recipient; the first bus
    /// error, if any.
    pub async fn publish_resource_event(
        &self,
        ctx: &ExecutionContext,
        type_name: &str,
        entity: &E,
    ) -> Result<(), BusError> {
        self.try_publish(ctx, ResourceAction::Event, type_name, entity)
            .await
    }

    /// Publishes `data` as `realtime:event {name: room, data}` to each distinct room of `entity`'s
    /// [`Recipients::event`] recipients (a typing indicator, a reaction). Tries every room; the first bus error, if any.
    pub async fn publish_room_event(
        &self,
        ctx: &ExecutionContext,
        entity: &E,
        data: &Value,
    ) -> Result<(), BusError> {
        let mut rooms: Vec<String> = Vec::new();
        for r in &self.recipients.event {
            for room in r.rooms_in(entity, ctx) {
                if !rooms.contains(&room) {
                    rooms.push(room);
                }
            }
        }
        super::bus::publish_event_to(&self.bus, rooms, data).await
    }
}

impl<E, S, B> Realtime<S, B, E>
where
    S: CrudService<E>,
    B: EventBus,
    E: Serialize,
{
    /// [`CrudService::create`], and the created entity serialised as its `created` events carry it (`None` when no
    /// recipient publishes it unprojected): the REST API answers with those bytes' source instead of serialising the
    /// entity a second time.
    pub async fn create_serialised(
        &self,
        ctx: &ExecutionContext,
        item: E,
    ) -> Result<(CreateResult<E>, Option<Value>), CrudError> {
        let result = self.inner.create(ctx, item).await?;
        let resource = self
            .publish(
                ctx,
                ResourceAction::Created,
                result.type_name,
                &result.entity,
            )
            .await;
        Ok((result, resource))
    }

    /// [`CrudService::update`], and the updated entity serialised as its `updated` events carry it (see
    /// [`Self::create_serialised`]).
    pub async fn update_serialised(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: S::Patch,
    ) -> Result<(UpdateResult<E>, Option<Value>), CrudError> {
        let result = self.inner.update(ctx, id, patch).await?;
        let resource = self
            .publish(
                ctx,
                ResourceAction::Updated,
                result.type_name,
                &result.entity,
            )
            .await;
        Ok((result, resource))
    }
}

impl<E, S, B> CrudService<E> for Realtime<S, B, E>
where
    S: CrudService<E>,
    B: EventBus,
    E: Serialize,
{
    type Patch = S::Patch;

    async fn create(&self, ctx: &ExecutionContext, item: E) -> Result<CreateResult<E>, CrudError> {
        Ok(self.create_serialised(ctx, item).await?.0)
    }

    async fn get(&self, ctx: &ExecutionContext, id: &str) -> Result<Option<E>, CrudError> {
        self.inner.get(ctx, id).await
    }

    async fn update(
        &self,
        ctx: &ExecutionContext,
        id: &str,
        patch: Self::Patch,
    ) -> Result<UpdateResult<E>, CrudError> {
        Ok(self.update_serialised(ctx, id, patch).await?.0)
    }

    async fn delete(&self, ctx: &ExecutionContext, id: &str) -> Result<DeleteResult<E>, CrudError> {
        let result = self.inner.delete(ctx, id).await?;
        if result.deleted {
            self.publish(
                ctx,
                ResourceAction::Deleted,
                result.type_name,
                &result.entity,
            )
            .await;
        }
        Ok(result)
    }

    async fn list(
        &self,
        ctx: &ExecutionContext,
        options: &ListOptions,
    ) -> Result<ListResult<E>, CrudError> {
        self.inner.list(ctx, options).await
    }

    async fn save(&self, ctx: &ExecutionContext, item: E) -> Result<SaveResult<E>, CrudError> {
        let result = self.inner.save(ctx, item).await?;
        if result.operation != SaveOperation::Exists {
            self.publish(ctx, ResourceAction::Saved, result.type_name, &result.entity)
                .await;
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use futures_lite::future::block_on;
    use serde_json::json;

    use super::super::bus::InMemoryBus;
    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize)]
    struct Message {
        id: String,
        channel: String,
        text: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        secret: Option<String>,
    }

    fn msg(id: &str, channel: &str, text: &str) -> Message {
        Message {
            id: id.into(),
            channel: channel.into(),
            text: text.into(),
            secret: None,
        }
    }

    /// A service over a map; `fail` makes every write fail.
    #[derive(Default)]
    struct Messages {
        rows: RefCell<BTreeMap<String, Message>>,
        fail: bool,
    }

    impl CrudService<Message> for Messages {
        type Patch = String;

        async fn create(
            &self,
            _: &ExecutionContext,
            item: Message,
        ) -> Result<CreateResult<Message>, CrudError> {
            if self.fail {
                return Err(CrudError::Unavailable("store down".into()));
            }
            self.rows.borrow_mut().insert(item.id.clone(), item.clone());
            Ok(CreateResult {
                type_name: "message",
                entity: item,
            })
        }

        async fn get(&self, _: &ExecutionContext, id: &str) -> Result<Option<Message>, CrudError> {
            Ok(self.rows.borrow().get(id).cloned())
        }

        async fn update(
            &self,
            _: &ExecutionContext,
            id: &str,
            text: String,
        ) -> Result<UpdateResult<Message>, CrudError> {
            if self.fail {
                return Err(CrudError::Unavailable("store down".into()));
            }
            let mut rows = self.rows.borrow_mut();
            let m = rows.get_mut(id).ok_or(CrudError::NotFound)?;
            m.text = text;
            Ok(UpdateResult {
                type_name: "message",
                entity: m.clone(),
            })
        }

        async fn delete(
            &self,
            _: &ExecutionContext,
            id: &str,
        ) -> Result<DeleteResult<Message>, CrudError> {
            if self.fail {
                return Err(CrudError::Unavailable("store down".into()));
            }
            match self.rows.borrow_mut().remove(id) {
                Some(m) => Ok(DeleteResult {
                    type_name: "message",
                    entity: m,
                    deleted: true,
                }),
                None => Ok(DeleteResult {
                    type_name: "message",
                    entity: msg(id, "", ""),
                    deleted: false,
                }),
            }
        }

        async fn list(
            &self,
            _: &ExecutionContext,
            o: &ListOptions,
        ) -> Result<ListResult<Message>, CrudError> {
            let limit = o.limit.unwrap_or(10);
            let entities: Vec<Message> = self.rows.borrow().values().take(limit).cloned().collect();
            Ok(ListResult {
                type_name: "message",
                entities,
                next_page_token: None,
            })
        }

        async fn save(
            &self,
            _: &ExecutionContext,
            item: Message,
        ) -> Result<SaveResult<Message>, CrudError> {
            if self.fail {
                return Err(CrudError::Unavailable("store down".into()));
            }
            let previous = self.rows.borrow_mut().insert(item.id.clone(), item.clone());
            let operation = match previous {
                None => SaveOperation::Created,
                Some(p) if p == item => SaveOperation::Exists,
                Some(_) => SaveOperation::Updated,
            };
            Ok(SaveResult {
                type_name: "message",
                entity: item,
                operation,
            })
        }
    }

    fn ctx() -> ExecutionContext {
        ExecutionContext::internal("req-1")
    }

    fn by_channel() -> Recipient<Message> {
        Recipient::new(
            Template::from_fn(|m: &Message| format!("/channels/{}/messages", m.channel)),
            Template::from_fn(|m: &Message| format!("/messages/{}", m.id)),
        )
    }

    fn service(
        fail: bool,
        recipients: Recipients<Message>,
    ) -> (Realtime<Messages, InMemoryBus, Message>, InMemoryBus) {
        let bus = InMemoryBus::new();
        (
            Realtime::new(
                Messages {
                    fail,
                    ..Messages::default()
                },
                bus.clone(),
                recipients,
            ),
            bus,
        )
    }

    #[test]
    fn fixed_room_and_computed_path() {
        let (s, bus) = service(
            false,
            Recipients::new().created(Recipient::new(
                "/messages",
                Template::from_fn(|m: &Message| format!("/messages/{}", m.id)),
            )),
        );
        let created = block_on(s.create(&ctx(), msg("1", "c", "hi"))).unwrap();
        assert_eq!(created.entity.id, "1");
        assert_eq!(
            bus.take(),
            vec![ResourceEvent {
                action: ResourceAction::Created,
                room: "/messages".into(),
                type_name: "message".into(),
                path: "/messages/1".into(),
                resource: json!({"id": "1", "channel": "c", "text": "hi"}),
            }]
        );
    }

    #[test]
    fn computed_room_and_fixed_path() {
        let (s, bus) = service(
            false,
            Recipients::new().updated(Recipient::new(
                Template::from_fn(|m: &Message| format!("/channels/{}", m.channel)),
                "/messages",
            )),
        );
        block_on(s.inner().create(&ctx(), msg("1", "general", "a"))).unwrap();
        block_on(s.update(&ctx(), "1", "b".into())).unwrap();
        let events = bus.take();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (
                events[0].action,
                events[0].room.as_str(),
                events[0].path.as_str()
            ),
            (ResourceAction::Updated, "/channels/general", "/messages")
        );
        assert_eq!(events[0].resource["text"], "b");
    }

    #[test]
    fn several_recipients_in_declaration_order_with_projection() {
        let (s, bus) = service(
            false,
            Recipients::new().created(by_channel()).created(
                Recipient::new("/feed", "/feed/latest")
                    .with_resource(|m: &Message| json!({"id": m.id})),
            ),
        );
        let mut m = msg("7", "general", "hello");
        m.secret = Some("hidden".into());
        block_on(s.create(&ctx(), m)).unwrap();
        let events = bus.take();
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].room.as_str(), events[0].path.as_str()),
            ("/channels/general/messages", "/messages/7")
        );
        assert_eq!(events[0].resource["secret"], "hidden");
        assert_eq!(
            (events[1].room.as_str(), events[1].path.as_str()),
            ("/feed", "/feed/latest")
        );
        assert_eq!(events[1].resource, json!({"id": "7"}));
    }

    #[test]
    fn create_and_update_return_the_resource_their_events_carry() {
        // The REST API answers with this value: it must be the unprojected event's resource and the entity serialised.
        let (s, bus) = service(
            false,
            Recipients::new()
                .created(
                    Recipient::new("/feed", "/feed/latest")
                        .with_resource(|m: &Message| json!({"id": m.id})),
                )
                .created(by_channel())
                .updated(by_channel()),
        );
        let mut m = msg("7", "general", "hello");
        m.secret = Some("hidden".into());
        let (created, resource) = block_on(s.create_serialised(&ctx(), m)).unwrap();
        let resource = resource.expect("an unprojected recipient");
        assert_eq!(resource, serde_json::to_value(&created.entity).unwrap());
        let events = bus.take();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].resource, json!({"id": "7"}));
        assert_eq!(events[1].resource, resource);
        assert_eq!(
            events[1].encode_args(),
            serde_json::to_string(&(
                "realtime:resource",
                json!({"action": "created", "room": "/channels/general/messages", "type": "message",
                       "path": "/messages/7", "resource": serde_json::to_value(&created.entity).unwrap()})
            ))
            .unwrap()
        );
        let (updated, resource) = block_on(s.update_serialised(&ctx(), "7", "b".into())).unwrap();
        assert_eq!(
            resource.unwrap(),
            serde_json::to_value(&updated.entity).unwrap()
        );
        assert_eq!(bus.take()[0].resource["text"], "b");
        // Only projections (or no recipient): nothing to reuse, the caller serialises the entity itself.
        let (s, _bus) = service(
            false,
            Recipients::new().created(
                Recipient::new("/feed", "/feed/latest")
                    .with_resource(|m: &Message| json!({"id": m.id})),
            ),
        );
        assert!(
            block_on(s.create_serialised(&ctx(), msg("8", "c", "x")))
                .unwrap()
                .1
                .is_none()
        );
        let (s, _bus) = service(false, Recipients::new());
        assert!(
            block_on(s.create_serialised(&ctx(), msg("9", "c", "x")))
                .unwrap()
                .1
                .is_none()
        );
    }

    #[test]
    fn failures_publish_nothing() {
        let (s, bus) = service(true, Recipients::new().all(by_channel()));
        assert_eq!(
            block_on(s.create(&ctx(), msg("1", "c", "x"))).unwrap_err(),
            CrudError::Unavailable("store down".into())
        );
        assert!(block_on(s.update(&ctx(), "1", "y".into())).is_err());
        assert!(block_on(s.delete(&ctx(), "1")).is_err());
        assert!(block_on(s.save(&ctx(), msg("1", "c", "x"))).is_err());
        assert!(bus.is_empty());
        // An update of a missing entity is a failure too.
        let (s, bus) = service(false, Recipients::new().all(by_channel()));
        assert_eq!(
            block_on(s.update(&ctx(), "nope", "y".into())).unwrap_err(),
            CrudError::NotFound
        );
        assert!(bus.is_empty());
    }

    #[test]
    fn delete_publishes_only_when_something_was_deleted() {
        let (s, bus) = service(false, Recipients::new().deleted(by_channel()));
        let r = block_on(s.delete(&ctx(), "missing")).unwrap();
        assert!(!r.deleted);
        assert!(bus.is_empty());
        block_on(s.inner().create(&ctx(), msg("3", "c", "bye"))).unwrap();
        assert!(block_on(s.delete(&ctx(), "3")).unwrap().deleted);
        let events = bus.take();
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].action, events[0].path.as_str()),
            (ResourceAction::Deleted, "/messages/3")
        );
        assert_eq!(events[0].resource["text"], "bye");
    }

    #[test]
    fn save_publishes_created_and_updated_but_not_exists() {
        let (s, bus) = service(false, Recipients::new().saved(by_channel()));
        let r = block_on(s.save(&ctx(), msg("1", "c", "a"))).unwrap();
        assert_eq!(r.operation, SaveOperation::Created);
        let r = block_on(s.save(&ctx(), msg("1", "c", "a"))).unwrap();
        assert_eq!(r.operation, SaveOperation::Exists);
        let r = block_on(s.save(&ctx(), msg("1", "c", "b"))).unwrap();
        assert_eq!(r.operation, SaveOperation::Updated);
        let events = bus.take();
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.action == ResourceAction::Saved));
        assert_eq!(
            (
                events[0].resource["text"].as_str(),
                events[1].resource["text"].as_str()
            ),
            (Some("a"), Some("b"))
        );
    }

    #[test]
    fn operations_without_recipients_and_reads_publish_nothing() {
        let (s, bus) = service(false, Recipients::new().deleted(by_channel()));
        block_on(s.create(&ctx(), msg("1", "c", "a"))).unwrap();
        block_on(s.update(&ctx(), "1", "b".into())).unwrap();
        assert_eq!(
            block_on(s.get(&ctx(), "1")).unwrap().map(|m| m.text),
            Some("b".into())
        );
        assert_eq!(
            block_on(s.list(&ctx(), &ListOptions::default()))
                .unwrap()
                .entities
                .len(),
            1
        );
        assert!(bus.is_empty());
    }

    #[test]
    fn default_save_is_unsupported() {
        struct NoSave;
        impl CrudService<Message> for NoSave {
            type Patch = ();
            async fn create(
                &self,
                _: &ExecutionContext,
                _: Message,
            ) -> Result<CreateResult<Message>, CrudError> {
                Err(CrudError::Forbidden("read only".into()))
            }
            async fn get(
                &self,
                _: &ExecutionContext,
                _: &str,
            ) -> Result<Option<Message>, CrudError> {
                Ok(None)
            }
            async fn update(
                &self,
                _: &ExecutionContext,
                _: &str,
                _: (),
            ) -> Result<UpdateResult<Message>, CrudError> {
                Err(CrudError::NotFound)
            }
            async fn delete(
                &self,
                _: &ExecutionContext,
                _: &str,
            ) -> Result<DeleteResult<Message>, CrudError> {
                Err(CrudError::NotFound)
            }
            async fn list(
                &self,
                _: &ExecutionContext,
                _: &ListOptions,
            ) -> Result<ListResult<Message>, CrudError> {
                Ok(ListResult {
                    type_name: "message",
                    entities: vec![],
                    next_page_token: None,
                })
            }
        }
        let bus = InMemoryBus::new();
        let s = Realtime::new(NoSave, bus.clone(), Recipients::new().all(by_channel()));
        let e = block_on(s.save(&ctx(), msg("1", "c", "a"))).unwrap_err();
        assert_eq!((e.code(), e.http_status()), ("unsupported", 405));
        assert!(bus.is_empty());
    }

    #[test]
    fn bus_errors_do_not_fail_the_operation() {
        struct ClosedBus;
        impl EventBus for ClosedBus {
            async fn publish(&self, _: ResourceEvent) -> Result<(), BusError> {
                Err(BusError::Closed)
            }
            async fn publish_event(&self, _: super::super::bus::RoomEvent) -> Result<(), BusError> {
                Err(BusError::Closed)
            }
        }
        let s = Realtime::new(
            Messages::default(),
            ClosedBus,
            Recipients::new().created(by_channel()),
        );
        assert!(block_on(s.create(&ctx(), msg("1", "c", "a"))).is_ok());
        assert!(block_on(s.get(&ctx(), "1")).unwrap().is_some());
    }

    #[test]
    fn recipients_see_the_request_context() {
        let bus = InMemoryBus::new();
        let from_url = Recipient::new(
            Template::from_ctx_fn(|m: &Message, ctx: &ExecutionContext| {
                format!(
                    "/companies/{}/channels/{}/messages",
                    ctx.param("company_id").unwrap_or("none"),
                    m.channel
                )
            }),
            Template::from_ctx_fn(|m: &Message, ctx: &ExecutionContext| {
                format!("/messages/{}?by={}", m.id, ctx.method)
            }),
        );
        let per_user = Recipient::to_rooms(
            |m: &Message, ctx: &ExecutionContext| {
                let mut rooms = vec!["/feed".to_string()];
                if let Some(u) = &ctx.user {
                    rooms.push(format!("/users/{}/{}", u.id, m.channel));
                }
                rooms
            },
            "/fixed",
        );
        let recipients = Recipients::new().created(from_url).created(per_user);
        let s = Realtime::new(Messages::default(), bus.clone(), recipients.clone());
        let ctx = ExecutionContext::internal("r")
            .with_method("POST")
            .with_path_params([("company_id", "acme")]);
        block_on(s.create(&ctx, msg("1", "c1", "a"))).unwrap();
        let got: Vec<(String, String)> = bus.take().into_iter().map(|e| (e.room, e.path)).collect();
        assert_eq!(
            got,
            [
                (
                    "/companies/acme/channels/c1/messages".to_string(),
                    "/messages/1?by=POST".to_string()
                ),
                ("/feed".into(), "/fixed".into())
            ]
        );
        // Without a context the functions see an internal one; rooms_for_in lists every room of the call.
        assert_eq!(
            recipients.rooms_for(&msg("1", "c1", "")),
            ["/companies/none/channels/c1/messages", "/feed"]
        );
        assert_eq!(
            recipients.rooms_for_in(&msg("1", "c1", ""), &ctx),
            ["/companies/acme/channels/c1/messages", "/feed"]
        );
    }

    #[test]
    fn service_events_use_the_event_recipients() {
        let bus = InMemoryBus::new();
        let s = Realtime::new(
            Messages::default(),
            bus.clone(),
            Recipients::new()
                .created(by_channel())
                .event(by_channel())
                .event(Recipient::new("/feed", "/feed").with_resource(|_| json!(null))),
        );
        let m = msg("1", "c4", "a");
        block_on(s.publish_resource_event(&ctx(), "message", &m)).unwrap();
        let events = bus.take();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].action, ResourceAction::Event);
        assert_eq!(events[0].room, "/channels/c4/messages");
        assert_eq!(
            (events[1].room.as_str(), &events[1].resource),
            ("/feed", &json!(null))
        );
        block_on(s.publish_room_event(&ctx(), &m, &json!({"typing": true}))).unwrap();
        let rooms: Vec<String> = bus.room_events().into_iter().map(|e| e.room).collect();
        assert_eq!(rooms, ["/channels/c4/messages", "/feed"]);
        assert!(bus.is_empty());
    }

    #[test]
    fn rooms_for_lists_distinct_rooms() {
        let r = Recipients::new()
            .all(by_channel())
            .created(Recipient::new("/feed", "/feed"))
            .updated(Recipient::new("/feed", "/feed"));
        assert_eq!(
            r.rooms_for(&msg("1", "c9", "")),
            vec!["/channels/c9/messages".to_string(), "/feed".to_string()]
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let cases = [
            (CrudError::Unauthenticated, "unauthenticated", 401),
            (CrudError::Forbidden("x".into()), "forbidden", 403),
            (CrudError::NotFound, "not_found", 404),
            (CrudError::InvalidInput("x".into()), "invalid_input", 400),
            (CrudError::Conflict("x".into()), "conflict", 409),
            (CrudError::Unavailable("x".into()), "unavailable", 503),
            (CrudError::Internal("x".into()), "internal", 500),
        ];
        for (e, code, status) in cases {
            assert_eq!((e.code(), e.http_status()), (code, status));
        }
        assert_eq!(
            ExecutionContext::internal("r").require_user().unwrap_err(),
            CrudError::Unauthenticated
        );
    }

    #[test]
    fn template_debug_and_clone() {
        let t: Template<Message> = Template::from_fn(|m: &Message| m.id.clone());
        assert_eq!(format!("{:?}", t.clone()), "Computed(<fn>)");
        let f: Template<Message> = "/x".into();
        assert_eq!(format!("{f:?}"), "Fixed(\"/x\")");
        assert_eq!(
            Template::<Message>::fixed(String::from("/y")).render(&msg("1", "", "")),
            "/y"
        );
    }
}
