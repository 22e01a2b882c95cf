//! Room deliveries on websockets (`engine::cork`): the frames a socket gets in one executor turn leave in one
//! non-blocking send, a lone event leaves at once, and a socket whose send buffer is full gets the rest, in order,
//! from its writer task, while the queue bound still closes a socket that never reads.
//!
//! One in-process shard; a test client joins a room and asks the server to broadcast numbered events to it
//! (`burst`: all in one handler call, so in one turn; `stream`: chunks of events, one chunk per turn).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use shardcast::proto::{EncodedMessage, RawJson};
use shardcast::server::{ServerConfig, ShardApp, ShardCtx, Socket, SocketIo};

/// Broadcast events `from..to` of `size` filler bytes each to `room`, in this turn.
fn broadcast_numbered(shard: &ShardCtx, room: &str, from: u64, to: u64, size: usize) {
    let filler = "x".repeat(size);
    for i in from..to {
        let args = serde_json::to_string(&(i, &filler)).unwrap();
        let msg = EncodedMessage::event_raw("/", "n", &RawJson::new(args).unwrap());
        shard.broadcast("/", room, &msg);
    }
}

fn app(_shard: &std::rc::Rc<ShardCtx>) -> ShardApp {
    let mut io = SocketIo::new();
    io.namespace("/")
        .on("join", |socket: &Socket, event| {
            let (room,): (String,) = event.args.parse().unwrap();
            socket.join(&room);
            event.ack.unwrap().send(RawJson::empty_array());
        })
        .on("burst", |socket: &Socket, event| {
            let (room, count, size): (String, u64, usize) = event.args.parse().unwrap();
            broadcast_numbered(socket.shard(), &room, 0, count, size);
        })
        .on("later", |socket: &Socket, event| {
            let (room, delay_ms): (String, u64) = event.args.parse().unwrap();
            let shard = socket.shard().clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                broadcast_numbered(&shard, &room, 0, 1, 1);
            })
            .detach();
        })
        .on("stream", |socket: &Socket, event| {
            let (room, count, size, chunk): (String, u64, usize, u64) = event.args.parse().unwrap();
            let shard = socket.shard().clone();
            glommio::spawn_local(async move {
                let mut from = 0;
                while from < count {
                    let to = (from + chunk).min(count);
                    broadcast_numbered(&shard, &room, from, to, size);
                    from = to;
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            })
            .detach();
        });
    ShardApp {
        socketio: Some(io),
        router: None,
    }
}

/// One shard with `socket_queued_bytes_max`; shut down on drop.
struct Srv {
    handle: Option<shardcast::server::ServerHandle>,
    addr: SocketAddr,
}

impl Srv {
    fn start(socket_queued_bytes_max: usize) -> Srv {
        let cfg = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            shards: 1,
            pin_shards: false,
            socket_queued_bytes_max,
            ..ServerConfig::default()
        };
        let handle = shardcast::server::start(cfg, Arc::new(app)).expect("start");
        let addr = handle.local_addr;
        Srv {
            handle: Some(handle),
            addr,
        }
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown();
            let _ = h.join();
        }
    }
}

/// The sum of `series` over the shards.
fn metric(addr: SocketAddr, series: &str) -> u64 {
    let text = request(addr, "GET", "/metrics", b"").text();
    let prefix = format!("{series}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A CONNECTed client in room "r".
fn member(addr: SocketAddr) -> Ws {
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket");
    ws.recv();
    ws.send_text("40");
    let reply = ws.recv_text_skip_ping();
    assert!(reply.starts_with("40{\"sid\":"), "{reply}");
    ws.send_text(r#"421["join","r"]"#);
    assert_eq!(ws.recv_text_skip_ping(), "431[]");
    ws
}

/// The text payloads of the complete unmasked server frames at the start of `bytes`, and how many bytes they span.
fn text_frames(bytes: &[u8]) -> (Vec<String>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 2 {
        assert_eq!(bytes[at], 0x81, "a final text frame");
        let (len, head) = match bytes[at + 1] {
            126 if bytes.len() >= at + 4 => (
                usize::from(u16::from_be_bytes([bytes[at + 2], bytes[at + 3]])),
                4,
            ),
            126 => break,
            127 => panic!("no frame here is that big"),
            n => (usize::from(n), 2),
        };
        if bytes.len() < at + head + len {
            break;
        }
        frames.push(String::from_utf8(bytes[at + head..at + head + len].to_vec()).unwrap());
        at += head + len;
    }
    (frames, at)
}

fn event_number(frame: &str) -> u64 {
    let args: (String, u64, String) =
        serde_json::from_str(frame.strip_prefix("42").expect("an event")).unwrap();
    assert_eq!(args.0, "n");
    args.1
}

#[test]
fn frames_of_one_turn_leave_in_one_send_and_arrive_in_one_read() {
    let srv = Srv::start(ServerConfig::default().socket_queued_bytes_max);
    let mut ws = member(srv.addr);
    let sends = metric(srv.addr, "shardcast_websocket_sends_total");
    ws.send_text(r#"42["burst","r",10,20]"#);
    // One send of ten small frames is one loopback segment: the first read returns all of them.
    let mut buf = vec![0u8; 64 * 1024];
    let n = ws.ws.get_mut().read(&mut buf).unwrap();
    let (frames, used) = text_frames(&buf[..n]);
    assert_eq!(used, n, "whole frames only");
    let numbers: Vec<u64> = frames.iter().map(|f| event_number(f)).collect();
    assert_eq!(numbers, (0..10).collect::<Vec<_>>(), "{frames:?}");
    assert_eq!(
        metric(srv.addr, "shardcast_websocket_sends_total") - sends,
        1,
        "ten events broadcast in one turn are one send"
    );
}

#[test]
fn a_lone_event_is_sent_at_once() {
    let srv = Srv::start(ServerConfig::default().socket_queued_bytes_max);
    let mut ws = member(srv.addr);
    // Broadcast from a timer, with nothing else happening on the shard: no later read or event flushes it.
    ws.send_text(r#"42["later","r",5]"#);
    let t = Instant::now();
    let got = ws.recv_text_skip_ping();
    assert_eq!(event_number(&got), 0);
    // The flush is at the end of the turn, not on a timer (the bound is wide: the machine may be loaded).
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // And from a read: one event, one send, straight away.
    let sends = metric(srv.addr, "shardcast_websocket_sends_total");
    ws.send_text(r#"42["burst","r",1,1]"#);
    assert_eq!(event_number(&ws.recv_text_skip_ping()), 0);
    assert_eq!(
        metric(srv.addr, "shardcast_websocket_sends_total") - sends,
        1
    );
}

/// Shrink the client's receive buffer so that the server's socket fills up.
fn small_receive_buffer(ws: &Ws, bytes: i32) {
    let fd = ws.ws.get_ref().as_raw_fd();
    // SAFETY: `bytes` outlives the call and its size is passed; `fd` is the open socket of `ws`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

#[test]
fn a_slow_reader_gets_every_frame_in_order() {
    // A queue bound of 4 MiB: time enough for this reader to start reading once the socket is full.
    let srv = Srv::start(4 * 1024 * 1024);
    let mut ws = member(srv.addr);
    small_receive_buffer(&ws, 64 * 1024);
    let (count, size) = (10_000u64, 1000usize);
    let short = metric(srv.addr, "shardcast_websocket_sends_short_total");
    // 10 MB in chunks of 8 events (8 KB) per millisecond at most. The client reads nothing until a direct send
    // came up short (its socket buffers are full and the writer task holds the rest), then everything.
    ws.send_text(&format!(r#"42["stream","r",{count},{size},8]"#));
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(srv.addr, "shardcast_websocket_sends_short_total") == short {
        assert!(Instant::now() < deadline, "the socket never filled up");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut next = 0u64;
    while next < count {
        let n = ws.ws.get_mut().read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {next} events");
        buf.extend_from_slice(&chunk[..n]);
        let (frames, used) = text_frames(&buf);
        for f in &frames {
            assert_eq!(event_number(f), next, "in order, none missed or repeated");
            next += 1;
        }
        buf.drain(..used);
    }
    assert!(buf.is_empty());
}

#[test]
fn a_reader_that_never_reads_is_closed_at_the_queue_bound() {
    let srv = Srv::start(64 * 1024);
    let ws = member(srv.addr);
    small_receive_buffer(&ws, 4096);
    let mut ws = ws;
    // 20 MB, far more than socket buffers and the 64 KiB bound hold.
    ws.send_text(r#"42["stream","r",20000,1000,20]"#);
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(srv.addr, "shardcast_slow_reader_disconnects_total") == 0 {
        assert!(Instant::now() < deadline, "never closed as a slow reader");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The session is gone: its room has no member left for the rest of the stream.
    assert_eq!(metric(srv.addr, "shardcast_sockets"), 0);
    ws.ws.get_mut().shutdown(std::net::Shutdown::Both).ok();
}
