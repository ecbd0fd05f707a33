//! Arbitrary bytes as a stored event-JSON row: reading one never panics, and arbitrary bytes
//! written as a row read back unchanged. The dictionary is trained once per process, from events
//! shaped like Matrix's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::store::json::{Dictionary, decode_row, encode_row};
use std::sync::{Arc, OnceLock};

fn dictionary() -> &'static Arc<Dictionary> {
    static DICTIONARY: OnceLock<Arc<Dictionary>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let samples: Vec<String> = (0..2_000u64)
            .map(|i| {
                let r = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                format!(
                    r#"{{"event_id":"${r:016x}{i:08}","room_id":"!room{}:server.test","type":"m.room.member","state_key":"@user{i}:s{}.test","sender":"@user{i}:s{}.test","prev_events":["${:020x}"],"auth_events":["${:018x}"],"depth":{i},"origin_server_ts":{},"content":{{"membership":"join","displayname":"User {i}"}}}}"#,
                    i % 7,
                    i % 13,
                    i % 13,
                    r >> 3,
                    r >> 5,
                    1_700_000_000_000 + i * 37
                )
            })
            .collect();
        let samples: Vec<&[u8]> = samples.iter().map(|s| s.as_bytes()).collect();
        Arc::new(Dictionary::train(&samples).expect("a dictionary from 2,000 events"))
    })
}

fuzz_target!(|data: &[u8]| {
    let dictionaries = std::slice::from_ref(dictionary());
    let _ = decode_row(data, dictionaries);
    // Rows hold JSON, which never starts with zstd's magic number: other bytes round-trip.
    if !data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let row = encode_row(data, &dictionaries[0]).expect("compresses");
        let back = decode_row(&row, dictionaries).expect("decodes");
        assert_eq!(&*back, data);
    }
});
