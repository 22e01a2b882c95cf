//! Group commit of the embedded store inside the IO shard (issue 11 item 1): concurrent writes share durable commits,
//! a failing write in a group fails alone, and a SIGKILL under concurrent writers loses no acknowledged write.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::future::block_on;
use serde::{Deserialize, Serialize};
use shardcast::orm::backend::embedded::EmbeddedBackend;
use shardcast::orm::backend::{Backend, ColumnDef, ColumnType, Row, TableSchema, Value};
use shardcast::orm::{Entity, Find, IoShard, Orm, OrmConfig, Repository, SchemaBuilder};

const KEY: &str = "0303030303030303030303030303030303030303030303030303030303030303";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note {
    p: String,
    n: i64,
    label: Option<String>,
}

impl Entity for Note {
    fn schema() -> SchemaBuilder {
        shardcast::entity_schema! {
            table: "notes",
            columns: { p: Text, n: Number, label: Text },
            partition_key: [p],
            clustering: [n Asc],
        }
    }
}

fn config(path: std::path::PathBuf) -> OrmConfig {
    OrmConfig {
        encryption_key: Some(KEY.into()),
        request_timeout_ms: 30_000,
        embedded_path: path,
        ..OrmConfig::default()
    }
}

fn test_dir(name: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("group-commit-tests")
        .join(format!(
            "{name}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
    std::fs::create_dir_all(&dir).expect("test dir");
    dir
}

/// An IO shard over `backend` (a clone: it shares the database and the commit counters with the test's copy).
fn start(backend: EmbeddedBackend, config: &OrmConfig) -> (IoShard, Orm) {
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let factory: shardcast::orm::BackendFactory =
        Box::new(move || Box::pin(async move { Ok(backend) }));
    let shard = IoShard::start(factory, config.io_limits()).expect("IO shard starts");
    let orm = Orm::new(shard.handle(), config).expect("orm");
    (shard, orm)
}

async fn all_notes(repo: &Repository<Note>, p: &str) -> Vec<Note> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = repo
            .find(Find::new().eq("p", p).limit(500).page_token(token))
            .await
            .expect("find");
        out.extend(page.entities);
        match page.next_page_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

/// 256 writes issued at once through the IO shard are all acknowledged, all readable, and share far fewer fsync'd
/// commits than there are writes.
#[test]
fn concurrent_writes_share_durable_commits() {
    let dir = test_dir("share");
    let cfg = config(dir.join("db.redb"));
    let backend = EmbeddedBackend::open(&cfg.embedded_path).expect("open");
    let (shard, orm) = start(backend.clone(), &cfg);
    let repo = block_on(Repository::<Note>::open(&orm)).expect("repository");
    let (commits_before, writes_before) = backend.commit_stats();
    let saves: Vec<_> = (0..256)
        .map(|n| {
            let repo = repo.clone();
            async move {
                repo.save(Note {
                    p: "g".into(),
                    n,
                    label: Some(format!("note {n}")),
                })
                .await
            }
        })
        .collect();
    for r in block_on(join_all(saves)) {
        r.expect("save acknowledged");
    }
    let (commits, writes) = backend.commit_stats();
    let (commits, writes) = (commits - commits_before, writes - writes_before);
    assert_eq!(writes, 256, "every save is one queued write");
    assert!(
        commits * 4 <= writes,
        "256 concurrent writes took {commits} commits (group commit shares them)"
    );
    let stored = block_on(all_notes(&repo, "g"));
    assert_eq!(stored.len(), 256);
    shard.stop();
    drop(backend);
    // Reopened from the file: every write was durable.
    let (shard, orm) = shardcast::orm::start(&cfg).expect("reopens");
    let repo = block_on(Repository::<Note>::open(&orm)).expect("repository");
    let ns: BTreeSet<i64> = block_on(all_notes(&repo, "g"))
        .iter()
        .map(|n| n.n)
        .collect();
    assert_eq!(ns, (0..256).collect());
    shard.stop();
}

fn raw_schema() -> TableSchema {
    TableSchema {
        name: "raw".into(),
        columns: vec![
            ColumnDef {
                name: "k".into(),
                column_type: ColumnType::Text,
            },
            ColumnDef {
                name: "v".into(),
                column_type: ColumnType::Text,
            },
        ],
        partition_key: vec!["k".into()],
        clustering: vec![],
        indexes: vec![],
        local_indexes: vec![],
        search: vec![],
    }
}

fn raw_row(k: &str, v: &str) -> Row {
    let mut r = Row::new();
    r.insert("k".into(), Value::Text(k.into()));
    r.insert("v".into(), Value::Text(v.into()));
    r
}

/// A write that fails half-way (its second row has no key) in the same group as good writes: it alone gets an error,
/// none of its rows is stored, and the writes queued before and after it are committed.
#[test]
fn a_failing_write_fails_alone_and_leaves_nothing() {
    let dir = test_dir("failing");
    let cfg = config(dir.join("db.redb"));
    let backend = EmbeddedBackend::open(&cfg.embedded_path).expect("open");
    let schema = raw_schema();
    block_on(backend.ensure_schema(&schema)).expect("schema");
    let (shard, _orm) = start(backend.clone(), &cfg);
    let io = shard.handle();
    let write = |rows: Vec<Row>| {
        let schema = schema.clone();
        io.call(move |b| Box::pin(async move { b.upsert_all(&schema, rows).await }))
    };
    let mut bad_second = Row::new();
    bad_second.insert("v".into(), Value::Text("no key".into()));
    let results = block_on(join_all(vec![
        Box::pin(write(vec![raw_row("a", "1")])) as std::pin::Pin<Box<dyn Future<Output = _>>>,
        Box::pin(write(vec![raw_row("b", "2"), bad_second])),
        Box::pin(write(vec![raw_row("c", "3")])),
        Box::pin(write(vec![raw_row("d", "4"), raw_row("e", "5")])),
    ]));
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(results[1].is_err(), "the write without a key fails");
    assert!(results[2].is_ok(), "{:?}", results[2]);
    assert!(results[3].is_ok(), "{:?}", results[3]);
    shard.stop();
    drop(backend);
    let reopened = EmbeddedBackend::open(&cfg.embedded_path).expect("reopen");
    let get = |k: &str| {
        let mut key = Row::new();
        key.insert("k".into(), Value::Text(k.into()));
        block_on(reopened.get(&schema, &key)).expect("get")
    };
    assert_eq!(get("a"), Some(raw_row("a", "1")));
    assert_eq!(get("b"), None, "the failed write left none of its rows");
    assert_eq!(get("c"), Some(raw_row("c", "3")));
    assert_eq!(get("d"), Some(raw_row("d", "4")));
    assert_eq!(get("e"), Some(raw_row("e", "5")));
}

/// Polls every future to completion on the current thread (all of them in flight at once).
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, o) in futures.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(out.iter_mut().filter_map(Option::take).collect())
        }
    })
    .await
}

use std::future::Future;

const CHILD_ENV: &str = "SHARDCAST_TEST_GROUP_COMMIT_CHILD_DB";
const WRITERS: i64 = 16;

/// The child: 16 threads write through one IO shard as fast as they can, each printing `ack <n>` after its write
/// returns.
fn crash_child(path: String) {
    use std::io::Write;
    let cfg = config(path.into());
    let (_shard, orm) = shardcast::orm::start(&cfg).expect("child starts");
    let repo = block_on(Repository::<Note>::open(&orm)).expect("open");
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let repo = repo.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let n = t * 1_000_000_000 + i;
                    block_on(repo.save(Note {
                        p: "crash".into(),
                        n,
                        label: Some(format!("row {n}")),
                    }))
                    .expect("save");
                    let mut o = out.lock().expect("stdout");
                    writeln!(o, "ack {n}").expect("stdout");
                    o.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// SIGKILL during 16 concurrent writers (default settings: group commit, every acknowledged write durable): after the
/// kill, every write the child acknowledged is in the reopened store, with its content.
#[test]
fn sigkill_under_concurrent_writers_loses_no_acknowledged_write() {
    use std::io::BufRead;
    if let Ok(path) = std::env::var(CHILD_ENV) {
        return crash_child(path);
    }
    let path = test_dir("crash").join("db.redb");
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "sigkill_under_concurrent_writers_loses_no_acknowledged_write",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("child starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut acked: Vec<i64> = Vec::new();
    let mut first: Option<Instant> = None;
    while acked.len() < 400 || first.is_some_and(|f| f.elapsed() < Duration::from_secs(1)) {
        let line = lines.next().expect("child alive").expect("line");
        if let Some(n) = line.strip_prefix("ack ") {
            first.get_or_insert_with(Instant::now);
            acked.push(n.parse().expect("number"));
        }
    }
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    let _ = child.wait();
    let writers: BTreeSet<i64> = acked.iter().map(|n| n / 1_000_000_000).collect();
    assert!(writers.len() > 1, "several writers were acknowledged");
    let cfg = config(path);
    let (shard, orm) = shardcast::orm::start(&cfg).expect("reopens after the crash");
    let repo = block_on(Repository::<Note>::open(&orm)).expect("open");
    let stored: BTreeMap<i64, Note> = block_on(all_notes(&repo, "crash"))
        .into_iter()
        .map(|n| (n.n, n))
        .collect();
    for n in &acked {
        let note = stored
            .get(n)
            .unwrap_or_else(|| panic!("acknowledged write {n} lost ({} acked)", acked.len()));
        assert_eq!(note.label.as_deref(), Some(format!("row {n}").as_str()));
    }
    shard.stop();
}

/// `Orm::run`: a read, a decision and a write in one IO-shard request. The write is durable when the request
/// answers; a request that decides not to write writes nothing; a refused write inside it is the caller's error.
#[test]
fn one_request_reads_checks_and_writes() {
    let dir = test_dir("scope");
    let cfg = config(dir.join("db.redb"));
    let backend = EmbeddedBackend::open(&cfg.embedded_path).expect("open");
    let (shard, orm) = start(backend.clone(), &cfg);
    let repo = block_on(Repository::<Note>::open(&orm)).expect("repository");
    let note = |n: i64, label: &str| Note {
        p: "s".into(),
        n,
        label: Some(label.into()),
    };
    block_on(repo.save(note(0, "gate open"))).expect("save");
    // Writes the next note only if note 0 says the gate is open.
    let guarded = |n: i64| {
        let repo = repo.clone();
        orm.run(move |scope| {
            Box::pin(async move {
                let gate = repo
                    .find_one_in(&scope, Find::new().eq("p", "s").eq("n", 0))
                    .await?;
                if gate.and_then(|g| g.label).as_deref() != Some("gate open") {
                    return Ok(None);
                }
                Ok(Some(repo.save_in(&scope, note(n, "written")).await?))
            })
        })
    };
    let (commits_before, _) = backend.commit_stats();
    assert_eq!(block_on(guarded(1)).expect("run"), Some(note(1, "written")));
    let (commits, _) = backend.commit_stats();
    assert_eq!(
        commits - commits_before,
        1,
        "the write was committed before the answer"
    );
    block_on(repo.save(note(0, "gate closed"))).expect("save");
    assert_eq!(block_on(guarded(2)).expect("run"), None);
    let stored: Vec<i64> = block_on(all_notes(&repo, "s"))
        .iter()
        .map(|n| n.n)
        .collect();
    assert_eq!(stored, [0, 1], "the refused request wrote nothing");
    // An invalid query inside the request is the request's error.
    let bad = orm.run({
        let repo = repo.clone();
        move |scope| {
            Box::pin(async move {
                repo.get_in(&scope, shardcast::orm::Key::new().with("p", "s"))
                    .await
            })
        }
    });
    assert!(
        matches!(
            block_on(bad),
            Err(shardcast::orm::OrmError::InvalidFilter { .. })
        ),
        "an incomplete key is refused inside the request too"
    );
    shard.stop();
    drop(backend);
    let reopened = EmbeddedBackend::open(&cfg.embedded_path).expect("reopen");
    let (shard, orm) = start(reopened, &cfg);
    let repo = block_on(Repository::<Note>::open(&orm)).expect("repository");
    assert_eq!(
        block_on(all_notes(&repo, "s")).len(),
        2,
        "durable after reopening"
    );
    shard.stop();
}
