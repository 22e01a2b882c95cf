//! Latency of one hop on the cross-shard mesh: `ShardCtx::send_to` from one shard to the other, until the closure
//! runs on the receiving executor (including its wake-up from park).
//!
//! `cargo bench --bench mesh` (`-- --quick` for fewer hops). Starts the real server with two pinned shards on
//! 127.0.0.1:0, then plays ping-pong: each hop carries its send time, the receiving shard records the elapsed time
//! and sends the next hop back. One message is in flight at a time, so each hop finds its receiver parked, the
//! worst case for wake-up. Prints the latency percentiles of all hops.

use std::rc::Rc;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardcast::server::{AppFactory, ServerConfig, ShardApp, ShardCtx, start};

struct Run {
    samples_ns: Mutex<Vec<u64>>,
    done: Mutex<Option<Sender<()>>>,
}

fn hop(ctx: &Rc<ShardCtx>, sent: Instant, remaining: u32, run: Arc<Run>) {
    let elapsed_ns = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
    run.samples_ns.lock().expect("samples").push(elapsed_ns);
    if remaining == 0 {
        if let Some(done) = run.done.lock().expect("done").take() {
            let _ = done.send(());
        }
        return;
    }
    let other = (ctx.id() + 1) % ctx.nr_shards();
    let now = Instant::now();
    let sent_ok = ctx.send_to(other, move |ctx| hop(ctx, now, remaining - 1, run));
    assert!(
        sent_ok.is_ok(),
        "one message in flight cannot fill the queue"
    );
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let hops: u32 = if quick { 20_000 } else { 200_000 };
    let (done_tx, done_rx) = mpsc::channel();
    let run = Arc::new(Run {
        samples_ns: Mutex::new(Vec::with_capacity(hops as usize + 1)),
        done: Mutex::new(Some(done_tx)),
    });
    let started = run.clone();
    let app: AppFactory = Arc::new(move |ctx: &Rc<ShardCtx>| {
        if ctx.id() == 0 {
            let (ctx, run) = (ctx.clone(), started.clone());
            // Start once both shards run: the first hop leaves shard 0 shortly after start-up.
            ctx.clone().schedule(Duration::from_millis(200), move || {
                hop(&ctx, Instant::now(), hops, run)
            });
        }
        ShardApp::default()
    });
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        shards: 2,
        ..ServerConfig::default()
    };
    let server = start(config, app).expect("start the server");
    done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("the ping-pong finished");
    server.shutdown();
    server.join().expect("server stopped");

    let mut samples = std::mem::take(&mut *run.samples_ns.lock().expect("samples"));
    samples.remove(0); // the first "hop" is the local start, not a crossing
    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    println!(
        "mesh hop (2 shards, ping-pong, receiver parked)  n={}  p50={:.1}us p90={:.1}us p99={:.1}us p999={:.1}us max={:.1}us",
        samples.len(),
        us(percentile(&samples, 0.50)),
        us(percentile(&samples, 0.90)),
        us(percentile(&samples, 0.99)),
        us(percentile(&samples, 0.999)),
        us(*samples.last().expect("samples")),
    );
}
