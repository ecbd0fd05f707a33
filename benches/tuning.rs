//! The default policy's two knobs, `promote_at` and `base_ratio`, against the bytes they write
//! and the flatten time they leave, on a history shaped like the full-scale `hq` one: 200,000
//! single-member changes, half of them joins, growing the state to 100,000 entries.
//!
//! Bytes are whole state bytes per change (blocks, snapshots and their index and counts, as the
//! `bench` command counts them, before compaction). Flatten is measured against a plain copy,
//! interleaved, at 20 states 2,500 changes apart across the last 50,000 changes, because the
//! entries above the base (and so flatten's cost) rise and fall with the policy's merge cycle:
//! the summary gives the median and the worst of the 20 ratios. Criterion times the flatten of
//! the final state. `cargo bench --bench tuning`.

use criterion::{Criterion, criterion_group};
use roomstate::{
    DeltaEntry, EventNid, SnapshotNid, StateKey, StateKeyNid, Store, StoreRead, Tiered, TypeNid,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const CHANGES: u64 = 200_000;
const PROBE_SPACING: u64 = 2_500;
const PROBES: u64 = 20;

fn member(user: u64) -> StateKey {
    StateKey::new(TypeNid::MEMBER, StateKeyNid::new(65_536 + user).unwrap())
}

struct Built {
    store: Store,
    bytes_per_change: f64,
    probes: Vec<SnapshotNid>,
}

fn build(policy: Tiered) -> Built {
    let store = Store::builder().policy(policy).in_memory().unwrap();
    let mut rng = 0x1234_5678_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut members, mut state, mut probes) = (0, SnapshotNid::EMPTY, Vec::new());
    let mut tx = store.write().unwrap();
    for i in 0..CHANGES {
        let user = if members < CHANGES / 2 && next() % 2 == 0 {
            members += 1;
            members
        } else {
            1 + next() % members.max(1)
        };
        let delta = vec![DeltaEntry::set(member(user), EventNid::new(i + 1).unwrap())];
        state = tx.snapshot_from_delta(state, delta).unwrap();
        if i + 1 > CHANGES - PROBES * PROBE_SPACING && (i + 1).is_multiple_of(PROBE_SPACING) {
            probes.push(state);
        }
        if (i + 1).is_multiple_of(10_000) {
            tx.commit().unwrap();
            tx = store.write().unwrap();
        }
    }
    tx.commit().unwrap();
    let bytes = store.read().unwrap().stats().unwrap().state_bytes();
    Built {
        store,
        bytes_per_change: bytes as f64 / CHANGES as f64,
        probes,
    }
}

/// Median flatten/copy ratio of one state, from interleaved runs.
fn flatten_over_copy(rx: &roomstate::ReadTxn, state: SnapshotNid) -> f64 {
    let resolver = rx.resolver().unwrap();
    let flat = resolver.flatten(state).unwrap().into_vec();
    let (mut f, mut c): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for _ in 0..101 {
        let t = Instant::now();
        drop(black_box(resolver.flatten(state).unwrap()));
        f.push(t.elapsed());
        let t = Instant::now();
        drop(black_box(flat.to_vec()));
        c.push(t.elapsed());
    }
    f.sort();
    c.sort();
    f[50].as_secs_f64() / c[50].as_secs_f64()
}

fn benches(c: &mut Criterion) {
    for (promote_at, base_ratio) in [(64, 8), (64, 6), (64, 5), (64, 4), (128, 8)] {
        let built = build(Tiered {
            promote_at,
            base_ratio,
        });
        let rx = built.store.read().unwrap();
        let mut ratios: Vec<f64> = built
            .probes
            .iter()
            .map(|s| flatten_over_copy(&rx, *s))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let last = *built.probes.last().unwrap();
        let resolver = rx.resolver().unwrap();
        c.bench_function(
            &format!("tiered_{promote_at}_{base_ratio}/flatten_final"),
            |b| b.iter(|| resolver.flatten(black_box(last)).unwrap()),
        );
        println!(
            "\ntiered promote_at {promote_at} base_ratio {base_ratio}: {:.0} state bytes per \
             change; flatten/copy over {} states: median {:.2}, worst {:.2}",
            built.bytes_per_change,
            ratios.len(),
            ratios[ratios.len() / 2],
            ratios[ratios.len() - 1]
        );
    }
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
