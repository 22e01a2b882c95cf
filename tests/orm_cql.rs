//! CQL backend tests beyond the shared repository suite (tests/orm.rs runs that suite on Cassandra as `cql::*`):
//! - the backend on its own against the Cassandra of `tests/services/cassandra.sh` (`SHARDCAST_TEST_CQL_NODES`): page
//!   tokens over several partitions and chunked IN lists with small chunks, schema checks, single-row operations;
//! - a cluster that cannot be reached gives `Unavailable` at once;
//! - faults: the database stopped while shardcast runs gives "unavailable" errors (never a panic or a hang), and once it
//!   is started again requests succeed without restarting the IO shard. That test runs a Cassandra instance of its own
//!   (so the other CQL tests keep theirs), with `tests/services/cassandra.sh` in a separate working directory under the
//!   test's temporary directory: started, stopped with SIGTERM, and started again on the same ports with its data kept.
//!
//! All of them need the service started first (tests/run.sh does it) and fail with a message saying so otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
use shardcast::orm::backend::cql::{CqlBackend, CqlConfig};
use shardcast::orm::backend::{
    Backend, BackendError, ColumnDef, ColumnType, Filter, FilterOp, PageToken, Query, Row,
    TableSchema, Value,
};
use shardcast::orm::{
    BackendKind, Entity, EntitySchema, FieldType, Find, Order, OrmConfig, Repository, SchemaBuilder,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    p: String,
    n: i64,
}

impl Entity for Item {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("fault_items")
            .column("p", FieldType::Text)
            .column("n", FieldType::Number)
            .partition_key(&["p"])
            .clustering("n", Order::Asc)
    }
}

/// A Cassandra instance run by the service script in its own directory; stopped on drop.
struct OwnCassandra {
    dir: PathBuf,
    native_port: u16,
    storage_port: u16,
}

impl OwnCassandra {
    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/cassandra.sh")
    }

    fn run(&self, action: &str, keep_data: bool) {
        let out = Command::new("bash")
            .arg(Self::script())
            .arg(action)
            .env("CASSANDRA_DIR", &self.dir)
            .env("SERVICES_DIR", self.dir.join("services"))
            .env("CASSANDRA_NATIVE_PORT", self.native_port.to_string())
            .env("CASSANDRA_STORAGE_PORT", self.storage_port.to_string())
            .env("CASSANDRA_HEAP", "512m")
            .env("CASSANDRA_KEEP_DATA", if keep_data { "1" } else { "0" })
            .output()
            .expect("bash runs the service script");
        assert!(
            out.status.success(),
            "tests/services/cassandra.sh {action} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCassandra {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(Self::script())
            .arg("stop")
            .env("CASSANDRA_DIR", &self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn cql_stopped_then_restarted_without_restarting_the_io_shard() {
    assert!(
        std::env::var("SHARDCAST_TEST_CQL_NODES").is_ok(),
        "SHARDCAST_TEST_CQL_NODES is not set: run `bash tests/services/cassandra.sh start && source \
         target/services/cassandra.env` first (tests/run.sh does it); this test reuses the jars it downloads"
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("own-cassandra-{}", std::process::id()));
    let (native_port, mut storage_port) = (free_port(), free_port());
    while storage_port == native_port {
        storage_port = free_port();
    }
    let server = OwnCassandra {
        dir,
        native_port,
        storage_port,
    };
    server.run("start", false);

    let config = OrmConfig {
        backend: BackendKind::Cql,
        cql_nodes: vec![format!("127.0.0.1:{native_port}")],
        cql_keyspace: "fault_test".into(),
        request_timeout_ms: 5_000,
        unavailable_retry_ms: 200,
        ..OrmConfig::default()
    };
    let (shard, orm) = shardcast::orm::start(&config).expect("ORM starts");
    let repo = block_on(Repository::<Item>::open(&orm)).expect("open");
    block_on(repo.save(Item {
        p: "f".into(),
        n: 1,
    }))
    .expect("save while up");

    server.run("stop", false);
    for n in 0..5 {
        let r = block_on(repo.save(Item {
            p: "f".into(),
            n: 100 + n,
        }));
        assert!(
            matches!(&r, Err(e) if e.is_unavailable()),
            "expected unavailable while Cassandra is down: {r:?}"
        );
        let r = block_on(repo.find(Find::new().eq("p", "f")));
        assert!(
            matches!(&r, Err(e) if e.is_unavailable()),
            "expected unavailable while Cassandra is down: {r:?}"
        );
    }

    server.run("start", true);
    let mut recovered = false;
    for _ in 0..300 {
        match block_on(repo.save(Item {
            p: "f".into(),
            n: 2,
        })) {
            Ok(_) => {
                recovered = true;
                break;
            }
            Err(e) if e.is_unavailable() => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => panic!("unexpected error after the restart: {e}"),
        }
    }
    assert!(recovered, "requests succeed again after Cassandra restarts");
    let got: Vec<i64> = block_on(repo.find(Find::new().eq("p", "f")))
        .expect("find after the restart")
        .entities
        .iter()
        .map(|i| i.n)
        .collect();
    assert_eq!(
        got,
        vec![1, 2],
        "data written before the stop survived; nothing was written while down"
    );
    drop(repo);
    shard.stop();
}

// -------------------------------------------------------------------------------------------------------------------
// The backend on its own: page-token semantics with small chunks and several partitions, schema checks, and a
// cluster that cannot be reached. These complement the shared repository suite of tests/orm.rs (`cql::*`).

fn cql_nodes() -> Vec<String> {
    std::env::var("SHARDCAST_TEST_CQL_NODES")
        .unwrap_or_else(|_| {
            panic!(
                "SHARDCAST_TEST_CQL_NODES is not set: start the test Cassandra with `bash tests/services/cassandra.sh \
                 start && source target/services/cassandra.env` (tests/run.sh does it)"
            )
        })
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn keyspace(name: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{name}_{}_{nanos}_{n}", std::process::id())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn table(order: shardcast::orm::Order) -> TableSchema {
    let col = |name: &str, column_type| ColumnDef {
        name: name.into(),
        column_type,
    };
    TableSchema {
        name: "paging".into(),
        columns: vec![
            col("p", ColumnType::Text),
            col("c", ColumnType::Number),
            col("v", ColumnType::Text),
        ],
        partition_key: vec!["p".into()],
        clustering: vec![("c".into(), order)],
        indexes: vec!["v".into()],
        local_indexes: vec![],
        search: vec![],
    }
}

fn row(p: &str, c: i64) -> Row {
    Row::from([
        ("p".to_string(), Value::Text(p.into())),
        ("c".to_string(), Value::Number(c)),
        ("v".to_string(), Value::Text(format!("v{}", c % 2))),
    ])
}

fn key(p: &str, c: i64) -> Row {
    Row::from([
        ("p".to_string(), Value::Text(p.into())),
        ("c".to_string(), Value::Number(c)),
    ])
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// Follows the page tokens of `filters` to the end with pages of `limit` rows; returns (p, c) of every row.
async fn pages(
    b: &CqlBackend,
    s: &TableSchema,
    filters: &[Filter],
    reversed: bool,
    limit: u32,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let mut token: Option<PageToken> = None;
    for _ in 0..10_000 {
        let q = Query {
            filters: filters.to_vec(),
            reversed,
            limit,
            page_token: token.take(),
        };
        let page = b.query(s, &q).await.expect("query");
        assert!(
            page.rows.len() <= limit as usize,
            "a page holds at most `limit` rows"
        );
        for r in &page.rows {
            match (r.get("p"), r.get("c")) {
                (Some(Value::Text(p)), Some(Value::Number(c))) => out.push((p.clone(), *c)),
                other => panic!("row without its key: {other:?}"),
            }
        }
        match page.next {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

fn f(column: &str, op: FilterOp) -> Filter {
    Filter {
        column: column.into(),
        op,
    }
}

#[test]
fn cql_pages_chunks_and_partitions_exactly_once_in_order() {
    runtime().block_on(async {
        let mut config = CqlConfig::new(cql_nodes(), keyspace("direct"));
        config.in_chunk_values_max = 2;
        config.query_concurrency_max = 3;
        let b = CqlBackend::new(config).expect("config");
        let s = table(Order::Asc);
        b.ensure_schema(&s).await.expect("schema");
        b.ensure_schema(&s).await.expect("schema again is a no-op");
        let counts = [("p0", 0), ("p1", 3), ("p2", 1), ("p3", 7), ("p4", 2)];
        let mut rows = Vec::new();
        for (p, n) in counts {
            rows.extend((0..n).map(|c| row(p, c)));
        }
        b.upsert_all(&s, rows).await.expect("upsert_all");

        // IN on the partition key (unsorted, with a duplicate): partitions in value order, rows in clustering order.
        let parts = ["p4", "p0", "p1", "p3", "p2", "p1"].map(text).to_vec();
        let expected: Vec<(String, i64)> = counts
            .iter()
            .flat_map(|(p, n)| (0..*n).map(move |c| (p.to_string(), c)))
            .collect();
        for limit in 1..=8 {
            let filters = [f("p", FilterOp::In(parts.clone()))];
            assert_eq!(
                pages(&b, &s, &filters, false, limit).await,
                expected,
                "limit {limit}"
            );
            let mut backward = pages(&b, &s, &filters, true, limit).await;
            backward.reverse();
            assert_eq!(backward, expected, "reversed, limit {limit}");
        }

        // IN on the clustering column, cut into chunks of 2 values: still in clustering order, absent values skipped.
        let cs = [6, 0, 3, 5, 1, 9, 3].map(Value::Number).to_vec();
        for limit in 1..=6 {
            let filters = [
                f("p", FilterOp::Eq(text("p3"))),
                f("c", FilterOp::In(cs.clone())),
            ];
            let got: Vec<i64> = pages(&b, &s, &filters, false, limit)
                .await
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            assert_eq!(got, vec![0, 1, 3, 5, 6], "limit {limit}");
            let got: Vec<i64> = pages(&b, &s, &filters, true, limit)
                .await
                .into_iter()
                .map(|(_, c)| c)
                .collect();
            assert_eq!(got, vec![6, 5, 3, 1, 0], "reversed, limit {limit}");
        }

        // Both: partitions x chunks.
        let filters = [
            f("p", FilterOp::In(vec![text("p3"), text("p1")])),
            f("c", FilterOp::In([0, 2, 4].map(Value::Number).to_vec())),
        ];
        let want: Vec<(String, i64)> = [("p1", 0), ("p1", 2), ("p3", 0), ("p3", 2), ("p3", 4)]
            .iter()
            .map(|(p, c)| (p.to_string(), *c))
            .collect();
        assert_eq!(pages(&b, &s, &filters, false, 2).await, want);

        // Ranges.
        let filters = [
            f("p", FilterOp::Eq(text("p3"))),
            f("c", FilterOp::Ge(Value::Number(2))),
            f("c", FilterOp::Lt(Value::Number(5))),
        ];
        let got: Vec<i64> = pages(&b, &s, &filters, false, 2)
            .await
            .into_iter()
            .map(|(_, c)| c)
            .collect();
        assert_eq!(got, vec![2, 3, 4]);

        // Index IN: every matching row once (order between partitions is the backend's).
        for limit in [1, 4, 100] {
            let filters = [f(
                "v",
                FilterOp::In(vec![text("v1"), text("v0"), text("v1")]),
            )];
            let mut got = pages(&b, &s, &filters, false, limit).await;
            got.sort();
            let mut all = expected.clone();
            all.sort();
            assert_eq!(got, all, "index IN, limit {limit}");
        }

        // A full scan.
        let mut got = pages(&b, &s, &[], false, 4).await;
        got.sort();
        assert_eq!(got.len(), 13);

        // Tokens belong to their query.
        let q = Query {
            filters: vec![f("p", FilterOp::In(parts.clone()))],
            reversed: false,
            limit: 2,
            page_token: None,
        };
        let token = b
            .query(&s, &q)
            .await
            .expect("query")
            .next
            .expect("more pages");
        let other = Query {
            filters: vec![f("p", FilterOp::Eq(text("p3")))],
            page_token: Some(token.clone()),
            ..q.clone()
        };
        assert!(matches!(
            b.query(&s, &other).await,
            Err(BackendError::InvalidPageToken(_))
        ));
        let garbage = Query {
            page_token: Some(PageToken(vec![9, 9, 9])),
            ..q.clone()
        };
        assert!(matches!(
            b.query(&s, &garbage).await,
            Err(BackendError::InvalidPageToken(_))
        ));

        // Single rows.
        assert_eq!(
            b.get(&s, &key("p3", 4)).await.expect("get"),
            Some(row("p3", 4))
        );
        let raw = b
            .raw_row(&s, &key("p3", 4))
            .await
            .expect("raw")
            .expect("stored");
        assert!(
            raw.windows(2).any(|w| w == b"p3"),
            "the raw row holds the stored cells"
        );
        b.delete(&s, &key("p3", 4)).await.expect("delete");
        assert_eq!(b.get(&s, &key("p3", 4)).await.expect("get"), None);
        let mut partial = key("p3", 5);
        partial.insert("v".into(), Value::Null);
        b.upsert(&s, partial).await.expect("clear a column");
        assert_eq!(
            b.get(&s, &key("p3", 5)).await.expect("get"),
            Some(key("p3", 5))
        );

        // The same table declared with another clustering order is refused, naming the primary key.
        match b.ensure_schema(&table(Order::Desc)).await {
            Err(BackendError::Schema(m)) => assert!(
                m.contains("primary key") && m.contains("c bigint asc"),
                "{m}"
            ),
            other => panic!("expected an incompatible-schema error, got {other:?}"),
        }
    });
}

#[test]
fn cql_unreachable_cluster_is_unavailable_at_once() {
    runtime().block_on(async {
        let port = free_port(); // nothing listens there
        let b = CqlBackend::new(CqlConfig::new(vec![format!("127.0.0.1:{port}")], "nowhere"))
            .expect("config");
        let s = table(Order::Asc);
        for _ in 0..3 {
            let r = b.ensure_schema(&s).await;
            assert!(matches!(r, Err(BackendError::Unavailable(_))), "{r:?}");
            let r = b.get(&s, &key("p", 1)).await;
            assert!(matches!(r, Err(BackendError::Unavailable(_))), "{r:?}");
        }
        let bad = CqlConfig {
            replication: "{'class': 'SimpleStrategy'} AND durable_writes = false".into(),
            ..CqlConfig::new(vec!["127.0.0.1:9042".into()], "ks")
        };
        assert!(
            CqlBackend::new(bad).is_err(),
            "a replication map that is not a plain map is refused"
        );
        let bad = CqlConfig::new(vec!["127.0.0.1:9042".into()], "no-dashes");
        assert!(
            CqlBackend::new(bad).is_err(),
            "an invalid keyspace name is refused"
        );
    });
}
