//! Fault test of the Cassandra backend: the database stopped while shardcast runs gives "unavailable" errors (never a
//! panic or a hang), and once it is started again requests succeed without restarting the IO shard.
//!
//! The test runs a Cassandra instance of its own (so the other CQL tests keep theirs), with
//! `tests/services/cassandra.sh` in a separate working directory under the test's temporary directory: started,
//! stopped with SIGTERM, and started again on the same ports with its data kept. It needs the jars that the service
//! script downloads, so it runs after `tests/services/cassandra.sh start` (tests/run.sh), and fails with a message
//! saying so when `SHARDCAST_TEST_CQL_NODES` is not set.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
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
