//! Arbitrary bytes as stored event and room records: decoding must never panic, and a record
//! that decodes re-encodes to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::{EventRecord, Membership, RoomRecord};

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = EventRecord::from_bytes(data) {
        let again = record.to_bytes().expect("a decoded record encodes");
        assert_eq!(EventRecord::from_bytes(&again).expect("re-encoded"), record);
    }
    if let Ok(record) = RoomRecord::from_bytes(data) {
        let again = record.to_bytes().expect("a decoded record encodes");
        assert_eq!(RoomRecord::from_bytes(&again).expect("re-encoded"), record);
    }
    if let Some(&code) = data.first()
        && let Some(m) = Membership::from_code(code)
    {
        assert_eq!(m.code(), code);
    }
});
