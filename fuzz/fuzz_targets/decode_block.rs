//! Arbitrary bytes as a stored block: parsing, searching and iterating must never panic, and a
//! block that parses must give back the entries it holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::block::{BlockView, encode_block};

fuzz_target!(|data: &[u8]| {
    let Ok(view) = BlockView::parse(data) else {
        return;
    };
    let entries: Result<Vec<_>, usize> = view.iter().collect();
    if let Some(first) = view.key_at(0) {
        let _ = view.find(first);
        let _ = view.lower_bound(first, 0..view.len());
    }
    if let Ok(entries) = entries {
        // A sorted, duplicate-free block re-encodes (perhaps in the narrower layout) to the
        // same entries.
        if let Ok(again) = encode_block(&entries) {
            let view = BlockView::parse(&again).expect("an encoded block parses");
            let back: Vec<_> = view
                .iter()
                .map(|e| e.expect("an encoded entry decodes"))
                .collect();
            assert_eq!(back, entries);
        }
    }
});
