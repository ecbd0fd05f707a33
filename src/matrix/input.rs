//! Receiving one event: the checks that need the store, then its NIDs, record, JSON, the state
//! before and after it, and its room's bookkeeping, all within the caller's write batch.

use crate::engine::block::StateEntry;
use crate::engine::resolve::{Combined, StateMap};
use crate::error::{Error, Problem, Result};
use crate::matrix::auth::{Authorizer, Incoming, rules_for};
use crate::matrix::event::{Pdu, PduJson};
use crate::matrix::pdu::{EventRef, Fields, Loose, Parsed, fields, quoted_event_ids};
use crate::matrix::prepare::{Ahead, DerivedId};
use crate::matrix::reference;
use crate::matrix::resolver::{ResolveRequest, StateResolver};
use crate::nid::{EventNid, NidMap, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::membership::Membership;
use crate::store::record::{AuthStep, EventRecord, Rejection, RoomRecord};
use crate::store::{EVENT, Kind, PreparedJson, ROOM, STATE_KEY, TYPE, Writer};
use ruma_common::OwnedEventId;

/// How an event reaches the store: the three kinds of input federation delivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputKind {
    /// An event known only with its auth events: the auth chain of a join, say, or an event
    /// fetched to authorize another. It is checked against its own auth events only, has no
    /// state, is not in its room's timeline and is never a forward extremity. Its room need not
    /// be stored yet.
    Outlier,
    /// A new event at the room's edge (the default). Its state before comes from its prev
    /// events, or, when supplied, from a list of event IDs (the join, or a gap's `/state_ids`),
    /// in which case its prev events may be unknown. It moves the room's current state and
    /// forward extremities.
    #[default]
    New,
    /// An event older than the room's known history (backfill). Its state before is supplied,
    /// or comes from its prev events when the store holds them. It never moves the room's
    /// current state or forward extremities.
    Backfill,
}

impl InputKind {
    /// `outlier`, `new` or `backfill`, as JSON-lines envelopes spell them.
    pub fn name(self) -> &'static str {
        match self {
            InputKind::Outlier => "outlier",
            InputKind::New => "new",
            InputKind::Backfill => "backfill",
        }
    }
}

impl std::str::FromStr for InputKind {
    type Err = Problem;
    fn from_str(s: &str) -> std::result::Result<Self, Problem> {
        match s {
            "outlier" => Ok(InputKind::Outlier),
            "new" => Ok(InputKind::New),
            "backfill" => Ok(InputKind::Backfill),
            other => Err(Problem::UnknownKind(other.to_owned())),
        }
    }
}

/// What is missing for an event to be stored: the store did not change, and the caller can
/// fetch these and try again.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// Prev events the store does not hold in the room's timeline (unknown, or outliers), and
    /// no state was supplied: fetch them, or the state before the event (`/state_ids`).
    PrevEvents(Vec<String>),
    /// Auth events the store does not hold: fetch them (`/event_auth`) and store them, as
    /// outliers say.
    AuthEvents(Vec<String>),
    /// Events of the supplied state that the store does not hold: store them first.
    StateEvents(Vec<String>),
}

impl Missing {
    /// The event IDs missing.
    pub fn ids(&self) -> &[String] {
        match self {
            Missing::PrevEvents(ids) | Missing::AuthEvents(ids) | Missing::StateEvents(ids) => ids,
        }
    }

    /// The bad-line problem JSON-lines ingest reports for it: the first ID missing.
    pub(crate) fn problem(&self) -> Problem {
        let first = self.ids().first().cloned().unwrap_or_default();
        match self {
            Missing::PrevEvents(_) => Problem::UnknownPrevEvent(first),
            Missing::AuthEvents(_) => Problem::UnknownAuthEvent(first),
            Missing::StateEvents(_) => Problem::UnknownStateEvent(first),
        }
    }
}

/// One event to receive.
pub(crate) struct Request<'a> {
    pub(crate) kind: InputKind,
    pub(crate) json: &'a [u8],
    pub(crate) state_before: Option<Vec<&'a str>>,
    /// What was done ahead for `json`, on another thread perhaps.
    pub(crate) ahead: Ahead,
}

/// Why an event was not stored.
pub(crate) enum Failure {
    /// Found before the event wrote anything: the batch can go on without it.
    Early {
        /// The event's ID, when the JSON had one.
        event_id: Option<String>,
        /// What is wrong.
        problem: Problem,
    },
    /// Found after the event wrote (state resolution refused): the batch is redone without it.
    Late {
        /// The event's ID.
        event_id: String,
        /// What is wrong.
        problem: Problem,
    },
    /// The store failed.
    Store(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

/// What receiving an event did.
pub(crate) enum Verdict {
    /// Stored (or found stored already).
    Stored {
        /// The event's ID: declared, or derived from its reference hash.
        event_id: String,
        /// What it adds to the report.
        outcome: Outcome,
    },
    /// Not stored: something it needs is missing, and nothing changed.
    Missing {
        /// The event's ID; `None` when it is the reference hash and the room version it needs
        /// is what is missing.
        event_id: Option<String>,
        /// What it needs.
        missing: Missing,
    },
}

/// What one stored event adds to the report.
pub(crate) struct Outcome {
    /// The event.
    pub(crate) event: EventNid,
    /// Whether it was a state event.
    pub(crate) state: bool,
    /// Whether it gave its room a timeline (its create event, or a join over federation).
    pub(crate) new_room: bool,
    /// Why it was rejected or soft-failed; `None` when accepted.
    pub(crate) rejection: Option<Rejection>,
    /// Whether it was stored already (the same JSON, or the same reference hash), and nothing
    /// was written.
    pub(crate) already_stored: bool,
    /// Whether it is (still) an outlier.
    pub(crate) outlier: bool,
    /// The state before it; `None` for an outlier.
    pub(crate) state_before: Option<SnapshotNid>,
    /// The room's current state before and after it, when it moved.
    pub(crate) current: Option<(SnapshotNid, SnapshotNid)>,
}

/// The checks that need the store but write nothing.
struct Checked {
    room: Option<(RoomNid, RoomRecord)>,
    version: Option<String>,
    prevs: Vec<EventNid>,
    supplied: Option<StateMap>,
}

/// Why a checked event goes no further.
enum Refusal {
    Missing(Missing),
    Bad(Problem),
}

impl From<Problem> for Refusal {
    fn from(p: Problem) -> Self {
        Refusal::Bad(p)
    }
}

type Checking<T> = Result<Result<T, Refusal>>;

/// A stored event's NID and record, unless the store does not hold it.
fn stored(w: &mut Writer<'_>, id: &str) -> Result<Option<(EventNid, EventRecord)>> {
    stored_with(w, id, EventRecord::clone)
}

/// A stored event's NID and what `read` takes of its record: the auth events of every event
/// are asked about, and a copy of each record would cost more than the question.
fn stored_with<T>(
    w: &mut Writer<'_>,
    id: &str,
    read: impl FnOnce(&EventRecord) -> T,
) -> Result<Option<(EventNid, T)>> {
    let Some(nid) = w.lookup_nid(EVENT, id)?.and_then(EventNid::new) else {
        return Ok(None);
    };
    Ok(w.with_event(nid, read)?.map(|t| (nid, t)))
}

fn check(
    w: &mut Writer<'_>,
    p: &Parsed<'_>,
    req: &Request<'_>,
    auth: Option<&mut Authorizer>,
) -> Checking<Checked> {
    let trusted = auth.is_none();
    let room_nid = w.lookup_nid(ROOM, &p.room_id)?.and_then(RoomNid::new);
    let room = match room_nid {
        Some(nid) => w.room(nid)?.map(|r| (nid, r)),
        None => None,
    };
    let prevs = match req.kind {
        InputKind::Outlier => Vec::new(),
        _ => match check_prevs(w, p, req, room_nid, room.is_some())? {
            Ok(prevs) => prevs,
            Err(refusal) => return Ok(Err(refusal)),
        },
    };
    // A known auth event must be of this room: state resolution follows them, and a purge of
    // another room would leave them dangling. Authorization needs every one of them; a trusted
    // import may name auth events it does not hold (they are interned for later).
    let mut missing = Vec::new();
    let mut create_among_auth = None;
    for r in &p.auth_events {
        match stored_with(w, r.id(), |record| (record.room, is_create(record)))? {
            Some((_, (room, _))) if Some(room) != room_nid => {
                return Ok(Err(Problem::AuthEventInOtherRoom(r.id().to_owned()).into()));
            }
            Some((nid, (_, true))) => {
                create_among_auth.get_or_insert(nid);
            }
            Some(_) => {}
            None if !trusted => missing.push(r.id().to_owned()),
            None => {}
        }
    }
    let version = match &room {
        Some((_, record)) => Some(record.version.clone()),
        None if p.is_create() => Some(p.content_version().to_owned()),
        None => {
            let known = auth.map(|a| &mut a.versions);
            match version_from_create(w, &p.room_id, create_among_auth, known)? {
                Ok(version) => version,
                Err(implied) if !trusted => {
                    missing.push(implied);
                    None
                }
                Err(_) => None,
            }
        }
    };
    if !missing.is_empty() {
        return Ok(Err(Refusal::Missing(Missing::AuthEvents(missing))));
    }
    let supplied = match &req.state_before {
        Some(ids) => match supplied_state(w, ids, room_nid)? {
            Ok(state) => Some(state),
            Err(refusal) => return Ok(Err(refusal)),
        },
        None => None,
    };
    match (req.kind, &room) {
        (InputKind::Backfill, None) => return Ok(Err(Problem::BackfillWithoutRoom.into())),
        (InputKind::New, None) if version.is_none() => {
            return Ok(Err(Problem::NoCreateEvent.into()));
        }
        (InputKind::New, None) if !p.is_create() && supplied.is_none() => {
            // Known prev events in this room imply its record: its absence means damage.
            return Err(Error::corrupt(
                "rooms",
                &*p.room_id,
                "room has events but no record",
            ));
        }
        _ => {}
    }
    Ok(Ok(Checked {
        room,
        version,
        prevs,
        supplied,
    }))
}

/// The prev events the room's timeline holds. Those it does not hold (unknown, or outliers)
/// are missing, unless the state before the event is supplied.
fn check_prevs(
    w: &mut Writer<'_>,
    p: &Parsed<'_>,
    req: &Request<'_>,
    room_nid: Option<RoomNid>,
    room_exists: bool,
) -> Checking<Vec<EventNid>> {
    if p.prev_events.is_empty() {
        return Ok(match (p.is_create(), req.kind, room_exists) {
            (false, _, _) => Err(Problem::NoPrevEvents.into()),
            (true, InputKind::New, true) => Err(Problem::RoomExists.into()),
            (true, _, _) => Ok(Vec::new()),
        });
    }
    let mut prevs = Vec::with_capacity(p.prev_events.len());
    let mut missing = Vec::new();
    for r in &p.prev_events {
        let id = r.id();
        match stored(w, id)? {
            Some((_, record)) if Some(record.room) != room_nid => {
                return Ok(Err(Problem::PrevEventInOtherRoom(id.to_owned()).into()));
            }
            Some((nid, record)) if !w.is_outlier(record.room, nid)? => {
                if !prevs.contains(&nid) {
                    prevs.push(nid);
                }
            }
            _ => missing.push(id.to_owned()),
        }
    }
    if !missing.is_empty() && req.state_before.is_none() {
        return Ok(Err(Refusal::Missing(Missing::PrevEvents(missing))));
    }
    Ok(Ok(prevs))
}

/// The room version of a room the store has no timeline for, from its create event: one of the
/// event's auth events, or in room version 12 the create event its room ID names.
/// `Ok(None)`: neither is a stored create event. `Err(id)`: the create event the room ID names
/// is not stored.
fn version_from_create(
    w: &mut Writer<'_>,
    room_id: &str,
    create_among_auth: Option<EventNid>,
    mut known: Option<&mut NidMap<EventNid, String>>,
) -> Result<std::result::Result<Option<String>, String>> {
    // A room ID without a server name is a create event's reference hash (room version 12 on).
    let implied = (!room_id.contains(':'))
        .then(|| room_id.strip_prefix('!').map(|hash| format!("${hash}")))
        .flatten();
    let implied_create = match &implied {
        Some(id) => stored_with(w, id, is_create)?
            .filter(|(_, create)| *create)
            .map(|(nid, _)| nid),
        None => None,
    };
    for nid in create_among_auth.into_iter().chain(implied_create) {
        if let Some(version) = known.as_deref().and_then(|k| k.get(&nid)) {
            return Ok(Ok(Some(version.clone())));
        }
        let Some(json) = w.event_json_text(nid)? else {
            continue;
        };
        // The create event may be named by its reference hash rather than its JSON.
        if let Ok(create) = fields(json.as_bytes()) {
            let version = create.declared_version().to_owned();
            if let Some(known) = known.as_deref_mut() {
                known.insert(nid, version.clone());
            }
            return Ok(Ok(Some(version)));
        }
    }
    Ok(match implied {
        Some(id) => Err(id),
        None => Ok(None),
    })
}

/// The ID of an event whose JSON declares none: its reference hash under its room's version,
/// which comes from the event itself (a create event), its room's record, or its room's create
/// event (among its stored auth events, or named by a version 12 room ID). The ID derived
/// ahead is taken when it was derived under that version.
fn derived_id(
    w: &mut Writer<'_>,
    f: &Fields<'_>,
    json: &[u8],
    known: Option<&mut NidMap<EventNid, String>>,
    ahead: Option<DerivedId>,
) -> Checking<String> {
    let version = if f.is_create() {
        f.declared_version().to_owned()
    } else {
        let Some(room_id) = f.room_id() else {
            return Ok(Err(Problem::MissingField("room_id").into()));
        };
        let room = w.lookup_nid(ROOM, room_id)?.and_then(RoomNid::new);
        match room.map(|nid| w.room(nid)).transpose()?.flatten() {
            Some(record) => record.version,
            None => {
                let mut create_among_auth = None;
                let mut unknown = Vec::new();
                for id in f.auth_ids() {
                    match stored_with(w, id, is_create)? {
                        Some((nid, true)) => {
                            create_among_auth.get_or_insert(nid);
                        }
                        Some(_) => {}
                        None => unknown.push(id.to_owned()),
                    }
                }
                match version_from_create(w, room_id, create_among_auth, known)? {
                    Ok(Some(version)) => version,
                    // The create event may be one of the auth events not stored yet.
                    Ok(None) if !unknown.is_empty() => {
                        return Ok(Err(Refusal::Missing(Missing::AuthEvents(unknown))));
                    }
                    Ok(None) => return Ok(Err(Problem::NoCreateEvent.into())),
                    Err(create) => {
                        return Ok(Err(Refusal::Missing(Missing::AuthEvents(vec![create]))));
                    }
                }
            }
        }
    };
    if let Some(derived) = ahead.filter(|d| d.version == version) {
        return Ok(Ok(derived.id));
    }
    Ok(reference::event_id(json, &version).map_err(Refusal::Bad))
}

/// Whether a stored event is a room's create event.
pub(crate) fn is_create(record: &EventRecord) -> bool {
    record.event_type == TypeNid::CREATE && record.state_key == Some(StateKeyNid::EMPTY)
}

/// The supplied state before an event, as a state map of stored state events of its room.
fn supplied_state(w: &mut Writer<'_>, ids: &[&str], room: Option<RoomNid>) -> Checking<StateMap> {
    let mut entries = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for &id in ids {
        let Some((nid, record)) = stored(w, id)? else {
            missing.push(id.to_owned());
            continue;
        };
        let bad = |reason| {
            Ok(Err(Refusal::Bad(Problem::BadStateEvent {
                event_id: id.to_owned(),
                reason,
            })))
        };
        if Some(record.room) != room {
            return bad("is of another room");
        }
        let Some(key) = record.state_key else {
            return bad("is not a state event");
        };
        if record.rejected {
            return bad("was rejected");
        }
        entries.push(StateEntry {
            key: StateKey::new(record.event_type, key),
            event: nid,
        });
    }
    if !missing.is_empty() {
        return Ok(Err(Refusal::Missing(Missing::StateEvents(missing))));
    }
    entries.sort_unstable_by_key(|e| e.key);
    if let Some(pair) = entries.windows(2).find(|p| p[0].key == p[1].key) {
        let event_id = w.string(EVENT, pair[1].event.get())?;
        return Ok(Err(Refusal::Bad(Problem::BadStateEvent {
            event_id,
            reason: "repeats a (type, state key) given before",
        })));
    }
    Ok(Ok(StateMap::from_entries(entries)))
}

/// Receives one event: parses it, checks it against the store, authorizes it (unless `auth`
/// is `None`: a trusted import), and stores it. A missing prev, auth or state event stores
/// nothing.
pub(crate) fn receive<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    auth: Option<&mut Authorizer>,
    req: Request<'_>,
) -> Result<Verdict, Failure> {
    let mut req = req;
    let ahead = std::mem::take(&mut req.ahead);
    let req = &req;
    let bad = |(event_id, problem)| Failure::Early { event_id, problem };
    let fields = fields(req.json).map_err(bad)?;
    let mut auth = auth;
    let derived = match fields.declared_id() {
        Some(_) => None,
        // Without a type either, it is no PDU at all (an envelope, say).
        None if !fields.has_type() => return Err(bad((None, Problem::NotAPdu))),
        None => {
            let known = auth.as_deref_mut().map(|a| &mut a.versions);
            match derived_id(w, &fields, req.json, known, ahead.derived_id)? {
                Ok(id) => Some(id),
                Err(Refusal::Missing(missing)) => {
                    return Ok(Verdict::Missing {
                        event_id: None,
                        missing,
                    });
                }
                Err(Refusal::Bad(problem)) => return Err(bad((None, problem))),
            }
        }
    };
    let named_by_hash = derived.is_some();
    let parsed = fields.named(derived).map_err(bad)?;
    let early = |problem| Failure::Early {
        event_id: Some(parsed.event_id.to_string()),
        problem,
    };
    if req.state_before.is_some() && (req.kind == InputKind::Outlier || parsed.is_create()) {
        return Err(early(Problem::StateNotTaken));
    }
    let mut upgrade = None;
    if let Some((nid, record)) = stored(w, &parsed.event_id)? {
        // The same event again (an import re-run after a kill, say) is a no-op, unless an
        // outlier now arrives in the timeline; the same declared ID with other content is
        // refused. An ID that is the event's reference hash covers all but its signatures and
        // `unsigned`, which servers may send differently: the copy stored first is kept.
        if !named_by_hash && w.event_json_text(nid)?.as_deref().map(str::as_bytes) != Some(req.json)
        {
            return Err(early(Problem::DuplicateEvent));
        }
        let outlier = w.is_outlier(record.room, nid)?;
        if !outlier || req.kind == InputKind::Outlier {
            return Ok(Verdict::Stored {
                event_id: parsed.event_id.into_owned(),
                outcome: already_stored(nid, &record, outlier),
            });
        }
        upgrade = Some(nid);
    }
    let checked = match check(w, &parsed, req, auth.as_deref_mut())? {
        Ok(checked) => checked,
        Err(Refusal::Missing(missing)) => {
            return Ok(Verdict::Missing {
                event_id: Some(parsed.event_id.into_owned()),
                missing,
            });
        }
        Err(Refusal::Bad(problem)) => return Err(early(problem)),
    };
    let judge = match auth {
        Some(authorizer) => {
            // The rules read the event through ruma's types, which check the IDs' grammar.
            let json = ahead
                .rules_view
                .unwrap_or_else(|| {
                    serde_json::from_slice::<PduJson>(req.json).map_err(|e| e.to_string())
                })
                .map_err(|e| early(Problem::NotAnEvent(e)))?;
            let id = OwnedEventId::try_from(&*parsed.event_id).ok();
            let pdu = json.named(|| Ok(id))?.ok_or_else(|| {
                early(Problem::BadField {
                    field: "event_id",
                    reason: "not an event ID",
                })
            })?;
            Some((authorizer, pdu))
        }
        None => None,
    };
    let event = Arriving {
        p: &parsed,
        json: req.json,
        json_ahead: ahead.json,
        kind: req.kind,
        upgrade,
    };
    let outcome = store_event(w, resolver, judge, event, checked)?;
    Ok(Verdict::Stored {
        event_id: parsed.event_id.into_owned(),
        outcome,
    })
}

/// Stores `event`'s JSON, the event IDs it quotes named by NID where they are the event itself
/// or stored events of its room: only those outlive the row for certain (a purge takes a room's
/// events and rows together).
fn put_json(
    w: &mut Writer<'_>,
    event: EventNid,
    room: RoomNid,
    (own, json): (&str, &[u8]),
    prepared: Option<PreparedJson>,
) -> Result<()> {
    let prepared = prepared.unwrap_or_else(|| PreparedJson::new(json, &quoted_event_ids(json)));
    let mut nids = Vec::new();
    for id in prepared.ids(json) {
        let nid = match std::str::from_utf8(id) {
            Ok(id) if id == own => Some(event),
            Ok(id) => {
                stored_with(w, id, |r| r.room == room)?.and_then(|(nid, same)| same.then_some(nid))
            }
            Err(_) => None,
        };
        nids.push(nid);
    }
    w.put_event_json(event, json, prepared, &nids)
}

fn already_stored(event: EventNid, record: &EventRecord, outlier: bool) -> Outcome {
    Outcome {
        event,
        state: record.state_key.is_some(),
        new_room: false,
        rejection: None,
        already_stored: true,
        outlier,
        state_before: (!outlier).then_some(record.state_before),
        current: None,
    }
}

fn nid<T>(raw: u64, make: fn(u64) -> Option<T>, what: &'static str) -> Result<T> {
    make(raw).ok_or_else(|| Error::corrupt("meta", what, "zero NID"))
}

/// An event past its checks, on its way into the store.
struct Arriving<'a> {
    p: &'a Parsed<'a>,
    json: &'a [u8],
    /// `json` prepared ahead, if it was.
    json_ahead: Option<PreparedJson>,
    kind: InputKind,
    /// The NID of the outlier it upgrades.
    upgrade: Option<EventNid>,
}

/// Writes one checked event: its NIDs, record, JSON, and its room's bookkeeping.
fn store_event<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    judge: Option<(&mut Authorizer, Pdu)>,
    a: Arriving<'_>,
    checked: Checked,
) -> Result<Outcome, Failure> {
    let p = a.p;
    let event = match a.upgrade {
        Some(nid) => nid,
        None => intern_one(w, EVENT, &p.event_id, EventNid::new)?[0],
    };
    let [event_type] = intern_one(w, TYPE, &p.event_type, TypeNid::new)?;
    let state_key = match &p.state_key {
        Some(k) => Some(intern_one(w, STATE_KEY, k, StateKeyNid::new)?[0]),
        None => None,
    };
    let auth_ids: Vec<&str> = p.auth_events.iter().map(EventRef::id).collect();
    let auth_events = w
        .intern(EVENT, &auth_ids)?
        .into_iter()
        .map(|n| nid(n, EventNid::new, "next_event_nid"))
        .collect::<Result<Vec<_>>>()?;
    let [room] = match &checked.room {
        Some((room, _)) => [*room],
        None => intern_one(w, ROOM, &p.room_id, RoomNid::new)?,
    };
    let version = checked.version.clone().unwrap_or_else(|| "1".to_owned());
    let membership = match (
        event_type,
        p.content.membership.as_ref().and_then(Loose::text),
    ) {
        (TypeNid::MEMBER, Some(m)) => m.parse::<Membership>().ok(),
        _ => None,
    };
    let mut record = EventRecord {
        room,
        event_type,
        state_key,
        state_before: SnapshotNid::EMPTY,
        rejected: false,
        prev_events: checked.prevs.clone(),
        auth_events,
        membership,
    };
    if a.kind == InputKind::Outlier {
        let rejection = match judge {
            Some((authorizer, pdu)) => {
                let judged = Judged {
                    pdu: &pdu,
                    auth_nids: &record.auth_events,
                    version: &version,
                };
                authorize(w, authorizer, &judged, None, None)?
            }
            None => None,
        };
        record.rejected = rejection.is_some();
        w.put_event(event, &record)?;
        put_json(w, event, room, (&p.event_id, a.json), a.json_ahead)?;
        w.set_outlier(room, event, true)?;
        if let Some(rejection) = &rejection {
            w.put_rejection(event, rejection)?;
        }
        return Ok(Outcome {
            event,
            state: state_key.is_some(),
            new_room: false,
            rejection,
            already_stored: false,
            outlier: true,
            state_before: None,
            current: None,
        });
    }
    let new_room = checked.room.is_none();
    let mut room_record = match checked.room {
        Some((_, r)) => r,
        None => RoomRecord {
            version,
            current_state: SnapshotNid::EMPTY,
            latest_events: Vec::new(),
            event_count: 0,
        },
    };
    let ctx = Context {
        room,
        version: &room_record.version,
        event_id: &p.event_id,
    };
    let before = match &checked.supplied {
        Some(state) => w.snapshot_from_state(state)?,
        None => state_before(w, resolver, &ctx, &checked.prevs, &room_record)?,
    };
    record.state_before = before;
    let rejection = match judge {
        Some((authorizer, pdu)) => {
            // Only a new event is judged against the room's current state (step 6): a backfilled
            // one is older than it, and a room's first event has none.
            let current =
                (a.kind == InputKind::New && !new_room).then_some(room_record.current_state);
            let judged = Judged {
                pdu: &pdu,
                auth_nids: &record.auth_events,
                version: &room_record.version,
            };
            authorize(w, authorizer, &judged, Some(before), current)?
        }
        None => None,
    };
    record.rejected = rejection.as_ref().is_some_and(|r| !r.soft_failed);
    w.put_event(event, &record)?;
    match a.upgrade {
        Some(_) => w.set_outlier(room, event, false)?,
        None => put_json(w, event, room, (&p.event_id, a.json), a.json_ahead)?,
    }
    w.add_room_event(room, room_record.event_count, event)?;
    room_record.event_count += 1;
    match &rejection {
        // Rejected and soft-failed events move neither the current state nor the extremities.
        Some(rejection) => w.put_rejection(event, rejection)?,
        None if a.upgrade.is_some() => w.clear_rejection(event)?,
        None => {}
    }
    let old_current = room_record.current_state;
    let moves = a.kind == InputKind::New && rejection.is_none();
    if moves {
        // The resolver may read this event: the new current state is settled after it is
        // written.
        let mut latest = room_record.latest_events.clone();
        latest.retain(|e| !checked.prevs.contains(e));
        latest.push(event);
        let mut afters = Vec::with_capacity(latest.len());
        for e in &latest {
            afters.push(w.state_after_snapshot(*e)?);
        }
        let current = state_of_afters(w, resolver, &ctx, afters)?;
        let linear = old_current == before && latest.as_slice() == [event];
        room_record.latest_events = latest;
        if linear {
            // The common case: the new current state is the old one plus this event, so only
            // this event's own key can change a membership.
            if let Some(key) = record.sets().filter(|k| k.ty == TypeNid::MEMBER) {
                w.set_membership(room, key.key, record.membership)?;
            }
        } else {
            update_membership(w, room, old_current, current)?;
        }
        room_record.current_state = current;
    }
    w.put_room(room, &room_record)?;
    Ok(Outcome {
        event,
        state: state_key.is_some(),
        new_room,
        rejection,
        already_stored: false,
        outlier: false,
        state_before: Some(before),
        current: moves.then_some((old_current, room_record.current_state)),
    })
}

/// The state before an event from its prev events.
fn state_before<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    ctx: &Context<'_>,
    prevs: &[EventNid],
    room: &RoomRecord,
) -> Result<SnapshotNid, Failure> {
    // A merge of exactly the room's forward extremities was already combined into its current
    // state when the last of them arrived.
    let same_set =
        |a: &[EventNid], b: &[EventNid]| a.len() == b.len() && a.iter().all(|e| b.contains(e));
    if prevs.len() > 1 && same_set(prevs, &room.latest_events) {
        return Ok(room.current_state);
    }
    let mut afters = Vec::with_capacity(prevs.len());
    for e in prevs {
        afters.push(w.state_after_snapshot(*e)?);
    }
    state_of_afters(w, resolver, ctx, afters)
}

/// The event being authorized, as the checks read it.
struct Judged<'a> {
    pdu: &'a Pdu,
    auth_nids: &'a [EventNid],
    version: &'a str,
}

fn authorize(
    w: &mut Writer<'_>,
    authorizer: &mut Authorizer,
    event: &Judged<'_>,
    before: Option<SnapshotNid>,
    current: Option<SnapshotNid>,
) -> Result<Option<Rejection>> {
    let rules = match rules_for(event.version) {
        Ok(rules) => rules,
        Err(rule) => {
            return Ok(Some(Rejection {
                soft_failed: false,
                step: AuthStep::AuthEvents,
                rule,
            }));
        }
    };
    let incoming = Incoming {
        pdu: event.pdu,
        auth_nids: event.auth_nids,
        rules: &rules,
        before,
        current,
    };
    authorizer.authorize(w, &incoming)
}

fn intern_one<T>(
    w: &mut Writer<'_>,
    kind: Kind,
    s: &str,
    make: fn(u64) -> Option<T>,
) -> Result<[T; 1]> {
    let raw = w.intern(kind, &[s])?;
    let first = raw.first().copied().unwrap_or(0);
    Ok([nid(first, make, kind.counter)?])
}

struct Context<'a> {
    room: RoomNid,
    version: &'a str,
    event_id: &'a str,
}

/// The combination of several states (the states after some events): empty for none, the one
/// state, or their combination with conflicts settled by the resolver.
fn state_of_afters<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    ctx: &Context<'_>,
    mut afters: Vec<SnapshotNid>,
) -> Result<SnapshotNid, Failure> {
    let mut seen = Vec::with_capacity(afters.len());
    afters.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    match afters.as_slice() {
        [] => return Ok(SnapshotNid::EMPTY),
        [one] => return Ok(*one),
        _ => {}
    }
    // Combined on blocks first: the blocks the states share are skipped, and the other states
    // are flattened only when there is a conflict to show the resolver.
    let (mut states, combined) = w.combine(&afters)?;
    let resolved = if combined.conflicted.is_empty() {
        combined.unconflicted
    } else {
        for s in &afters[states.len()..] {
            states.push(w.flatten(*s)?);
        }
        let request = ResolveRequest {
            room: ctx.room,
            room_version: ctx.version,
            event_id: ctx.event_id,
            states: &states,
            combined: &combined,
        };
        match resolver.resolve(&request, w) {
            Ok(Some(state)) => state,
            Ok(None) => {
                return Err(Failure::Late {
                    event_id: ctx.event_id.to_owned(),
                    problem: needs_resolution(w, &combined)?,
                });
            }
            Err(e @ (Error::UnsupportedRoomVersion { .. } | Error::StateResolution(_))) => {
                return Err(Failure::Late {
                    event_id: ctx.event_id.to_owned(),
                    problem: Problem::ResolutionFailed(e.to_string()),
                });
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(w.snapshot_from_merge(afters[0], &states[0], &resolved)?)
}

fn needs_resolution(w: &mut Writer<'_>, combined: &Combined) -> Result<Problem> {
    let mut keys = Vec::with_capacity(combined.conflicted.len());
    for c in &combined.conflicted {
        keys.push((
            w.string(TYPE, c.key.ty.get())?,
            w.string(STATE_KEY, c.key.key.get())?,
        ));
    }
    Ok(Problem::NeedsStateResolution(keys))
}

/// Brings the room's membership index from its old current state to the new one.
fn update_membership(
    w: &mut Writer<'_>,
    room: RoomNid,
    old: SnapshotNid,
    new: SnapshotNid,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let diff = w.diff(old, new)?;
    let is_member = |k: &StateKey| k.ty == TypeNid::MEMBER;
    for e in diff.removed.iter().filter(|e| is_member(&e.key)) {
        w.set_membership(room, e.key.key, None)?;
    }
    let set = diff
        .added
        .iter()
        .map(|e| (e.key, e.event))
        .chain(diff.changed.iter().map(|c| (c.key, c.new)));
    for (key, event) in set.filter(|(k, _)| is_member(k)) {
        let membership = w.expect_event(event)?.membership;
        w.set_membership(room, key.key, membership)?;
    }
    Ok(())
}
