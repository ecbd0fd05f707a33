//! Model-based test: random operation sequences against a plain `BTreeMap` reference, checking
//! every snapshot ever created with flatten, lookup, filters, diff and combine.

mod common;

use common::{Rng, ev, key};
use roomstate::{
    Conduit, DeltaEntry, Dendrite, Full, Layer, Plan, SnapshotNid, StateEntry, StateKey, StateMap,
    Store, StoreRead, Synapse, Tiered, TypeNid, WritePolicy, resolve,
};
use std::collections::{BTreeMap, BTreeSet};

type Model = BTreeMap<StateKey, roomstate::EventNid>;

/// Merges the newer half of the blocks with each delta: exercises merged tails that keep
/// tombstones, which neither appending nor rewriting does.
#[derive(Debug)]
struct MergeHalf;

impl WritePolicy for MergeHalf {
    fn name(&self) -> &str {
        "merge-half"
    }
    fn plan(&self, chain: &[Layer], _delta_len: usize) -> Plan {
        let blocks: usize = chain.iter().map(|l| l.blocks.len()).sum();
        let keep = if blocks < 4 { blocks } else { blocks / 2 };
        Plan { base: None, keep }
    }
}

/// Every shipped policy, some with small constants so that their thresholds are crossed often.
fn policies() -> Vec<Box<dyn WritePolicy>> {
    vec![
        Box::new(Tiered::default()),
        Box::new(Tiered {
            promote_at: 4,
            base_ratio: 2,
        }),
        Box::new(Dendrite::default()),
        Box::new(Dendrite { max_blocks: 3 }),
        Box::new(Synapse { max_hops: 4 }),
        Box::new(Conduit::default()),
        Box::new(Conduit {
            max_layers: 3,
            diff_to_sibling: 1_000_000,
        }),
        Box::new(Full),
        Box::new(MergeHalf),
    ]
}

const TYPES: [u64; 4] = [1, 5, 7, 65_536];

fn random_key(rng: &mut Rng) -> StateKey {
    key(*rng.pick(&TYPES), 1 + rng.below(12))
}

fn to_map(model: &Model) -> StateMap {
    StateMap::from_entries(
        model
            .iter()
            .map(|(k, e)| StateEntry { key: *k, event: *e })
            .collect(),
    )
}

struct World {
    snapshots: Vec<(SnapshotNid, Model)>,
    next_event: u64,
}

impl World {
    fn fresh_event(&mut self) -> roomstate::EventNid {
        self.next_event += 1;
        ev(self.next_event)
    }
}

fn apply_delta(world: &mut World, rng: &mut Rng, tx: &mut roomstate::WriteTxn, parent: usize) {
    let (parent, parent_model) = world.snapshots[parent].clone();
    let mut model = parent_model;
    let mut delta = Vec::new();
    let mut used = BTreeSet::new();
    for _ in 0..1 + rng.below(4) {
        let k = random_key(rng);
        if !used.insert(k) {
            continue;
        }
        if rng.chance(20) {
            model.remove(&k);
            delta.push(DeltaEntry::remove(k));
        } else {
            let e = world.fresh_event();
            model.insert(k, e);
            delta.push(DeltaEntry::set(k, e));
        }
    }
    let snap = tx.snapshot_from_delta(parent, delta).unwrap();
    world.snapshots.push((snap, model));
}

/// Several parents: combine the references, settle each conflict by taking the largest
/// candidate, and store the result as a full state.
fn merge_parents(world: &mut World, rng: &mut Rng, tx: &mut roomstate::WriteTxn) {
    let n = 2 + rng.below(2) as usize;
    let parents: Vec<_> = (0..n)
        .map(|_| world.snapshots[rng.below(world.snapshots.len() as u64) as usize].clone())
        .collect();
    let combined = tx
        .combine(&parents.iter().map(|p| p.0).collect::<Vec<_>>())
        .unwrap();
    let expected = reference_combine(&parents.iter().map(|p| p.1.clone()).collect::<Vec<_>>());
    assert_eq!(combined, expected);
    let mut model: Model = combined
        .unconflicted
        .iter()
        .map(|e| (e.key, e.event))
        .collect();
    for c in &combined.conflicted {
        model.insert(c.key, *c.candidates.last().unwrap());
    }
    let snap = tx.snapshot_from_state(&to_map(&model)).unwrap();
    world.snapshots.push((snap, model));
}

fn reference_combine(models: &[Model]) -> roomstate::Combined {
    let keys: BTreeSet<StateKey> = models.iter().flat_map(|m| m.keys().copied()).collect();
    let mut out = roomstate::Combined::default();
    let mut agreed = Vec::new();
    for k in keys {
        let held: Vec<_> = models.iter().filter_map(|m| m.get(&k).copied()).collect();
        if held.len() == models.len() && held.iter().all(|e| *e == held[0]) {
            agreed.push(StateEntry {
                key: k,
                event: held[0],
            });
        } else {
            let candidates: BTreeSet<_> = held.into_iter().collect();
            out.conflicted.push(roomstate::Conflict {
                key: k,
                candidates: candidates.into_iter().collect(),
            });
        }
    }
    out.unconflicted = StateMap::from_entries(agreed);
    out
}

fn check_all(world: &World, rng: &mut Rng, store: &Store) {
    let rx = store.read().unwrap();
    let resolver = rx.resolver().unwrap();
    for (snap, model) in &world.snapshots {
        let flat = resolver.flatten(*snap).unwrap();
        assert_eq!(flat, to_map(model), "flatten of {snap:?}");
        assert_eq!(resolver.state_len(*snap).unwrap(), model.len() as u64);
        for _ in 0..4 {
            let k = random_key(rng);
            assert_eq!(resolver.lookup(*snap, k).unwrap(), model.get(&k).copied());
        }
        let types = [*rng.pick(&TYPES), *rng.pick(&TYPES)].map(|t| TypeNid::new(t).unwrap());
        let filtered = resolver.filter_types(*snap, &types).unwrap();
        let expected: Model = model
            .iter()
            .filter(|(k, _)| types.contains(&k.ty))
            .map(|(k, e)| (*k, *e))
            .collect();
        assert_eq!(filtered, to_map(&expected));
        let keys: Vec<_> = (0..5).map(|_| random_key(rng)).collect();
        let filtered = resolver.filter_keys(*snap, &keys).unwrap();
        let expected: Model = model
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, e)| (*k, *e))
            .collect();
        assert_eq!(filtered, to_map(&expected));
    }
    for _ in 0..world.snapshots.len() {
        let (a, ma) = rng.pick(&world.snapshots);
        let (b, mb) = rng.pick(&world.snapshots);
        assert_eq!(
            resolver.diff(*a, *b).unwrap(),
            resolve::diff_maps(&to_map(ma), &to_map(mb))
        );
        let (c, mc) = rng.pick(&world.snapshots);
        assert_eq!(
            resolver.combine(&[*a, *b, *c]).unwrap(),
            reference_combine(&[ma.clone(), mb.clone(), mc.clone()])
        );
    }
}

fn run_sequence(seed: u64, policy: Box<dyn WritePolicy>, block_cache_bytes: usize) {
    let mut rng = Rng(seed);
    let store = Store::builder()
        .boxed_policy(policy)
        .block_cache_bytes(block_cache_bytes)
        .in_memory()
        .unwrap();
    let mut world = World {
        snapshots: vec![(SnapshotNid::EMPTY, Model::new())],
        next_event: 0,
    };
    for _ in 0..1 + rng.below(3) {
        let mut tx = store.write().unwrap();
        for _ in 0..rng.below(25) {
            if rng.chance(85) {
                let parent = rng.below(world.snapshots.len() as u64) as usize;
                apply_delta(&mut world, &mut rng, &mut tx, parent);
            } else {
                merge_parents(&mut world, &mut rng, &mut tx);
            }
        }
        tx.commit().unwrap();
    }
    check_all(&world, &mut rng, &store);
    // Nothing references these snapshots (no event or room does), yet every count must be
    // exact; then a collection must leave an empty store behind. (The sequences write raw NIDs
    // that were never interned, which the check reports too: only counts are asserted here.)
    let count_problems = |store: &Store| -> Vec<_> {
        let report = store.read().unwrap().check().unwrap();
        let counts = [
            "snapshot_refs",
            "block_refs",
            "unreferenced_snapshots",
            "unreferenced_blocks",
        ];
        report
            .problems
            .into_iter()
            .filter(|p| counts.contains(&p.table))
            .collect()
    };
    assert_eq!(count_problems(&store), vec![], "seed {seed}");
    let mut tx = store.write().unwrap();
    tx.collect_garbage().unwrap();
    tx.commit().unwrap();
    assert_eq!(count_problems(&store), vec![], "seed {seed}");
    let stats = store.read().unwrap().stats().unwrap();
    assert_eq!(
        (stats.rows("snapshots"), stats.rows("blocks")),
        (1, 0),
        "seed {seed}"
    );
}

#[test]
fn random_sequences_match_btreemap_model() {
    // The block cache off, so small that it evicts on nearly every read, and at its default.
    let caches = [0, 300, roomstate::DEFAULT_BLOCK_CACHE_BYTES];
    for seed in 0..1_000u64 {
        let mut all = policies();
        let n = all.len() as u64;
        let policy = all.swap_remove((seed % n) as usize);
        run_sequence(seed, policy, caches[(seed / n % 3) as usize]);
    }
}

#[test]
fn long_chain_crosses_the_rewrite_threshold() {
    for policy in policies() {
        let layered = policy.name() != "full";
        let store = Store::builder().boxed_policy(policy).in_memory().unwrap();
        let mut rng = Rng(7);
        let mut world = World {
            snapshots: vec![(SnapshotNid::EMPTY, Model::new())],
            next_event: 0,
        };
        let mut tx = store.write().unwrap();
        let mut longest = 0;
        for _ in 0..200 {
            // Always extend the newest snapshot, so the chain grows past 64 blocks.
            let newest = world.snapshots.len() - 1;
            apply_delta(&mut world, &mut rng, &mut tx, newest);
            let snap = world.snapshots[newest + 1].0;
            longest = longest.max(tx.resolver().unwrap().blocks(snap).unwrap().len());
        }
        assert!(
            !layered || longest >= 3,
            "the chain never grew past one block"
        );
        tx.commit().unwrap();
        check_all(&world, &mut rng, &store);
    }
}
