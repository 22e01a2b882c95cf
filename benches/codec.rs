//! Codec benches: encode and decode per packet type, throughput in bytes of wire form.
//!
//! `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shardcast_proto::engine::Packet as E;
use shardcast_proto::socket;
use shardcast_proto::{
    EioVersion, EncodedMessage, Frame, Limits, PayloadForm, RawJson, SioVersion, decode_payload,
    encode_payload,
};

const PH: &str = r#"{"_placeholder":true,"num":0}"#;

fn resource() -> serde_json::Value {
    serde_json::json!({
        "action": "updated",
        "room": "/channels/3f1c6a56-8f0b-11ee-b9d1-0242ac120002/messages",
        "type": "message",
        "path": "/messages/3f1c6a56-8f0b-11ee-b9d1-0242ac120002",
        "resource": {"id": "3f1c6a56-8f0b-11ee-b9d1-0242ac120002", "text": "hello, world", "sent": 1700000000000u64,
                     "reactions": [{"emoji": "+1", "count": 3}], "edited": false}
    })
}

fn sio_cases() -> Vec<(&'static str, String, Vec<Vec<u8>>)> {
    let res = resource().to_string();
    vec![
        (
            "connect",
            r#"0/admin,{"token":"eyJhbGciOiJIUzI1NiJ9.e30.abc"}"#.to_owned(),
            vec![],
        ),
        ("disconnect", "1/admin,".to_owned(), vec![]),
        ("event", format!(r#"2["realtime:resource",{res}]"#), vec![]),
        (
            "event_ack",
            r#"2456["message-with-ack",1,"2",{"3":[false]}]"#.to_owned(),
            vec![],
        ),
        ("ack", r#"3456[1,"2",{"3":[false]}]"#.to_owned(), vec![]),
        (
            "connect_error",
            r#"4/random,{"message":"Invalid namespace"}"#.to_owned(),
            vec![],
        ),
        (
            "binary_event",
            format!(r#"51-["upload",{PH}]"#),
            vec![vec![7u8; 1024]],
        ),
        (
            "binary_ack",
            format!(r#"61-15["bar",{PH}]"#),
            vec![vec![7u8; 1024]],
        ),
    ]
}

fn socketio(c: &mut Criterion) {
    let limits = Limits::default();
    for (name, wire, attachments) in sio_cases() {
        let bytes = wire.len() + attachments.iter().map(Vec::len).sum::<usize>();
        let mut g = c.benchmark_group(format!("socketio/{name}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function("decode", |b| {
            b.iter(|| {
                let mut d = socket::Decoder::new(SioVersion::V5, limits);
                let mut r = d.decode_text(black_box(&wire)).unwrap();
                for a in &attachments {
                    r = d.decode_binary(a).unwrap();
                }
                r
            })
        });
        let mut d = socket::Decoder::new(SioVersion::V5, limits);
        let mut packet = d.decode_text(&wire).unwrap();
        for a in &attachments {
            packet = d.decode_binary(a).unwrap();
        }
        let shardcast_proto::Decoded::Complete(packet) = packet else {
            panic!("incomplete")
        };
        g.bench_function("encode", |b| {
            b.iter(|| EncodedMessage::new(black_box(&packet)))
        });
        g.finish();
    }

    // The broadcast path: serialize a struct straight into a shareable frame.
    let res = resource();
    let len = EncodedMessage::event("/", "realtime:resource", &res)
        .unwrap()
        .ws_text()
        .len();
    let mut g = c.benchmark_group("socketio/broadcast_event");
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("encode_serialize", |b| {
        b.iter(|| EncodedMessage::event("/", "realtime:resource", black_box(&res)).unwrap())
    });
    let msg = EncodedMessage::event("/", "realtime:resource", &res).unwrap();
    g.bench_function("clone_per_recipient", |b| {
        b.iter(|| black_box(&msg).clone())
    });
    g.finish();
}

fn engineio(c: &mut Criterion) {
    let text = format!(r#"42["realtime:resource",{}]"#, resource());
    let mut g = c.benchmark_group("engineio/message");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("decode", |b| {
        b.iter(|| E::decode_text(black_box(&text)).unwrap())
    });
    let p = E::decode_text(&text).unwrap();
    g.bench_function("encode", |b| {
        b.iter(|| black_box(&p).encode(EioVersion::V4))
    });
    g.finish();

    let bin = vec![9u8; 4096];
    let mut g = c.benchmark_group("engineio/binary_v3");
    g.throughput(Throughput::Bytes(bin.len() as u64 + 1));
    let framed = shardcast_proto::engine::ws_binary(EioVersion::V3, &bin);
    g.bench_function("decode", |b| {
        b.iter(|| E::decode_binary(EioVersion::V3, black_box(&framed)).unwrap())
    });
    g.bench_function("encode", |b| {
        b.iter(|| shardcast_proto::engine::ws_binary(EioVersion::V3, black_box(&bin)))
    });
    g.finish();
}

fn polling(c: &mut Criterion) {
    let limits = Limits::default();
    let event = format!(r#"42["realtime:resource",{}]"#, resource());
    let bin = vec![5u8; 1024];
    let mut frames: Vec<Frame<'_>> = (0..16).map(|_| Frame::Text(&event)).collect();
    frames.push(Frame::Text("2"));
    let mut with_binary = frames.clone();
    with_binary.push(Frame::Binary(&bin));
    let cases = [
        ("v4_text", EioVersion::V4, PayloadForm::Text, &frames),
        (
            "v4_with_binary",
            EioVersion::V4,
            PayloadForm::Text,
            &with_binary,
        ),
        ("v3_text", EioVersion::V3, PayloadForm::Text, &frames),
        (
            "v3_text_with_binary",
            EioVersion::V3,
            PayloadForm::Text,
            &with_binary,
        ),
        (
            "v3_binary_form",
            EioVersion::V3,
            PayloadForm::Binary,
            &with_binary,
        ),
    ];
    for (name, v, form, frames) in cases {
        let mut body = Vec::new();
        encode_payload(v, form, frames, &mut body);
        let mut g = c.benchmark_group(format!("polling/{name}"));
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function("encode", |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(body.len());
                encode_payload(v, form, black_box(frames), &mut out);
                out
            })
        });
        g.bench_function("decode", |b| {
            b.iter(|| decode_payload(v, form, black_box(&body), &limits).unwrap())
        });
        g.finish();
    }
}

/// serde_json against simd-json for parsing a packet's data into a tree, at three sizes; decides
/// `shardcast_proto::json::SIMD_JSON_MIN_BYTES`.
fn json(c: &mut Criterion) {
    let small = r#"{"name":"general","token":"eyJhbGciOiJIUzI1NiJ9.e30.abc"}"#.to_owned();
    let medium = serde_json::to_string(&vec![resource(); 3]).unwrap();
    let large = serde_json::to_string(&vec![resource(); 48]).unwrap();
    for (name, doc) in [("small", &small), ("medium", &medium), ("large", &large)] {
        let mut g = c.benchmark_group(format!("json/parse_{name}"));
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_function("serde_json", |b| {
            b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(doc)).unwrap())
        });
        g.bench_function("simd_json", |b| {
            b.iter(|| {
                let mut buf = black_box(doc).as_bytes().to_vec();
                simd_json::serde::from_slice::<serde_json::Value>(&mut buf).unwrap()
            })
        });
        let raw = RawJson::new(doc.as_str()).unwrap();
        g.bench_function("raw_json_parse", |b| {
            b.iter(|| black_box(&raw).parse::<serde_json::Value>().unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, socketio, engineio, polling, json);
criterion_main!(benches);
