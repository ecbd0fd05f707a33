//! Turning NIDs back into strings for output, with a cache: the same types and users recur in
//! every state.

use crate::failure::{CliResult, Failure};
use roomstate::{EventNid, ReadTxn, StateEntry, StateKeyNid, StateMap, StoreRead, TypeNid};
use std::collections::HashMap;

/// One entry with its strings.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Named {
    pub event_type: String,
    pub state_key: String,
    pub event_id: String,
}

#[derive(Default)]
pub struct Names {
    types: HashMap<TypeNid, String>,
    keys: HashMap<StateKeyNid, String>,
    events: HashMap<EventNid, String>,
}

fn cached<K: std::hash::Hash + Eq + Copy>(
    cache: &mut HashMap<K, String>,
    key: K,
    fetch: impl FnOnce(K) -> roomstate::Result<String>,
) -> CliResult<String> {
    if let Some(s) = cache.get(&key) {
        return Ok(s.clone());
    }
    let s = fetch(key)?;
    cache.insert(key, s.clone());
    Ok(s)
}

impl Names {
    pub fn event_type(&mut self, rx: &ReadTxn, ty: TypeNid) -> CliResult<String> {
        cached(&mut self.types, ty, |t| rx.event_type(t))
    }

    pub fn state_key(&mut self, rx: &ReadTxn, key: StateKeyNid) -> CliResult<String> {
        cached(&mut self.keys, key, |k| rx.state_key(k))
    }

    pub fn event_id(&mut self, rx: &ReadTxn, event: EventNid) -> CliResult<String> {
        cached(&mut self.events, event, |e| rx.event_id(e))
    }

    pub fn entry(&mut self, rx: &ReadTxn, e: &StateEntry) -> CliResult<Named> {
        Ok(Named {
            event_type: self.event_type(rx, e.key.ty)?,
            state_key: self.state_key(rx, e.key.key)?,
            event_id: self.event_id(rx, e.event)?,
        })
    }

    /// A state's entries as strings, sorted by (type, state key) as strings.
    pub fn state(&mut self, rx: &ReadTxn, state: &StateMap) -> CliResult<Vec<Named>> {
        let mut out = state
            .iter()
            .map(|e| self.entry(rx, e))
            .collect::<CliResult<Vec<_>>>()?;
        out.sort();
        Ok(out)
    }
}

/// The NID of an event ID, or a user error naming it.
pub fn event_nid(rx: &ReadTxn, id: &str) -> CliResult<EventNid> {
    rx.event_nid(id)?
        .ok_or_else(|| Failure::User(format!("unknown event {id}")))
}

/// The NID of an event that has state (not an outlier), or a user error naming it.
pub fn event_with_state(rx: &ReadTxn, id: &str) -> CliResult<EventNid> {
    let nid = event_nid(rx, id)?;
    if rx.is_outlier(nid)? {
        return Err(Failure::User(format!(
            "event {id} is an outlier: the store holds no state for it"
        )));
    }
    Ok(nid)
}

/// The NID of a room ID, or a user error naming it.
pub fn room_nid(rx: &ReadTxn, id: &str) -> CliResult<roomstate::RoomNid> {
    rx.room_nid(id)?
        .ok_or_else(|| Failure::User(format!("unknown room {id}")))
}
