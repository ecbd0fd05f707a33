//! Receiving one event: the checks that need the store, then its NIDs, record, JSON, the state
//! before and after it, and its room's bookkeeping, all within the caller's write batch.

use crate::engine::resolve::Combined;
use crate::error::{Error, Problem, Result};
use crate::matrix::auth::{Authorizer, Incoming, rules_for};
use crate::matrix::event::Pdu;
use crate::matrix::pdu::{EventRef, Loose, Parsed, parse};
use crate::matrix::resolver::{ResolveRequest, StateResolver};
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::membership::Membership;
use crate::store::record::{AuthStep, EventRecord, Rejection, RoomRecord};
use crate::store::{EVENT, Kind, ROOM, STATE_KEY, TYPE, Writer};

/// Why an event was not stored.
pub(crate) enum Failure {
    /// Found before the event wrote anything: the batch can go on without it.
    Early {
        /// The event's ID, when the JSON had one.
        event_id: Option<String>,
        /// What is wrong.
        problem: Problem,
    },
    /// Found after the event wrote: the batch must be redone without it.
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

/// What one stored event adds to the report.
pub(crate) struct Outcome {
    /// Whether it was a state event.
    pub(crate) state: bool,
    /// Whether it created its room.
    pub(crate) new_room: bool,
    /// Why it was rejected or soft-failed; `None` when accepted.
    pub(crate) rejection: Option<Rejection>,
    /// Whether it was stored already, with the same JSON, and nothing was written.
    pub(crate) already_stored: bool,
}

impl Outcome {
    fn already_stored() -> Self {
        Outcome {
            state: false,
            new_room: false,
            rejection: None,
            already_stored: true,
        }
    }
}

/// The checks that need the store but write nothing.
struct Checked {
    room: Option<(RoomNid, RoomRecord)>,
    prevs: Vec<EventNid>,
}

fn check(w: &mut Writer<'_>, p: &Parsed<'_>, trusted: bool) -> Result<Result<Checked, Problem>> {
    let room_nid = w.lookup_nid(ROOM, &p.room_id)?.and_then(RoomNid::new);
    let room = match room_nid {
        Some(nid) => w.room(nid)?.map(|r| (nid, r)),
        None => None,
    };
    if p.prev_events.is_empty() {
        return Ok(match (p.is_create(), room) {
            (false, _) => Err(Problem::NoPrevEvents),
            (true, Some(_)) => Err(Problem::RoomExists),
            (true, None) => Ok(Checked {
                room: None,
                prevs: Vec::new(),
            }),
        });
    }
    let mut prevs = Vec::with_capacity(p.prev_events.len());
    for r in &p.prev_events {
        let id = r.id();
        let Some(nid) = w.lookup_nid(EVENT, id)?.and_then(EventNid::new) else {
            return Ok(Err(Problem::UnknownPrevEvent(id.to_owned())));
        };
        let Some(prev_room) = w.event_room(nid)? else {
            return Ok(Err(Problem::UnknownPrevEvent(id.to_owned())));
        };
        if Some(prev_room) != room_nid {
            return Ok(Err(Problem::PrevEventInOtherRoom(id.to_owned())));
        }
        if !prevs.contains(&nid) {
            prevs.push(nid);
        }
    }
    // A known auth event must be of this room: state resolution follows them, and a purge of
    // another room would leave them dangling. Authorization needs every one of them; a trusted
    // import may name auth events it does not hold (they are interned for later).
    for r in &p.auth_events {
        let id = r.id();
        let room_of = match w.lookup_nid(EVENT, id)?.and_then(EventNid::new) {
            Some(nid) => w.event_room(nid)?,
            None => None,
        };
        match room_of {
            Some(auth_room) if Some(auth_room) != room_nid => {
                return Ok(Err(Problem::AuthEventInOtherRoom(id.to_owned())));
            }
            None if !trusted => return Ok(Err(Problem::UnknownAuthEvent(id.to_owned()))),
            _ => {}
        }
    }
    match room {
        Some(room) => Ok(Ok(Checked {
            room: Some(room),
            prevs,
        })),
        // A prev event in this room implies the room exists; a record missing means damage.
        None => Err(Error::corrupt(
            "rooms",
            &*p.room_id,
            "room has events but no record",
        )),
    }
}

/// Receives one event's JSON: parses it, checks it against the store, authorizes it (unless
/// `auth` is `None`: a trusted import), and stores it.
pub(crate) fn receive<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    auth: Option<&mut Authorizer>,
    bytes: &[u8],
) -> Result<Outcome, Failure> {
    let parsed =
        parse(bytes).map_err(|(event_id, problem)| Failure::Early { event_id, problem })?;
    let early = |problem| Failure::Early {
        event_id: Some(parsed.event_id.to_string()),
        problem,
    };
    if let Some(nid) = w
        .lookup_nid(EVENT, &parsed.event_id)?
        .and_then(EventNid::new)
        && w.event_room(nid)?.is_some()
    {
        // The same event again (an import re-run after a kill, say) is a no-op; the same ID
        // with other content is refused.
        return match w.event_json_text(nid)? {
            Some(stored) if stored.as_bytes() == bytes => Ok(Outcome::already_stored()),
            _ => Err(early(Problem::DuplicateEvent)),
        };
    }
    let checked = check(w, &parsed, auth.is_none())?.map_err(early)?;
    let judge = match auth {
        Some(authorizer) => {
            // The rules read the event through ruma's types, which check the IDs' grammar.
            let pdu: Pdu = serde_json::from_slice(bytes)
                .map_err(|e| early(Problem::NotAnEvent(e.to_string())))?;
            Some((authorizer, pdu))
        }
        None => None,
    };
    store_event(w, resolver, judge, &parsed, checked, bytes)
}

fn nid<T>(raw: u64, make: fn(u64) -> Option<T>, what: &'static str) -> Result<T> {
    make(raw).ok_or_else(|| Error::corrupt("meta", what, "zero NID"))
}

/// Writes one checked event: its NIDs, record, JSON, and its room's bookkeeping.
fn store_event<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    judge: Option<(&mut Authorizer, Pdu)>,
    p: &Parsed<'_>,
    checked: Checked,
    json: &[u8],
) -> Result<Outcome, Failure> {
    let [event] = intern_one(w, EVENT, &p.event_id, EventNid::new)?;
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
    let new_room = checked.room.is_none();
    let (room, mut room_record) = match checked.room {
        Some(r) => r,
        None => {
            let [room] = intern_one(w, ROOM, &p.room_id, RoomNid::new)?;
            let version = p
                .content
                .room_version
                .as_ref()
                .and_then(Loose::text)
                .unwrap_or("1")
                .to_owned();
            let record = RoomRecord {
                version,
                current_state: SnapshotNid::EMPTY,
                latest_events: Vec::new(),
                event_count: 0,
            };
            (room, record)
        }
    };
    let ctx = Context {
        room,
        version: &room_record.version,
        event_id: &p.event_id,
    };
    // A merge of exactly the room's forward extremities was already combined into its current
    // state when the last of them arrived.
    let same_set =
        |a: &[EventNid], b: &[EventNid]| a.len() == b.len() && a.iter().all(|e| b.contains(e));
    let before = if checked.prevs.len() > 1 && same_set(&checked.prevs, &room_record.latest_events)
    {
        room_record.current_state
    } else {
        state_of_all(w, resolver, &ctx, &checked.prevs)?
    };
    let rejection = match judge {
        Some((authorizer, pdu)) => {
            let current = (!p.is_create()).then_some(room_record.current_state);
            let event = Judged {
                pdu: &pdu,
                auth_nids: &auth_events,
                version: &room_record.version,
            };
            authorize(w, authorizer, &event, before, current)?
        }
        None => None,
    };
    let membership = match (
        event_type,
        p.content.membership.as_ref().and_then(Loose::text),
    ) {
        (TypeNid::MEMBER, Some(m)) => m.parse::<Membership>().ok(),
        _ => None,
    };
    let record = EventRecord {
        room,
        event_type,
        state_key,
        state_before: before,
        rejected: rejection.as_ref().is_some_and(|r| !r.soft_failed),
        prev_events: checked.prevs.clone(),
        auth_events,
        membership,
    };
    w.put_event(event, &record)?;
    w.put_event_json(event, json)?;
    w.add_room_event(room, room_record.event_count, event)?;
    room_record.event_count += 1;
    if let Some(rejection) = rejection {
        // Rejected and soft-failed events move neither the current state nor the extremities.
        w.put_rejection(event, &rejection)?;
        w.put_room(room, &room_record)?;
        return Ok(Outcome {
            state: state_key.is_some(),
            new_room,
            rejection: Some(rejection),
            already_stored: false,
        });
    }
    room_record
        .latest_events
        .retain(|e| !checked.prevs.contains(e));
    room_record.latest_events.push(event);
    let latest = room_record.latest_events.clone();
    let current = state_of_all(w, resolver, &ctx, &latest)?;
    if room_record.current_state == before && latest.as_slice() == [event] {
        // The common, linear case: the new current state is the old one plus this event, so
        // only this event's own key can change a membership.
        if let Some(key) = record.sets().filter(|k| k.ty == TypeNid::MEMBER) {
            w.set_membership(room, key.key, record.membership)?;
        }
    } else {
        update_membership(w, room, room_record.current_state, current)?;
    }
    room_record.current_state = current;
    w.put_room(room, &room_record)?;
    Ok(Outcome {
        state: state_key.is_some(),
        new_room,
        rejection: None,
        already_stored: false,
    })
}

/// Steps 4 to 6 for one event, under its room version's rules.
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
    before: SnapshotNid,
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

/// The state after all of `events` together: empty for none, the state after the one event, or
/// the combination of the states after several, with conflicts settled by the resolver.
fn state_of_all<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    ctx: &Context<'_>,
    events: &[EventNid],
) -> Result<SnapshotNid, Failure> {
    let mut afters = Vec::with_capacity(events.len());
    for e in events {
        let s = w.state_after_snapshot(*e)?;
        if !afters.contains(&s) {
            afters.push(s);
        }
    }
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
