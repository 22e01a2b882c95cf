#![no_main]
use shardcast_proto::{EioVersion, engine::Packet};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Packet::decode_text(text);
    }
    let _ = Packet::decode_binary(EioVersion::V3, data);
});
