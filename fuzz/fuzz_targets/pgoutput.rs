//! The pgoutput decoder on arbitrary bytes (what a replication slot sends).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pgpipe::source::pgoutput::decode(data);
});
