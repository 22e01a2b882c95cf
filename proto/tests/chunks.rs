//! Every split of every polling payload: the streaming decoder must give the same packets (or the same error)
//! however the body arrives.

use shardcast_proto::engine::Packet;
use shardcast_proto::{
    EioVersion, Error, Limits, PayloadDecoder, PayloadForm, Progress, decode_payload,
};

/// Feeds `chunks` one by one, draining after each; then finishes and drains.
fn feed(
    version: EioVersion,
    form: PayloadForm,
    chunks: &[&[u8]],
) -> Result<Vec<Packet<'static>>, Error> {
    let mut d = PayloadDecoder::new(version, form, Limits::default());
    let mut out = Vec::new();
    for chunk in chunks {
        d.push(chunk)?;
        loop {
            match d.next_packet()? {
                Progress::Complete(p) => out.push(p),
                Progress::Partial => break,
                Progress::Finished => panic!("finished before finish()"),
            }
        }
    }
    d.finish();
    loop {
        match d.next_packet()? {
            Progress::Complete(p) => out.push(p),
            Progress::Partial => panic!("partial after finish()"),
            Progress::Finished => return Ok(out),
        }
    }
}

fn check_splits(version: EioVersion, form: PayloadForm, data: &[u8]) {
    let whole = decode_payload(version, form, data, &Limits::default());
    for i in 1..data.len() {
        // Chunks of size i.
        let chunks: Vec<&[u8]> = data.chunks(i).collect();
        assert_eq!(
            feed(version, form, &chunks),
            whole,
            "{version:?} {form:?} chunks of {i}: {data:?}"
        );
        // Two pieces split at i.
        let (a, b) = data.split_at(i);
        assert_eq!(
            feed(version, form, &[a, b]),
            whole,
            "{version:?} {form:?} split at {i}: {data:?}"
        );
    }
    // Byte by byte with empty pushes in between.
    let mut chunks: Vec<&[u8]> = Vec::new();
    for i in 0..data.len() {
        chunks.push(&data[i..i + 1]);
        chunks.push(&[]);
    }
    assert_eq!(feed(version, form, &chunks), whole);
}

#[test]
fn v4_payloads_at_every_split() {
    let bodies: &[&[u8]] = &[
        b"4hello\x1e2\x1e4world",
        b"4hello\x1ebAQIDBA==",
        b"42[\"hello\"]\x1e42[\"world\"]",
        "4€😀\x1e4é".as_bytes(),
        b"6",
        b"b",
        b"4a\x1e",
        b"4a\x1e\x1e4b",
        b"4a\x1ebA!==",
        b"4a\x1e9",
    ];
    for body in bodies {
        check_splits(EioVersion::V4, PayloadForm::Text, body);
    }
    assert!(
        decode_payload(
            EioVersion::V4,
            PayloadForm::Text,
            bodies[0],
            &Limits::default()
        )
        .is_ok()
    );
}

#[test]
fn v3_text_payloads_at_every_split() {
    let open = r#"96:0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}2:40"#;
    let bodies: &[&[u8]] = &[
        open.as_bytes(),
        b"6:4hello6:4world",
        "6:4hello2:4€".as_bytes(),
        "2:4€10:b4AQIDBA==".as_bytes(),
        "3:4😀1:2".as_bytes(),
        b"0:",
        b"0:1:6",
        b"11:42[\"hello\"]11:42[\"world\"]",
        b"5:4a",
        b"2:4a3",
        "2:4😀".as_bytes(),
        b"abc",
    ];
    for body in bodies {
        check_splits(EioVersion::V3, PayloadForm::Text, body);
    }
}

#[test]
fn v3_binary_payloads_at_every_split() {
    let mut long = vec![0, 1, 2, 0xff, b'4'];
    long.extend_from_slice(&[b'y'; 11]);
    long.extend_from_slice(&[1, 4, 0xff, 4, 9, 8, 7]);
    let bodies: Vec<Vec<u8>> = vec![
        vec![
            0, 4, 0xff, b'4', 0xe2, 0x82, 0xac, 1, 5, 0xff, 4, 1, 2, 3, 4,
        ],
        long,
        vec![0, 5, 0xff, b'4'],
        vec![1, 2, 0xff, 2, 1],
        vec![2, 1, 0xff, b'4'],
    ];
    for body in &bodies {
        check_splits(EioVersion::V3, PayloadForm::Binary, body);
    }
}
