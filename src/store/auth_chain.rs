//! Auth chains: every event reachable from a set of events through `auth_events`, walked over
//! the event records.

use crate::error::{Error, Result};
use crate::nid::{EventNid, NidSet};
use crate::store::codec;
use crate::store::read::Tables;
use crate::store::record::EventRecord;
use crate::store::tables;
use redb::ReadableTable;

/// The auth chain of `events`: every stored event reachable from them through `auth_events`,
/// each once, every event after its own auth events (so the list can be stored in order, as
/// outliers). The given events are included only when one of them is an auth event of another.
/// Auth events the store does not hold (named by a trusted import) are left out.
pub(crate) fn auth_chain<T: Tables>(tx: &T, events: &[EventNid]) -> Result<Vec<EventNid>> {
    let table = tx.open(tables::EVENTS)?;
    let auth_events_of = |event: EventNid| -> Result<Option<Vec<EventNid>>> {
        let row = table.get(event.get())?;
        row.map(|v| codec::decode::<EventRecord>("events", event, v.value()))
            .transpose()
            .map(|r| r.map(|r| r.auth_events))
    };
    let mut seen = NidSet::default();
    let mut chain = Vec::new();
    // An explicit stack of (event, its auth events, how many are done): auth chains are deep
    // (every membership change names the last), too deep for recursion.
    let mut stack: Vec<(EventNid, Vec<EventNid>, usize)> = Vec::new();
    for &start in events {
        let Some(auth) = auth_events_of(start)? else {
            return Err(Error::UnknownEvent(start));
        };
        stack.push((start, auth, 0));
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
            if let Some(auth) = auth_events_of(next)? {
                stack.push((next, auth, 0));
            }
        }
    }
    Ok(chain)
}
