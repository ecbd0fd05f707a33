//! Work on an event that needs no store, done before the writer takes it and on any thread:
//! parsing the PDU the way the authorization rules read it, and preparing its JSON's row. A thread
//! that prepares the next events while the writer stores this one puts a second core to work;
//! what is stored is the same either way.

use crate::error::{Error, Result};
use crate::matrix::event::PduJson;
use crate::matrix::input::InputKind;
use crate::matrix::roomserver::InputEvent;
use crate::matrix::{pdu, reference};
use crate::store::intern::MAX_ID_BYTES;
use crate::store::{PreparedJson, Store};
use std::collections::HashMap;
use std::ops::ControlFlow;

/// What was done ahead for one PDU.
#[derive(Default)]
pub(crate) struct Ahead {
    /// The PDU as the rules read it, or serde's words for why it is not one. Left undone for a
    /// trusted import, which never reads it.
    pub(crate) rules_view: Option<std::result::Result<PduJson, String>>,
    /// The JSON with the event IDs it quotes taken out, the rest compressed with the dictionary
    /// the store's writers used last.
    pub(crate) json: Option<PreparedJson>,
    /// The ID of a PDU that declares none, derived under the room version the preparer knew.
    pub(crate) derived_id: Option<DerivedId>,
}

/// An event's ID derived from its reference hash under `version`. The writer settles the room
/// version itself and takes the ID only when it is this one: the hash is a function of the JSON
/// and the version alone.
#[derive(Debug)]
pub(crate) struct DerivedId {
    pub(crate) version: String,
    pub(crate) id: String,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("parsed", &self.rules_view.is_some())
            .field("json", &self.json)
            .field("derived_id", &self.derived_id)
            .finish()
    }
}

impl Ahead {
    /// Prepares `pdu` for `store`; `authorizing` says whether its rules view will be read.
    pub(crate) fn of(pdu: &[u8], store: &Store, authorizing: bool) -> Ahead {
        Ahead {
            rules_view: authorizing
                .then(|| serde_json::from_slice::<PduJson>(pdu).map_err(|e| e.to_string())),
            json: Some(store.prepare_json(pdu, &pdu::quoted_event_ids(pdu))),
            derived_id: None,
        }
    }
}

/// Room versions a [`Preparer`] remembers before it forgets them all: a join or a catch-up
/// names a few rooms, not thousands.
const VERSIONS_HELD: usize = 4096;

/// Prepares events in the order a server receives them ([`PreparedEvent`]s), on any thread.
/// Beyond what [`PreparedEvent::new`] does, it remembers the room version each create event
/// declares, and so derives ahead the ID of every later event of that room that declares none
/// (room versions 3 on): its reference hash, which takes the writer a tenth of an outlier. The
/// writer still settles each event's room version from the store, and derives the ID itself
/// when the versions differ.
///
/// ```
/// use roomstate::{InputEvent, InputOutcome, Preparer, RoomServer, Store};
///
/// # fn main() -> roomstate::Result<()> {
/// let create = r#"{"room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"depth":1,"origin_server_ts":1,"content":{"creator":"@a:x","room_version":"10"}}"#;
/// let store = Store::in_memory()?;
/// let mut preparer = Preparer::new(&store, true);
/// let prepared = preparer.prepare(&InputEvent::outlier(create.as_bytes()));
/// let mut server = RoomServer::new();
/// let mut tx = store.write()?;
/// let got = server.batch(&mut tx).receive_prepared(prepared)?;
/// assert_eq!(got.outcome, InputOutcome::Outlier);
/// let id = roomstate::derive_event_id(create.as_bytes(), "10")?;
/// assert_eq!(got.event_id.as_deref(), Some(id.as_str()));
/// tx.commit()?;
/// # Ok(())
/// # }
/// ```
pub struct Preparer<'s> {
    store: &'s Store,
    authorizing: bool,
    /// Room ID to the version its create event declares.
    versions: HashMap<String, String>,
}

impl<'s> Preparer<'s> {
    /// A preparer for `store`. `authorizing` says whether the room server receiving the events
    /// authorizes them (it is not [`trusted`](crate::RoomServer::trusted)).
    pub fn new(store: &'s Store, authorizing: bool) -> Self {
        Preparer {
            store,
            authorizing,
            versions: HashMap::new(),
        }
    }

    /// Prepares `event`, the next one received.
    pub fn prepare(&mut self, event: &InputEvent<'_>) -> PreparedEvent {
        PreparedEvent {
            kind: event.kind_of(),
            pdu: Box::from(event.pdu()),
            state_before: event
                .state_before()
                .map(|ids| ids.iter().map(|id| (*id).to_owned()).collect()),
            ahead: self.ahead(event.pdu()),
        }
    }

    /// What is done ahead for `pdu`.
    pub(crate) fn ahead(&mut self, pdu: &[u8]) -> Ahead {
        let mut ahead = Ahead::of(pdu, self.store, self.authorizing);
        ahead.derived_id = self.derive_id(pdu);
        ahead
    }

    /// The ID of a PDU that declares none, when its room's version is known here; a create
    /// event makes its room's version known. Whatever fails here is left to the writer, which
    /// reports it.
    fn derive_id(&mut self, json: &[u8]) -> Option<DerivedId> {
        let fields = pdu::fields(json).ok()?;
        if fields.declared_id().is_some() || !fields.has_type() {
            return None;
        }
        let version = if fields.is_create() {
            fields.declared_version().to_owned()
        } else {
            self.versions.get(fields.room_id()?)?.clone()
        };
        let id = reference::event_id(json, &version).ok()?;
        if fields.is_create()
            && let Some(room) = fields.room_id_given(&id)
            // Longer is no room ID (the writer refuses it): nor is it remembered here.
            && room.len() <= MAX_ID_BYTES
        {
            if self.versions.len() >= VERSIONS_HELD {
                self.versions.clear();
            }
            self.versions.insert(room.into_owned(), version.clone());
        }
        Some(DerivedId { version, id })
    }
}

/// An [`InputEvent`] that owns its bytes and carries the work done on it ahead: made on one
/// thread ([`PreparedEvent::new`]), received on the writer's
/// ([`Batch::receive_prepared`](crate::matrix::roomserver::Batch::receive_prepared)).
///
/// ```
/// use roomstate::{InputEvent, InputOutcome, PreparedEvent, RoomServer, Store};
///
/// # fn main() -> roomstate::Result<()> {
/// let create = r#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"origin_server_ts":1,"content":{"creator":"@a:x","room_version":"10"}}"#;
/// let store = Store::in_memory()?;
/// let (to_writer, from_reader) = crossbeam::channel::bounded(64);
/// std::thread::scope(|s| {
///     // The reader's thread parses and compresses...
///     s.spawn(|| {
///         let event = InputEvent::outlier(create.as_bytes());
///         to_writer.send(PreparedEvent::new(&event, &store, true)).ok();
///     });
///     // ...while the writer's stores.
///     let mut server = RoomServer::new();
///     let mut tx = store.write()?;
///     let mut batch = server.batch(&mut tx);
///     for event in from_reader.iter().take(1) {
///         assert_eq!(batch.receive_prepared(event)?.outcome, InputOutcome::Outlier);
///     }
///     drop(batch);
///     tx.commit()
/// })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PreparedEvent {
    pub(crate) kind: InputKind,
    pub(crate) pdu: Box<[u8]>,
    pub(crate) state_before: Option<Vec<String>>,
    pub(crate) ahead: Ahead,
}

impl PreparedEvent {
    /// Prepares `event` for `store`. `authorizing` says whether the room server receiving it
    /// authorizes events (it is not [`trusted`](crate::RoomServer::trusted)): a trusted one
    /// never parses the PDU for the rules, so neither does this.
    /// Events prepared one by one this way have no room versions remembered between them: a
    /// [`Preparer`] derives more of their IDs ahead.
    pub fn new(event: &InputEvent<'_>, store: &Store, authorizing: bool) -> PreparedEvent {
        Preparer::new(store, authorizing).prepare(event)
    }
}

/// Items are handed over this many at a time: a hand-over that wakes a sleeping thread is a
/// system call, which per item cost the writer more than the preparing saved it.
const PREPARED_CHUNK: usize = 64;
/// How many chunks may wait for the writer: enough to ride out a slow event, few enough to hold
/// little memory.
const CHUNKS_WAITING: usize = 4;
/// Fewer items than this are prepared on the writer's own thread: starting a thread would cost
/// more than it saves.
const PIPELINE_MIN_ITEMS: usize = 64;

/// Runs `prepare` over `items` in order on a second thread, handing each result with its item
/// and index to `consume` on this one as it comes; `consume` may stop early with a value. A
/// panic on the second thread is [`crate::Error::Damaged`].
pub(crate) fn pipelined<T: Sync, P: Send, B>(
    items: &[T],
    mut prepare: impl FnMut(&T) -> P + Send,
    mut consume: impl FnMut(usize, &T, P) -> Result<ControlFlow<B>>,
) -> Result<Option<B>> {
    if items.len() < PIPELINE_MIN_ITEMS {
        for (index, item) in items.iter().enumerate() {
            if let ControlFlow::Break(b) = consume(index, item, prepare(item))? {
                return Ok(Some(b));
            }
        }
        return Ok(None);
    }
    crossbeam::thread::scope(|scope| {
        let (ready, prepared) = crossbeam::channel::bounded(CHUNKS_WAITING);
        scope.spawn(move |_| {
            for chunk in items.chunks(PREPARED_CHUNK) {
                // The writer stopped early, and dropped its end.
                if ready
                    .send(chunk.iter().map(&mut prepare).collect::<Vec<P>>())
                    .is_err()
                {
                    return;
                }
            }
        });
        let mut index = 0;
        for chunk in items.chunks(PREPARED_CHUNK) {
            let done = prepared.recv().map_err(|_| {
                Error::InvalidState("the preparing thread stopped before its items did".into())
            })?;
            for (item, next) in chunk.iter().zip(done) {
                if let ControlFlow::Break(b) = consume(index, item, next)? {
                    return Ok(Some(b));
                }
                index += 1;
            }
        }
        Ok(None)
    })
    .map_err(crate::error::damaged)?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work is done ahead, not left to the writer: a create event makes its room's version
    /// known, and the room's later events get their IDs; another room's do not.
    #[test]
    fn a_preparer_derives_the_ids_of_a_rooms_events_after_its_create_event() -> Result<()> {
        let store = Store::in_memory()?;
        let mut preparer = Preparer::new(&store, true);
        let event = |room: &str, ty: &str| {
            format!(
                r#"{{"room_id":"{room}","type":"{ty}","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"depth":1,"origin_server_ts":1,"content":{{"room_version":"10"}}}}"#
            )
        };
        let derived = |preparer: &mut Preparer, pdu: &str| {
            let prepared = preparer.prepare(&InputEvent::outlier(pdu.as_bytes()));
            prepared.ahead.derived_id.map(|d| (d.version, d.id))
        };
        let name = event("!r:x", "m.room.name");
        assert!(
            derived(&mut preparer, &name).is_none(),
            "no version known yet"
        );
        let create = event("!r:x", "m.room.create");
        let want = |pdu: &str| Some(("10".to_owned(), reference::event_id(pdu.as_bytes(), "10")));
        let got = derived(&mut preparer, &create);
        assert_eq!(got.map(|(v, id)| (v, Ok(id))), want(&create));
        let got = derived(&mut preparer, &name);
        assert_eq!(got.map(|(v, id)| (v, Ok(id))), want(&name));
        assert!(derived(&mut preparer, &event("!other:x", "m.room.name")).is_none());
        Ok(())
    }
}
