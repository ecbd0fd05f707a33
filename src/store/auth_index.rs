//! The auth-chain index: a chain cover of the auth DAG, built as events are stored.
//!
//! Every stored state event has a **position**: a chain, and a sequence number in it. A chain is
//! a run of events of one (type, state key), each an auth event of the next, so an event's auth
//! chain holds every earlier event of its own chain. A **link** from one position to a position
//! on another chain says the first event has the second as an auth event, and so reaches
//! everything the second does. The auth chain of an event is then, over the chains its links
//! reach (transitively), each chain's events up to the highest position reached: a few range
//! scans, where a walk reads every event of the chain.
//!
//! A link is left out when the event reaches its target another way: an earlier event of the
//! same chain links at or above it (the earlier event's reach is the later one's too), or
//! another of its auth events reaches it, by that one's chain or one of its links. So the links
//! of an event are followed transitively, never read as its auth events. Non-state events have
//! no position: nothing names them as auth events in a valid room.
//!
//! The index answers exactly while every indexed event's auth events were indexed before it.
//! Meta [`AUTH_INDEX_KEY`] is 1 in a new store and set to 0, for good, when that breaks: an
//! auth event not stored yet, or not a state event, or an event record rewritten with other
//! auth events, or a purge that took events another room's events name. Readers then walk
//! `auth_events` instead.

use crate::engine::resolve::StateMap;
use crate::error::{Error, Result};
use crate::nid::{EventNid, NidMap, NidSet, RoomNid, StateKey};
use crate::store::codec;
use crate::store::read::Tables;
use crate::store::record::EventRecord;
use crate::store::tables;
use crate::store::writer::Writer;
use redb::{ReadableTable, TableDefinition};
use std::collections::HashSet;

/// Event NID to its position.
pub(crate) const AUTH_POSITIONS: TableDefinition<u64, u64> = TableDefinition::new("auth_positions");
/// Position to event NID: a chain's events in order.
pub(crate) const AUTH_CHAINS: TableDefinition<u64, u64> = TableDefinition::new("auth_chains");
/// (origin position, target position) for every link.
pub(crate) const AUTH_LINKS: TableDefinition<(u64, u64), ()> = TableDefinition::new("auth_links");
/// (target position, origin position): the links again, by target.
pub(crate) const AUTH_LINKS_INTO: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("auth_links_into");

/// The meta key saying whether the index is complete (1) or abandoned (0, or absent in stores
/// created before it was kept).
pub(crate) const AUTH_INDEX_KEY: &str = "auth_index_complete";
/// The meta key of the next chain number.
pub(crate) const NEXT_CHAIN_KEY: &str = "next_auth_chain";

/// Bits of a position that hold the sequence number; the chain number takes the rest. A chain
/// that would outgrow them is ended, and its next event starts a new one.
const SEQ_BITS: u32 = 24;
const SEQ_MAX: u64 = (1 << SEQ_BITS) - 1;
/// The highest chain number a position can hold.
const CHAIN_MAX: u64 = (1 << (64 - SEQ_BITS)) - 1;

/// A chain number and a sequence number (from 1) in one `u64`, chain first, so that a chain's
/// positions sort together and in order.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position(u64);

impl Position {
    pub(crate) fn new(chain: u64, seq: u64) -> Result<Position> {
        if chain == 0 || chain > CHAIN_MAX || seq == 0 || seq > SEQ_MAX {
            return Err(Error::InvalidState(format!(
                "auth-chain position ({chain}, {seq}) out of range"
            )));
        }
        Ok(Position(chain << SEQ_BITS | seq))
    }

    /// A stored position, checked.
    pub(crate) fn from_raw(raw: u64) -> Result<Position> {
        Position::new(raw >> SEQ_BITS, raw & SEQ_MAX)
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn chain(self) -> u64 {
        self.0 >> SEQ_BITS
    }

    pub(crate) fn seq(self) -> u64 {
        self.0 & SEQ_MAX
    }

    /// The next position on the same chain, unless the chain is full.
    pub(crate) fn next(self) -> Option<Position> {
        (self.seq() < SEQ_MAX).then_some(Position(self.0 + 1))
    }
}

/// The raw position of `seq` on `chain`, clamped into the chain's range: for range bounds.
fn raw_at(chain: u64, seq: u64) -> u64 {
    chain << SEQ_BITS | seq.min(SEQ_MAX)
}

/// What the index algorithms read. The store's writer and read transactions implement it over
/// their tables. Public only because [`crate::StateSource`] names it; nothing outside the crate
/// can name or implement it.
#[doc(hidden)]
pub trait IndexRead {
    /// An event's position; `None` for an event without one (not stored, or not state).
    fn position(&mut self, event: EventNid) -> Result<Option<Position>>;
    /// The events of `chain` with sequence numbers in `from..=to`, in order.
    fn events_on(&mut self, chain: u64, from: u64, to: u64, out: &mut Vec<EventNid>) -> Result<()>;
    /// The targets of the links from `chain`'s events numbered `from..=to`.
    fn links_from(&mut self, chain: u64, from: u64, to: u64, out: &mut Vec<Position>)
    -> Result<()>;
    /// Up to `limit` links into `chain`'s events numbered `from` and above, in order, as
    /// (target, origin) pairs; those after `after` only, when given.
    fn links_into(
        &mut self,
        chain: u64,
        from: u64,
        after: Option<Link>,
        limit: usize,
        out: &mut Vec<Link>,
    ) -> Result<()>;
    /// A stored event's record.
    fn record(&mut self, event: EventNid) -> Result<Option<EventRecord>>;
    /// Every link from chains `first..=last`, in order: one scan where many chains are asked.
    fn links_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, Position),
    ) -> Result<()>;
    /// Every event of chains `first..=last` with its position, in order.
    fn events_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, EventNid),
    ) -> Result<()>;
}

/// Asks of at least this many chains, packed at least a quarter as dense as the chain numbers
/// they span, read the span in one scan instead of a range scan per chain.
const DENSE_CHAINS: usize = 1024;

/// Whether `chains` (sorted) are many and dense enough for one scan over their span.
fn dense(chains: &[u64]) -> Option<(u64, u64)> {
    let (&first, &last) = (chains.first()?, chains.last()?);
    (chains.len() >= DENSE_CHAINS && last - first < 4 * chains.len() as u64)
        .then_some((first, last))
}

/// The number of chains in `first..=last`, a span [`dense`] accepted: at most four times the
/// chains asked about, which are in memory already.
fn span_len(first: u64, last: u64) -> usize {
    (last - first + 1) as usize
}

pub(crate) fn links_span(
    table: &impl ReadableTable<(u64, u64), ()>,
    first: u64,
    last: u64,
    visit: &mut dyn FnMut(Position, Position),
) -> Result<()> {
    for row in table.range((raw_at(first, 0), 0)..=(raw_at(last, SEQ_MAX), u64::MAX))? {
        let (key, _) = row?;
        let (origin, target) = key.value();
        let bad = |_| Error::corrupt("auth_links", origin, "bad position");
        visit(
            Position::from_raw(origin).map_err(bad)?,
            Position::from_raw(target).map_err(bad)?,
        );
    }
    Ok(())
}

pub(crate) fn events_span(
    table: &impl ReadableTable<u64, u64>,
    first: u64,
    last: u64,
    visit: &mut dyn FnMut(Position, EventNid),
) -> Result<()> {
    for row in table.range(raw_at(first, 0)..=raw_at(last, SEQ_MAX))? {
        let (at, event) = row?;
        let at = at.value();
        let position = Position::from_raw(at)
            .map_err(|_| Error::corrupt("auth_chains", at, "bad position"))?;
        let event = EventNid::new(event.value())
            .ok_or_else(|| Error::corrupt("auth_chains", at, "zero event NID"))?;
        visit(position, event);
    }
    Ok(())
}

/// The (type, state key) of a stored state event.
fn key_of(index: &mut dyn IndexRead, event: EventNid) -> Result<Option<StateKey>> {
    Ok(index.record(event)?.and_then(|r| {
        r.state_key.map(|key| StateKey {
            ty: r.event_type,
            key,
        })
    }))
}

pub(crate) fn position(
    table: &impl ReadableTable<u64, u64>,
    event: EventNid,
) -> Result<Option<Position>> {
    table
        .get(event.get())?
        .map(|v| Position::from_raw(v.value()))
        .transpose()
}

pub(crate) fn events_on(
    table: &impl ReadableTable<u64, u64>,
    chain: u64,
    from: u64,
    to: u64,
    out: &mut Vec<EventNid>,
) -> Result<()> {
    if from > to {
        return Ok(());
    }
    for row in table.range(raw_at(chain, from)..=raw_at(chain, to))? {
        let (at, event) = row?;
        let event = EventNid::new(event.value())
            .ok_or_else(|| Error::corrupt("auth_chains", at.value(), "zero event NID"))?;
        out.push(event);
    }
    Ok(())
}

/// The second halves of the rows keyed `(raw_at(chain, from)..=raw_at(chain, to), _)`.
pub(crate) fn pairs(
    table: &impl ReadableTable<(u64, u64), ()>,
    name: &'static str,
    chain: u64,
    from: u64,
    to: u64,
    out: &mut Vec<Position>,
) -> Result<()> {
    if from > to {
        return Ok(());
    }
    for row in table.range((raw_at(chain, from), 0)..=(raw_at(chain, to), u64::MAX))? {
        let (key, _) = row?;
        let (at, other) = key.value();
        out.push(Position::from_raw(other).map_err(|_| Error::corrupt(name, at, "bad position"))?);
    }
    Ok(())
}

/// A link's (target, origin) positions, as `auth_links_into` keys them.
pub type Link = (Position, Position);

/// Up to `limit` rows of `auth_links_into` into `chain`'s events from `from` on, after `after`.
pub(crate) fn links_into(
    table: &impl ReadableTable<(u64, u64), ()>,
    chain: u64,
    from: u64,
    after: Option<Link>,
    limit: usize,
    out: &mut Vec<Link>,
) -> Result<()> {
    let end = (raw_at(chain, SEQ_MAX), u64::MAX);
    let rows = match after {
        Some((t, o)) => table.range::<(u64, u64)>((
            std::ops::Bound::Excluded((t.raw(), o.raw())),
            std::ops::Bound::Included(end),
        ))?,
        None => table.range((raw_at(chain, from), 0)..=end)?,
    };
    for row in rows.take(limit) {
        let (key, _) = row?;
        let (target, origin) = key.value();
        let bad = |_| Error::corrupt("auth_links_into", target, "bad position");
        out.push((
            Position::from_raw(target).map_err(bad)?,
            Position::from_raw(origin).map_err(bad)?,
        ));
    }
    Ok(())
}

/// How far a set of events reaches into one chain.
#[derive(Clone, Copy, Debug, Default)]
struct Bound {
    /// The highest sequence number in the auth chain (0: none).
    members: u64,
    /// The highest sequence number whose links have been followed.
    links: u64,
}

/// The auth chain of a set of events, as the highest sequence number it holds on each chain.
#[derive(Debug, Default)]
pub(crate) struct Reach(NidMap<u64, Bound>);

impl Reach {
    /// The highest sequence number of `chain` in the auth chain; 0 when none.
    pub(crate) fn upto(&self, chain: u64) -> u64 {
        self.0.get(&chain).map_or(0, |b| b.members)
    }

    /// Each chain reached, with the highest sequence number of it in the auth chain.
    pub(crate) fn chains(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0
            .iter()
            .filter(|(_, b)| b.members > 0)
            .map(|(c, b)| (*c, b.members))
    }

    fn raise(&mut self, todo: &mut Vec<(u64, u64, u64)>, chain: u64, members: u64, links: u64) {
        let bound = self.0.entry(chain).or_default();
        bound.members = bound.members.max(members);
        if links > bound.links {
            todo.push((chain, bound.links + 1, links));
            bound.links = links;
        }
    }
}

/// The auth chain of the events at `of`: their ancestors, not themselves (an event is in it
/// when another of them has it as an ancestor). `via` are positions whose events are in it
/// themselves: the auth events of an event without a position.
pub(crate) fn reach(
    index: &mut dyn IndexRead,
    of: impl IntoIterator<Item = Position>,
    via: impl IntoIterator<Item = Position>,
) -> Result<Reach> {
    let mut reach = Reach::default();
    let mut todo = Vec::new();
    let mut of: Vec<Position> = of.into_iter().collect();
    // Popped from the stack in chain order.
    of.sort_unstable_by(|a, b| b.cmp(a));
    for p in of {
        reach.raise(&mut todo, p.chain(), p.seq() - 1, p.seq());
    }
    for p in via {
        reach.raise(&mut todo, p.chain(), p.seq(), p.seq());
    }
    follow_dense(index, &mut reach, &mut todo)?;
    let mut targets = Vec::new();
    while let Some((chain, from, to)) = todo.pop() {
        targets.clear();
        index.links_from(chain, from, to, &mut targets)?;
        for t in &targets {
            reach.raise(&mut todo, t.chain(), t.seq(), t.seq());
        }
    }
    Ok(reach)
}

/// Follows the links of the chains waiting in `todo` by one scan over their span, when they
/// are many and dense (the whole state of a large room): a range scan per chain costs more.
fn follow_dense(
    index: &mut dyn IndexRead,
    reach: &mut Reach,
    todo: &mut Vec<(u64, u64, u64)>,
) -> Result<()> {
    let mut chains: Vec<u64> = todo.iter().map(|t| t.0).collect();
    chains.sort_unstable();
    chains.dedup();
    let Some((first, last)) = dense(&chains) else {
        return Ok(());
    };
    // Per chain of the span, the sequence numbers whose links to follow: a vector, not a map,
    // as the span is dense and the scan asks once per link.
    let mut pending = vec![(1, 0); span_len(first, last)];
    for (chain, from, to) in todo.drain(..) {
        let (f, t) = &mut pending[(chain - first) as usize];
        // A chain raised twice has two adjacent ranges.
        (*f, *t) = if *f > *t {
            (from, to)
        } else {
            ((*f).min(from), (*t).max(to))
        };
    }
    let mut raised = Vec::new();
    index.links_span(first, last, &mut |origin, target| {
        if let Some((from, to)) = pending.get((origin.chain() - first) as usize)
            && (*from..=*to).contains(&origin.seq())
        {
            raised.push(target);
        }
    })?;
    for t in raised {
        reach.raise(todo, t.chain(), t.seq(), t.seq());
    }
    Ok(())
}

/// The reach of the auth chain of `events`: from their positions, and for an event without one
/// (not a state event), from its auth events'.
fn reach_of(index: &mut dyn IndexRead, events: &[EventNid]) -> Result<Reach> {
    // In NID order, and below in chain order, the B-tree pages are read in order.
    let mut sorted = events.to_vec();
    sorted.sort_unstable();
    let (mut of, mut via) = (Vec::new(), Vec::new());
    for &event in &sorted {
        if let Some(p) = index.position(event)? {
            of.push(p);
            continue;
        }
        let record = index.record(event)?.ok_or(Error::UnknownEvent(event))?;
        for a in record.auth_events {
            // A complete index has a position for every auth event of a stored event.
            via.push(index.position(a)?.ok_or_else(|| {
                Error::corrupt("auth_positions", a.get(), "an auth event has no position")
            })?);
        }
    }
    reach(index, of, via)
}

/// Whether `ancestor` is in the auth chain of `event`.
pub(crate) fn contains(
    index: &mut dyn IndexRead,
    ancestor: EventNid,
    event: EventNid,
) -> Result<bool> {
    let reach = reach_of(index, &[event])?;
    // Only state events have positions, and only they are anybody's auth events.
    Ok(match index.position(ancestor)? {
        Some(p) => reach.upto(p.chain()) >= p.seq(),
        None => false,
    })
}

/// The auth chain of `events`, chain by chain: each event once, with no set of them kept.
pub(crate) fn chain_of(index: &mut dyn IndexRead, events: &[EventNid]) -> Result<Vec<EventNid>> {
    let reach = reach_of(index, events)?;
    let mut chains: Vec<(u64, u64)> = reach.chains().collect();
    chains.sort_unstable();
    let mut out = Vec::new();
    let numbers: Vec<u64> = chains.iter().map(|c| c.0).collect();
    if let Some((first, last)) = dense(&numbers) {
        let mut upto = vec![0; span_len(first, last)];
        for &(chain, seq) in &chains {
            upto[(chain - first) as usize] = seq;
        }
        index.events_span(first, last, &mut |at, event| {
            if upto
                .get((at.chain() - first) as usize)
                .is_some_and(|u| *u >= at.seq())
            {
                out.push(event);
            }
        })?;
        return Ok(out);
    }
    for (chain, upto) in chains {
        index.events_on(chain, 1, upto, &mut out)?;
    }
    Ok(out)
}

/// Chain numbers to the (type, state key) of their events, kept across resolutions. Forget them
/// when the writes they were read from are undone.
#[derive(Debug, Default)]
pub(crate) struct ChainKeys(NidMap<u64, Option<StateKey>>);

impl ChainKeys {
    /// Drops everything: after a rollback, whose chain numbers are handed out again.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    fn of(&mut self, index: &mut dyn IndexRead, chain: u64) -> Result<Option<StateKey>> {
        if let Some(key) = self.0.get(&chain) {
            return Ok(*key);
        }
        if self.0.len() > CHAIN_KEYS_HELD {
            self.0.clear();
        }
        let mut first = Vec::new();
        index.events_on(chain, 1, 1, &mut first)?;
        let key = match first.first() {
            Some(event) => key_of(index, *event)?,
            None => None,
        };
        self.0.insert(chain, key);
        Ok(key)
    }
}

/// A writer's caches of chains' links are emptied past this many chains each.
const CHAIN_LINKS_HELD: usize = 1 << 16;

/// [`ChainKeys`] is emptied past this many chains (about 40 MiB).
const CHAIN_KEYS_HELD: usize = 1 << 20;

/// Per fork, the auth chain of its conflicted events within the auth difference: the events
/// some forks' conflicted events have as ancestors but not all, and no unconflicted event has.
/// The same answer as [`crate::matrix`]'s walk, from the index. `None` when a conflicted event
/// has no position.
///
/// On each chain, fork `i`'s conflicted events reach up to some `r_i`; the forks' full states
/// reach `max(u, r_i)`, where `u` is how far the unconflicted events reach. So the difference
/// on that chain is the events above `max(u, min r_i)` up to `max r_i`; only `u` within that
/// range matters, and it is found by asking whether the unconflicted events reach a position,
/// upwards through the links into it.
pub(crate) fn difference(
    index: &mut dyn IndexRead,
    keys: &mut ChainKeys,
    states: &[StateMap],
    conflicted: &HashSet<StateKey>,
    unconflicted: &StateMap,
) -> Result<Option<Vec<NidSet<EventNid>>>> {
    let mut reaches = Vec::with_capacity(states.len());
    for state in states {
        let mut seeds = Vec::new();
        for e in state.iter().filter(|e| conflicted.contains(&e.key)) {
            match index.position(e.event)? {
                Some(p) => seeds.push(p),
                None => return Ok(None),
            }
        }
        reaches.push(reach(index, seeds, [])?);
    }
    let mut chains: Vec<u64> = reaches
        .iter()
        .flat_map(|r| r.chains().map(|(c, _)| c))
        .collect();
    chains.sort_unstable();
    chains.dedup();
    let mut out = vec![NidSet::default(); states.len()];
    let mut events = Vec::new();
    for chain in chains {
        let (low, high) = reaches.iter().fold((u64::MAX, 0), |(lo, hi), r| {
            (lo.min(r.upto(chain)), hi.max(r.upto(chain)))
        });
        if low == high {
            continue;
        }
        let shared = shared_upto(index, keys, unconflicted, chain, low, high)?;
        for (fork, r) in reaches.iter().enumerate() {
            events.clear();
            index.events_on(chain, shared + 1, r.upto(chain), &mut events)?;
            out[fork].extend(events.iter().copied());
        }
    }
    Ok(Some(out))
}

/// How far into `chain` the unconflicted events reach, as far as it matters: the highest
/// sequence number in `low + 1..=high` they reach, or `low`.
fn shared_upto(
    index: &mut dyn IndexRead,
    keys: &mut ChainKeys,
    unconflicted: &StateMap,
    chain: u64,
    low: u64,
    high: u64,
) -> Result<u64> {
    // Reaching is monotone: whatever reaches an event reaches those below it on its chain.
    let (mut reached, mut missed) = (low, high + 1);
    while missed - reached > 1 {
        let mid = reached + (missed - reached) / 2;
        if shared_reaches(index, keys, unconflicted, Position::new(chain, mid)?)? {
            reached = mid;
        } else {
            missed = mid;
        }
    }
    Ok(reached)
}

/// Whether some unconflicted event has the event at `target` as an ancestor. Upwards from the
/// target: the events of a chain from some number on reach it; so do the origins of links into
/// those events, and the events after them on their chains. A chain's unconflicted event, if
/// any, is the one of its (type, state key).
fn shared_reaches(
    index: &mut dyn IndexRead,
    keys: &mut ChainKeys,
    unconflicted: &StateMap,
    target: Position,
) -> Result<bool> {
    // (chain, lowest sequence number whose events reach the target): from there on, every
    // event of the chain reaches it.
    let mut lowest: NidMap<u64, u64> = NidMap::default();
    if holds_from(index, keys, unconflicted, target.chain(), target.seq() + 1)? {
        return Ok(true);
    }
    lowest.insert(target.chain(), target.seq() + 1);
    let mut todo = vec![(target.chain(), target.seq())];
    let mut links = Vec::new();
    while let Some((chain, links_from)) = todo.pop() {
        // The links into a much-named event (a power levels event every later member's join
        // names) run to the tens of thousands, and the first few usually answer: read them in
        // growing batches, each origin checked as it comes.
        let (mut after, mut batch) = (None, 16);
        loop {
            links.clear();
            index.links_into(chain, links_from, after, batch, &mut links)?;
            for &(_, origin) in &links {
                if lowest
                    .get(&origin.chain())
                    .is_some_and(|seen| *seen <= origin.seq())
                {
                    continue;
                }
                if holds_from(index, keys, unconflicted, origin.chain(), origin.seq())? {
                    return Ok(true);
                }
                lowest.insert(origin.chain(), origin.seq());
                todo.push((origin.chain(), origin.seq()));
            }
            if links.len() < batch {
                break;
            }
            // A damaged B-tree can hand back rows out of order: the scan must still move on.
            if links.last().copied() <= after {
                return Err(Error::corrupt(
                    "auth_links_into",
                    chain,
                    "links read out of order",
                ));
            }
            after = links.last().copied();
            batch = (batch * 4).min(4096);
        }
    }
    Ok(false)
}

/// Whether the unconflicted state holds an event of `chain` numbered `from` or above: the
/// state's event of the chain's (type, state key), when it lies on the chain.
fn holds_from(
    index: &mut dyn IndexRead,
    keys: &mut ChainKeys,
    unconflicted: &StateMap,
    chain: u64,
    from: u64,
) -> Result<bool> {
    if let Some(key) = keys.of(index, chain)?
        && let Some(event) = unconflicted.get(key)
        && let Some(p) = index.position(event)?
    {
        return Ok(p.chain() == chain && p.seq() >= from);
    }
    Ok(false)
}

impl IndexRead for Writer<'_> {
    fn position(&mut self, event: EventNid) -> Result<Option<Position>> {
        if let Some(known) = self.cache.positions.get(&event) {
            return Ok(*known);
        }
        let found = position(self.auth_positions()?, event)?;
        self.cache.positions.insert(event, found);
        Ok(found)
    }

    fn events_on(&mut self, chain: u64, from: u64, to: u64, out: &mut Vec<EventNid>) -> Result<()> {
        events_on(self.auth_chains()?, chain, from, to, out)
    }

    fn links_from(
        &mut self,
        chain: u64,
        from: u64,
        to: u64,
        out: &mut Vec<Position>,
    ) -> Result<()> {
        pairs(self.auth_links()?, "auth_links", chain, from, to, out)
    }

    fn links_into(
        &mut self,
        chain: u64,
        from: u64,
        after: Option<Link>,
        limit: usize,
        out: &mut Vec<Link>,
    ) -> Result<()> {
        links_into(self.auth_links_into()?, chain, from, after, limit, out)
    }

    fn record(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        self.event(event)
    }

    fn links_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, Position),
    ) -> Result<()> {
        links_span(self.auth_links()?, first, last, visit)
    }

    fn events_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, EventNid),
    ) -> Result<()> {
        events_span(self.auth_chains()?, first, last, visit)
    }
}

/// Keeping the index as events are written.
impl Writer<'_> {
    /// Whether the auth-chain index is complete ([`AUTH_INDEX_KEY`]).
    pub(crate) fn auth_index_complete(&mut self) -> Result<bool> {
        if let Some(known) = self.cache.auth_index {
            return Ok(known);
        }
        let known = self
            .meta()?
            .get(AUTH_INDEX_KEY.as_bytes())?
            .is_some_and(|v| v.value() == 1);
        self.cache.auth_index = Some(known);
        Ok(known)
    }

    /// Gives the index up: from now on readers walk `auth_events`.
    pub(crate) fn abandon_auth_index(&mut self) -> Result<()> {
        if self.auth_index_complete()? {
            self.meta()?.insert(AUTH_INDEX_KEY.as_bytes(), 0)?;
            self.cache.auth_index = Some(false);
        }
        Ok(())
    }

    /// Indexes a state event as its record is written. `old` is the record it replaces: a
    /// rewrite with the same auth events changes nothing, one with others abandons the index.
    pub(crate) fn index_event(
        &mut self,
        event: EventNid,
        record: &EventRecord,
        old: Option<&EventRecord>,
    ) -> Result<()> {
        if !self.auth_index_complete()? {
            return Ok(());
        }
        if let Some(old) = old {
            let same = old.auth_events == record.auth_events
                && old.event_type == record.event_type
                && old.state_key == record.state_key;
            return if same {
                Ok(())
            } else {
                self.abandon_auth_index()
            };
        }
        // A non-state event has no position, but its auth chain is read from its auth events'.
        let mut auth = Vec::with_capacity(record.auth_events.len());
        for a in &record.auth_events {
            match self.position(*a)? {
                Some(p) => auth.push((*a, p)),
                None => return self.abandon_auth_index(),
            }
        }
        if record.state_key.is_none() {
            return Ok(());
        }
        let own = self.own_position(record, &auth)?;
        self.auth_positions()?.insert(event.get(), own.raw())?;
        self.auth_chains()?.insert(own.raw(), event.get())?;
        self.cache.positions.insert(event, Some(own));
        for target in self.link_targets(own, &auth)? {
            self.insert_link(own, target)?;
            if let Some(links) = self.cache.links_of.get_mut(&own.chain()) {
                let into = links.entry(target.chain()).or_default();
                into.push((own.seq(), target.seq()));
            }
            let reached = self.chain_links(own)?.entry(target.chain()).or_default();
            *reached = (*reached).max(target.seq());
        }
        Ok(())
    }

    /// The auth events `own` links to: each one not reached otherwise, that is, not on its own
    /// chain, not by an earlier event of that chain, and not by another of its auth events (a
    /// later one of the same chain, or one whose chain links at or above it). An event that names
    /// the create event and the creator's membership links to the membership only, which links
    /// to the create event.
    fn link_targets(
        &mut self,
        own: Position,
        auth: &[(EventNid, Position)],
    ) -> Result<Vec<Position>> {
        let mut targets = Vec::with_capacity(auth.len());
        for &(_, target) in auth {
            if target.chain() != own.chain() && !self.linked_below(own, target)? {
                targets.push(target);
            }
        }
        targets.sort_unstable();
        targets.dedup();
        let mut kept = Vec::with_capacity(targets.len());
        for &target in &targets {
            let mut reached = false;
            for &other in &targets {
                reached = other != target && self.reaches(other, target)?;
                if reached {
                    break;
                }
            }
            // Reaching follows the order events were indexed in, so it has no cycles: a target
            // left out is reached through one that is kept.
            if !reached {
                kept.push(target);
            }
        }
        Ok(kept)
    }

    /// Whether the event at `from` reaches the one at `to` by its own chain or one link.
    fn reaches(&mut self, from: Position, to: Position) -> Result<bool> {
        if from.chain() == to.chain() {
            return Ok(from.seq() > to.seq());
        }
        let chain = from.chain();
        if !self.cache.links_of.contains_key(&chain) {
            if self.cache.links_of.len() >= CHAIN_LINKS_HELD {
                self.cache.links_of.clear();
            }
            let mut links: NidMap<u64, Vec<(u64, u64)>> = NidMap::default();
            self.links_span(chain, chain, &mut |origin, target| {
                let to_chain = links.entry(target.chain()).or_default();
                to_chain.push((origin.seq(), target.seq()));
            })?;
            self.cache.links_of.insert(chain, links);
        }
        let links = self.cache.links_of.get(&chain);
        let into = links.and_then(|l| l.get(&to.chain()));
        Ok(into.is_some_and(|l| {
            l.iter()
                .any(|&(origin, target)| origin <= from.seq() && target >= to.seq())
        }))
    }

    /// The next position on the chain of the auth event of the same (type, state key) and room,
    /// when that event ends its chain; otherwise the start of a new chain.
    fn own_position(
        &mut self,
        record: &EventRecord,
        auth: &[(EventNid, Position)],
    ) -> Result<Position> {
        for &(a, p) in auth {
            let Some(next) = p.next() else { continue };
            // A chain stays within a room, so a purge takes whole chains.
            let same_key = self.event_ref(a)?.is_some_and(|r| {
                r.event_type == record.event_type
                    && r.state_key == record.state_key
                    && r.room == record.room
            });
            if same_key
                && self
                    .auth_chains()?
                    .range(next.raw()..=raw_at(p.chain(), SEQ_MAX))?
                    .next()
                    .is_none()
            {
                return Ok(next);
            }
        }
        let chain = self.take_counter(NEXT_CHAIN_KEY, 1)?;
        Position::new(chain, 1)
    }

    /// Whether an earlier event of `own`'s chain links to `target` or above on its chain, so
    /// that `own` reaches it already.
    fn linked_below(&mut self, own: Position, target: Position) -> Result<bool> {
        let reached = self.chain_links(own)?.get(&target.chain());
        Ok(reached.is_some_and(|seq| *seq >= target.seq()))
    }

    /// How far the links of `own`'s chain, below `own`, reach on each other chain.
    fn chain_links(&mut self, own: Position) -> Result<&mut NidMap<u64, u64>> {
        if !self.cache.chain_links.contains_key(&own.chain()) {
            if self.cache.chain_links.len() >= CHAIN_LINKS_HELD {
                self.cache.chain_links.clear();
            }
            let mut targets = Vec::new();
            let links = self.auth_links()?;
            pairs(
                links,
                "auth_links",
                own.chain(),
                1,
                own.seq() - 1,
                &mut targets,
            )?;
            let reached = highest_per_chain(targets);
            self.cache.chain_links.insert(own.chain(), reached);
        }
        Ok(self.cache.chain_links.entry(own.chain()).or_default())
    }
}

/// Per chain of `targets`, the highest sequence number among them.
fn highest_per_chain(targets: Vec<Position>) -> NidMap<u64, u64> {
    let mut reached: NidMap<u64, u64> = NidMap::default();
    for t in targets {
        let seq = reached.entry(t.chain()).or_default();
        *seq = (*seq).max(t.seq());
    }
    reached
}

/// The index's tables in a read transaction (or a write transaction's, between writes).
pub(crate) struct ReadIndex<'a, T: Tables + 'a> {
    positions: T::Table<'a, u64, u64>,
    chains: T::Table<'a, u64, u64>,
    links: T::Table<'a, (u64, u64), ()>,
    links_into: T::Table<'a, (u64, u64), ()>,
    events: T::Table<'a, u64, &'static [u8]>,
}

impl<'a, T: Tables> ReadIndex<'a, T> {
    /// The index of a store whose meta says it is complete; `None` otherwise.
    pub(crate) fn open(tx: &'a T) -> Result<Option<Self>> {
        let complete = tx
            .open(tables::META)?
            .get(AUTH_INDEX_KEY.as_bytes())?
            .is_some_and(|v| v.value() == 1);
        if !complete {
            return Ok(None);
        }
        Ok(Some(ReadIndex {
            positions: tx.open(AUTH_POSITIONS)?,
            chains: tx.open(AUTH_CHAINS)?,
            links: tx.open(AUTH_LINKS)?,
            links_into: tx.open(AUTH_LINKS_INTO)?,
            events: tx.open(tables::EVENTS)?,
        }))
    }
}

impl<T: Tables> ReadIndex<'_, T> {
    /// The event records of up to `limit` rows after event NID `after`, in order, and the last
    /// row's NID (`None`: no rows left). Records that do not decode are left out (the walk over
    /// events reports them).
    pub(crate) fn records_after(
        &self,
        after: u64,
        limit: usize,
        out: &mut Vec<(EventNid, EventRecord)>,
    ) -> Result<Option<u64>> {
        let mut last = None;
        for row in self.events.range(after.saturating_add(1)..)?.take(limit) {
            let (nid, bytes) = row?;
            let nid = nid.value();
            last = Some(nid);
            if let (Some(event), Ok(record)) = (
                EventNid::new(nid),
                codec::decode::<EventRecord>("events", nid, bytes.value()),
            ) {
                out.push((event, record));
            }
        }
        Ok(last)
    }
}

impl<T: Tables> IndexRead for ReadIndex<'_, T> {
    fn position(&mut self, event: EventNid) -> Result<Option<Position>> {
        position(&self.positions, event)
    }

    fn events_on(&mut self, chain: u64, from: u64, to: u64, out: &mut Vec<EventNid>) -> Result<()> {
        events_on(&self.chains, chain, from, to, out)
    }

    fn links_from(
        &mut self,
        chain: u64,
        from: u64,
        to: u64,
        out: &mut Vec<Position>,
    ) -> Result<()> {
        pairs(&self.links, "auth_links", chain, from, to, out)
    }

    fn links_into(
        &mut self,
        chain: u64,
        from: u64,
        after: Option<Link>,
        limit: usize,
        out: &mut Vec<Link>,
    ) -> Result<()> {
        links_into(&self.links_into, chain, from, after, limit, out)
    }

    fn record(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        let row = self.events.get(event.get())?;
        row.map(|v| codec::decode::<EventRecord>("events", event, v.value()))
            .transpose()
    }

    fn links_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, Position),
    ) -> Result<()> {
        links_span(&self.links, first, last, visit)
    }

    fn events_span(
        &mut self,
        first: u64,
        last: u64,
        visit: &mut dyn FnMut(Position, EventNid),
    ) -> Result<()> {
        events_span(&self.chains, first, last, visit)
    }
}

impl Writer<'_> {
    /// Takes a purged event of `room` out of the index. A link into it from an event of another
    /// room, which stays, would leave that event's reach short of what its records say: the
    /// index is abandoned then.
    pub(crate) fn unindex_event(&mut self, event: EventNid, room: RoomNid) -> Result<()> {
        let Some(own) = self
            .auth_positions()?
            .remove(event.get())?
            .map(|v| v.value())
        else {
            return Ok(());
        };
        self.cache.positions.remove(&event);
        self.cache.chain_links.clear();
        self.cache.links_of.clear();
        self.auth_chains()?.remove(own)?;
        let own = Position::from_raw(own)?;
        let mut targets = Vec::new();
        self.links_from(own.chain(), own.seq(), own.seq(), &mut targets)?;
        for target in targets {
            self.remove_link(own, target)?;
        }
        for o in &self.origins_of(own)? {
            self.remove_link(*o, own)?;
            let origin = self.auth_chains()?.get(o.raw())?.map(|v| v.value());
            let elsewhere = match origin.and_then(EventNid::new) {
                Some(e) => self.event(e)?.is_some_and(|r| r.room != room),
                None => false,
            };
            if elsewhere {
                self.abandon_auth_index()?;
            }
        }
        Ok(())
    }

    /// The positions whose links point at `at`.
    fn origins_of(&mut self, at: Position) -> Result<Vec<Position>> {
        let mut out = Vec::new();
        let (table, seq) = (self.auth_links_into()?, at.seq());
        pairs(table, "auth_links_into", at.chain(), seq, seq, &mut out)?;
        Ok(out)
    }

    /// Records a link from `origin` to `target`, both ways.
    fn insert_link(&mut self, origin: Position, target: Position) -> Result<()> {
        self.auth_links()?
            .insert((origin.raw(), target.raw()), ())?;
        self.auth_links_into()?
            .insert((target.raw(), origin.raw()), ())?;
        Ok(())
    }

    /// Removes the link from `origin` to `target`, both ways.
    fn remove_link(&mut self, origin: Position, target: Position) -> Result<()> {
        self.auth_links()?.remove((origin.raw(), target.raw()))?;
        self.auth_links_into()?
            .remove((target.raw(), origin.raw()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The indexed auth difference against its definition, by plain walks of `auth_events`, on
    //! random DAGs with forks of each state key.

    use super::*;
    use crate::engine::block::StateEntry;
    use crate::engine::testing::{Rng, expected_difference};
    use crate::nid::{SnapshotNid, StateKeyNid, TypeNid};
    use crate::store::{Store, StoreRead};
    use std::collections::BTreeMap;

    /// Stored events: key number (0 for a non-state event) and auth events.
    type Dag = BTreeMap<EventNid, (u64, Vec<EventNid>)>;

    /// The state key of key number `k`, as interned.
    fn key_of_number(store: &Store, k: u64) -> Result<StateKey> {
        let nid = store.read()?.state_key_nid(&format!("@u{k}:x"))?;
        Ok(StateKey::new(TypeNid::MEMBER, nid.expect("interned")))
    }

    fn ancestors(dag: &Dag, from: impl Iterator<Item = EventNid>) -> HashSet<EventNid> {
        let mut out = HashSet::new();
        let mut stack: Vec<EventNid> = from.flat_map(|e| dag[&e].1.clone()).collect();
        while let Some(e) = stack.pop() {
            if out.insert(e) {
                stack.extend(dag[&e].1.iter().copied());
            }
        }
        out
    }

    /// A random history in `store`, every auth event stored before its event.
    fn random_dag(store: &Store, rng: &mut Rng, n: u64) -> Result<Dag> {
        let mut dag = Dag::new();
        let mut tx = store.write()?;
        let room = tx.get_or_create_room("!r:x")?;
        let keys: Vec<StateKeyNid> = (1..=6)
            .map(|k| tx.get_or_create_state_key(&format!("@u{k}:x")))
            .collect::<Result<_>>()?;
        let mut latest: BTreeMap<u64, EventNid> = BTreeMap::new();
        let mut state_events: Vec<EventNid> = Vec::new();
        for i in 0..n {
            let event = tx.get_or_create_event(&format!("$e{i}"))?;
            let k = if rng.below(6) == 0 {
                0
            } else {
                1 + rng.below(6)
            };
            let mut auth = Vec::new();
            if let Some(prev) = latest.get(&k).filter(|_| k != 0 && rng.below(4) != 0) {
                auth.push(*prev);
            }
            for _ in 0..rng.below(4) {
                if !state_events.is_empty() {
                    auth.push(state_events[rng.below(state_events.len() as u64) as usize]);
                }
            }
            auth.sort_unstable();
            auth.dedup();
            let (ty, sk) = match k {
                0 => (TypeNid::REDACTION, None),
                k => (TypeNid::MEMBER, Some(keys[k as usize - 1])),
            };
            let mut record = EventRecord::new(room, ty, sk, SnapshotNid::EMPTY);
            record.auth_events = auth.clone();
            tx.put_event(event, &record)?;
            dag.insert(event, (k, auth));
            if k != 0 {
                latest.insert(k, event);
                state_events.push(event);
            }
        }
        tx.commit()?;
        Ok(dag)
    }

    #[test]
    fn the_indexed_difference_is_what_plain_walks_of_the_chains_say() -> Result<()> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let store = Store::in_memory()?;
            let n = 2 + rng.below(60);
            let dag = random_dag(&store, &mut rng, n)?;
            let of_key = |k: u64| -> Vec<EventNid> {
                dag.iter()
                    .filter(|(_, (ek, _))| *ek == k)
                    .map(|(e, _)| *e)
                    .collect()
            };
            let forks = 2 + rng.below(3) as usize;
            let mut conflicted = HashSet::new();
            let mut states = vec![Vec::new(); forks];
            let mut shared = Vec::new();
            for k in 1..=6 {
                let key = |k| key_of_number(&store, k);
                let candidates = of_key(k);
                if candidates.is_empty() {
                    continue;
                }
                let mut pick = || candidates[rng.below(candidates.len() as u64) as usize];
                if pick().get() % 3 == 0 {
                    let event = pick();
                    shared.push(StateEntry {
                        key: key(k)?,
                        event,
                    });
                    for state in &mut states {
                        state.push(StateEntry {
                            key: key(k)?,
                            event,
                        });
                    }
                    continue;
                }
                conflicted.insert(key(k)?);
                for state in &mut states {
                    if pick().get() % 4 != 0 {
                        state.push(StateEntry {
                            key: key(k)?,
                            event: pick(),
                        });
                    }
                }
            }
            let states: Vec<StateMap> = states.into_iter().map(StateMap::from_entries).collect();
            let unconflicted = StateMap::from_entries(shared);
            let rx = store.read()?;
            let mut index = ReadIndex::open(rx.txn())?.expect("a complete index");
            let mut keys = ChainKeys::default();
            let got = difference(&mut index, &mut keys, &states, &conflicted, &unconflicted)?
                .expect("every conflicted event is indexed");
            let want = expected_difference(&states, &conflicted, &unconflicted, |events| {
                ancestors(&dag, events)
            });
            assert_eq!(got, want);
        }
        Ok(())
    }
}
