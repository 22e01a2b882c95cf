//! Socket events for services: named events from **authenticated** sockets, and hooks when a user's socket connects
//! or disconnects (Twake's `socket.on("online:get", (req, ack) => ...)`, `onUserConnected`, `onUserDisconnected`).
//!
//! Register on each shard after the realtime layer's `install` (`live.rs`):
//!
//! ```no_run
//! # use std::rc::Rc;
//! # use shardcast::server::ShardCtx;
//! use serde_json::json;
//! use shardcast::realtime::events::{self, SocketEvent, SocketUser};
//!
//! # fn wire(shard: &Rc<ShardCtx>) {
//! events::on_event(shard, "ping:me", |e: SocketEvent| async move {
//!     if let Some(ack) = e.ack {
//!         ack.send(&[json!({"user": e.user.id, "args": e.args})]);
//!     }
//! })
//! .expect("not a contract event");
//! events::on_connected(shard, |u: SocketUser| async move { tracing::info!(user = u.user.id, "online") });
//! # }
//! ```
//!
//! Rules:
//! - A handler runs on the socket's shard, as a task of its own, and receives the user, the socket id, the event's
//!   arguments and, if the client asked for one, an ack ([`SocketAck`]). It never sees the socket or the transport.
//! - Events before authentication are refused as before (`unauthorized {err: "not authenticated", message}`); an
//!   event no handler is registered for is ignored after authentication, as before. The contract's own events
//!   (`authenticate`, `realtime:*`) cannot be taken over ([`on_event`] refuses them).
//! - At most [`HANDLERS_IN_FLIGHT_PER_SOCKET_MAX`] handler calls of one socket run at once; an event over it is not
//!   run, and its ack (if any) is answered `[{"error": "too many events in flight (limit N)", "message": ...}]`.
//! - [`on_connected`] hooks run once per socket, when it authenticates; [`on_disconnected`] hooks once per
//!   authenticated socket, when it goes.
//! - [`on_user_presence`] hooks run once per user coming online (its first authenticated socket on any shard) and once
//!   when it goes offline (its last socket gone, wherever it was), on the user's home shard
//!   ([`super::presence::home_shard`]), with the user id and the companies of its token.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use serde_json::{Value, json};

use crate::proto::RawJson;
use crate::server::{AckSender, ShardCtx};

use super::auth::AuthenticatedUser;

/// Most handler calls of one socket running at once.
pub const HANDLERS_IN_FLIGHT_PER_SOCKET_MAX: usize = 16;

/// A future a handler or hook returns; it runs on the socket's shard.
pub type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;
type Handler = Rc<dyn Fn(SocketEvent) -> LocalFuture>;
type Hook = Rc<dyn Fn(SocketUser) -> LocalFuture>;
type PresenceHook = Rc<dyn Fn(UserPresence) -> LocalFuture>;

/// A user came online (first authenticated socket on any shard) or went offline (its last socket gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserPresence {
    /// The user id.
    pub user_id: String,
    /// The companies of its access token when it came online (the `companies` claim, at most
    /// [`super::presence::COMPANIES_PER_USER_MAX`]).
    pub companies: Vec<String>,
    /// True when the user came online, false when it went offline.
    pub online: bool,
}

/// Who a socket is: its user and its id.
#[derive(Clone, Debug)]
pub struct SocketUser {
    /// The authenticated user.
    pub user: AuthenticatedUser,
    /// The socket's id (unique per connection).
    pub socket_id: String,
}

/// One named event of an authenticated socket.
#[derive(Debug)]
pub struct SocketEvent {
    /// The authenticated user.
    pub user: AuthenticatedUser,
    /// The socket's id.
    pub socket_id: String,
    /// The event's arguments (after its name).
    pub args: Vec<Value>,
    /// Present when the client asked for an acknowledgement.
    pub ack: Option<SocketAck>,
}

/// Answers one client acknowledgement (consumed by sending).
#[derive(Debug)]
pub struct SocketAck {
    inner: AckSender,
}

impl SocketAck {
    pub(crate) fn new(inner: AckSender) -> Self {
        Self { inner }
    }

    /// Sends the acknowledgement with these arguments; false if the socket is gone.
    pub fn send(self, args: &[Value]) -> bool {
        let text = serde_json::to_string(args).unwrap_or_else(|_| "[]".into());
        match RawJson::new(text) {
            Ok(raw) => self.inner.send(raw),
            Err(e) => {
                tracing::warn!(error = %e, "ack arguments refused by the codec");
                false
            }
        }
    }
}

/// The handlers and hooks of one shard.
#[derive(Default)]
pub struct SocketHandlers {
    events: HashMap<String, Handler>,
    connected: Vec<Hook>,
    disconnected: Vec<Hook>,
    presence: Vec<PresenceHook>,
}

impl std::fmt::Debug for SocketHandlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketHandlers")
            .field("events", &self.events.keys().collect::<Vec<_>>())
            .field("connected", &self.connected.len())
            .field("disconnected", &self.disconnected.len())
            .field("presence", &self.presence.len())
            .finish()
    }
}

/// Why a handler was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name belongs to the wire contract (`authenticate`, `realtime:*`).
    #[error("`{0}` is an event of the wire contract")]
    Reserved(String),
    /// the realtime layer's `install` (`live.rs`) has not run on this shard.
    #[error("the realtime layer is not installed on this shard")]
    NotInstalled,
}

/// True for the events the wire contract itself answers.
pub fn is_contract_event(name: &str) -> bool {
    name == super::protocol::AUTHENTICATE || name.starts_with("realtime:")
}

fn handlers(shard: &Rc<ShardCtx>) -> Result<Rc<RefCell<SocketHandlers>>, RegisterError> {
    shard
        .state::<RefCell<SocketHandlers>>()
        .ok_or(RegisterError::NotInstalled)
}

/// Creates this shard's (empty) handler table; the realtime layer's `install` calls it once per shard and keeps the
/// table to dispatch events and hooks.
pub(crate) fn install_handlers(shard: &ShardCtx) -> Rc<RefCell<SocketHandlers>> {
    shard.set_state(RefCell::new(SocketHandlers::default()))
}

/// Registers `handler` for the event `name` on this shard (replacing an earlier one).
pub fn on_event<F, Fut>(shard: &Rc<ShardCtx>, name: &str, handler: F) -> Result<(), RegisterError>
where
    F: Fn(SocketEvent) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    if is_contract_event(name) {
        return Err(RegisterError::Reserved(name.to_owned()));
    }
    let h: Handler = Rc::new(move |e| Box::pin(handler(e)));
    handlers(shard)?
        .borrow_mut()
        .events
        .insert(name.to_owned(), h);
    Ok(())
}

/// Runs `hook` whenever a socket of this shard authenticates.
pub fn on_connected<F, Fut>(shard: &Rc<ShardCtx>, hook: F) -> Result<(), RegisterError>
where
    F: Fn(SocketUser) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let h: Hook = Rc::new(move |u| Box::pin(hook(u)));
    handlers(shard)?.borrow_mut().connected.push(h);
    Ok(())
}

/// Runs `hook` whenever an authenticated socket of this shard disconnects.
pub fn on_disconnected<F, Fut>(shard: &Rc<ShardCtx>, hook: F) -> Result<(), RegisterError>
where
    F: Fn(SocketUser) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let h: Hook = Rc::new(move |u| Box::pin(hook(u)));
    handlers(shard)?.borrow_mut().disconnected.push(h);
    Ok(())
}

/// Runs `hook` on this shard whenever a user whose home shard this is comes online or goes offline (each transition
/// once across all shards). Register it on every shard: each user has one home shard.
pub fn on_user_presence<F, Fut>(shard: &Rc<ShardCtx>, hook: F) -> Result<(), RegisterError>
where
    F: Fn(UserPresence) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let h: PresenceHook = Rc::new(move |p| Box::pin(hook(p)));
    handlers(shard)?.borrow_mut().presence.push(h);
    Ok(())
}

impl SocketHandlers {
    /// The handler's future for `event`, if one is registered.
    pub(crate) fn call(&self, name: &str, event: SocketEvent) -> Option<LocalFuture> {
        self.events.get(name).map(|h| h(event))
    }

    /// True if a handler is registered for `name`.
    pub(crate) fn handles(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    pub(crate) fn connected(&self, u: &SocketUser) -> Vec<LocalFuture> {
        self.connected.iter().map(|h| h(u.clone())).collect()
    }

    pub(crate) fn disconnected(&self, u: &SocketUser) -> Vec<LocalFuture> {
        self.disconnected.iter().map(|h| h(u.clone())).collect()
    }

    pub(crate) fn presence(&self, p: &UserPresence) -> Vec<LocalFuture> {
        self.presence.iter().map(|h| h(p.clone())).collect()
    }
}

/// The ack answer of an event refused by [`HANDLERS_IN_FLIGHT_PER_SOCKET_MAX`].
pub(crate) fn too_many_in_flight() -> Vec<Value> {
    let text = format!("too many events in flight (limit {HANDLERS_IN_FLIGHT_PER_SOCKET_MAX})");
    vec![json!({ "error": text, "message": text })]
}

/// Runs `fut` as a task of this shard.
pub(crate) fn spawn(fut: LocalFuture) {
    glommio::spawn_local(fut).detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_events_are_reserved() {
        assert!(is_contract_event("authenticate"));
        assert!(is_contract_event("realtime:join"));
        assert!(is_contract_event("realtime:event"));
        assert!(!is_contract_event("online:get"));
        assert!(!is_contract_event("echo"));
    }
}
