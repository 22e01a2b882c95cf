#![no_main]
use shardcast_proto::{Limits, SioVersion, socket::Decoder};

// Frames separated by 0xff (never in UTF-8): the first is text, the others binary attachments.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for version in [SioVersion::V4, SioVersion::V5] {
        let mut d = Decoder::new(version, Limits::default());
        let mut frames = data.split(|&b| b == 0xff);
        if let Some(Ok(text)) = frames.next().map(std::str::from_utf8) {
            let _ = d.decode_text(text);
        }
        for f in frames {
            if let Ok(shardcast_proto::Decoded::Complete(
                shardcast_proto::socket::Packet::Event {
                    args, attachments, ..
                },
            )) = d.decode_binary(f)
            {
                let _ = args.to_value(&attachments);
            }
        }
    }
});
