/// The first byte picks a chunk size; the rest is the body. Streaming it in chunks must give exactly what
/// decoding it whole gives.
fn shardcast_proto_fuzz_common(version: EioVersion, form: PayloadForm, data: &[u8]) {
    use shardcast_proto::{Limits, PayloadDecoder, Progress, decode_payload};
    let Some((&chunk, body)) = data.split_first() else {
        return;
    };
    let whole = decode_payload(version, form, body, &Limits::default());
    let mut d = PayloadDecoder::new(version, form, Limits::default());
    let mut streamed = Vec::new();
    let result = (|| {
        for c in body.chunks(usize::from(chunk).max(1)) {
            d.push(c)?;
            while let Progress::Complete(p) = d.next_packet()? {
                streamed.push(p);
            }
        }
        d.finish();
        loop {
            match d.next_packet()? {
                Progress::Complete(p) => streamed.push(p),
                Progress::Finished => return Ok(()),
                Progress::Partial => panic!("partial after finish"),
            }
        }
    })();
    assert_eq!(result.map(|()| streamed), whole);
}
