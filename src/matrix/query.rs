//! The questions other servers and a homeserver's own clients ask of a room, answered from a
//! read (or write) transaction: the state after a set of events, `/state_ids`, a user's
//! membership at an event, the auth chain of events. The joined servers are the store's own
//! read ([`StoreRead::joined_servers`]).

use crate::engine::resolve::{StateMap, combine_maps};
use crate::error::{Error, Result};
use crate::matrix::resolver::{ResolveRequest, StateResolver, StateSource};
use crate::nid::{EventNid, NidSet, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::membership::Membership;
use crate::store::record::EventRecord;
use crate::store::{ChainKeys, IndexRead, ReadIndex, StoreRead, indexed_auth_difference};
use std::collections::{BTreeSet, HashSet};

/// The state after `events` together (Dendrite's `QueryStateAfterEvents`, what a server needs
/// to send an event whose prev events are these): the state after the one event, or the
/// states after several combined, with their conflicts settled by `resolver`.
///
/// `Error::StateResolution` when the resolver leaves a conflict unsettled;
/// [`Error::Outlier`] when one of the events has no state.
pub fn state_after_events<T: StoreRead>(
    rx: &T,
    resolver: &mut impl StateResolver,
    events: &[EventNid],
) -> Result<StateMap> {
    let Some(&first) = events.first() else {
        return Ok(StateMap::default());
    };
    let mut states = Vec::with_capacity(events.len());
    for e in events {
        let state = rx.state_after(*e)?;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    if let [one] = states.as_slice() {
        return Ok(one.clone());
    }
    let combined = combine_maps(&states);
    if combined.conflicted.is_empty() {
        return Ok(combined.unconflicted);
    }
    let record = rx.expect_event(first)?;
    let room_version = rx
        .room(record.room)?
        .ok_or(Error::UnknownRoom(record.room))?
        .version;
    let event_id = rx.event_id(first)?;
    let request = ResolveRequest {
        room: record.room,
        room_version: &room_version,
        event_id: &event_id,
        states: &states,
        combined: &combined,
    };
    resolver
        .resolve(&request, &mut ReadSource::new(rx)?)?
        .ok_or_else(|| {
            Error::StateResolution(format!(
                "{} conflicted key(s) left unsettled by the resolver",
                combined.conflicted.len()
            ))
        })
}

/// The answer to `/state_ids` for an event: the event IDs of the state before it, and of that
/// state's auth chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateIds {
    /// The state before the event, sorted by (type, state key).
    pub pdu_ids: Vec<EventNid>,
    /// Every event reachable from the state through `auth_events`, auth events first.
    pub auth_chain_ids: Vec<EventNid>,
}

/// The auth-chain difference of `states`, sorted: the events in the auth chain of some states'
/// events but not of every state's (what state resolution v2 sorts and replays). From the
/// auth-chain index when the store keeps one complete, otherwise from whole chains.
/// [`Error::UnknownEvent`] when a state names an event not stored.
///
/// ```
/// use roomstate::{Store, StateMap};
/// use roomstate::matrix::query;
/// let store = Store::in_memory()?;
/// let rx = store.read()?;
/// let none = query::auth_chain_difference(&rx, &[StateMap::default(), StateMap::default()])?;
/// assert!(none.is_empty());
/// # Ok::<(), roomstate::Error>(())
/// ```
pub fn auth_chain_difference<T: StoreRead>(rx: &T, states: &[StateMap]) -> Result<Vec<EventNid>> {
    crate::error::guard(|| {
        let combined = combine_maps(states);
        let conflicted: HashSet<StateKey> = combined.conflicted.iter().map(|c| c.key).collect();
        if let Some(mut index) = ReadIndex::open(rx.txn())? {
            let keys = &mut ChainKeys::default();
            let shared = &combined.unconflicted;
            let found = indexed_auth_difference(&mut index, keys, states, &conflicted, shared)?;
            if let Some(forks) = found {
                let all: BTreeSet<EventNid> = forks.into_iter().flatten().collect();
                return Ok(all.into_iter().collect());
            }
        }
        let mut chains = Vec::with_capacity(states.len());
        for state in states {
            let events: Vec<EventNid> = state.iter().map(|e| e.event).collect();
            let chain = crate::store::auth_chain(rx.txn(), &events)?.events;
            chains.push(chain.into_iter().collect::<NidSet<EventNid>>());
        }
        let in_all = |e: &EventNid| chains.iter().all(|c| c.contains(e));
        let all: BTreeSet<EventNid> = chains
            .iter()
            .flatten()
            .filter(|e| !in_all(e))
            .copied()
            .collect();
        Ok(all.into_iter().collect())
    })
}

/// The auth chain of `events` (federation's `/event_auth`, and the `auth_chain` of a
/// `send_join` answer): every stored event reachable from them through `auth_events`, each once,
/// each after its own auth events. In room versions whose room ID names the create event (12
/// on), events leave it out of `auth_events`; it is in their auth chain all the same, first.
pub fn auth_chain<T: StoreRead>(rx: &T, events: &[EventNid]) -> Result<Vec<EventNid>> {
    let walked = crate::error::guard(|| crate::store::auth_chain(rx.txn(), events))?;
    let mut chain = walked.events;
    let mut implied = Vec::new();
    for (room, asked) in walked.rooms {
        // The create event is in the chain when another event of its room was asked about.
        if let Some(create) = implied_create(rx, room)?
            && asked > events.iter().filter(|e| **e == create).count()
            && !chain.contains(&create)
        {
            implied.push(create);
        }
    }
    if !implied.is_empty() {
        implied.append(&mut chain);
        chain = implied;
    }
    Ok(chain)
}

/// The create event a room's ID names, when the room's ID is its create event's hash.
fn implied_create<T: StoreRead>(rx: &T, room: RoomNid) -> Result<Option<EventNid>> {
    let room_id = rx.room_id(room)?;
    if room_id.contains(':') {
        return Ok(None);
    }
    let Some(create) = room_id
        .strip_prefix('!')
        .map(|hash| rx.event_nid(&format!("${hash}")))
        .transpose()?
        .flatten()
    else {
        return Ok(None);
    };
    let is_create = rx
        .event(create)?
        .is_some_and(|r| crate::matrix::input::is_create(&r) && r.room == room);
    Ok(is_create.then_some(create))
}

/// The state before `event` and its auth chain (`/state_ids`; `send_join` answers the same for
/// the state before the join, with the events' JSON).
pub fn state_ids<T: StoreRead>(rx: &T, event: EventNid) -> Result<StateIds> {
    let state = rx.state_before(event)?;
    let pdu_ids: Vec<EventNid> = state.entries().iter().map(|e| e.event).collect();
    let auth_chain_ids = auth_chain(rx, &pdu_ids)?;
    Ok(StateIds {
        pdu_ids,
        auth_chain_ids,
    })
}

/// A user's membership at an event: in the state before it, or after it with `after`.
/// `None` when the state holds no membership for the user (or the store does not know them).
pub fn membership_at<T: StoreRead>(
    rx: &T,
    event: EventNid,
    user_id: &str,
    after: bool,
) -> Result<Option<Membership>> {
    match rx.state_key_nid(user_id)? {
        Some(user) => rx.membership_at(event, user, after),
        None => Ok(None),
    }
}

/// A read transaction as a resolver's source.
struct ReadSource<'a, T: StoreRead> {
    rx: &'a T,
    index: Option<ReadIndex<'a, T::Txn>>,
}

impl<'a, T: StoreRead> ReadSource<'a, T> {
    fn new(rx: &'a T) -> Result<Self> {
        let index = crate::error::guard(|| ReadIndex::open(rx.txn()))?;
        Ok(ReadSource { rx, index })
    }
}

impl<T: StoreRead> StateSource for ReadSource<'_, T> {
    fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        self.rx.event(event)
    }
    fn lookup(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        self.rx.lookup(snapshot, key)
    }
    fn event_id(&mut self, event: EventNid) -> Result<String> {
        self.rx.event_id(event)
    }
    fn event_json(&mut self, event: EventNid) -> Result<Option<String>> {
        self.rx.event_json(event)
    }
    fn event_nid(&mut self, event_id: &str) -> Result<Option<EventNid>> {
        self.rx.event_nid(event_id)
    }
    fn event_type(&mut self, ty: TypeNid) -> Result<String> {
        self.rx.event_type(ty)
    }
    fn state_key(&mut self, key: StateKeyNid) -> Result<String> {
        self.rx.state_key(key)
    }
    fn state_key_nid(&mut self, state_key: &str) -> Result<Option<StateKeyNid>> {
        self.rx.state_key_nid(state_key)
    }
    fn type_nid(&mut self, event_type: &str) -> Result<Option<TypeNid>> {
        self.rx.type_nid(event_type)
    }
    fn auth_events_precede(&mut self) -> Result<bool> {
        self.rx.auth_events_precede()
    }
    fn auth_index(&mut self) -> Result<Option<&mut dyn IndexRead>> {
        Ok(self.index.as_mut().map(|i| i as &mut dyn IndexRead))
    }
}
