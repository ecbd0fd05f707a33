//! Random operation sequences, under every write policy, against a `BTreeMap` reference model:
//! flatten, lookup, diff and combine must agree with the model for every snapshot, the
//! reference counts must be exact, and a garbage collection must then empty the store.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use roomstate::{
    Combined, Conduit, Conflict, DeltaEntry, Dendrite, EventNid, SnapshotNid, StateEntry, StateKey,
    StateKeyNid, StateMap, Store, StoreRead, Synapse, Tiered, TypeNid, WritePolicy, policy,
    resolve,
};
use std::collections::{BTreeMap, BTreeSet};

type Model = BTreeMap<StateKey, EventNid>;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Changes a snapshot: each change is (type, key, remove?).
    Delta {
        parent: u8,
        changes: Vec<(u8, u8, bool)>,
    },
    /// Combines snapshots, settles conflicts by the largest candidate, stores the result whole.
    Merge {
        parents: Vec<u8>,
    },
    Lookup {
        snapshot: u8,
        ty: u8,
        key: u8,
    },
    Diff {
        a: u8,
        b: u8,
    },
    Combine {
        snapshots: Vec<u8>,
    },
    Commit,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    ops: Vec<Op>,
}

fn policies() -> Vec<Box<dyn WritePolicy>> {
    let mut all: Vec<Box<dyn WritePolicy>> = policy::POLICY_NAMES
        .iter()
        .filter_map(|n| policy::by_name(n))
        .collect();
    // Small constants cross every threshold within a short sequence.
    all.push(Box::new(Tiered {
        promote_at: 3,
        base_ratio: 2,
    }));
    all.push(Box::new(Dendrite { max_blocks: 3 }));
    all.push(Box::new(Synapse { max_hops: 3 }));
    all.push(Box::new(Conduit {
        max_layers: 2,
        diff_to_sibling: 2,
    }));
    all
}

const TYPES: [u64; 4] = [1, 5, 7, 65_536];

fn key(ty: u8, key: u8) -> StateKey {
    StateKey::new(
        TypeNid::new(TYPES[usize::from(ty) % TYPES.len()]).expect("nonzero"),
        StateKeyNid::new(1 + u64::from(key % 16)).expect("nonzero"),
    )
}

fn to_map(model: &Model) -> StateMap {
    StateMap::from_entries(
        model
            .iter()
            .map(|(k, e)| StateEntry { key: *k, event: *e })
            .collect(),
    )
}

fn reference_combine(models: &[&Model]) -> Combined {
    let keys: BTreeSet<StateKey> = models.iter().flat_map(|m| m.keys().copied()).collect();
    let mut out = Combined::default();
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
            out.conflicted.push(Conflict {
                key: k,
                candidates: candidates.into_iter().collect(),
            });
        }
    }
    out.unconflicted = StateMap::from_entries(agreed);
    out
}

struct World {
    snapshots: Vec<(SnapshotNid, Model)>,
    next_event: u64,
}

impl World {
    fn pick(&self, i: u8) -> &(SnapshotNid, Model) {
        &self.snapshots[usize::from(i) % self.snapshots.len()]
    }

    fn delta(&mut self, tx: &mut roomstate::WriteTxn, parent: u8, changes: &[(u8, u8, bool)]) {
        let (parent, mut model) = self.pick(parent).clone();
        let mut delta = Vec::new();
        let mut used = BTreeSet::new();
        for &(ty, k, remove) in changes.iter().take(8) {
            let k = key(ty, k);
            if !used.insert(k) {
                continue;
            }
            if remove {
                model.remove(&k);
                delta.push(DeltaEntry::remove(k));
            } else {
                self.next_event += 1;
                let e = EventNid::new(self.next_event).expect("nonzero");
                model.insert(k, e);
                delta.push(DeltaEntry::set(k, e));
            }
        }
        let snapshot = tx.snapshot_from_delta(parent, delta).expect("delta stores");
        self.snapshots.push((snapshot, model));
    }

    fn merge(&mut self, tx: &mut roomstate::WriteTxn, parents: &[u8]) {
        let chosen: Vec<&(SnapshotNid, Model)> =
            parents.iter().take(4).map(|&p| self.pick(p)).collect();
        if chosen.is_empty() {
            return;
        }
        let nids: Vec<SnapshotNid> = chosen.iter().map(|p| p.0).collect();
        let combined = tx.combine(&nids).expect("combine");
        let models: Vec<&Model> = chosen.iter().map(|p| &p.1).collect();
        assert_eq!(combined, reference_combine(&models));
        let mut model: Model = combined
            .unconflicted
            .iter()
            .map(|e| (e.key, e.event))
            .collect();
        for c in &combined.conflicted {
            model.insert(
                c.key,
                *c.candidates.last().expect("a conflict has candidates"),
            );
        }
        let snapshot = tx
            .snapshot_from_state(&to_map(&model))
            .expect("state stores");
        self.snapshots.push((snapshot, model));
    }
}

fn read_ops(world: &World, rx: &impl StoreRead, op: &Op) {
    match op {
        Op::Lookup {
            snapshot,
            ty,
            key: k,
        } => {
            let (s, m) = world.pick(*snapshot);
            let k = key(*ty, *k);
            assert_eq!(rx.lookup(*s, k).expect("lookup"), m.get(&k).copied());
        }
        Op::Diff { a, b } => {
            let ((a, ma), (b, mb)) = (world.pick(*a), world.pick(*b));
            assert_eq!(
                rx.diff(*a, *b).expect("diff"),
                resolve::diff_maps(&to_map(ma), &to_map(mb))
            );
        }
        Op::Combine { snapshots } if !snapshots.is_empty() => {
            let chosen: Vec<_> = snapshots.iter().take(4).map(|&s| world.pick(s)).collect();
            let nids: Vec<_> = chosen.iter().map(|p| p.0).collect();
            let models: Vec<&Model> = chosen.iter().map(|p| &p.1).collect();
            assert_eq!(
                rx.combine(&nids).expect("combine"),
                reference_combine(&models)
            );
        }
        _ => {}
    }
}

fuzz_target!(|input: Input| {
    let all = policies();
    let policy = all
        .into_iter()
        .nth(usize::from(input.policy) % 9)
        .expect("nine policies");
    let store = Store::builder()
        .boxed_policy(policy)
        .in_memory()
        .expect("store opens");
    let mut world = World {
        snapshots: vec![(SnapshotNid::EMPTY, Model::new())],
        next_event: 0,
    };
    let mut tx = store.write().expect("write");
    for op in input.ops.iter().take(64) {
        match op {
            Op::Delta { parent, changes } => world.delta(&mut tx, *parent, changes),
            Op::Merge { parents } => world.merge(&mut tx, parents),
            Op::Commit => {
                tx.commit().expect("commit");
                tx = store.write().expect("write");
            }
            read => read_ops(&world, &tx, read),
        }
    }
    tx.commit().expect("commit");
    let rx = store.read().expect("read");
    for (s, m) in &world.snapshots {
        assert_eq!(rx.flatten(*s).expect("flatten"), to_map(m));
        assert_eq!(
            rx.resolver().expect("resolver").state_len(*s).expect("len"),
            m.len() as u64
        );
    }
    drop(rx);
    // The sequences write raw NIDs that were never interned; only the counts are checked.
    let counts = [
        "snapshot_refs",
        "block_refs",
        "unreferenced_snapshots",
        "unreferenced_blocks",
    ];
    let check = store.read().expect("read").check().expect("check");
    let problems: Vec<_> = check
        .problems
        .iter()
        .filter(|p| counts.contains(&p.table))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
    let mut tx = store.write().expect("write");
    tx.collect_garbage().expect("collect");
    tx.commit().expect("commit");
    let stats = store.read().expect("read").stats().expect("stats");
    assert_eq!((stats.rows("snapshots"), stats.rows("blocks")), (1, 0));
});
