//! Auth chains: every event reachable from a set of events through `auth_events`, walked over
//! the event records.

use crate::error::{Error, Result};
use crate::nid::{EventNid, NidSet, RoomNid};
use crate::store::auth_index::{ReadIndex, chain_of};
use crate::store::codec;
use crate::store::parallel::both;
use crate::store::read::Tables;
use crate::store::record::EventRecord;
use crate::store::tables;
use redb::ReadableTable;

/// An auth chain, and the rooms of the events it was asked for.
pub(crate) struct AuthChain {
    /// The chain, each event after its own auth events.
    pub(crate) events: Vec<EventNid>,
    /// The distinct rooms of the events asked for, in the order first met, each with how many
    /// of those events are in it.
    pub(crate) rooms: Vec<(RoomNid, usize)>,
}

/// The auth chain of `events`: every stored event reachable from them through `auth_events`,
/// each once, every event after its own auth events (so the list can be stored in order, as
/// outliers). The given events are included only when one of them is an auth event of another.
/// Auth events the store does not hold (named by a trusted import) are left out.
pub(crate) fn auth_chain<T: Tables + Sync>(tx: &T, events: &[EventNid]) -> Result<AuthChain> {
    if ReadIndex::open(tx)?.is_some() && auth_events_precede(tx)? {
        return indexed(tx, events);
    }
    let table = tx.open(tables::EVENTS)?;
    let record_of = |event: EventNid| -> Result<Option<EventRecord>> {
        let row = table.get(event.get())?;
        row.map(|v| codec::decode::<EventRecord>("events", event, v.value()))
            .transpose()
    };
    let mut seen = NidSet::default();
    let mut chain = Vec::new();
    let mut rooms = Vec::new();
    // An explicit stack of (event, its auth events, how many are done): auth chains are deep
    // (every membership change names the last), too deep for recursion.
    let mut stack: Vec<(EventNid, Vec<EventNid>, usize)> = Vec::new();
    for &start in events {
        let Some(record) = record_of(start)? else {
            return Err(Error::UnknownEvent(start));
        };
        match rooms.iter_mut().find(|(room, _)| *room == record.room) {
            Some((_, count)) => *count += 1,
            None => rooms.push((record.room, 1)),
        }
        stack.push((start, record.auth_events, 0));
        while let Some((event, auth, done)) = stack.last_mut() {
            let Some(&next) = auth.get(*done) else {
                let finished = *event;
                stack.pop();
                // The starting event itself is in the chain only if another event names it.
                if !stack.is_empty() {
                    chain.push(finished);
                }
                continue;
            };
            *done += 1;
            if !seen.insert(next) {
                continue;
            }
            if let Some(record) = record_of(next)? {
                stack.push((next, record.auth_events, 0));
            }
        }
    }
    Ok(AuthChain {
        events: chain,
        rooms,
    })
}

/// The auth chain from the index, in NID order, which puts every event after its auth events
/// where those are older. The rooms of the asked events are read on a second thread where the
/// transaction shares its tables.
fn indexed<T: Tables + Sync>(tx: &T, events: &[EventNid]) -> Result<AuthChain> {
    let (rooms, mut chain) = both(
        T::SHARES_TABLES,
        || rooms_of(tx, events),
        || match ReadIndex::open(tx)? {
            Some(mut index) => chain_of(&mut index, events),
            None => Err(Error::InvalidState("the auth-chain index went away".into())),
        },
    )?;
    chain.sort_unstable();
    Ok(AuthChain {
        events: chain,
        rooms,
    })
}

/// The distinct rooms of `events`, each with how many of them are in it, in NID order of the
/// events (sorted, the records are read in key order).
fn rooms_of<T: Tables>(tx: &T, events: &[EventNid]) -> Result<Vec<(RoomNid, usize)>> {
    let table = tx.open(tables::EVENTS)?;
    let mut rooms: Vec<(RoomNid, usize)> = Vec::new();
    let mut sorted = events.to_vec();
    sorted.sort_unstable();
    for event in sorted {
        let row = table.get(event.get())?.ok_or(Error::UnknownEvent(event))?;
        let room = codec::event_room("events", event, row.value())?;
        match rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, count)) => *count += 1,
            None => rooms.push((room, 1)),
        }
    }
    Ok(rooms)
}

/// Whether meta says every event's auth events are older ([`tables::AUTH_ORDER_KEY`]).
pub(crate) fn auth_events_precede<T: Tables>(tx: &T) -> Result<bool> {
    Ok(tx
        .open(tables::META)?
        .get(tables::AUTH_ORDER_KEY.as_bytes())?
        .is_some_and(|v| v.value() == 1))
}
