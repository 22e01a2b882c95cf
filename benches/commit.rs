//! The IO shard's commit path with the embedded store (issue 11 item 1): writes/s and CPU per write at 1, 16 and 256
//! concurrent writers, every write durable (group commit: one redb transaction per batch, made durable by one
//! write-ahead-log append + `fdatasync`, a durable redb commit at each checkpoint).
//!
//! `cargo bench --bench commit` (add `-- --quick` for a short run). Criterion reports the wall time per write and the
//! throughput (writes/s); after each group this bench prints the process CPU (utime + stime, every thread: caller, IO
//! shard) per write, the mean number of writes per durable group, and how many groups were logged and checkpointed. Writers are futures awaited together from one
//! thread, each doing one upsert through `IoHandle::call` at a time.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures_lite::future::block_on;
use shardcast::orm::backend::embedded::EmbeddedBackend;
use shardcast::orm::backend::{Backend, ColumnDef, ColumnType, Row, TableSchema, Value};
use shardcast::orm::{IoHandle, IoShard, IoShardLimits};

fn schema() -> TableSchema {
    TableSchema {
        name: "bench_commit".into(),
        columns: vec![
            ColumnDef {
                name: "k".into(),
                column_type: ColumnType::Text,
            },
            ColumnDef {
                name: "body".into(),
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

fn cpu_us() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Polls every future to completion on the current thread, all in flight at once.
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

/// `total` durable upserts by `writers` concurrent writers; returns the wall time.
fn run_writes(io: &IoHandle, schema: &Arc<TableSchema>, writers: usize, total: u64) -> Duration {
    let next = Rc::new(Cell::new(0u64));
    let body = "x".repeat(200);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (next, io, schema, body) = (next.clone(), io.clone(), schema.clone(), body.clone());
            async move {
                loop {
                    let n = next.get();
                    if n >= total {
                        return;
                    }
                    next.set(n + 1);
                    let mut row = Row::new();
                    row.insert("k".into(), Value::Text(format!("k{n}")));
                    row.insert("body".into(), Value::Text(body.clone()));
                    let schema = schema.clone();
                    io.call(move |b| Box::pin(async move { b.upsert(&schema, row).await }))
                        .await
                        .expect("durable write");
                }
            }
        })
        .collect();
    block_on(join_all(tasks));
    start.elapsed()
}

fn commit_path(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("shardcast-bench-commit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let backend = EmbeddedBackend::open(dir.join("db.redb")).expect("open the store");
    let schema = Arc::new(schema());
    block_on(backend.ensure_schema(&schema)).expect("schema");
    let shared: Arc<dyn Backend> = Arc::new(backend.clone());
    let factory: shardcast::orm::BackendFactory =
        Box::new(move || Box::pin(async move { Ok(shared) }));
    let shard = IoShard::start(factory, IoShardLimits::default()).expect("IO shard starts");
    let io = shard.handle();

    let mut group = c.benchmark_group("commit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    for writers in [1usize, 16, 256] {
        let (mut cpu, mut writes) = (0u64, 0u64);
        let (commits0, writes0) = backend.commit_stats();
        let log0 = backend.log_stats();
        group.bench_function(BenchmarkId::new("durable_upsert_writers", writers), |b| {
            b.iter_custom(|iters| {
                let c0 = cpu_us();
                let t = run_writes(&io, &schema, writers, iters);
                cpu += cpu_us().saturating_sub(c0);
                writes += iters;
                t
            })
        });
        let (commits1, writes1) = backend.commit_stats();
        let log1 = backend.log_stats();
        let per_commit = (writes1 - writes0) as f64 / (commits1 - commits0).max(1) as f64;
        println!(
            "commit/{writers} writers: {:.1} us CPU per write (process, all threads), {per_commit:.1} writes per durable group, {writes} writes, {} groups logged, {} checkpoints",
            cpu as f64 / writes.max(1) as f64,
            log1.logged - log0.logged,
            log1.checkpoints - log0.checkpoints,
        );
    }
    group.finish();
    shard.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log's append alone (one 400-byte record made durable), direct (`O_DIRECT | O_DSYNC`) and buffered (`pwrite` +
/// `fdatasync`), on a log file in the temporary directory; prints the CPU per append.
fn log_append(c: &mut Criterion) {
    use shardcast::orm::backend::embedded::wal::{WAL_BYTES_DEFAULT, Wal};
    let dir = std::env::temp_dir().join(format!("shardcast-bench-wal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let payload = vec![b'x'; 400];
    let mut group = c.benchmark_group("log_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    for direct in [true, false] {
        let name = if direct { "direct" } else { "buffered" };
        let (mut wal, _) =
            Wal::open_with(&dir.join(format!("{name}.wal")), WAL_BYTES_DEFAULT, direct)
                .expect("open the log");
        assert_eq!(
            wal.is_direct(),
            direct,
            "direct writes refused in {}",
            dir.display()
        );
        wal.restart(1);
        let (mut cpu, mut appends) = (0u64, 0u64);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (c0, t0) = (cpu_us(), Instant::now());
                for _ in 0..iters {
                    if !wal.fits(payload.len()) {
                        wal.restart(wal.epoch() + 1);
                    }
                    wal.append(&payload).expect("append");
                }
                cpu += cpu_us().saturating_sub(c0);
                appends += iters;
                t0.elapsed()
            })
        });
        println!(
            "log_append/{name}: {:.1} us CPU per durable 432-byte append, {appends} appends",
            cpu as f64 / appends.max(1) as f64
        );
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, commit_path, log_append);
criterion_main!(benches);
