//! The event log's record decoder (format byte | crc32 | prost Event) on
//! arbitrary bytes, raw and inside a valid frame, then the projection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgpipe::domain::projection::Projection;
use pgpipe::store::event_log::decode_record;

fuzz_target!(|data: &[u8]| {
    let _ = decode_record(data);
    let mut framed = vec![1u8];
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    if let Ok(e) = decode_record(&framed) {
        let mut p = Projection::default();
        p.apply(&e);
        p.apply(&e);
        let _ = p.list(true);
    }
});
