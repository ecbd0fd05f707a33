//! Authorizing an event: steps 4 to 6 of the spec's checks on receipt of a PDU, by the
//! authorization rules of `ruma-state-res` (never written again here).
//!
//! - Step 4: the rules given the event's own `auth_events` (the crate's state-independent check,
//!   then its state-dependent check over those events). Failing it rejects the event.
//! - Step 5: the rules given the state before the event. Failing it rejects the event.
//! - Step 6: the rules given the room's current state. Failing only this soft-fails the event.
//!
//! What the crate leaves to the caller is done here or before: every auth event is stored and in
//! the event's room (`input.rs` refuses the event otherwise), a rejected auth event is handed to
//! the crate marked rejected, and in room version 12 the create event, which `auth_events` no
//! longer lists, is found from the room ID. The crate itself checks for duplicate (type, state
//! key) pairs and for auth events the selection algorithm does not name.
//!
//! Most events are authorized against the same few events (the create event, the power levels,
//! the join rules, the sender's membership), so parsed events are kept for the whole batch.

use crate::error::Result;
use crate::matrix::event::{FirstError, Pdu, stored_pdu};
use crate::matrix::resolver::StateSource;
use crate::nid::TypeNid;
use crate::nid::{EventNid, NidMap, SnapshotNid, StateKey};
use crate::store::record::EventRecord;
use crate::store::record::{AuthStep, Rejection};
use ruma_common::room_version_rules::AuthorizationRules;
use ruma_common::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId,
};
use ruma_events::{StateEventType, TimelineEventType};
use ruma_state_res::{
    auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules,
};
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::sync::Arc;

/// Parsed events are dropped wholesale past this many, which bounds the cache at a few tens of
/// MiB.
const PARSED_HELD: usize = 20_000;

/// The authorization rules of a room version, or why there are none.
pub(crate) fn rules_for(version: &str) -> std::result::Result<AuthorizationRules, String> {
    RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .map(|r| r.authorization)
        .ok_or_else(|| format!("room version {version:?} is not one the authorization rules know"))
}

/// Runs the checks, keeping parsed events between calls. Forget everything with
/// [`rolled_back`](Self::rolled_back) when the writes it read are undone.
#[derive(Debug, Default)]
pub(crate) struct Authorizer {
    parsed: NidMap<EventNid, Arc<Pdu>>,
    /// Lookups in the last state asked about: consecutive events mostly share their state
    /// before (the messages after a state event), and its create event and power levels.
    looked_up: (Option<SnapshotNid>, NidMap<StateKey, Option<EventNid>>),
    /// The room versions of rooms without a timeline yet, by create event: every outlier of a
    /// join asks.
    pub(crate) versions: NidMap<EventNid, String>,
}

/// The event being received, and where to judge it from.
pub(crate) struct Incoming<'a> {
    /// The event, parsed.
    pub(crate) pdu: &'a Pdu,
    /// The NIDs of its `auth_events`, in their order.
    pub(crate) auth_nids: &'a [EventNid],
    /// The room version's rules.
    pub(crate) rules: &'a AuthorizationRules,
    /// The state before the event; `None` for an outlier, checked against its auth events only.
    pub(crate) before: Option<SnapshotNid>,
    /// The room's current state, when the event is neither a create event, an outlier, nor
    /// backfilled: only a new event can soft-fail.
    pub(crate) current: Option<SnapshotNid>,
}

impl Authorizer {
    /// The NIDs of rolled-back rows are handed out again: parsed events keyed by them are void.
    pub(crate) fn rolled_back(&mut self) {
        self.parsed.clear();
        self.looked_up.1.clear();
        self.versions.clear();
    }

    /// `None` when the event passes every check; otherwise the first step it fails and the
    /// rule's words.
    pub(crate) fn authorize(
        &mut self,
        source: &mut dyn StateSource,
        incoming: &Incoming<'_>,
    ) -> Result<Option<Rejection>> {
        if self.parsed.len() > PARSED_HELD {
            self.parsed.clear();
        }
        if self.looked_up.0 != incoming.before || self.looked_up.1.len() > PARSED_HELD {
            self.looked_up = (incoming.before, NidMap::default());
        }
        let events = Events {
            room_id: incoming.pdu.room_id.clone(),
            looked_up: RefCell::new(&mut self.looked_up.1),
            known: incoming
                .pdu
                .auth_events
                .iter()
                .zip(incoming.auth_nids)
                .map(|(id, nid)| (id.as_str(), *nid))
                .collect(),
            source: RefCell::new(source),
            parsed: RefCell::new(&mut self.parsed),
            error: FirstError::default(),
        };
        let verdict = events.judge(incoming);
        events.take_error()?;
        Ok(verdict)
    }
}

/// Stored events as the crate's callbacks read them. The callbacks cannot fail, so the first
/// store error is kept and returned afterwards.
struct Events<'a> {
    /// The incoming event's room, which every event the rules fetch belongs to.
    room_id: Option<OwnedRoomId>,
    /// Lookups in the incoming event's state before.
    looked_up: RefCell<&'a mut NidMap<StateKey, Option<EventNid>>>,
    /// The incoming event's auth events, already interned: found without a B-tree lookup.
    known: Vec<(&'a str, EventNid)>,
    source: RefCell<&'a mut dyn StateSource>,
    parsed: RefCell<&'a mut NidMap<EventNid, Arc<Pdu>>>,
    error: FirstError,
}

/// Auth events by (type, state key), with their NIDs.
type AuthMap = Vec<(StateEventType, String, EventNid, Arc<Pdu>)>;

fn rejected(step: AuthStep, rule: String) -> Option<Rejection> {
    Some(Rejection {
        soft_failed: step == AuthStep::CurrentState,
        step,
        rule,
    })
}

impl Events<'_> {
    fn judge(&self, incoming: &Incoming<'_>) -> Option<Rejection> {
        let (pdu, rules) = (incoming.pdu, incoming.rules);
        let fetch = |id: &EventId| self.by_id(id).map(|(_, e)| e);
        if let Err(rule) = check_state_independent_auth_rules(rules, pdu, fetch) {
            return rejected(AuthStep::AuthEvents, rule);
        }
        let auth = self.auth_map(pdu, rules);
        let from_auth = |ty: &StateEventType, key: &str| {
            auth.iter()
                .find(|(t, k, _, _)| t == ty && k == key)
                .map(|(_, _, _, e)| Arc::clone(e))
        };
        if let Err(rule) = check_state_dependent_auth_rules(rules, pdu, from_auth) {
            return rejected(AuthStep::AuthEvents, rule);
        }
        let before = incoming.before?;
        // The rules read only the keys the auth-events selection names: where the state before
        // holds the auth events themselves, step 5 would read what step 4 read.
        if !self.state_holds_auth_events(pdu, rules, &auth, before) {
            let from_before = |ty: &StateEventType, key: &str| self.in_state(before, ty, key);
            if let Err(rule) = check_state_dependent_auth_rules(rules, pdu, from_before) {
                return rejected(AuthStep::StateBefore, rule);
            }
        }
        // When the event extends the current state, step 6 asks what step 5 asked.
        let current = incoming.current.filter(|c| *c != before)?;
        let from_current = |ty: &StateEventType, key: &str| self.in_state(current, ty, key);
        if let Err(rule) = check_state_dependent_auth_rules(rules, pdu, from_current) {
            return rejected(AuthStep::CurrentState, rule);
        }
        None
    }

    /// Whether, for every key the selection names (and the create event), the state holds
    /// exactly the event the auth map holds.
    fn state_holds_auth_events(
        &self,
        pdu: &Pdu,
        rules: &AuthorizationRules,
        auth: &AuthMap,
        state: SnapshotNid,
    ) -> bool {
        let Ok(mut keys) = auth_types_for_event(
            &pdu.event_type,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            rules,
        ) else {
            return false;
        };
        keys.push((StateEventType::RoomCreate, String::new()));
        let given = keys.iter().map(|(ty, key)| {
            auth.iter()
                .find(|(t, k, _, _)| t == ty && k == key)
                .map(|(_, _, nid, _)| *nid)
        });
        let held = self.keep(self.nids_in_state(state, &keys).map(Some));
        held.is_some_and(|held| given.eq(held))
    }

    /// The events a state holds at each of `keys`, its blocks loaded once.
    fn nids_in_state(
        &self,
        state: SnapshotNid,
        keys: &[(StateEventType, String)],
    ) -> Result<Vec<Option<EventNid>>> {
        let mut source = self.source.borrow_mut();
        let mut nids = Vec::with_capacity(keys.len());
        for (ty, key) in keys {
            let ty = source.type_nid(&ty.to_string())?;
            let key = source.state_key_nid(key)?;
            nids.push(ty.zip(key).map(|(t, k)| StateKey::new(t, k)));
        }
        let mut looked_up = self.looked_up.borrow_mut();
        let missing: Vec<StateKey> = nids
            .iter()
            .flatten()
            .filter(|k| !looked_up.contains_key(k))
            .copied()
            .collect();
        if !missing.is_empty() {
            let found = source.lookup_keys(state, &missing)?;
            looked_up.extend(missing.into_iter().zip(found));
        }
        Ok(nids
            .iter()
            .map(|k| k.and_then(|k| looked_up.get(&k).copied().flatten()))
            .collect())
    }

    /// The event's auth events by (type, state key), and in room version 12 the create event
    /// its room ID names. Events the store lacks are left out (the state-independent check has
    /// already refused them).
    fn auth_map(&self, pdu: &Pdu, rules: &AuthorizationRules) -> AuthMap {
        let mut ids: Vec<OwnedEventId> = pdu.auth_events.clone();
        if rules.room_create_event_id_as_room_id
            && pdu.event_type != TimelineEventType::RoomCreate
            && let Some(create) = pdu
                .room_id
                .as_ref()
                .and_then(|r| EventId::parse(format!("${}", r.strip_sigil())).ok())
        {
            ids.push(create);
        }
        ids.iter()
            .filter_map(|id| self.by_id(id))
            .filter_map(|(nid, e)| {
                let key = e.state_key.clone()?;
                Some((StateEventType::from(e.event_type.to_string()), key, nid, e))
            })
            .collect()
    }

    fn keep<T>(&self, result: Result<Option<T>>) -> Option<T> {
        self.error.keep(result).flatten()
    }

    fn take_error(&self) -> Result<()> {
        self.error.take()
    }

    fn by_id(&self, id: &EventId) -> Option<(EventNid, Arc<Pdu>)> {
        let nid = match self.known.iter().find(|(k, _)| *k == id.as_str()) {
            Some((_, nid)) => *nid,
            None => self.keep(self.source.borrow_mut().event_nid(id.as_str()))?,
        };
        Some((nid, self.keep(self.by_nid(nid))?))
    }

    fn in_state(&self, state: SnapshotNid, ty: &StateEventType, key: &str) -> Option<Arc<Pdu>> {
        let nid = self.keep(self.nid_in_state(state, ty, key))?;
        self.keep(self.by_nid(nid))
    }

    fn nid_in_state(
        &self,
        state: SnapshotNid,
        ty: &StateEventType,
        key: &str,
    ) -> Result<Option<EventNid>> {
        let mut source = self.source.borrow_mut();
        let Some(ty) = source.type_nid(&ty.to_string())? else {
            return Ok(None);
        };
        let Some(key) = source.state_key_nid(key)? else {
            return Ok(None);
        };
        source.lookup(state, StateKey::new(ty, key))
    }

    /// A membership event as the rules read one from state or from `auth_events`: its ID, room,
    /// type, state key and `membership`, taken from our record and interning tables rather than
    /// from its JSON. The rules read nothing else of a membership event they did not receive
    /// (its `sender` is read only for the event being authorized; here it is the member).
    fn member_from_record(
        &self,
        source: &mut dyn StateSource,
        nid: EventNid,
        record: &EventRecord,
    ) -> Result<Option<Pdu>> {
        let (TypeNid::MEMBER, Some(key), Some(membership)) =
            (record.event_type, record.state_key, record.membership)
        else {
            return Ok(None);
        };
        let user = source.state_key(key)?;
        let Ok(sender) = OwnedUserId::try_from(user.as_str()) else {
            return Ok(None);
        };
        let id = match self.known.iter().find(|(_, n)| *n == nid) {
            Some((id, _)) => (*id).to_owned(),
            None => source.event_id(nid)?,
        };
        let Ok(event_id) = OwnedEventId::try_from(id) else {
            return Ok(None);
        };
        let content = format!("{{\"membership\":\"{}\"}}", membership.as_str());
        let Ok(content) = RawValue::from_string(content) else {
            return Ok(None);
        };
        Ok(Some(Pdu {
            event_id,
            room_id: self.room_id.clone(),
            sender,
            origin_server_ts: MilliSecondsSinceUnixEpoch(0u32.into()),
            event_type: TimelineEventType::RoomMember,
            content,
            state_key: Some(user),
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            redacts: None,
            rejected: record.rejected,
        }))
    }

    /// A stored event, parsed once per batch, marked rejected as its record says; `None` for an
    /// event the store lacks.
    fn by_nid(&self, nid: EventNid) -> Result<Option<Arc<Pdu>>> {
        if let Some(pdu) = self.parsed.borrow().get(&nid) {
            return Ok(Some(Arc::clone(pdu)));
        }
        let mut source = self.source.borrow_mut();
        let Some(record) = source.event(nid)? else {
            return Ok(None);
        };
        if let Some(member) = self.member_from_record(&mut **source, nid, &record)? {
            let pdu = Arc::new(member);
            self.parsed.borrow_mut().insert(nid, Arc::clone(&pdu));
            return Ok(Some(pdu));
        }
        let Some(json) = source.event_json(nid)? else {
            return Ok(None);
        };
        let id = || Ok(EventId::parse(source.event_id(nid)?).ok());
        let Some(pdu) = stored_pdu(&json, record.rejected, id)? else {
            return Ok(None);
        };
        let pdu = Arc::new(pdu);
        self.parsed.borrow_mut().insert(nid, Arc::clone(&pdu));
        Ok(Some(pdu))
    }
}
