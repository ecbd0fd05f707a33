//! What the tests of both auth-difference algorithms (the store's index, the matrix layer's
//! ordered walk) compare against: the auth difference by its definition.

use crate::engine::resolve::StateMap;
use crate::nid::{EventNid, NidSet, StateKey};
use std::collections::HashSet;

/// Per state, the auth ancestors of its `conflicted` entries that are neither an ancestor of
/// every state's conflicted entries nor of the `unconflicted` ones. `ancestors` gives the auth
/// chain of a set of events, walked however the test's DAG is held.
pub(crate) fn expected_difference(
    states: &[StateMap],
    conflicted: &HashSet<StateKey>,
    unconflicted: &StateMap,
    ancestors: impl Fn(&mut dyn Iterator<Item = EventNid>) -> HashSet<EventNid>,
) -> Vec<NidSet<EventNid>> {
    let own: Vec<HashSet<EventNid>> = states
        .iter()
        .map(|s| {
            let mut events = s
                .iter()
                .filter(|e| conflicted.contains(&e.key))
                .map(|e| e.event);
            ancestors(&mut events)
        })
        .collect();
    let shared = ancestors(&mut unconflicted.iter().map(|e| e.event));
    let in_all = |e: &EventNid| own.iter().all(|c| c.contains(e));
    own.iter()
        .map(|c| {
            c.iter()
                .filter(|e| !in_all(e) && !shared.contains(e))
                .copied()
                .collect()
        })
        .collect()
}

/// xorshift64*: random tests' seeded numbers, the same on every run.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A number below `n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
