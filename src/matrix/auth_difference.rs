//! The forks' auth chains cut to their auth difference, by one walk down the auth DAG from the
//! newest event, for stores where every event's auth events are older (have smaller NIDs) than
//! it ([`StateSource::auth_events_precede`]).
//!
//! State resolution wants, per fork, the auth chain of its conflicted events (A), less what
//! every fork's chain holds and what the chain of the unconflicted state (X) holds: the events
//! in some A but not all, and not in X. Building X event by event means the chains of the whole
//! state, a hundred thousand events in a large room. Here every event met carries a mask: which
//! forks' conflicted events have it as an auth ancestor, and whether the unconflicted events do.
//! Events are taken newest first, so when one is taken everything that can reach it has been
//! taken already and its mask is final. The walk ends when no event left to take can be in the
//! difference: what the unconflicted state or every fork reaches passes that on to all its
//! ancestors, so only the events newer than the oldest open question are read.

use crate::engine::resolve::StateMap;
use crate::error::Result;
use crate::matrix::resolver::StateSource;
use crate::nid::{EventNid, NidMap, NidSet, StateKey};
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashSet};

/// The most forks one walk tells apart: each is a bit of a mask, beside the unconflicted
/// state's.
pub(crate) const MAX_FORKS: usize = 63;

/// [`AuthEvents`] is emptied once it holds this many NIDs, events and their auth events
/// together: about 60 MiB with the map's own weight.
pub(crate) const AUTH_EVENTS_HELD: usize = 4 << 20;

/// Events' auth events, kept across resolutions: successive merges of a room walk much the
/// same recent events. Forget them with [`clear`](Self::clear) when the writes they were read
/// from are undone.
#[derive(Debug, Default)]
pub(crate) struct AuthEvents {
    of: NidMap<EventNid, Option<Box<[EventNid]>>>,
    held: usize,
}

impl AuthEvents {
    /// Drops everything once past [`AUTH_EVENTS_HELD`] (never during a walk).
    pub(crate) fn bound(&mut self) {
        if self.held > AUTH_EVENTS_HELD {
            self.clear();
        }
    }

    /// Drops everything: after a rollback, whose NIDs are handed out again.
    pub(crate) fn clear(&mut self) {
        self.of.clear();
        self.held = 0;
    }

    /// An event's auth events; `None` when the store does not hold it.
    fn get(
        &mut self,
        source: &mut dyn StateSource,
        event: EventNid,
    ) -> Result<Option<&[EventNid]>> {
        let auth = match self.of.entry(event) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let auth = source
                    .event(event)?
                    .map(|r| r.auth_events.into_boxed_slice());
                self.held += 1 + auth.as_ref().map_or(0, |a| a.len());
                slot.insert(auth)
            }
        };
        Ok(auth.as_deref())
    }
}

/// Per fork, the auth chain of its conflicted events within the auth difference: the events
/// the chains of some forks' conflicted events hold but not all, and the chain of the
/// unconflicted events does not. `None` when there are too many forks, or an auth event turns
/// out not to be older than its event: the caller walks the chains instead.
pub(crate) fn auth_difference(
    source: &mut dyn StateSource,
    known: &mut AuthEvents,
    states: &[StateMap],
    conflicted: &HashSet<StateKey>,
    unconflicted: &StateMap,
) -> Result<Option<Vec<NidSet<EventNid>>>> {
    if states.len() > MAX_FORKS {
        return Ok(None);
    }
    let masks = Masks::new(states.len());
    // A seed passes its bits to its auth events, not to itself: a chain holds an event's
    // ancestors.
    let mut seeds: NidMap<EventNid, u64> = NidMap::default();
    for (fork, state) in states.iter().enumerate() {
        for e in state.iter().filter(|e| conflicted.contains(&e.key)) {
            *seeds.entry(e.event).or_default() |= 1 << fork;
        }
    }
    // One queue of (event, seed bits), newest first. Building it is linear, and the unconflicted
    // events older than anything the forks reach are never taken. An event may be queued more
    // than once (as a seed, and when first reached): its entries come out together.
    let mut queue: BinaryHeap<(EventNid, u64)> = unconflicted
        .iter()
        .map(|e| (e.event, masks.shared))
        .chain(seeds.iter().map(|(e, bits)| (*e, *bits)))
        .collect();
    let mut reached: NidMap<EventNid, u64> = NidMap::default();
    let mut open = seeds.len();
    let mut difference = Vec::new();
    while open > 0 {
        let Some((event, mut seed)) = queue.pop() else {
            break;
        };
        while queue.peek().is_some_and(|(e, _)| *e == event) {
            seed |= queue.pop().map_or(0, |(_, more)| more);
        }
        let mask = reached.get(&event).copied().unwrap_or(0);
        if masks.open(seed, mask) {
            open -= 1;
        }
        if masks.partial(mask) {
            difference.push((event, mask));
        }
        let Some(auth_events) = known.get(source, event)? else {
            continue;
        };
        for &auth in auth_events {
            if auth >= event {
                return Ok(None);
            }
            let (before, after) = match reached.entry(auth) {
                Entry::Occupied(mut known) => {
                    let before = *known.get();
                    let after = before | seed | mask;
                    if before == after {
                        continue;
                    }
                    known.insert(after);
                    (Some(before), after)
                }
                Entry::Vacant(slot) => {
                    queue.push((auth, 0));
                    (None, *slot.insert(seed | mask))
                }
            };
            // Whether an unconflicted event is a seed does not bear on whether it is open.
            let fork_seed = seeds.get(&auth).copied().unwrap_or(0);
            let was_open =
                (fork_seed != 0 || before.is_some()) && masks.open(fork_seed, before.unwrap_or(0));
            match (was_open, masks.open(fork_seed, after)) {
                (false, true) => open += 1,
                (true, false) => open -= 1,
                _ => {}
            }
        }
    }
    let mut chains = vec![NidSet::default(); states.len()];
    for (event, mask) in difference {
        for (fork, chain) in chains.iter_mut().enumerate() {
            if mask & (1 << fork) != 0 {
                chain.insert(event);
            }
        }
    }
    Ok(Some(chains))
}

/// The conflicted state subgraph of state resolution v2.1, less the conflicted events
/// themselves: every event that is an auth ancestor of a conflicted event and has one as an
/// auth ancestor. Such an event is no older than the oldest conflicted event, so the walk down
/// from the conflicted events stops there; then, oldest first, an event reaches a conflicted
/// event when one of its auth events is one or reaches one. `None` when an auth event turns out
/// not to be older than its event.
pub(crate) fn conflicted_subgraph(
    source: &mut dyn StateSource,
    known: &mut AuthEvents,
    conflicted: &[EventNid],
) -> Result<Option<Vec<EventNid>>> {
    let Some(&floor) = conflicted.iter().min() else {
        return Ok(Some(Vec::new()));
    };
    let conflicted: NidSet<EventNid> = conflicted.iter().copied().collect();
    let mut met: NidSet<EventNid> = NidSet::default();
    let mut stack: Vec<EventNid> = conflicted.iter().copied().collect();
    while let Some(event) = stack.pop() {
        if !met.insert(event) {
            continue;
        }
        for &auth in known.get(source, event)?.unwrap_or_default() {
            if auth >= event {
                return Ok(None);
            }
            if auth >= floor && !met.contains(&auth) {
                stack.push(auth);
            }
        }
    }
    let mut oldest_first: Vec<EventNid> = met.into_iter().collect();
    oldest_first.sort_unstable();
    let mut reaching: NidSet<EventNid> = NidSet::default();
    let mut subgraph = Vec::new();
    for event in oldest_first {
        let auth_events = known.get(source, event)?.unwrap_or_default();
        if auth_events
            .iter()
            .any(|a| conflicted.contains(a) || reaching.contains(a))
        {
            reaching.insert(event);
            if !conflicted.contains(&event) {
                subgraph.push(event);
            }
        }
    }
    Ok(Some(subgraph))
}

/// The meaning of a mask's bits.
struct Masks {
    /// Every fork's bit.
    forks: u64,
    /// The unconflicted state's bit.
    shared: u64,
}

impl Masks {
    fn new(forks: usize) -> Self {
        Masks {
            forks: (1 << forks) - 1,
            shared: 1 << forks,
        }
    }

    /// Reached by some forks but not all, and not by the unconflicted state: in the difference.
    fn partial(&self, mask: u64) -> bool {
        let forks = mask & self.forks;
        mask & self.shared == 0 && forks != 0 && forks != self.forks
    }

    /// Whether an event not yet taken can still put events in the difference: it is a fork's
    /// conflicted event, whose bit its ancestors take, or it is in the difference itself.
    fn open(&self, seed: u64, mask: u64) -> bool {
        seed & self.forks != 0 || self.partial(mask)
    }
}

#[cfg(test)]
mod tests {
    //! The walk against the definition, by plain walks of `auth_events`, on random DAGs whose
    //! auth events are older than their events.

    use super::*;
    use crate::engine::block::StateEntry;
    use crate::engine::testing::{Rng, expected_difference};
    use crate::error::Error;
    use crate::nid::{RoomNid, SnapshotNid, StateKeyNid, TypeNid};
    use crate::store::record::EventRecord;

    /// Events 1..=n, each with up to four older auth events; a few are not stored.
    struct Dag(Vec<Option<Vec<EventNid>>>);

    fn nid(n: u64) -> EventNid {
        EventNid::new(n).expect("events count from 1")
    }

    impl StateSource for Dag {
        fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
            let auth = self.0.get(event.get() as usize - 1).cloned().flatten();
            Ok(auth.map(|auth_events| EventRecord {
                room: RoomNid::new(1).expect("1 is not 0"),
                event_type: TypeNid::MEMBER,
                state_key: Some(StateKeyNid::EMPTY),
                state_before: SnapshotNid::EMPTY,
                rejected: false,
                prev_events: Vec::new(),
                auth_events,
                membership: None,
            }))
        }
        fn lookup(&mut self, _: SnapshotNid, _: StateKey) -> Result<Option<EventNid>> {
            Err(Error::InvalidState("not read".into()))
        }
        fn event_id(&mut self, _: EventNid) -> Result<String> {
            Err(Error::InvalidState("not read".into()))
        }
        fn event_json(&mut self, _: EventNid) -> Result<Option<String>> {
            Err(Error::InvalidState("not read".into()))
        }
        fn event_nid(&mut self, _: &str) -> Result<Option<EventNid>> {
            Err(Error::InvalidState("not read".into()))
        }
        fn event_type(&mut self, _: TypeNid) -> Result<String> {
            Err(Error::InvalidState("not read".into()))
        }
        fn state_key(&mut self, _: StateKeyNid) -> Result<String> {
            Err(Error::InvalidState("not read".into()))
        }
        fn state_key_nid(&mut self, _: &str) -> Result<Option<StateKeyNid>> {
            Err(Error::InvalidState("not read".into()))
        }
        fn type_nid(&mut self, _: &str) -> Result<Option<TypeNid>> {
            Err(Error::InvalidState("not read".into()))
        }
    }

    /// Events 1..=n, each with up to four older auth events; one in twelve is not stored.
    fn random_dag(rng: &mut Rng, n: u64) -> Dag {
        Dag((1..=n)
            .map(|e| {
                let stored = e == 1 || rng.below(12) != 0;
                let auth = (0..rng.below(5).min(e - 1))
                    .map(|_| nid(1 + rng.below(e - 1)))
                    .collect::<Vec<_>>();
                stored.then_some(auth)
            })
            .collect())
    }

    /// Strict auth ancestors of `from`, by a plain walk.
    fn ancestors(dag: &Dag, from: impl Iterator<Item = EventNid>) -> HashSet<EventNid> {
        let mut out = HashSet::new();
        let mut stack: Vec<EventNid> = Vec::new();
        for e in from {
            stack.extend(dag.0[e.get() as usize - 1].iter().flatten());
        }
        while let Some(e) = stack.pop() {
            if out.insert(e) {
                stack.extend(dag.0[e.get() as usize - 1].iter().flatten());
            }
        }
        out
    }

    fn key(k: u64) -> StateKey {
        StateKey::new(
            TypeNid::MEMBER,
            StateKeyNid::new(k).expect("keys count from 1"),
        )
    }

    #[test]
    fn the_walk_finds_what_plain_walks_of_the_chains_find() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let n = 2 + rng.below(60);
            let dag = random_dag(&mut rng, n);
            let forks = 2 + rng.below(3) as usize;
            let keys = 1 + rng.below(8);
            let mut conflicted = HashSet::new();
            let mut states = vec![Vec::new(); forks];
            let mut shared = Vec::new();
            for k in 1..=keys {
                let event = nid(1 + rng.below(n));
                if rng.below(3) == 0 {
                    shared.push(StateEntry { key: key(k), event });
                    for state in &mut states {
                        state.push(StateEntry { key: key(k), event });
                    }
                    continue;
                }
                conflicted.insert(key(k));
                for state in &mut states {
                    if rng.below(4) != 0 {
                        let event = nid(1 + rng.below(n));
                        state.push(StateEntry { key: key(k), event });
                    }
                }
            }
            let states: Vec<StateMap> = states.into_iter().map(StateMap::from_entries).collect();
            let unconflicted = StateMap::from_entries(shared);
            let mut dag = dag;
            let mut known = AuthEvents::default();
            let got = auth_difference(&mut dag, &mut known, &states, &conflicted, &unconflicted)
                .expect("an in-memory DAG")
                .expect("auth events are older");
            let want = expected_difference(&states, &conflicted, &unconflicted, |events| {
                ancestors(&dag, events)
            });
            assert_eq!(got, want);
        }
    }

    #[test]
    fn the_subgraph_is_what_plain_walks_say_is_between_conflicted_events() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let n = 2 + rng.below(60);
            let mut dag = random_dag(&mut rng, n);
            let conflicted: Vec<EventNid> = (0..1 + rng.below(6))
                .map(|_| nid(1 + rng.below(n)))
                .collect();
            let mut known = AuthEvents::default();
            let mut got = conflicted_subgraph(&mut dag, &mut known, &conflicted)
                .expect("an in-memory DAG")
                .expect("auth events are older");
            got.sort_unstable();
            let reaches_one = |e: EventNid| {
                let above = ancestors(&dag, std::iter::once(e));
                conflicted.iter().any(|c| above.contains(c))
            };
            let mut want: Vec<EventNid> = ancestors(&dag, conflicted.iter().copied())
                .into_iter()
                .filter(|e| !conflicted.contains(e) && reaches_one(*e))
                .collect();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn an_auth_event_newer_than_its_event_hands_back_to_the_chains() {
        let mut dag = Dag(vec![Some(vec![]), Some(vec![nid(3)]), Some(vec![nid(1)])]);
        let fork = |e| {
            StateMap::from_entries(vec![StateEntry {
                key: key(1),
                event: nid(e),
            }])
        };
        let conflicted = HashSet::from([key(1)]);
        let states = [fork(2), fork(3)];
        let mut known = AuthEvents::default();
        let got = auth_difference(
            &mut dag,
            &mut known,
            &states,
            &conflicted,
            &StateMap::default(),
        );
        assert!(matches!(got, Ok(None)));
    }
}
