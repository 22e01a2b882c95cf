#![no_main]
use shardcast_proto::{EioVersion, PayloadForm};

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardcast_proto_fuzz_common(
    EioVersion::V3,
    PayloadForm::Text,
    data
));

include!("common.rs");
