//! Ingest against an independent reference model: generated workloads in small batches, every
//! kind of bad line in both modes, late failures, gzip input, and the per-room indexes.

mod common;

use common::{NamedKey, NamedState, StringNames};
use roomstate::ingest::MatrixResolver;
use roomstate::ingest::{
    BadLine, IngestOptions, IngestReport, Ingester, MAX_EVENT_BYTES, OnBadLine, Problem, Refuse,
    StateResolver, TrivialMerge, ingest, open_input,
};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{Error, Membership, Plan, StateMap, Store, StoreRead, WritePolicy};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write as _;
use std::rc::Rc;

// ---------------------------------------------------------------------------------------------
// The reference model: states as plain maps of strings, one per event, built from the JSON
// lines alone by the documented rules.

/// Which resolver the reference imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    /// Every disagreement is refused.
    Refuse,
    /// A conflicted key is settled when one candidate's history for the key holds every other
    /// candidate; a state lacking the key contests nothing.
    Trivial,
}

/// Why the reference refuses a line (only what generated and hand-written histories need).
#[derive(Clone, Debug, PartialEq, Eq)]
enum RefProblem {
    Duplicate,
    NoPrevs,
    RoomExists,
    UnknownPrev(String),
    OtherRoom(String),
    /// The conflicted keys, as a set.
    Conflict(BTreeSet<(String, String)>),
    /// Anything else the store reports, printed.
    Other(String),
}

impl From<&Problem> for RefProblem {
    fn from(p: &Problem) -> Self {
        match p {
            Problem::DuplicateEvent => RefProblem::Duplicate,
            Problem::NoPrevEvents => RefProblem::NoPrevs,
            Problem::RoomExists => RefProblem::RoomExists,
            Problem::UnknownPrevEvent(id) => RefProblem::UnknownPrev(id.clone()),
            Problem::PrevEventInOtherRoom(id) => RefProblem::OtherRoom(id.clone()),
            Problem::NeedsStateResolution(keys) => {
                RefProblem::Conflict(keys.iter().cloned().collect())
            }
            other => RefProblem::Other(other.to_string()),
        }
    }
}

type State = Rc<NamedState>;

struct RefEvent {
    room: Rc<str>,
    before: State,
    after: State,
    /// The (type, state key) a state event sets.
    sets: Option<NamedKey>,
    /// `content.membership` of a member event.
    membership: Option<String>,
}

struct RefRoom {
    version: String,
    extremities: Vec<Rc<str>>,
    current: State,
    /// Stored events, in order.
    events: Vec<Rc<str>>,
}

struct ReferenceModel {
    resolution: Resolution,
    events: HashMap<Rc<str>, RefEvent>,
    rooms: BTreeMap<Rc<str>, RefRoom>,
    /// Stored events, in order.
    accepted: Vec<Rc<str>>,
    /// Refused lines: line number to (event ID, why).
    refused: BTreeMap<u64, (String, RefProblem)>,
}

impl ReferenceModel {
    fn run(resolution: Resolution, lines: &[String]) -> Self {
        let mut model = ReferenceModel {
            resolution,
            events: HashMap::new(),
            rooms: BTreeMap::new(),
            accepted: Vec::new(),
            refused: BTreeMap::new(),
        };
        for (i, text) in lines.iter().enumerate() {
            let v: Value = serde_json::from_str(text).expect("reference input is JSON");
            let id = v["event_id"].as_str().expect("event_id").to_owned();
            if let Err(p) = model.apply(&v) {
                model.refused.insert(i as u64 + 1, (id, p));
            }
        }
        model
    }

    fn apply(&mut self, v: &Value) -> Result<(), RefProblem> {
        let text = |field: &str| -> Rc<str> { v[field].as_str().expect(field).into() };
        let id = text("event_id");
        let room = text("room_id");
        let ty = text("type");
        let state_key: Option<Rc<str>> = v.get("state_key").map(|k| k.as_str().unwrap().into());
        let mut prevs: Vec<Rc<str>> = Vec::new();
        for p in v["prev_events"].as_array().expect("prev_events") {
            let p: Rc<str> = match p {
                Value::Array(pair) => pair[0].as_str().unwrap().into(),
                other => other.as_str().unwrap().into(),
            };
            prevs.push(p);
        }
        if self.events.contains_key(&id) {
            return Err(RefProblem::Duplicate);
        }
        if prevs.is_empty() {
            let is_create = &*ty == "m.room.create" && state_key.as_deref() == Some("");
            if !is_create {
                return Err(RefProblem::NoPrevs);
            }
            if self.rooms.contains_key(&room) {
                return Err(RefProblem::RoomExists);
            }
        }
        for p in &prevs {
            match self.events.get(p) {
                None => return Err(RefProblem::UnknownPrev(p.to_string())),
                Some(e) if e.room != room => return Err(RefProblem::OtherRoom(p.to_string())),
                Some(_) => {}
            }
        }
        prevs.dedup();
        let afters: Vec<State> = prevs.iter().map(|p| self.events[p].after.clone()).collect();
        let before = self.combine(&afters)?;
        let sets = state_key.map(|k| (ty.clone(), k));
        let after = match &sets {
            Some(key) => {
                let mut state = (*before).clone();
                state.insert(key.clone(), id.clone());
                Rc::new(state)
            }
            None => before.clone(),
        };
        let membership = match &*ty {
            "m.room.member" => v["content"]["membership"].as_str().map(str::to_owned),
            _ => None,
        };
        // The event goes in first: the resolver may follow histories through it.
        self.events.insert(
            id.clone(),
            RefEvent {
                room: room.clone(),
                before,
                after,
                sets,
                membership,
            },
        );
        let mut extremities = match self.rooms.get(&room) {
            Some(r) => r.extremities.clone(),
            None => Vec::new(),
        };
        extremities.retain(|e| !prevs.contains(e));
        extremities.push(id.clone());
        let afters: Vec<State> = extremities
            .iter()
            .map(|e| self.events[e].after.clone())
            .collect();
        let current = match self.combine(&afters) {
            Ok(state) => state,
            Err(p) => {
                self.events.remove(&id);
                return Err(p);
            }
        };
        let version = v["content"]["room_version"]
            .as_str()
            .unwrap_or("1")
            .to_owned();
        let entry = self.rooms.entry(room).or_insert_with(|| RefRoom {
            version,
            extremities: Vec::new(),
            current: Rc::default(),
            events: Vec::new(),
        });
        entry.extremities = extremities;
        entry.current = current;
        entry.events.push(id.clone());
        self.accepted.push(id);
        Ok(())
    }

    /// Several states combined: their agreement, with conflicts settled by the resolution
    /// rule, or refused naming every conflicted key.
    fn combine(&self, states: &[State]) -> Result<State, RefProblem> {
        let mut distinct: Vec<&State> = Vec::new();
        for s in states {
            if !distinct.iter().any(|d| **d == *s) {
                distinct.push(s);
            }
        }
        match distinct.as_slice() {
            [] => return Ok(Rc::default()),
            [one] => return Ok((*one).clone()),
            _ => {}
        }
        let keys: BTreeSet<&NamedKey> = distinct.iter().flat_map(|s| s.keys()).collect();
        let mut merged = NamedState::new();
        let mut conflicts: Vec<(&NamedKey, BTreeSet<Rc<str>>)> = Vec::new();
        for key in keys {
            let values: Vec<Option<&Rc<str>>> = distinct.iter().map(|s| s.get(key)).collect();
            if values.iter().all(|v| *v == values[0]) {
                merged.insert(key.clone(), values[0].expect("a key of some state").clone());
            } else {
                conflicts.push((key, values.into_iter().flatten().cloned().collect()));
            }
        }
        let refused = || {
            RefProblem::Conflict(
                conflicts
                    .iter()
                    .map(|(k, _)| (k.0.to_string(), k.1.to_string()))
                    .collect(),
            )
        };
        if conflicts.is_empty() {
            return Ok(Rc::new(merged));
        }
        if self.resolution == Resolution::Refuse {
            return Err(refused());
        }
        for (key, candidates) in &conflicts {
            let winner = candidates.iter().find(|w| {
                let history = self.history(w, key);
                candidates.iter().all(|c| c == *w || history.contains(c))
            });
            match winner {
                Some(w) => {
                    merged.insert((*key).clone(), w.clone());
                }
                None => return Err(refused()),
            }
        }
        Ok(Rc::new(merged))
    }

    /// The events that held `key` before `event`, following the key back through each one's
    /// state before it.
    fn history(&self, event: &Rc<str>, key: &NamedKey) -> HashSet<Rc<str>> {
        let mut out = HashSet::new();
        let mut current = event.clone();
        while let Some(previous) = self.events[&current].before.get(key) {
            out.insert(previous.clone());
            current = previous.clone();
        }
        out
    }

    /// A user's membership in a state, as the store parses it.
    fn membership_in(&self, state: &NamedState, user: &str) -> Option<Membership> {
        let event = state.get(&("m.room.member".into(), user.into()))?;
        self.events[event].membership.as_deref()?.parse().ok()
    }

    /// The membership of every user a state holds a member event for.
    fn members(&self, state: &NamedState) -> BTreeMap<String, Membership> {
        state
            .iter()
            .filter(|((ty, _), _)| &**ty == "m.room.member")
            .filter_map(|((_, user), event)| {
                let m = self.events[event].membership.as_deref()?.parse().ok()?;
                Some((user.to_string(), m))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A policy unlike the default one: merged states stored as deltas, and few blocks per
/// snapshot, so rewrites happen often.
#[derive(Debug)]
struct DeltaMerges;

impl WritePolicy for DeltaMerges {
    fn name(&self) -> &str {
        "delta-merges-3"
    }
    fn plan(&self, chain: &[roomstate::Layer], _delta_len: usize) -> Plan {
        if chain.iter().map(|l| l.blocks.len()).sum::<usize>() < 3 {
            Plan::append()
        } else {
            Plan::rewrite()
        }
    }
    fn merge_as_delta(&self) -> bool {
        true
    }
}

fn generated(workload: Workload, seed: u64, members: u64, states: u64, msgs: u32) -> Vec<String> {
    let config = GenConfig {
        workload,
        seed,
        members,
        state_events: states,
        messages_per_state: msgs,
        room_version: Default::default(),
    };
    Generator::new(config).map(|e| e.to_json_line()).collect()
}

fn joined(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// The hand-written histories here carry no auth events: they exercise the store's mechanics
/// (batches, merges, bad lines) as a trusted import. `tests/auth.rs` covers authorization.
fn options(batch_size: usize, on_bad_line: OnBadLine) -> IngestOptions {
    IngestOptions {
        batch_size,
        on_bad_line,
        max_listed_bad_lines: usize::MAX,
        trust: true,
        ..IngestOptions::default()
    }
}

/// One event line in the federation shape.
fn line(
    id: &str,
    room: &str,
    ty: &str,
    sk: Option<&str>,
    prevs: &[&str],
    content: Value,
) -> String {
    let mut v = json!({
        "event_id": id,
        "room_id": room,
        "type": ty,
        "sender": "@a:x",
        "prev_events": prevs,
        "auth_events": [],
        "depth": 1,
        "origin_server_ts": 1_700_000_000_000u64,
        "content": content,
    });
    if let Some(sk) = sk {
        v["state_key"] = json!(sk);
    }
    v.to_string()
}

fn create(id: &str, room: &str) -> String {
    line(
        id,
        room,
        "m.room.create",
        Some(""),
        &[],
        json!({"creator": "@a:x", "room_version": "10"}),
    )
}

fn member(id: &str, room: &str, user: &str, membership: &str, prevs: &[&str]) -> String {
    line(
        id,
        room,
        "m.room.member",
        Some(user),
        prevs,
        json!({ "membership": membership }),
    )
}

fn topic(id: &str, room: &str, prevs: &[&str]) -> String {
    line(
        id,
        room,
        "m.room.topic",
        Some(""),
        prevs,
        json!({"topic": id}),
    )
}

fn message(id: &str, room: &str, prevs: &[&str]) -> String {
    line(
        id,
        room,
        "m.room.message",
        None,
        prevs,
        json!({"body": "hi"}),
    )
}

/// Rows of every table, by name: what a failed batch must leave untouched.
fn rows(store: &Store) -> Vec<(&'static str, u64)> {
    let stats = store.read().unwrap().stats().unwrap();
    let mut out: Vec<(&'static str, u64)> = stats.tables.iter().map(|t| (t.name, t.rows)).collect();
    out.push(("<events>", stats.events));
    out.push(("<stored_entries>", stats.stored_entries));
    out.push(("<snapshot_entries>", stats.snapshot_entries));
    out
}

fn stored(store: &Store, id: &str) -> bool {
    let rx = store.read().unwrap();
    match rx.event_nid(id).unwrap() {
        Some(nid) => rx.event(nid).unwrap().is_some(),
        None => false,
    }
}

fn bad_line(result: roomstate::Result<IngestReport>) -> BadLine {
    match result {
        Err(Error::BadLine(bad)) => *bad,
        Err(other) => panic!("expected Error::BadLine, got error {other:?}"),
        Ok(report) => panic!("expected Error::BadLine, but ingest succeeded: {report:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Generated histories against the reference model

/// Ingests `lines` and checks every event, the skipped lines, each room's record, the
/// membership index, `rooms_of_user`, `membership_at` and the stored JSON against the
/// reference. Returns the reference and the report.
fn check_against_reference(
    what: &str,
    lines: &[String],
    store: Store,
    resolution: Resolution,
) -> (ReferenceModel, IngestReport) {
    let reference = ReferenceModel::run(resolution, lines);
    let input = joined(lines);
    let opts = options(97, OnBadLine::Skip);
    let report = match resolution {
        Resolution::Refuse => ingest(&store, input.as_bytes(), opts, Refuse),
        Resolution::Trivial => ingest(&store, input.as_bytes(), opts, TrivialMerge),
    }
    .unwrap_or_else(|e| panic!("{what}: ingest failed: {e}"));

    // Skipped lines: the same lines, for the same reasons.
    let store_refused: BTreeMap<u64, (Option<String>, RefProblem)> = report
        .listed_bad_lines
        .iter()
        .map(|b| (b.line, (b.event_id.clone(), RefProblem::from(&b.problem))))
        .collect();
    let ref_refused: BTreeMap<u64, (Option<String>, RefProblem)> = reference
        .refused
        .iter()
        .map(|(line, (id, p))| (*line, (Some(id.clone()), p.clone())))
        .collect();
    if store_refused != ref_refused {
        let mut lines_differing: Vec<String> = store_refused
            .keys()
            .chain(ref_refused.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|l| store_refused.get(l) != ref_refused.get(l))
            .take(10)
            .map(|l| {
                format!(
                    "  line {l}: store {:?}, reference {:?}",
                    store_refused.get(l),
                    ref_refused.get(l)
                )
            })
            .collect();
        lines_differing.insert(
            0,
            format!(
                "{what}: skipped lines differ from the reference ({} skipped by the store, {} by the reference); first differences:",
                store_refused.len(),
                ref_refused.len()
            ),
        );
        panic!("{}", lines_differing.join("\n"));
    }
    assert_eq!(report.bad_lines as usize, reference.refused.len(), "{what}");
    assert_eq!(report.events as usize, reference.accepted.len(), "{what}");
    assert_eq!(report.lines as usize, lines.len(), "{what}");
    assert_eq!(
        report.batches as usize,
        lines.len().div_ceil(97),
        "{what}: batch count"
    );
    let state_events = reference
        .accepted
        .iter()
        .filter(|id| reference.events[*id].sets.is_some())
        .count();
    assert_eq!(report.state_events as usize, state_events, "{what}");
    assert_eq!(report.rooms as usize, reference.rooms.len(), "{what}");

    let rx = store.read().unwrap();
    let check = rx.check().unwrap();
    assert!(check.is_clean(), "{what}: {:?}", check.problems);
    let mut names = StringNames::default();
    let stats = rx.stats().unwrap();
    assert_eq!(stats.events as usize, reference.accepted.len(), "{what}");

    // Every stored event: its state before, its JSON, and memberships before and after it.
    let mut line_of = BTreeMap::new();
    for (i, l) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap();
        line_of.insert(v["event_id"].as_str().unwrap().to_owned(), i);
    }
    // Events that share a stored snapshot and a reference state are compared once.
    let mut verified: HashSet<(roomstate::SnapshotNid, *const NamedState)> = HashSet::new();
    for id in &reference.accepted {
        let nid = rx
            .event_nid(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{what}: event {id} not interned"));
        let record = rx.event(nid).unwrap().expect("an event record");
        let expected = &reference.events[id].before;
        if verified.insert((record.state_before, Rc::as_ptr(expected))) {
            let got = names.state(&rx, &rx.flatten(record.state_before).unwrap());
            if got != **expected {
                panic!(
                    "{what}: state before {id} differs from the reference:\n{}",
                    common::describe_difference(expected, &got)
                );
            }
        }
        // The state after: the state before plus the event's own entry.
        let after = rx.state_after(nid).unwrap();
        let expected_after = &reference.events[id].after;
        assert_eq!(
            after.len(),
            expected_after.len(),
            "{what}: state after {id}"
        );
        if let Some(key) = &reference.events[id].sets {
            let own = rx.state_key_of(&key.0, &key.1).unwrap().unwrap();
            assert_eq!(record.sets(), Some(own), "{what}: key set by {id}");
            assert_eq!(after.get(own), Some(nid), "{what}: state after {id}");
        } else {
            assert_eq!(record.sets(), None, "{what}: {id} is no state event");
        }
        assert_eq!(
            rx.event_json(nid).unwrap().as_deref(),
            Some(lines[line_of[&**id]].as_str()),
            "{what}: JSON of {id}"
        );
        if let Some((ty, user)) = &reference.events[id].sets
            && &**ty == "m.room.member"
        {
            let user_nid = rx.state_key_nid(user).unwrap().unwrap();
            let before = reference.membership_in(&reference.events[id].before, user);
            let after = reference.membership_in(&reference.events[id].after, user);
            assert_eq!(
                rx.membership_at(nid, user_nid, false).unwrap(),
                before,
                "{what}: membership of {user} before {id}"
            );
            assert_eq!(
                rx.membership_at(nid, user_nid, true).unwrap(),
                after,
                "{what}: membership of {user} after {id}"
            );
        }
    }
    // Refused events left no record behind.
    for (line, (id, _)) in &reference.refused {
        if let Some(nid) = rx.event_nid(id).unwrap() {
            assert!(
                rx.event(nid).unwrap().is_none(),
                "{what}: refused event {id} (line {line}) has a record"
            );
        }
    }

    // Each room: record, current state, extremities, events in order, membership index.
    let mut joined_rooms: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (room_id, room) in &reference.rooms {
        let room_nid = rx.room_nid(room_id).unwrap().unwrap();
        let record = rx.room(room_nid).unwrap().unwrap();
        assert_eq!(record.version, room.version, "{what}: version of {room_id}");
        assert_eq!(
            record.event_count as usize,
            room.events.len(),
            "{what}: event count of {room_id}"
        );
        let current = names.state(&rx, &rx.flatten(record.current_state).unwrap());
        if current != *room.current {
            panic!(
                "{what}: current state of {room_id} differs from the reference:\n{}",
                common::describe_difference(&room.current, &current)
            );
        }
        let latest: BTreeSet<String> = record
            .latest_events
            .iter()
            .map(|e| rx.event_id(*e).unwrap())
            .collect();
        let expected_latest: BTreeSet<String> =
            room.extremities.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            latest, expected_latest,
            "{what}: forward extremities of {room_id}"
        );
        let in_order: Vec<String> = rx
            .room_events(room_nid)
            .unwrap()
            .into_iter()
            .map(|e| rx.event_id(e).unwrap())
            .collect();
        let expected_order: Vec<String> = room.events.iter().map(|e| e.to_string()).collect();
        assert_eq!(in_order, expected_order, "{what}: events of {room_id}");

        let members: BTreeMap<String, Membership> = rx
            .members(room_nid, None)
            .unwrap()
            .into_iter()
            .map(|(u, m)| (rx.state_key(u).unwrap(), m))
            .collect();
        let expected_members = reference.members(&room.current);
        assert_eq!(
            members, expected_members,
            "{what}: membership index of {room_id}"
        );
        let joined_only: Vec<String> = rx
            .members(room_nid, Some(Membership::Join))
            .unwrap()
            .into_iter()
            .map(|(u, _)| rx.state_key(u).unwrap())
            .collect();
        let expected_joined: Vec<String> = expected_members
            .iter()
            .filter(|(_, m)| **m == Membership::Join)
            .map(|(u, _)| u.clone())
            .collect();
        let mut sorted = joined_only.clone();
        sorted.sort();
        assert_eq!(
            sorted, expected_joined,
            "{what}: joined members of {room_id}"
        );
        for (user, m) in expected_members {
            if m == Membership::Join {
                joined_rooms
                    .entry(user)
                    .or_default()
                    .insert(room_id.to_string());
            } else {
                joined_rooms.entry(user).or_default();
            }
        }
    }
    for (user, expected) in &joined_rooms {
        let user_nid = rx.state_key_nid(user).unwrap().unwrap();
        let rooms: BTreeSet<String> = rx
            .rooms_of_user(user_nid)
            .unwrap()
            .into_iter()
            .map(|r| rx.room_id(r).unwrap())
            .collect();
        assert_eq!(&rooms, expected, "{what}: rooms of {user}");
    }
    (reference, report)
}

fn stores(seed: u64) -> Store {
    // Cycle through every shipped policy and one that merges as deltas and rewrites often.
    let names = roomstate::policy::POLICY_NAMES;
    match names.get(seed as usize % (names.len() + 1)) {
        Some(name) => Store::builder()
            .boxed_policy(roomstate::policy::by_name(name).unwrap())
            .in_memory()
            .unwrap(),
        None => Store::builder().policy(DeltaMerges).in_memory().unwrap(),
    }
}

#[test]
fn hq_matches_reference_model() {
    let mut forks = 0;
    for seed in 1..=4 {
        let lines = generated(Workload::Hq, seed, 300, 800, 2);
        forks += lines
            .iter()
            .filter(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["prev_events"].as_array().unwrap().len() > 1
            })
            .count();
        let what = format!("hq seed {seed}");
        let (reference, report) =
            check_against_reference(&what, &lines, stores(seed), Resolution::Trivial);
        assert_eq!(report.bad_lines, 0, "{what}: hq has no genuine conflicts");
        assert!(reference.accepted.len() > 2_000, "{what}");
    }
    assert!(forks > 0, "no hq seed forked; the merge path went untested");
}

#[test]
fn many_matches_reference_model() {
    for seed in 1..=3 {
        let lines = generated(Workload::Many, seed, 30, 20, 1);
        let what = format!("many seed {seed}");
        let (reference, report) =
            check_against_reference(&what, &lines, stores(seed), Resolution::Trivial);
        assert_eq!(report.bad_lines, 0, "{what}");
        assert_eq!(reference.rooms.len(), 30, "{what}");
        // Users are drawn from a shared pool, so some are in several rooms.
        let mut rooms_per_user: BTreeMap<String, usize> = BTreeMap::new();
        for room in reference.rooms.values() {
            for (user, m) in reference.members(&room.current) {
                if m == Membership::Join {
                    *rooms_per_user.entry(user).or_default() += 1;
                }
            }
        }
        assert!(
            rooms_per_user.values().any(|n| *n > 1),
            "{what}: no user joined two rooms; rooms_of_user went untested"
        );
    }
}

#[test]
fn forky_matches_reference_model_and_refuses_genuine_conflicts() {
    let mut refused_conflicts = 0;
    for seed in 1..=4 {
        let lines = generated(Workload::Forky, seed, 100, 600, 1);
        let what = format!("forky seed {seed}");
        let (reference, report) =
            check_against_reference(&what, &lines, stores(seed), Resolution::Trivial);
        let conflicts = report
            .listed_bad_lines
            .iter()
            .filter(|b| matches!(b.problem, Problem::NeedsStateResolution(_)))
            .count();
        refused_conflicts += conflicts;
        // The store and the reference refused the same lines (checked above). Each refused
        // conflict is genuine: the refused event changes a key that a concurrent branch also
        // changed, so its own key is among the conflicted ones.
        assert!(conflicts >= 1, "{what}: no genuine conflict was refused");
        for bad in &report.listed_bad_lines {
            let Problem::NeedsStateResolution(keys) = &bad.problem else {
                continue;
            };
            let v: Value = serde_json::from_str(&lines[bad.line as usize - 1]).unwrap();
            let own = (
                v["type"].as_str().unwrap().to_owned(),
                v["state_key"]
                    .as_str()
                    .expect("a refused conflict is a state event")
                    .to_owned(),
            );
            assert!(
                keys.contains(&own),
                "{what}: {bad} does not name the event's own key {own:?}"
            );
        }
        // The first refused line is a conflict; after it, only events built on refused events
        // are refused, for their unknown prev event (or another conflict).
        let (first_line, (_, first)) = reference.refused.first_key_value().unwrap();
        assert!(
            matches!(first, RefProblem::Conflict(_)),
            "{what}: line {first_line} is refused first, for {first:?}"
        );
        for (line, (id, p)) in reference.refused.iter().skip(1) {
            assert!(
                matches!(p, RefProblem::UnknownPrev(_) | RefProblem::Conflict(_)),
                "{what}: line {line} ({id}) refused for {p:?}"
            );
        }
        assert!(
            reference.accepted.len() > 300,
            "{what}: the linear start and more are stored"
        );
        let wide = lines
            .iter()
            .filter(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["prev_events"].as_array().unwrap().len() >= 3
            })
            .count();
        assert!(wide > 0, "{what}: no merge of 3 or more prev events");
    }
    assert!(
        refused_conflicts > 0,
        "no genuine forky conflict was refused in any seed"
    );
}

#[test]
fn hq_with_refuse_refuses_what_the_reference_predicts() {
    let mut refused_conflicts = 0;
    for seed in 1..=4 {
        let lines = generated(Workload::Hq, seed, 300, 800, 2);
        let what = format!("hq refuse seed {seed}");
        let (_, report) = check_against_reference(&what, &lines, stores(seed), Resolution::Refuse);
        refused_conflicts += report
            .listed_bad_lines
            .iter()
            .filter(|b| matches!(b.problem, Problem::NeedsStateResolution(_)))
            .count();
    }
    assert!(
        refused_conflicts > 0,
        "no hq fork was refused under Refuse in any seed"
    );
}

#[test]
fn batch_size_does_not_change_the_result() {
    let lines = generated(Workload::Forky, 5, 60, 300, 1);
    let input = joined(&lines);
    let mut results = Vec::new();
    for batch_size in [1, 7, 10_000] {
        let store = Store::in_memory().unwrap();
        let report = ingest(
            &store,
            input.as_bytes(),
            options(batch_size, OnBadLine::Skip),
            TrivialMerge,
        )
        .unwrap();
        let rx = store.read().unwrap();
        let mut names = StringNames::default();
        let mut states = Vec::new();
        for l in &lines {
            let v: Value = serde_json::from_str(l).unwrap();
            let id = v["event_id"].as_str().unwrap();
            let state = rx
                .event_nid(id)
                .unwrap()
                .and_then(|n| rx.event(n).unwrap().map(|_| n))
                .map(|n| names.state(&rx, &rx.state_before(n).unwrap()));
            states.push(state);
        }
        let bad: Vec<u64> = report.listed_bad_lines.iter().map(|b| b.line).collect();
        results.push((batch_size, report.events, bad, states));
    }
    for r in &results[1..] {
        assert_eq!(r.1, results[0].1, "events stored, batch size {}", r.0);
        assert_eq!(r.2, results[0].2, "bad lines, batch size {}", r.0);
        assert!(r.3 == results[0].3, "states, batch size {}", r.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Bad input, stop mode: the error names the line, and the failed batch leaves no trace

/// Two rooms, committed as the first batch: `!r:x` (create `$c`) and `!o:x` (create `$oc`).
fn prefix() -> Vec<String> {
    vec![create("$c", "!r:x"), create("$oc", "!o:x")]
}

/// Ingests `prefix` then `batch` (whose last line is bad) with a batch size of
/// `prefix.len()`, in stop mode, and checks that the first batch stays and nothing of the
/// second is stored. Runs it twice: in one ingest call, and as a second call on a store that
/// already holds the prefix (comparing the same store before and after). Returns the error.
fn stop_case(prefix: &[String], batch: &[String], resolver: impl StateResolver + Copy) -> BadLine {
    assert!(batch.len() <= prefix.len(), "the batch must fit one batch");
    let batch_size = prefix.len();

    let only_prefix = Store::in_memory().unwrap();
    ingest(
        &only_prefix,
        joined(prefix).as_bytes(),
        options(batch_size, OnBadLine::Stop),
        resolver,
    )
    .expect("the prefix is good");
    let expected_rows = rows(&only_prefix);

    // One call: the first batch commits, the second fails.
    let store = Store::in_memory().unwrap();
    let all: Vec<String> = prefix.iter().chain(batch).cloned().collect();
    let first = bad_line(ingest(
        &store,
        joined(&all).as_bytes(),
        options(batch_size, OnBadLine::Stop),
        resolver,
    ));
    assert_eq!(
        rows(&store),
        expected_rows,
        "the store differs from one holding only the committed first batch"
    );
    for l in prefix {
        let v: Value = serde_json::from_str(l).unwrap();
        let id = v["event_id"].as_str().unwrap();
        assert!(stored(&store, id), "committed event {id} is gone");
    }

    // A second call on the same store: the store is unchanged.
    let before = rows(&store);
    let again = bad_line(ingest(
        &store,
        joined(batch).as_bytes(),
        options(10_000, OnBadLine::Stop),
        resolver,
    ));
    assert_eq!(rows(&store), before, "a failed batch changed the store");
    assert_eq!(again.problem, first.problem);
    assert_eq!(again.event_id, first.event_id);
    assert_eq!(again.line as usize, batch.len(), "line numbers start at 1");

    assert_eq!(
        first.line as usize,
        prefix.len() + batch.len(),
        "line number of {first}"
    );
    // The good lines of the failed batch were not stored.
    for l in &batch[..batch.len() - 1] {
        let v: Value = serde_json::from_str(l).unwrap();
        let id = v["event_id"].as_str().unwrap();
        assert!(!stored(&store, id), "{id} of the failed batch was stored");
    }
    first
}

fn good_join() -> String {
    member("$m", "!r:x", "@a:x", "join", &["$c"])
}

#[test]
fn stop_not_json() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), r#"{"event_id": "$x", "room_id": "#.to_owned()],
        Refuse,
    );
    assert!(matches!(bad.problem, Problem::NotJson(_)), "{bad}");
    assert_eq!(bad.event_id, None);
    let bad = stop_case(&prefix(), &[good_join(), "hello".to_owned()], Refuse);
    assert!(matches!(bad.problem, Problem::NotJson(_)), "{bad}");
}

#[test]
fn stop_not_an_event() {
    for text in [
        r#"[1, 2, 3]"#,
        r#"{"event_id": 7, "room_id": "!r:x", "type": "t", "prev_events": ["$c"]}"#,
        r#"{"event_id": "$x", "room_id": "!r:x", "type": "t", "prev_events": "$c"}"#,
        r#"{"event_id": "$x", "room_id": "!r:x", "type": "t", "state_key": 5, "prev_events": ["$c"]}"#,
        r#"{"event_id": "$x", "room_id": "!r:x", "type": "t", "prev_events": ["$c"], "content": "text"}"#,
    ] {
        let bad = stop_case(&prefix(), &[good_join(), text.to_owned()], Refuse);
        assert!(
            matches!(bad.problem, Problem::NotAnEvent(_)),
            "{text}: {bad}"
        );
    }
}

#[test]
fn stop_missing_fields() {
    let full = json!({
        "event_id": "$x", "room_id": "!r:x", "type": "m.room.message",
        "prev_events": ["$c"], "content": {}
    });
    for field in ["room_id", "type", "prev_events"] {
        let mut v = full.clone();
        v.as_object_mut().unwrap().remove(field);
        let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
        assert_eq!(bad.problem, Problem::MissingField(field), "{bad}");
        assert_eq!(bad.event_id.as_deref(), Some("$x"), "{field}");
    }
    // Without `event_id`, an event of a version 10 room is named by its reference hash...
    let mut v = full.clone();
    v.as_object_mut().unwrap().remove("event_id");
    let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
    let id = bad.event_id.clone().unwrap_or_default();
    assert!(id.starts_with('$') && id.len() == 44, "{bad}");
    // ...and without a type as well, it is no event at all.
    v.as_object_mut().unwrap().remove("type");
    let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
    assert_eq!(bad.problem, Problem::NotAPdu, "{bad}");
    assert_eq!(bad.event_id, None);
    // `null` is as good as absent.
    let mut v = full.clone();
    v["prev_events"] = Value::Null;
    let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
    assert_eq!(bad.problem, Problem::MissingField("prev_events"));
}

#[test]
fn stop_unknown_prev_event() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), message("$x", "!r:x", &["$m", "$nowhere"])],
        Refuse,
    );
    assert_eq!(
        bad.problem,
        Problem::UnknownPrevEvent("$nowhere".to_owned())
    );
    assert_eq!(bad.event_id.as_deref(), Some("$x"));
}

#[test]
fn stop_duplicate_of_committed_event() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), topic("$c", "!r:x", &["$c"])],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::DuplicateEvent);
    assert_eq!(bad.event_id.as_deref(), Some("$c"));
}

#[test]
fn stop_duplicate_within_batch() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), topic("$m", "!r:x", &["$c"])],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::DuplicateEvent);
    assert_eq!(bad.event_id.as_deref(), Some("$m"));
}

#[test]
fn stop_field_over_255_bytes() {
    let long = format!("${}", "e".repeat(255));
    assert_eq!(long.len(), 256);
    let base = json!({
        "event_id": "$x", "room_id": "!r:x", "type": "m.room.topic", "state_key": "",
        "sender": "@a:x", "prev_events": ["$c"], "auth_events": ["$c"], "content": {}
    });
    for field in [
        "event_id",
        "room_id",
        "type",
        "state_key",
        "sender",
        "prev_events",
        "auth_events",
    ] {
        let mut v = base.clone();
        v[field] = match field {
            "prev_events" | "auth_events" => json!(["$c", long]),
            _ => json!(long),
        };
        let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
        assert_eq!(
            bad.problem,
            Problem::BadField {
                field,
                reason: "longer than 255 bytes"
            },
            "{field}: {bad}"
        );
        let expected_id = if field == "event_id" { &long } else { "$x" };
        assert_eq!(bad.event_id.as_deref(), Some(expected_id), "{field}");
    }
}

#[test]
fn fields_of_exactly_255_bytes_are_accepted() {
    let id = format!("${}", "e".repeat(254));
    let key = "k".repeat(255);
    let ty = "t".repeat(255);
    let store = Store::in_memory().unwrap();
    let lines = vec![
        create("$c", "!r:x"),
        line(&id, "!r:x", &ty, Some(&key), &["$c"], json!({})),
    ];
    let report = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Stop),
        Refuse,
    )
    .unwrap();
    assert_eq!(report.events, 2);
    let rx = store.read().unwrap();
    let nid = rx.event_nid(&id).unwrap().unwrap();
    let after = StringNames::default().state(&rx, &rx.state_after(nid).unwrap());
    assert_eq!(
        after
            .get(&(ty.as_str().into(), key.as_str().into()))
            .map(|e| &**e),
        Some(id.as_str())
    );
}

#[test]
fn stop_empty_ids() {
    for (field, value) in [
        ("event_id", json!("")),
        ("room_id", json!("")),
        ("prev_events", json!([""])),
    ] {
        let mut v = json!({
            "event_id": "$x", "room_id": "!r:x", "type": "m.room.message",
            "prev_events": ["$c"], "content": {}
        });
        v[field] = value;
        let bad = stop_case(&prefix(), &[good_join(), v.to_string()], Refuse);
        assert_eq!(
            bad.problem,
            Problem::BadField {
                field,
                reason: "empty"
            },
            "{field}"
        );
    }
}

#[test]
fn stop_prev_event_in_other_room() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), message("$x", "!r:x", &["$m", "$oc"])],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::PrevEventInOtherRoom("$oc".to_owned()));
    assert_eq!(bad.event_id.as_deref(), Some("$x"));
    // A room nobody created, built on another room's event.
    let bad = stop_case(
        &prefix(),
        &[good_join(), message("$y", "!new:x", &["$c"])],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::PrevEventInOtherRoom("$c".to_owned()));
}

#[test]
fn stop_auth_event_in_other_room() {
    let mut bad_auth: Value = serde_json::from_str(&message("$x", "!r:x", &["$m"])).unwrap();
    bad_auth["auth_events"] = json!(["$c", "$oc"]);
    let bad = stop_case(&prefix(), &[good_join(), bad_auth.to_string()], Refuse);
    assert_eq!(bad.problem, Problem::AuthEventInOtherRoom("$oc".to_owned()));
    assert_eq!(bad.event_id.as_deref(), Some("$x"));
}

#[test]
fn stop_no_prev_events_but_not_create() {
    let bad = stop_case(
        &prefix(),
        &[good_join(), message("$x", "!r:x", &[])],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::NoPrevEvents);
    assert_eq!(bad.event_id.as_deref(), Some("$x"));
    // A create event needs the empty state key to be one.
    let not_create = line("$y", "!new:x", "m.room.create", None, &[], json!({}));
    let bad = stop_case(&prefix(), &[good_join(), not_create], Refuse);
    assert_eq!(bad.problem, Problem::NoPrevEvents);
}

#[test]
fn stop_create_for_existing_room() {
    let bad = stop_case(&prefix(), &[good_join(), create("$c2", "!r:x")], Refuse);
    assert_eq!(bad.problem, Problem::RoomExists);
    assert_eq!(bad.event_id.as_deref(), Some("$c2"));
    // Also when the room was created earlier in the same batch.
    let bad = stop_case(
        &prefix(),
        &[create("$n1", "!new:x"), create("$n2", "!new:x")],
        Refuse,
    );
    assert_eq!(bad.problem, Problem::RoomExists);
}

#[test]
fn stop_line_over_max_event_bytes() {
    let mut big = message("$big", "!r:x", &["$c"]);
    let pad = MAX_EVENT_BYTES + 1 - big.len();
    big = big.replace("\"hi\"", &format!("\"hi{}\"", "x".repeat(pad)));
    assert_eq!(big.len(), MAX_EVENT_BYTES + 1);
    let bad = stop_case(&prefix(), &[good_join(), big.clone()], Refuse);
    match bad.problem {
        Problem::TooLarge(n) => {
            assert!(n >= big.len(), "TooLarge({n}) for a line of {}", big.len())
        }
        ref other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(bad.event_id, None);
}

#[test]
fn line_of_exactly_max_event_bytes_is_accepted() {
    let mut exact = message("$big", "!r:x", &["$c"]);
    let pad = MAX_EVENT_BYTES - exact.len();
    exact = exact.replace("\"hi\"", &format!("\"hi{}\"", "x".repeat(pad)));
    assert_eq!(exact.len(), MAX_EVENT_BYTES);
    let mut over = message("$over", "!r:x", &["$c"]);
    over = over.replace("\"hi\"", &format!("\"hi{}\"", "x".repeat(pad + 1)));
    let store = Store::in_memory().unwrap();
    // The last line has no newline; the limit holds there too.
    let text = format!("{}\n{exact}\n{over}", create("$c", "!r:x"));
    let report = ingest(
        &store,
        text.as_bytes(),
        options(10, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    assert_eq!(report.events, 2, "{report:?}");
    assert_eq!(report.bad_lines, 1);
    assert_eq!(report.listed_bad_lines[0].line, 3);
    assert!(matches!(
        report.listed_bad_lines[0].problem,
        Problem::TooLarge(_)
    ));
    let rx = store.read().unwrap();
    let nid = rx.event_nid("$big").unwrap().unwrap();
    assert_eq!(rx.event_json(nid).unwrap().as_deref(), Some(exact.as_str()));
}

/// `$c` create, `$m` join, then two siblings on `$m` changing different keys: together they
/// make the room's extremities disagree, which `Refuse` refuses and `TrivialMerge` settles.
fn fork_lines() -> Vec<String> {
    vec![
        create("$c", "!r:x"),
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
        topic("$t", "!r:x", &["$m"]),
        line(
            "$y",
            "!r:x",
            "org.example.only_y",
            Some("only-y-key"),
            &["$m"],
            json!({}),
        )
        .replace("\"auth_events\":[]", "\"auth_events\":[\"$auth-only-y\"]"),
    ]
}

#[test]
fn stop_needs_state_resolution_under_refuse() {
    let lines = fork_lines();
    let bad = stop_case(&lines[..2], &lines[2..], Refuse);
    assert_eq!(bad.event_id.as_deref(), Some("$y"));
    match &bad.problem {
        Problem::NeedsStateResolution(keys) => {
            let keys: BTreeSet<(String, String)> = keys.iter().cloned().collect();
            let expected: BTreeSet<(String, String)> = [
                ("m.room.topic".to_owned(), String::new()),
                ("org.example.only_y".to_owned(), "only-y-key".to_owned()),
            ]
            .into();
            assert_eq!(keys, expected);
        }
        other => panic!("expected NeedsStateResolution, got {other:?}"),
    }
    // TrivialMerge settles the same fork.
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(2, OnBadLine::Stop),
        TrivialMerge,
    )
    .unwrap();
    assert_eq!(report.events, 4);
}

// ---------------------------------------------------------------------------------------------
// Bad input, skip mode

#[test]
fn skip_mode_stores_good_events_and_lists_every_bad_line() {
    let long = "k".repeat(256);
    let input: Vec<String> = vec![
        create("$c", "!r:x"),                                     // 1
        "not json at all".to_owned(),                             // 2
        member("$m", "!r:x", "@a:x", "join", &["$c"]),            // 3
        String::new(),                                            // 4 (blank)
        r#"{"room_id":"!r:x","prev_events":["$c"]}"#.to_owned(),  // 5
        message("$u", "!r:x", &["$ghost"]),                       // 6
        member("$m", "!r:x", "@b:x", "join", &["$c"]),            // 7 duplicate
        line("$k", "!r:x", "t", Some(&long), &["$m"], json!({})), // 8
        create("$oc", "!o:x"),                                    // 9
        message("$x", "!o:x", &["$oc", "$m"]),                    // 10 other room
        message("$n", "!r:x", &[]),                               // 11 no prevs
        create("$c2", "!r:x"),                                    // 12 room exists
        "   ".to_owned(),                                         // 13 (blank)
        topic("$t", "!r:x", &["$m"]),                             // 14
        message("$after-ghost", "!r:x", &["$u"]),                 // 15 cascade
        member("$m2", "!r:x", "@b:x", "join", &["$t"]),           // 16
    ];
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&input).as_bytes(),
        options(4, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    let got: Vec<(u64, Option<&str>, Problem)> = report
        .listed_bad_lines
        .iter()
        .map(|b| (b.line, b.event_id.as_deref(), b.problem.clone()))
        .collect();
    let not_json = match &got[0].2 {
        Problem::NotJson(e) => Problem::NotJson(e.clone()),
        other => panic!("line 2: expected NotJson, got {other:?}"),
    };
    let expected: Vec<(u64, Option<&str>, Problem)> = vec![
        (2, None, not_json),
        (5, None, Problem::NotAPdu),
        (6, Some("$u"), Problem::UnknownPrevEvent("$ghost".into())),
        (7, Some("$m"), Problem::DuplicateEvent),
        (
            8,
            Some("$k"),
            Problem::BadField {
                field: "state_key",
                reason: "longer than 255 bytes",
            },
        ),
        (10, Some("$x"), Problem::PrevEventInOtherRoom("$m".into())),
        (11, Some("$n"), Problem::NoPrevEvents),
        (12, Some("$c2"), Problem::RoomExists),
        (
            15,
            Some("$after-ghost"),
            Problem::UnknownPrevEvent("$u".into()),
        ),
    ];
    assert_eq!(got, expected);
    assert_eq!(report.bad_lines, 9);
    assert_eq!(report.lines, 16);
    assert_eq!(report.events, 5);
    assert_eq!(report.rooms, 2);
    for id in ["$c", "$m", "$oc", "$t", "$m2"] {
        assert!(stored(&store, id), "{id} should be stored");
    }
    for id in ["$u", "$k", "$x", "$n", "$c2", "$after-ghost"] {
        assert!(!stored(&store, id), "{id} should not be stored");
    }
    let rx = store.read().unwrap();
    // The duplicate did not replace the first `$m`.
    let m = rx.event_nid("$m").unwrap().unwrap();
    let json: Value = serde_json::from_str(&rx.event_json(m).unwrap().unwrap()).unwrap();
    assert_eq!(json["state_key"], "@a:x");
    let m2 = rx.event_nid("$m2").unwrap().unwrap();
    let before = StringNames::default().state(&rx, &rx.state_before(m2).unwrap());
    let before: Vec<(String, String, String)> = before
        .iter()
        .map(|((t, k), e)| (t.to_string(), k.to_string(), e.to_string()))
        .collect();
    assert_eq!(
        before,
        vec![
            ("m.room.create".into(), "".into(), "$c".into()),
            ("m.room.member".into(), "@a:x".into(), "$m".into()),
            ("m.room.topic".into(), "".into(), "$t".into()),
        ]
    );
    assert_eq!(rx.stats().unwrap().events, 5);
}

#[test]
fn skip_mode_oversized_line_is_listed_and_numbered() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES));
    let input = vec![
        create("$c", "!r:x"),
        big,
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
    ];
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&input).as_bytes(),
        options(10, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    assert_eq!(report.events, 2);
    assert_eq!(report.bad_lines, 1);
    assert_eq!(report.listed_bad_lines[0].line, 2);
    assert!(matches!(
        report.listed_bad_lines[0].problem,
        Problem::TooLarge(_)
    ));
    assert_eq!(report.lines, 3);
}

/// The report lists "the first" bad lines: in line order, even when an oversized line (refused
/// as it is read) follows a bad line still waiting in its batch.
#[test]
fn listed_bad_lines_are_in_line_order() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES));
    let input = vec![
        create("$c", "!r:x"),
        "not json".to_owned(),
        big,
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
    ];
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&input).as_bytes(),
        IngestOptions {
            max_listed_bad_lines: 1,
            ..options(10, OnBadLine::Skip)
        },
        Refuse,
    )
    .unwrap();
    assert_eq!(report.bad_lines, 2);
    assert_eq!(
        report.listed_bad_lines[0].line, 2,
        "the first bad line is line 2, got {}",
        report.listed_bad_lines[0]
    );
}

#[test]
fn skip_mode_late_failure_keeps_the_rest_of_the_batch() {
    let mut input = fork_lines();
    // Good events after the refused `$y`, in the same batch, and one built on it.
    input.push(message("$after-t", "!r:x", &["$t"]));
    input.push(member("$b", "!r:x", "@b:x", "join", &["$after-t"]));
    input.push(message("$on-y", "!r:x", &["$y"]));
    input.push(topic("$t2", "!r:x", &["$b"]));
    let store = Store::in_memory().unwrap();
    let before = rows(&store);
    let report = ingest(
        &store,
        joined(&input).as_bytes(),
        options(100, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    assert_ne!(rows(&store), before);
    assert_eq!(
        report.batches, 1,
        "one batch, retried without the late line"
    );
    let bad: Vec<(u64, Option<&str>)> = report
        .listed_bad_lines
        .iter()
        .map(|b| (b.line, b.event_id.as_deref()))
        .collect();
    assert_eq!(bad, vec![(4, Some("$y")), (7, Some("$on-y"))]);
    assert!(matches!(
        report.listed_bad_lines[0].problem,
        Problem::NeedsStateResolution(_)
    ));
    assert_eq!(
        report.listed_bad_lines[1].problem,
        Problem::UnknownPrevEvent("$y".into())
    );
    let good = ["$c", "$m", "$t", "$after-t", "$b", "$t2"];
    assert_eq!(report.events as usize, good.len());
    for id in good {
        assert!(stored(&store, id), "{id} should be stored");
    }
    let rx = store.read().unwrap();
    // Nothing of `$y` is left: no record, no JSON, none of the strings only it used.
    if let Some(y) = rx.event_nid("$y").unwrap() {
        assert!(rx.event(y).unwrap().is_none(), "$y has a record");
        assert!(rx.event_json(y).unwrap().is_none(), "$y has JSON");
    }
    assert_eq!(rx.type_nid("org.example.only_y").unwrap(), None);
    assert_eq!(rx.state_key_nid("only-y-key").unwrap(), None);
    assert_eq!(rx.event_nid("$auth-only-y").unwrap(), None);
    let stats = rx.stats().unwrap();
    assert_eq!(stats.events as usize, good.len());
    assert_eq!(stats.rows("events") as usize, good.len());
    assert_eq!(stats.rows("event_json") as usize, good.len());
    assert_eq!(stats.rows("room_events") as usize, good.len());
    // The room went on without `$y`.
    let room = rx.room_nid("!r:x").unwrap().unwrap();
    let record = rx.room(room).unwrap().unwrap();
    let latest: Vec<String> = record
        .latest_events
        .iter()
        .map(|e| rx.event_id(*e).unwrap())
        .collect();
    assert_eq!(latest, vec!["$t2".to_owned()]);
    assert_eq!(record.event_count as usize, good.len());
    let members: Vec<(String, Membership)> = rx
        .members(room, None)
        .unwrap()
        .into_iter()
        .map(|(u, m)| (rx.state_key(u).unwrap(), m))
        .collect();
    let mut members = members;
    members.sort();
    assert_eq!(
        members,
        vec![
            ("@a:x".to_owned(), Membership::Join),
            ("@b:x".to_owned(), Membership::Join)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Input forms

#[test]
fn gzip_input_through_open_input() {
    let lines = generated(Workload::Many, 9, 6, 20, 1);
    let text = joined(&lines);
    let dir = tempfile::tempdir().unwrap();

    let plain_path = dir.path().join("events.jsonl");
    std::fs::write(&plain_path, &text).unwrap();
    let gz_path = dir.path().join("events.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    // Two gzip members, concatenated (as `cat a.gz b.gz` makes), split mid-file.
    let split = text.len() / 2;
    let split = text[..split].rfind('\n').unwrap() + 1;
    let mut multi = Vec::new();
    for part in [&text[..split], &text[split..]] {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(part.as_bytes()).unwrap();
        multi.extend(gz.finish().unwrap());
    }
    let multi_path = dir.path().join("multi.gz");
    std::fs::write(&multi_path, multi).unwrap();
    // A gzip file without the .gz name is still recognised by its magic bytes.
    let disguised = dir.path().join("disguised.jsonl");
    std::fs::copy(&gz_path, &disguised).unwrap();

    let mut results = Vec::new();
    for path in [&plain_path, &gz_path, &multi_path, &disguised] {
        let store = Store::in_memory().unwrap();
        let input = open_input(path.to_str().unwrap()).unwrap();
        let report = ingest(&store, input, options(50, OnBadLine::Stop), TrivialMerge)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(report.events as usize, lines.len(), "{}", path.display());
        assert_eq!(report.bytes as usize, text.len(), "{}", path.display());
        results.push(rows(&store));
    }
    assert!(results.iter().all(|r| *r == results[0]));
    assert!(open_input(dir.path().join("missing").to_str().unwrap()).is_err());
}

#[test]
fn blank_lines_crlf_and_whitespace_are_tolerated() {
    let lines = [
        create("$c", "!r:x"),
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
    ];
    let text = format!("\r\n  {}  \r\n\n\t{}\r\n\n", lines[0], lines[1]);
    let store = Store::in_memory().unwrap();
    let report = ingest(&store, text.as_bytes(), options(1, OnBadLine::Stop), Refuse).unwrap();
    assert_eq!(report.events, 2);
    assert_eq!(report.lines, 5);
    assert_eq!(report.batches, 2, "blank lines do not make batches");
    let rx = store.read().unwrap();
    let m = rx.event_nid("$m").unwrap().unwrap();
    assert_eq!(
        rx.event_json(m).unwrap().as_deref(),
        Some(lines[1].as_str())
    );
}

#[test]
fn ingester_pushes_lines_and_reports_commits() {
    let lines = generated(Workload::Hq, 3, 40, 60, 1);
    let store = Store::in_memory().unwrap();
    let mut ingester = Ingester::new(&store, options(25, OnBadLine::Stop), TrivialMerge);
    let mut commits = Vec::new();
    ingester
        .read_from_with(joined(&lines[..60]).as_bytes(), |r| commits.push(r.events))
        .unwrap();
    assert_eq!(commits, vec![25, 50]);
    assert_eq!(ingester.report().events, 50, "only committed events count");
    for l in &lines[60..] {
        ingester.push_line(l.as_bytes()).unwrap();
    }
    let report = ingester.finish().unwrap();
    assert_eq!(report.events as usize, lines.len());
    assert_eq!(
        store.read().unwrap().stats().unwrap().events as usize,
        lines.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Rooms, JSON and memberships

#[test]
fn room_version_comes_from_the_create_event() {
    let lines = vec![
        create("$c10", "!ten:x"),
        line(
            "$c1",
            "!one:x",
            "m.room.create",
            Some(""),
            &[],
            json!({"creator": "@a:x"}),
        ),
        line(
            "$cnull",
            "!nocontent:x",
            "m.room.create",
            Some(""),
            &[],
            Value::Null,
        )
        .replace(",\"content\":null", ""),
        line(
            "$c9",
            "!nine:x",
            "m.room.create",
            Some(""),
            &[],
            json!({"room_version": "org.example.9"}),
        ),
    ];
    let store = Store::in_memory().unwrap();
    ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Stop),
        Refuse,
    )
    .unwrap();
    let rx = store.read().unwrap();
    for (room, version) in [
        ("!ten:x", "10"),
        ("!one:x", "1"),
        ("!nocontent:x", "1"),
        ("!nine:x", "org.example.9"),
    ] {
        let nid = rx.room_nid(room).unwrap().unwrap();
        assert_eq!(rx.room(nid).unwrap().unwrap().version, version, "{room}");
    }
}

#[test]
fn event_json_round_trips_exactly() {
    let odd = concat!(
        r#"{"unknown":{"nested":[1,2.5,null,"\u00e9\n"]},"event_id":"$odd","#,
        r#""room_id":"!r:x","type":"m.room.message","prev_events":["$c"],"#,
        r#""content":{"body":"caf\u00e9 🦀 \"quoted\""},"depth":2}"#
    );
    // Room version 1 and 2 events name prev events as [id, hashes] pairs, and IDs may be
    // written with escapes.
    let pairs = concat!(
        r#"{"event_id":"$pairs","room_id":"!r:x","type":"m.room.member","state_key":"@a:x","#,
        r#""prev_events":[["$\u006fdd",{"sha256":"abc"}],["$c",{}]],"#,
        r#""auth_events":[["$c",{"sha256":"x"}]],"content":{"membership":"join"}}"#
    );
    let lines = vec![create("$c", "!r:x"), odd.to_owned(), pairs.to_owned()];
    let store = Store::in_memory().unwrap();
    ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Stop),
        Refuse,
    )
    .unwrap();
    let rx = store.read().unwrap();
    for (id, text) in [
        ("$c", &lines[0]),
        ("$odd", &lines[1]),
        ("$pairs", &lines[2]),
    ] {
        let nid = rx.event_nid(id).unwrap().unwrap();
        assert_eq!(
            rx.event_json(nid).unwrap().as_deref(),
            Some(text.as_str()),
            "{id}"
        );
    }
    let pairs = rx.event_nid("$pairs").unwrap().unwrap();
    let record = rx.event(pairs).unwrap().unwrap();
    let prevs: Vec<String> = record
        .prev_events
        .iter()
        .map(|e| rx.event_id(*e).unwrap())
        .collect();
    assert_eq!(prevs, vec!["$odd".to_owned(), "$c".to_owned()]);
    assert_eq!(record.membership, Some(Membership::Join));
    // An event the store never saw has no JSON.
    assert_eq!(rx.event_nid("$never").unwrap(), None);
}

#[test]
fn membership_at_members_and_rooms_of_user() {
    let lines = vec![
        create("$c", "!r:x"),                                      // 1
        member("$a-join", "!r:x", "@a:x", "join", &["$c"]),        // 2
        member("$b-join", "!r:x", "@b:x", "join", &["$a-join"]),   // 3
        message("$msg", "!r:x", &["$b-join"]),                     // 4
        member("$b-leave", "!r:x", "@b:x", "leave", &["$msg"]),    // 5
        member("$c-inv", "!r:x", "@c:x", "invite", &["$b-leave"]), // 6
        member("$d-ban", "!r:x", "@d:x", "ban", &["$c-inv"]),      // 7
        member("$e-knock", "!r:x", "@e:x", "knock", &["$d-ban"]),  // 8
        line(
            "$f-odd",
            "!r:x",
            "m.room.member",
            Some("@f:x"),
            &["$e-knock"],
            json!({"membership": "wobble"}),
        ), // 9: unknown membership
        create("$c2", "!s:x"),                                     // 10
        member("$a-join2", "!s:x", "@a:x", "join", &["$c2"]),      // 11
        member("$b-join2", "!s:x", "@b:x", "join", &["$a-join2"]), // 12
        member("$a-leave2", "!s:x", "@a:x", "leave", &["$b-join2"]), // 13
        member("$a-join2b", "!s:x", "@a:x", "join", &["$a-leave2"]), // 14
    ];
    let store = Store::in_memory().unwrap();
    ingest(
        &store,
        joined(&lines).as_bytes(),
        options(3, OnBadLine::Stop),
        Refuse,
    )
    .unwrap();
    let rx = store.read().unwrap();
    let e = |id: &str| rx.event_nid(id).unwrap().unwrap();
    let u = |id: &str| rx.state_key_nid(id).unwrap().unwrap();
    use Membership::*;
    let cases: &[(&str, &str, Option<Membership>, Option<Membership>)] = &[
        ("$c", "@a:x", None, None),
        ("$a-join", "@a:x", None, Some(Join)),
        ("$b-join", "@a:x", Some(Join), Some(Join)),
        ("$b-join", "@b:x", None, Some(Join)),
        ("$msg", "@b:x", Some(Join), Some(Join)),
        ("$b-leave", "@b:x", Some(Join), Some(Leave)),
        ("$c-inv", "@b:x", Some(Leave), Some(Leave)),
        ("$c-inv", "@c:x", None, Some(Invite)),
        ("$d-ban", "@d:x", None, Some(Ban)),
        ("$e-knock", "@e:x", None, Some(Knock)),
        ("$f-odd", "@f:x", None, None),
        ("$f-odd", "@e:x", Some(Knock), Some(Knock)),
        ("$a-leave2", "@a:x", Some(Join), Some(Leave)),
        ("$a-join2b", "@a:x", Some(Leave), Some(Join)),
    ];
    for (event, user, before, after) in cases {
        assert_eq!(
            rx.membership_at(e(event), u(user), false).unwrap(),
            *before,
            "{user} before {event}"
        );
        assert_eq!(
            rx.membership_at(e(event), u(user), true).unwrap(),
            *after,
            "{user} after {event}"
        );
    }
    let r = rx.room_nid("!r:x").unwrap().unwrap();
    let s = rx.room_nid("!s:x").unwrap().unwrap();
    let named = |list: Vec<(roomstate::StateKeyNid, Membership)>| {
        let mut v: Vec<(String, Membership)> = list
            .into_iter()
            .map(|(k, m)| (rx.state_key(k).unwrap(), m))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        named(rx.members(r, None).unwrap()),
        vec![
            ("@a:x".into(), Join),
            ("@b:x".into(), Leave),
            ("@c:x".into(), Invite),
            ("@d:x".into(), Ban),
            ("@e:x".into(), Knock),
        ]
    );
    assert_eq!(
        named(rx.members(r, Some(Join)).unwrap()),
        vec![("@a:x".into(), Join)]
    );
    assert_eq!(
        named(rx.members(r, Some(Ban)).unwrap()),
        vec![("@d:x".into(), Ban)]
    );
    assert_eq!(
        named(rx.members(s, None).unwrap()),
        vec![("@a:x".into(), Join), ("@b:x".into(), Join)]
    );
    let rooms = |user: &str| -> Vec<String> {
        let mut v: Vec<String> = rx
            .rooms_of_user(u(user))
            .unwrap()
            .into_iter()
            .map(|r| rx.room_id(r).unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(rooms("@a:x"), vec!["!r:x".to_owned(), "!s:x".to_owned()]);
    assert_eq!(rooms("@b:x"), vec!["!s:x".to_owned()]);
    assert!(rooms("@c:x").is_empty());
    assert!(rooms("@d:x").is_empty());
}

#[test]
fn trivial_merge_settles_a_key_changed_on_one_branch_only() {
    // `$t1` then `$t2` on one branch; a sibling branch keeps `$t1`. The merge takes `$t2`,
    // whose history holds `$t1`. Concurrent changes (`$x1`, `$x2`) are refused.
    let lines = vec![
        create("$c", "!r:x"),
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
        topic("$t1", "!r:x", &["$m"]),
        topic("$t2", "!r:x", &["$t1"]),
        message("$side", "!r:x", &["$t1"]),
        message("$merge", "!r:x", &["$t2", "$side"]),
        line(
            "$x1",
            "!r:x",
            "org.example.k",
            Some(""),
            &["$merge"],
            json!({}),
        ),
        line(
            "$x2",
            "!r:x",
            "org.example.k",
            Some(""),
            &["$merge"],
            json!({}),
        ),
        message("$merge2", "!r:x", &["$x1", "$x2"]),
    ];
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(4, OnBadLine::Skip),
        TrivialMerge,
    )
    .unwrap();
    let reference = ReferenceModel::run(Resolution::Trivial, &lines);
    let bad: Vec<(u64, RefProblem)> = report
        .listed_bad_lines
        .iter()
        .map(|b| (b.line, RefProblem::from(&b.problem)))
        .collect();
    let expected: Vec<(u64, RefProblem)> = reference
        .refused
        .iter()
        .map(|(l, (_, p))| (*l, p.clone()))
        .collect();
    assert_eq!(bad, expected);
    assert_eq!(
        bad,
        vec![
            (
                8,
                RefProblem::Conflict([("org.example.k".to_owned(), String::new())].into())
            ),
            (9, RefProblem::UnknownPrev("$x2".into())),
        ]
    );
    let rx = store.read().unwrap();
    let merge = rx.event_nid("$merge").unwrap().unwrap();
    let state = StringNames::default().state(&rx, &rx.state_before(merge).unwrap());
    assert_eq!(
        state
            .get(&("m.room.topic".into(), "".into()))
            .map(|e| e.to_string()),
        Some("$t2".to_owned())
    );
}

#[test]
fn an_event_named_as_auth_event_before_it_arrives_is_stored_later() {
    let early = line("$early", "!r:x", "m.room.message", None, &["$c"], json!({}))
        .replace("\"auth_events\":[]", "\"auth_events\":[\"$c\",\"$later\"]");
    let lines = vec![
        create("$c", "!r:x"),
        early,
        // `$later` is interned but has no record: it is no prev event yet.
        message("$too-soon", "!r:x", &["$later"]),
        topic("$later", "!r:x", &["$early"]),
        message("$after", "!r:x", &["$later"]),
    ];
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    let bad: Vec<(u64, Problem)> = report
        .listed_bad_lines
        .iter()
        .map(|b| (b.line, b.problem.clone()))
        .collect();
    assert_eq!(bad, vec![(3, Problem::UnknownPrevEvent("$later".into()))]);
    assert_eq!(report.events, 4);
    let rx = store.read().unwrap();
    let early = rx
        .event(rx.event_nid("$early").unwrap().unwrap())
        .unwrap()
        .unwrap();
    let later = rx.event_nid("$later").unwrap().unwrap();
    assert_eq!(early.auth_events[1], later, "the auth event keeps its NID");
    assert!(rx.event(later).unwrap().is_some());
}

/// In stop mode the error is the first bad line, even when an oversized line follows it in the
/// same batch.
#[test]
fn stop_mode_reports_the_first_bad_line() {
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(MAX_EVENT_BYTES));
    let input = vec![
        create("$c", "!r:x"),
        message("$u", "!r:x", &["$ghost"]),
        big,
        member("$m", "!r:x", "@a:x", "join", &["$c"]),
    ];
    let store = Store::in_memory().unwrap();
    let bad = bad_line(ingest(
        &store,
        joined(&input).as_bytes(),
        options(10, OnBadLine::Stop),
        Refuse,
    ));
    assert_eq!(
        (bad.line, bad.event_id.as_deref()),
        (2, Some("$u")),
        "expected line 2 (unknown prev event), got {bad}"
    );
    assert_eq!(bad.problem, Problem::UnknownPrevEvent("$ghost".into()));
}

#[test]
fn interleaved_rooms_match_reference_model() {
    // Three histories, dealt out line by line: each room's order is kept, but every batch mixes
    // rooms.
    let sources = [
        generated(Workload::Hq, 5, 100, 200, 1),
        generated(Workload::Forky, 5, 50, 200, 1),
        generated(Workload::Many, 5, 5, 20, 1),
    ];
    let mut lines = Vec::new();
    let longest = sources.iter().map(Vec::len).max().unwrap();
    for i in 0..longest {
        for source in &sources {
            if let Some(l) = source.get(i) {
                lines.push(l.clone());
            }
        }
    }
    for (resolution, seed) in [(Resolution::Trivial, 1), (Resolution::Refuse, 2)] {
        let what = format!("interleaved, {resolution:?}");
        let (reference, _) = check_against_reference(&what, &lines, stores(seed), resolution);
        assert_eq!(reference.rooms.len(), 7, "{what}");
    }
}

/// `content` is free-form: only a member event's `membership` and a create event's
/// `room_version` mean anything to the store, so other events may carry fields of those names
/// with any value.
#[test]
fn content_fields_of_other_events_are_not_interpreted() {
    let lines = vec![
        create("$c", "!r:x"),
        message("$m", "!r:x", &["$c"]).replace(
            "\"body\":\"hi\"",
            "\"body\":\"hi\",\"membership\":5,\"room_version\":{\"v\":10}",
        ),
        line(
            "$s",
            "!r:x",
            "org.example.poll",
            Some(""),
            &["$m"],
            json!({"membership": ["join"], "room_version": 11}),
        ),
    ];
    let store = Store::in_memory().unwrap();
    let result = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Stop),
        Refuse,
    );
    match result {
        Ok(report) => assert_eq!(report.events, 3),
        Err(e) => panic!("a valid event was refused: {e}"),
    }
}

/// The states before every event of a room, and the room's current state, by event ID.
fn room_states(store: &Store, room_id: &str) -> (Vec<(String, StateMap)>, StateMap) {
    let rx = store.read().unwrap();
    let room = rx.room_nid(room_id).unwrap().unwrap();
    let before = rx
        .room_events(room)
        .unwrap()
        .into_iter()
        .map(|e| (rx.event_id(e).unwrap(), rx.state_before(e).unwrap()))
        .collect();
    let current = rx.room(room).unwrap().unwrap().current_state;
    (before, rx.flatten(current).unwrap())
}

#[test]
fn an_import_run_again_stores_nothing_twice() {
    let lines = generated(Workload::Forky, 3, 40, 200, 1);
    let text = joined(&lines);
    let store = Store::in_memory().unwrap();
    let options = IngestOptions {
        batch_size: 37,
        ..IngestOptions::default()
    };
    let first = ingest(
        &store,
        text.as_bytes(),
        options.clone(),
        MatrixResolver::default(),
    )
    .unwrap();
    assert_eq!(first.events, lines.len() as u64);
    let room_id = "!forky:server0.test";
    let states = room_states(&store, room_id);
    // The whole file again: every line is a duplicate, and nothing changes.
    let again = ingest(
        &store,
        text.as_bytes(),
        options.clone(),
        MatrixResolver::default(),
    )
    .unwrap();
    assert_eq!(
        (again.events, again.duplicates, again.bad_lines),
        (0, lines.len() as u64, 0)
    );
    assert_eq!(room_states(&store, room_id), states);
    // A run cut short, then the whole file: the second run stores exactly the rest.
    let resumed = Store::in_memory().unwrap();
    let cut = lines.len() / 3;
    ingest(
        &resumed,
        joined(&lines[..cut]).as_bytes(),
        options.clone(),
        MatrixResolver::default(),
    )
    .unwrap();
    let rest = ingest(
        &resumed,
        text.as_bytes(),
        options,
        MatrixResolver::default(),
    )
    .unwrap();
    assert_eq!(
        (rest.events, rest.duplicates),
        ((lines.len() - cut) as u64, cut as u64)
    );
    assert_eq!(room_states(&resumed, room_id), states);
    assert!(resumed.read().unwrap().check().unwrap().is_clean());
}

#[test]
fn the_same_event_id_with_other_content_is_refused() {
    let store = Store::in_memory().unwrap();
    let lines = [create("$c", "!r:x"), topic("$c", "!r:x", &["$c"])];
    let report = ingest(
        &store,
        joined(&lines).as_bytes(),
        options(10, OnBadLine::Skip),
        Refuse,
    )
    .unwrap();
    assert_eq!(
        (report.events, report.duplicates, report.bad_lines),
        (1, 0, 1)
    );
    assert_eq!(report.listed_bad_lines[0].problem, Problem::DuplicateEvent);
    assert!(
        report.listed_bad_lines[0]
            .to_string()
            .contains("other content")
    );
}

// ---------------------------------------------------------------------------------------------
// The input: an error part-way, and a stop that must end an endless input.

/// Gives `lines` and then fails, or goes on forever with `then` when it is given.
struct Scripted {
    text: std::io::Cursor<Vec<u8>>,
    then: Option<Vec<u8>>,
}

impl std::io::Read for Scripted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.text.read(buf)?;
        if n > 0 {
            return Ok(n);
        }
        match &self.then {
            Some(again) => {
                self.text = std::io::Cursor::new(again.clone());
                self.text.read(buf)
            }
            None => Err(std::io::Error::other("the disk went away")),
        }
    }
}

fn scripted(lines: &[String], then: Option<&str>) -> std::io::BufReader<Scripted> {
    std::io::BufReader::new(Scripted {
        text: std::io::Cursor::new(joined(lines).into_bytes()),
        then: then.map(|t| t.as_bytes().to_vec()),
    })
}

#[test]
fn an_input_error_keeps_the_committed_batches_and_is_returned() {
    let store = Store::in_memory().unwrap();
    let lines = prefix();
    let mut ingester = Ingester::new(&store, options(1, OnBadLine::Stop), TrivialMerge);
    let err = ingester.read_from(scripted(&lines, None)).unwrap_err();
    assert!(
        matches!(&err, Error::Io(e) if e.to_string() == "the disk went away"),
        "{err}"
    );
    assert_eq!(ingester.report().events, 2);
    assert!(stored(&store, "$c") && stored(&store, "$oc"));
}

#[test]
fn a_stop_at_a_bad_line_ends_an_endless_input() {
    // Were the input read ahead of the writer, it would be read forever.
    let store = Store::in_memory().unwrap();
    let endless = scripted(&prefix(), Some("not json\n"));
    let err = ingest(&store, endless, options(1, OnBadLine::Stop), TrivialMerge).unwrap_err();
    let Error::BadLine(bad) = err else {
        panic!("{err}")
    };
    assert_eq!(bad.line, 3);
    assert!(stored(&store, "$c") && stored(&store, "$oc"));
}

/// The report counts the B-tree operations of the committed batches: a handful to a few dozen
/// per new event, and only look-ups for events already stored.
#[test]
fn the_report_counts_btree_operations() {
    let lines = generated(Workload::Hq, 3, 60, 200, 2);
    let text = joined(&lines);
    let store = Store::in_memory().unwrap();
    let run = || {
        let options = options(100, OnBadLine::Stop);
        ingest(&store, text.as_bytes(), options, MatrixResolver::default()).unwrap()
    };
    let first = run();
    let per_event = first.btree_ops as f64 / first.events as f64;
    assert!((5.0..60.0).contains(&per_event), "{per_event} per event");
    let again = run();
    assert_eq!(again.duplicates, first.events);
    let per_duplicate = again.btree_ops as f64 / again.duplicates as f64;
    assert!(
        (1.0..per_event / 2.0).contains(&per_duplicate),
        "{per_duplicate} per duplicate, {per_event} per new event"
    );
}
