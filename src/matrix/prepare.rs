//! Work on an event that needs no store, done before the writer takes it and on any thread:
//! parsing the PDU the way the authorization rules read it, and compressing its JSON. A thread
//! that prepares the next events while the writer stores this one puts a second core to work;
//! what is stored is the same either way.

use crate::error::{Error, Result};
use crate::matrix::event::PduJson;
use crate::matrix::input::InputKind;
use crate::matrix::roomserver::InputEvent;
use crate::store::{CompressedJson, Store};
use std::ops::ControlFlow;

/// What was done ahead for one PDU.
#[derive(Default)]
pub(crate) struct Ahead {
    /// The PDU as the rules read it, or serde's words for why it is not one. Left undone for a
    /// trusted import, which never reads it.
    pub(crate) rules_view: Option<std::result::Result<PduJson, String>>,
    /// The JSON compressed with the dictionary the store's writers used last.
    pub(crate) json: Option<CompressedJson>,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead")
            .field("parsed", &self.rules_view.is_some())
            .field("json", &self.json)
            .finish()
    }
}

impl Ahead {
    /// Prepares `pdu` for `store`; `authorizing` says whether its rules view will be read.
    pub(crate) fn of(pdu: &[u8], store: &Store, authorizing: bool) -> Ahead {
        Ahead {
            rules_view: authorizing
                .then(|| serde_json::from_slice::<PduJson>(pdu).map_err(|e| e.to_string())),
            json: store.compress_ahead(pdu),
        }
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
    pub fn new(event: &InputEvent<'_>, store: &Store, authorizing: bool) -> PreparedEvent {
        PreparedEvent {
            kind: event.kind_of(),
            pdu: Box::from(event.pdu()),
            state_before: event
                .state_before()
                .map(|ids| ids.iter().map(|id| (*id).to_owned()).collect()),
            ahead: Ahead::of(event.pdu(), store, authorizing),
        }
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
    prepare: impl Fn(&T) -> P + Sync,
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
    let prepare = &prepare;
    crossbeam::thread::scope(|scope| {
        let (ready, prepared) = crossbeam::channel::bounded(CHUNKS_WAITING);
        scope.spawn(move |_| {
            for chunk in items.chunks(PREPARED_CHUNK) {
                // The writer stopped early, and dropped its end.
                if ready
                    .send(chunk.iter().map(prepare).collect::<Vec<P>>())
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
