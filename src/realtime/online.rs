//! The online demo service (Twake's `src/services/online/`), on the socket-event API ([`super::events`]) and the ORM:
//!
//! - `online:get {data: [user ids]}` acks `{data: [[id, online], ...]}`: online means the user has an authenticated
//!   socket on some shard ([`super::live::online`]). At most [`ONLINE_GET_USERS_MAX`] ids per call; more, or a payload
//!   that is not `{data: [strings]}`, acks `{error, message}`.
//! - `online:set` acks with no arguments (as Twake's online service does) and records the caller's last-seen time (table `user_last_seen`).
//! - When a socket of a user disconnects, the user's last-seen time is recorded: after the last socket goes, it is
//!   the time that socket went.

use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::orm::{Entity, EntitySchema, FieldType, Key, Orm, OrmError, Repository, SchemaBuilder};
use crate::server::ShardCtx;

use super::events::{self, RegisterError, SocketEvent, SocketUser};

/// Most user ids in one `online:get`.
pub const ONLINE_GET_USERS_MAX: usize = 1000;

/// A user's last-seen time (table `user_last_seen`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastSeen {
    /// The user id (partition key).
    pub user_id: String,
    /// When the user was last seen, milliseconds since the epoch.
    pub last_seen_ms: i64,
}

impl Entity for LastSeen {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("user_last_seen")
            .column("user_id", FieldType::Text)
            .column("last_seen_ms", FieldType::Number)
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

impl OnlineService {
    /// Creates or extends the table.
    pub async fn open(orm: &Orm) -> Result<Self, OrmError> {
        Ok(Self {
            last_seen: Repository::open(orm).await?,
        })
    }

    /// The last-seen time of `user`, if one was recorded.
    pub async fn last_seen(&self, user: &str) -> Result<Option<i64>, OrmError> {
        let row = self.last_seen.get(Key::new().with("user_id", user)).await?;
        Ok(row.map(|r| r.last_seen_ms))
    }

    async fn touch(&self, user: &str) {
        let row = LastSeen {
            user_id: user.to_owned(),
            last_seen_ms: now_ms(),
        };
        if let Err(e) = self.last_seen.save(row).await {
            tracing::warn!(user, error = %e, "last-seen not recorded");
        }
    }

    /// Registers `online:get`, `online:set` and the disconnect hook on `shard`.
    pub fn install(&self, shard: &Rc<ShardCtx>) -> Result<(), RegisterError> {
        let weak = Rc::downgrade(shard);
        events::on_event(shard, "online:get", move |e: SocketEvent| {
            let shard = weak.upgrade();
            async move {
                let Some(ack) = e.ack else { return };
                let Some(shard) = shard else { return };
                let ids: Option<Vec<String>> = e
                    .args
                    .first()
                    .and_then(|a| a.get("data"))
                    .and_then(|d| serde_json::from_value(d.clone()).ok());
                let Some(ids) = ids else {
                    ack.send(&[refusal("payload must be {data: [user ids]}")]);
                    return;
                };
                if ids.len() > ONLINE_GET_USERS_MAX {
                    let text = format!("too many user ids (limit {ONLINE_GET_USERS_MAX})");
                    ack.send(&[refusal(&text)]);
                    return;
                }
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
        let me = self.clone();
        events::on_event(shard, "online:set", move |e: SocketEvent| {
            let me = me.clone();
            async move {
                me.touch(&e.user.id).await;
                // Twake's online service acks `online:set` with no arguments.
                if let Some(ack) = e.ack {
                    ack.send(&[]);
                }
            }
        })?;
        let me = self.clone();
        events::on_disconnected(shard, move |u: SocketUser| {
            let me = me.clone();
            async move { me.touch(&u.user.id).await }
        })?;
        Ok(())
    }
}
