#![no_main]
use shardcast_proto::Handshake;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(Ok(h)) = std::str::from_utf8(data).map(Handshake::parse) {
        assert_eq!(Handshake::parse(&h.to_json()), Ok(h));
    }
});
