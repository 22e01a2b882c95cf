//! The wire contract (event names and JSON payloads) and the per-socket session logic.
//!
//! [`Session`] is transport-free: the server feeds it what a client did (connected, emitted an event, timed out,
//! disconnected) and performs the [`Action`]s it returns, in order. It never touches a socket, so every rule of the
//! contract is unit-tested here and the server's adapter stays thin.
//!
//! # Events
//!
//! | client emits | server answers |
//! |---|---|
//! | `authenticate {token}` | `authenticated` (no payload), or `unauthorized {err}` then disconnect |
//! | `realtime:join {name, token}` | `realtime:join:success {name}` or `realtime:join:error {name, error}` |
//! | `realtime:leave {name}` | `realtime:leave:success {name}` or `realtime:leave:error {name, error}` |
//! | (room member, on a CRUD change) | `realtime:resource {action, room, type, path, resource}` |
//!
//! # Rules
//! - A socket that has not authenticated within [`SessionConfig::auth_timeout_ms`] gets `unauthorized
//!   {err: "authentication timeout"}` and is disconnected.
//! - The token may also come in the Socket.IO CONNECT auth payload `{token}` ([`Session::on_connect`]); the server then
//!   emits `authenticated` straight away, so Twake clients that still send `authenticate` get a second `authenticated`.
//!   An invalid token there gets `unauthorized {err}` and a disconnect, exactly like a refused `authenticate`.
//! - **Before authentication**, `realtime:join` gets `realtime:join:error {name, error: "not authenticated"}`,
//!   `realtime:leave` gets `realtime:leave:error {name, error: "not authenticated"}`, and any other event gets
//!   `unauthorized {err: "not authenticated"}`. None of these disconnects: the client may still authenticate before the
//!   timeout. A Twake client listening for the join/leave errors sees them where it expects them.
//! - A second `authenticate` with a valid token for the same user answers `authenticated` again; a valid token for
//!   another user, or an invalid token, answers `unauthorized {err}` and disconnects.
//! - Joining a room already joined succeeds again without a second membership. Leaving a room never joined succeeds.
//! - A socket holds at most [`SessionConfig::rooms_per_socket_max`] rooms; one more gets `realtime:join:error
//!   {name, error: "too many rooms (limit N)"}`.
//! - After authentication, events other than the three above produce no action (they are not part of the contract).

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::auth::{AccessVerifier, AuthenticatedUser, RoomTokens, TokenError};

/// Client -> server: authenticate with an access token.
pub const AUTHENTICATE: &str = "authenticate";
/// Server -> client: the token was accepted.
pub const AUTHENTICATED: &str = "authenticated";
/// Server -> client: the token was refused (`{err}`), or an event came before authentication.
pub const UNAUTHORIZED: &str = "unauthorized";
/// Client -> server: join a room.
pub const JOIN: &str = "realtime:join";
/// Server -> client: joined.
pub const JOIN_SUCCESS: &str = "realtime:join:success";
/// Server -> client: not joined.
pub const JOIN_ERROR: &str = "realtime:join:error";
/// Client -> server: leave a room.
pub const LEAVE: &str = "realtime:leave";
/// Server -> client: left.
pub const LEAVE_SUCCESS: &str = "realtime:leave:success";
/// Server -> client: not left.
pub const LEAVE_ERROR: &str = "realtime:leave:error";
/// Server -> room members: a CRUD change.
pub const RESOURCE: &str = "realtime:resource";
/// Client -> server: an event for every member of a room (`{name, data, token}`); server -> room members: the
/// relayed event (`{name, data}`), from a client or a service.
pub const EVENT: &str = "realtime:event";
/// Server -> client: a `realtime:event` was refused (`{name, error, message}`).
pub const EVENT_ERROR: &str = "realtime:event:error";
/// The prefix of public user rooms: a user joins `/users/{own id}` with their access token.
pub const USER_ROOM_PREFIX: &str = "/users/";
/// The prefix of a company's online room (Twake's `/users/online/{company id}`, where the online service announces
/// `user:online`): joined with the access token of a user whose `companies` claim names the company.
pub const COMPANY_ONLINE_ROOM_PREFIX: &str = "/users/online/";
/// Client -> server, only when [`SessionConfig::echo_event`] is on: acknowledged with its own arguments.
pub const ECHO: &str = "echo";

/// Error text for events sent before authentication.
pub const NOT_AUTHENTICATED: &str = "not authenticated";
/// Error text when the authentication timeout fires.
pub const AUTH_TIMEOUT: &str = "authentication timeout";

/// Default time a socket has to authenticate, milliseconds.
pub const AUTH_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default number of rooms one socket may be in.
pub const ROOMS_PER_SOCKET_MAX_DEFAULT: usize = 100;
/// Default longest room name, bytes.
pub const ROOM_NAME_BYTES_MAX_DEFAULT: usize = 512;

/// What a CRUD change did; the `action` field of `realtime:resource`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceAction {
    /// `created`
    Created,
    /// `updated`
    Updated,
    /// `deleted`
    Deleted,
    /// `saved`
    Saved,
    /// `event`: a non-CRUD change a service pushes for a resource ([`super::crud::Realtime::publish_resource_event`]).
    Event,
}

impl ResourceAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
            Self::Saved => "saved",
            Self::Event => "event",
        }
    }
}

/// The payload of `realtime:resource`: one CRUD change for one room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResourceEvent {
    /// What happened.
    pub action: ResourceAction,
    /// The room it is published to.
    pub room: String,
    /// The entity type name (e.g. `message`).
    #[serde(rename = "type")]
    pub type_name: String,
    /// The resource's path (e.g. `/messages/42`).
    pub path: String,
    /// The resource as clients see it.
    pub resource: Value,
}

impl ResourceEvent {
    /// The Socket.IO event arguments `["realtime:resource",{...}]` as JSON text: encoded once per event, then carried
    /// between shards as shared bytes and framed once per shard.
    pub fn encode_args(&self) -> String {
        // Serializing a struct of strings and a Value cannot fail.
        serde_json::to_string(&(RESOURCE, self)).unwrap_or_default()
    }
}

/// An event the server emits to one socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// `authenticated` (no payload).
    Authenticated,
    /// `unauthorized {err}`.
    Unauthorized {
        /// Reason.
        err: String,
    },
    /// `realtime:join:success {name}`.
    JoinSuccess {
        /// Room.
        name: String,
    },
    /// `realtime:join:error {name, error}`.
    JoinError {
        /// Room (empty when the payload had none).
        name: String,
        /// Reason.
        error: String,
    },
    /// `realtime:leave:success {name}`.
    LeaveSuccess {
        /// Room.
        name: String,
    },
    /// `realtime:leave:error {name, error}`.
    LeaveError {
        /// Room (empty when the payload had none).
        name: String,
        /// Reason.
        error: String,
    },
    /// `realtime:event:error {name, error, message}`.
    EventError {
        /// Room (empty when the payload had none).
        name: String,
        /// Reason.
        error: String,
    },
}

impl ServerEvent {
    /// The event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Authenticated => AUTHENTICATED,
            Self::Unauthorized { .. } => UNAUTHORIZED,
            Self::JoinSuccess { .. } => JOIN_SUCCESS,
            Self::JoinError { .. } => JOIN_ERROR,
            Self::LeaveSuccess { .. } => LEAVE_SUCCESS,
            Self::LeaveError { .. } => LEAVE_ERROR,
            Self::EventError { .. } => EVENT_ERROR,
        }
    }

    /// The single payload argument, or `None` for `authenticated`.
    pub fn payload(&self) -> Option<Value> {
        match self {
            Self::Authenticated => None,
            // `err` stays a string (clients of the documented contract); `message` is what Twake's clients read.
            Self::Unauthorized { err } => Some(json!({ "err": err, "message": err })),
            Self::JoinSuccess { name } | Self::LeaveSuccess { name } => {
                Some(json!({ "name": name }))
            }
            // Both `error` (the documented contract) and `message` (Twake's clients) carry the reason.
            Self::JoinError { name, error }
            | Self::LeaveError { name, error }
            | Self::EventError { name, error } => {
                Some(json!({ "name": name, "error": error, "message": error }))
            }
        }
    }

    /// The Socket.IO event arguments as a JSON array, e.g. `["realtime:join:success",{"name":"/r"}]`.
    pub fn to_args(&self) -> Value {
        let mut args = vec![Value::String(self.name().to_owned())];
        args.extend(self.payload());
        Value::Array(args)
    }
}

/// Why a client payload was refused. `Display` is the wire error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// No argument, or not a JSON object.
    #[error("payload must be an object")]
    NotAnObject,
    /// A required field is absent or null.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// A field is not a string.
    #[error("field {0} must be a string")]
    NotAString(&'static str),
    /// The room name is empty.
    #[error("room name must not be empty")]
    EmptyRoomName,
    /// The room name is longer than allowed.
    #[error("room name too long (limit {0} bytes)")]
    RoomNameTooLong(usize),
    /// The `data` of a `realtime:event` is longer than allowed once encoded.
    #[error("event data too large (limit {0} bytes)")]
    EventDataTooLarge(usize),
}

/// `authenticate {token}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatePayload {
    /// The access token; empty when absent (answered with `jwt must be provided`).
    pub token: String,
}

/// `realtime:join {name, token}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPayload {
    /// Room.
    pub name: String,
    /// Room token; empty when absent.
    pub token: String,
}

/// `realtime:leave {name}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavePayload {
    /// Room.
    pub name: String,
}

fn first_object(args: &[Value]) -> Result<&Map<String, Value>, PayloadError> {
    args.first()
        .and_then(Value::as_object)
        .ok_or(PayloadError::NotAnObject)
}

fn string_field(
    obj: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, PayloadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(PayloadError::NotAString(field)),
    }
}

fn room_name(obj: &Map<String, Value>, room_name_bytes_max: usize) -> Result<String, PayloadError> {
    let name = string_field(obj, "name")?.ok_or(PayloadError::MissingField("name"))?;
    if name.is_empty() {
        return Err(PayloadError::EmptyRoomName);
    }
    if name.len() > room_name_bytes_max {
        return Err(PayloadError::RoomNameTooLong(room_name_bytes_max));
    }
    Ok(name)
}

/// The room name to echo in an error reply: the `name` string if the payload has one (truncated to the limit on a
/// character boundary), else empty.
fn echo_name(args: &[Value], room_name_bytes_max: usize) -> String {
    let Some(name) = args
        .first()
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str)
    else {
        return String::new();
    };
    let mut end = name.len().min(room_name_bytes_max);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}

/// `realtime:event {name, data, token}`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventPayload {
    /// Room.
    pub name: String,
    /// What the members receive; `null` when absent.
    pub data: Value,
    /// Room token (or, for `/users/{own id}`, the access token); empty when absent.
    pub token: String,
}

impl EventPayload {
    /// Parses the event arguments; `data` must encode to at most `data_bytes_max` bytes of JSON.
    pub fn parse(
        args: &[Value],
        room_name_bytes_max: usize,
        data_bytes_max: usize,
    ) -> Result<Self, PayloadError> {
        let obj = first_object(args)?;
        let name = room_name(obj, room_name_bytes_max)?;
        let token = string_field(obj, "token")?.unwrap_or_default();
        let data = obj.get("data").cloned().unwrap_or(Value::Null);
        if encoded_len(&data) > data_bytes_max {
            return Err(PayloadError::EventDataTooLarge(data_bytes_max));
        }
        Ok(Self { name, data, token })
    }

    /// The Socket.IO arguments the room's members receive, `["realtime:event",{"name":...,"data":...}]`, as JSON
    /// text: encoded once, framed once per member shard.
    pub fn encode_args(name: &str, data: &Value) -> String {
        serde_json::to_string(&(EVENT, json!({ "name": name, "data": data }))).unwrap_or_default()
    }
}

/// Bytes of `v` encoded as JSON, counted without building the text.
fn encoded_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl AuthenticatePayload {
    /// Parses the event arguments. A bare string argument is accepted as the token too.
    pub fn parse(args: &[Value]) -> Result<Self, PayloadError> {
        if let Some(Value::String(token)) = args.first() {
            return Ok(Self {
                token: token.clone(),
            });
        }
        let obj = first_object(args)?;
        Ok(Self {
            token: string_field(obj, "token")?.unwrap_or_default(),
        })
    }
}

impl JoinPayload {
    /// Parses the event arguments.
    pub fn parse(args: &[Value], room_name_bytes_max: usize) -> Result<Self, PayloadError> {
        let obj = first_object(args)?;
        let name = room_name(obj, room_name_bytes_max)?;
        Ok(Self {
            name,
            token: string_field(obj, "token")?.unwrap_or_default(),
        })
    }
}

impl LeavePayload {
    /// Parses the event arguments.
    pub fn parse(args: &[Value], room_name_bytes_max: usize) -> Result<Self, PayloadError> {
        Ok(Self {
            name: room_name(first_object(args)?, room_name_bytes_max)?,
        })
    }
}

/// Limits and timings of one socket's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Time to authenticate after connecting, milliseconds. Default [`AUTH_TIMEOUT_MS_DEFAULT`].
    pub auth_timeout_ms: u64,
    /// Rooms one socket may be in at once. Default [`ROOMS_PER_SOCKET_MAX_DEFAULT`].
    pub rooms_per_socket_max: usize,
    /// Longest room name, bytes. Default [`ROOM_NAME_BYTES_MAX_DEFAULT`].
    pub room_name_bytes_max: usize,
    /// Answer [`ECHO`] events of authenticated sockets with an ack carrying the event's own arguments
    /// ([`Action::AckWithArguments`]). Off by default: it exists for round-trip measurements (the loadtest's echo
    /// scenario), not for applications.
    pub echo_event: bool,
    /// Joins plus leaves one socket may ask for per second (a token bucket holding one second's worth). Over it the
    /// join or leave is refused with `realtime:join:error` / `realtime:leave:error {name, error: "too many joins and
    /// leaves (limit N per second)"}` and nothing crosses shards. Default [`JOIN_LEAVE_PER_S_MAX_DEFAULT`].
    pub join_leave_per_s_max: u32,
    /// `realtime:event`s one socket may send per second (a token bucket holding one second's worth). Over it the event
    /// gets `realtime:event:error {name, error: "too many events (limit N per second)"}` and reaches nobody. Default
    /// [`EVENT_PER_S_MAX_DEFAULT`].
    pub event_per_s_max: u32,
    /// Longest `data` of a client's `realtime:event`, bytes of JSON. Default [`EVENT_DATA_BYTES_MAX_DEFAULT`].
    pub event_data_bytes_max: usize,
    /// Where presence changes are published: when a user appears in a room `R` (first socket on any shard) or
    /// disappears (last socket gone), the members of the presence room of `R` (`{room}/presence` gives
    /// `R/presence`) get `realtime:event {name: presence room, data: {presence: "join" | "leave", room: R, user}}`.
    /// A presence room is joined like any room, with a room token for its name. `None` (the default): off.
    pub presence_room: Option<super::presence::PresenceRoom>,
}

/// Default of [`SessionConfig::join_leave_per_s_max`].
pub const JOIN_LEAVE_PER_S_MAX_DEFAULT: u32 = 50;
/// Default of [`SessionConfig::event_per_s_max`].
pub const EVENT_PER_S_MAX_DEFAULT: u32 = 20;
/// Default of [`SessionConfig::event_data_bytes_max`].
pub const EVENT_DATA_BYTES_MAX_DEFAULT: usize = 16_384;

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            auth_timeout_ms: AUTH_TIMEOUT_MS_DEFAULT,
            rooms_per_socket_max: ROOMS_PER_SOCKET_MAX_DEFAULT,
            room_name_bytes_max: ROOM_NAME_BYTES_MAX_DEFAULT,
            echo_event: false,
            join_leave_per_s_max: JOIN_LEAVE_PER_S_MAX_DEFAULT,
            event_per_s_max: EVENT_PER_S_MAX_DEFAULT,
            event_data_bytes_max: EVENT_DATA_BYTES_MAX_DEFAULT,
            presence_room: None,
        }
    }
}

/// What a session needs to decide: verifiers and limits. One per shard, shared by all its sessions.
#[derive(Debug)]
pub struct SessionContext {
    /// Access-token verifier.
    pub access: AccessVerifier,
    /// Room-token verifier.
    pub rooms: RoomTokens,
    /// Limits.
    pub config: SessionConfig,
}

/// What the server must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Emit this event to this socket.
    Emit(ServerEvent),
    /// Add the socket to this room (local membership, and the owner shard when it is the first local member). The
    /// name is the session's own copy: the socket's room list shares it.
    JoinRoom(Rc<str>),
    /// Remove the socket from this room.
    LeaveRoom(Rc<str>),
    /// Arm the authentication timer; when it fires, call [`Session::on_auth_timeout`].
    ScheduleAuthTimeout {
        /// Delay, milliseconds.
        after_ms: u64,
    },
    /// Disarm the authentication timer (the socket authenticated).
    CancelAuthTimeout,
    /// Close the connection (after flushing the emits before it).
    Disconnect,
    /// Answer the event's acknowledgement request, if it made one, with the event's own arguments.
    AckWithArguments,
    /// Relay a client's `realtime:event` to every member of `room` (through the room's owner shard).
    PublishEvent {
        /// Room.
        room: String,
        /// The encoded arguments, [`EventPayload::encode_args`].
        args: String,
    },
}

/// One socket's state: who it is and which rooms it is in.
#[derive(Debug, Default)]
pub struct Session {
    user: Option<AuthenticatedUser>,
    rooms: Vec<Rc<str>>,
}

impl Session {
    /// A fresh, unauthenticated session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<&AuthenticatedUser> {
        self.user.as_ref()
    }

    /// The rooms this socket is in, in join order.
    pub fn rooms(&self) -> &[Rc<str>] {
        &self.rooms
    }

    /// The socket connected. `auth` is the Socket.IO CONNECT payload, if any: a `{token}` there authenticates at once.
    pub fn on_connect(&mut self, ctx: &SessionContext, auth: Option<&Value>) -> Vec<Action> {
        let token = auth
            .and_then(|a| a.get("token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        match token {
            Some(token) => {
                // No timer was armed, so there is none to cancel.
                let mut actions = self.authenticate(ctx, token);
                actions.retain(|a| *a != Action::CancelAuthTimeout);
                actions
            }
            None => vec![Action::ScheduleAuthTimeout {
                after_ms: ctx.config.auth_timeout_ms,
            }],
        }
    }

    /// The client emitted `event` with `args` (the JSON arguments after the event name).
    pub fn on_event(&mut self, ctx: &SessionContext, event: &str, args: &[Value]) -> Vec<Action> {
        let max = ctx.config.room_name_bytes_max;
        match event {
            AUTHENTICATE => match AuthenticatePayload::parse(args) {
                Ok(p) => self.authenticate(ctx, &p.token),
                Err(e) => unauthorized(e.to_string()),
            },
            JOIN if self.user.is_none() => {
                vec![Action::Emit(ServerEvent::JoinError {
                    name: echo_name(args, max),
                    error: NOT_AUTHENTICATED.into(),
                })]
            }
            LEAVE if self.user.is_none() => vec![Action::Emit(ServerEvent::LeaveError {
                name: echo_name(args, max),
                error: NOT_AUTHENTICATED.into(),
            })],
            EVENT if self.user.is_none() => vec![Action::Emit(ServerEvent::EventError {
                name: echo_name(args, max),
                error: NOT_AUTHENTICATED.into(),
            })],
            _ if self.user.is_none() => {
                vec![Action::Emit(ServerEvent::Unauthorized {
                    err: NOT_AUTHENTICATED.into(),
                })]
            }
            JOIN => match JoinPayload::parse(args, max) {
                Ok(p) => self.join(ctx, p),
                Err(e) => vec![Action::Emit(ServerEvent::JoinError {
                    name: echo_name(args, max),
                    error: e.to_string(),
                })],
            },
            LEAVE => match LeavePayload::parse(args, max) {
                Ok(p) => self.leave(p.name),
                Err(e) => {
                    vec![Action::Emit(ServerEvent::LeaveError {
                        name: echo_name(args, max),
                        error: e.to_string(),
                    })]
                }
            },
            EVENT => match EventPayload::parse(args, max, ctx.config.event_data_bytes_max) {
                Ok(p) => self.event(ctx, p),
                Err(e) => vec![Action::Emit(ServerEvent::EventError {
                    name: echo_name(args, max),
                    error: e.to_string(),
                })],
            },
            ECHO if ctx.config.echo_event => vec![Action::AckWithArguments],
            _ => Vec::new(),
        }
    }

    /// The authentication timer fired.
    pub fn on_auth_timeout(&mut self) -> Vec<Action> {
        if self.user.is_some() {
            return Vec::new();
        }
        unauthorized(AUTH_TIMEOUT.into())
    }

    /// The server removed this socket from `room` (its resource was deleted): forget it and tell the client it left.
    pub fn on_room_closed(&mut self, room: &str) -> Vec<Action> {
        match self.rooms.iter().position(|r| **r == *room) {
            Some(i) => {
                self.rooms.swap_remove(i);
                self.shrink_rooms();
                vec![Action::Emit(ServerEvent::LeaveSuccess {
                    name: room.to_owned(),
                })]
            }
            None => Vec::new(),
        }
    }

    /// The connection closed: leave every room.
    pub fn on_disconnect(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.rooms)
            .into_iter()
            .map(Action::LeaveRoom)
            .collect()
    }

    /// A socket that left its last room keeps no room list.
    fn shrink_rooms(&mut self) {
        if self.rooms.is_empty() {
            self.rooms = Vec::new();
        }
    }

    fn authenticate(&mut self, ctx: &SessionContext, token: &str) -> Vec<Action> {
        match ctx.access.verify(token) {
            Ok(user) => {
                if let Some(current) = &self.user
                    && current.id != user.id
                {
                    return unauthorized("already authenticated as another user".into());
                }
                let first = self.user.is_none();
                self.user = Some(user);
                let mut actions = Vec::with_capacity(2);
                if first {
                    actions.push(Action::CancelAuthTimeout);
                }
                actions.push(Action::Emit(ServerEvent::Authenticated));
                actions
            }
            Err(e) => unauthorized(token_error_text(&e)),
        }
    }

    fn join(&mut self, ctx: &SessionContext, p: JoinPayload) -> Vec<Action> {
        let Some(user) = &self.user else {
            return vec![Action::Emit(ServerEvent::JoinError {
                name: p.name,
                error: NOT_AUTHENTICATED.into(),
            })];
        };
        if let Err(error) = may_enter(ctx, &user.id, &p.name, &p.token) {
            return vec![Action::Emit(ServerEvent::JoinError {
                name: p.name,
                error,
            })];
        }
        if self.rooms.iter().any(|r| **r == *p.name) {
            return vec![Action::Emit(ServerEvent::JoinSuccess { name: p.name })];
        }
        if self.rooms.len() >= ctx.config.rooms_per_socket_max {
            let error = format!("too many rooms (limit {})", ctx.config.rooms_per_socket_max);
            return vec![Action::Emit(ServerEvent::JoinError {
                name: p.name,
                error,
            })];
        }
        let room: Rc<str> = Rc::from(p.name.as_str());
        // Most sockets join one or a few rooms: grow the list one at a time, not to the vector's first 4.
        self.rooms.reserve_exact(1);
        self.rooms.push(room.clone());
        vec![
            Action::JoinRoom(room),
            Action::Emit(ServerEvent::JoinSuccess { name: p.name }),
        ]
    }

    fn leave(&mut self, name: String) -> Vec<Action> {
        match self.rooms.iter().position(|r| **r == *name) {
            Some(i) => {
                let room = self.rooms.swap_remove(i);
                self.shrink_rooms();
                vec![
                    Action::LeaveRoom(room),
                    Action::Emit(ServerEvent::LeaveSuccess { name }),
                ]
            }
            None => vec![Action::Emit(ServerEvent::LeaveSuccess { name })],
        }
    }
}

impl Session {
    fn event(&mut self, ctx: &SessionContext, p: EventPayload) -> Vec<Action> {
        let Some(user) = &self.user else {
            return vec![Action::Emit(ServerEvent::EventError {
                name: p.name,
                error: NOT_AUTHENTICATED.into(),
            })];
        };
        if let Err(error) = may_enter(ctx, &user.id, &p.name, &p.token) {
            return vec![Action::Emit(ServerEvent::EventError {
                name: p.name,
                error,
            })];
        }
        let args = EventPayload::encode_args(&p.name, &p.data);
        vec![Action::PublishEvent { room: p.name, args }]
    }
}

/// Error text when an access token is offered for a user room that is not the caller's own.
pub const NOT_YOUR_USER_ROOM: &str = "a user room can be joined by its own user only";
/// Error text when an access token is offered for the online room of a company its `companies` claim does not name.
pub const NOT_YOUR_COMPANY_ROOM: &str = "a company's online room can be joined by its members only";

/// The one check behind `realtime:join` and `realtime:event`: `token` is a room token of `user` for `room`, or `room`
/// is the public user room `/users/{user}` and `token` is `user`'s own access token, or `room` is the online room
/// `/users/online/{company}` and `token` is `user`'s own access token naming `company` in its `companies` claim. An
/// access token never opens any other room (another user's room included), and there is no other bypass.
fn may_enter(ctx: &SessionContext, user: &str, room: &str, token: &str) -> Result<(), String> {
    if let Some(company) = room.strip_prefix(COMPANY_ONLINE_ROOM_PREFIX)
        && let Ok(holder) = ctx.access.verify(token)
    {
        return if holder.id == user && holder.is_member_of(company) && !company.contains('/') {
            Ok(())
        } else {
            Err(NOT_YOUR_COMPANY_ROOM.into())
        };
    }
    if let Some(owner) = room.strip_prefix(USER_ROOM_PREFIX)
        && let Ok(holder) = ctx.access.verify(token)
    {
        return if holder.id == user && owner == user {
            Ok(())
        } else {
            Err(NOT_YOUR_USER_ROOM.into())
        };
    }
    ctx.rooms
        .verify(token, user, room)
        .map_err(|e| token_error_text(&e))
}

fn token_error_text(e: &TokenError) -> String {
    e.to_string()
}

fn unauthorized(err: String) -> Vec<Action> {
    vec![
        Action::Emit(ServerEvent::Unauthorized { err }),
        Action::Disconnect,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::auth::tests::SECRET;
    use super::super::auth::{AccessSigner, AuthConfig, Secret, now_s};
    use super::*;

    const ROOM_SECRET: &str = "room-secret-room-secret-room-sec";

    fn ctx_with(config: SessionConfig) -> SessionContext {
        SessionContext {
            access: AccessVerifier::new(&AuthConfig::hs256(SECRET)).unwrap(),
            rooms: RoomTokens::new(&Secret::from(ROOM_SECRET), 60, 0).unwrap(),
            config,
        }
    }

    fn ctx() -> SessionContext {
        ctx_with(SessionConfig::default())
    }

    fn access(sub: &str) -> String {
        AccessSigner::new(&AuthConfig::hs256(SECRET))
            .unwrap()
            .sign(sub, 60, &Map::new())
            .unwrap()
    }

    fn room_token(ctx: &SessionContext, sub: &str, room: &str) -> String {
        ctx.rooms.sign(sub, room).unwrap()
    }

    fn emit(e: ServerEvent) -> Action {
        Action::Emit(e)
    }

    fn authed(ctx: &SessionContext, sub: &str) -> Session {
        let mut s = Session::new();
        s.on_connect(ctx, None);
        let a = s.on_event(ctx, AUTHENTICATE, &[json!({"token": access(sub)})]);
        assert_eq!(
            a,
            vec![Action::CancelAuthTimeout, emit(ServerEvent::Authenticated)]
        );
        s
    }

    fn unauthorized_is(actions: Vec<Action>, err: &str) {
        assert_eq!(
            actions,
            vec![
                emit(ServerEvent::Unauthorized { err: err.into() }),
                Action::Disconnect
            ]
        );
    }

    #[test]
    fn echo_is_acknowledged_only_when_enabled_and_authenticated() {
        let off = ctx();
        let mut s = authed(&off, "u1");
        assert_eq!(s.on_event(&off, ECHO, &[json!({"pad": "x"})]), vec![]);

        let on = ctx_with(SessionConfig {
            echo_event: true,
            ..SessionConfig::default()
        });
        let mut anonymous = Session::new();
        anonymous.on_connect(&on, None);
        assert_eq!(
            anonymous.on_event(&on, ECHO, &[json!(1)]),
            vec![emit(ServerEvent::Unauthorized {
                err: NOT_AUTHENTICATED.into()
            })]
        );
        let mut s = authed(&on, "u1");
        assert_eq!(
            s.on_event(&on, ECHO, &[json!(1)]),
            vec![Action::AckWithArguments]
        );
    }

    #[test]
    fn wire_shapes() {
        assert_eq!(
            ServerEvent::Authenticated.to_args(),
            json!(["authenticated"])
        );
        assert_eq!(
            ServerEvent::Unauthorized {
                err: "jwt expired".into()
            }
            .to_args(),
            json!(["unauthorized", {"err": "jwt expired", "message": "jwt expired"}])
        );
        assert_eq!(
            ServerEvent::JoinSuccess { name: "/r".into() }.to_args(),
            json!(["realtime:join:success", {"name": "/r"}])
        );
        assert_eq!(
            ServerEvent::JoinError {
                name: "/r".into(),
                error: "x".into()
            }
            .to_args(),
            json!(["realtime:join:error", {"name": "/r", "error": "x", "message": "x"}])
        );
        assert_eq!(
            ServerEvent::LeaveSuccess { name: "/r".into() }.to_args(),
            json!(["realtime:leave:success", {"name": "/r"}])
        );
        assert_eq!(
            ServerEvent::LeaveError {
                name: "/r".into(),
                error: "x".into()
            }
            .to_args(),
            json!(["realtime:leave:error", {"name": "/r", "error": "x", "message": "x"}])
        );
        let ev = ResourceEvent {
            action: ResourceAction::Created,
            room: "/messages".into(),
            type_name: "message".into(),
            path: "/messages/1".into(),
            resource: json!({"id": "1"}),
        };
        assert_eq!(
            ev.encode_args(),
            r#"["realtime:resource",{"action":"created","room":"/messages","type":"message","path":"/messages/1","resource":{"id":"1"}}]"#
        );
    }

    #[test]
    fn payload_parsing_errors() {
        assert_eq!(
            AuthenticatePayload::parse(&[]).unwrap_err().to_string(),
            "payload must be an object"
        );
        assert_eq!(
            AuthenticatePayload::parse(&[json!({"token": 3})])
                .unwrap_err()
                .to_string(),
            "field token must be a string"
        );
        assert_eq!(AuthenticatePayload::parse(&[json!({})]).unwrap().token, "");
        assert_eq!(
            AuthenticatePayload::parse(&[json!("t")]).unwrap().token,
            "t"
        );
        assert_eq!(
            JoinPayload::parse(&[json!([1])], 10)
                .unwrap_err()
                .to_string(),
            "payload must be an object"
        );
        assert_eq!(
            JoinPayload::parse(&[json!({"token": "t"})], 10)
                .unwrap_err()
                .to_string(),
            "missing field name"
        );
        assert_eq!(
            JoinPayload::parse(&[json!({"name": 1})], 10)
                .unwrap_err()
                .to_string(),
            "field name must be a string"
        );
        assert_eq!(
            JoinPayload::parse(&[json!({"name": ""})], 10)
                .unwrap_err()
                .to_string(),
            "room name must not be empty"
        );
        assert_eq!(
            JoinPayload::parse(&[json!({"name": "x".repeat(11)})], 10)
                .unwrap_err()
                .to_string(),
            "room name too long (limit 10 bytes)"
        );
        assert_eq!(
            JoinPayload::parse(&[json!({"name": "/r", "token": "t"})], 10).unwrap(),
            JoinPayload {
                name: "/r".into(),
                token: "t".into()
            }
        );
        assert_eq!(
            LeavePayload::parse(&[json!({"name": "/r"}), json!(1)], 10)
                .unwrap()
                .name,
            "/r"
        );
    }

    #[test]
    fn connect_schedules_timeout_and_timeout_disconnects() {
        let ctx = ctx();
        let mut s = Session::new();
        assert_eq!(
            s.on_connect(&ctx, None),
            vec![Action::ScheduleAuthTimeout {
                after_ms: AUTH_TIMEOUT_MS_DEFAULT
            }]
        );
        unauthorized_is(s.on_auth_timeout(), "authentication timeout");
        let mut s = authed(&ctx, "u1");
        assert_eq!(s.on_auth_timeout(), vec![]);
    }

    #[test]
    fn connect_auth_payload_authenticates() {
        let ctx = ctx();
        let mut s = Session::new();
        let a = s.on_connect(&ctx, Some(&json!({"token": access("u1")})));
        assert_eq!(a, vec![emit(ServerEvent::Authenticated)]);
        assert_eq!(s.user().unwrap().id, "u1");
        let mut s = Session::new();
        unauthorized_is(
            s.on_connect(&ctx, Some(&json!({"token": "garbage"}))),
            "jwt malformed",
        );
    }

    #[test]
    fn authenticate_negative_cases() {
        let ctx = ctx();
        for (args, err) in [
            (vec![json!({})], "jwt must be provided"),
            (vec![json!({"token": ""})], "jwt must be provided"),
            (vec![], "payload must be an object"),
            (vec![json!({"token": "a.b"})], "jwt malformed"),
        ] {
            let mut s = Session::new();
            s.on_connect(&ctx, None);
            unauthorized_is(s.on_event(&ctx, AUTHENTICATE, &args), err);
            assert!(s.user().is_none());
        }
        // `AccessSigner::sign` always sets exp = now + ttl, so the expired token is assembled by hand.
        let t = {
            use base64::Engine as _;
            let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let h = e.encode(r#"{"alg":"HS256"}"#);
            let c = e.encode(json!({"sub": "u", "exp": now_s() - 3600}).to_string());
            let msg = format!("{h}.{c}");
            let k = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
            format!(
                "{msg}.{}",
                jsonwebtoken::crypto::sign(msg.as_bytes(), &k, jsonwebtoken::Algorithm::HS256)
                    .unwrap()
            )
        };
        let mut s = Session::new();
        unauthorized_is(
            s.on_event(&ctx, AUTHENTICATE, &[json!({"token": t})]),
            "jwt expired",
        );
    }

    #[test]
    fn reauthentication() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        assert_eq!(
            s.on_event(&ctx, AUTHENTICATE, &[json!({"token": access("u1")})]),
            vec![emit(ServerEvent::Authenticated)]
        );
        unauthorized_is(
            s.on_event(&ctx, AUTHENTICATE, &[json!({"token": access("u2")})]),
            "already authenticated as another user",
        );
    }

    #[test]
    fn events_before_authentication_get_errors_not_silence() {
        let ctx = ctx();
        let mut s = Session::new();
        s.on_connect(&ctx, None);
        let t = room_token(&ctx, "u1", "/r");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r", "token": t})]),
            vec![emit(ServerEvent::JoinError {
                name: "/r".into(),
                error: "not authenticated".into()
            })]
        );
        assert_eq!(
            s.on_event(&ctx, LEAVE, &[json!({"name": "/r"})]),
            vec![emit(ServerEvent::LeaveError {
                name: "/r".into(),
                error: "not authenticated".into()
            })]
        );
        assert_eq!(
            s.on_event(&ctx, "custom", &[]),
            vec![emit(ServerEvent::Unauthorized {
                err: "not authenticated".into()
            })]
        );
        assert!(s.rooms().is_empty());
        // Still able to authenticate afterwards.
        assert_eq!(
            s.on_event(&ctx, AUTHENTICATE, &[json!({"token": access("u1")})]),
            vec![Action::CancelAuthTimeout, emit(ServerEvent::Authenticated)]
        );
    }

    #[test]
    fn join_and_leave() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        let t = room_token(&ctx, "u1", "/channels");
        let join = [json!({"name": "/channels", "token": t})];
        assert_eq!(
            s.on_event(&ctx, JOIN, &join),
            vec![
                Action::JoinRoom("/channels".into()),
                emit(ServerEvent::JoinSuccess {
                    name: "/channels".into()
                })
            ]
        );
        // Joining again: success, no second membership.
        assert_eq!(
            s.on_event(&ctx, JOIN, &join),
            vec![emit(ServerEvent::JoinSuccess {
                name: "/channels".into()
            })]
        );
        assert_eq!(s.rooms(), [Rc::<str>::from("/channels")]);
        assert_eq!(
            s.on_event(&ctx, LEAVE, &[json!({"name": "/channels"})]),
            vec![
                Action::LeaveRoom("/channels".into()),
                emit(ServerEvent::LeaveSuccess {
                    name: "/channels".into()
                })
            ]
        );
        assert!(s.rooms().is_empty());
    }

    #[test]
    fn leaving_an_unjoined_room_succeeds() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        assert_eq!(
            s.on_event(&ctx, LEAVE, &[json!({"name": "/never"})]),
            vec![emit(ServerEvent::LeaveSuccess {
                name: "/never".into()
            })]
        );
        assert_eq!(
            s.on_event(&ctx, LEAVE, &[json!({"nom": "/never"})]),
            vec![emit(ServerEvent::LeaveError {
                name: "".into(),
                error: "missing field name".into()
            })]
        );
    }

    #[test]
    fn join_negative_cases() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        let join_error = |name: &str, error: &str| {
            vec![emit(ServerEvent::JoinError {
                name: name.into(),
                error: error.into(),
            })]
        };
        let other_user = room_token(&ctx, "u2", "/r");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r", "token": other_user})]),
            join_error("/r", "room token is for another user")
        );
        let other_room = room_token(&ctx, "u1", "/other");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r", "token": other_room})]),
            join_error("/r", "room token is for another room")
        );
        let expired = ctx.rooms.sign_until("u1", "/r", now_s() - 10).unwrap();
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r", "token": expired})]),
            join_error("/r", "jwt expired")
        );
        // Twake's documentation example used the literal token "twake": no bypass.
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r", "token": "twake"})]),
            join_error("/r", "jwt malformed")
        );
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/r"})]),
            join_error("/r", "jwt must be provided")
        );
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!("oops")]),
            join_error("", "payload must be an object")
        );
        assert!(s.rooms().is_empty());
    }

    #[test]
    fn rooms_per_socket_limit() {
        let ctx = ctx_with(SessionConfig {
            rooms_per_socket_max: 2,
            ..SessionConfig::default()
        });
        let mut s = authed(&ctx, "u1");
        for room in ["/a", "/b"] {
            let t = room_token(&ctx, "u1", room);
            assert_eq!(
                s.on_event(&ctx, JOIN, &[json!({"name": room, "token": t})])[0],
                Action::JoinRoom(room.into())
            );
        }
        let t = room_token(&ctx, "u1", "/c");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/c", "token": t.clone()})]),
            vec![emit(ServerEvent::JoinError {
                name: "/c".into(),
                error: "too many rooms (limit 2)".into()
            })]
        );
        // Re-joining a room already held is not refused by the limit.
        let ta = room_token(&ctx, "u1", "/a");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/a", "token": ta})]),
            vec![emit(ServerEvent::JoinSuccess { name: "/a".into() })]
        );
        s.on_event(&ctx, LEAVE, &[json!({"name": "/a"})]);
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/c", "token": t})])[0],
            Action::JoinRoom("/c".into())
        );
    }

    #[test]
    fn disconnect_leaves_every_room() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        for room in ["/a", "/b"] {
            let t = room_token(&ctx, "u1", room);
            s.on_event(&ctx, JOIN, &[json!({"name": room, "token": t})]);
        }
        assert_eq!(
            s.on_disconnect(),
            vec![
                Action::LeaveRoom("/a".into()),
                Action::LeaveRoom("/b".into())
            ]
        );
        assert!(s.rooms().is_empty());
    }

    #[test]
    fn unknown_events_after_authentication_are_ignored() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        assert_eq!(s.on_event(&ctx, "custom", &[json!(1)]), vec![]);
    }

    #[test]
    fn realtime_event_needs_the_room_token_and_bounds_its_data() {
        let ctx = ctx_with(SessionConfig {
            event_data_bytes_max: 10,
            ..SessionConfig::default()
        });
        let mut s = Session::new();
        s.on_connect(&ctx, None);
        let t = room_token(&ctx, "u1", "/r");
        let error = |name: &str, error: &str| {
            vec![emit(ServerEvent::EventError {
                name: name.into(),
                error: error.into(),
            })]
        };
        let ev = json!({"name": "/r", "data": {"a": 1}, "token": t});
        assert_eq!(
            s.on_event(&ctx, EVENT, std::slice::from_ref(&ev)),
            error("/r", "not authenticated")
        );
        let mut s = authed(&ctx, "u1");
        assert_eq!(
            s.on_event(&ctx, EVENT, &[ev]),
            vec![Action::PublishEvent {
                room: "/r".into(),
                args: r#"["realtime:event",{"name":"/r","data":{"a":1}}]"#.into(),
            }]
        );
        // `data` of exactly the limit passes, one byte more does not.
        let ten = json!("12345678");
        assert_eq!(encoded_len(&ten), 10);
        assert!(matches!(
            s.on_event(
                &ctx,
                EVENT,
                &[json!({"name": "/r", "data": ten, "token": t})]
            )[0],
            Action::PublishEvent { .. }
        ));
        assert_eq!(
            s.on_event(
                &ctx,
                EVENT,
                &[json!({"name": "/r", "data": "123456789", "token": t})]
            ),
            error("/r", "event data too large (limit 10 bytes)")
        );
        let other_user = room_token(&ctx, "u2", "/r");
        let other_room = room_token(&ctx, "u1", "/o");
        for (token, e) in [
            (json!(other_user), "room token is for another user"),
            (json!(other_room), "room token is for another room"),
            (json!("twake"), "jwt malformed"),
            (json!(null), "jwt must be provided"),
            (json!(access("u1")), "invalid signature"),
        ] {
            assert_eq!(
                s.on_event(
                    &ctx,
                    EVENT,
                    &[json!({"name": "/r", "data": 1, "token": token})]
                ),
                error("/r", e)
            );
        }
        assert_eq!(
            s.on_event(&ctx, EVENT, &[json!(3)]),
            error("", "payload must be an object")
        );
        // Sending needs no membership, and does not make one.
        assert!(s.rooms().is_empty());
    }

    #[test]
    fn company_online_room_opens_with_an_access_token_of_a_member_only() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        let member = AccessSigner::new(&AuthConfig::hs256(SECRET))
            .unwrap()
            .sign(
                "u1",
                60,
                json!({"companies": ["acme"]}).as_object().unwrap(),
            )
            .unwrap();
        let room = format!("{COMPANY_ONLINE_ROOM_PREFIX}acme");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": room, "token": member})])[0],
            Action::JoinRoom(room.as_str().into())
        );
        let refused = |name: &str| {
            vec![emit(ServerEvent::JoinError {
                name: name.into(),
                error: NOT_YOUR_COMPANY_ROOM.into(),
            })]
        };
        // Another company, a look-alike below it, a token of no company, another member's token: refused.
        for (name, token) in [
            ("/users/online/other", member.clone()),
            ("/users/online/acme/x", member.clone()),
            ("/users/online/acme", access("u1")),
        ] {
            assert_eq!(
                s.on_event(&ctx, JOIN, &[json!({"name": name, "token": token})]),
                refused(name)
            );
        }
        let other_member = AccessSigner::new(&AuthConfig::hs256(SECRET))
            .unwrap()
            .sign(
                "u2",
                60,
                json!({"companies": ["acme"]}).as_object().unwrap(),
            )
            .unwrap();
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": room, "token": other_member})]),
            refused(&room)
        );
    }

    #[test]
    fn own_user_room_opens_with_the_access_token_only() {
        let ctx = ctx();
        let mut s = authed(&ctx, "u1");
        assert_eq!(
            s.on_event(
                &ctx,
                JOIN,
                &[json!({"name": "/users/u1", "token": access("u1")})]
            ),
            vec![
                Action::JoinRoom("/users/u1".into()),
                emit(ServerEvent::JoinSuccess {
                    name: "/users/u1".into()
                })
            ]
        );
        let refused = |name: &str, error: &str| {
            vec![emit(ServerEvent::JoinError {
                name: name.into(),
                error: error.into(),
            })]
        };
        // Another user's room: neither with one's own access token nor with theirs.
        assert_eq!(
            s.on_event(
                &ctx,
                JOIN,
                &[json!({"name": "/users/u2", "token": access("u1")})]
            ),
            refused("/users/u2", NOT_YOUR_USER_ROOM)
        );
        assert_eq!(
            s.on_event(
                &ctx,
                JOIN,
                &[json!({"name": "/users/u2", "token": access("u2")})]
            ),
            refused("/users/u2", NOT_YOUR_USER_ROOM)
        );
        // A look-alike of one's own room is not it, and the access token opens no other room.
        assert_eq!(
            s.on_event(
                &ctx,
                JOIN,
                &[json!({"name": "/users/u1/x", "token": access("u1")})]
            ),
            refused("/users/u1/x", NOT_YOUR_USER_ROOM)
        );
        assert_eq!(
            s.on_event(
                &ctx,
                JOIN,
                &[json!({"name": "/channels", "token": access("u1")})]
            ),
            refused("/channels", "invalid signature")
        );
        // A room token for another user's room still works as for any room (the REST API decides who gets one).
        let t = room_token(&ctx, "u1", "/users/u2");
        assert_eq!(
            s.on_event(&ctx, JOIN, &[json!({"name": "/users/u2", "token": t})])[0],
            Action::JoinRoom("/users/u2".into())
        );
        assert_eq!(
            s.rooms(),
            [Rc::<str>::from("/users/u1"), Rc::from("/users/u2")]
        );
    }

    #[test]
    fn error_payloads_carry_error_and_message() {
        let e = ServerEvent::JoinError {
            name: "/r".into(),
            error: "x".into(),
        };
        assert_eq!(
            e.to_args(),
            json!(["realtime:join:error", {"name": "/r", "error": "x", "message": "x"}])
        );
        let e = ServerEvent::EventError {
            name: "/r".into(),
            error: "x".into(),
        };
        assert_eq!(
            e.to_args(),
            json!(["realtime:event:error", {"name": "/r", "error": "x", "message": "x"}])
        );
        let e = ServerEvent::Unauthorized { err: "y".into() };
        assert_eq!(
            e.to_args(),
            json!(["unauthorized", {"err": "y", "message": "y"}])
        );
    }

    #[test]
    fn echoed_name_is_truncated_on_a_char_boundary() {
        assert_eq!(echo_name(&[json!({"name": "ééé"})], 3), "é");
        assert_eq!(echo_name(&[json!({"name": 3})], 3), "");
    }
}
