//! Reading blocks in each layout (`cargo bench --bench block`): the packed layout the writer uses
//! for runs of up to 4,096 entries, and the fixed 12-byte one it uses beyond. Flatten is one pass
//! over the block ([`BlockView::overlay`]); a lookup is a binary search of it. Measured on one
//! block of 100,000 memberships, alone, with 1,000 newer entries and with 8,000 (about what a
//! large room's state holds above its base) taken as the pass reaches them, beside a plain copy
//! of the 100,000 entries it yields; and on a run of 20 of them, which a read also parses.

use criterion::{Criterion, criterion_group, criterion_main};
use roomstate::block::{BlockView, encode_fixed_block, encode_packed_block};
use roomstate::{DeltaEntry, EventNid, StateEntry, StateKey, StateKeyNid, TypeNid};
use std::hint::black_box;

const ENTRIES: u64 = 100_000;

/// Members with state keys from 65,536 up, each joined by an event among two million.
fn entries() -> Vec<DeltaEntry> {
    (0..ENTRIES)
        .map(|i| {
            let key = StateKeyNid::new(65_536 + i * 3).expect("nonzero");
            let event = EventNid::new(1 + (i * 7_919) % 2_000_000).expect("nonzero");
            DeltaEntry::set(StateKey::new(TypeNid::MEMBER, key), event)
        })
        .collect()
}

/// Every 25th entry replaced by a newer event and a key added beside it: 8,000 newer entries,
/// one per 12.5 rows.
fn newer(entries: &[DeltaEntry]) -> Vec<DeltaEntry> {
    let mut newer: Vec<DeltaEntry> = entries
        .iter()
        .step_by(25)
        .flat_map(|e| {
            let added = StateKeyNid::new(e.key.key.get() + 1).expect("nonzero");
            let event = EventNid::new(2_000_001 + e.key.key.get()).expect("nonzero");
            [
                DeltaEntry::set(e.key, event),
                DeltaEntry::set(StateKey::new(TypeNid::MEMBER, added), event),
            ]
        })
        .collect();
    newer.sort_unstable();
    newer
}

fn layouts(c: &mut Criterion) {
    let entries = entries();
    let newer = newer(&entries);
    // One newer entry per 100 rows: stretches long enough to be copied whole.
    let sparse: Vec<DeltaEntry> = newer.iter().step_by(8).copied().collect();
    let flat: Vec<StateEntry> = entries
        .iter()
        .map(|e| StateEntry {
            key: e.key,
            event: e.event.expect("no tombstones"),
        })
        .collect();
    c.bench_function("copy 100k", |b| b.iter(|| black_box(flat.to_vec())));
    let layouts = [
        ("packed", encode_packed_block(&entries).expect("sorted")),
        ("fixed12", encode_fixed_block(&entries).expect("sorted")),
    ];
    for (name, bytes) in &layouts {
        println!(
            "{name}: {} bytes, {:.2} per entry",
            bytes.len(),
            bytes.len() as f64 / ENTRIES as f64
        );
        let view = BlockView::parse(bytes).expect("parses");
        let mut group = c.benchmark_group(*name);
        let overrides: [(&str, &[DeltaEntry]); 3] = [
            ("flatten 100k", &[]),
            ("flatten 100k with 1k newer", &sparse),
            ("flatten 100k with 8k newer", &newer),
        ];
        for (bench, newer) in overrides {
            group.bench_function(bench, |b| {
                b.iter(|| {
                    let mut out: Vec<StateEntry> = Vec::with_capacity(entries.len() + newer.len());
                    view.overlay(0..view.len(), newer, &mut out)
                        .expect("decodes");
                    black_box(out)
                })
            });
        }
        let mut i = 0;
        group.bench_function("lookup", |b| {
            b.iter(|| {
                i = (i + 7_919) % entries.len();
                black_box(view.find(entries[i].key).expect("decodes"))
            })
        });
        group.finish();
    }
    // A run of 20 recent changes, as a state change rewrites: parsing is paid per block read.
    let run: Vec<DeltaEntry> = entries.iter().step_by(5_000).copied().collect();
    for (name, bytes) in [
        ("packed", encode_packed_block(&run).expect("sorted")),
        ("fixed12", encode_fixed_block(&run).expect("sorted")),
    ] {
        let mut group = c.benchmark_group(name);
        group.bench_function("parse a 20-entry run", |b| {
            b.iter(|| black_box(BlockView::parse(black_box(&bytes)).expect("parses").len()))
        });
        let view = BlockView::parse(&bytes).expect("parses");
        group.bench_function("flatten a 20-entry run", |b| {
            b.iter(|| {
                let mut out: Vec<StateEntry> = Vec::with_capacity(run.len());
                view.overlay(0..view.len(), &[], &mut out).expect("decodes");
                black_box(out)
            })
        });
        group.finish();
    }
}

criterion_group!(benches, layouts);
criterion_main!(benches);
