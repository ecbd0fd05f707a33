//! Arbitrary bytes as a stored snapshot record: decoding must never panic, and what decodes
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::snapshot::{decode_snapshot, encode_snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_snapshot(data) {
        assert_eq!(encode_snapshot(&record), data);
    }
});
