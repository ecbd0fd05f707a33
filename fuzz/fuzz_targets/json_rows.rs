//! Arbitrary bytes as a stored event-JSON row: reading one never panics, and arbitrary bytes
//! written as a row, their quoted `$` strings named by NID or kept, read back unchanged. The
//! dictionary is trained once per process, from events shaped like Matrix's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::EventNid;
use roomstate::quoted_event_ids;
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

/// The event whose row is read: NID 1,000, so that references count down from it.
const OWN: u64 = 1_000;

fuzz_target!(|data: &[u8]| {
    let dictionaries = std::slice::from_ref(dictionary());
    let own = EventNid::new(OWN).expect("not zero");
    let _ = decode_row(data, own, dictionaries, |nid| Some(format!("${nid}")));
    // Rows hold JSON, which never starts with zstd's magic number or the templated rows' 01:
    // other bytes round-trip. Every other distinct ID is named by NID, counting from `own`, its
    // NID's ID read back as itself.
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || data.first() == Some(&0x01) {
        return;
    }
    let ranges = quoted_event_ids(data);
    let mut distinct: Vec<&[u8]> = Vec::new();
    for r in &ranges {
        if !distinct.contains(&&data[r.clone()]) {
            distinct.push(&data[r.clone()]);
        }
    }
    let nids: Vec<Option<EventNid>> = (0..distinct.len() as u64)
        .map(|i| EventNid::new(i * 997 % 2_000 + 1).filter(|_| i % 2 == 0))
        .collect();
    let id_of = |nid: u64| {
        let i = nids.iter().position(|n| n.map(EventNid::get) == Some(nid))?;
        String::from_utf8(distinct[i].to_vec()).ok()
    };
    let row = encode_row(data, own, &ranges, &nids, &dictionaries[0]).expect("compresses");
    match decode_row(&row, own, dictionaries, id_of) {
        Ok(back) => assert_eq!(&*back, data),
        // An ID named by NID must be text, as `event_ids_rev` holds it.
        Err(_) => assert!(distinct.iter().zip(&nids).any(|(d, n)| n.is_some() && std::str::from_utf8(d).is_err())),
    }
});
