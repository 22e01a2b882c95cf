//! Helpers shared by the codec's integration tests.

use shardcast_proto::Frame;
use shardcast_proto::engine::Packet;

/// The polling frames of `packets`: binary packets as binary frames, every other packet as its text form (written
/// into `scratch`, which the frames borrow).
pub fn frames<'a>(packets: &'a [Packet<'a>], scratch: &'a mut Vec<String>) -> Vec<Frame<'a>> {
    *scratch = packets
        .iter()
        .map(|p| {
            let mut s = String::new();
            p.write_text(&mut s);
            s
        })
        .collect();
    packets
        .iter()
        .zip(scratch.iter())
        .map(|(p, s)| match p {
            Packet::Binary(b) => Frame::Binary(b),
            _ => Frame::Text(s),
        })
        .collect()
}
