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

// ---------------------------------------------------------------------------------------------------------------
// The write-ahead log (issue 11): crash images, torn tails, stale laps, kills during checkpoints.

use shardcast::orm::backend::embedded::wal::{HEADER_BYTES, WAL_BYTES_MIN};

/// Copies the store's two files as a crash (SIGKILL) at this instant would leave them: no write is in flight, and a
/// killed process leaves the page cache, which is what a copy reads.
fn crash_image(from: &EmbeddedBackend, dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("image dir");
    let db = dir.join("db.redb");
    std::fs::copy(from.path(), &db).expect("copy the database");
    std::fs::copy(from.wal_path(), dir.join("db.redb.wal")).expect("copy the log");
    db
}

/// The offsets of the records at the start of a log file (header: magic, payload length, ...; see `wal.rs`).
fn record_offsets(log: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_BYTES <= log.len() && log[at..at + 4] == *b"SCWL" {
        out.push(at);
        let len = u32::from_le_bytes(log[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        at += HEADER_BYTES + len;
    }
    out
}

fn get_raw(b: &EmbeddedBackend, k: &str) -> Option<Row> {
    let mut key = Row::new();
    key.insert("k".into(), Value::Text(k.into()));
    block_on(b.get(&raw_schema(), &key)).expect("get")
}

fn put_raw(b: &EmbeddedBackend, k: &str, v: &str) {
    block_on(b.upsert(&raw_schema(), raw_row(k, v))).expect("upsert");
}

/// A crash image after writes that were only logged (redb holds them non-durably): reopening replays them, and the
/// reopened store keeps working and reopens again.
#[test]
fn a_crash_image_replays_every_logged_write() {
    let dir = test_dir("image");
    let b = EmbeddedBackend::open(dir.join("db.redb")).expect("open");
    block_on(b.ensure_schema(&raw_schema())).expect("schema");
    put_raw(&b, "a", "1");
    put_raw(&b, "b", "1");
    put_raw(&b, "c", "1");
    put_raw(&b, "a", "2");
    let mut key = Row::new();
    key.insert("k".into(), Value::Text("b".into()));
    block_on(b.delete(&raw_schema(), &key)).expect("delete");
    assert_eq!(b.log_stats().logged, 5, "each write was one log append");
    let path = crash_image(&b, &dir.join("crash"));
    drop(b);
    let r = EmbeddedBackend::open(&path).expect("reopens");
    assert_eq!(r.log_stats().replayed, 5);
    assert_eq!(get_raw(&r, "a"), Some(raw_row("a", "2")));
    assert_eq!(
        get_raw(&r, "b"),
        None,
        "the delete was replayed after the put"
    );
    assert_eq!(get_raw(&r, "c"), Some(raw_row("c", "1")));
    put_raw(&r, "d", "1");
    drop(r);
    let r = EmbeddedBackend::open(&path).expect("reopens again");
    assert_eq!(
        r.log_stats().replayed,
        0,
        "a clean close checkpoints: nothing left to replay"
    );
    assert_eq!(get_raw(&r, "d"), Some(raw_row("d", "1")));
    assert_eq!(get_raw(&r, "a"), Some(raw_row("a", "2")));
}

/// A torn last record (a flipped byte, a file cut inside it) stops the replay before it; garbage after the last
/// record is ignored; the store opens, serves and reopens in every case.
#[test]
fn a_torn_or_garbage_log_tail_stops_replay_there() {
    let dir = test_dir("torn");
    let b = EmbeddedBackend::open(dir.join("db.redb")).expect("open");
    block_on(b.ensure_schema(&raw_schema())).expect("schema");
    put_raw(&b, "a", "1");
    put_raw(&b, "b", "1");
    put_raw(&b, "c", "1");
    let image = |name: &str| crash_image(&b, &dir.join(name));
    let (flipped, cut, garbage) = (image("flipped"), image("cut"), image("garbage"));
    let log = std::fs::read(b.wal_path()).expect("log");
    let offsets = record_offsets(&log);
    assert_eq!(offsets.len(), 3, "three logged writes");
    let third = offsets[2];
    let end = third
        + HEADER_BYTES
        + u32::from_le_bytes(log[third + 4..third + 8].try_into().expect("len")) as usize;

    let wal_of = |db: &std::path::Path| {
        let mut p = db.as_os_str().to_os_string();
        p.push(".wal");
        std::path::PathBuf::from(p)
    };
    let mut bytes = log.clone();
    bytes[end - 3] ^= 0x01;
    std::fs::write(wal_of(&flipped), &bytes).expect("flip");
    std::fs::write(wal_of(&cut), &log[..end - 1]).expect("cut");
    let mut bytes = log.clone();
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    if bytes.len() < end + noise.len() {
        bytes.resize(end + noise.len(), 0);
    }
    bytes[end..end + noise.len()].copy_from_slice(&noise);
    std::fs::write(wal_of(&garbage), &bytes).expect("garbage");

    for (path, replayed, c) in [
        (&flipped, 2, None),
        (&cut, 2, None),
        (&garbage, 3, Some(raw_row("c", "1"))),
    ] {
        let r = EmbeddedBackend::open(path).expect("opens");
        assert_eq!(r.log_stats().replayed, replayed, "{}", path.display());
        assert_eq!(get_raw(&r, "a"), Some(raw_row("a", "1")));
        assert_eq!(get_raw(&r, "b"), Some(raw_row("b", "1")));
        assert_eq!(get_raw(&r, "c"), c, "{}", path.display());
        put_raw(&r, "z", "1");
        drop(r);
        let r = EmbeddedBackend::open(path).expect("reopens");
        assert_eq!(get_raw(&r, "z"), Some(raw_row("z", "1")));
    }
}

/// After a checkpoint the log restarts at offset 0 with a new epoch. A new first record of exactly one block (4 KiB,
/// so nothing after it is zeroed) lines the old lap's second record up where the next record would be, with the right
/// sequence number. Only its epoch tells it apart: replaying it would bring back an old value of `b`.
#[test]
fn a_stale_block_of_an_earlier_lap_is_not_replayed() {
    let dir = test_dir("stale");
    // The value length that makes the record of one upsert exactly one block, measured on a scratch store.
    let block = 4096usize;
    let probe = {
        let s = EmbeddedBackend::open(dir.join("probe").join("db.redb")).expect("open");
        block_on(s.ensure_schema(&raw_schema())).expect("schema");
        put_raw(&s, "a", &"x".repeat(100));
        let log = std::fs::read(s.wal_path()).expect("log");
        HEADER_BYTES + u32::from_le_bytes(log[4..8].try_into().expect("len")) as usize
    };
    let long = block - probe + 100;
    let b = EmbeddedBackend::open(dir.join("db.redb")).expect("open");
    block_on(b.ensure_schema(&raw_schema())).expect("schema");
    put_raw(&b, "a", &"x".repeat(long));
    put_raw(&b, "b", "1");
    b.checkpoint().expect("checkpoint");
    put_raw(&b, "b", &"y".repeat(long));
    let path = crash_image(&b, &dir.join("crash"));
    let log = std::fs::read(b.wal_path()).expect("log");
    let offsets = record_offsets(&log);
    assert_eq!(
        offsets[..2],
        [0, block],
        "one block, then the old lap's second record"
    );
    let field =
        |o: usize, at: usize| u64::from_le_bytes(log[o + at..o + at + 8].try_into().expect("u64"));
    assert_eq!(field(block, 16), 1, "in sequence");
    assert_eq!(field(0, 8), field(block, 8) + 1, "one lap apart");
    drop(b);
    let r = EmbeddedBackend::open(&path).expect("reopens");
    assert_eq!(r.log_stats().replayed, 1);
    assert_eq!(
        get_raw(&r, "b"),
        Some(raw_row("b", &"y".repeat(long))),
        "the stale put of b=1 was not replayed"
    );
    assert_eq!(get_raw(&r, "a"), Some(raw_row("a", &"x".repeat(long))));
}

const WAL_CHILD_ENV: &str = "SHARDCAST_TEST_WAL_CHILD_DB";
const WAL_ROUND_ENV: &str = "SHARDCAST_TEST_WAL_ROUND";

/// The child of the kill test: a store with the smallest log (a checkpoint every few dozen groups), 16 writers through
/// one IO shard, `ack <n>` after each acknowledged write and `checkpoint <count>` each time the count grows.
fn wal_crash_child(path: String, round: i64) {
    use std::io::Write;
    let cfg = config(path.clone().into());
    let backend = EmbeddedBackend::open_with_wal_bytes(&path, WAL_BYTES_MIN).expect("child opens");
    let (_shard, orm) = start(backend.clone(), &cfg);
    let repo = block_on(Repository::<Note>::open(&orm)).expect("open");
    let out = Arc::new(std::sync::Mutex::new((std::io::stdout(), 0u64)));
    let threads: Vec<_> = (0..WRITERS)
        .map(|t| {
            let (repo, out, backend) = (repo.clone(), out.clone(), backend.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let n = round * 1_000_000_000_000 + t * 1_000_000_000 + i;
                    block_on(repo.save(Note {
                        p: "wal".into(),
                        n,
                        label: Some(format!("row {n} {}", "x".repeat((i % 7 * 40) as usize))),
                    }))
                    .expect("save");
                    let checkpoints = backend.log_stats().checkpoints;
                    let mut o = out.lock().expect("stdout");
                    writeln!(o.0, "ack {n}").expect("stdout");
                    if checkpoints > o.1 {
                        o.1 = checkpoints;
                        writeln!(o.0, "checkpoint {checkpoints}").expect("stdout");
                    }
                    o.0.flush().expect("flush");
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// Three rounds on one store: 16 writers with a log so small that it checkpoints and restarts every few dozen groups,
/// killed (SIGKILL, SIGTERM without a handler, SIGKILL) at an arbitrary point (appending, checkpointing, restarting).
/// After each kill, every write acknowledged in every round so far is in the reopened store, with its content.
#[test]
fn kills_during_checkpoints_lose_no_acknowledged_write() {
    use std::io::BufRead;
    if let (Ok(path), Ok(round)) = (std::env::var(WAL_CHILD_ENV), std::env::var(WAL_ROUND_ENV)) {
        return wal_crash_child(path, round.parse().expect("round"));
    }
    let path = test_dir("wal-kill").join("db.redb");
    let mut acked: Vec<i64> = Vec::new();
    for (round, signal) in [
        (1i64, libc::SIGKILL),
        (2, libc::SIGTERM),
        (3, libc::SIGKILL),
    ] {
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "kills_during_checkpoints_lose_no_acknowledged_write",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WAL_CHILD_ENV, &path)
            .env(WAL_ROUND_ENV, round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let (mut this_round, mut checkpoints) = (0usize, 0u64);
        let mut first: Option<Instant> = None;
        // The open itself is checkpoint 1; wait for at least three more during the writes.
        while this_round < 400
            || checkpoints < 4
            || first.is_some_and(|f| f.elapsed() < Duration::from_millis(700))
        {
            assert!(
                first.is_none_or(|f| f.elapsed() < Duration::from_secs(60)),
                "round {round}: only {checkpoints} checkpoints after 60 s of writes"
            );
            let line = lines.next().expect("child alive").expect("line");
            if let Some(n) = line.strip_prefix("ack ") {
                first.get_or_insert_with(Instant::now);
                acked.push(n.parse().expect("number"));
                this_round += 1;
            } else if let Some(c) = line.strip_prefix("checkpoint ") {
                checkpoints = c.parse().expect("count");
            }
        }
        // SAFETY: kill(2) on the child's pid, which we have not waited for yet.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
        let status = child.wait().expect("wait");
        assert!(!status.success(), "round {round}: the child was killed");
        let cfg = config(path.clone());
        let backend = EmbeddedBackend::open_with_wal_bytes(&path, WAL_BYTES_MIN)
            .expect("reopens after the kill");
        let (shard, orm) = start(backend.clone(), &cfg);
        let repo = block_on(Repository::<Note>::open(&orm)).expect("open");
        let stored: BTreeMap<i64, Note> = block_on(all_notes(&repo, "wal"))
            .into_iter()
            .map(|n| (n.n, n))
            .collect();
        for n in &acked {
            let note = stored.get(n).unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged write {n} lost ({} acked)",
                    acked.len()
                )
            });
            let i = n % 1_000_000_000;
            assert_eq!(
                note.label.as_deref(),
                Some(format!("row {n} {}", "x".repeat((i % 7 * 40) as usize)).as_str())
            );
        }
        shard.stop();
    }
}
