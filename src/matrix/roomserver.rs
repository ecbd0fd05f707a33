//! The typed input API: a homeserver hands the store one event at a time, as federation
//! delivers it, within a write transaction it commits itself.
//!
//! ```
//! use roomstate::matrix::roomserver::{InputEvent, InputOutcome, RoomServer};
//! use roomstate::{Store, StoreRead};
//!
//! # fn main() -> roomstate::Result<()> {
//! let create = r#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"origin_server_ts":1,"content":{"creator":"@a:x","room_version":"10"}}"#;
//! let join = r#"{"event_id":"$j","room_id":"!r:x","type":"m.room.member","state_key":"@a:x","sender":"@a:x","prev_events":["$c"],"auth_events":["$c"],"origin_server_ts":2,"content":{"membership":"join"}}"#;
//! let store = Store::in_memory()?;
//! let mut server = RoomServer::new();
//! let mut tx = store.write()?;
//! // The create event arrives in a join's auth chain: an outlier, with no state.
//! let got = server.receive(&mut tx, &InputEvent::outlier(create.as_bytes()))?;
//! assert_eq!(got.outcome, InputOutcome::Outlier);
//! // So the join's prev event is not in the room's timeline...
//! let got = server.receive(&mut tx, &InputEvent::new(join.as_bytes()))?;
//! assert_eq!(got.outcome, InputOutcome::MissingPrevEvents(vec!["$c".into()]));
//! // ...and the join needs the state before it, which the joining server was given.
//! let state = ["$c"];
//! let got = server.receive(&mut tx, &InputEvent::new(join.as_bytes()).with_state_before(&state))?;
//! assert_eq!(got.outcome, InputOutcome::Accepted);
//! assert_eq!(got.adds_state.len(), 2); // the create event and the join: new to the room
//! tx.commit()?;
//! let rx = store.read()?;
//! assert_eq!(rx.state_after(got.event.unwrap())?.len(), 2);
//! assert_eq!(rx.joined_servers(rx.room_nid("!r:x")?.unwrap())?, ["x"]);
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::matrix::auth::Authorizer;
use crate::matrix::input::{Failure, Outcome, Request, Verdict, receive};
use crate::matrix::prepare::Ahead;
use crate::matrix::resolver::StateResolver;
use crate::matrix::stateres::MatrixResolver;
use crate::nid::{EventNid, SnapshotNid};
use crate::store::record::Rejection;
use crate::store::{Serials, WriteTxn, Writer};
use serde_json::value::RawValue;
use std::sync::Arc;

pub use crate::matrix::input::{InputKind, Missing};
pub use crate::matrix::prepare::{PreparedEvent, Preparer};

/// One event to receive: how it arrives, its PDU, and optionally the state before it.
#[derive(Clone, Debug)]
pub struct InputEvent<'a> {
    kind: InputKind,
    pdu: &'a [u8],
    state_before: Option<Vec<&'a str>>,
}

impl<'a> InputEvent<'a> {
    /// A new event, its PDU as JSON bytes.
    pub fn new(pdu: &'a [u8]) -> Self {
        InputEvent {
            kind: InputKind::New,
            pdu,
            state_before: None,
        }
    }

    /// An event of the given kind, its PDU as a `serde_json` raw value.
    pub fn from_raw(kind: InputKind, pdu: &'a RawValue) -> Self {
        InputEvent::new(pdu.get().as_bytes()).kind(kind)
    }

    /// An outlier.
    pub fn outlier(pdu: &'a [u8]) -> Self {
        InputEvent::new(pdu).kind(InputKind::Outlier)
    }

    /// A backfilled event.
    pub fn backfill(pdu: &'a [u8]) -> Self {
        InputEvent::new(pdu).kind(InputKind::Backfill)
    }

    /// The same event, of another kind.
    pub fn kind(mut self, kind: InputKind) -> Self {
        self.kind = kind;
        self
    }

    /// The same event with the state before it supplied, as the event IDs of the state (a
    /// `send_join` or `/state_ids` answer). Every one must be stored. Only for new and
    /// backfilled events; ruma's event ID types pass straight in.
    pub fn with_state_before<S: AsRef<str> + 'a>(mut self, ids: &'a [S]) -> Self {
        self.state_before = Some(ids.iter().map(AsRef::as_ref).collect());
        self
    }

    pub(crate) fn kind_of(&self) -> InputKind {
        self.kind
    }

    pub(crate) fn pdu(&self) -> &'a [u8] {
        self.pdu
    }

    pub(crate) fn state_before(&self) -> Option<&[&'a str]> {
        self.state_before.as_deref()
    }

    fn request(&self) -> Request<'_> {
        Request {
            kind: self.kind,
            json: self.pdu,
            state_before: self.state_before.clone(),
            ahead: Ahead::default(),
        }
    }
}

/// What became of a received event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InputOutcome {
    /// It passed every check (or the server is trusted), and is in its room's timeline.
    Accepted,
    /// It failed the checks given its auth events or the state before it: stored, changing no
    /// state. An outlier can be rejected too (on its auth events).
    Rejected(Rejection),
    /// It failed only the check given the room's current state: stored with its state, moving
    /// neither the current state nor the forward extremities.
    SoftFailed(Rejection),
    /// Stored as an outlier that passed the checks on its auth events.
    Outlier,
    /// The store holds it already, with the same JSON, or with the same reference hash for an
    /// event named by it (its signatures or `unsigned` may differ); nothing changed.
    AlreadyStored,
    /// Not stored, nothing changed: these prev events are not in the room's timeline, and no
    /// state was supplied. Fetch them, or the state before the event.
    MissingPrevEvents(Vec<String>),
    /// Not stored, nothing changed: these auth events are not stored.
    MissingAuthEvents(Vec<String>),
    /// Not stored, nothing changed: these events of the supplied state are not stored.
    MissingStateEvents(Vec<String>),
}

impl InputOutcome {
    /// Whether the event is stored (newly or before).
    pub fn is_stored(&self) -> bool {
        !matches!(
            self,
            InputOutcome::MissingPrevEvents(_)
                | InputOutcome::MissingAuthEvents(_)
                | InputOutcome::MissingStateEvents(_)
        )
    }
}

/// What receiving one event did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// What became of it.
    pub outcome: InputOutcome,
    /// Its ID: as its JSON declares it, or else (room versions 3 on) its reference hash.
    /// `None` only when the hash needs the room's version and the room's create event is
    /// missing.
    pub event_id: Option<String>,
    /// Its NID, when it is stored.
    pub event: Option<EventNid>,
    /// Whether it is stored as an outlier.
    pub outlier: bool,
    /// The state before it; `None` for an outlier or an event not stored.
    pub state_before: Option<SnapshotNid>,
    /// The state after it: the state before plus its own entry, for a state event that was not
    /// rejected. A snapshot no event or room references is deleted by the next garbage
    /// collection, so read it within the transaction.
    pub state_after: Option<SnapshotNid>,
    /// The events it added to its room's current state (a new event moves it; the rest never
    /// do): what a sync stream sends clients. A join over federation adds the whole state.
    pub adds_state: Vec<EventNid>,
    /// The events it took out of its room's current state.
    pub removes_state: Vec<EventNid>,
}

impl Received {
    fn missing(event_id: Option<String>, outcome: InputOutcome) -> Self {
        Received {
            outcome,
            event_id,
            event: None,
            outlier: false,
            state_before: None,
            state_after: None,
            adds_state: Vec::new(),
            removes_state: Vec::new(),
        }
    }
}

/// The entry point of the typed input API. It holds the state resolver, and what it parsed of
/// the events it read, between calls. Those are kept only while the transactions that wrote
/// them stand: after an abort, it notices and forgets them.
pub struct RoomServer<R = MatrixResolver> {
    resolver: R,
    authorizer: Authorizer,
    trusted: bool,
    /// The transaction whose writes the caches were filled from.
    filled_in: Option<(Arc<Serials>, u64)>,
}

impl<R> std::fmt::Debug for RoomServer<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomServer")
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Default for RoomServer<MatrixResolver> {
    fn default() -> Self {
        RoomServer::with_resolver(MatrixResolver::default())
    }
}

impl RoomServer<MatrixResolver> {
    /// A room server that authorizes every event and settles conflicts by Matrix state
    /// resolution.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<R: StateResolver> RoomServer<R> {
    /// A room server settling conflicts with `resolver`.
    pub fn with_resolver(resolver: R) -> Self {
        RoomServer {
            resolver,
            authorizer: Authorizer::default(),
            trusted: false,
            filled_in: None,
        }
    }

    /// Skips authorization when `trusted`: every event is accepted as it comes, and auth events
    /// the store does not hold are allowed. Only for events another server already authorized
    /// (a server's own export); federation input must be checked. Off by default.
    pub fn trusted(mut self, trusted: bool) -> Self {
        self.trusted = trusted;
        self
    }

    /// Receives one event within `tx`. Commit `tx` to keep it. For many events in one
    /// transaction, [`batch`](Self::batch) is faster.
    ///
    /// A missing prev, auth or state event is an outcome, not an error: nothing is written.
    /// An event that cannot be stored at all is [`Error::BadEvent`]. Most such events (bad
    /// JSON, an ID stored with other content, a prev event of another room) are found before
    /// anything is written, and the transaction goes on. One found after its record was
    /// written (a conflict the resolver refuses, when the new current state is settled) leaves
    /// the transaction unable to commit ([`Error::Poisoned`]): abort it, and receive its other
    /// events again.
    pub fn receive(&mut self, tx: &mut WriteTxn, event: &InputEvent<'_>) -> Result<Received> {
        self.batch(tx).receive(event)
    }

    /// Receives several events in `tx`, with its tables opened once: call
    /// [`Batch::receive`] per event, drop the batch, then commit `tx`.
    pub fn batch<'a>(&'a mut self, tx: &'a mut WriteTxn) -> Batch<'a, R> {
        self.forget_unless_seen_by(tx);
        Batch {
            writer: tx.writer(),
            server: self,
        }
    }

    /// Forgets parsed events and resolution caches unless `tx` sees the writes they came from.
    fn forget_unless_seen_by(&mut self, tx: &WriteTxn) {
        let seen = self
            .filled_in
            .as_ref()
            .is_some_and(|(serials, serial)| tx.sees_writes_of(serials, *serial));
        if !seen {
            self.authorizer.rolled_back();
            self.resolver.rolled_back();
        }
        self.filled_in = Some(tx.serial());
    }
}

/// Events received in one write transaction, its tables held open between them
/// ([`RoomServer::batch`]).
pub struct Batch<'a, R> {
    server: &'a mut RoomServer<R>,
    writer: Writer<'a>,
}

impl<R> std::fmt::Debug for Batch<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").finish_non_exhaustive()
    }
}

impl<R: StateResolver> Batch<'_, R> {
    /// Receives one event: [`RoomServer::receive`] says what comes back.
    pub fn receive(&mut self, event: &InputEvent<'_>) -> Result<Received> {
        self.receive_request(event.request())
    }

    /// Receives an event prepared on another thread ([`PreparedEvent`]), with the same outcome
    /// and the same rows as [`receive`](Self::receive) without the work done ahead.
    pub fn receive_prepared(&mut self, event: PreparedEvent) -> Result<Received> {
        let PreparedEvent {
            kind,
            pdu,
            state_before,
            ahead,
        } = event;
        self.receive_request(Request {
            kind,
            json: &pdu,
            state_before: state_before
                .as_ref()
                .map(|ids| ids.iter().map(String::as_str).collect()),
            ahead,
        })
    }

    fn receive_request(&mut self, request: Request<'_>) -> Result<Received> {
        let w = &mut self.writer;
        let server = &mut *self.server;
        let auth = (!server.trusted).then_some(&mut server.authorizer);
        let verdict =
            crate::error::guard(|| match receive(w, &mut server.resolver, auth, request) {
                Ok(verdict) => Ok(Ok(verdict)),
                Err(Failure::Store(e)) => Err(e),
                Err(Failure::Early { event_id, problem }) => {
                    Ok(Err((false, Error::BadEvent { event_id, problem })))
                }
                Err(Failure::Late { event_id, problem }) => Ok(Err((
                    true,
                    Error::BadEvent {
                        event_id: Some(event_id),
                        problem,
                    },
                ))),
            });
        let outcome = match verdict {
            Err(e) => {
                w.poison(format!("receiving an event failed part-way ({e})"));
                return Err(e);
            }
            Ok(Err((late, e))) => {
                if late {
                    w.poison(format!("{e}, after its record was written"));
                }
                return Err(e);
            }
            Ok(Ok(Verdict::Stored { event_id, outcome })) => (event_id, outcome),
            Ok(Ok(Verdict::Missing { event_id, missing })) => {
                return Ok(Received::missing(
                    event_id,
                    match missing {
                        Missing::PrevEvents(ids) => InputOutcome::MissingPrevEvents(ids),
                        Missing::AuthEvents(ids) => InputOutcome::MissingAuthEvents(ids),
                        Missing::StateEvents(ids) => InputOutcome::MissingStateEvents(ids),
                    },
                ));
            }
        };
        crate::error::guard(|| received(w, outcome.0, &outcome.1))
    }
}

/// What a stored event's outcome tells the caller: its states, and what it changed in its
/// room's current state.
fn received(w: &mut Writer<'_>, event_id: String, outcome: &Outcome) -> Result<Received> {
    let state_after = match outcome.state_before {
        Some(_) => Some(w.state_after_snapshot(outcome.event)?),
        None => None,
    };
    let (mut adds_state, mut removes_state) = (Vec::new(), Vec::new());
    if let Some((old, new)) = outcome.current.filter(|(old, new)| old != new) {
        let diff = w.diff(old, new)?;
        adds_state.extend(diff.added.iter().map(|e| e.event));
        removes_state.extend(diff.removed.iter().map(|e| e.event));
        for c in &diff.changed {
            adds_state.push(c.new);
            removes_state.push(c.old);
        }
    }
    let result = match (&outcome.rejection, outcome.already_stored, outcome.outlier) {
        (_, true, _) => InputOutcome::AlreadyStored,
        (Some(r), _, _) if r.soft_failed => InputOutcome::SoftFailed(r.clone()),
        (Some(r), _, _) => InputOutcome::Rejected(r.clone()),
        (None, _, true) => InputOutcome::Outlier,
        (None, _, false) => InputOutcome::Accepted,
    };
    Ok(Received {
        outcome: result,
        event_id: Some(event_id),
        event: Some(outcome.event),
        outlier: outcome.outlier,
        state_before: outcome.state_before,
        state_after,
        adds_state,
        removes_state,
    })
}
