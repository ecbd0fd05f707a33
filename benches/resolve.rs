//! Flatten, lookup, diff and combine of a 100,000-entry state under each write policy, against a
//! plain copy of the same entries measured in the same run.
//!
//! Each policy builds its own snapshots from the same history: the full state, then 8,030
//! single-member changes at scattered keys, about what the final state of the full-scale `hq`
//! history holds above its base under the default policy. The odd 30 keeps dendrite64 and
//! synapse100 away from the instant just after their full rewrites (every 64 and 100 changes),
//! which would flatter their flatten and cost them their diff. `cargo bench --bench resolve` prints
//! criterion's figures and, per policy, the median flatten/copy ratio from interleaved runs (the
//! machine is shared, so only same-run ratios mean anything).

use criterion::{Criterion, criterion_group};
use roomstate::{
    DeltaEntry, EventNid, SnapshotNid, StateEntry, StateKey, StateKeyNid, Store, StoreRead, TypeNid,
};
use std::hint::black_box;
use std::time::{Duration, Instant};

const STATE: u64 = 100_000;
const DELTAS: u64 = 8_030;

struct Fixture {
    store: Store,
    /// The full state written as one block.
    base: SnapshotNid,
    /// The base after 8,030 changes.
    layered: SnapshotNid,
    /// The state before the last change.
    previous: SnapshotNid,
}

fn member(user: u64) -> StateKey {
    StateKey::new(TypeNid::MEMBER, StateKeyNid::new(65_536 + user).unwrap())
}

fn fixture(policy: &str) -> Fixture {
    let store = Store::builder()
        .boxed_policy(roomstate::policy::by_name(policy).unwrap())
        .in_memory()
        .unwrap();
    let mut tx = store.write().unwrap();
    let state = roomstate::StateMap::from_entries(
        (0..STATE)
            .map(|u| StateEntry {
                key: member(u),
                event: EventNid::new(u + 1).unwrap(),
            })
            .collect(),
    );
    let base = tx.snapshot_from_state(&state).unwrap();
    let mut layered = base;
    let mut previous = base;
    for i in 0..DELTAS {
        previous = layered;
        let delta = vec![DeltaEntry::set(
            member(i * 1_571 % STATE),
            EventNid::new(STATE + i + 1).unwrap(),
        )];
        layered = tx.snapshot_from_delta(layered, delta).unwrap();
    }
    tx.commit().unwrap();
    Fixture {
        store,
        base,
        layered,
        previous,
    }
}

fn benches(c: &mut Criterion) {
    // `full` would write 8,030 copies of the state; the other policies are the comparison.
    for policy in ["tiered", "dendrite64", "synapse100", "conduit4"] {
        bench_policy(c, policy);
    }
}

fn bench_policy(c: &mut Criterion, policy: &str) {
    let f = fixture(policy);
    let rx = f.store.read().unwrap();
    let resolver = rx.resolver().unwrap();
    let flat: Vec<StateEntry> = resolver.flatten(f.layered).unwrap().into_vec();
    assert_eq!(flat.len() as u64, STATE);

    let mut g = c.benchmark_group(format!("{policy}_100k"));
    g.bench_function("copy", |b| b.iter(|| black_box(flat.to_vec())));
    g.bench_function("flatten_base", |b| {
        b.iter(|| resolver.flatten(black_box(f.base)).unwrap())
    });
    g.bench_function("flatten", |b| {
        b.iter(|| resolver.flatten(black_box(f.layered)).unwrap())
    });
    g.bench_function("lookup", |b| {
        let mut u = 0;
        b.iter(|| {
            u = (u + 7_919) % STATE;
            resolver.lookup(f.layered, member(u)).unwrap()
        })
    });
    g.bench_function("diff_consecutive", |b| {
        b.iter(|| resolver.diff(black_box(f.previous), f.layered).unwrap())
    });
    g.bench_function("diff_base_to_layered", |b| {
        b.iter(|| resolver.diff(black_box(f.base), f.layered).unwrap())
    });
    g.bench_function("combine_2", |b| {
        b.iter(|| resolver.combine(&[f.previous, f.layered]).unwrap())
    });
    g.finish();

    let (flatten, copy) = interleaved(
        || drop(black_box(resolver.flatten(f.layered).unwrap())),
        || drop(black_box(flat.to_vec())),
    );
    println!(
        "\n{policy}: flatten of 100,000 entries in {} blocks: median {flatten:?}; plain copy: \
         median {copy:?}; flatten/copy = {:.2}",
        resolver.blocks(f.layered).unwrap().len(),
        flatten.as_secs_f64() / copy.as_secs_f64()
    );
}

/// Median times of `a` and `b`, run alternately so both see the same machine load.
fn interleaved(mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..301 {
        let t = Instant::now();
        a();
        ta.push(t.elapsed());
        let t = Instant::now();
        b();
        tb.push(t.elapsed());
    }
    ta.sort();
    tb.sort();
    (ta[ta.len() / 2], tb[tb.len() / 2])
}

criterion_group!(group, benches);

fn main() {
    group();
    Criterion::default().configure_from_args().final_summary();
}
