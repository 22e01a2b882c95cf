//! Latency of repository operations through the IO shard, per backend.
//!
//! `cargo bench --bench orm` (add `-- --quick` for fewer operations). The embedded backend always runs; MongoDB runs
//! when `SHARDCAST_TEST_MONGO_URI` is set (e.g. after `bash tests/services/mongo.sh start && source
//! target/services/mongo.env`), Cassandra when `SHARDCAST_TEST_CQL_NODES` is set (`tests/services/cassandra.sh`).
//! Each operation is awaited from a plain thread with `futures_lite::future::block_on`, so a figure is the full
//! round trip: caller -> queue -> IO thread -> database -> oneshot -> caller.
//!
//! `patch 1 column` is `Repository::patch` (the write plus the read of the patched row); `find 20, local index` is a
//! partition-key plus local-index lookup (`(thread), folder`).
//!
//! Prints one line per backend and operation: count, throughput of that sequential loop, and latency percentiles.

use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
use shardcast::orm::{
    BackendKind, Entity, EntitySchema, FieldType, Find, Key, Order, OrmConfig, Patch, Repository,
    SchemaBuilder,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Post {
    thread: String,
    seq: i64,
    author: String,
    body: String,
    folder: String,
}

impl Entity for Post {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("bench_posts")
            .column("thread", FieldType::Text)
            .column("seq", FieldType::Number)
            .column("author", FieldType::Text)
            .column("body", FieldType::EncryptedText)
            .column("folder", FieldType::Text)
            .partition_key(&["thread"])
            .clustering("seq", Order::Asc)
            .index("author")
            .local_index("folder")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hits {
    page: String,
    hits: i64,
}

impl Entity for Hits {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("bench_hits")
            .column("page", FieldType::Text)
            .column("hits", FieldType::Counter)
            .partition_key(&["page"])
    }
}

fn report(backend: &str, op: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort();
    let q = |p: f64| {
        let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "{backend:<9} {op:<22} n={:<6} {:>9.0} ops/s  p50={:>8.1}us p90={:>8.1}us p99={:>8.1}us p999={:>8.1}us max={:>8.1}us",
        samples.len(),
        samples.len() as f64 / total.as_secs_f64(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        samples.last().map(|d| d.as_secs_f64() * 1e6).unwrap_or(0.0),
    );
}

fn measure(backend: &str, op: &str, n: usize, mut f: impl FnMut(usize)) {
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i);
        samples.push(t.elapsed());
    }
    report(backend, op, samples, start.elapsed());
}

fn run(name: &str, config: OrmConfig, n: usize) {
    let (shard, orm) = shardcast::orm::start(&config).expect("ORM starts");
    let posts = block_on(Repository::<Post>::open(&orm)).expect("open");
    let hits = block_on(Repository::<Hits>::open(&orm)).expect("open");
    let post = |i: usize| Post {
        thread: format!("t{}", i % 16),
        seq: i as i64,
        author: format!("a{}", i % 10),
        body: "a message body of a typical length, encrypted at rest".into(),
        folder: format!("f{}", i % 8),
    };
    measure(name, "save (upsert)", n, |i| {
        block_on(posts.save(post(i))).expect("save");
    });
    measure(name, "save_all (100 rows)", n / 100, |i| {
        let batch = (0..100).map(|j| post(1_000_000 + i * 100 + j)).collect();
        block_on(posts.save_all(batch)).expect("save_all");
    });
    measure(name, "get by key", n, |i| {
        let key = Key::new()
            .with("thread", format!("t{}", i % 16))
            .with("seq", i as i64);
        block_on(posts.get(key)).expect("get").expect("found");
    });
    measure(name, "find 20, range", n, |i| {
        let find = Find::new()
            .eq("thread", format!("t{}", i % 16))
            .ge("seq", (i / 2) as i64)
            .limit(20);
        block_on(posts.find(find)).expect("find");
    });
    measure(name, "find 20, index", n / 4, |i| {
        block_on(posts.find(Find::new().eq("author", format!("a{}", i % 10)).limit(20)))
            .expect("find");
    });
    measure(name, "patch 1 column", n, |i| {
        let key = Key::new()
            .with("thread", format!("t{}", i % 16))
            .with("seq", i as i64);
        let patch = Patch::new().set("author", format!("b{}", i % 10));
        block_on(posts.patch(key, patch))
            .expect("patch")
            .expect("found");
    });
    measure(name, "find 20, local index", n / 4, |i| {
        let find = Find::new()
            .eq("thread", format!("t{}", i % 16))
            .eq("folder", format!("f{}", i % 8))
            .limit(20);
        block_on(posts.find(find)).expect("find");
    });
    measure(name, "increment counter", n, |i| {
        block_on(hits.increment(Key::new().with("page", format!("p{}", i % 64)), "hits", 1))
            .expect("increment");
    });
    drop((posts, hits, orm));
    shard.stop();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 500 } else { 5_000 };
    let dir = std::env::temp_dir().join(format!("shardcast-orm-bench-{}", std::process::id()));
    let key = Some("0707070707070707070707070707070707070707070707070707070707070707".to_string());
    let embedded = OrmConfig {
        embedded_path: dir.join("bench.redb"),
        encryption_key: key.clone(),
        ..OrmConfig::default()
    };
    run("embedded", embedded, n);
    let _ = std::fs::remove_dir_all(&dir);
    if let Ok(uri) = std::env::var("SHARDCAST_TEST_MONGO_URI") {
        let mongo = OrmConfig {
            backend: BackendKind::Mongo,
            mongo_uri: uri,
            mongo_database: format!("bench_{}", std::process::id()),
            encryption_key: key.clone(),
            ..OrmConfig::default()
        };
        run("mongo", mongo, n / 5);
    } else {
        println!("mongo: skipped (SHARDCAST_TEST_MONGO_URI not set)");
    }
    if let Ok(nodes) = std::env::var("SHARDCAST_TEST_CQL_NODES") {
        let cql = OrmConfig {
            backend: BackendKind::Cql,
            cql_nodes: nodes.split(',').map(str::to_string).collect(),
            cql_keyspace: format!("bench_{}", std::process::id()),
            encryption_key: key,
            ..OrmConfig::default()
        };
        run("cql", cql, n / 5);
    } else {
        println!("cql: skipped (SHARDCAST_TEST_CQL_NODES not set)");
    }
}
