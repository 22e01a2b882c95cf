//! The load generator's accounting, checked against an in-process fake server that speaks the contract and
//! misbehaves on purpose in known ways: it drops one delivery, duplicates one publish to a whole room and sends
//! one event to a socket of another room. The summary must report exactly those faults and nothing else.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use shardcast_loadtest::report::Summary;
use shardcast_loadtest::scenario::{self, Config, Scenario};
use shardcast_loadtest::ws;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Which publish (0-based, in the order the fake server handles them) gets which fault.
const DROP_FIRST_MEMBER_OF: u64 = 2;
const DUPLICATE_TO_ROOM: u64 = 4;
const MISROUTE_ONE: u64 = 6;

#[derive(Default)]
struct FakeState {
    rooms: HashMap<String, Vec<mpsc::UnboundedSender<String>>>,
    publishes: u64,
    /// Channels created through `POST /api/v1/companies/acme/workspaces/w/channels`; once there is one, like
    /// shardcast's demo services, messages of other channels are 404.
    created: Vec<String>,
}

type State = Rc<RefCell<FakeState>>;

fn start_fake_server() -> SocketAddr {
    start_fake_cluster(1)[0]
}

/// `n` listeners sharing one state: a publish on any of them reaches the room's members on all of them (a cluster).
fn start_fake_cluster(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
        .collect();
    let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let state: State = Rc::default();
            let mut tasks = Vec::new();
            for std_listener in listeners {
                let state = Rc::clone(&state);
                tasks.push(tokio::task::spawn_local(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    loop {
                        let (stream, _) = listener.accept().await.unwrap();
                        tokio::task::spawn_local(connection(stream, Rc::clone(&state)));
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
    });
    addrs
}

async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = ws::head_end(buf) {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + len {
                let body = buf[end..end + len].to_vec();
                buf.drain(..end + len);
                return Some((head, body));
            }
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(r.as_bytes()).await;
}

async fn connection(mut stream: TcpStream, state: State) {
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut stream, &mut buf).await {
        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
        if target.starts_with("/socket/")
            && head.to_ascii_lowercase().contains("upgrade: websocket")
        {
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            websocket(stream, buf, state).await;
            return;
        }
        let path = target.split('?').next().unwrap_or_default();
        if path == "/api/v1/companies/acme/workspaces/w/channels" {
            let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = input["resource"]["id"].as_str().unwrap().to_owned();
            state.borrow_mut().created.push(id);
            respond(&mut stream, "201 Created", "{}").await;
            continue;
        }
        let Some(channel) = path
            .strip_prefix("/api/v1/channels/")
            .and_then(|p| p.strip_suffix("/messages"))
        else {
            respond(&mut stream, "404 Not Found", "{}").await;
            continue;
        };
        let room = format!("/channels/{channel}/messages");
        let missing = {
            let st = state.borrow();
            !st.created.is_empty() && !st.created.iter().any(|c| c == channel)
        };
        if missing {
            respond(&mut stream, "404 Not Found", "{}").await;
            continue;
        }
        if head.starts_with("GET ") {
            let token = format!("room:{room}");
            let body = serde_json::json!({"resources": [], "websockets": [{"room": room, "token": token}]});
            respond(&mut stream, "200 OK", &body.to_string()).await;
        } else {
            let input: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let event = serde_json::json!({
                "action": "created", "room": room, "type": "message", "path": format!("{room}/x"),
                "resource": input["resource"],
            });
            let frame = format!("42[\"realtime:resource\",{event}]");
            {
                let mut st = state.borrow_mut();
                let n = st.publishes;
                st.publishes += 1;
                let members = st.rooms.get(&room).cloned().unwrap_or_default();
                for (i, m) in members.iter().enumerate() {
                    if n == DROP_FIRST_MEMBER_OF && i == 0 {
                        continue;
                    }
                    let _ = m.send(frame.clone());
                    if n == DUPLICATE_TO_ROOM {
                        let _ = m.send(frame.clone());
                    }
                }
                if n == MISROUTE_ONE
                    && let Some((_, other)) = st.rooms.iter().find(|(name, _)| **name != room)
                {
                    let _ = other[0].send(frame.clone());
                }
            }
            respond(
                &mut stream,
                "201 Created",
                &serde_json::json!({"resource": input["resource"]}).to_string(),
            )
            .await;
        }
    }
}

async fn websocket(stream: TcpStream, mut buf: Vec<u8>, state: State) {
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::task::spawn_local(async move {
        while let Some(text) = rx.recv().await {
            let mut out = Vec::new();
            ws::encode_frame(&mut out, ws::Opcode::Text, text.as_bytes(), None);
            if wr.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    let _ = tx.send(r#"0{"sid":"fake","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#.to_owned());
    loop {
        while let Some(h) = ws::parse_header(&buf, 1 << 20).unwrap() {
            let mut payload = buf[h.header_bytes..h.frame_bytes()].to_vec();
            buf.drain(..h.frame_bytes());
            if let Some(m) = h.mask {
                ws::apply_mask(&mut payload, m);
            }
            let text = String::from_utf8(payload).unwrap();
            if text == "40" {
                let _ = tx.send(r#"40{"sid":"s"}"#.to_owned());
            } else if let Some(rest) = text.strip_prefix("42[\"authenticate\",") {
                let arg: serde_json::Value =
                    serde_json::from_str(rest.strip_suffix(']').unwrap()).unwrap();
                let payload = arg["token"].as_str().unwrap().split('.').nth(1).unwrap();
                use base64::Engine as _;
                let claims: serde_json::Value = serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(payload)
                        .unwrap(),
                )
                .unwrap();
                assert!(claims["sub"].as_str().unwrap().starts_with("user-"));
                assert!(claims["exp"].as_u64().is_some());
                if !state.borrow().created.is_empty() {
                    assert_eq!(claims["companies"], serde_json::json!(["acme"]));
                }
                let _ = tx.send(r#"42["authenticated"]"#.to_owned());
            } else if let Some(rest) = text.strip_prefix("42[\"realtime:join\",") {
                let arg: serde_json::Value =
                    serde_json::from_str(rest.strip_suffix(']').unwrap()).unwrap();
                let name = arg["name"].as_str().unwrap().to_owned();
                assert_eq!(arg["token"].as_str().unwrap(), format!("room:{name}"));
                state
                    .borrow_mut()
                    .rooms
                    .entry(name.clone())
                    .or_default()
                    .push(tx.clone());
                let _ = tx.send(format!(
                    "42[\"realtime:join:success\",{{\"name\":\"{name}\"}}]"
                ));
            } else if let Some(rest) = text.strip_prefix("42") {
                // echo with an ack: 42<id>["echo",<arg>] -> 43<id>[<arg>]
                let (id, array) = rest.split_at(rest.find('[').unwrap());
                let arg = array
                    .strip_prefix("[\"echo\",")
                    .unwrap()
                    .strip_suffix(']')
                    .unwrap();
                let _ = tx.send(format!("43{id}[{arg}]"));
            }
        }
        if rd.read_buf(&mut buf).await.unwrap_or(0) == 0 {
            return;
        }
    }
}

fn config(addr: SocketAddr, scenario: Scenario, clients: usize, rooms: usize) -> Config {
    Config {
        scenario,
        label: "fake".to_owned(),
        addr,
        addrs: vec![addr],
        extra_server_pids: Vec::new(),
        host: addr.to_string(),
        socket_path: "/socket/".to_owned(),
        collection: "/channels/{room}/messages".to_owned(),
        jwt_secret: "test-secret-test-secret-test-secret".to_owned(),
        claims: serde_json::Map::new(),
        create_rooms_path: None,
        server_pid: Some(std::process::id()),
        clients,
        rooms,
        publish_rate_per_s: 40.0,
        duration_s: 1.0,
        polling_share: 0.0,
        publishers: 2,
        echo_rate_per_s: 5.0,
        payload_bytes: 16,
        drain_s: 5.0,
        setup_timeout_s: 60.0,
        connect_concurrency: 16,
        source_ips: 4,
        outstanding_per_client_max: 4,
        progress: false,
    }
}

fn run(cfg: Config) -> Summary {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new()
        .block_on(&rt, scenario::run(cfg))
        .unwrap()
}

#[test]
fn fanout_counts_exactly_the_faults_the_server_made() {
    let addr = start_fake_server();
    // 12 clients in 3 rooms of 4.
    let s = run(config(addr, Scenario::Fanout, 12, 3));
    assert_eq!(
        (s.clients_ready, s.clients_failed, s.clients_lost),
        (12, 0, 0)
    );
    assert!(
        s.publishes_ok > MISROUTE_ONE,
        "{} publishes",
        s.publishes_ok
    );
    assert_eq!(s.publishes_failed, 0);
    assert_eq!(s.deliveries_expected, s.publishes_ok * 4);
    assert_eq!(s.missed, 1);
    assert_eq!(s.duplicated, 4);
    assert_eq!(s.misrouted, 1);
    assert_eq!(s.unexpected, 0);
    assert_eq!(s.malformed, 0);
    assert_eq!(s.deliveries, s.deliveries_expected - 1);
    assert_eq!(s.latency_us.count, s.deliveries);
    assert!(s.latency_us.p50 <= s.latency_us.p99 && s.latency_us.p99 <= s.latency_us.max);
    // The server under measurement is this process: its CPU was read.
    assert!(s.server_cpu_s.is_some());
    let json: serde_json::Value = serde_json::from_str(&s.json_line()).unwrap();
    assert_eq!(json["missed"], 1);
    assert_eq!(json["scenario"], "fanout");
}

#[test]
fn rooms_are_created_first_and_tokens_carry_the_extra_claims() {
    let addr = start_fake_server();
    let mut cfg = config(addr, Scenario::Fanout, 6, 3);
    cfg.claims
        .insert("companies".to_owned(), serde_json::json!(["acme"]));
    cfg.create_rooms_path = Some("/companies/acme/workspaces/w/channels".to_owned());
    let s = run(cfg);
    assert_eq!((s.clients_ready, s.clients_failed), (6, 0));
    assert_eq!(s.deliveries_expected, s.publishes_ok * 2);
    assert_eq!(s.missed, 1);
}

#[test]
fn hotroom_delivers_every_publish_to_every_member_but_the_faults() {
    let addr = start_fake_server();
    let s = run(config(addr, Scenario::Hotroom, 6, 1));
    assert_eq!(s.clients_ready, 6);
    assert!(s.publishes_ok > MISROUTE_ONE);
    assert_eq!(s.deliveries_expected, s.publishes_ok * 6);
    // One room only: the misrouted event has no other room to go to.
    assert_eq!((s.missed, s.duplicated, s.misrouted), (1, 6, 0));
    assert_eq!(s.deliveries, s.deliveries_expected - 1);
}

#[test]
fn echo_counts_every_ack() {
    let addr = start_fake_server();
    let s = run(config(addr, Scenario::Echo, 5, 1));
    assert_eq!(s.clients_ready, 5);
    assert!(s.acks_sent > 0);
    assert_eq!(s.acks_received, s.acks_sent);
    assert_eq!(s.ack_rtt_us.count, s.acks_sent);
}

#[test]
fn a_server_that_is_not_listening_is_a_setup_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = tokio::task::LocalSet::new()
        .block_on(&rt, scenario::run(config(port, Scenario::Fanout, 2, 1)));
    assert!(r.is_err());
}

#[test]
fn publish_has_rooms_of_one_and_reports_cpu_per_crud_event() {
    let addr = start_fake_server();
    let s = run(config(addr, Scenario::Publish, 4, 99));
    assert_eq!(s.rooms, 4, "one room per client, whatever --rooms says");
    assert_eq!(s.clients_ready, 4);
    assert!(s.publishes_ok > MISROUTE_ONE);
    assert_eq!(s.deliveries_expected, s.publishes_ok, "one member per room");
    assert_eq!((s.missed, s.duplicated, s.misrouted), (1, 1, 1));
    assert!(s.server_cpu_us_per_crud_event.is_some());
    let json: serde_json::Value = serde_json::from_str(&s.json_line()).unwrap();
    assert_eq!(json["scenario"], "publish");
    assert_eq!(json["publish_rate_target_per_s"], 40.0);
}

#[test]
fn cluster_spreads_clients_and_publishes_over_the_nodes_and_reports_cross_node_latency() {
    let addrs = start_fake_cluster(2);
    let mut cfg = config(addrs[0], Scenario::Cluster, 16, 2);
    cfg.addrs = addrs;
    // The second "node" is this process too: its CPU is added.
    cfg.extra_server_pids = vec![std::process::id()];
    let s = run(cfg);
    assert_eq!((s.clients_ready, s.clients_failed), (16, 0));
    assert!(
        s.publishes_ok > MISROUTE_ONE,
        "{} publishes",
        s.publishes_ok
    );
    assert_eq!(s.deliveries_expected, s.publishes_ok * 8);
    assert_eq!((s.missed, s.duplicated, s.misrouted), (1, 8, 1));
    assert_eq!(s.nodes, 2);
    // Room r has 4 members on each node (client i on node (i / 2) % 2) and is published on node r % 2: half the
    // deliveries crossed nodes (the one missed may be either).
    let cross = s.latency_cross_node_us.expect("cross-node latency").count;
    assert!(
        cross.abs_diff(s.deliveries / 2) <= 1,
        "{cross} of {}",
        s.deliveries
    );
    let json: serde_json::Value = serde_json::from_str(&s.json_line()).unwrap();
    assert_eq!(json["scenario"], "cluster");
    assert!(json["latency_cross_node_us"]["p50"].is_u64(), "{json}");
}
