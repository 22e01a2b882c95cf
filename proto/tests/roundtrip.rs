//! Property tests: arbitrary packets of every kind, both revisions, encode then decode to themselves.

mod common;

use std::borrow::Cow;

use common::frames;

use proptest::prelude::*;
use shardcast_proto::engine::{self, Packet as E};
use shardcast_proto::socket::{self, Packet as S, RESERVED_EVENTS};
use shardcast_proto::{
    Decoded, EioVersion, EncodedMessage, Frame, Handshake, Limits, PayloadDecoder, PayloadForm,
    Progress, RawJson, SioVersion, Value, decode_payload, encode_payload,
};

fn version() -> impl Strategy<Value = EioVersion> {
    prop_oneof![Just(EioVersion::V3), Just(EioVersion::V4)]
}

/// Text without the v4 record separator (the protocol assumes data never contains it).
fn text() -> impl Strategy<Value = String> {
    "[^\u{1e}]{0,40}"
}

fn eio_packet() -> impl Strategy<Value = E<'static>> {
    prop_oneof![
        text().prop_map(|s| E::Open(Cow::Owned(s))),
        Just(E::Close),
        text().prop_map(|s| E::Ping(Cow::Owned(s))),
        text().prop_map(|s| E::Pong(Cow::Owned(s))),
        text().prop_map(|s| E::Message(Cow::Owned(s))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| E::Binary(Cow::Owned(b))),
        Just(E::Upgrade),
        Just(E::Noop),
    ]
}

fn json_value(binary: bool) -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        // Floats with short decimal forms: serde_json's default float parsing is exact for those.
        (any::<i16>(), 0i32..8).prop_map(|(m, e)| Value::Number(
            serde_json::Number::from_f64(f64::from(m) / 2f64.powi(e)).expect("finite")
        )),
        any::<String>().prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(move |b| if binary {
            Value::Binary(b)
        } else {
            Value::Null
        }),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{0,6}", inner), 0..4).prop_map(Value::Object),
        ]
    })
    .boxed()
}

fn nsp() -> impl Strategy<Value = String> {
    prop_oneof![Just("/".to_owned()), "/[a-zA-Z0-9_?=&-]{1,12}"]
}

fn event_name() -> impl Strategy<Value = String> {
    any::<String>().prop_filter("not reserved", |n| !RESERVED_EVENTS.contains(&n.as_str()))
}

fn ack_id() -> impl Strategy<Value = u64> {
    0..=Limits::DEFAULT.ack_id_max
}

/// A packet and, for EVENT and ACK, the argument values (binary included) it was built from.
fn sio_packet(version: SioVersion) -> impl Strategy<Value = (S, Option<Vec<Value>>)> {
    let args = proptest::collection::vec(json_value(true), 0..4);
    let object =
        proptest::collection::vec(("[a-z]{0,6}", json_value(false)), 0..4).prop_map(Value::Object);
    prop_oneof![
        (nsp(), proptest::option::of(object)).prop_map(|(nsp, data)| {
            (
                S::Connect {
                    nsp,
                    data: data.map(|d| d.split_binary().0),
                },
                None,
            )
        }),
        nsp().prop_map(|nsp| (S::Disconnect { nsp }, None)),
        (
            nsp(),
            proptest::option::of(ack_id()),
            event_name(),
            args.clone()
        )
            .prop_map(|(nsp, id, name, args)| {
                let (json, attachments) = Value::Array(args.clone()).split_binary();
                (
                    S::Event {
                        nsp,
                        id,
                        name,
                        args: json,
                        attachments,
                    },
                    Some(args),
                )
            }),
        (nsp(), ack_id(), args).prop_map(|(nsp, id, args)| {
            let (json, attachments) = Value::Array(args.clone()).split_binary();
            (
                S::Ack {
                    nsp,
                    id,
                    args: json,
                    attachments,
                },
                Some(args),
            )
        }),
        (nsp(), any::<String>())
            .prop_map(move |(nsp, msg)| (S::connect_error(version, &nsp, &msg), None)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn engineio_websocket_frames(v in version(), p in eio_packet()) {
        let decoded = match p.encode(v) {
            engine::WsFrame::Text(t) => E::decode_text(&t).map(E::into_owned),
            engine::WsFrame::Binary(b) => E::decode_binary(v, &b).map(E::into_owned),
        };
        prop_assert_eq!(decoded, Ok(p));
    }

    #[test]
    fn engineio_polling_payloads(
        v in version(),
        supports_binary in any::<bool>(),
        packets in proptest::collection::vec(eio_packet(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut scratch = Vec::new();
        let fs = frames(&packets, &mut scratch);
        let form = PayloadForm::for_frames(v, supports_binary, &fs);
        let mut body = Vec::new();
        encode_payload(v, form, &fs, &mut body);
        prop_assert_eq!(&decode_payload(v, form, &body, &Limits::default()).unwrap(), &packets);
        // The same body streamed in chunks.
        let mut d = PayloadDecoder::new(v, form, Limits::default());
        let mut got = Vec::new();
        for c in body.chunks(chunk) {
            d.push(c).unwrap();
            while let Progress::Complete(p) = d.next_packet().unwrap() {
                got.push(p);
            }
        }
        d.finish();
        loop {
            match d.next_packet().unwrap() {
                Progress::Complete(p) => got.push(p),
                Progress::Finished => break,
                Progress::Partial => prop_assert!(false, "partial after finish"),
            }
        }
        prop_assert_eq!(got, packets);
    }

    #[test]
    fn socketio_packets_v5((p, args) in sio_packet(SioVersion::V5), v in version()) {
        roundtrip(SioVersion::V5, v, p, args)?;
    }

    #[test]
    fn socketio_packets_v4((p, args) in sio_packet(SioVersion::V4), v in version()) {
        roundtrip(SioVersion::V4, v, p, args)?;
    }

    #[test]
    fn handshakes(sid in any::<String>(), ws in any::<bool>(), i in any::<u64>(), t in any::<u64>(), max in proptest::option::of(any::<u64>())) {
        let h = Handshake {
            sid,
            upgrades: if ws { vec!["websocket".into()] } else { vec![] },
            ping_interval_ms: i,
            ping_timeout_ms: t,
            max_payload_bytes: max,
        };
        let text = h.to_packet_text();
        prop_assert_eq!(E::decode_text(&text).unwrap(), E::Open(Cow::Borrowed(&text[1..])));
        prop_assert_eq!(Handshake::parse(&text[1..]).unwrap(), h);
    }

    #[test]
    fn raw_json_values(v in json_value(true)) {
        let (json, attachments) = v.split_binary();
        prop_assert_eq!(RawJson::new(json.as_str()), Ok(json.clone()));
        prop_assert_eq!(json.to_value(&attachments).unwrap(), v);
    }
}

/// Encodes `p` as the server would send it (one `EncodedMessage`, websocket frames of Engine.IO revision `eio`),
/// decodes it back through the Engine.IO and Socket.IO decoders, and checks packet and argument values.
fn roundtrip(
    sio: SioVersion,
    eio: EioVersion,
    p: S,
    args: Option<Vec<Value>>,
) -> Result<(), TestCaseError> {
    let msg = EncodedMessage::new(&p);
    let mut d = socket::Decoder::new(sio, Limits::default());
    let text = match E::decode_text(msg.ws_text()).unwrap() {
        E::Message(t) => t.into_owned(),
        other => return Err(TestCaseError::fail(format!("{other:?}"))),
    };
    let mut got = d.decode_text(&text).unwrap();
    for frame in msg.ws_binary(eio) {
        prop_assert_eq!(&got, &Decoded::Partial);
        let E::Binary(data) = E::decode_binary(eio, frame).unwrap() else {
            return Err(TestCaseError::fail("binary frame did not decode to binary"));
        };
        got = d.decode_binary(&data).unwrap();
    }
    prop_assert_eq!(&got, &Decoded::Complete(p.clone()));
    if let (
        Some(args),
        S::Event {
            args: json,
            attachments,
            ..
        }
        | S::Ack {
            args: json,
            attachments,
            ..
        },
    ) = (args, &p)
    {
        prop_assert_eq!(json.to_value(attachments).unwrap(), Value::Array(args));
    }
    // The polling form of the same message decodes to the same Engine.IO packets.
    let frames: Vec<Frame<'_>> = msg.frames().collect();
    for form in [PayloadForm::Text, PayloadForm::Binary] {
        let mut body = Vec::new();
        encode_payload(eio, form, &frames, &mut body);
        let packets = decode_payload(eio, form, &body, &Limits::default()).unwrap();
        prop_assert_eq!(packets.len(), frames.len());
        prop_assert_eq!(&packets[0], &E::Message(Cow::Borrowed(&text)));
    }
    Ok(())
}
