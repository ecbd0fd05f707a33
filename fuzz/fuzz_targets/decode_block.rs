//! Arbitrary bytes as a stored block: parsing, searching, iterating and merging must never
//! panic, a block that parses must give back the entries it holds, and the one-pass merge of a
//! sorted block with newer entries must agree with a `BTreeMap`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::block::{BlockView, encode_block};
use roomstate::{DeltaEntry, EventNid, StateEntry, StateKey, StateKeyNid};
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(view) = BlockView::parse(data) else {
        return;
    };
    let entries: Result<Vec<_>, usize> = view.iter().collect();
    if let Some(first) = view.key_at(0) {
        let _ = view.find(first);
        let _ = view.lower_bound(first, 0..view.len());
    }
    let mut flat: Vec<StateEntry> = Vec::new();
    let _ = view.overlay(0..view.len(), &[], &mut flat);
    let Ok(entries) = entries else {
        return;
    };
    // A sorted, duplicate-free block re-encodes (perhaps in the narrower layout) to the same
    // entries.
    let Ok(again) = encode_block(&entries) else {
        return;
    };
    let view = BlockView::parse(&again).expect("an encoded block parses");
    let back: Vec<_> = view
        .iter()
        .map(|e| e.expect("an encoded entry decodes"))
        .collect();
    assert_eq!(back, entries);
    // Newer entries: for every third key a removal or a new event, and after every fifth key
    // one the block lacks (next state key up).
    let held: BTreeMap<_, _> = entries.iter().map(|e| (e.key, e.event)).collect();
    let mut newer: BTreeMap<StateKey, Option<EventNid>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        if i % 3 == 0 {
            newer.insert(
                e.key,
                (i % 2 == 0).then(|| EventNid::new(i as u64 + 1)).flatten(),
            );
        }
        let next = StateKeyNid::new(e.key.key.get().wrapping_add(1));
        if let Some(key) = next.map(|k| StateKey::new(e.key.ty, k)) {
            if i % 5 == 0 && !held.contains_key(&key) {
                newer.insert(key, EventNid::new(i as u64 + 7));
            }
        }
    }
    let newer: Vec<DeltaEntry> = newer
        .into_iter()
        .map(|(key, event)| DeltaEntry { key, event })
        .collect();
    let mut model = BTreeMap::new();
    for e in entries.iter().chain(&newer) {
        match e.event {
            Some(event) => model.insert(e.key, event),
            None => model.remove(&e.key),
        };
    }
    let mut merged: Vec<StateEntry> = Vec::new();
    view.overlay(0..view.len(), &newer, &mut merged)
        .expect("a decodable block merges");
    let expected: Vec<StateEntry> = model
        .into_iter()
        .map(|(key, event)| StateEntry { key, event })
        .collect();
    assert_eq!(merged, expected);
});
