//! One simulated Socket.IO client: the session logic (handshake, `authenticate`, `realtime:join`, counting
//! `realtime:resource` deliveries, echo acks) and its two transports (websocket, HTTP long-polling).
//!
//! Cost per client is kept small: a websocket client is one task holding its socket, its tokens and a partial-frame
//! buffer that is empty between frames; reads go through one thread-wide scratch buffer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use shardcast_proto::{EioVersion, Handshake, Limits, PayloadForm, engine, socket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::http::HttpConn;
use crate::stats::Stats;
use crate::ws;

/// Largest websocket frame accepted from the server, bytes.
pub const FRAME_BYTES_MAX: usize = 1 << 20;
/// Size of the thread-wide read buffer, bytes.
const SCRATCH_BYTES: usize = 256 << 10;
/// Echo requests awaiting their ack, per client; older ones are dropped (and counted as never answered).
const PENDING_ACKS_MAX: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_BYTES]);
}

/// What the whole run shares with every client.
#[derive(Debug)]
pub struct Shared {
    /// The server.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// The Socket.IO path, e.g. `/socket/`.
    pub socket_path: String,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N (1: kernel's choice).
    pub source_ips: usize,
    /// The run clock: `sent_at_us` values are microseconds since this instant.
    pub start: Instant,
    /// The accounting.
    pub stats: RefCell<Stats>,
    /// Bounds how many clients are between "start connecting" and "ready or failed".
    pub handshakes: Arc<Semaphore>,
    /// The argument sent with every echo request.
    pub echo_payload: String,
    /// Echo requests are sent only while this is set (the measured phase).
    pub echo_on: std::cell::Cell<bool>,
}

impl Shared {
    /// Microseconds on the run clock.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
}

/// What one client does.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Index (0-based); also picks the source address.
    pub id: u32,
    /// The access token sent with `authenticate`.
    pub access_token: String,
    /// The room to join: (index, name, room token).
    pub room: Option<(u32, String, String)>,
    /// Use HTTP long-polling instead of a websocket.
    pub polling: bool,
    /// Emit `echo` with an ack at this period once ready.
    pub echo_every: Option<Duration>,
    /// The server this client talks to (`None`: [`Shared::addr`]; the cluster scenario spreads clients over nodes).
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Connecting,
    Authenticating,
    Joining,
    Ready,
}

#[derive(Deserialize)]
struct ResourceEvent<'a> {
    #[serde(borrow)]
    room: std::borrow::Cow<'a, str>,
    resource: PublishedFields,
}

/// The fields the publisher puts into every resource it creates.
#[derive(Deserialize)]
struct PublishedFields {
    room_index: u32,
    seq: u64,
    sent_at_us: u64,
}

/// The protocol logic of one client, transport-independent: Engine.IO text packets in, text packets out.
struct Session {
    spec: ClientSpec,
    phase: Phase,
    started_us: u64,
    next_ack_id: u64,
    pending_acks: VecDeque<(u64, u64)>,
    limits: Limits,
}

type Step = Result<(), String>;

impl Session {
    fn new(spec: ClientSpec, started_us: u64) -> Session {
        Session {
            spec,
            phase: Phase::Opening,
            started_us,
            next_ack_id: 1,
            pending_acks: VecDeque::new(),
            limits: Limits::default(),
        }
    }

    fn emit(out: &mut Vec<String>, ack: Option<u64>, name: &str, arg: &str) {
        let mut s = String::with_capacity(8 + name.len() + arg.len());
        s.push_str("42");
        if let Some(id) = ack {
            s.push_str(&id.to_string());
        }
        s.push_str("[\"");
        s.push_str(name);
        s.push_str("\",");
        s.push_str(arg);
        s.push(']');
        out.push(s);
    }

    fn ready(&mut self, shared: &Shared) {
        self.phase = Phase::Ready;
        let now = shared.now_us();
        shared.stats.borrow_mut().client_ready(
            self.spec.id,
            self.spec.room.as_ref().map(|r| r.0),
            now.saturating_sub(self.started_us),
            now,
        );
    }

    /// Handles one Engine.IO text packet.
    fn on_text(&mut self, text: &str, out: &mut Vec<String>, shared: &Shared) -> Step {
        let packet = engine::Packet::decode_text(text).map_err(|e| format!("engine.io: {e}"))?;
        match packet {
            engine::Packet::Open(json) => {
                Handshake::parse(&json).map_err(|e| format!("handshake: {e}"))?;
                out.push("40".to_owned());
                self.phase = Phase::Connecting;
            }
            engine::Packet::Ping(data) => out.push(format!("3{data}")),
            engine::Packet::Close => return Err("engine.io close".to_owned()),
            engine::Packet::Message(m) => self.on_message(&m, out, shared)?,
            engine::Packet::Pong(_)
            | engine::Packet::Binary(_)
            | engine::Packet::Upgrade
            | engine::Packet::Noop => {}
        }
        Ok(())
    }

    fn on_message(&mut self, m: &str, out: &mut Vec<String>, shared: &Shared) -> Step {
        // Deliveries are the hot path: recognise them before the generic decoder copies the arguments.
        if let Some(args) = m.strip_prefix("2[\"realtime:resource\",") {
            self.on_resource(args.strip_suffix(']').unwrap_or(args), shared);
            return Ok(());
        }
        let (packet, _) = socket::decode_packet(shardcast_proto::SioVersion::V5, m, &self.limits)
            .map_err(|e| format!("socket.io: {e}"))?;
        match packet {
            socket::Packet::Connect { .. } => {
                if self.phase != Phase::Connecting {
                    return Err("unexpected CONNECT".to_owned());
                }
                let arg = serde_json::json!({ "token": self.spec.access_token }).to_string();
                Self::emit(out, None, "authenticate", &arg);
                self.phase = Phase::Authenticating;
            }
            socket::Packet::ConnectError { data, .. } => {
                return Err(format!("connect error {}", data.as_str()));
            }
            socket::Packet::Disconnect { .. } => {
                return Err("server disconnected the socket".to_owned());
            }
            socket::Packet::Event { name, args, .. } => match name.as_str() {
                "authenticated" if self.phase == Phase::Authenticating => {
                    if let Some((_, room, token)) = &self.spec.room {
                        let arg = serde_json::json!({ "name": room, "token": token }).to_string();
                        Self::emit(out, None, "realtime:join", &arg);
                        self.phase = Phase::Joining;
                    } else {
                        self.ready(shared);
                    }
                }
                "unauthorized" => return Err("unauthorized".to_owned()),
                "realtime:join:success" if self.phase == Phase::Joining => self.ready(shared),
                "realtime:join:error" => return Err(format!("join error {}", args.as_str())),
                "realtime:resource" => {
                    let a = args.as_str();
                    let inner = a
                        .strip_prefix('[')
                        .and_then(|x| x.strip_suffix(']'))
                        .unwrap_or(a);
                    self.on_resource(inner, shared);
                }
                _ => {}
            },
            socket::Packet::Ack { id, .. } => {
                let now = shared.now_us();
                let mut stats = shared.stats.borrow_mut();
                if let Some(pos) = self.pending_acks.iter().position(|&(i, _)| i == id) {
                    let (_, sent) = self.pending_acks.remove(pos).unwrap_or((id, now));
                    stats.acks_received += 1;
                    stats.ack_rtt.record(now.saturating_sub(sent));
                } else {
                    stats.acks_unexpected += 1;
                }
            }
        }
        Ok(())
    }

    /// `arg` is the event's argument object.
    fn on_resource(&mut self, arg: &str, shared: &Shared) {
        let now = shared.now_us();
        let mut stats = shared.stats.borrow_mut();
        match serde_json::from_str::<ResourceEvent<'_>>(arg) {
            Ok(ev) => {
                let room_matches = self
                    .spec
                    .room
                    .as_ref()
                    .is_some_and(|(_, name, _)| *name == ev.room);
                let r = ev.resource;
                stats.delivered(
                    self.spec.id,
                    r.room_index,
                    room_matches,
                    r.seq,
                    now.saturating_sub(r.sent_at_us),
                );
            }
            Err(_) => stats.malformed += 1,
        }
    }

    fn echo(&mut self, out: &mut Vec<String>, shared: &Shared) {
        if self.phase != Phase::Ready || !shared.echo_on.get() {
            return;
        }
        let id = self.next_ack_id;
        self.next_ack_id += 1;
        if self.pending_acks.len() >= PENDING_ACKS_MAX {
            self.pending_acks.pop_front();
        }
        self.pending_acks.push_back((id, shared.now_us()));
        shared.stats.borrow_mut().acks_sent += 1;
        Self::emit(out, Some(id), "echo", &shared.echo_payload);
    }
}

/// Runs one client until its connection ends (the run ends by dropping every task).
pub async fn run(spec: ClientSpec, shared: Rc<Shared>) {
    let id = spec.id;
    let Ok(permit) = Arc::clone(&shared.handshakes).acquire_owned().await else {
        return;
    };
    let result = if spec.polling {
        run_polling(spec, Rc::clone(&shared), permit).await
    } else {
        run_websocket(spec, &shared, permit).await
    };
    if let Err(reason) = result {
        shared.stats.borrow_mut().client_failed(id, &reason);
    }
}

fn io_reason(e: &std::io::Error) -> String {
    format!("io: {}", e.kind())
}

async fn run_websocket(spec: ClientSpec, shared: &Shared, permit: OwnedSemaphorePermit) -> Step {
    let mut permit = Some(permit);
    let source = crate::net::source_ip(spec.id as usize, shared.source_ips);
    let mut stream = crate::net::connect(spec.addr.unwrap_or(shared.addr), source)
        .await
        .map_err(|e| format!("connect: {}", e.kind()))?;
    let path = format!("{}?EIO=4&transport=websocket", shared.socket_path);
    let request = ws::upgrade_request(&shared.host, &path, u64::from(spec.id) + 1);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| io_reason(&e))?;

    // The 101 head; bytes after it are frames.
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let head_len = loop {
        if let Some(n) = ws::head_end(&buf) {
            break n;
        }
        if buf.len() > 16 << 10 {
            return Err("upgrade response head too large".to_owned());
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await.map_err(|e| io_reason(&e))? == 0 {
            return Err("closed during upgrade".to_owned());
        }
    };
    if !ws::is_switching_protocols(&buf[..head_len]) {
        let line = String::from_utf8_lossy(
            &buf[..buf[..head_len]
                .iter()
                .position(|&b| b == b'\r')
                .unwrap_or(0)],
        )
        .into_owned();
        return Err(format!("upgrade refused: {line}"));
    }
    buf.drain(..head_len);
    if buf.is_empty() {
        buf = Vec::new();
    }

    let mask = (spec.id.wrapping_mul(2_654_435_761) | 1).to_le_bytes();
    let echo_every = spec.echo_every;
    let mut session = Session::new(spec, shared.now_us());
    let mut texts: Vec<String> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut fragment: Vec<u8> = Vec::new();
    let mut echo_timer = echo_every.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });

    // Frames that arrived with the head.
    let mut closed = false;
    if !buf.is_empty() {
        let pending = std::mem::take(&mut buf);
        closed = feed(
            &mut buf,
            &pending,
            &mut fragment,
            &mut session,
            &mut texts,
            &mut wbuf,
            shared,
        )?;
    }
    loop {
        flush_texts(&mut texts, &mut wbuf, mask);
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await.map_err(|e| io_reason(&e))?;
            wbuf.clear();
            if wbuf.capacity() > 4096 {
                wbuf = Vec::new();
            }
        }
        if session.phase == Phase::Ready {
            permit.take();
        }
        if closed {
            return Err("server closed the websocket".to_owned());
        }
        tokio::select! {
            r = stream.readable() => {
                r.map_err(|e| io_reason(&e))?;
                let read = SCRATCH.with(|s| -> Result<Option<bool>, String> {
                    let mut s = s.borrow_mut();
                    match stream.try_read(&mut s[..]) {
                        Ok(0) => Err("connection closed by the server".to_owned()),
                        Ok(n) => feed(&mut buf, &s[..n], &mut fragment, &mut session, &mut texts, &mut wbuf, shared).map(Some),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(io_reason(&e)),
                    }
                })?;
                if let Some(c) = read {
                    closed = c;
                }
            }
            _ = async { match echo_timer.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                session.echo(&mut texts, shared);
            }
        }
    }
}

fn flush_texts(texts: &mut Vec<String>, wbuf: &mut Vec<u8>, mask: [u8; 4]) {
    for t in texts.drain(..) {
        ws::encode_frame(wbuf, ws::Opcode::Text, t.as_bytes(), Some(mask));
    }
}

/// Processes the bytes `chunk` that followed `leftover` (the unparsed tail of earlier reads). Returns whether the
/// server sent a close frame.
fn feed(
    leftover: &mut Vec<u8>,
    chunk: &[u8],
    fragment: &mut Vec<u8>,
    session: &mut Session,
    texts: &mut Vec<String>,
    wbuf: &mut Vec<u8>,
    shared: &Shared,
) -> Result<bool, String> {
    if leftover.is_empty() {
        let (used, closed) = frames(chunk, fragment, session, texts, wbuf, shared)?;
        if used < chunk.len() {
            leftover.extend_from_slice(&chunk[used..]);
        }
        Ok(closed)
    } else {
        leftover.extend_from_slice(chunk);
        let data = std::mem::take(leftover);
        let (used, closed) = frames(&data, fragment, session, texts, wbuf, shared)?;
        if used < data.len() {
            *leftover = data;
            leftover.drain(..used);
        }
        Ok(closed)
    }
}

/// Handles every whole frame at the front of `buf`; returns the bytes consumed and whether a close frame came.
fn frames(
    buf: &[u8],
    fragment: &mut Vec<u8>,
    session: &mut Session,
    texts: &mut Vec<String>,
    wbuf: &mut Vec<u8>,
    shared: &Shared,
) -> Result<(usize, bool), String> {
    let mut at = 0;
    while let Some(h) = ws::parse_header(&buf[at..], FRAME_BYTES_MAX).map_err(|e| e.to_string())? {
        let payload = &buf[at + h.header_bytes..at + h.frame_bytes()];
        at += h.frame_bytes();
        match h.opcode {
            ws::Opcode::Text if h.fin => {
                let text =
                    std::str::from_utf8(payload).map_err(|_| "non-UTF-8 text frame".to_owned())?;
                session.on_text(text, texts, shared)?;
            }
            ws::Opcode::Text | ws::Opcode::Binary => {
                fragment.clear();
                fragment.extend_from_slice(payload);
                if h.opcode == ws::Opcode::Binary {
                    // No binary payloads in this contract: count nothing, keep nothing.
                    fragment.clear();
                }
            }
            ws::Opcode::Continuation => {
                if fragment.len() + payload.len() > FRAME_BYTES_MAX {
                    return Err("fragmented message too large".to_owned());
                }
                fragment.extend_from_slice(payload);
                if h.fin && !fragment.is_empty() {
                    let whole = std::mem::take(fragment);
                    let text = std::str::from_utf8(&whole)
                        .map_err(|_| "non-UTF-8 text frame".to_owned())?;
                    session.on_text(text, texts, shared)?;
                }
            }
            ws::Opcode::Ping => {
                ws::encode_frame(wbuf, ws::Opcode::Pong, payload, Some([7, 7, 7, 7]))
            }
            ws::Opcode::Pong => {}
            ws::Opcode::Close => return Ok((at, true)),
        }
    }
    Ok((at, false))
}

async fn run_polling(spec: ClientSpec, shared: Rc<Shared>, permit: OwnedSemaphorePermit) -> Step {
    let shared_rc = shared;
    let shared: &Shared = &shared_rc;
    let mut permit = Some(permit);
    let source: Option<Ipv4Addr> = crate::net::source_ip(spec.id as usize, shared.source_ips);
    let addr = spec.addr.unwrap_or(shared.addr);
    let mut get = HttpConn::new(addr, &shared.host, source);
    let base = format!("{}?EIO=4&transport=polling", shared.socket_path);
    let limits = Limits::default();
    let echo_every = spec.echo_every;
    let session = Rc::new(RefCell::new(Session::new(spec, shared.now_us())));

    let r = get
        .request("GET", &base, &[], b"")
        .await
        .map_err(|e| io_reason(&e))?;
    if r.status != 200 {
        return Err(format!("polling handshake status {}", r.status));
    }
    let packets =
        shardcast_proto::decode_payload(EioVersion::V4, PayloadForm::Text, &r.body, &limits)
            .map_err(|e| format!("polling payload: {e}"))?;
    let sid = match packets.first() {
        Some(engine::Packet::Open(json)) => {
            Handshake::parse(json)
                .map_err(|e| format!("handshake: {e}"))?
                .sid
        }
        _ => return Err("polling handshake without open packet".to_owned()),
    };
    let url = format!("{base}&sid={sid}");

    // Writes go through their own connection so a pending long-poll never delays them.
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<String>();
    let post = HttpConn::new(addr, &shared.host, source);
    let writer = tokio::task::spawn_local(post_loop(post, url.clone(), rx, failed_tx));
    let echo = echo_every.map(|period| {
        let session = Rc::clone(&session);
        let tx = tx.clone();
        let shared = Rc::clone(&shared_rc);
        tokio::task::spawn_local(async move {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                t.tick().await;
                let mut out = Vec::new();
                session.borrow_mut().echo(&mut out, &shared);
                for p in out {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        })
    });

    let result = async {
        let mut out = Vec::new();
        for p in &packets {
            if let engine::Packet::Open(json) = p {
                session.borrow_mut().on_text(&format!("0{json}"), &mut out, shared)?;
            }
        }
        loop {
            for p in out.drain(..) {
                tx.send(p).map_err(|_| "polling writer stopped".to_owned())?;
            }
            if session.borrow().phase == Phase::Ready {
                permit.take();
            }
            let r = tokio::select! {
                r = get.request("GET", &url, &[], b"") => r.map_err(|e| io_reason(&e))?,
                reason = failed_rx.recv() => return Err(reason.unwrap_or_else(|| "polling writer stopped".to_owned())),
            };
            if r.status != 200 {
                return Err(format!("polling GET status {}", r.status));
            }
            let packets = shardcast_proto::decode_payload(EioVersion::V4, PayloadForm::Text, &r.body, &limits)
                .map_err(|e| format!("polling payload: {e}"))?;
            let mut scratch = String::new();
            for p in &packets {
                if let engine::Packet::Binary(_) = p {
                    continue;
                }
                scratch.clear();
                p.write_text(&mut scratch);
                session.borrow_mut().on_text(&scratch, &mut out, shared)?;
            }
        }
    }
    .await;
    writer.abort();
    if let Some(e) = echo {
        e.abort();
    }
    result
}

async fn post_loop(
    mut conn: HttpConn,
    url: String,
    mut rx: mpsc::UnboundedReceiver<String>,
    failed: mpsc::UnboundedSender<String>,
) {
    while let Some(first) = rx.recv().await {
        let mut body = first.into_bytes();
        while let Ok(more) = rx.try_recv() {
            body.push(0x1e);
            body.extend_from_slice(more.as_bytes());
        }
        let headers = [("Content-Type", "text/plain;charset=UTF-8")];
        match conn.request("POST", &url, &headers, &body).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                let _ = failed.send(format!("polling POST status {}", r.status));
                return;
            }
            Err(e) => {
                let _ = failed.send(io_reason(&e));
                return;
            }
        }
    }
}
