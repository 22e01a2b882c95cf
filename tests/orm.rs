//! The ORM's repository suite, run unchanged against every backend (`suite!` below instantiates it per backend), plus
//! fault tests (database stopped and restarted, IO queue full, request timeout, embedded store killed with SIGKILL).
//!
//! Backends under test:
//! - `embedded`: a fresh redb file under `target/orm-tests/` per test.
//! - `mongo`: the MongoDB-wire server of `tests/services/mongo.sh`, found through `SHARDCAST_TEST_MONGO_URI`; a fresh
//!   database per test. A missing variable fails the tests with a message saying how to start the service.
//!
//! Every repository call goes through a real IO shard, awaited with `futures_lite::future::block_on` (one test awaits
//! from a glommio executor).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
use shardcast::orm::backend::embedded::EmbeddedBackend;
use shardcast::orm::backend::{Backend, BackendResult, BoxFuture, Page, Query, Row, TableSchema};
use shardcast::orm::crypto::CryptoError;
use shardcast::orm::{
    BackendError, Entity, EntitySchema, FieldType, Find, HookContext, HookError, IoShard, Key,
    Order, Orm, OrmConfig, OrmError, Patch, Repository, SchemaBuilder,
};
use uuid::Uuid;

const KEY_A: &str = "0101010101010101010101010101010101010101010101010101010101010101";
const KEY_B: &str = "0202020202020202020202020202020202020202020202020202020202020202";

// -------------------------------------------------------------------------------------------------------------------
// Test environments, one per backend.

/// A running IO shard over one backend, and an ORM over it.
struct TestEnv {
    orm: Orm,
    config: OrmConfig,
    shard: Option<IoShard>,
}

impl TestEnv {
    fn orm_with_key(&self, key: &str) -> Orm {
        let mut c = self.config.clone();
        c.encryption_key = Some(key.to_string());
        Orm::new(self.orm.io().clone(), &c).expect("orm")
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(s) = self.shard.take() {
            s.stop();
        }
    }
}

fn unique(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{name}_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn test_config() -> OrmConfig {
    OrmConfig {
        encryption_key: Some(KEY_A.into()),
        request_timeout_ms: 30_000,
        ..OrmConfig::default()
    }
}

fn start_env(config: OrmConfig, backend: Arc<dyn Backend>) -> TestEnv {
    let factory: shardcast::orm::BackendFactory =
        Box::new(move || Box::pin(async move { Ok(backend) }));
    let shard = IoShard::start(factory, config.io_limits()).expect("IO shard starts");
    let orm = Orm::new(shard.handle(), &config).expect("orm");
    TestEnv {
        orm,
        config,
        shard: Some(shard),
    }
}

fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("orm-tests")
        .join(unique(name));
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

fn embedded_env(name: &str) -> TestEnv {
    let mut config = test_config();
    config.embedded_path = test_dir(name).join("db.redb");
    let (shard, orm) = shardcast::orm::start(&config).expect("embedded ORM starts");
    TestEnv {
        orm,
        config,
        shard: Some(shard),
    }
}

fn mongo_uri() -> String {
    std::env::var("SHARDCAST_TEST_MONGO_URI").unwrap_or_else(|_| {
        panic!(
            "SHARDCAST_TEST_MONGO_URI is not set: start the MongoDB-wire test server with \
             `bash tests/services/mongo.sh start && source target/services/mongo.env` (tests/run.sh does it)"
        )
    })
}

fn mongo_env(name: &str) -> TestEnv {
    let mut config = test_config();
    config.backend = shardcast::orm::BackendKind::Mongo;
    config.mongo_uri = mongo_uri();
    config.mongo_database = unique(&format!("t_{}", &name[..name.len().min(20)]));
    // SecantusDB (a Python server) needs seconds for a `$in` of 1,000 values while the other tests load it too.
    config.request_timeout_ms = 120_000;
    let (shard, orm) = shardcast::orm::start(&config).expect("mongo ORM starts");
    TestEnv {
        orm,
        config,
        shard: Some(shard),
    }
}

fn cql_nodes() -> Vec<String> {
    let nodes = std::env::var("SHARDCAST_TEST_CQL_NODES").unwrap_or_else(|_| {
        panic!(
            "SHARDCAST_TEST_CQL_NODES is not set: start the test Cassandra with \
             `bash tests/services/cassandra.sh start && source target/services/cassandra.env` (tests/run.sh does it)"
        )
    });
    nodes
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A fresh keyspace per test on the Cassandra of `tests/services/cassandra.sh` (`SHARDCAST_TEST_CQL_NODES`).
fn cql_env(name: &str) -> TestEnv {
    let mut config = test_config();
    config.backend = shardcast::orm::BackendKind::Cql;
    config.cql_nodes = cql_nodes();
    config.cql_keyspace = unique(&format!("t_{}", &name[..name.len().min(12)]));
    let (shard, orm) = shardcast::orm::start(&config).expect("CQL ORM starts");
    TestEnv {
        orm,
        config,
        shard: Some(shard),
    }
}

// -------------------------------------------------------------------------------------------------------------------
// Entities.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Message {
    channel: Uuid,
    bucket: i64,
    id: Option<Uuid>,
    author: String,
    body: Option<String>,
    meta: Option<serde_json::Value>,
    tag: Option<String>,
    data: Option<serde_json::Value>,
    pinned: Option<bool>,
    attachment: Option<Vec<u8>>,
}

impl Entity for Message {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("messages")
            .column("channel", FieldType::Uuid)
            .column("bucket", FieldType::Number)
            .column("id", FieldType::TimeUuid)
            .generated()
            .column("author", FieldType::Text)
            .column("body", FieldType::EncryptedText)
            .column("meta", FieldType::EncryptedJson)
            .column("tag", FieldType::EncryptedText)
            .column("data", FieldType::Json)
            .column("pinned", FieldType::Boolean)
            .column("attachment", FieldType::Blob)
            .partition_key(&["channel"])
            .clustering("bucket", Order::Asc)
            .clustering("id", Order::Desc)
            .index("author")
            .index("tag")
    }
}

fn message(channel: Uuid, bucket: i64, author: &str) -> Message {
    Message {
        channel,
        bucket,
        id: None,
        author: author.into(),
        body: None,
        meta: None,
        tag: None,
        data: None,
        pinned: None,
        attachment: None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    p: String,
    n: i64,
    label: Option<String>,
}

impl Entity for Item {
    fn schema() -> SchemaBuilder {
        // The short form (the other entities use the builder it expands to).
        shardcast::entity_schema! {
            table: "items",
            columns: { p: Text, n: Number, label: Text },
            partition_key: [p],
            clustering: [n Asc],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ItemDesc {
    p: String,
    n: i64,
    label: Option<String>,
}

impl Entity for ItemDesc {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("items_desc")
            .column("p", FieldType::Text)
            .column("n", FieldType::Number)
            .column("label", FieldType::Text)
            .partition_key(&["p"])
            .clustering("n", Order::Desc)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Stats {
    channel: Uuid,
    day: String,
    views: i64,
    likes: i64,
}

impl Entity for Stats {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("stats")
            .column("channel", FieldType::Uuid)
            .column("day", FieldType::Text)
            .column("views", FieldType::Counter)
            .column("likes", FieldType::Counter)
            .partition_key(&["channel"])
            .clustering("day", Order::Asc)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PersonV1 {
    id: Uuid,
    name: String,
}

impl Entity for PersonV1 {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("people")
            .column("id", FieldType::Uuid)
            .column("name", FieldType::Text)
            .partition_key(&["id"])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PersonV2 {
    id: Uuid,
    name: String,
    age: Option<i64>,
}

impl Entity for PersonV2 {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("people")
            .column("id", FieldType::Uuid)
            .column("name", FieldType::Text)
            .column("age", FieldType::Number)
            .partition_key(&["id"])
            .index("name")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PersonBadKey {
    id: String,
    name: String,
}

impl Entity for PersonBadKey {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("people")
            .column("id", FieldType::Text)
            .column("name", FieldType::Text)
            .partition_key(&["id"])
    }
}

// -------------------------------------------------------------------------------------------------------------------
// Helpers.

async fn all<E: Entity>(repo: &Repository<E>, find: Find, limit: u32) -> Vec<E> {
    let mut out = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = repo
            .find(find.clone().limit(limit).page_token(token))
            .await
            .expect("find");
        assert!(
            page.entities.len() <= limit as usize,
            "a page holds at most `limit` rows"
        );
        out.extend(page.entities);
        pages += 1;
        assert!(pages < 100_000, "pagination does not end");
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

fn filter_error<T: std::fmt::Debug>(r: Result<T, OrmError>) -> String {
    match r {
        Err(OrmError::InvalidFilter { message, .. }) => message,
        other => panic!("expected an InvalidFilter error, got {other:?}"),
    }
}

fn items(p: &str, range: std::ops::Range<i64>) -> Vec<Item> {
    range
        .map(|n| Item {
            p: p.into(),
            n,
            label: Some(format!("item {n}")),
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------------------------
// The shared suite: each case takes a fresh environment of the backend under test.

mod cases {
    use super::*;

    pub async fn keys_and_clustering_order(env: TestEnv) {
        let repo = Repository::<Message>::open(&env.orm).await.expect("open");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut saved = Vec::new();
        for i in 0..30 {
            let m = repo
                .save(message(a, i % 3, &format!("author{}", i % 4)))
                .await
                .expect("save");
            let id = m.id.expect("generated id");
            assert_eq!(id.get_version_num(), 1, "generated ids are time UUIDs");
            saved.push(m);
        }
        repo.save(message(b, 0, "other")).await.expect("save");
        let ids: BTreeSet<Uuid> = saved.iter().filter_map(|m| m.id).collect();
        assert_eq!(ids.len(), 30, "generated ids are unique");
        // Expected: bucket ascending, then id (time) descending.
        let mut expected = saved.clone();
        expected.sort_by(|x, y| {
            x.bucket.cmp(&y.bucket).then_with(|| {
                let t = |m: &Message| {
                    m.id.and_then(|u| u.get_timestamp())
                        .map(|t| t.to_gregorian())
                        .unwrap_or((0, 0))
                };
                t(y).cmp(&t(x))
            })
        });
        let got = all(&repo, Find::new().eq("channel", a), 7).await;
        assert_eq!(got, expected);
        let one = repo
            .find_one(Find::new().eq("channel", b))
            .await
            .expect("find_one")
            .expect("found");
        assert_eq!(one.author, "other");
        let key = Key::new()
            .with("channel", a)
            .with("bucket", saved[4].bucket)
            .with("id", saved[4].id);
        assert_eq!(repo.get(key).await.expect("get"), Some(saved[4].clone()));
        // Index queries: equality and IN on an indexed column.
        let by_author = all(&repo, Find::new().eq("author", "author1"), 3).await;
        assert_eq!(by_author.len(), 8);
        assert!(by_author.iter().all(|m| m.author == "author1"));
        let by_authors = all(
            &repo,
            Find::new().is_in("author", ["author1", "author2", "other"]),
            4,
        )
        .await;
        assert_eq!(by_authors.len(), 8 + 7 + 1);
        // IN on the partition key and on a clustering column.
        let both = all(&repo, Find::new().is_in("channel", [a, b]), 5).await;
        assert_eq!(both.len(), 31);
        let buckets = all(
            &repo,
            Find::new().eq("channel", a).is_in("bucket", [0, 2]),
            100,
        )
        .await;
        assert_eq!(buckets.len(), 20);
        assert!(buckets.windows(2).all(|w| w[0].bucket <= w[1].bucket));
    }

    pub async fn reversed_order(env: TestEnv) {
        let repo = Repository::<Message>::open(&env.orm).await.expect("open");
        let a = Uuid::new_v4();
        for i in 0..20 {
            repo.save(message(a, i % 2, "x")).await.expect("save");
        }
        let forward = all(&repo, Find::new().eq("channel", a), 6).await;
        let mut backward = all(&repo, Find::new().eq("channel", a).reversed(), 6).await;
        backward.reverse();
        assert_eq!(forward.len(), 20);
        assert_eq!(forward, backward);
        let items_repo = Repository::<ItemDesc>::open(&env.orm).await.expect("open");
        let rows: Vec<ItemDesc> = (0..10)
            .map(|n| ItemDesc {
                p: "a".into(),
                n,
                label: None,
            })
            .collect();
        items_repo.save_all(rows).await.expect("save_all");
        let desc: Vec<i64> = all(&items_repo, Find::new().eq("p", "a"), 3)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(desc, (0..10).rev().collect::<Vec<_>>());
        let asc: Vec<i64> = all(&items_repo, Find::new().eq("p", "a").reversed(), 3)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(asc, (0..10).collect::<Vec<_>>());
    }

    pub async fn range_filters(env: TestEnv) {
        let repo = Repository::<Item>::open(&env.orm).await.expect("open");
        repo.save_all(items("a", -50..50)).await.expect("save_all");
        repo.save_all(items("b", 0..10)).await.expect("save_all");
        let n = |v: Vec<Item>| v.into_iter().map(|i| i.n).collect::<Vec<_>>();
        let got = n(all(&repo, Find::new().eq("p", "a").ge("n", -3).lt("n", 4), 4).await);
        assert_eq!(got, (-3..4).collect::<Vec<_>>());
        let got = n(all(&repo, Find::new().eq("p", "a").gt("n", -3).le("n", 4), 4).await);
        assert_eq!(got, (-2..=4).collect::<Vec<_>>());
        let got = n(all(&repo, Find::new().eq("p", "a").gt("n", 45), 4).await);
        assert_eq!(got, (46..50).collect::<Vec<_>>());
        let got = n(all(&repo, Find::new().eq("p", "a").lt("n", -47).reversed(), 4).await);
        assert_eq!(got, vec![-48, -49, -50]);
        let got = n(all(
            &repo,
            Find::new().is_in("p", ["a", "b"]).ge("n", 8).lt("n", 11),
            2,
        )
        .await);
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, vec![8, 8, 9, 9, 10]);
        assert!(n(all(&repo, Find::new().eq("p", "a").gt("n", 10).lt("n", 5), 4).await).is_empty());
        // Ranges on a descending column compare values, not storage order.
        let desc = Repository::<ItemDesc>::open(&env.orm).await.expect("open");
        desc.save_all(
            (0..20)
                .map(|n| ItemDesc {
                    p: "d".into(),
                    n,
                    label: None,
                })
                .collect(),
        )
        .await
        .expect("save_all");
        let got: Vec<i64> = all(&desc, Find::new().eq("p", "d").ge("n", 5).lt("n", 9), 2)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(got, vec![8, 7, 6, 5]);
        let got: Vec<i64> = all(
            &desc,
            Find::new().eq("p", "d").gt("n", 5).le("n", 9).reversed(),
            2,
        )
        .await
        .iter()
        .map(|i| i.n)
        .collect();
        assert_eq!(got, vec![6, 7, 8, 9]);
        // Ranges on a time UUID clustering column.
        let msgs = Repository::<Message>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(
                msgs.save(message(c, 0, "r"))
                    .await
                    .expect("save")
                    .id
                    .expect("id"),
            );
        }
        let got = all(
            &msgs,
            Find::new()
                .eq("channel", c)
                .eq("bucket", 0)
                .gt("id", ids[2])
                .le("id", ids[6]),
            3,
        )
        .await;
        let got_ids: Vec<Uuid> = got.iter().filter_map(|m| m.id).collect();
        assert_eq!(got_ids, vec![ids[6], ids[5], ids[4], ids[3]]);
    }

    pub async fn in_with_1000_values(env: TestEnv) {
        let repo = Repository::<Item>::open(&env.orm).await.expect("open");
        let rows: Vec<Item> = (0..1200)
            .map(|i| Item {
                p: format!("p{i}"),
                n: i,
                label: None,
            })
            .collect();
        repo.save_all(rows).await.expect("save_all");
        let wanted: Vec<String> = (0..1000).map(|i| format!("p{}", i * 6 / 5)).collect();
        let got = all(&repo, Find::new().is_in("p", wanted.clone()), 150).await;
        let got_p: BTreeSet<String> = got.iter().map(|i| i.p.clone()).collect();
        assert_eq!(got.len(), 1000, "each row once");
        assert_eq!(got_p, wanted.into_iter().collect::<BTreeSet<_>>());
        // IN with 1,000 values on a clustering column.
        repo.save_all(items("big", 0..3000))
            .await
            .expect("save_all");
        let ns: Vec<i64> = (0..1000).map(|i| i * 3).collect();
        let got: Vec<i64> = all(
            &repo,
            Find::new().eq("p", "big").is_in("n", ns.clone()),
            128,
        )
        .await
        .iter()
        .map(|i| i.n)
        .collect();
        assert_eq!(got, ns);
    }

    pub async fn pagination_10000_rows(env: TestEnv) {
        let repo = Repository::<Item>::open(&env.orm).await.expect("open");
        for chunk in 0..10 {
            repo.save_all(items("big", chunk * 1000..(chunk + 1) * 1000))
                .await
                .expect("save_all");
        }
        repo.save_all(items("small", 0..7)).await.expect("save_all");
        let got: Vec<i64> = all(&repo, Find::new().eq("p", "big"), 333)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(
            got,
            (0..10_000).collect::<Vec<_>>(),
            "every row once, in order"
        );
        let got: Vec<i64> = all(&repo, Find::new().eq("p", "big").reversed(), 1000)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(got, (0..10_000).rev().collect::<Vec<_>>());
        // A full scan (no filter) pages through both partitions.
        let scanned = all(&repo, Find::new(), 777).await;
        assert_eq!(scanned.len(), 10_007);
        let keys: BTreeSet<(String, i64)> = scanned.iter().map(|i| (i.p.clone(), i.n)).collect();
        assert_eq!(keys.len(), 10_007, "no row repeated");
        // (A token is a position, valid in either direction: `tokens_either_direction`.)
        let r = repo
            .find(
                Find::new()
                    .eq("p", "big")
                    .page_token(Some("not*base64".into())),
            )
            .await;
        assert!(
            matches!(r, Err(OrmError::Backend(BackendError::InvalidPageToken(_)))),
            "{r:?}"
        );
    }

    pub async fn upsert_and_remove(env: TestEnv) {
        let repo = Repository::<Message>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let mut m = message(c, 1, "alice");
        m.data = Some(serde_json::json!({"k": [1, 2, 3]}));
        m.pinned = Some(true);
        m.attachment = Some(vec![0, 1, 2, 255]);
        let saved = repo.save(m).await.expect("save");
        let key = || {
            Key::new()
                .with("channel", c)
                .with("bucket", 1)
                .with("id", saved.id)
        };
        assert_eq!(repo.get(key()).await.expect("get"), Some(saved.clone()));
        let mut changed = saved.clone();
        changed.author = "bob".into();
        changed.pinned = None;
        changed.data = Some(serde_json::json!("now a string"));
        repo.save(changed.clone()).await.expect("upsert");
        assert_eq!(repo.get(key()).await.expect("get"), Some(changed.clone()));
        assert_eq!(
            all(&repo, Find::new().eq("channel", c), 10).await,
            vec![changed.clone()]
        );
        assert!(
            all(&repo, Find::new().eq("author", "alice"), 10)
                .await
                .is_empty(),
            "index follows the update"
        );
        assert_eq!(
            all(&repo, Find::new().eq("author", "bob"), 10).await,
            vec![changed.clone()]
        );
        repo.remove(&changed).await.expect("remove");
        assert_eq!(repo.get(key()).await.expect("get"), None);
        assert!(
            all(&repo, Find::new().eq("author", "bob"), 10)
                .await
                .is_empty()
        );
        repo.remove(&changed)
            .await
            .expect("removing an absent row is fine");
        let items_repo = Repository::<Item>::open(&env.orm).await.expect("open");
        items_repo
            .save_all(items("r", 0..5))
            .await
            .expect("save_all");
        items_repo
            .remove_key(Key::new().with("p", "r").with("n", 2))
            .await
            .expect("remove_key");
        let left: Vec<i64> = all(&items_repo, Find::new().eq("p", "r"), 10)
            .await
            .iter()
            .map(|i| i.n)
            .collect();
        assert_eq!(left, vec![0, 1, 3, 4]);
        let e = filter_error(items_repo.remove_key(Key::new().with("p", "r")).await);
        assert!(e.contains("`n` is missing"), "{e}");
    }

    pub async fn counters(env: TestEnv) {
        let repo = Repository::<Stats>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let k = |day: &str| Key::new().with("channel", c).with("day", day);
        for _ in 0..3 {
            repo.increment(k("2026-01-02"), "views", 1)
                .await
                .expect("increment");
        }
        repo.increment(k("2026-01-02"), "likes", 5)
            .await
            .expect("increment");
        repo.increment(k("2026-01-02"), "likes", -2)
            .await
            .expect("increment");
        repo.increment(k("2026-01-01"), "likes", 7)
            .await
            .expect("increment");
        let got = all(&repo, Find::new().eq("channel", c), 10).await;
        assert_eq!(
            got,
            vec![
                Stats {
                    channel: c,
                    day: "2026-01-01".into(),
                    views: 0,
                    likes: 7
                },
                Stats {
                    channel: c,
                    day: "2026-01-02".into(),
                    views: 3,
                    likes: 3
                },
            ]
        );
        let r = repo.save(got[0].clone()).await;
        assert!(matches!(r, Err(OrmError::InvalidEntity { .. })), "{r:?}");
        let r = repo.increment(k("x"), "day", 1).await;
        assert!(matches!(r, Err(OrmError::InvalidEntity { .. })), "{r:?}");
    }

    pub async fn encrypted_columns(env: TestEnv) {
        let repo = Repository::<Message>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let mut m = message(c, 0, "carol");
        m.body = Some("the launch code is 0000-SECRET".into());
        m.meta = Some(serde_json::json!({"confidential": "meta-PLAINTEXT-marker"}));
        m.tag = Some("tag-PLAINTEXT-42".into());
        let saved = repo.save(m).await.expect("save");
        let key = || {
            Key::new()
                .with("channel", c)
                .with("bucket", 0)
                .with("id", saved.id)
        };
        assert_eq!(repo.get(key()).await.expect("get"), Some(saved.clone()));
        let raw = repo.raw_row(key()).await.expect("raw").expect("stored");
        for clear in [
            "0000-SECRET",
            "meta-PLAINTEXT-marker",
            "tag-PLAINTEXT-42",
            "confidential",
        ] {
            assert!(
                !raw.windows(clear.len()).any(|w| w == clear.as_bytes()),
                "`{clear}` is stored in clear"
            );
        }
        assert!(
            raw.windows(5).any(|w| w == b"carol"),
            "the raw row is the real stored row"
        );
        // Deterministic encryption of an indexed encrypted column: lookups by value work.
        let mut other = message(c, 0, "dave");
        other.tag = Some("another tag".into());
        repo.save(other).await.expect("save");
        let found = all(&repo, Find::new().eq("tag", "tag-PLAINTEXT-42"), 10).await;
        assert_eq!(found, vec![saved.clone()]);
        // A wrong key is a clear error, not garbage.
        let wrong = Repository::<Message>::open(&env.orm_with_key(KEY_B))
            .await
            .expect("open");
        match wrong.get(key()).await {
            Err(OrmError::Crypto(CryptoError::WrongKeyOrCorrupt { column })) => {
                assert!(column.starts_with("messages."), "{column}")
            }
            other => panic!("expected a wrong-key error, got {other:?}"),
        }
        assert!(
            wrong
                .find(Find::new().eq("tag", "tag-PLAINTEXT-42"))
                .await
                .expect("find")
                .entities
                .is_empty()
        );
    }

    pub async fn rejected_filters(env: TestEnv) {
        let repo = Repository::<Message>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let e = filter_error(repo.find(Find::new().eq("body", "x")).await);
        assert!(e.contains("neither a key column nor indexed"), "{e}");
        let e = filter_error(repo.find(Find::new().eq("pinned", true)).await);
        assert!(e.contains("neither a key column nor indexed"), "{e}");
        let e = filter_error(repo.find(Find::new().gt("channel", c)).await);
        assert!(e.contains("only allowed on clustering columns"), "{e}");
        let e = filter_error(repo.find(Find::new().eq("bucket", 1)).await);
        assert!(e.contains("partition key"), "{e}");
        let e = filter_error(
            repo.find(Find::new().eq("channel", c).gt("id", Uuid::now_v1(&[1; 6])))
                .await,
        );
        assert!(e.contains("restrict clustering columns in order"), "{e}");
        let e = filter_error(repo.find(Find::new().eq("author", "a").reversed()).await);
        assert!(e.contains("reversed order needs"), "{e}");
        let e = filter_error(
            repo.find(Find::new().eq("channel", c).eq("author", "a"))
                .await,
        );
        assert!(e.contains("cannot be combined"), "{e}");
        let e = filter_error(repo.find(Find::new().eq("nope", 1)).await);
        assert!(e.contains("unknown column `nope`"), "{e}");
        let e = filter_error(repo.find(Find::new().eq("channel", c).limit(0)).await);
        assert!(e.contains("limit 0"), "{e}");
        let e = filter_error(
            repo.find(Find::new().eq("channel", c).limit(1_000_000))
                .await,
        );
        assert!(e.contains("page_rows_max"), "{e}");
        let e = filter_error(
            repo.find(Find::new().eq("channel", c).gt("bucket", 1).gt("bucket", 2))
                .await,
        );
        assert!(e.contains("more than one lower"), "{e}");
        let r = repo.find(Find::new().eq("channel", "not-a-uuid")).await;
        assert!(matches!(r, Err(OrmError::InvalidEntity { .. })), "{r:?}");
        let empty = repo
            .find(Find::new().is_in("channel", Vec::<Uuid>::new()))
            .await
            .expect("empty IN");
        assert!(empty.entities.is_empty() && empty.next_page_token.is_none());
    }

    pub async fn schema_extension(env: TestEnv) {
        let v1 = Repository::<PersonV1>::open(&env.orm)
            .await
            .expect("open v1");
        let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
        for (i, id) in ids.iter().enumerate() {
            v1.save(PersonV1 {
                id: *id,
                name: format!("n{}", i % 2),
            })
            .await
            .expect("save");
        }
        let v2 = Repository::<PersonV2>::open(&env.orm)
            .await
            .expect("open v2 (adds a column and an index)");
        let old = v2
            .get(Key::new().with("id", ids[0]))
            .await
            .expect("get")
            .expect("found");
        assert_eq!(
            old,
            PersonV2 {
                id: ids[0],
                name: "n0".into(),
                age: None
            }
        );
        v2.save(PersonV2 {
            id: ids[1],
            name: "n1".into(),
            age: Some(41),
        })
        .await
        .expect("save");
        let by_name = all(&v2, Find::new().eq("name", "n1"), 10).await;
        assert_eq!(
            by_name.len(),
            2,
            "the new index covers rows written before it existed"
        );
        assert!(by_name.contains(&PersonV2 {
            id: ids[1],
            name: "n1".into(),
            age: Some(41)
        }));
        let again = Repository::<PersonV2>::open(&env.orm).await;
        assert!(
            again.is_ok(),
            "opening the same schema twice is fine: {again:?}"
        );
        match Repository::<PersonBadKey>::open(&env.orm).await {
            Err(OrmError::Backend(BackendError::Schema(m))) => {
                assert!(m.contains("primary key"), "{m}")
            }
            other => panic!("expected an incompatible-schema error, got {other:?}"),
        }
    }
}

// -------------------------------------------------------------------------------------------------------------------
// Issue 14 (ORM parity): hooks, TTL, patch, local indexes, token direction, prefix search, patch property.

/// A drive file (Twake's `((company_id), parent_id)` local index), with hooks, a search column and an encrypted column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct File {
    company: Uuid,
    id: Uuid,
    parent: Option<String>,
    name: String,
    size: Option<i64>,
    note: Option<String>,
    secret: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl Entity for File {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("files")
            .column("company", FieldType::Uuid)
            .column("id", FieldType::Uuid)
            .column("parent", FieldType::Text)
            .column("name", FieldType::Text)
            .column("size", FieldType::Number)
            .column("note", FieldType::Text)
            .column("secret", FieldType::EncryptedText)
            .column("created_at_ms", FieldType::Number)
            .column("updated_at_ms", FieldType::Number)
            .partition_key(&["company"])
            .clustering("id", Order::Asc)
            .local_index("parent")
            .search("name")
    }

    fn before_upsert(&mut self, ctx: &HookContext) -> Result<(), HookError> {
        if self.name.trim().is_empty() {
            return Err(HookError::new("name must not be empty"));
        }
        if self.created_at_ms == 0 {
            self.created_at_ms = ctx.now_ms;
        }
        self.updated_at_ms = ctx.now_ms;
        Ok(())
    }

    fn before_update(patch: &mut Patch, ctx: &HookContext) -> Result<(), HookError> {
        if patch
            .get("name")
            .is_some_and(|n| n.as_str().is_none_or(|s| s.trim().is_empty()))
        {
            return Err(HookError::new("name must not be empty"));
        }
        patch.insert("updated_at_ms", ctx.now_ms);
        Ok(())
    }
}

fn file(company: Uuid, id: u128, parent: &str, name: &str) -> File {
    File {
        company,
        id: Uuid::from_u128(id),
        parent: Some(parent.into()),
        name: name.into(),
        size: Some(id as i64),
        note: Some(format!("note {id}")),
        secret: Some(format!("secret {id}")),
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn file_key(f: &File) -> Key {
    Key::new().with("company", f.company).with("id", f.id)
}

/// Sessions expire after 2 s unless a write says otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    id: i64,
    device: String,
    state: Option<String>,
}

impl Entity for Session {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("sessions")
            .column("user", FieldType::Text)
            .column("id", FieldType::Number)
            .column("device", FieldType::Text)
            .column("state", FieldType::Text)
            .partition_key(&["user"])
            .clustering("id", Order::Asc)
            .index("device")
            .local_index("state")
            .ttl(Duration::from_secs(2))
    }
}

/// The entity of the patch property: every column optional, one encrypted, no hooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    k: Uuid,
    a: Option<String>,
    b: Option<i64>,
    c: Option<bool>,
    d: Option<serde_json::Value>,
    e: Option<String>,
}

impl Entity for Doc {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("docs")
            .column("k", FieldType::Uuid)
            .column("a", FieldType::Text)
            .column("b", FieldType::Number)
            .column("c", FieldType::Boolean)
            .column("d", FieldType::Json)
            .column("e", FieldType::EncryptedText)
            .partition_key(&["k"])
    }
}

fn hook_error<T: std::fmt::Debug>(r: Result<T, OrmError>) -> (&'static str, String) {
    match r {
        Err(OrmError::Hook { hook, message, .. }) => (hook, message),
        other => panic!("expected a hook error, got {other:?}"),
    }
}

mod parity {
    use super::*;

    pub async fn hooks(env: TestEnv) {
        let repo = Repository::<File>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let before = shardcast::orm::backend::now_ms();
        let saved = repo.save(file(c, 1, "p", "a.txt")).await.expect("save");
        assert!(saved.created_at_ms >= before && saved.updated_at_ms == saved.created_at_ms);
        let got = repo
            .get(file_key(&saved))
            .await
            .expect("get")
            .expect("found");
        assert_eq!(got, saved, "what the hook set is stored");
        // A refused upsert writes nothing.
        let (hook, message) = hook_error(repo.save(file(c, 2, "p", "  ")).await);
        assert_eq!(
            (hook, message.as_str()),
            ("before_upsert", "name must not be empty")
        );
        assert_eq!(
            repo.get(file_key(&file(c, 2, "p", ""))).await.expect("get"),
            None
        );
        // save_all: one refused entity aborts the batch before anything is written.
        let r = repo
            .save_all(vec![file(c, 3, "p", "ok"), file(c, 4, "p", "")])
            .await;
        assert_eq!(hook_error(r).0, "before_upsert");
        assert_eq!(
            repo.get(file_key(&file(c, 3, "p", ""))).await.expect("get"),
            None
        );
        // Update hook: sets updated_at_ms, refuses an empty name (row unchanged).
        std::thread::sleep(Duration::from_millis(5));
        let patched = repo
            .patch(file_key(&saved), Patch::new().set("size", 99))
            .await
            .expect("patch")
            .expect("row exists");
        assert_eq!(patched.size, Some(99));
        assert!(patched.updated_at_ms > saved.updated_at_ms);
        assert_eq!(patched.created_at_ms, saved.created_at_ms);
        let (hook, _) = hook_error(
            repo.patch(file_key(&saved), Patch::new().set("name", ""))
                .await,
        );
        assert_eq!(hook, "before_update");
        assert_eq!(
            repo.get(file_key(&saved)).await.expect("get"),
            Some(patched)
        );
        // A second save keeps created_at_ms (the entity carries it) and moves updated_at_ms.
        let again = repo.save(saved.clone()).await.expect("save");
        assert_eq!(again.created_at_ms, saved.created_at_ms);
        assert!(again.updated_at_ms >= saved.updated_at_ms);
    }

    pub async fn ttl(env: TestEnv) {
        let repo = Repository::<Session>::open(&env.orm).await.expect("open");
        let user = "u".to_string();
        let s = |id: i64, device: &str| Session {
            user: user.clone(),
            id,
            device: device.into(),
            state: Some("on".into()),
        };
        repo.save(s(1, "d-default")).await.expect("default ttl");
        repo.save_with_ttl(s(2, "d-never"), None)
            .await
            .expect("no ttl");
        repo.save_with_ttl(s(3, "d-long"), Some(Duration::from_secs(600)))
            .await
            .expect("long ttl");
        // Saved with the default TTL, then saved again without one: the expiry is removed.
        repo.save(s(4, "d-renewed")).await.expect("save");
        repo.save_with_ttl(s(4, "d-renewed"), None)
            .await
            .expect("save");
        // A patch keeps the row's expiry.
        repo.save(s(5, "d-patched")).await.expect("save");
        let p = repo
            .patch(
                Key::new().with("user", &user).with("id", 5),
                Patch::new().set("state", "off"),
            )
            .await
            .expect("patch");
        assert_eq!(p.expect("exists").state.as_deref(), Some("off"));
        let ids = |v: Vec<Session>| v.iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(
            ids(all(&repo, Find::new().eq("user", &user), 2).await),
            vec![1, 2, 3, 4, 5]
        );
        assert!(
            matches!(
                repo.save_with_ttl(s(9, "x"), Some(Duration::from_secs(30 * 365 * 86_400)))
                    .await,
                Err(OrmError::InvalidEntity { .. })
            ),
            "a TTL above 20 years is refused"
        );
        std::thread::sleep(Duration::from_millis(3200));
        // Expired rows are never returned: get, key query, global index, local index, patch.
        let live = vec![2, 3, 4];
        assert_eq!(
            ids(all(&repo, Find::new().eq("user", &user), 2).await),
            live
        );
        assert_eq!(
            ids(all(&repo, Find::new().eq("user", &user).eq("state", "on"), 2).await),
            live
        );
        assert_eq!(
            ids(all(&repo, Find::new().eq("state", "on").eq("user", &user), 10).await),
            live
        );
        assert!(
            all(&repo, Find::new().eq("device", "d-default"), 10)
                .await
                .is_empty()
        );
        assert_eq!(
            ids(all(&repo, Find::new().eq("device", "d-never"), 10).await),
            vec![2]
        );
        assert_eq!(
            repo.get(Key::new().with("user", &user).with("id", 1))
                .await
                .expect("get"),
            None
        );
        assert_eq!(
            repo.get(Key::new().with("user", &user).with("id", 5))
                .await
                .expect("get"),
            None
        );
        let p = repo
            .patch(
                Key::new().with("user", &user).with("id", 1),
                Patch::new().set("state", "x"),
            )
            .await
            .expect("patch");
        assert_eq!(p, None, "an expired row cannot be patched back to life");
        if env.orm.io().backend_name() != "mongo" {
            // Embedded: the background sweep deleted the stored record (MongoDB's TTL monitor runs once a minute).
            let raw = repo
                .raw_row(Key::new().with("user", &user).with("id", 1))
                .await
                .expect("raw");
            assert_eq!(raw, None, "the expired row is gone from storage");
        }
        assert_eq!(
            ids(all(&repo, Find::new().eq("user", &user), 10).await),
            live
        );
    }

    pub async fn patch_and_save(env: TestEnv) {
        let repo = Repository::<File>::open(&env.orm).await.expect("open");
        let c = Uuid::new_v4();
        let f = repo.save(file(c, 7, "p", "Plan.md")).await.expect("save");
        let p = repo
            .patch(
                file_key(&f),
                Patch::new()
                    .set("size", 1234)
                    .clear("note")
                    .set("secret", "new secret"),
            )
            .await
            .expect("patch")
            .expect("exists");
        let mut expected = f.clone();
        expected.size = Some(1234);
        expected.note = None;
        expected.secret = Some("new secret".into());
        expected.updated_at_ms = p.updated_at_ms;
        assert_eq!(p, expected, "only the named columns changed");
        assert_eq!(
            repo.get(file_key(&f)).await.expect("get"),
            Some(expected.clone())
        );
        let raw = repo.raw_row(file_key(&f)).await.expect("raw").expect("row");
        assert!(
            !raw.windows(10).any(|w| w == b"new secret"),
            "a patched encrypted column is encrypted"
        );
        // Absent row: nothing written.
        let ghost = file(c, 8, "p", "ghost");
        assert_eq!(
            repo.patch(file_key(&ghost), Patch::new().set("size", 1))
                .await
                .expect("patch"),
            None
        );
        assert_eq!(repo.get(file_key(&ghost)).await.expect("get"), None);
        // Bad patches.
        for bad in [
            Patch::new().set("id", Uuid::new_v4()),
            Patch::new().set("nope", 1),
            Patch::new().set("size", "not a number"),
            Patch::new().set("created_at_ms", true),
        ] {
            assert!(
                matches!(
                    repo.patch(file_key(&f), bad).await,
                    Err(OrmError::InvalidEntity { .. })
                ),
                "refused"
            );
        }
        // save keeps its full-replace meaning: a None field clears its column.
        let mut replaced = expected.clone();
        replaced.size = None;
        replaced.parent = None;
        let replaced = repo.save(replaced).await.expect("save");
        let got = repo.get(file_key(&f)).await.expect("get").expect("row");
        assert_eq!(got, replaced);
        assert_eq!((got.size, got.parent), (None, None));
    }

    pub async fn local_index(env: TestEnv) {
        let repo = Repository::<File>::open(&env.orm).await.expect("open");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut rows: Vec<File> = (0..30)
            .map(|i| file(a, 100 - i, &format!("p{}", i % 3), &format!("f{i}")))
            .collect();
        rows.extend((0..10).map(|i| file(b, i + 1, "p1", &format!("g{i}"))));
        repo.save_all(rows.clone()).await.expect("save_all");
        let ids = |v: &[File]| v.iter().map(|f| f.id.as_u128()).collect::<Vec<_>>();
        let got = all(&repo, Find::new().eq("company", a).eq("parent", "p1"), 3).await;
        let mut want: Vec<u128> = (0..30).filter(|i| i % 3 == 1).map(|i| 100 - i).collect();
        want.sort();
        assert_eq!(
            ids(&got),
            want,
            "one partition, in clustering order, every page"
        );
        let both = all(
            &repo,
            Find::new().is_in("company", [a, b]).eq("parent", "p1"),
            4,
        )
        .await;
        assert_eq!(both.len(), 20);
        assert!(both.iter().all(|f| f.parent.as_deref() == Some("p1")));
        assert!(
            all(&repo, Find::new().eq("company", a).eq("parent", "none"), 5)
                .await
                .is_empty()
        );
        // The index follows patches, saves and removes.
        let moved = &got[0];
        repo.patch(file_key(moved), Patch::new().set("parent", "p2"))
            .await
            .expect("patch");
        repo.patch(file_key(&got[1]), Patch::new().clear("parent"))
            .await
            .expect("patch");
        repo.remove(&got[2]).await.expect("remove");
        let after = all(&repo, Find::new().eq("company", a).eq("parent", "p1"), 100).await;
        assert_eq!(ids(&after), want[3..].to_vec());
        let p2 = all(&repo, Find::new().eq("company", a).eq("parent", "p2"), 100).await;
        assert_eq!(p2.len(), 11);
        assert!(p2.iter().any(|f| f.id == moved.id));
        // What a local index cannot do.
        for find in [
            Find::new().eq("parent", "p1"),
            Find::new().eq("company", a).eq("parent", "p1").reversed(),
            Find::new()
                .eq("company", a)
                .eq("parent", "p1")
                .gt("id", Uuid::nil()),
            Find::new().eq("company", a).is_in("parent", ["p1", "p2"]),
            Find::new()
                .eq("company", a)
                .eq("parent", "p1")
                .prefix("name", "f"),
        ] {
            filter_error(repo.find(find).await);
        }
    }

    pub async fn tokens_either_direction(env: TestEnv) {
        let repo = Repository::<Item>::open(&env.orm).await.expect("open");
        repo.save_all(items("tok", 0..20)).await.expect("save_all");
        let base = Find::new().eq("p", "tok");
        let page = repo.find(base.clone().limit(8)).await.expect("find");
        let n = |v: &[Item]| v.iter().map(|i| i.n).collect::<Vec<_>>();
        assert_eq!(n(&page.entities), (0..8).collect::<Vec<_>>());
        let token = page.next_page_token.expect("more");
        // Forward from the token: 8.., reversed from the same token: the rows before the last returned one.
        let fwd = repo
            .find(base.clone().limit(5).page_token(Some(token.clone())))
            .await
            .expect("find");
        assert_eq!(n(&fwd.entities), (8..13).collect::<Vec<_>>());
        let back = repo
            .find(
                base.clone()
                    .reversed()
                    .limit(100)
                    .page_token(Some(token.clone())),
            )
            .await
            .expect("a forward token is valid in reverse");
        assert_eq!(n(&back.entities), (0..7).rev().collect::<Vec<_>>());
        assert_eq!(back.next_page_token, None);
        // And a reversed token forwards.
        let rpage = repo
            .find(base.clone().reversed().limit(4))
            .await
            .expect("find");
        assert_eq!(n(&rpage.entities), vec![19, 18, 17, 16]);
        let rtoken = rpage.next_page_token.expect("more");
        let ahead = repo
            .find(base.clone().limit(100).page_token(Some(rtoken)))
            .await
            .expect("a reversed token is valid forwards");
        assert_eq!(n(&ahead.entities), vec![17, 18, 19]);
        // Across partitions (IN on the partition key): the reverse walks back through the earlier partition.
        repo.save_all(items("tok2", 0..10)).await.expect("save_all");
        let two = Find::new().is_in("p", ["tok", "tok2"]).lt("n", 10);
        let keys = |v: &[Item]| v.iter().map(|i| (i.p.clone(), i.n)).collect::<Vec<_>>();
        let fwd = all(&repo, two.clone(), 6).await;
        assert_eq!(fwd.len(), 20);
        let page = repo.find(two.clone().limit(13)).await.expect("find");
        assert_eq!(keys(&page.entities), keys(&fwd[..13]));
        let mut back = Vec::new();
        let mut token = page.next_page_token.clone();
        while let Some(t) = token {
            let p = repo
                .find(two.clone().reversed().limit(5).page_token(Some(t)))
                .await
                .expect("find");
            back.extend(p.entities);
            token = p.next_page_token;
        }
        let mut want = fwd[..12].to_vec();
        want.reverse();
        assert_eq!(keys(&back), keys(&want));
        // Two free clustering columns (bucket, id): Cassandra cannot resume by one bound, so it refuses the switch.
        let messages = Repository::<Message>::open(&env.orm).await.expect("open");
        let ch = Uuid::new_v4();
        for i in 0..6 {
            messages.save(message(ch, i % 2, "x")).await.expect("save");
        }
        let all_msgs = all(&messages, Find::new().eq("channel", ch), 10).await;
        let first = messages
            .find(Find::new().eq("channel", ch).limit(4))
            .await
            .expect("find");
        let r = messages
            .find(
                Find::new()
                    .eq("channel", ch)
                    .reversed()
                    .page_token(first.next_page_token),
            )
            .await;
        if env.orm.io().backend_name() == "cql" {
            assert!(
                matches!(r, Err(OrmError::Backend(BackendError::InvalidPageToken(_)))),
                "{r:?}"
            );
        } else {
            let mut want = all_msgs[..3].to_vec();
            want.reverse();
            assert_eq!(r.expect("find").entities, want);
        }
        // Reversed pages of a range, every row once.
        let range = all(&repo, base.clone().ge("n", 3).lt("n", 17).reversed(), 4).await;
        assert_eq!(n(&range), (3..17).rev().collect::<Vec<_>>());
    }

    pub async fn prefix_search(env: TestEnv) {
        let repo = Repository::<File>::open(&env.orm).await.expect("open");
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let names = [
            "Report 2024",
            "report-final",
            "REPO",
            "rep",
            "Résumé",
            "other",
            "re",
            "abcdefghijklmnopqrstuvwxyz0123",
            "abcdefghijklmnopqrstuvwxyzXYZ",
            "a.b(c",
            "axb(c",
        ];
        let rows: Vec<File> = names
            .iter()
            .enumerate()
            .map(|(i, n)| file(a, i as u128 + 1, "p", n))
            .chain(std::iter::once(file(b, 1, "p", "Report elsewhere")))
            .collect();
        repo.save_all(rows).await.expect("save_all");
        let search = |p: &str| Find::new().eq("company", a).prefix("name", p);
        let found = |v: Vec<File>| v.into_iter().map(|f| f.name).collect::<BTreeSet<_>>();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            found(all(&repo, search("rep"), 2).await),
            set(&["Report 2024", "report-final", "REPO", "rep"])
        );
        assert_eq!(
            found(all(&repo, search("REPORT"), 1).await),
            set(&["Report 2024", "report-final"])
        );
        assert_eq!(
            found(all(&repo, search("report "), 5).await),
            set(&["Report 2024"])
        );
        assert_eq!(found(all(&repo, search("rÉ"), 5).await), set(&["Résumé"]));
        assert_eq!(found(all(&repo, search("zzz"), 5).await), set(&[]));
        assert_eq!(
            found(all(&repo, search("ABCDEFGHIJKLMNOPQRSTUVWXYZ01"), 5).await),
            set(&["abcdefghijklmnopqrstuvwxyz0123"]),
            "a prefix longer than the indexed prefixes is matched in full"
        );
        assert_eq!(
            found(all(&repo, search("abcdefghijklmnopqrstuvwx"), 5).await).len(),
            2
        );
        assert_eq!(
            found(
                all(
                    &repo,
                    Find::new()
                        .is_in("company", [a, b])
                        .prefix("name", "report"),
                    2
                )
                .await
            ),
            set(&["Report 2024", "report-final", "Report elsewhere"])
        );
        // Bounded: one page holds at most `limit` rows.
        let page = repo.find(search("re").limit(2)).await.expect("find");
        assert_eq!(page.entities.len(), 2);
        assert!(page.next_page_token.is_some());
        // A rename through patch moves the row in the search.
        let rep = all(&repo, search("rep"), 10).await;
        let target = rep.iter().find(|f| f.name == "rep").expect("rep");
        repo.patch(file_key(target), Patch::new().set("name", "Zebra"))
            .await
            .expect("patch");
        assert_eq!(found(all(&repo, search("ze"), 5).await), set(&["Zebra"]));
        assert!(!found(all(&repo, search("rep"), 5).await).contains("rep"));
        // Refused.
        filter_error(repo.find(search("")).await);
        filter_error(repo.find(Find::new().prefix("name", "rep")).await);
        filter_error(
            repo.find(Find::new().eq("company", a).prefix("note", "n"))
                .await,
        );
        filter_error(repo.find(search("rep").reversed()).await);
    }

    pub async fn patch_property(env: TestEnv, cases: u32) {
        use proptest::prelude::*;
        let repo = Repository::<Doc>::open(&env.orm).await.expect("open");
        let text = proptest::option::of("[a-zA-Z0-9 é]{0,12}");
        let doc = (
            text.clone(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<bool>()),
            proptest::option::of(any::<i32>()),
            text.clone(),
        );
        // A patch: for each column, not named / set to a value / cleared.
        let change = |s: BoxedStrategy<serde_json::Value>| {
            prop_oneof![
                Just(None),
                s.prop_map(Some),
                Just(Some(serde_json::Value::Null))
            ]
        };
        let patch = (
            change("[a-z]{0,8}".prop_map(serde_json::Value::from).boxed()),
            change(any::<i64>().prop_map(serde_json::Value::from).boxed()),
            change(any::<bool>().prop_map(serde_json::Value::from).boxed()),
            change(
                any::<i32>()
                    .prop_map(|n| serde_json::json!({ "n": n }))
                    .boxed(),
            ),
            change("[a-z]{0,8}".prop_map(serde_json::Value::from).boxed()),
        );
        let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
            cases,
            failure_persistence: None,
            ..Default::default()
        });
        runner
            .run(&(doc, patch), |((a, b, c, d, e), changes)| {
                block_on(async {
                    let k = Uuid::new_v4();
                    let initial = Doc {
                        k,
                        a,
                        b,
                        c,
                        d: d.map(|n| serde_json::json!([n])),
                        e,
                    };
                    repo.save(initial).await.expect("save");
                    let key = || Key::new().with("k", k);
                    let before = repo.get(key()).await.expect("get").expect("row");
                    let mut p = Patch::new();
                    let mut merged = serde_json::to_value(&before).expect("json");
                    let named = [changes.0, changes.1, changes.2, changes.3, changes.4];
                    for (col, v) in ["a", "b", "c", "d", "e"].into_iter().zip(named) {
                        if let Some(v) = v {
                            p = p.set(col, v.clone());
                            merged[col] = v;
                        }
                    }
                    if p.columns().next().is_none() {
                        p = p.set("c", true);
                        merged["c"] = serde_json::Value::Bool(true);
                    }
                    let merged: Doc = serde_json::from_value(merged).expect("merged");
                    let patched = repo.patch(key(), p).await.expect("patch").expect("row");
                    let after = repo.get(key()).await.expect("get").expect("row");
                    prop_assert_eq!(&after, &merged, "patch-then-get equals get-then-merge");
                    prop_assert_eq!(&patched, &merged);
                    Ok(())
                })
            })
            .expect("property holds");
    }
}

macro_rules! suite {
    ($backend:ident, $env:path, $cases:expr) => {
        mod $backend {
            use super::*;

            fn run<F: Future<Output = ()>>(name: &str, case: impl FnOnce(TestEnv) -> F) {
                let env = $env(name);
                block_on(case(env));
            }

            #[test]
            fn keys_and_clustering_order() {
                run("order", cases::keys_and_clustering_order);
            }
            #[test]
            fn reversed_order() {
                run("reversed", cases::reversed_order);
            }
            #[test]
            fn range_filters() {
                run("ranges", cases::range_filters);
            }
            #[test]
            fn in_with_1000_values() {
                run("in1000", cases::in_with_1000_values);
            }
            #[test]
            fn pagination_10000_rows() {
                run("pages", cases::pagination_10000_rows);
            }
            #[test]
            fn upsert_and_remove() {
                run("upsert", cases::upsert_and_remove);
            }
            #[test]
            fn counters() {
                run("counters", cases::counters);
            }
            #[test]
            fn encrypted_columns() {
                run("crypto", cases::encrypted_columns);
            }
            #[test]
            fn rejected_filters() {
                run("filters", cases::rejected_filters);
            }
            #[test]
            fn schema_extension() {
                run("schema", cases::schema_extension);
            }
            #[test]
            fn hooks() {
                run("hooks", parity::hooks);
            }
            #[test]
            fn ttl() {
                run("ttl", parity::ttl);
            }
            #[test]
            fn patch_and_save() {
                run("patch", parity::patch_and_save);
            }
            #[test]
            fn local_index() {
                run("local", parity::local_index);
            }
            #[test]
            fn tokens_either_direction() {
                run("tokdir", parity::tokens_either_direction);
            }
            #[test]
            fn prefix_search() {
                run("prefix", parity::prefix_search);
            }
            #[test]
            fn patch_then_get_equals_get_then_merge() {
                run("patchprop", |env| parity::patch_property(env, $cases));
            }
        }
    };
}

suite!(embedded, embedded_env, 64);
suite!(mongo, mongo_env, 24);
suite!(cql, cql_env, 24);

// -------------------------------------------------------------------------------------------------------------------
// Faults.

/// A backend whose operations wait until the gate opens (to fill the IO queue and to exceed the request timeout
/// deterministically).
#[derive(Debug)]
struct GatedBackend {
    inner: EmbeddedBackend,
    gate: Arc<tokio::sync::Semaphore>,
}

impl GatedBackend {
    fn wait<'a, T: Send + 'a>(
        &'a self,
        f: BoxFuture<'a, BackendResult<T>>,
    ) -> BoxFuture<'a, BackendResult<T>> {
        Box::pin(async move {
            let _permit = self.gate.acquire().await;
            f.await
        })
    }
}

impl Backend for GatedBackend {
    fn name(&self) -> &'static str {
        "gated"
    }
    fn ensure_schema<'a>(&'a self, schema: &'a TableSchema) -> BoxFuture<'a, BackendResult<()>> {
        self.inner.ensure_schema(schema)
    }
    fn get<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Row>>> {
        self.wait(self.inner.get(schema, key))
    }
    fn query<'a>(
        &'a self,
        schema: &'a TableSchema,
        query: &'a Query,
    ) -> BoxFuture<'a, BackendResult<Page>> {
        self.wait(self.inner.query(schema, query))
    }
    fn upsert<'a>(&'a self, schema: &'a TableSchema, row: Row) -> BoxFuture<'a, BackendResult<()>> {
        self.wait(self.inner.upsert(schema, row))
    }
    fn upsert_all<'a>(
        &'a self,
        schema: &'a TableSchema,
        rows: Vec<Row>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.wait(self.inner.upsert_all(schema, rows))
    }
    fn delete<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.wait(self.inner.delete(schema, key))
    }
    fn increment<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
        column: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.wait(self.inner.increment(schema, key, column, delta))
    }
    fn raw_row<'a>(
        &'a self,
        schema: &'a TableSchema,
        key: &'a Row,
    ) -> BoxFuture<'a, BackendResult<Option<Vec<u8>>>> {
        self.inner.raw_row(schema, key)
    }
}

fn gated_env(queue: usize, timeout_ms: u64) -> (TestEnv, Arc<tokio::sync::Semaphore>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = EmbeddedBackend::open(test_dir("gated").join("db.redb")).expect("open");
    let backend = Arc::new(GatedBackend {
        inner,
        gate: gate.clone(),
    });
    let config = OrmConfig {
        queue_requests_max: queue,
        request_timeout_ms: timeout_ms,
        unavailable_retry_ms: 1,
        ..test_config()
    };
    (start_env(config, backend), gate)
}

#[test]
fn full_queue_is_unavailable_at_once_and_recovers() {
    let (env, gate) = gated_env(2, 60_000);
    let repo = block_on(Repository::<Item>::open(&env.orm)).expect("open");
    // Two requests run (blocked at the gate), two wait in the queue; the fifth finds the queue full. The IO thread may
    // not have taken the first two off the queue yet, so up to two more may be refused as well: what matters is that a
    // refusal is immediate and says why, and that the accepted ones complete.
    let pending: Vec<_> = (0..6)
        .map(|n| {
            repo.save(Item {
                p: "q".into(),
                n,
                label: None,
            })
        })
        .collect();
    let mut refused = 0;
    let mut accepted = Vec::new();
    for f in pending {
        let mut f = Box::pin(f);
        match futures_lite::future::block_on(futures_lite::future::poll_once(&mut f)) {
            Some(Err(e)) => {
                assert!(e.is_unavailable(), "{e}");
                assert!(e.to_string().contains("queue full"), "{e}");
                refused += 1;
            }
            Some(Ok(_)) => panic!("nothing can complete while the gate is closed"),
            None => accepted.push(f),
        }
    }
    assert!(
        refused >= 2,
        "a queue of 2 plus 2 running cannot take 6 requests ({refused} refused)"
    );
    gate.add_permits(1_000);
    for f in accepted {
        block_on(f).expect("accepted requests complete");
    }
    block_on(repo.save(Item {
        p: "q".into(),
        n: 99,
        label: None,
    }))
    .expect("works again");
}

#[test]
fn request_timeout_is_unavailable_and_the_shard_keeps_working() {
    let (env, gate) = gated_env(16, 300);
    let repo = block_on(Repository::<Item>::open(&env.orm)).expect("open");
    let r = block_on(repo.save(Item {
        p: "t".into(),
        n: 1,
        label: None,
    }));
    match r {
        Err(e) => {
            assert!(e.is_unavailable(), "{e}");
            assert!(e.to_string().contains("timed out"), "{e}");
        }
        Ok(_) => panic!("the gate is closed, the request cannot succeed"),
    }
    gate.add_permits(1_000);
    std::thread::sleep(std::time::Duration::from_millis(5)); // past unavailable_retry_ms (1 ms)
    block_on(repo.save(Item {
        p: "t".into(),
        n: 2,
        label: None,
    }))
    .expect("works once the backend answers");
}

#[test]
fn stopped_io_shard_is_unavailable() {
    let env = embedded_env("stopped");
    let repo = block_on(Repository::<Item>::open(&env.orm)).expect("open");
    let mut env = env;
    env.shard.take().expect("shard").stop();
    let r = block_on(repo.save(Item {
        p: "s".into(),
        n: 1,
        label: None,
    }));
    assert!(matches!(&r, Err(e) if e.is_unavailable()), "{r:?}");
}

#[test]
fn repository_works_from_a_glommio_executor() {
    let env = embedded_env("glommio");
    let orm = env.orm.clone();
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            let repo = Repository::<Item>::open(&orm).await.expect("open");
            repo.save_all(items("g", 0..50)).await.expect("save_all");
            let page = repo
                .find(Find::new().eq("p", "g").gt("n", 44))
                .await
                .expect("find");
            page.entities.into_iter().map(|i| i.n).collect::<Vec<_>>()
        })
        .expect("glommio executor starts");
    let got = handle.join().expect("executor ends");
    assert_eq!(got, vec![45, 46, 47, 48, 49]);
}

const CRASH_CHILD_ENV: &str = "SHARDCAST_TEST_ORM_CRASH_CHILD_DB";
const CRASH_CHILD_SYNC_ENV: &str = "SHARDCAST_TEST_ORM_CRASH_CHILD_SYNC_MS";

/// The child side of the SIGKILL tests: writes forever to the store at `path`, printing `ack <n>` after each write
/// returns.
fn crash_child(path: String) {
    use std::io::Write;
    let sync_ms = std::env::var(CRASH_CHILD_SYNC_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let config = OrmConfig {
        embedded_path: path.into(),
        embedded_sync_interval_ms: sync_ms,
        ..test_config()
    };
    let (_shard, orm) = shardcast::orm::start(&config).expect("child starts");
    let repo = block_on(Repository::<Item>::open(&orm)).expect("open");
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        block_on(repo.save(Item {
            p: "crash".into(),
            n,
            label: Some(format!("row {n}")),
        }))
        .expect("save");
        writeln!(out, "ack {n}").expect("stdout");
        out.flush().expect("flush");
    }
}

/// The parent side: runs `test` (this same test binary) as a child writing to a fresh store with
/// `embedded_sync_interval_ms = sync_ms`, reads its acknowledgements for at least `run_for`, kills it with SIGKILL,
/// reopens the file and checks that every write acknowledged more than `may_lose` before the kill is there.
fn crash_and_check(test: &str, sync_ms: u64, run_for: Duration, may_lose: Duration) {
    use std::io::BufRead;
    let path = test_dir("crash").join("db.redb");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_ENV, &path)
        .env(CRASH_CHILD_SYNC_ENV, sync_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    // (ack, when the parent read it): a write acknowledged at time t was read at t or later.
    let mut acked: Vec<(i64, std::time::Instant)> = Vec::new();
    let mut first: Option<std::time::Instant> = None;
    while acked.len() < 200 || first.is_some_and(|f| f.elapsed() < run_for) {
        let line = lines.next().expect("child alive").expect("line");
        if let Some(n) = line.strip_prefix("ack ") {
            let now = std::time::Instant::now();
            first.get_or_insert(now);
            acked.push((n.parse::<i64>().expect("number"), now));
        }
    }
    let killed_at = std::time::Instant::now();
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let _ = child.wait();
    let config = OrmConfig {
        embedded_path: path,
        ..test_config()
    };
    let (_shard, orm) = shardcast::orm::start(&config).expect("reopens after the crash");
    let repo = block_on(Repository::<Item>::open(&orm)).expect("open");
    let stored: BTreeMap<i64, Item> = block_on(all(&repo, Find::new().eq("p", "crash"), 1000))
        .into_iter()
        .map(|i| (i.n, i))
        .collect();
    let must_survive: Vec<i64> = acked
        .iter()
        .filter(|(_, t)| killed_at.duration_since(*t) > may_lose)
        .map(|(n, _)| *n)
        .collect();
    assert!(!must_survive.is_empty(), "no write old enough to check");
    for n in &must_survive {
        let item = stored
            .get(n)
            .unwrap_or_else(|| panic!("acknowledged write {n} lost ({} acked)", acked.len()));
        assert_eq!(item.label.as_deref(), Some(format!("row {n}").as_str()));
    }
}

/// The embedded store killed with SIGKILL during writes keeps every acknowledged write (fsync per write, the
/// default). The test runs twice: as the parent ([`crash_and_check`]) and as the child ([`crash_child`]).
#[test]
fn embedded_store_keeps_acknowledged_writes_after_sigkill() {
    if let Ok(path) = std::env::var(CRASH_CHILD_ENV) {
        return crash_child(path);
    }
    crash_and_check(
        "embedded_store_keeps_acknowledged_writes_after_sigkill",
        0,
        Duration::ZERO,
        Duration::ZERO,
    );
}

/// `embedded_sync_interval_ms = 50` is ignored since group commit: a SIGKILL loses no acknowledged write at all.
#[test]
fn embedded_store_with_a_sync_interval_keeps_writes_older_than_the_interval_after_sigkill() {
    if let Ok(path) = std::env::var(CRASH_CHILD_ENV) {
        return crash_child(path);
    }
    crash_and_check(
        "embedded_store_with_a_sync_interval_keeps_writes_older_than_the_interval_after_sigkill",
        50,
        Duration::ZERO,
        Duration::ZERO,
    );
}

#[test]
fn mongo_stopped_then_restarted_without_restarting_the_io_shard() {
    let _ = mongo_uri(); // fails clearly when the service was not started
    let mut server = common::mongo::OwnMongo::new("own-mongo");
    let port = server.port;
    server.start();
    let mut config = test_config();
    config.backend = shardcast::orm::BackendKind::Mongo;
    config.mongo_uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    config.mongo_database = unique("t_fault");
    config.request_timeout_ms = 1500;
    config.unavailable_retry_ms = 200;
    let (shard, orm) = shardcast::orm::start(&config).expect("ORM starts");
    let repo = block_on(Repository::<Item>::open(&orm)).expect("open");
    block_on(repo.save(Item {
        p: "f".into(),
        n: 1,
        label: None,
    }))
    .expect("save while up");

    server.stop();
    let mut unavailable = 0;
    for n in 0..5 {
        match block_on(repo.save(Item {
            p: "f".into(),
            n: 100 + n,
            label: None,
        })) {
            Err(e) if e.is_unavailable() => unavailable += 1,
            other => panic!("expected unavailable while the server is down, got {other:?}"),
        }
        let r = block_on(repo.find(Find::new().eq("p", "f")));
        assert!(matches!(&r, Err(e) if e.is_unavailable()), "{r:?}");
    }
    assert_eq!(unavailable, 5);

    server.start();
    let mut recovered = false;
    for _ in 0..100 {
        match block_on(repo.save(Item {
            p: "f".into(),
            n: 2,
            label: None,
        })) {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) if e.is_unavailable() => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            Err(e) => panic!("unexpected error after restart: {e}"),
        }
    }
    assert!(
        recovered,
        "requests succeed again after the server restarts"
    );
    let got: Vec<i64> = block_on(all(&repo, Find::new().eq("p", "f"), 10))
        .iter()
        .map(|i| i.n)
        .collect();
    assert_eq!(
        got,
        vec![1, 2],
        "data written before the stop survived; nothing written while down"
    );
    drop(repo);
    shard.stop();
}
