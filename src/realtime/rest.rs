//! The REST API generated from registered CRUD services.
//!
//! Each registered service is a [`Realtime`] wrapper (so the API knows its rooms) plus a [`Collection`]: the URL of
//! the collection, whose `{param}` segments become partition keys, and the URL of one item. Under the prefix
//! (`/api/v1` by default):
//!
//! | request | service call | answer |
//! |---|---|---|
//! | `POST <collection>` body `{"resource": {...}}` | `create` (the URL's params are set on the resource) | 201 `{"resource", "websocket": {room, token}}` |
//! | `GET <item>` | `get` | 200 `{"resource", "websocket"}` |
//! | `PATCH <item>` body `{"resource": {...}}` | `update` | 200 `{"resource", "websocket"}` |
//! | `DELETE <item>` | `delete` | 200 `{"resource", "deleted": true}` |
//! | `GET <collection>?limit=&page_token=&websockets=true` | `list` (the URL's params and other query parameters are filters) | 200 `{"resources", "next_page_token", "websockets": [{room, token}]}` |
//!
//! Every request needs `Authorization: Bearer <access token>`, verified with [`AccessVerifier`]. Room tokens are signed
//! with [`RoomTokens`] for the caller's user, and only after the service accepted the call (so its access rules
//! decide who gets them). `websockets` is included in a list answer only with `websockets=true`.
//!
//! Errors are JSON `{"code": "<stable code>", "message": "<text>"}` with the status of [`CrudError::http_status`]:
//!
//! | status | code | when |
//! |---|---|---|
//! | 401 | `unauthenticated` | no `Authorization: Bearer`, or the token is refused (the message is the token error, e.g. `jwt expired`) |
//! | 403 | `forbidden` | the service's access rules refuse the caller |
//! | 404 | `not_found` | no such entity, or no such route under the prefix |
//! | 400 | `invalid_input` | body not JSON, not `{"resource": {...}}`, fields of the wrong type, bad `limit` |
//! | 405 | `method_not_allowed` | a method the route does not serve |
//! | 409 | `conflict` | the change conflicts with stored data (e.g. a channel id that is taken) |
//! | 429 | `rate_limited` | the caller (token `sub`) is over its write rate or write byte budget ([`WriteLimits`]); `Retry-After` says when to retry, in seconds |
//! | 503 | `unavailable` | the database is unavailable (retry later) |
//! | 500 | `internal` | a bug |
//!
//! Services run on the shard that received the request; their [`Realtime`] wrapper publishes to that shard's bus.
//!
//! **Per-user fair use** ([`WriteLimits`], shared by every shard of the process): each user (token `sub`) has two
//! token buckets refilled continuously, one of `writes_per_s` requests and one of `write_bytes_per_s` request-body
//! bytes, each holding at most one second's worth. `POST` and `PATCH` take one write and their body's bytes; a request
//! is admitted while both buckets are positive (a large body may take the byte bucket below zero: the debt is paid
//! before the next write). Otherwise 429 `rate_limited` with `Retry-After`. A limit of 0 turns that bucket off.
//!
//! **Bounded answers:** a list answer is written straight from the entities into one buffer (no intermediate JSON
//! tree), so a page is held once; services bound a page by bytes as well as rows.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::auth::{AccessVerifier, AuthenticatedUser, RoomTokens};
use super::bus::EventBus;
use super::crud::{CrudError, CrudService, ExecutionContext, ListOptions, Realtime, Transport};
use crate::server::{Request, Response, ResponseFuture, Router, ShardCtx};

/// Default URL prefix of the API.
pub const PREFIX_DEFAULT: &str = "/api/v1";
/// Default largest `limit` a list request may ask for.
pub const LIST_LIMIT_MAX_DEFAULT: usize = 1000;

/// Default of [`WriteLimits::writes_per_s`].
pub const USER_WRITES_PER_S_DEFAULT: u32 = 100;
/// Default of [`WriteLimits::write_bytes_per_s`].
pub const USER_WRITE_BYTES_PER_S_DEFAULT: u64 = 4 * 1024 * 1024;
/// Users whose buckets one process tracks; beyond it, buckets that are full again (idle users) are forgotten first.
pub const USERS_TRACKED_MAX: usize = 100_000;
/// Verified access tokens one shard's REST API remembers ([`VerifiedTokens`]); when full, the expired ones are
/// dropped, and if none was, all of them.
pub const VERIFIED_TOKENS_CACHED_MAX: usize = 1024;

/// Access tokens this shard has verified, by SHA-256 of the token, with the user each one names: a client that
/// sends the same bearer token on every request (the usual case) pays the signature check and the claims parsing
/// once. An entry is used only before the token's `exp` (without leeway: at and after it the token is verified
/// again, which applies the leeway and gives the exact error). Only tokens that verified are kept; the verifier's
/// key, algorithm, issuer and audience are fixed for the process, and `nbf` once passed stays passed, so a hit
/// answers what verifying again would. Keys are digests: a lookup compares no secret bytes.
#[derive(Debug, Default)]
struct VerifiedTokens {
    users: std::cell::RefCell<HashMap<[u8; 32], AuthenticatedUser>>,
}

impl VerifiedTokens {
    fn digest(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// The user of `token` if it verified before and has not reached its `exp` at `now_s`.
    fn get(&self, digest: &[u8; 32], now_s: u64) -> Option<AuthenticatedUser> {
        let mut users = self.users.borrow_mut();
        match users.get(digest) {
            Some(user) if now_s < user.expires_at_s => Some(user.clone()),
            Some(_) => {
                users.remove(digest);
                None
            }
            None => None,
        }
    }

    fn insert(&self, digest: [u8; 32], user: &AuthenticatedUser, now_s: u64) {
        if now_s >= user.expires_at_s {
            return;
        }
        let mut users = self.users.borrow_mut();
        if users.len() >= VERIFIED_TOKENS_CACHED_MAX && !users.contains_key(&digest) {
            users.retain(|_, u| now_s < u.expires_at_s);
            if users.len() >= VERIFIED_TOKENS_CACHED_MAX {
                users.clear();
            }
        }
        users.insert(digest, user.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.borrow().len()
    }
}

/// Per-user write limits of the REST API (see the module docs). `0` turns a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteLimits {
    /// `POST`/`PATCH` requests per second per user. Default [`USER_WRITES_PER_S_DEFAULT`].
    pub writes_per_s: u32,
    /// Request-body bytes of `POST`/`PATCH` per second per user. Default [`USER_WRITE_BYTES_PER_S_DEFAULT`].
    pub write_bytes_per_s: u64,
}

impl Default for WriteLimits {
    fn default() -> Self {
        Self {
            writes_per_s: USER_WRITES_PER_S_DEFAULT,
            write_bytes_per_s: USER_WRITE_BYTES_PER_S_DEFAULT,
        }
    }
}

impl WriteLimits {
    /// No limits.
    pub fn off() -> Self {
        Self {
            writes_per_s: 0,
            write_bytes_per_s: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Buckets {
    writes: f64,
    bytes: f64,
    at: Instant,
}

/// The per-user buckets of [`WriteLimits`], shared by every shard (clone it into each shard's [`RestApi`]).
#[derive(Debug, Clone)]
pub struct UserWriteLimiter {
    limits: WriteLimits,
    users: Arc<Mutex<HashMap<String, Buckets>>>,
}

impl UserWriteLimiter {
    /// Buckets for `limits`.
    pub fn new(limits: WriteLimits) -> Self {
        Self {
            limits,
            users: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The limits.
    pub fn limits(&self) -> WriteLimits {
        self.limits
    }

    /// Takes one write of `bytes` for `user`: `Ok` if admitted, else `Err(seconds to wait)`.
    pub fn admit(&self, user: &str, bytes: usize) -> Result<(), u64> {
        let WriteLimits {
            writes_per_s,
            write_bytes_per_s,
        } = self.limits;
        if writes_per_s == 0 && write_bytes_per_s == 0 {
            return Ok(());
        }
        let (wr, br) = (f64::from(writes_per_s), write_bytes_per_s as f64);
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
        if users.len() >= USERS_TRACKED_MAX && !users.contains_key(user) {
            users.retain(|_, b| {
                let dt = now.duration_since(b.at).as_secs_f64();
                (wr > 0.0 && b.writes + dt * wr < wr) || (br > 0.0 && b.bytes + dt * br < br)
            });
        }
        let b = users.entry(user.to_owned()).or_insert(Buckets {
            writes: wr,
            bytes: br,
            at: now,
        });
        let dt = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.writes = (b.writes + dt * wr).min(wr);
        b.bytes = (b.bytes + dt * br).min(br);
        let writes_ok = wr == 0.0 || b.writes >= 1.0;
        let bytes_ok = br == 0.0 || b.bytes > 0.0;
        if writes_ok && bytes_ok {
            if wr > 0.0 {
                b.writes -= 1.0;
            }
            if br > 0.0 {
                b.bytes -= bytes as f64;
            }
            return Ok(());
        }
        let wait_writes = if writes_ok {
            0.0
        } else {
            (1.0 - b.writes) / wr
        };
        let wait_bytes = if bytes_ok {
            0.0
        } else {
            (-b.bytes) / br + 1e-3
        };
        Err(wait_writes.max(wait_bytes).ceil().max(1.0) as u64)
    }
}

/// The parameters a URL pattern captured, e.g. `company_id -> acme`.
pub type Params = BTreeMap<String, String>;

/// The rooms of a list, from the collection URL's params.
pub type ListRooms = Box<dyn Fn(&Params) -> Vec<String>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A URL pattern relative to the prefix, e.g. `/companies/{company_id}/workspaces/{workspace_id}/channels`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

impl Pattern {
    /// Parses `/a/{b}/c`: literal segments and `{name}` parameters.
    pub fn parse(pattern: &str) -> Self {
        let segments = pattern
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_owned()),
                    None => Segment::Literal(s.to_owned()),
                },
            )
            .collect();
        Self { segments }
    }

    /// The parameters of `segments` (already percent-decoded) if they match.
    pub fn matches(&self, segments: &[String]) -> Option<Params> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut params = Params::new();
        for (pat, seg) in self.segments.iter().zip(segments) {
            match pat {
                Segment::Literal(l) if l == seg => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if seg.is_empty() => return None,
                Segment::Param(name) => {
                    params.insert(name.clone(), seg.clone());
                }
            }
        }
        Some(params)
    }
}

/// Where a service lives in the URL space, and the rooms of its lists.
pub struct Collection {
    /// The collection, e.g. `/channels/{channel_id}/messages`. Its params are set on created resources and passed as
    /// list filters.
    pub collection: Pattern,
    /// One item; must capture `{id}`, e.g. `/messages/{id}`.
    pub item: Pattern,
    /// The rooms a list of this collection is published to, from the collection's params (room tokens of
    /// `websockets=true`).
    pub list_rooms: ListRooms,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("collection", &self.collection)
            .field("item", &self.item)
            .finish_non_exhaustive()
    }
}

impl Collection {
    /// A collection at `collection`, items at `item`, lists published to the rooms `list_rooms` computes.
    pub fn new(
        collection: &str,
        item: &str,
        list_rooms: impl Fn(&Params) -> Vec<String> + 'static,
    ) -> Self {
        Self {
            collection: Pattern::parse(collection),
            item: Pattern::parse(item),
            list_rooms: Box::new(list_rooms),
        }
    }
}

/// A successful answer of an endpoint, before room tokens are added.
enum Outcome {
    /// One resource and the rooms it is published to.
    One {
        status: u16,
        resource: Value,
        rooms: Vec<String>,
    },
    /// A deletion.
    Deleted { resource: Value },
    /// A page of resources: their JSON, comma-separated (the inside of the `resources` array).
    Page {
        resources: Vec<u8>,
        next_page_token: Option<String>,
    },
}

/// The object-safe face of one registered service.
trait Endpoint {
    fn create(
        &self,
        ctx: ExecutionContext,
        params: Params,
        body: Value,
    ) -> BoxFuture<Result<Outcome, CrudError>>;
    fn get(&self, ctx: ExecutionContext, id: String) -> BoxFuture<Result<Outcome, CrudError>>;
    fn update(
        &self,
        ctx: ExecutionContext,
        id: String,
        body: Value,
    ) -> BoxFuture<Result<Outcome, CrudError>>;
    fn delete(&self, ctx: ExecutionContext, id: String) -> BoxFuture<Result<Outcome, CrudError>>;
    fn list(
        &self,
        ctx: ExecutionContext,
        options: ListOptions,
    ) -> BoxFuture<Result<Outcome, CrudError>>;
}

struct ServiceEndpoint<S, B, E> {
    service: Rc<Realtime<S, B, E>>,
}

fn to_json<T: Serialize>(v: &T) -> Result<Value, CrudError> {
    serde_json::to_value(v)
        .map_err(|e| CrudError::Internal(format!("resource does not serialise: {e}")))
}

/// The entity as its events carried it, or serialised now when no event carried it unprojected.
fn resource_or_json<T: Serialize>(
    published: Option<Value>,
    entity: &T,
) -> Result<Value, CrudError> {
    match published {
        Some(v) => Ok(v),
        None => to_json(entity),
    }
}

fn from_json<T: DeserializeOwned>(v: Value) -> Result<T, CrudError> {
    serde_json::from_value(v).map_err(|e| CrudError::InvalidInput(e.to_string()))
}

impl<S, B, E> Endpoint for ServiceEndpoint<S, B, E>
where
    S: CrudService<E> + 'static,
    S::Patch: DeserializeOwned,
    B: EventBus + 'static,
    E: Serialize + DeserializeOwned + 'static,
{
    fn create(
        &self,
        ctx: ExecutionContext,
        params: Params,
        body: Value,
    ) -> BoxFuture<Result<Outcome, CrudError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let Value::Object(mut fields) = body else {
                return Err(CrudError::InvalidInput(
                    "`resource` must be a JSON object".into(),
                ));
            };
            for (k, v) in params {
                match fields.get(&k) {
                    Some(Value::String(s)) if *s != v => {
                        return Err(CrudError::InvalidInput(format!(
                            "`{k}` is {s:?} in the body but {v:?} in the URL"
                        )));
                    }
                    Some(Value::String(_)) | Some(Value::Null) | None => {
                        fields.insert(k, Value::String(v));
                    }
                    Some(_) => {
                        return Err(CrudError::InvalidInput(format!("`{k}` must be a string")));
                    }
                }
            }
            let item: E = from_json(Value::Object(fields))?;
            // The entity is serialised once: its `created` event and this answer share the value.
            let (created, resource) = service.create_serialised(&ctx, item).await?;
            Ok(Outcome::One {
                status: 201,
                resource: resource_or_json(resource, &created.entity)?,
                rooms: service.recipients().rooms_for_in(&created.entity, &ctx),
            })
        })
    }

    fn get(&self, ctx: ExecutionContext, id: String) -> BoxFuture<Result<Outcome, CrudError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let entity = service.get(&ctx, &id).await?.ok_or(CrudError::NotFound)?;
            Ok(Outcome::One {
                status: 200,
                resource: to_json(&entity)?,
                rooms: service.recipients().rooms_for_in(&entity, &ctx),
            })
        })
    }

    fn update(
        &self,
        ctx: ExecutionContext,
        id: String,
        body: Value,
    ) -> BoxFuture<Result<Outcome, CrudError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let patch: S::Patch = from_json(body)?;
            let (updated, resource) = service.update_serialised(&ctx, &id, patch).await?;
            Ok(Outcome::One {
                status: 200,
                resource: resource_or_json(resource, &updated.entity)?,
                rooms: service.recipients().rooms_for_in(&updated.entity, &ctx),
            })
        })
    }

    fn delete(&self, ctx: ExecutionContext, id: String) -> BoxFuture<Result<Outcome, CrudError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let deleted = service.delete(&ctx, &id).await?;
            if !deleted.deleted {
                return Err(CrudError::NotFound);
            }
            Ok(Outcome::Deleted {
                resource: to_json(&deleted.entity)?,
            })
        })
    }

    fn list(
        &self,
        ctx: ExecutionContext,
        options: ListOptions,
    ) -> BoxFuture<Result<Outcome, CrudError>> {
        let service = self.service.clone();
        Box::pin(async move {
            let page = service.list(&ctx, &options).await?;
            // Straight from each entity to the answer's bytes; each entity is dropped once written.
            let mut resources = Vec::new();
            for (i, entity) in page.entities.into_iter().enumerate() {
                if i > 0 {
                    resources.push(b',');
                }
                serde_json::to_writer(&mut resources, &entity).map_err(|e| {
                    CrudError::Internal(format!("resource does not serialise: {e}"))
                })?;
            }
            Ok(Outcome::Page {
                resources,
                next_page_token: page.next_page_token,
            })
        })
    }
}

struct Registered {
    collection: Collection,
    endpoint: Box<dyn Endpoint>,
}

/// The REST API of one shard: the registered services, the access-token verifier and the room-token signer.
pub struct RestApi {
    prefix: String,
    verifier: AccessVerifier,
    verified: VerifiedTokens,
    room_tokens: RoomTokens,
    list_limit_max: usize,
    services: Vec<Rc<Registered>>,
    requests: Cell<u64>,
    writes: Option<UserWriteLimiter>,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("prefix", &self.prefix)
            .field("services", &self.services.len())
            .finish_non_exhaustive()
    }
}

impl RestApi {
    /// An API under [`PREFIX_DEFAULT`] with no services yet.
    pub fn new(verifier: AccessVerifier, room_tokens: RoomTokens) -> Self {
        Self {
            prefix: PREFIX_DEFAULT.to_owned(),
            verifier,
            verified: VerifiedTokens::default(),
            room_tokens,
            list_limit_max: LIST_LIMIT_MAX_DEFAULT,
            services: Vec::new(),
            requests: Cell::new(0),
            writes: None,
        }
    }

    /// Limits every user's `POST`/`PATCH` requests with `limiter` (share one limiter between all shards). Without it
    /// there is no per-user limit.
    pub fn with_write_limiter(mut self, limiter: UserWriteLimiter) -> Self {
        self.writes = Some(limiter);
        self
    }

    /// Serves under `prefix` (e.g. `/api/v1`) instead.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The largest `limit` a list may ask for (larger ones are 400 `invalid_input`).
    pub fn with_list_limit_max(mut self, max: usize) -> Self {
        self.list_limit_max = max.max(1);
        self
    }

    /// Registers a service at `collection`.
    pub fn register<S, B, E>(
        mut self,
        collection: Collection,
        service: Rc<Realtime<S, B, E>>,
    ) -> Self
    where
        S: CrudService<E> + 'static,
        S::Patch: DeserializeOwned,
        B: EventBus + 'static,
        E: Serialize + DeserializeOwned + 'static,
    {
        self.services.push(Rc::new(Registered {
            collection,
            endpoint: Box::new(ServiceEndpoint { service }),
        }));
        self
    }

    /// Handles one request whose path is under the prefix.
    pub async fn handle(&self, shard_id: usize, request: Request) -> Response {
        let n = self.requests.get().wrapping_add(1);
        self.requests.set(n);
        let request_id = format!("{shard_id}-{n}");
        match self.dispatch(&request, request_id).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        }
    }

    fn authenticate(&self, request: &Request) -> Result<AuthenticatedUser, RestError> {
        let header = request.header("authorization").unwrap_or("").trim();
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ if header.is_empty() => "",
            _ => {
                return Err(RestError::Unauthenticated(
                    "the Authorization header must be `Bearer <access token>`".into(),
                ));
            }
        };
        let digest = VerifiedTokens::digest(token);
        let now_s = super::auth::now_s();
        if let Some(user) = self.verified.get(&digest, now_s) {
            return Ok(user);
        }
        let user = self
            .verifier
            .verify(token)
            .map_err(|e| RestError::Unauthenticated(e.to_string()))?;
        self.verified.insert(digest, &user, now_s);
        Ok(user)
    }

    async fn dispatch(&self, request: &Request, request_id: String) -> Result<Response, RestError> {
        let rest = request
            .path
            .strip_prefix(&self.prefix)
            .filter(|r| r.is_empty() || r.starts_with('/'))
            .ok_or(RestError::NoRoute)?;
        let segments: Vec<String> = rest
            .split('/')
            .filter(|s| !s.is_empty())
            .map(percent_decode)
            .collect::<Result<_, _>>()
            .map_err(|_| {
                RestError::Crud(CrudError::InvalidInput(
                    "invalid percent-encoding in the URL".into(),
                ))
            })?;
        let mut found: Option<(Rc<Registered>, Params, bool)> = None;
        for s in &self.services {
            if let Some(p) = s.collection.collection.matches(&segments) {
                found = Some((s.clone(), p, true));
                break;
            }
            if let Some(p) = s.collection.item.matches(&segments) {
                found = Some((s.clone(), p, false));
                break;
            }
        }
        let (service, params, is_collection) = found.ok_or(RestError::NoRoute)?;
        let method = request.method.as_str();
        let allowed: &[&str] = if is_collection {
            &["GET", "POST"]
        } else {
            &["GET", "PATCH", "DELETE"]
        };
        if !allowed.contains(&method) {
            return Err(RestError::MethodNotAllowed(allowed.join(", ")));
        }
        let user = self.authenticate(request)?;
        if matches!(method, "POST" | "PATCH")
            && let Some(limiter) = &self.writes
            && let Err(retry_after_s) = limiter.admit(&user.id, request.body.len())
        {
            return Err(RestError::RateLimited(retry_after_s));
        }
        let user_id = user.id.clone();
        let ctx = ExecutionContext::new(user, request_id, Transport::Http)
            .with_method(method)
            .with_path_params(params.clone());
        let endpoint = &service.endpoint;
        let id = || params.get("id").cloned().unwrap_or_default();
        let outcome = match (is_collection, method) {
            (true, "POST") => {
                endpoint
                    .create(ctx, params.clone(), resource_of(&request.body)?)
                    .await
            }
            (true, _) => {
                let (options, websockets) = self.list_options(request, &params)?;
                let outcome = endpoint.list(ctx, options).await?;
                let rooms = if websockets {
                    Some((service.collection.list_rooms)(&params))
                } else {
                    None
                };
                return self.page_response(&user_id, outcome, rooms);
            }
            (false, "GET") => endpoint.get(ctx, id()).await,
            (false, "PATCH") => {
                endpoint
                    .update(ctx, id(), resource_of(&request.body)?)
                    .await
            }
            (false, _) => endpoint.delete(ctx, id()).await,
        }?;
        self.page_response(&user_id, outcome, None)
    }

    fn list_options(
        &self,
        request: &Request,
        params: &Params,
    ) -> Result<(ListOptions, bool), RestError> {
        let mut options = ListOptions {
            filters: params.clone(),
            ..ListOptions::default()
        };
        let mut websockets = false;
        for pair in request.query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = |what: &str| RestError::Crud(CrudError::InvalidInput(what.to_owned()));
            let k = percent_decode(k).map_err(|_| bad("invalid percent-encoding in the query"))?;
            let v = percent_decode(v).map_err(|_| bad("invalid percent-encoding in the query"))?;
            match k.as_str() {
                "limit" => {
                    let n: usize = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=self.list_limit_max).contains(n))
                        .ok_or_else(|| {
                            bad(&format!(
                                "`limit` must be an integer from 1 to {}",
                                self.list_limit_max
                            ))
                        })?;
                    options.limit = Some(n);
                }
                "page_token" if !v.is_empty() => options.page_token = Some(v),
                "page_token" => {}
                "websockets" => websockets = matches!(v.as_str(), "true" | "1"),
                _ => {
                    if params.contains_key(&k) {
                        return Err(bad(&format!("`{k}` is given by the URL path")));
                    }
                    options.filters.insert(k, v);
                }
            }
        }
        Ok((options, websockets))
    }

    fn room_token(&self, user: &str, room: String) -> Result<Value, RestError> {
        let token = self
            .room_tokens
            .sign(user, &room)
            .map_err(|e| RestError::Crud(CrudError::Internal(e.to_string())))?;
        Ok(json!({ "room": room, "token": token }))
    }

    fn page_response(
        &self,
        user: &str,
        outcome: Outcome,
        rooms: Option<Vec<String>>,
    ) -> Result<Response, RestError> {
        Ok(match outcome {
            Outcome::One {
                status,
                resource,
                rooms,
            } => Response::new(
                status,
                "application/json",
                one_body(
                    &resource,
                    rooms
                        .into_iter()
                        .next()
                        .map(|room| self.room_token(user, room))
                        .transpose()?,
                )?,
            ),
            Outcome::Deleted { resource } => {
                Response::json(200, &json!({ "resource": resource, "deleted": true }))
            }
            Outcome::Page {
                resources,
                next_page_token,
            } => {
                let token = next_page_token.map(Value::String).unwrap_or(Value::Null);
                let websockets = match rooms {
                    Some(rooms) => Some(Value::Array(
                        rooms
                            .into_iter()
                            .map(|r| self.room_token(user, r))
                            .collect::<Result<Vec<_>, _>>()?,
                    )),
                    None => None,
                };
                let mut body = resources;
                // `{"resources":[` + resources + `],...}` in the same buffer (one copy of the page).
                let head = br#"{"resources":["#;
                body.splice(0..0, head.iter().copied());
                body.extend_from_slice(br#"],"next_page_token":"#);
                body.extend_from_slice(token.to_string().as_bytes());
                if let Some(w) = websockets {
                    body.extend_from_slice(br#","websockets":"#);
                    body.extend_from_slice(w.to_string().as_bytes());
                }
                body.push(b'}');
                Response::new(200, "application/json", body)
            }
        })
    }
}

/// `{"resource":<resource>[,"websocket":<websocket>]}`, written straight into the answer's buffer (the same bytes
/// as the object built and then serialised).
fn one_body(resource: &Value, websocket: Option<Value>) -> Result<Vec<u8>, RestError> {
    let internal = |e: serde_json::Error| {
        RestError::Crud(CrudError::Internal(format!(
            "resource does not serialise: {e}"
        )))
    };
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(br#"{"resource":"#);
    serde_json::to_writer(&mut body, resource).map_err(internal)?;
    if let Some(w) = websocket {
        body.extend_from_slice(br#","websocket":"#);
        serde_json::to_writer(&mut body, &w).map_err(internal)?;
    }
    body.push(b'}');
    Ok(body)
}

/// Why a request failed before or inside a service.
#[derive(Debug)]
enum RestError {
    NoRoute,
    MethodNotAllowed(String),
    Unauthenticated(String),
    RateLimited(u64),
    Crud(CrudError),
}

impl From<CrudError> for RestError {
    fn from(e: CrudError) -> Self {
        Self::Crud(e)
    }
}

/// The whole message of every 503 `unavailable` answer: what went wrong inside stays in the log.
pub const UNAVAILABLE_MESSAGE: &str = "database unavailable; retry";

fn body_error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({ "code": code, "message": message }))
}

fn error_response(e: &RestError) -> Response {
    match e {
        RestError::NoRoute => body_error(404, "not_found", "no such route"),
        RestError::MethodNotAllowed(allowed) => body_error(
            405,
            "method_not_allowed",
            &format!("method not allowed here; allowed: {allowed}"),
        )
        .with_header("Allow", allowed),
        RestError::Unauthenticated(msg) => {
            body_error(401, "unauthenticated", msg).with_header("WWW-Authenticate", "Bearer")
        }
        RestError::RateLimited(retry_after_s) => body_error(
            429,
            "rate_limited",
            &format!("too many writes from this user; retry in {retry_after_s} s"),
        )
        .with_header("Retry-After", &retry_after_s.to_string()),
        RestError::Crud(CrudError::Unavailable(detail)) => {
            // Driver details (addresses, topology) go to the log only; the database health log says when it is down.
            tracing::debug!(error = %detail, "REST request failed: database unavailable");
            body_error(503, "unavailable", UNAVAILABLE_MESSAGE)
        }
        RestError::Crud(e) => {
            if matches!(e, CrudError::Internal(_)) {
                tracing::error!(error = %e, "REST request failed");
            }
            body_error(e.http_status(), e.code(), &e.to_string())
        }
    }
}

/// The `resource` of a `{"resource": {...}}` body.
fn resource_of(body: &[u8]) -> Result<Value, RestError> {
    let bad = |m: String| RestError::Crud(CrudError::InvalidInput(m));
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    match v {
        Value::Object(mut o) => match o.remove("resource") {
            Some(r @ Value::Object(_)) => Ok(r),
            _ => Err(bad("the body must be {\"resource\": {...}}".into())),
        },
        _ => Err(bad("the body must be {\"resource\": {...}}".into())),
    }
}

/// Strict percent-decoding of a URL segment (`+` stays `+`); invalid escapes or UTF-8 are errors.
fn percent_decode(s: &str) -> Result<String, ()> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// [`RestApi`] as the server's [`Router`] (it answers every path under the prefix, and only those).
#[derive(Debug, Clone)]
pub struct RestRouter(Rc<RestApi>);

impl RestApi {
    /// The router to put in [`crate::server::ShardApp::router`].
    pub fn into_router(self) -> RestRouter {
        RestRouter(Rc::new(self))
    }
}

impl Router for RestRouter {
    fn route(&self, shard: &Rc<ShardCtx>, request: Request) -> Option<ResponseFuture> {
        let under = request
            .path
            .strip_prefix(&self.0.prefix)
            .is_some_and(|r| r.is_empty() || r.starts_with('/'));
        if !under {
            return None;
        }
        let api = self.0.clone();
        if request.path.strip_prefix(&self.0.prefix) == Some(ONLINE_PATH) {
            let shard = shard.clone();
            return Some(Box::pin(async move {
                match api.online(&shard, &request).await {
                    Ok(r) => r,
                    Err(e) => error_response(&e),
                }
            }));
        }
        let shard_id = shard.id();
        Some(Box::pin(async move { api.handle(shard_id, request).await }))
    }
}

/// The presence route under the prefix: `GET /api/v1/online?room=<room>&token=<room token>`.
pub const ONLINE_PATH: &str = "/online";

impl RestApi {
    /// `GET {prefix}/online?room=R&token=T`: the users connected in room `R` right across shards, for a caller who
    /// may read it: `T` is a room token of the caller for `R`, exactly what `realtime:join` needs. Answers
    /// `{room, users, count}`; 401 without a valid access token, 403 `forbidden` with the token error otherwise.
    async fn online(&self, shard: &Rc<ShardCtx>, request: &Request) -> Result<Response, RestError> {
        if request.method != "GET" {
            return Err(RestError::MethodNotAllowed("GET".into()));
        }
        let user = self.authenticate(request)?;
        let (mut room, mut token) = (String::new(), String::new());
        for pair in request.query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).map_err(|_| {
                RestError::Crud(CrudError::InvalidInput(
                    "invalid percent-encoding in the query".into(),
                ))
            })?;
            match k {
                "room" => room = v,
                "token" => token = v,
                _ => {}
            }
        }
        if room.is_empty() {
            return Err(RestError::Crud(CrudError::InvalidInput(
                "`room` is required".into(),
            )));
        }
        if let Err(e) = self.room_tokens.verify(&token, &user.id, &room) {
            return Err(RestError::Crud(CrudError::Forbidden(e.to_string())));
        }
        let users = super::live::online_users(shard, &room)
            .await
            .map_err(|e| RestError::Crud(CrudError::Unavailable(e.to_string())))?;
        // Clustered: with the other nodes' users, and `complete` (every node answered in time).
        let (users, complete) = crate::cluster::presence::merge_room(shard, &room, users).await;
        let mut body = json!({ "room": room, "count": users.len(), "users": users });
        if let Some(complete) = complete {
            body["complete"] = json!(complete);
        }
        Ok(Response::json(200, &body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_limiter_admits_a_second_of_writes_then_says_when() {
        let l = UserWriteLimiter::new(WriteLimits {
            writes_per_s: 3,
            write_bytes_per_s: 0,
        });
        for _ in 0..3 {
            assert_eq!(l.admit("u", 10), Ok(()));
        }
        assert_eq!(l.admit("u", 10), Err(1));
        // other users have their own buckets
        assert_eq!(l.admit("v", 10), Ok(()));
        let bytes = UserWriteLimiter::new(WriteLimits {
            writes_per_s: 0,
            write_bytes_per_s: 1000,
        });
        // a body larger than the budget passes once, then its debt is paid first
        assert_eq!(bytes.admit("u", 3500), Ok(()));
        assert_eq!(bytes.admit("u", 1), Err(3));
        let off = UserWriteLimiter::new(WriteLimits::off());
        for _ in 0..10_000 {
            assert_eq!(off.admit("u", 1 << 20), Ok(()));
        }
    }

    fn bearer(token: &str) -> Request {
        Request {
            method: "POST".into(),
            path: "/api/v1/x".into(),
            query: String::new(),
            headers: vec![("authorization".into(), format!("Bearer {token}"))],
            body: Vec::new(),
            http11: true,
        }
    }

    #[test]
    fn verified_tokens_are_remembered_until_their_exp_and_bounded() {
        use super::super::auth::{AccessSigner, AuthConfig, Secret, now_s};
        let cfg = AuthConfig::hs256("rest-unit-test-secret-0123456789abcdef-xyz");
        let signer = AccessSigner::new(&cfg).unwrap();
        let api = RestApi::new(
            AccessVerifier::new(&cfg).unwrap(),
            RoomTokens::new(&Secret::random(), 60, 0).unwrap(),
        );
        let good = signer.sign("u1", 60, &serde_json::Map::new()).unwrap();
        let first = api.authenticate(&bearer(&good)).unwrap();
        assert_eq!(first.id, "u1");
        assert_eq!(api.verified.len(), 1);
        // The second time the remembered user, the same as verifying again.
        assert_eq!(api.authenticate(&bearer(&good)).unwrap(), first);
        assert_eq!(api.verified.len(), 1);
        // A token that does not verify (another key) is refused every time and never remembered.
        let other = AccessSigner::new(&AuthConfig::hs256("another-secret-0123456789abcdef-xyz-0"))
            .unwrap()
            .sign("u1", 60, &serde_json::Map::new())
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                api.authenticate(&bearer(&other)),
                Err(RestError::Unauthenticated(_))
            ));
        }
        assert_eq!(api.verified.len(), 1);
        // A token at its `exp` (accepted within the leeway) is verified every time, never remembered.
        let ending = signer.sign("u2", 0, &serde_json::Map::new()).unwrap();
        assert_eq!(api.authenticate(&bearer(&ending)).unwrap().id, "u2");
        assert_eq!(api.verified.len(), 1);
        // An entry is not used at or after the token's `exp` (and is dropped then).
        let digest = VerifiedTokens::digest(&good);
        assert!(api.verified.get(&digest, first.expires_at_s).is_none());
        assert_eq!(api.verified.len(), 0);
        // Bounded: past VERIFIED_TOKENS_CACHED_MAX the cache is emptied before it grows.
        let cache = VerifiedTokens::default();
        let now = now_s();
        for i in 0..VERIFIED_TOKENS_CACHED_MAX + 10 {
            cache.insert(VerifiedTokens::digest(&i.to_string()), &first, now);
            assert!(cache.len() <= VERIFIED_TOKENS_CACHED_MAX);
        }
        assert!(cache.get(&VerifiedTokens::digest("0"), now).is_none());
        let last = (VERIFIED_TOKENS_CACHED_MAX + 9).to_string();
        assert_eq!(cache.get(&VerifiedTokens::digest(&last), now), Some(first));
    }

    #[test]
    fn patterns_match_and_capture() {
        let p = Pattern::parse("/companies/{company_id}/workspaces/{workspace_id}/channels");
        let segs: Vec<String> = ["companies", "acme", "workspaces", "w1", "channels"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let params = p.matches(&segs).expect("match");
        assert_eq!(params["company_id"], "acme");
        assert_eq!(params["workspace_id"], "w1");
        assert!(p.matches(&segs[..4]).is_none());
        let mut other = segs.clone();
        other[0] = "company".into();
        assert!(p.matches(&other).is_none());
    }

    #[test]
    fn percent_decoding_is_strict() {
        assert_eq!(percent_decode("a%20b").unwrap(), "a b");
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        assert!(percent_decode("a%2").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn one_resource_answer_is_the_object_built_then_serialised() {
        // What the answer was before it was written straight into its buffer: byte for byte the same.
        let resource = json!({"id": "m1", "text": "a \"q\" \u{e9}\n", "n": 1.5, "extra": {"z": 1, "a": [1, null]}});
        let websocket = json!({"room": "/channels/c1/messages", "token": "t.k.n"});
        let mut object = serde_json::Map::new();
        object.insert("resource".into(), resource.clone());
        assert_eq!(
            one_body(&resource, None).unwrap(),
            Value::Object(object.clone()).to_string().into_bytes()
        );
        object.insert("websocket".into(), websocket.clone());
        assert_eq!(
            one_body(&resource, Some(websocket)).unwrap(),
            Value::Object(object).to_string().into_bytes()
        );
    }

    #[test]
    fn bodies_must_wrap_a_resource_object() {
        assert_eq!(
            resource_of(br#"{"resource":{"a":1}}"#).unwrap(),
            json!({"a": 1})
        );
        for bad in [&b"nope"[..], br#"{"a":1}"#, br#"{"resource":3}"#, b"[]"] {
            match resource_of(bad) {
                Err(RestError::Crud(CrudError::InvalidInput(_))) => {}
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
    }
}
