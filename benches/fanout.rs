//! Room fan-out on one shard to N in-memory sinks (N = 1, 100, 10,000): a member shard's work for one
//! `realtime:resource` event, up to the bytes each member's websocket writer would write.
//!
//! `cargo bench --bench fanout` (about a minute). One iteration is what `realtime::live` does when an event reaches a
//! shard with members (`deliver_local`): frame the shared payload once (`live::resource_frame`, an `EncodedMessage`)
//! and queue that frame for every member of the room (`ShardCtx::broadcast` -> `Session::send_items`); then, for
//! every member, one pass of the websocket writer (`InMemoryConnection::drain_into`) into that member's own byte
//! buffer, the sink standing in for its TCP socket. Throughput is counted in deliveries (members), so criterion
//! prints deliveries/s; time per delivery is the time per iteration divided by N.
//!
//! The members are real Engine.IO v4 sessions on the websocket transport with the Socket.IO handler
//! (`ShardCtx::connect_in_memory`), CONNECTed to `/` and joined to their room by a `join` event whose handler calls
//! `Socket::join`. The server runs with one unpinned shard on 127.0.0.1:0 and receives no traffic; a task spawned by
//! the app factory builds the connections and runs criterion on the shard's executor (the measured code is
//! synchronous, so no timer or other task runs during a measurement).

use std::hint::black_box;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use serde_json::json;
use shardcast::proto::EioVersion;
use shardcast::realtime::bus::{ResourceAction, ResourceEvent};
use shardcast::realtime::live;
use shardcast::realtime::rooms::SharedPayload;
use shardcast::server::{
    AppFactory, InMemoryConnection, ServerConfig, ShardApp, ShardCtx, SocketIo, start,
};

/// Room sizes measured.
const MEMBERS: [usize; 3] = [1, 100, 10_000];

fn room_name(members: usize) -> String {
    format!("/channels/fanout-{members}/messages")
}

fn app() -> ShardApp {
    let mut io = SocketIo::new();
    io.namespace("/").on("join", |socket, event| {
        let (room,): (String,) = event.args.parse().expect("join takes a room name");
        socket.join(&room);
    });
    ShardApp {
        socketio: Some(io),
        router: None,
    }
}

/// The `realtime:resource` event of a new chat message, encoded once as the publishing shard does.
fn payload(room: &str) -> SharedPayload {
    let event = ResourceEvent {
        action: ResourceAction::Created,
        room: room.to_owned(),
        type_name: "message".into(),
        path: "/messages/6650f1c2a4b1e3d2c0ffee42".into(),
        resource: json!({
            "id": "6650f1c2a4b1e3d2c0ffee42",
            "channel": "general",
            "author": "user-1234",
            "text": "The deploy went out at 14:02; latency is back under the target.",
            "createdAt": "2025-05-24T14:03:11.512Z",
        }),
    };
    Arc::from(event.encode_args())
}

/// One delivery on the member shard, then one writer pass per member into its sink. Returns the deliveries.
fn deliver_and_write(
    shard: &ShardCtx,
    room: &str,
    payload: &str,
    members: &[InMemoryConnection],
    sinks: &mut [Vec<u8>],
) -> usize {
    let msg = live::resource_frame(payload).expect("a realtime:resource payload");
    let delivered = shard.broadcast(live::NAMESPACE, room, &msg);
    for (conn, sink) in members.iter().zip(sinks.iter_mut()) {
        sink.clear();
        conn.drain_into(sink);
    }
    delivered
}

fn run(shard: &Rc<ShardCtx>) {
    let largest = MEMBERS.iter().copied().max().unwrap_or(0);
    let conns: Vec<InMemoryConnection> = (0..largest)
        .map(|i| {
            let conn = shard.connect_in_memory(EioVersion::V4);
            conn.feed_text("40").expect("CONNECT");
            for &n in MEMBERS.iter().filter(|&&n| i < n) {
                conn.feed_text(&format!(r#"42["join","{}"]"#, room_name(n)))
                    .expect("join");
            }
            conn.drain(); // the open packet and the CONNECT reply
            conn
        })
        .collect();

    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(30)
        .configure_from_args();
    let mut group = c.benchmark_group("fanout_one_shard");
    for n in MEMBERS {
        let room = room_name(n);
        let event_args = payload(&room);
        let members = &conns[..n];
        let mut sinks: Vec<Vec<u8>> = vec![Vec::new(); n];

        // Every member gets exactly the event's frame.
        assert_eq!(shard.rooms().len(live::NAMESPACE, &room), n);
        let delivered = deliver_and_write(shard, &room, &event_args, members, &mut sinks);
        assert_eq!(delivered, n);
        let frame_text = live::resource_frame(&event_args).expect("frame");
        let frame_len = sinks[0].len();
        assert!(frame_len > frame_text.ws_text().len());
        assert!(
            sinks
                .iter()
                .all(|s| s.ends_with(frame_text.ws_text().as_bytes()) && s.len() == frame_len)
        );
        if n == MEMBERS[0] {
            println!(
                "event frame: {} bytes of Engine.IO packet, {frame_len} bytes on the wire per member",
                frame_text.ws_text().len()
            );
        }

        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                black_box(deliver_and_write(
                    shard,
                    &room,
                    black_box(&event_args),
                    members,
                    &mut sinks,
                ))
            })
        });
    }
    group.finish();
    c.final_summary();
    drop(conns);
}

fn main() {
    let (done_tx, done_rx) = mpsc::channel::<bool>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let factory: AppFactory = Arc::new(move |shard: &Rc<ShardCtx>| {
        let (shard, done_tx) = (shard.clone(), done_tx.clone());
        glommio::spawn_local(async move {
            // glommio polls a new task at once: yield so the factory returns and the shard installs the app first.
            futures_lite::future::yield_now().await;
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&shard))).is_ok();
            if let Some(tx) = done_tx.lock().expect("sender").take() {
                let _ = tx.send(ok);
            }
        })
        .detach();
        app()
    });
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        shards: 1,
        pin_shards: false,
        ..ServerConfig::default()
    };
    let server = start(config, factory).expect("start the server");
    let ok = done_rx.recv().unwrap_or(false);
    server.shutdown();
    server.join().expect("server stopped");
    assert!(ok, "the fan-out bench failed (see the panic above)");
}
