#![no_main]
use shardcast_proto::{Error, Limit, RawJson};

// The validating scanner accepts exactly what serde_json accepts, except documents nested deeper than the
// depth limit; and nothing panics.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let ours = RawJson::new(text);
        if let Ok(raw) = &ours {
            let _ = raw.to_value(&[vec![1]]);
        }
        match (&ours, serde_json::from_str::<serde::de::IgnoredAny>(text)) {
            (Ok(_), Ok(_)) | (Err(_), Err(_)) => {}
            (
                Err(Error::LimitExceeded {
                    limit: Limit::JsonDepth,
                    ..
                }),
                Ok(_),
            ) => {}
            (ours, theirs) => panic!("{text:?}: ours {ours:?}, serde_json {theirs:?}"),
        }
    }
});
