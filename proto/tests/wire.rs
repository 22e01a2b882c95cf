//! Exact wire strings: every packet type of every revision, the examples of the Engine.IO v3/v4 and Socket.IO
//! v4/v5 protocol documents and conformance suites, and the malformed inputs those suites send, each mapped to its
//! precise error.

mod common;

use std::borrow::Cow;

use common::frames;

use shardcast_proto::engine::{self, Packet as E};
use shardcast_proto::socket::{self, Packet as S};
use shardcast_proto::{
    Decoded, EioVersion, EncodedMessage, Error, Frame, Handshake, Limit, Limits, PayloadForm,
    RawJson, SioVersion, Value, decode_payload, encode_payload,
};

const V3: EioVersion = EioVersion::V3;
const V4: EioVersion = EioVersion::V4;

fn raw(s: &str) -> RawJson {
    RawJson::new(s).expect("test JSON is valid")
}

fn t(s: &str) -> E<'static> {
    E::Message(Cow::Owned(s.to_owned()))
}

fn bin(b: &[u8]) -> E<'static> {
    E::Binary(Cow::Owned(b.to_vec()))
}

fn connect(nsp: &str, data: Option<&str>) -> S {
    S::Connect {
        nsp: nsp.into(),
        data: data.map(raw),
    }
}

fn event(nsp: &str, id: Option<u64>, name: &str, args: &str, attachments: &[&[u8]]) -> S {
    S::Event {
        nsp: nsp.into(),
        id,
        name: name.into(),
        args: raw(args),
        attachments: attachments.iter().map(|a| a.to_vec()).collect(),
    }
}

fn ack(nsp: &str, id: u64, args: &str, attachments: &[&[u8]]) -> S {
    S::Ack {
        nsp: nsp.into(),
        id,
        args: raw(args),
        attachments: attachments.iter().map(|a| a.to_vec()).collect(),
    }
}

fn connect_error(nsp: &str, data: &str) -> S {
    S::ConnectError {
        nsp: nsp.into(),
        data: raw(data),
    }
}

fn disconnect(nsp: &str) -> S {
    S::Disconnect { nsp: nsp.into() }
}

/// Engine.IO text packet: decodes to `expected` and `expected` encodes back to `wire` (both revisions).
fn check_eio(wire: &str, expected: E<'_>) {
    assert_eq!(E::decode_text(wire).unwrap(), expected, "decode {wire:?}");
    for v in [V3, V4] {
        assert_eq!(
            expected.encode(v),
            engine::WsFrame::Text(wire.to_owned()),
            "encode {wire:?}"
        );
    }
}

/// Socket.IO: `wire` (+ attachments as following binary frames) decodes to `expected`; with `canonical`,
/// `expected` encodes back to exactly `wire` (and the Engine.IO frame is `4` + `wire`).
fn check_sio_full(
    version: SioVersion,
    wire: &str,
    attachments: &[&[u8]],
    expected: S,
    canonical: bool,
) {
    let mut d = socket::Decoder::new(version, Limits::default());
    let mut got = d
        .decode_text(wire)
        .unwrap_or_else(|e| panic!("decode {wire:?}: {e}"));
    for (i, a) in attachments.iter().enumerate() {
        assert_eq!(got, Decoded::Partial, "{wire:?} before attachment {i}");
        got = d.decode_binary(a).unwrap();
    }
    assert_eq!(got, Decoded::Complete(expected.clone()), "decode {wire:?}");
    assert!(!d.is_waiting_for_attachments());
    if canonical {
        assert_eq!(expected.encode(), wire, "encode");
        let msg = EncodedMessage::new(&expected);
        assert_eq!(&**msg.ws_text(), format!("4{wire}"));
        let v4: Vec<&[u8]> = msg.ws_binary(V4).iter().map(|a| &a[..]).collect();
        assert_eq!(v4, attachments);
        for (framed, a) in msg.ws_binary(V3).iter().zip(attachments) {
            assert_eq!(framed[0], 4);
            assert_eq!(&framed[1..], *a);
        }
    }
}

fn check_sio(version: SioVersion, wire: &str, attachments: &[&[u8]], expected: S) {
    check_sio_full(version, wire, attachments, expected, true)
}

fn check_sio_both(wire: &str, attachments: &[&[u8]], expected: S) {
    check_sio(SioVersion::V4, wire, attachments, expected.clone());
    check_sio(SioVersion::V5, wire, attachments, expected);
}

/// A polling body decodes to `packets` and `packets` encode to exactly `body`.
fn check_payload(version: EioVersion, form: PayloadForm, body: &[u8], packets: &[E<'_>]) {
    let got = decode_payload(version, form, body, &Limits::default())
        .unwrap_or_else(|e| panic!("{body:?}: {e}"));
    assert_eq!(got, packets, "decode {body:?}");
    let mut scratch = Vec::new();
    let frames = frames(packets, &mut scratch);
    let mut out = Vec::new();
    encode_payload(version, form, &frames, &mut out);
    assert_eq!(out, body, "encode {:?}", String::from_utf8_lossy(body));
}

fn sio_err(version: SioVersion, wire: &str) -> Error {
    let mut d = socket::Decoder::new(version, Limits::default());
    match d.decode_text(wire) {
        Err(e) => e,
        Ok(p) => panic!("{wire:?} decoded to {p:?}"),
    }
}

fn payload_err(version: EioVersion, form: PayloadForm, body: &[u8]) -> Error {
    match decode_payload(version, form, body, &Limits::default()) {
        Err(e) => e,
        Ok(p) => panic!("{body:?} decoded to {p:?}"),
    }
}

const PH0: &str = r#"{"_placeholder":true,"num":0}"#;
const PH1: &str = r#"{"_placeholder":true,"num":1}"#;

#[test]
fn engineio_packets_every_type() {
    check_eio("0{\"sid\":\"x\"}", E::Open("{\"sid\":\"x\"}".into()));
    check_eio("1", E::Close);
    check_eio("2", E::Ping("".into()));
    check_eio("2probe", E::Ping("probe".into()));
    check_eio("3", E::Pong("".into()));
    check_eio("3probe", E::Pong("probe".into()));
    check_eio("4hello", t("hello"));
    check_eio("4", t(""));
    check_eio("4€ and 😀", t("€ and 😀"));
    check_eio("5", E::Upgrade);
    check_eio("6", E::Noop);
    // Data after close/upgrade/noop is dropped, as the reference parser does.
    assert_eq!(E::decode_text("1bye").unwrap(), E::Close);
    assert_eq!(E::decode_text("6x").unwrap(), E::Noop);
}

#[test]
fn engineio_binary_frames() {
    // v4: binary frames are the data as is.
    assert_eq!(
        E::decode_binary(V4, &[1, 2, 3, 4]).unwrap(),
        bin(&[1, 2, 3, 4])
    );
    assert_eq!(
        bin(&[1, 2, 3, 4]).encode(V4),
        engine::WsFrame::Binary(vec![1, 2, 3, 4])
    );
    assert_eq!(E::decode_binary(V4, &[]).unwrap(), bin(&[]));
    // v3 protocol document: `4|0|1|2|3|4|5` is a message carrying bytes 0..=5.
    assert_eq!(
        E::decode_binary(V3, &[4, 0, 1, 2, 3, 4, 5]).unwrap(),
        bin(&[0, 1, 2, 3, 4, 5])
    );
    assert_eq!(
        bin(&[0, 1, 2, 3, 4, 5]).encode(V3),
        engine::WsFrame::Binary(vec![4, 0, 1, 2, 3, 4, 5])
    );
}

#[test]
fn engineio_malformed() {
    assert_eq!(E::decode_text(""), Err(Error::EmptyPacket));
    assert_eq!(E::decode_text("7"), Err(Error::UnknownPacketType(b'7')));
    assert_eq!(E::decode_text("abc"), Err(Error::UnknownPacketType(b'a')));
    assert_eq!(E::decode_text("€"), Err(Error::UnknownPacketType(0xe2)));
    assert_eq!(E::decode_binary(V3, &[]), Err(Error::EmptyPacket));
    assert_eq!(E::decode_binary(V3, &[2, 1]), Err(Error::BinaryNotMessage));
    assert_eq!(
        E::decode_binary(V3, &[9, 1]),
        Err(Error::UnknownPacketType(9))
    );
}

#[test]
fn handshake_documents() {
    // Engine.IO v4 document and Socket.IO v5 sample session.
    let h = Handshake {
        sid: "lv_VI97HAXpY6yYWAAAC".into(),
        upgrades: vec!["websocket".into()],
        ping_interval_ms: 25000,
        ping_timeout_ms: 5000,
        max_payload_bytes: Some(1_000_000),
    };
    let wire = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}"#;
    assert_eq!(h.to_packet_text(), wire);
    assert_eq!(Handshake::parse(&wire[1..]).unwrap(), h);
    // Engine.IO v3: no maxPayload.
    let h3 = Handshake {
        max_payload_bytes: None,
        ..h.clone()
    };
    let wire3 = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#;
    assert_eq!(h3.to_packet_text(), wire3);
    assert_eq!(Handshake::parse(&wire3[1..]).unwrap(), h3);
    // v3 websocket-only sample session: no upgrades field at all.
    let ws_only = Handshake::parse(
        r#"{"sid":"lv_VI97HAXpY6yYWAAAC","pingInterval":25000,"pingTimeout":5000}"#,
    )
    .unwrap();
    assert_eq!(ws_only.upgrades, Vec::<String>::new());
    assert_eq!(ws_only.ping_interval_ms, 25000);
    // Websocket-only v4 session and a sid that needs escaping.
    let h4 = Handshake {
        sid: "a\"b".into(),
        upgrades: vec![],
        ping_interval_ms: 300,
        ping_timeout_ms: 200,
        max_payload_bytes: Some(1_000_000),
    };
    assert_eq!(
        h4.to_json(),
        r#"{"sid":"a\"b","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#
    );
    assert_eq!(Handshake::parse(&h4.to_json()).unwrap(), h4);
    assert_eq!(
        Handshake::parse(r#"{"sid":1}"#),
        Err(Error::InvalidHandshake)
    );
    assert_eq!(Handshake::parse("nope"), Err(Error::InvalidHandshake));
}

#[test]
fn polling_v4_examples() {
    let f = PayloadForm::Text;
    // Engine.IO v4 document.
    check_payload(
        V4,
        f,
        b"4hello\x1e2\x1e4world",
        &[t("hello"), E::Ping("".into()), t("world")],
    );
    check_payload(
        V4,
        f,
        b"4hello\x1ebAQIDBA==",
        &[t("hello"), bin(&[1, 2, 3, 4])],
    );
    // Socket.IO v5 sample session.
    check_payload(
        V4,
        f,
        b"42[\"hello\"]\x1e42[\"world\"]",
        &[t("2[\"hello\"]"), t("2[\"world\"]")],
    );
    check_payload(V4, f, b"40", &[t("0")]);
    check_payload(V4, f, "4€".as_bytes(), &[t("€")]);
    check_payload(V4, f, b"6", &[E::Noop]);
    check_payload(V4, f, b"1", &[E::Close]);
    check_payload(V4, f, b"b", &[bin(&[])]);
    // The binary form does not exist in v4: a v4 body is text whatever its Content-Type says.
    assert_eq!(
        PayloadForm::from_content_type(V4, Some("application/octet-stream")),
        PayloadForm::Text
    );
}

#[test]
fn polling_v3_examples() {
    let f = PayloadForm::Text;
    // Engine.IO v3 document.
    let open = r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#;
    let body = format!("96:{open}");
    check_payload(
        V3,
        f,
        body.as_bytes(),
        &[E::Open(open[1..].to_owned().into())],
    );
    check_payload(V3, f, b"4:4hey", &[t("hey")]);
    check_payload(V3, f, b"6:4hello6:4world", &[t("hello"), t("world")]);
    // Lengths count UTF-16 units, not bytes: "4€" is 2, "4😀" is 3.
    check_payload(V3, f, "6:4hello2:4€".as_bytes(), &[t("hello"), t("€")]);
    check_payload(V3, f, "3:4😀".as_bytes(), &[t("😀")]);
    check_payload(
        V3,
        f,
        "2:4€10:b4AQIDBA==".as_bytes(),
        &[t("€"), bin(&[1, 2, 3, 4])],
    );
    // Socket.IO v4 sample session.
    let body = format!("96:{open}2:40");
    check_payload(
        V3,
        f,
        body.as_bytes(),
        &[E::Open(open[1..].to_owned().into()), t("0")],
    );
    check_payload(
        V3,
        f,
        b"16:42[\"hey\",\"Jude\"]",
        &[t("2[\"hey\",\"Jude\"]")],
    );
    check_payload(
        V3,
        f,
        b"11:42[\"hello\"]11:42[\"world\"]",
        &[t("2[\"hello\"]"), t("2[\"world\"]")],
    );
    // The empty payload.
    check_payload(V3, f, b"0:", &[]);
    check_payload(V3, f, b"1:6", &[E::Noop]);
    // The binary form: "€" then <01 02 03 04> (the binary packet carries its type byte 4, counted in its length).
    let body = [
        0, 4, 0xff, b'4', 0xe2, 0x82, 0xac, 1, 5, 0xff, 4, 1, 2, 3, 4,
    ];
    check_payload(
        V3,
        PayloadForm::Binary,
        &body,
        &[t("€"), bin(&[1, 2, 3, 4])],
    );
    let mut long = vec![0, 1, 1, 0xff];
    long.extend_from_slice(b"4");
    long.extend_from_slice(&[b'x'; 10]);
    check_payload(V3, PayloadForm::Binary, &long, &[t("xxxxxxxxxx")]);
    assert_eq!(
        PayloadForm::from_content_type(V3, Some("application/octet-stream")),
        PayloadForm::Binary
    );
    assert_eq!(
        PayloadForm::from_content_type(V3, Some("text/plain;charset=UTF-8")),
        PayloadForm::Text
    );
    let bin_frames = [Frame::Text("4x"), Frame::Binary(&[1])];
    assert_eq!(
        PayloadForm::for_frames(V3, true, &bin_frames),
        PayloadForm::Binary
    );
    assert_eq!(
        PayloadForm::for_frames(V3, false, &bin_frames),
        PayloadForm::Text
    );
    assert_eq!(
        PayloadForm::for_frames(V3, true, &bin_frames[..1]),
        PayloadForm::Text
    );
    assert_eq!(
        PayloadForm::for_frames(V4, true, &bin_frames),
        PayloadForm::Text
    );
}

#[test]
fn polling_malformed() {
    let (t_, b_) = (PayloadForm::Text, PayloadForm::Binary);
    // v4
    assert_eq!(payload_err(V4, t_, b""), Error::EmptyPayload);
    assert_eq!(payload_err(V4, t_, b"4a\x1e"), Error::EmptyPacket);
    assert_eq!(payload_err(V4, t_, b"4a\x1e\x1e4b"), Error::EmptyPacket);
    assert_eq!(payload_err(V4, t_, b"\x1e4a"), Error::EmptyPacket);
    assert_eq!(payload_err(V4, t_, b"4a\x1ebA!=="), Error::InvalidBase64);
    assert_eq!(payload_err(V4, t_, b"4\xff"), Error::InvalidUtf8);
    assert_eq!(
        payload_err(V4, t_, b"4a\x1e9"),
        Error::UnknownPacketType(b'9')
    );
    // v3 text
    assert_eq!(payload_err(V3, t_, b""), Error::EmptyPayload);
    assert_eq!(payload_err(V3, t_, b"abc"), Error::InvalidPayloadLength);
    assert_eq!(payload_err(V3, t_, b":4a"), Error::InvalidPayloadLength);
    assert_eq!(payload_err(V3, t_, b"5:4a"), Error::UnexpectedEnd);
    assert_eq!(payload_err(V3, t_, b"2:4a3"), Error::UnexpectedEnd);
    assert_eq!(
        payload_err(V3, t_, "2:4😀".as_bytes()),
        Error::InvalidPayloadLength
    );
    assert_eq!(payload_err(V3, t_, b"2:7a"), Error::UnknownPacketType(b'7'));
    assert_eq!(payload_err(V3, t_, b"4:b2AA"), Error::BinaryNotMessage);
    assert_eq!(payload_err(V3, t_, b"3:b4!"), Error::InvalidBase64);
    assert_eq!(payload_err(V3, t_, b"2:4\xff"), Error::InvalidUtf8);
    assert_eq!(
        payload_err(V3, t_, b"99999999999999999999999:4"),
        Error::InvalidPayloadLength
    );
    // v3 binary
    assert_eq!(payload_err(V3, b_, b""), Error::EmptyPayload);
    assert_eq!(
        payload_err(V3, b_, &[2, 1, 0xff, b'4']),
        Error::InvalidPayloadLength
    );
    assert_eq!(
        payload_err(V3, b_, &[0, 0xff, b'4']),
        Error::InvalidPayloadLength
    );
    assert_eq!(
        payload_err(V3, b_, &[0, 1, 0xfe, b'4']),
        Error::InvalidPayloadLength
    );
    assert_eq!(
        payload_err(V3, b_, &[0, 5, 0xff, b'4']),
        Error::UnexpectedEnd
    );
    assert_eq!(payload_err(V3, b_, &[0, 1]), Error::UnexpectedEnd);
    assert_eq!(
        payload_err(V3, b_, &[1, 2, 0xff, 2, 1]),
        Error::BinaryNotMessage
    );
    assert_eq!(payload_err(V3, b_, &[1, 0, 0xff]), Error::EmptyPacket);
    assert_eq!(payload_err(V3, b_, &[0, 0, 0xff]), Error::EmptyPacket);
    // limits
    let small = Limits {
        payload_bytes_max: 8,
        packets_per_payload_max: 2,
        ..Limits::default()
    };
    let too_big = Error::LimitExceeded {
        limit: Limit::PayloadBytes,
        max: 8,
    };
    let too_many = Error::LimitExceeded {
        limit: Limit::PacketsPerPayload,
        max: 2,
    };
    assert_eq!(
        decode_payload(V4, t_, b"4123456789", &small),
        Err(too_big.clone())
    );
    assert_eq!(
        decode_payload(V4, t_, b"2\x1e2\x1e2", &small),
        Err(too_many.clone())
    );
    assert_eq!(
        decode_payload(
            V3,
            t_,
            b"1:21:21:2",
            &Limits {
                payload_bytes_max: 100,
                ..small
            }
        ),
        Err(too_many)
    );
    assert_eq!(decode_payload(V3, t_, b"9:", &small), Err(too_big));
    assert_eq!(decode_payload(V4, t_, b"2\x1e2", &small).unwrap().len(), 2);
}

#[test]
fn socketio_v5_document_examples() {
    // Connection to a namespace.
    check_sio_both("0", &[], connect("/", None));
    check_sio_both(
        r#"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
        &[],
        connect("/admin", Some(r#"{"sid":"oSO0OpakMV_3jnilAAAA"}"#)),
    );
    check_sio_both(
        r#"4{"message":"Not authorized"}"#,
        &[],
        connect_error("/", r#"{"message":"Not authorized"}"#),
    );
    let data = raw(r#"{"retry":3}"#);
    assert_eq!(
        S::connect_error_with_data("/admin", "Not \"yet\"", &data).encode(),
        r#"4/admin,{"message":"Not \"yet\"","data":{"retry":3}}"#
    );
    // Sending and receiving data.
    check_sio_both(r#"2["foo"]"#, &[], event("/", None, "foo", "[]", &[]));
    check_sio_both(
        r#"2/admin,["bar"]"#,
        &[],
        event("/admin", None, "bar", "[]", &[]),
    );
    check_sio_both(
        &format!(r#"51-["baz",{PH0}]"#),
        &[&[1, 2, 3, 4]],
        event("/", None, "baz", &format!("[{PH0}]"), &[&[1, 2, 3, 4]]),
    );
    check_sio_both(
        &format!(r#"52-/admin,["baz",{PH0},{PH1}]"#),
        &[&[1, 2], &[3, 4]],
        event(
            "/admin",
            None,
            "baz",
            &format!("[{PH0},{PH1}]"),
            &[&[1, 2], &[3, 4]],
        ),
    );
    // Acknowledgement.
    check_sio_both(r#"212["foo"]"#, &[], event("/", Some(12), "foo", "[]", &[]));
    check_sio_both(
        r#"3/admin,13["bar"]"#,
        &[],
        ack("/admin", 13, r#"["bar"]"#, &[]),
    );
    check_sio_both(
        &format!(r#"61-15["bar",{PH0}]"#),
        &[&[1, 2, 3, 4]],
        ack("/", 15, &format!(r#"["bar",{PH0}]"#), &[&[1, 2, 3, 4]]),
    );
    // Disconnection.
    check_sio_both("1", &[], disconnect("/"));
    check_sio_both("1/admin,", &[], disconnect("/admin"));
    // Sample session (without the Engine.IO `4`).
    check_sio_both(
        r#"0{"sid":"wZX3oN0bSVIhsaknAAAI"}"#,
        &[],
        connect("/", Some(r#"{"sid":"wZX3oN0bSVIhsaknAAAI"}"#)),
    );
    check_sio_both(
        r#"2["hey","Jude"]"#,
        &[],
        event("/", None, "hey", r#"["Jude"]"#, &[]),
    );
    check_sio_both("0/admin,", &[], connect("/admin", None));
    check_sio_both(
        r#"0/admin,{"sid":"-G5j-67EZFp-q59rADQM"}"#,
        &[],
        connect("/admin", Some(r#"{"sid":"-G5j-67EZFp-q59rADQM"}"#)),
    );
    check_sio_both(
        r#"2/admin,1["tellme"]"#,
        &[],
        event("/admin", Some(1), "tellme", "[]", &[]),
    );
    check_sio_both(
        &format!(r#"61-/admin,1[{PH0}]"#),
        &[&[9]],
        ack("/admin", 1, &format!("[{PH0}]"), &[&[9]]),
    );
}

#[test]
fn socketio_v5_conformance_suite_packets() {
    let v5 = SioVersion::V5;
    check_sio(
        v5,
        r#"0{"token":"123"}"#,
        &[],
        connect("/", Some(r#"{"token":"123"}"#)),
    );
    check_sio(v5, "0/custom,", &[], connect("/custom", None));
    check_sio(
        v5,
        r#"0/custom,{"token":"abc"}"#,
        &[],
        connect("/custom", Some(r#"{"token":"abc"}"#)),
    );
    // No trailing comma: the namespace runs to the end (decode only; we always write the comma).
    check_sio_full(v5, "0/random", &[], connect("/random", None), false);
    check_sio_full(v5, "1/custom", &[], disconnect("/custom"), false);
    check_sio(
        v5,
        r#"4/random,{"message":"Invalid namespace"}"#,
        &[],
        connect_error("/random", r#"{"message":"Invalid namespace"}"#),
    );
    assert_eq!(
        socket::Packet::connect_error(v5, "/random", "Invalid namespace").encode(),
        r#"4/random,{"message":"Invalid namespace"}"#
    );
    check_sio(v5, "1", &[], disconnect("/"));
    check_sio(
        v5,
        r#"2["auth",{}]"#,
        &[],
        event("/", None, "auth", "[{}]", &[]),
    );
    check_sio(
        v5,
        r#"2["auth",{"token":"123"}]"#,
        &[],
        event("/", None, "auth", r#"[{"token":"123"}]"#, &[]),
    );
    check_sio(
        v5,
        r#"2/custom,["auth",{"token":"abc"}]"#,
        &[],
        event("/custom", None, "auth", r#"[{"token":"abc"}]"#, &[]),
    );
    check_sio(
        v5,
        r#"2["message",1,"2",{"3":[true]}]"#,
        &[],
        event("/", None, "message", r#"[1,"2",{"3":[true]}]"#, &[]),
    );
    check_sio(
        v5,
        r#"2["message-back",1,"2",{"3":[true]}]"#,
        &[],
        event("/", None, "message-back", r#"[1,"2",{"3":[true]}]"#, &[]),
    );
    check_sio(
        v5,
        r#"2["message","message to main namespace"]"#,
        &[],
        event(
            "/",
            None,
            "message",
            r#"["message to main namespace"]"#,
            &[],
        ),
    );
    let two = format!("[{PH0},{PH1}]");
    check_sio(
        v5,
        &format!(r#"52-["message",{PH0},{PH1}]"#),
        &[&[1, 2, 3], &[4, 5, 6]],
        event("/", None, "message", &two, &[&[1, 2, 3], &[4, 5, 6]]),
    );
    check_sio(
        v5,
        &format!(r#"52-["message-back",{PH0},{PH1}]"#),
        &[&[1, 2, 3], &[4, 5, 6]],
        event("/", None, "message-back", &two, &[&[1, 2, 3], &[4, 5, 6]]),
    );
    check_sio(
        v5,
        r#"2456["message-with-ack",1,"2",{"3":[false]}]"#,
        &[],
        event(
            "/",
            Some(456),
            "message-with-ack",
            r#"[1,"2",{"3":[false]}]"#,
            &[],
        ),
    );
    check_sio(
        v5,
        r#"3456[1,"2",{"3":[false]}]"#,
        &[],
        ack("/", 456, r#"[1,"2",{"3":[false]}]"#, &[]),
    );
    check_sio(
        v5,
        &format!(r#"52-789["message-with-ack",{PH0},{PH1}]"#),
        &[&[1, 2, 3], &[4, 5, 6]],
        event(
            "/",
            Some(789),
            "message-with-ack",
            &two,
            &[&[1, 2, 3], &[4, 5, 6]],
        ),
    );
    check_sio(
        v5,
        &format!(r#"62-789[{PH0},{PH1}]"#),
        &[&[1, 2, 3], &[4, 5, 6]],
        ack("/", 789, &two, &[&[1, 2, 3], &[4, 5, 6]]),
    );
    // A BINARY_EVENT announcing no attachment is complete at once.
    check_sio_full(
        v5,
        r#"50-["a"]"#,
        &[],
        event("/", None, "a", "[]", &[]),
        false,
    );
    // Escaped event names are unescaped; whitespace inside the array is tolerated.
    check_sio_full(
        v5,
        r#"2["a\"b\u00e9", 1 ]"#,
        &[],
        event("/", None, "a\"bé", "[ 1 ]", &[]),
        false,
    );
    check_sio(
        v5,
        r#"2["a\"b\n"]"#,
        &[],
        event("/", None, "a\"b\n", "[]", &[]),
    );
}

#[test]
fn socketio_v4_document_examples() {
    let v4 = SioVersion::V4;
    check_sio(v4, "0", &[], connect("/", None));
    check_sio(v4, "0/admin,", &[], connect("/admin", None));
    check_sio(v4, "1/admin,", &[], disconnect("/admin"));
    check_sio(
        v4,
        r#"2["hello",1]"#,
        &[],
        event("/", None, "hello", "[1]", &[]),
    );
    check_sio(
        v4,
        r#"2/admin,456["project:delete",123]"#,
        &[],
        event("/admin", Some(456), "project:delete", "[123]", &[]),
    );
    check_sio(v4, "3/admin,456[]", &[], ack("/admin", 456, "[]", &[]));
    // ERROR carries a plain string.
    check_sio(
        v4,
        r#"4/admin,"Not authorized""#,
        &[],
        connect_error("/admin", r#""Not authorized""#),
    );
    assert_eq!(
        socket::Packet::connect_error(v4, "/admin", "Not authorized").encode(),
        r#"4/admin,"Not authorized""#
    );
    check_sio(
        v4,
        &format!(r#"51-["hello",{PH0}]"#),
        &[&[1, 2, 3]],
        event("/", None, "hello", &format!("[{PH0}]"), &[&[1, 2, 3]]),
    );
    check_sio(
        v4,
        &format!(r#"51-/admin,456["project:delete",{PH0}]"#),
        &[&[1, 2, 3]],
        event(
            "/admin",
            Some(456),
            "project:delete",
            &format!("[{PH0}]"),
            &[&[1, 2, 3]],
        ),
    );
    check_sio(
        v4,
        &format!(r#"61-/admin,456[{PH0}]"#),
        &[&[3, 2, 1]],
        ack("/admin", 456, &format!("[{PH0}]"), &[&[3, 2, 1]]),
    );
    // socket.io-client 2.x puts the query in the CONNECT namespace.
    check_sio(
        v4,
        "0/admin?token=1234&uid=abcd,",
        &[],
        connect("/admin?token=1234&uid=abcd", None),
    );
    assert_eq!(
        socket::split_namespace_query("/admin?token=1234&uid=abcd"),
        ("/admin", Some("token=1234&uid=abcd"))
    );
    assert_eq!(socket::split_namespace_query("/admin"), ("/admin", None));
    assert!(v4.implicit_main_connect());
    assert!(!SioVersion::V5.implicit_main_connect());
    assert_eq!(EioVersion::V3.socketio(), v4);
    assert_eq!(EioVersion::from_query("4"), Some(V4));
    assert_eq!(EioVersion::from_query("5"), None);
}

#[test]
fn socketio_malformed() {
    let v5 = SioVersion::V5;
    // The conformance suite's malformed frames (after the Engine.IO `4`).
    assert_eq!(sio_err(v5, "abc"), Error::UnknownPacketType(b'a')); // `4abc`
    assert_eq!(sio_err(v5, "2{}"), Error::InvalidPayload); // `42{}`
    assert_eq!(
        sio_err(v5, r#"2abc["message-with-ack",1,"2",{"3":[false]}]"#),
        Error::InvalidAckId
    ); // `42abc[..]`
    // Unknown types.
    assert_eq!(sio_err(v5, "7"), Error::UnknownPacketType(b'7'));
    assert_eq!(sio_err(v5, r#"9["a"]"#), Error::UnknownPacketType(b'9'));
    assert_eq!(sio_err(v5, "€"), Error::UnknownPacketType(0xe2));
    assert_eq!(sio_err(v5, ""), Error::EmptyPacket);
    // Bad attachment counts.
    assert_eq!(sio_err(v5, r#"5-["a"]"#), Error::InvalidAttachmentCount);
    assert_eq!(sio_err(v5, r#"5a-["a"]"#), Error::InvalidAttachmentCount);
    assert_eq!(sio_err(v5, r#"51["a"]"#), Error::InvalidAttachmentCount);
    assert_eq!(sio_err(v5, "6"), Error::InvalidAttachmentCount);
    assert_eq!(
        sio_err(v5, r#"517-["a"]"#),
        Error::LimitExceeded {
            limit: Limit::AttachmentsPerPacket,
            max: 16
        }
    );
    assert_eq!(
        sio_err(v5, r#"599999999999999999999999-["a"]"#),
        Error::LimitExceeded {
            limit: Limit::AttachmentsPerPacket,
            max: 16
        }
    );
    // Bad ack ids.
    assert_eq!(
        sio_err(v5, r#"29007199254740992["a"]"#),
        Error::LimitExceeded {
            limit: Limit::AckId,
            max: (1 << 53) - 1
        }
    );
    assert_eq!(
        sio_err(v5, r#"2999999999999999999999999["a"]"#),
        Error::LimitExceeded {
            limit: Limit::AckId,
            max: (1 << 53) - 1
        }
    );
    assert_eq!(sio_err(v5, r#"2/admin,x["a"]"#), Error::InvalidAckId);
    assert_eq!(sio_err(v5, r#"2-1["a"]"#), Error::InvalidAckId);
    assert_eq!(sio_err(v5, "3[]"), Error::MissingAckId);
    assert_eq!(sio_err(v5, "3/admin,[]"), Error::MissingAckId);
    assert_eq!(sio_err(v5, "012"), Error::UnexpectedAckId);
    assert_eq!(sio_err(v5, "1/admin,5"), Error::UnexpectedAckId);
    assert_eq!(sio_err(v5, r#"45{"message":"x"}"#), Error::UnexpectedAckId);
    // Payloads of the wrong shape.
    assert_eq!(sio_err(v5, "2"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "2[]"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "2[1]"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, r#"2"a""#), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "31"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "31{}"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "0[]"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, r#"0"x""#), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "1{}"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "4"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, "4[]"), Error::InvalidPayload);
    assert_eq!(sio_err(v5, r#"51-{"a":1}"#), Error::InvalidPayload);
    assert_eq!(sio_err(v5, r#"2["connect"]"#), Error::ReservedEventName);
    assert_eq!(
        sio_err(v5, r#"2["disconnecting",1]"#),
        Error::ReservedEventName
    );
    // v4 accepts any JSON in ERROR.
    let mut d4 = socket::Decoder::new(SioVersion::V4, Limits::default());
    assert_eq!(
        d4.decode_text("4[]").unwrap(),
        Decoded::Complete(connect_error("/", "[]"))
    );
    // Invalid JSON, with the offset of the problem.
    assert_eq!(sio_err(v5, r#"2["a""#), Error::InvalidJson { offset: 5 });
    assert_eq!(sio_err(v5, r#"2["a"]x"#), Error::InvalidJson { offset: 6 });
    assert_eq!(sio_err(v5, r#"2["a",]"#), Error::InvalidJson { offset: 6 });
    assert_eq!(
        sio_err(v5, r#"2["a",01]"#),
        Error::InvalidJson { offset: 7 }
    );
    assert_eq!(
        sio_err(v5, r#"2["a",tru]"#),
        Error::InvalidJson { offset: 6 }
    );
    assert_eq!(
        sio_err(v5, r#"2["a",{"b"}]"#),
        Error::InvalidJson { offset: 10 }
    );
    assert_eq!(
        sio_err(v5, "2[\"a\",\"\u{1}\"]"),
        Error::InvalidJson { offset: 7 }
    );
    assert_eq!(sio_err(v5, r#"2["a\x"]"#), Error::InvalidJson { offset: 4 });
    assert_eq!(sio_err(v5, "0,"), Error::InvalidJson { offset: 1 });
    // Nesting and namespace limits.
    let deep = format!("2[\"a\",{}{}]", "[".repeat(31), "]".repeat(31));
    assert!(matches!(
        socket::Decoder::new(v5, Limits::default()).decode_text(&deep),
        Ok(Decoded::Complete(_))
    ));
    let too_deep = format!("2[\"a\",{}{}]", "[".repeat(32), "]".repeat(32));
    assert_eq!(
        sio_err(v5, &too_deep),
        Error::LimitExceeded {
            limit: Limit::JsonDepth,
            max: 32
        }
    );
    let nsp = format!("2/{},[\"a\"]", "n".repeat(256));
    assert_eq!(
        sio_err(v5, &nsp),
        Error::LimitExceeded {
            limit: Limit::NamespaceBytes,
            max: 256
        }
    );
    let limits = Limits {
        payload_bytes_max: 10,
        ..Limits::default()
    };
    let mut d = socket::Decoder::new(v5, limits);
    assert_eq!(
        d.decode_text(r#"2["abcdefghij"]"#),
        Err(Error::LimitExceeded {
            limit: Limit::PayloadBytes,
            max: 10
        })
    );
}

#[test]
fn socketio_decoder_state() {
    let mut d = socket::Decoder::new(
        SioVersion::V5,
        Limits {
            payload_bytes_max: 100,
            ..Limits::default()
        },
    );
    assert_eq!(d.decode_binary(&[1]), Err(Error::UnexpectedAttachment));
    assert_eq!(
        d.decode_text(&format!(r#"52-["a",{PH0},{PH1}]"#)).unwrap(),
        Decoded::Partial
    );
    assert!(d.is_waiting_for_attachments());
    assert_eq!(d.decode_text(r#"2["b"]"#), Err(Error::ExpectedAttachment));
    assert_eq!(d.decode_binary(&[1]).unwrap(), Decoded::Partial);
    let done = d.decode_binary(&[2, 2]).unwrap();
    let Decoded::Complete(p) = done else {
        panic!("{done:?}")
    };
    assert_eq!(p.attachments(), &[vec![1], vec![2, 2]]);
    // Reassembly: placeholders become the buffers, in order.
    let S::Event {
        args, attachments, ..
    } = &p
    else {
        panic!()
    };
    assert_eq!(
        args.to_value(attachments).unwrap(),
        Value::Array(vec![Value::Binary(vec![1]), Value::Binary(vec![2, 2])])
    );
    assert_eq!(
        raw(&format!("[{PH1}]")).to_value(&[vec![1]]),
        Err(Error::InvalidPlaceholder)
    );
    assert_eq!(
        raw(r#"[{"_placeholder":true,"num":"0"}]"#).to_value(&[vec![1]]),
        Err(Error::InvalidPlaceholder)
    );
    // Back to normal after the packet completed.
    assert_eq!(
        d.decode_text(r#"2["b"]"#).unwrap(),
        Decoded::Complete(event("/", None, "b", "[]", &[]))
    );
    // The attachments of one packet together count against payload_bytes_max.
    assert_eq!(d.decode_text(r#"51-["a",{}]"#).unwrap(), Decoded::Partial);
    assert_eq!(
        d.decode_binary(&[0; 101]),
        Err(Error::LimitExceeded {
            limit: Limit::PayloadBytes,
            max: 100
        })
    );
    assert!(!d.is_waiting_for_attachments());
}

#[test]
fn encode_helpers() {
    // One encoding for every recipient: websocket text identical for v3 and v4, binary frames per revision.
    let value = Value::Array(vec![Value::String("x".into()), Value::Binary(vec![7, 8])]);
    let (args, attachments) = value.split_binary();
    assert_eq!(args.as_str(), format!(r#"["x",{PH0}]"#));
    let p = S::Event {
        nsp: "/chat".into(),
        id: Some(3),
        name: "up".into(),
        args,
        attachments,
    };
    let msg = EncodedMessage::new(&p);
    assert_eq!(&**msg.ws_text(), format!(r#"451-/chat,3["up","x",{PH0}]"#));
    assert_eq!(&*msg.ws_binary(V4)[0], &[7, 8]);
    assert_eq!(&*msg.ws_binary(V3)[0], &[4, 7, 8]);
    let frames: Vec<Frame<'_>> = msg.frames().collect();
    let mut v4 = Vec::new();
    encode_payload(V4, PayloadForm::Text, &frames, &mut v4);
    assert_eq!(
        v4,
        format!("451-/chat,3[\"up\",\"x\",{PH0}]\x1ebBwg=").as_bytes()
    );
    let mut v3 = Vec::new();
    encode_payload(V3, PayloadForm::Text, &frames, &mut v3);
    assert_eq!(
        v3,
        format!(
            "{}:451-/chat,3[\"up\",\"x\",{PH0}]6:b4Bwg=",
            msg.utf16_len()
        )
        .as_bytes()
    );
    let clone = msg.clone();
    assert!(std::sync::Arc::ptr_eq(clone.ws_text(), msg.ws_text()));

    #[derive(serde::Serialize)]
    struct Resource<'a> {
        action: &'a str,
        room: &'a str,
    }
    let m = EncodedMessage::event(
        "/",
        "realtime:resource",
        &Resource {
            action: "created",
            room: "r\"1",
        },
    )
    .unwrap();
    assert_eq!(
        &**m.ws_text(),
        r#"42["realtime:resource",{"action":"created","room":"r\"1"}]"#
    );
    let m = EncodedMessage::event("/admin", "e", &5).unwrap();
    assert_eq!(&**m.ws_text(), r#"42/admin,["e",5]"#);
    let m = EncodedMessage::event_raw("/", "e", &raw("[1, 2]"));
    assert_eq!(&**m.ws_text(), r#"42["e",1, 2]"#);
    let m = EncodedMessage::event_raw("/", "e", &RawJson::empty_array());
    assert_eq!(&**m.ws_text(), r#"42["e"]"#);
    assert_eq!(S::event("/", "€", raw("[]")).encode(), r#"2["€"]"#);
    assert_eq!(
        RawJson::from_serialize(&vec![1, 2]).unwrap().as_str(),
        "[1,2]"
    );
    assert_eq!(
        raw(r#"{"a":[1,2]}"#).parse::<serde_json::Value>().unwrap(),
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(
        raw(r#"{"a":1}"#).parse::<Vec<u8>>(),
        Err(Error::InvalidPayload)
    );
    assert_eq!(RawJson::new("[1,"), Err(Error::InvalidJson { offset: 3 }));
    assert_eq!(shardcast_proto::utf16_len("a€😀"), 4);
}
