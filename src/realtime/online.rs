//! The online demo service (Twake's `src/services/online/`), on the socket-event API ([`super::events`]) and the ORM.
//!
//! What Twake's clients rely on, and how it is kept here:
//! - `online:get {data: [user ids]}` acks `{data: [[id, online], ...]}`, one pair per id asked, in order: online
//!   means the user has an authenticated socket on some shard ([`super::live::online`]; Twake guesses it from the
//!   last-seen row: connected and seen less than 15 minutes ago). At most [`ONLINE_GET_USERS_MAX`] ids; more, or a
//!   payload that is not `{data: [strings]}`, acks `{error, message}`. It needs no database.
//! - `online:set` (Twake's clients send it every 10 minutes) records the caller's last-seen time and connected state
//!   (table `user_last_seen`), announces the caller online to its companies (below) and acks with no arguments once
//!   the write is acknowledged. At most once per [`ONLINE_SET_INTERVAL_MS_MIN`] per user on a shard; sooner, or with
//!   the database unavailable, it acks `{error, message}`. Of a longer `companies` claim, the first
//!   [`COMPANIES_PER_USER_MAX`] count, here as everywhere in presence.
//! - A user coming online (first authenticated socket on any shard) or going offline (its last socket gone, wherever
//!   it was; clustered, on any node: [`crate::cluster::presence::present_elsewhere`]) is recorded once, on the user's
//!   home shard ([`super::events::on_user_presence`]): last-seen time, and
//!   `is_connected` true or false. Each is announced to every company of the user's token (the `companies` claim) as
//!   Twake's online service does: `realtime:resource {action: "event", room: "/users/online/{company}", type:
//!   "user:online", path: "/users/{user}", resource: {online: [{company_id, user_id, is_online}]}}`. The room
//!   `/users/online/{company}` is joined with the access token of a member of the company
//!   ([`super::protocol::COMPANY_ONLINE_ROOM_PREFIX`]).
//! - `online:last_seen {data: [user ids]}` (Twake puts `last_seen` and `is_connected` in its user objects; shardcast
//!   has no user service, so this event reads them) acks `{data: [{user_id, last_seen, is_connected}, ...]}` for the
//!   ids that have a row and that the caller may read: itself, or a user who shares a company with it. At most
//!   [`ONLINE_LAST_SEEN_USERS_MAX`] ids; a bad payload or an unavailable database acks `{error, message}`.
//!
//! The service is installed on every shard whether or not the database answered at start-up
//! ([`OnlineService::install_when_ready`]): until it does, `online:get` works, the database's events ack
//! `{error: "database unavailable", message}` and presence changes are announced but not recorded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::orm::{Entity, EntitySchema, FieldType, Key, Orm, OrmError, Repository, SchemaBuilder};
use crate::server::ShardCtx;

use super::bus::{ResourceAction, ResourceEvent};
use super::events::{self, RegisterError, SocketEvent, UserPresence};
use super::live::ShardBus;
use super::presence::COMPANIES_PER_USER_MAX;
use super::protocol::COMPANY_ONLINE_ROOM_PREFIX;

/// Most user ids in one `online:get`.
pub const ONLINE_GET_USERS_MAX: usize = 1000;
/// Most user ids in one `online:last_seen` (each is one database read).
pub const ONLINE_LAST_SEEN_USERS_MAX: usize = 100;
/// Shortest time between two accepted `online:set` of one user on one shard, milliseconds.
pub const ONLINE_SET_INTERVAL_MS_MIN: u64 = 1000;
/// Users whose last `online:set` one shard remembers before it forgets those older than the interval.
const ONLINE_SET_TRACKED_USERS_MAX: usize = 4096;
/// The `type` of the announcements (Twake's `user:online`).
pub const ONLINE_TYPE: &str = "user:online";
/// The error text while the database has not answered yet.
pub const DATABASE_UNAVAILABLE: &str = "database unavailable";

/// A user's last-seen time (table `user_last_seen`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastSeen {
    /// The user id (partition key).
    pub user_id: String,
    /// When the user was last seen, milliseconds since the epoch.
    pub last_seen_ms: i64,
    /// Whether the user had a socket then (false once its last socket went).
    #[serde(default)]
    pub is_connected: bool,
    /// The companies of the user's token then (who may read this row).
    #[serde(default)]
    pub companies: Vec<String>,
}

impl Entity for LastSeen {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("user_last_seen")
            .column("user_id", FieldType::Text)
            .column("last_seen_ms", FieldType::Number)
            .column("is_connected", FieldType::Boolean)
            .column("companies", FieldType::Json)
            .partition_key(&["user_id"])
    }
}

/// The online service: open once, install on every shard.
#[derive(Clone, Debug)]
pub struct OnlineService {
    last_seen: Repository<LastSeen>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn refusal(text: &str) -> Value {
    json!({ "error": text, "message": text })
}

/// The `{data: [strings]}` of an event, at most `max` of them.
fn user_ids(args: &[Value], max: usize) -> Result<Vec<String>, String> {
    let ids: Vec<String> = args
        .first()
        .and_then(|a| a.get("data"))
        .and_then(|d| serde_json::from_value(d.clone()).ok())
        .ok_or_else(|| "payload must be {data: [user ids]}".to_string())?;
    if ids.len() > max {
        return Err(format!("too many user ids (limit {max})"));
    }
    Ok(ids)
}

/// Announces `user`'s state to each of its companies' online rooms, as Twake's online service does.
fn announce(shard: &Rc<ShardCtx>, user: &str, companies: &[String], online: bool) {
    let bus = ShardBus::new(shard);
    for company in companies {
        let event = ResourceEvent {
            action: ResourceAction::Event,
            room: format!("{COMPANY_ONLINE_ROOM_PREFIX}{company}"),
            type_name: ONLINE_TYPE.into(),
            path: format!("{}{user}", super::protocol::USER_ROOM_PREFIX),
            resource: json!({ "online": [{ "company_id": company, "user_id": user, "is_online": online }] }),
        };
        if let Err(e) = bus.publish_now(&event) {
            tracing::debug!(user, company, error = %e, "online announcement dropped");
        }
    }
}

/// Where a shard finds the service: set once the database answered.
type Source = Arc<OnceLock<OnlineService>>;

impl OnlineService {
    /// Creates or extends the table.
    pub async fn open(orm: &Orm) -> Result<Self, OrmError> {
        Ok(Self {
            last_seen: Repository::open(orm).await?,
        })
    }

    /// The last-seen row of `user`, if one was recorded.
    pub async fn last_seen(&self, user: &str) -> Result<Option<LastSeen>, OrmError> {
        self.last_seen.get(Key::new().with("user_id", user)).await
    }

    async fn record(
        &self,
        user: &str,
        companies: &[String],
        connected: bool,
    ) -> Result<(), OrmError> {
        let row = LastSeen {
            user_id: user.to_owned(),
            last_seen_ms: now_ms(),
            is_connected: connected,
            companies: companies.to_vec(),
        };
        self.last_seen.save(row).await.map(|_| ())
    }

    /// Registers the service's events and hooks on `shard`.
    pub fn install(&self, shard: &Rc<ShardCtx>) -> Result<(), RegisterError> {
        let source: Source = Arc::new(OnceLock::new());
        let _ = source.set(self.clone());
        Self::install_when_ready(shard, source)
    }

    /// Registers the service's events and hooks on `shard` now; they use the service once `source` holds it (the
    /// database answered), and answer [`DATABASE_UNAVAILABLE`] where they need it until then.
    pub fn install_when_ready(shard: &Rc<ShardCtx>, source: Source) -> Result<(), RegisterError> {
        let weak = Rc::downgrade(shard);
        events::on_event(shard, "online:get", move |e: SocketEvent| {
            let shard = weak.upgrade();
            async move {
                let (Some(ack), Some(shard)) = (e.ack, shard) else {
                    return;
                };
                let ids = match user_ids(&e.args, ONLINE_GET_USERS_MAX) {
                    Ok(ids) => ids,
                    Err(text) => {
                        ack.send(&[refusal(&text)]);
                        return;
                    }
                };
                match super::live::online(&shard, &ids).await {
                    Ok(online) => {
                        let data: Vec<Value> = ids
                            .iter()
                            .zip(online)
                            .map(|(id, on)| json!([id, on]))
                            .collect();
                        ack.send(&[json!({ "data": data })]);
                    }
                    Err(err) => {
                        ack.send(&[refusal(&err.to_string())]);
                    }
                }
            }
        })?;
        let weak = Rc::downgrade(shard);
        let src = source.clone();
        let last_set: Rc<RefCell<HashMap<String, Instant>>> = Rc::default();
        events::on_event(shard, "online:set", move |e: SocketEvent| {
            let (shard, service) = (weak.upgrade(), src.get().cloned());
            let admitted = admit_set(&last_set, &e.user.id);
            async move {
                let answer = match (admitted, service, &shard) {
                    (false, _, _) => Err(format!(
                        "online:set too often (at most once per {ONLINE_SET_INTERVAL_MS_MIN} ms)"
                    )),
                    (true, None, _) | (true, _, None) => Err(DATABASE_UNAVAILABLE.to_string()),
                    (true, Some(service), Some(shard)) => {
                        let n = e.user.companies.len().min(COMPANIES_PER_USER_MAX);
                        let companies = &e.user.companies[..n];
                        match service.record(&e.user.id, companies, true).await {
                            Ok(()) => {
                                announce(shard, &e.user.id, companies, true);
                                Ok(())
                            }
                            Err(err) => Err(err.to_string()),
                        }
                    }
                };
                if let Some(ack) = e.ack {
                    match answer {
                        // Twake's online service acks `online:set` with no arguments.
                        Ok(()) => ack.send(&[]),
                        Err(text) => ack.send(&[refusal(&text)]),
                    };
                }
            }
        })?;
        let src = source.clone();
        events::on_event(shard, "online:last_seen", move |e: SocketEvent| {
            let service = src.get().cloned();
            async move {
                let Some(ack) = e.ack else { return };
                let ids = match user_ids(&e.args, ONLINE_LAST_SEEN_USERS_MAX) {
                    Ok(ids) => ids,
                    Err(text) => {
                        ack.send(&[refusal(&text)]);
                        return;
                    }
                };
                let Some(service) = service else {
                    ack.send(&[refusal(DATABASE_UNAVAILABLE)]);
                    return;
                };
                let mut data = Vec::new();
                for id in ids {
                    match service.last_seen(&id).await {
                        Ok(Some(row)) => {
                            let readable = row.user_id == e.user.id
                                || row.companies.iter().any(|c| e.user.is_member_of(c));
                            if readable {
                                data.push(json!({
                                    "user_id": row.user_id,
                                    "last_seen": row.last_seen_ms,
                                    "is_connected": row.is_connected,
                                }));
                            }
                        }
                        Ok(None) => {}
                        Err(err) => {
                            ack.send(&[refusal(&err.to_string())]);
                            return;
                        }
                    }
                }
                ack.send(&[json!({ "data": data })]);
            }
        })?;
        let weak = Rc::downgrade(shard);
        events::on_user_presence(shard, move |p: UserPresence| {
            let (shard, service) = (weak.upgrade(), source.get().cloned());
            async move {
                let Some(shard) = shard else { return };
                announce(&shard, &p.user_id, &p.companies, p.online);
                let Some(service) = service else {
                    tracing::debug!(
                        user = p.user_id,
                        "last-seen not recorded: database unavailable"
                    );
                    return;
                };
                if let Err(e) = service.record(&p.user_id, &p.companies, p.online).await {
                    tracing::warn!(user = p.user_id, error = %e, "last-seen not recorded");
                }
            }
        })?;
        Ok(())
    }
}

/// True if `user` may `online:set` now on this shard (and remembers it).
fn admit_set(last: &RefCell<HashMap<String, Instant>>, user: &str) -> bool {
    let interval = Duration::from_millis(ONLINE_SET_INTERVAL_MS_MIN);
    let mut last = last.borrow_mut();
    let now = Instant::now();
    if last
        .get(user)
        .is_some_and(|t| now.duration_since(*t) < interval)
    {
        return false;
    }
    if last.len() >= ONLINE_SET_TRACKED_USERS_MAX {
        last.retain(|_, t| now.duration_since(*t) < interval);
    }
    last.insert(user.to_owned(), now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn online_set_is_admitted_once_per_interval_per_user() {
        let last = RefCell::new(HashMap::new());
        assert!(admit_set(&last, "u1"));
        assert!(!admit_set(&last, "u1"));
        assert!(admit_set(&last, "u2"));
        last.borrow_mut().insert(
            "u1".into(),
            Instant::now() - Duration::from_millis(ONLINE_SET_INTERVAL_MS_MIN + 1),
        );
        assert!(admit_set(&last, "u1"));
    }

    #[test]
    fn user_ids_are_a_bounded_list_of_strings() {
        assert_eq!(
            user_ids(&[json!({"data": ["a", "b"]})], 2),
            Ok(vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            user_ids(&[json!({"data": ["a", "b", "c"]})], 2),
            Err("too many user ids (limit 2)".to_string())
        );
        for bad in [json!({"data": "a"}), json!({"data": [1]}), json!([])] {
            assert_eq!(
                user_ids(&[bad], 2),
                Err("payload must be {data: [user ids]}".to_string())
            );
        }
        assert!(user_ids(&[], 2).is_err());
    }
}
