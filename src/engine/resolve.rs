//! The resolver's algorithms over blocks read in place: flatten, single-key lookup, filters,
//! diff and combine. [`crate::Resolver`] binds them to a transaction's tables.
//!
//! A snapshot is a list of runs, oldest first, and a later run overrides an earlier one. The
//! oldest run usually holds nearly the whole state, so flatten first folds the newer runs into
//! a small sorted override list, then copies the base in one pass that takes each override as
//! the copy reaches its key: about one copy of the state plus a few nanoseconds per newer entry.

use crate::engine::block::{BlockHash, BlockView, DeltaEntry, StateEntry};
use crate::error::{Error, Result};
use crate::nid::{EventNid, StateKey, StateKeyNid, TypeNid};

/// A resolved state: one entry per (type, state key), sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMap(Vec<StateEntry>);

impl StateMap {
    /// Builds a map from entries in any order. Later entries win for a repeated key.
    pub fn from_entries(mut entries: Vec<StateEntry>) -> Self {
        // A stable sort keeps the input order among equal keys, so the last one can win.
        entries.sort_by_key(|e| e.key);
        let mut out: Vec<StateEntry> = Vec::with_capacity(entries.len());
        for e in entries {
            match out.last_mut() {
                Some(last) if last.key == e.key => *last = e,
                _ => out.push(e),
            }
        }
        StateMap(out)
    }

    pub(crate) fn from_sorted(entries: Vec<StateEntry>) -> Self {
        StateMap(entries)
    }

    /// The event holding `key`, by binary search.
    pub fn get(&self, key: StateKey) -> Option<EventNid> {
        self.0
            .binary_search_by_key(&key, |e| e.key)
            .ok()
            .map(|i| self.0[i].event)
    }

    /// The entries, sorted by key.
    pub fn entries(&self) -> &[StateEntry] {
        &self.0
    }

    /// The entries of one event type, by binary search.
    pub fn of_type(&self, ty: TypeNid) -> &[StateEntry] {
        let start = self.0.partition_point(|e| e.key.ty < ty);
        let end = start + self.0[start..].partition_point(|e| e.key.ty == ty);
        &self.0[start..end]
    }

    /// This state with `more` added, in one merging copy rather than a sort of the whole. A key
    /// in both keeps this state's event; among repeats in `more`, the last wins.
    pub fn with_entries(&self, more: Vec<StateEntry>) -> StateMap {
        let more = StateMap::from_entries(more);
        let mut out = Vec::with_capacity(self.0.len() + more.0.len());
        let mut rest = self.0.as_slice();
        for e in more.0 {
            let before = rest.partition_point(|r| r.key < e.key);
            out.extend_from_slice(&rest[..before]);
            rest = &rest[before..];
            if rest.first().is_none_or(|r| r.key != e.key) {
                out.push(e);
            }
        }
        out.extend_from_slice(rest);
        StateMap(out)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the state is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates the entries in key order.
    pub fn iter(&self) -> std::slice::Iter<'_, StateEntry> {
        self.0.iter()
    }

    /// The entries, sorted by key.
    pub fn into_vec(self) -> Vec<StateEntry> {
        self.0
    }
}

impl<'a> IntoIterator for &'a StateMap {
    type Item = &'a StateEntry;
    type IntoIter = std::slice::Iter<'a, StateEntry>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// A key whose event differs between two states.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The (type, state key).
    pub key: StateKey,
    /// The event in the first state.
    pub old: EventNid,
    /// The event in the second state.
    pub new: EventNid,
}

/// The difference from one state to another, each list sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateDiff {
    /// Keys only the second state has.
    pub added: Vec<StateEntry>,
    /// Keys only the first state has.
    pub removed: Vec<StateEntry>,
    /// Keys both have, with different events.
    pub changed: Vec<Changed>,
}

impl StateDiff {
    /// Whether the two states are equal.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A key on which combined states disagree, with every event some state holds for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The (type, state key).
    pub key: StateKey,
    /// The distinct events the states hold for the key, sorted. A state that lacks the key adds
    /// no candidate, but still makes the key conflicted.
    pub candidates: Vec<EventNid>,
}

/// Several states combined: what they all agree on, and what they do not. This is the input of
/// Matrix state resolution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Combined {
    /// Keys every state holds with the same event.
    pub unconflicted: StateMap,
    /// Every other key, sorted.
    pub conflicted: Vec<Conflict>,
}

/// One block's entries in `start..end`, as one input of a merge.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Run<'a> {
    pub hash: BlockHash,
    pub view: BlockView<'a>,
    pub start: usize,
    pub end: usize,
}

impl<'a> Run<'a> {
    pub fn whole(hash: BlockHash, view: BlockView<'a>) -> Self {
        Run {
            hash,
            view,
            start: 0,
            end: view.len(),
        }
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    fn damaged(&self, index: usize) -> Error {
        Error::corrupt("blocks", self.hash, format!("entry {index} has a zero NID"))
    }

    fn entries(&self) -> impl Iterator<Item = Result<DeltaEntry>> + '_ {
        (self.start..self.end).map(|i| self.view.entry_at(i).ok_or_else(|| self.damaged(i)))
    }

    /// `Some(event)` when the run holds `key` (`Some(None)` for a tombstone).
    pub fn find(&self, key: StateKey) -> Result<Option<Option<EventNid>>> {
        let at = self
            .view
            .lower_bound(key, self.start..self.end)
            .map_err(|i| self.damaged(i))?;
        if at >= self.end {
            return Ok(None);
        }
        match self.view.entry_at(at) {
            Some(e) if e.key == key => Ok(Some(e.event)),
            Some(_) => Ok(None),
            None => Err(self.damaged(at)),
        }
    }

    /// Narrows the run to the keys of one event type.
    fn of_type(&self, ty: TypeNid) -> Result<Run<'a>> {
        let lo = StateKey::new(ty, StateKeyNid::MIN);
        let start = self
            .view
            .lower_bound(lo, self.start..self.end)
            .map_err(|i| self.damaged(i))?;
        let end = match TypeNid::new(ty.get().saturating_add(1)) {
            Some(next) if next > ty => self
                .view
                .lower_bound(StateKey::new(next, StateKeyNid::MIN), start..self.end)
                .map_err(|i| self.damaged(i))?,
            _ => self.end,
        };
        Ok(Run {
            start,
            end,
            ..*self
        })
    }
}

/// Folds runs into one sorted list where a newer run wins: the entries newer than the base.
///
/// Runs are merged pairwise from the newest: under every policy here the older runs are the
/// larger, so each entry is moved about twice rather than sorted.
fn overrides(newer: &[Run<'_>]) -> Result<Vec<DeltaEntry>> {
    let mut acc: Vec<DeltaEntry> = Vec::new();
    for run in newer.iter().rev() {
        acc = merge_newer_wins(run, acc)?;
    }
    Ok(acc)
}

/// Merges an older run with newer sorted entries; on a shared key the newer entry wins.
fn merge_newer_wins(older: &Run<'_>, newer: Vec<DeltaEntry>) -> Result<Vec<DeltaEntry>> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    older
        .view
        .overlay(older.start..older.end, &newer, &mut out)
        .map_err(|i| older.damaged(i))?;
    Ok(out)
}

/// Flattens runs, oldest first, into a state map.
///
/// The newer runs are folded into one sorted override list first; the base run is then copied
/// in one pass that takes each override as it comes (see [`BlockView::overlay`]), so an override
/// costs a few nanoseconds rather than a search.
pub(crate) fn flatten(runs: &[Run<'_>]) -> Result<StateMap> {
    let Some((base, newer)) = runs.split_first() else {
        return Ok(StateMap::default());
    };
    let over = overrides(newer)?;
    let mut out = Vec::with_capacity(base.len() + over.len());
    base.view
        .overlay(base.start..base.end, &over, &mut out)
        .map_err(|i| base.damaged(i))?;
    Ok(StateMap::from_sorted(out))
}

/// Merges runs, oldest first, into one sorted run, keeping tombstones when `keep_tombstones`
/// (a merged tail must still hide keys of the blocks kept before it).
pub(crate) fn merge(runs: &[Run<'_>], keep_tombstones: bool) -> Result<Vec<DeltaEntry>> {
    if !keep_tombstones {
        return Ok(flatten(runs)?.0.into_iter().map(DeltaEntry::from).collect());
    }
    let Some((base, newer)) = runs.split_first() else {
        return Ok(Vec::new());
    };
    merge_newer_wins(base, overrides(newer)?)
}

/// Looks one key up, newest run first, stopping at the first run that holds it.
pub(crate) fn lookup(runs: &[Run<'_>], key: StateKey) -> Result<Option<EventNid>> {
    for run in runs.iter().rev() {
        if let Some(event) = run.find(key)? {
            return Ok(event);
        }
    }
    Ok(None)
}

/// The entries of the given types. `types` need not be sorted.
pub(crate) fn filter_types(runs: &[Run<'_>], types: &[TypeNid]) -> Result<StateMap> {
    let mut types = types.to_vec();
    types.sort_unstable();
    types.dedup();
    let mut out = Vec::new();
    for ty in types {
        let narrowed = runs
            .iter()
            .map(|r| r.of_type(ty))
            .collect::<Result<Vec<_>>>()?;
        out.extend(flatten(&narrowed)?.0);
    }
    Ok(StateMap::from_sorted(out))
}

/// The entries of the given keys. `keys` need not be sorted.
pub(crate) fn filter_keys(runs: &[Run<'_>], keys: &[StateKey]) -> Result<StateMap> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        if let Some(event) = lookup(runs, key)? {
            out.push(StateEntry { key, event });
        }
    }
    Ok(StateMap::from_sorted(out))
}

/// The keys any of `runs` mentions, sorted and distinct.
fn touched_keys(runs: &[Run<'_>]) -> Result<Vec<StateKey>> {
    let mut keys = Vec::new();
    for run in runs {
        for e in run.entries() {
            keys.push(e?.key);
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// Above this many entries in the differing runs, a diff flattens both states instead of
/// probing key by key. Probing costs a binary search per run per key; flattening costs a pass.
const PROBE_DIFF_MAX_ENTRIES: usize = 4096;

/// The difference from state `a` to state `b`.
///
/// Runs that both states share at the front hold the same entries, so only keys in the runs
/// after the shared prefix can differ: when those are few, each is looked up in both states and
/// the cost follows the change, not the state size.
pub(crate) fn diff(a: &[Run<'_>], b: &[Run<'_>]) -> Result<StateDiff> {
    let shared = a
        .iter()
        .zip(b)
        .take_while(|(x, y)| x.hash == y.hash && (x.start, x.end) == (y.start, y.end))
        .count();
    let (a_tail, b_tail) = (&a[shared..], &b[shared..]);
    let tail_entries: usize = a_tail.iter().chain(b_tail).map(Run::len).sum();
    if tail_entries <= PROBE_DIFF_MAX_ENTRIES {
        let mut keys = touched_keys(a_tail)?;
        keys.extend(touched_keys(b_tail)?);
        keys.sort_unstable();
        keys.dedup();
        let mut d = StateDiff::default();
        for key in keys {
            classify(&mut d, key, lookup(a, key)?, lookup(b, key)?);
        }
        return Ok(d);
    }
    Ok(diff_maps(&flatten(a)?, &flatten(b)?))
}

fn classify(d: &mut StateDiff, key: StateKey, old: Option<EventNid>, new: Option<EventNid>) {
    match (old, new) {
        (Some(old), Some(new)) if old != new => d.changed.push(Changed { key, old, new }),
        (Some(event), None) => d.removed.push(StateEntry { key, event }),
        (None, Some(event)) => d.added.push(StateEntry { key, event }),
        _ => {}
    }
}

/// The difference between two resolved maps, by one merge walk.
pub fn diff_maps(a: &StateMap, b: &StateMap) -> StateDiff {
    let mut d = StateDiff::default();
    let (mut i, mut j) = (a.0.iter().peekable(), b.0.iter().peekable());
    loop {
        match (i.peek(), j.peek()) {
            (Some(x), Some(y)) if x.key == y.key => {
                classify(&mut d, x.key, Some(x.event), Some(y.event));
                i.next();
                j.next();
            }
            (Some(x), Some(y)) if x.key < y.key => {
                d.removed.push(**x);
                i.next();
            }
            (Some(x), None) => {
                d.removed.push(**x);
                i.next();
            }
            (_, Some(y)) => {
                d.added.push(**y);
                j.next();
            }
            (None, None) => return d,
        }
    }
}

/// Combines resolved maps into their agreed part and their conflicts.
pub fn combine_maps(maps: &[StateMap]) -> Combined {
    let mut cursors: Vec<_> = maps.iter().map(|m| m.0.iter().peekable()).collect();
    let mut out = Combined::default();
    let mut unconflicted = Vec::new();
    let mut held = Vec::with_capacity(maps.len());
    while let Some(key) = cursors
        .iter_mut()
        .filter_map(|c| c.peek().map(|e| e.key))
        .min()
    {
        held.clear();
        for c in &mut cursors {
            if let Some(e) = c.next_if(|e| e.key == key) {
                held.push(e.event);
            }
        }
        let everyone_agrees = held.len() == maps.len() && held.iter().all(|e| *e == held[0]);
        if everyone_agrees {
            unconflicted.push(StateEntry {
                key,
                event: held[0],
            });
        } else {
            let mut candidates = held.clone();
            candidates.sort_unstable();
            candidates.dedup();
            out.conflicted.push(Conflict { key, candidates });
        }
    }
    out.unconflicted = StateMap::from_sorted(unconflicted);
    out
}
