//! Auth chains: every event reachable from a set of events through `auth_events`, walked over
//! the event records.

use crate::error::{Error, Result};
use crate::nid::{EventNid, NidSet, RoomNid};
use crate::store::codec;
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
pub(crate) fn auth_chain<T: Tables>(tx: &T, events: &[EventNid]) -> Result<AuthChain> {
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
