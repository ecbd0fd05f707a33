//! Settling conflicted state: what a resolver is asked, what it may read, and the two simple
//! resolvers (refuse every conflict; merge only uncontested ones). Matrix state resolution
//! proper is `MatrixResolver` (`stateres.rs`).

use crate::engine::block::StateEntry;
use crate::engine::resolve::{Combined, StateMap};
use crate::error::Result;
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::record::EventRecord;
use crate::store::{EVENT, STATE_KEY, TYPE};
use crate::store::{IndexRead, Writer};

/// What a [`StateResolver`] is asked to settle.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResolveRequest<'a> {
    /// The room.
    pub room: RoomNid,
    /// The room's version, which picks the resolution algorithm.
    pub room_version: &'a str,
    /// The event being ingested when the conflict arose.
    pub event_id: &'a str,
    /// The states to combine, in full.
    pub states: &'a [StateMap],
    /// Their combination: what they agree on, and the conflicted keys with candidates.
    pub combined: &'a Combined,
}

/// What a resolver may read while it works: the store as the ingest batch has written it so
/// far.
pub trait StateSource {
    /// An event's record, if stored.
    fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>>;
    /// The event holding `key` in a snapshot.
    fn lookup(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>>;
    /// The events holding each of `keys` in a snapshot, in their order.
    fn lookup_keys(
        &mut self,
        snapshot: SnapshotNid,
        keys: &[StateKey],
    ) -> Result<Vec<Option<EventNid>>> {
        keys.iter().map(|k| self.lookup(snapshot, *k)).collect()
    }
    /// An event's ID.
    fn event_id(&mut self, event: EventNid) -> Result<String>;
    /// An event's JSON as ingested, if stored.
    fn event_json(&mut self, event: EventNid) -> Result<Option<String>>;
    /// The NID of an event ID, if interned.
    fn event_nid(&mut self, event_id: &str) -> Result<Option<EventNid>>;
    /// An event type's string.
    fn event_type(&mut self, ty: TypeNid) -> Result<String>;
    /// A state key's string.
    fn state_key(&mut self, key: StateKeyNid) -> Result<String>;
    /// The NID of a state key, if interned.
    fn state_key_nid(&mut self, state_key: &str) -> Result<Option<StateKeyNid>>;
    /// The NID of an event type, if interned.
    fn type_nid(&mut self, event_type: &str) -> Result<Option<TypeNid>>;
    /// Whether every stored event's auth events have smaller NIDs than the event
    /// ([`StoreRead::auth_events_precede`](crate::StoreRead::auth_events_precede)). A source
    /// that cannot tell says no, which is always safe.
    fn auth_events_precede(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// The store's auth-chain index, when it is complete. A source without one says `None`,
    /// which is always safe.
    #[doc(hidden)]
    fn auth_index(&mut self) -> Result<Option<&mut dyn IndexRead>> {
        Ok(None)
    }
}

impl StateSource for Writer<'_> {
    fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        Writer::event(self, event)
    }
    fn lookup(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        self.lookup_key(snapshot, key)
    }
    fn lookup_keys(
        &mut self,
        snapshot: SnapshotNid,
        keys: &[StateKey],
    ) -> Result<Vec<Option<EventNid>>> {
        Writer::lookup_keys(self, snapshot, keys)
    }
    fn event_id(&mut self, event: EventNid) -> Result<String> {
        self.string(EVENT, event.get())
    }
    fn event_json(&mut self, event: EventNid) -> Result<Option<String>> {
        Writer::event_json_text(self, event)
    }
    fn event_nid(&mut self, event_id: &str) -> Result<Option<EventNid>> {
        Ok(self.lookup_nid(EVENT, event_id)?.and_then(EventNid::new))
    }
    fn event_type(&mut self, ty: TypeNid) -> Result<String> {
        self.string(TYPE, ty.get())
    }
    fn state_key(&mut self, key: StateKeyNid) -> Result<String> {
        self.string(STATE_KEY, key.get())
    }
    fn state_key_nid(&mut self, state_key: &str) -> Result<Option<StateKeyNid>> {
        Ok(self
            .lookup_nid(STATE_KEY, state_key)?
            .and_then(StateKeyNid::new))
    }
    fn type_nid(&mut self, event_type: &str) -> Result<Option<TypeNid>> {
        Ok(self.lookup_nid(TYPE, event_type)?.and_then(TypeNid::new))
    }
    fn auth_events_precede(&mut self) -> Result<bool> {
        Writer::auth_events_precede(self)
    }
    fn auth_index(&mut self) -> Result<Option<&mut dyn IndexRead>> {
        Ok(match self.auth_index_complete()? {
            true => Some(self),
            false => None,
        })
    }
}

/// Settles conflicted state. Ingest calls it when states to combine disagree on a key.
pub trait StateResolver {
    /// The resolved state, or `None` to refuse: the event is then reported as needing state
    /// resolution.
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>>;

    /// Called when the writes it has read were rolled back (a batch aborted to be redone): a
    /// resolver that caches what it read from the store must forget it, since the NIDs of
    /// rolled-back rows are handed out again.
    fn rolled_back(&mut self) {}
}

/// A resolver that settles nothing: an event whose states disagree at all is a bad line naming
/// the conflicted keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refuse;

impl StateResolver for Refuse {
    fn resolve(
        &mut self,
        _request: &ResolveRequest<'_>,
        _source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        Ok(None)
    }
}

/// Settles only the disagreements that are not contests: for each conflicted key it takes the
/// candidate whose own history replaced every other candidate (following the key back through
/// each event's state before it), and a state that lacks the key contests nothing. This is what
/// a fork looks like when its branches change different keys. Two concurrent changes to the
/// same key are a real conflict and are refused, as [`Refuse`] would.
///
/// It is not Matrix state resolution: it applies no authorization rules, so a branch that
/// changed power levels does not invalidate events of the other. Use it where histories are
/// trusted, and a full state-resolution implementation where they are not.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrivialMerge;

/// How far back [`TrivialMerge`] follows one key's history before calling a conflict real.
pub const TRIVIAL_MERGE_MAX_DEPTH: usize = 10_000;

impl StateResolver for TrivialMerge {
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        let mut entries = request.combined.unconflicted.entries().to_vec();
        for conflict in &request.combined.conflicted {
            match superseding(source, conflict.key, &conflict.candidates)? {
                Some(event) => entries.push(StateEntry {
                    key: conflict.key,
                    event,
                }),
                None => return Ok(None),
            }
        }
        Ok(Some(StateMap::from_entries(entries)))
    }
}

/// The candidate whose history for `key` holds every other candidate, if there is one.
fn superseding(
    source: &mut dyn StateSource,
    key: StateKey,
    candidates: &[EventNid],
) -> Result<Option<EventNid>> {
    for &winner in candidates {
        let mut others: Vec<EventNid> = candidates
            .iter()
            .copied()
            .filter(|c| *c != winner)
            .collect();
        let mut current = winner;
        for _ in 0..TRIVIAL_MERGE_MAX_DEPTH {
            if others.is_empty() {
                break;
            }
            let Some(record) = source.event(current)? else {
                break;
            };
            let Some(previous) = source.lookup(record.state_before, key)? else {
                break;
            };
            others.retain(|o| *o != previous);
            current = previous;
        }
        if others.is_empty() {
            return Ok(Some(winner));
        }
    }
    Ok(None)
}

impl<R: StateResolver + ?Sized> StateResolver for &mut R {
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        (**self).resolve(request, source)
    }

    fn rolled_back(&mut self) {
        (**self).rolled_back();
    }
}
