//! Issue 15, the first outage, with the real databases: a database down at start-up (serve starts, `/readyz` 503,
//! REST 503 with the generic body, retried with backoff until it answers), a database that goes down mid-run (one
//! log line down, one back, `/readyz` following), with our own SecantusDB stopped and started by PID; and the exact
//! last page (`next_page_token` is null when the page holds the last row) on all three backends.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mongo::OwnMongo;
use common::{
    acme_token, free_port, read_listening_addr, request, request_with, scratch_dir,
    shardcast_command,
};
use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shardcast::orm::{
    BackendKind, Entity, EntitySchema, FieldType, Find, Order, OrmConfig, Repository, SchemaBuilder,
};

const SECRET: &str = "first-hour-db-test-secret-0123456789abcdef";
const GENERIC_503: &str = r#"{"code":"unavailable","message":"database unavailable; retry"}"#;

/// `shardcast serve` over `backend_args`, its stderr in a file we read for the health lines.
struct Serve {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serve {
    fn start(d: &Path, backend_args: &[&str], env: &[(&str, &str)]) -> Serve {
        let log = d.join(format!("serve-{}.log", free_port()));
        let mut child = shardcast_command(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--no-pin",
        ])
        .args(backend_args)
        .env("SHARDCAST_JWT_SECRET", SECRET)
        .env("SHARDCAST_ORM_REQUEST_TIMEOUT_MS", "1500")
        .env("SHARDCAST_ORM_UNAVAILABLE_RETRY_MS", "200")
        .env("SHARDCAST_DB_RETRY_INITIAL_MS", "100")
        .env("SHARDCAST_DB_RETRY_MAX_MS", "500")
        .env("SHARDCAST_DB_PROBE_INTERVAL_MS", "200")
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
        let addr = read_listening_addr(&mut child, Some(&log));
        Serve { child, addr, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    fn readyz(&self) -> (u16, Value) {
        let r = request(self.addr, "GET", "/readyz", b"");
        (
            r.status,
            serde_json::from_slice(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Waits (a safety net, not a timing assertion) until `/readyz` answers `status`.
    fn wait_readyz(&self, status: u16) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (s, v) = self.readyz();
            if s == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {s} {v}, not {status}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn channels(&self, token: &str) -> (u16, String) {
        let auth = format!("Bearer {token}");
        let r = request_with(
            self.addr,
            "GET",
            "/api/v1/companies/acme/workspaces/main/channels",
            &[("Authorization", &auth)],
            b"",
        );
        (r.status, r.text())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mongo_down_at_start_then_up_then_down_mid_run_then_back() {
    let d = scratch_dir("health-mongo");
    let mut mongo = OwnMongo::new("health-mongo-db");
    let uri = mongo.uri();
    let db = format!("health_{}", std::process::id());
    // The database is down: serve starts anyway.
    let serve = Serve::start(
        &d,
        &["--mongo-uri", &uri],
        &[("SHARDCAST_MONGO_DATABASE", &db)],
    );
    let token = acme_token(SECRET, "alice");
    let v = serve.wait_readyz(503);
    assert_eq!(v["status"], "unavailable");
    let (status, body) = serve.channels(&token);
    assert_eq!(
        (status, body.as_str()),
        (503, GENERIC_503),
        "the generic 503 body, no driver detail"
    );
    assert_eq!(serve.count("database unreachable"), 1, "{}", serve.log());
    assert!(serve.log().contains("retrying with backoff"));
    assert!(
        serve.log().contains(&format!(
            "backend=mongo mongodb://127.0.0.1:{}/ database {db}",
            mongo.port
        )),
        "{}",
        serve.log()
    );

    // It comes up: serve connects by itself.
    mongo.start();
    let v = serve.wait_readyz(200);
    assert_eq!(v["database"], "up");
    assert_eq!(serve.channels(&token).0, 200);
    assert_eq!(
        serve.count("database reachable again"),
        1,
        "{}",
        serve.log()
    );

    // Down mid-run: /readyz follows, REST answers the generic body, one log line.
    mongo.stop();
    let v = serve.wait_readyz(503);
    assert_eq!(v["database"], "down");
    let (status, body) = serve.channels(&token);
    assert_eq!((status, body.as_str()), (503, GENERIC_503));
    std::thread::sleep(Duration::from_millis(1500)); // several probes while down: still one line
    assert_eq!(
        serve.count("database unreachable"),
        2,
        "one line per outage:\n{}",
        serve.log()
    );

    // Back: one line, ready again.
    mongo.start();
    serve.wait_readyz(200);
    assert_eq!(serve.channels(&token).0, 200);
    assert_eq!(
        serve.count("database reachable again"),
        2,
        "{}",
        serve.log()
    );
    assert_eq!(serve.count("database unreachable"), 2);
}

/// A Cassandra of our own, run by the service script in its own directory and ports; stopped (by its recorded PID,
/// which the script signals) on drop.
struct OwnCassandra {
    dir: PathBuf,
    native_port: u16,
    storage_port: u16,
}

impl OwnCassandra {
    fn run(&self, action: &str) {
        let out = Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/cassandra.sh"))
            .arg(action)
            .env("CASSANDRA_DIR", &self.dir)
            .env("SERVICES_DIR", self.dir.join("services"))
            .env("CASSANDRA_NATIVE_PORT", self.native_port.to_string())
            .env("CASSANDRA_STORAGE_PORT", self.storage_port.to_string())
            .env("CASSANDRA_HEAP", "512m")
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
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/services/cassandra.sh"))
            .arg("stop")
            .env("CASSANDRA_DIR", &self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn cassandra_down_at_start_then_up_then_down_mid_run() {
    assert!(
        std::env::var("SHARDCAST_TEST_CQL_NODES").is_ok(),
        "SHARDCAST_TEST_CQL_NODES is not set: run `bash tests/services/cassandra.sh start` first (tests/run.sh does \
         it); this test reuses the jars it downloads"
    );
    let d = scratch_dir("health-cql");
    let (native_port, mut storage_port) = (free_port(), free_port());
    while storage_port == native_port {
        storage_port = free_port();
    }
    let cassandra = OwnCassandra {
        dir: d.join("cassandra"),
        native_port,
        storage_port,
    };
    let nodes = format!("127.0.0.1:{native_port}");
    let started = Instant::now();
    let serve = Serve::start(
        &d,
        &["--cql-nodes", &nodes, "--cql-keyspace", "health_cql"],
        &[],
    );
    let token = acme_token(SECRET, "alice");
    serve.wait_readyz(503);
    let (status, body) = serve.channels(&token);
    assert_eq!((status, body.as_str()), (503, GENERIC_503));
    assert_eq!(serve.count("database unreachable"), 1, "{}", serve.log());

    cassandra.run("start");
    let v = serve.wait_readyz(200);
    assert_eq!(v["database"], "up");
    assert_eq!(serve.channels(&token).0, 200);
    assert_eq!(
        serve.count("database reachable again"),
        1,
        "{}",
        serve.log()
    );

    cassandra.run("stop");
    let v = serve.wait_readyz(503);
    assert_eq!(v["database"], "down");
    let (status, body) = serve.channels(&token);
    assert_eq!((status, body.as_str()), (503, GENERIC_503));
    assert_eq!(
        serve.count("database unreachable"),
        2,
        "one line per outage:\n{}",
        serve.log()
    );
    // The driver logs a few lines per connection attempt (several a second while retrying); at most 5 per clock
    // minute get through.
    let windows = started.elapsed().as_secs() / 60 + 2;
    assert!(
        serve.count(" scylla::") as u64 <= 5 * windows,
        "driver logs are rate-limited ({windows} minute windows):\n{}",
        serve.log()
    );
}

#[test]
fn exit_instead_of_waiting_when_asked_and_cassandra_down_at_start_answers_503() {
    let d = scratch_dir("health-exit");
    let dead = format!("127.0.0.1:{}", free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-pin",
            "--cql-nodes",
            &dead,
            "--db-exit-on-unavailable",
        ])
        .env("SHARDCAST_JWT_SECRET", SECRET)
        .env("SHARDCAST_ORM_REQUEST_TIMEOUT_MS", "1500")
        .output()
        .expect("serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "cannot start the database (cql {dead} keyspace shardcast)"
        )),
        "{err}"
    );

    let serve = Serve::start(
        &d,
        &["--cql-nodes", &dead, "--cql-keyspace", "health_ks"],
        &[],
    );
    let v = serve.wait_readyz(503);
    assert_eq!(v["database"], "down");
    let (status, body) = serve.channels(&acme_token(SECRET, "alice"));
    assert_eq!((status, body.as_str()), (503, GENERIC_503));
    assert!(
        serve
            .log()
            .contains(&format!("backend=cql {dead} keyspace health_ks")),
        "{}",
        serve.log()
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row1 {
    p: String,
    n: i64,
}

impl Entity for Row1 {
    fn schema() -> SchemaBuilder {
        EntitySchema::builder("exact_pages")
            .column("p", FieldType::Text)
            .column("n", FieldType::Number)
            .partition_key(&["p"])
            .clustering("n", Order::Asc)
    }
}

fn exact_pages(config: OrmConfig) {
    let what = format!("{:?}", config.backend);
    let (shard, orm) = shardcast::orm::start(&config).expect("ORM starts");
    let repo = block_on(Repository::<Row1>::open(&orm)).expect("open");
    let p = format!("p{}", std::process::id());
    block_on(repo.save(Row1 { p: p.clone(), n: 1 })).expect("save");
    let page = block_on(repo.find(Find::new().eq("p", p.as_str()).limit(1))).expect("find");
    assert_eq!(page.entities.len(), 1, "{what}");
    assert!(
        page.next_page_token.is_none(),
        "{what}: one row, limit 1: no token to an empty page"
    );
    block_on(repo.save(Row1 { p: p.clone(), n: 2 })).expect("save");
    let page = block_on(repo.find(Find::new().eq("p", p.as_str()).limit(2))).expect("find");
    assert_eq!(page.entities.len(), 2, "{what}");
    assert!(page.next_page_token.is_none(), "{what}: two rows, limit 2");
    let first = block_on(repo.find(Find::new().eq("p", p.as_str()).limit(1))).expect("find");
    let token = first.next_page_token.clone().expect("a second page exists");
    let second = block_on(
        repo.find(
            Find::new()
                .eq("p", p.as_str())
                .limit(1)
                .page_token(Some(token)),
        ),
    )
    .expect("find");
    assert_eq!(second.entities, vec![Row1 { p: p.clone(), n: 2 }], "{what}");
    assert!(second.next_page_token.is_none(), "{what}: the last page");
    drop(repo);
    shard.stop();
}

#[test]
fn an_exact_last_page_has_no_next_page_token_on_every_backend() {
    let d = scratch_dir("exact-pages");
    exact_pages(OrmConfig {
        embedded_path: d.join("e.redb"),
        ..OrmConfig::default()
    });
    exact_pages(OrmConfig {
        backend: BackendKind::Mongo,
        mongo_uri: std::env::var("SHARDCAST_TEST_MONGO_URI")
            .expect("SHARDCAST_TEST_MONGO_URI (tests/services/mongo.sh)"),
        mongo_database: format!("exact_{}", std::process::id()),
        request_timeout_ms: 60_000,
        ..OrmConfig::default()
    });
    exact_pages(OrmConfig {
        backend: BackendKind::Cql,
        cql_nodes: std::env::var("SHARDCAST_TEST_CQL_NODES")
            .expect("SHARDCAST_TEST_CQL_NODES (tests/services/cassandra.sh)")
            .split(',')
            .map(str::to_owned)
            .collect(),
        cql_keyspace: format!("exact_{}", std::process::id()),
        request_timeout_ms: 60_000,
        ..OrmConfig::default()
    });
}
