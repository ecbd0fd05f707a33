//! Events as federation delivers them, through the typed API: a join with its state supplied
//! after the state's auth chain as outliers, backfill newest first, gaps that report missing
//! prev events, outliers upgraded and rejected; and the queries other servers ask.
//!
//! The reference is always the same history ingested whole, from its create event on.

use roomstate::matrix::query::{self, StateIds};
use roomstate::matrix::roomserver::{InputEvent, InputKind, InputOutcome, Received, RoomServer};
use roomstate::workload::{GenConfig, GenEvent, Generator, RoomVersion, Workload};
use roomstate::{EventNid, MatrixResolver, PreparedEvent, Store, StoreRead};
use std::collections::{BTreeMap, BTreeSet, HashMap};

fn history(workload: Workload, version: RoomVersion) -> Vec<GenEvent> {
    let config = GenConfig {
        seed: 7,
        members: 40,
        state_events: 160,
        messages_per_state: 1,
        room_version: version,
        ..GenConfig::new(workload)
    };
    Generator::new(config).collect()
}

/// The whole history ingested event by event, with the room's forward extremities after each.
struct Full {
    store: Store,
    json: HashMap<String, String>,
    /// After each event: whether the room's forward extremities are that event alone.
    single_tip: Vec<bool>,
    /// The events each one added to and removed from the current state, as the API said.
    deltas: Vec<(Vec<EventNid>, Vec<EventNid>)>,
}

fn ingest_whole(events: &[GenEvent]) -> Full {
    let store = Store::in_memory().unwrap();
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    let mut single_tip = Vec::new();
    let mut deltas = Vec::new();
    let mut json = HashMap::new();
    for e in events {
        let line = e.to_json_line();
        let got = server
            .receive(&mut tx, &InputEvent::new(line.as_bytes()))
            .unwrap();
        assert_eq!(got.outcome, InputOutcome::Accepted, "{}", e.event_id);
        let room = tx.room(tx.room_nid(&e.room_id).unwrap().unwrap()).unwrap();
        single_tip.push(room.unwrap().latest_events == [got.event.unwrap()]);
        deltas.push((got.adds_state, got.removes_state));
        json.insert(e.event_id.clone(), line);
    }
    tx.commit().unwrap();
    Full {
        store,
        json,
        single_tip,
        deltas,
    }
}

/// A state as the sorted IDs of its events: comparable across stores.
fn ids(rx: &impl StoreRead, nids: impl IntoIterator<Item = EventNid>) -> Vec<String> {
    let mut out: Vec<String> = nids.into_iter().map(|n| rx.event_id(n).unwrap()).collect();
    out.sort();
    out
}

fn state_before_ids(store: &Store, event_id: &str) -> Vec<String> {
    let rx = store.read().unwrap();
    let nid = rx.event_nid(event_id).unwrap().unwrap();
    let state = rx.state_before(nid).unwrap();
    ids(&rx, state.entries().iter().map(|e| e.event))
}

/// What a room looks like from outside: its current state, members and extremities.
fn room_view(store: &Store, room_id: &str) -> (Vec<String>, BTreeMap<String, String>, Vec<String>) {
    let rx = store.read().unwrap();
    let room = rx.room_nid(room_id).unwrap().unwrap();
    let record = rx.room(room).unwrap().unwrap();
    let current = rx.flatten(record.current_state).unwrap();
    let members = rx
        .members(room, None)
        .unwrap()
        .into_iter()
        .map(|(u, m)| (rx.state_key(u).unwrap(), m.as_str().to_owned()))
        .collect();
    (
        ids(&rx, current.entries().iter().map(|e| e.event)),
        members,
        ids(&rx, record.latest_events.iter().copied()),
    )
}

/// A server that joins the room: it holds only what it was sent, and fetches from the full
/// history what a real server would fetch over federation.
///
/// Every other event is received prepared ([`PreparedEvent`]), as a reader thread would hand it
/// over: nothing may tell the two apart.
struct Joiner<'a> {
    full: &'a Full,
    store: Store,
    server: RoomServer,
    received: usize,
}

impl<'a> Joiner<'a> {
    fn new(full: &'a Full) -> Self {
        Joiner {
            full,
            store: Store::in_memory().unwrap(),
            server: RoomServer::new(),
            received: 0,
        }
    }

    fn receive(&mut self, kind: InputKind, id: &str, state: Option<&[String]>) -> Received {
        let json = &self.full.json[id];
        let mut event = InputEvent::new(json.as_bytes()).kind(kind);
        if let Some(state) = state {
            event = event.with_state_before(state);
        }
        self.received += 1;
        let mut tx = self.store.write().unwrap();
        let got = if self.received.is_multiple_of(2) {
            let prepared = PreparedEvent::new(&event, &self.store, true);
            let mut batch = self.server.batch(&mut tx);
            batch.receive_prepared(prepared).unwrap()
        } else {
            self.server.receive(&mut tx, &event).unwrap()
        };
        tx.commit().unwrap();
        got
    }

    fn holds(&self, id: &str) -> bool {
        let rx = self.store.read().unwrap();
        let nid = rx.event_nid(id).unwrap();
        nid.is_some_and(|n| rx.event(n).unwrap().is_some())
    }

    fn in_timeline(&self, id: &str) -> bool {
        let rx = self.store.read().unwrap();
        let nid = rx.event_nid(id).unwrap();
        nid.is_some_and(|n| rx.event(n).unwrap().is_some() && !rx.is_outlier(n).unwrap())
    }

    /// Stores `events` and their auth chain as outliers, auth events first, as a `send_join`
    /// or `/state_ids` answer and `/event_auth` bring them.
    fn store_outliers(&mut self, events: &[String]) {
        let order = {
            let rx = self.full.store.read().unwrap();
            let nids: Vec<EventNid> = events
                .iter()
                .map(|id| rx.event_nid(id).unwrap().unwrap())
                .collect();
            let chain = query::auth_chain(&rx, &nids).unwrap();
            let mut order: Vec<String> = chain.iter().map(|n| rx.event_id(*n).unwrap()).collect();
            let reached: BTreeSet<String> = order.iter().cloned().collect();
            order.extend(events.iter().filter(|id| !reached.contains(*id)).cloned());
            order
        };
        for id in order {
            if !self.holds(&id) {
                let got = self.receive(InputKind::Outlier, &id, None);
                assert_eq!(got.outcome, InputOutcome::Outlier, "{id}");
                assert!(got.outlier && got.state_before.is_none());
            }
        }
    }

    /// Receives a new (or backfilled) event; if its prev events are missing, fetches the
    /// state before it (and that state's events) and tries again, as a server filling a gap.
    fn receive_filling_gaps(&mut self, kind: InputKind, id: &str) -> Received {
        let got = self.receive(kind, id, None);
        let InputOutcome::MissingPrevEvents(missing) = &got.outcome else {
            return got;
        };
        assert!(!missing.is_empty());
        assert!(!self.in_timeline(id), "a missing prev event stores nothing");
        let state = state_before_ids(&self.full.store, id);
        self.store_outliers(&state);
        self.receive(kind, id, Some(&state))
    }

    /// Joins at `events[k]`: the state before it and its auth chain as outliers, then the event
    /// with its state supplied.
    fn join_at(&mut self, event: &GenEvent) {
        let state = state_before_ids(&self.full.store, &event.event_id);
        let mut needed = state.clone();
        needed.extend(event.auth_events.iter().cloned());
        self.store_outliers(&needed);
        let got = self.receive(InputKind::New, &event.event_id, Some(&state));
        assert_eq!(got.outcome, InputOutcome::Accepted);
        // A join adds the whole state after it to the room.
        let rx = self.store.read().unwrap();
        let after = rx.state_after(got.event.unwrap()).unwrap();
        assert_eq!(got.adds_state.len(), after.len());
        assert!(got.removes_state.is_empty());
    }
}

fn join_and_follow(events: &[GenEvent], full: &Full, k: usize) {
    let mut joiner = Joiner::new(full);
    joiner.join_at(&events[k]);
    for e in &events[k + 1..] {
        let got = joiner.receive_filling_gaps(InputKind::New, &e.event_id);
        assert_eq!(got.outcome, InputOutcome::Accepted, "{}", e.event_id);
    }
    for e in &events[k..] {
        assert_eq!(
            state_before_ids(&joiner.store, &e.event_id),
            state_before_ids(&full.store, &e.event_id),
            "state before {} (joined at {k})",
            e.event_id
        );
    }
    let room = &events[k].room_id;
    assert_eq!(
        room_view(&joiner.store, room),
        room_view(&full.store, room),
        "joined at {k}"
    );
    let rx = joiner.store.read().unwrap();
    assert!(rx.check().unwrap().is_clean(), "{:?}", rx.check().unwrap());
}

/// Cut points where the room's forward extremities were the event alone: a joining server's
/// extremities are its join, so the rooms then agree on them. On `forky` some are merges.
fn cuts(events: &[GenEvent], full: &Full, count: usize) -> Vec<usize> {
    let eligible: Vec<usize> = (2..events.len() - 1)
        .filter(|&k| full.single_tip[k])
        .collect();
    let step = (eligible.len() / count).max(1);
    eligible.into_iter().step_by(step).take(count).collect()
}

#[test]
fn a_join_with_supplied_state_matches_the_full_history() {
    for (workload, version) in [
        (Workload::Hq, RoomVersion::V10),
        (Workload::Forky, RoomVersion::V10),
        (Workload::Hq, RoomVersion::V12),
    ] {
        let events = history(workload, version);
        let full = ingest_whole(&events);
        let ks = cuts(&events, &full, 4);
        assert!(ks.len() >= 3, "{workload:?}");
        if workload == Workload::Forky {
            assert!(
                ks.iter().any(|&k| events[k].prev_events.len() > 1),
                "some cut is a merge"
            );
        }
        for k in ks {
            join_and_follow(&events, &full, k);
        }
    }
}

#[test]
fn backfill_newest_first_matches_the_full_history_and_never_moves_the_current_state() {
    for workload in [Workload::Hq, Workload::Forky] {
        let events = history(workload, RoomVersion::V10);
        let full = ingest_whole(&events);
        let last = events.len() - 1;
        let mut joiner = Joiner::new(&full);
        joiner.join_at(&events[last]);
        let room = &events[last].room_id;
        let joined = room_view(&joiner.store, room);
        let chunk = 25;
        let mut end = last;
        while end > 0 {
            let start = end.saturating_sub(chunk);
            for (i, e) in events[start..end].iter().enumerate() {
                // The first event of a chunk comes with its state; the rest take theirs from
                // their prev events when those are stored.
                let got = if i == 0 && !e.prev_events.is_empty() {
                    let state = state_before_ids(&full.store, &e.event_id);
                    joiner.store_outliers(&state);
                    joiner.receive(InputKind::Backfill, &e.event_id, Some(&state))
                } else {
                    joiner.receive_filling_gaps(InputKind::Backfill, &e.event_id)
                };
                assert_eq!(got.outcome, InputOutcome::Accepted, "{}", e.event_id);
                assert!(!got.outlier);
                assert!(got.adds_state.is_empty() && got.removes_state.is_empty());
            }
            assert_eq!(room_view(&joiner.store, room), joined, "{workload:?}");
            end = start;
        }
        for e in &events {
            assert_eq!(
                state_before_ids(&joiner.store, &e.event_id),
                state_before_ids(&full.store, &e.event_id),
                "{workload:?}: state before {}",
                e.event_id
            );
        }
        let rx = joiner.store.read().unwrap();
        let room_nid = rx.room_nid(room).unwrap().unwrap();
        assert!(
            rx.outliers(room_nid).unwrap().is_empty(),
            "every outlier upgraded"
        );
        assert_eq!(rx.room_events(room_nid).unwrap().len(), events.len());
        assert!(rx.check().unwrap().is_clean());
    }
}

#[test]
fn a_gap_reports_the_missing_prev_events_and_changes_nothing_until_the_state_is_supplied() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let full = ingest_whole(&events);
    let mut joiner = Joiner::new(&full);
    let n = 30;
    for e in &events[..n] {
        let got = joiner.receive(InputKind::New, &e.event_id, None);
        assert_eq!(got.outcome, InputOutcome::Accepted);
    }
    let room = &events[0].room_id;
    let before = room_view(&joiner.store, room);
    let sizes = joiner.store.read().unwrap().table_sizes().unwrap();
    let skipped = &events[n];
    let next = &events[n + 1];
    let got = joiner.receive(InputKind::New, &next.event_id, None);
    assert_eq!(
        got.outcome,
        InputOutcome::MissingPrevEvents(vec![skipped.event_id.clone()])
    );
    assert_eq!(got.event, None);
    assert!(!joiner.holds(&next.event_id));
    assert_eq!(room_view(&joiner.store, room), before);
    let rows = |s: &[roomstate::TableSize]| -> Vec<(String, u64)> {
        s.iter().map(|t| (t.name.to_string(), t.rows)).collect()
    };
    let after = joiner.store.read().unwrap().table_sizes().unwrap();
    assert_eq!(rows(&after), rows(&sizes), "nothing written");

    let state = state_before_ids(&full.store, &next.event_id);
    joiner.store_outliers(&state);
    let got = joiner.receive(InputKind::New, &next.event_id, Some(&state));
    assert_eq!(got.outcome, InputOutcome::Accepted);
    assert_eq!(
        state_before_ids(&joiner.store, &next.event_id),
        state_before_ids(&full.store, &next.event_id)
    );
    // The skipped event is still missing: it is no extremity, and never was stored.
    assert!(!joiner.holds(&skipped.event_id));
}

#[test]
fn an_outlier_is_upgraded_in_place_and_a_second_arrival_is_idempotent() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let full = ingest_whole(&events);
    let mut joiner = Joiner::new(&full);
    let n = 20;
    for e in &events[..n] {
        joiner.receive(InputKind::New, &e.event_id, None);
    }
    let id = &events[n].event_id;
    let outlier = joiner.receive(InputKind::Outlier, id, None);
    assert_eq!(outlier.outcome, InputOutcome::Outlier);
    let again = joiner.receive(InputKind::Outlier, id, None);
    assert_eq!(again.outcome, InputOutcome::AlreadyStored);
    {
        let rx = joiner.store.read().unwrap();
        let nid = outlier.event.unwrap();
        assert!(rx.is_outlier(nid).unwrap());
        assert!(matches!(
            rx.state_before(nid),
            Err(roomstate::Error::Outlier(_))
        ));
        // An outlier is no prev event: the next event cannot build on it.
    }
    let next = joiner.receive(InputKind::New, &events[n + 1].event_id, None);
    assert_eq!(
        next.outcome,
        InputOutcome::MissingPrevEvents(vec![id.clone()])
    );
    let upgraded = joiner.receive(InputKind::New, id, None);
    assert_eq!(upgraded.outcome, InputOutcome::Accepted);
    assert_eq!(upgraded.event, outlier.event, "same NID");
    let twice = joiner.receive(InputKind::New, id, None);
    assert_eq!(twice.outcome, InputOutcome::AlreadyStored);
    let rx = joiner.store.read().unwrap();
    let room = rx.room_nid(&events[0].room_id).unwrap().unwrap();
    assert!(!rx.is_outlier(upgraded.event.unwrap()).unwrap());
    assert_eq!(rx.room_events(room).unwrap().len(), n + 1, "no duplicate");
    assert_eq!(
        state_before_ids(&joiner.store, id),
        state_before_ids(&full.store, id)
    );
    assert!(rx.check().unwrap().is_clean());
}

/// The same arrivals in one batch, whose writer remembers which rooms hold outliers: the
/// outlier stored in the batch is still no prev event, and still an outlier when it comes again.
#[test]
fn an_outlier_stored_in_a_batch_is_known_as_one_in_that_batch() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let full = ingest_whole(&events);
    let store = Store::in_memory().unwrap();
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    let mut batch = server.batch(&mut tx);
    let json = |i: usize| full.json[&events[i].event_id].as_bytes();
    let n = 20;
    for i in 0..n {
        let got = batch.receive(&InputEvent::new(json(i))).unwrap();
        assert_eq!(got.outcome, InputOutcome::Accepted);
    }
    let outlier = batch.receive(&InputEvent::outlier(json(n))).unwrap();
    assert_eq!(outlier.outcome, InputOutcome::Outlier);
    let next = batch.receive(&InputEvent::new(json(n + 1))).unwrap();
    assert_eq!(
        next.outcome,
        InputOutcome::MissingPrevEvents(vec![events[n].event_id.clone()])
    );
    let upgraded = batch.receive(&InputEvent::new(json(n))).unwrap();
    assert_eq!(upgraded.outcome, InputOutcome::Accepted);
    assert_eq!(upgraded.event, outlier.event, "same NID");
    drop(batch);
    tx.commit().unwrap();
    let rx = store.read().unwrap();
    assert!(!rx.is_outlier(upgraded.event.unwrap()).unwrap());
    assert!(rx.check().unwrap().is_clean());
}

/// A message's JSON sent by someone else, under a new event ID.
fn forged(event: &GenEvent, sender: &str, suffix: &str) -> String {
    let mut forged = event.clone();
    forged.sender = sender.to_owned();
    forged.event_id = format!("{}{suffix}", &event.event_id[..20]);
    forged.to_json_line()
}

#[test]
fn an_outlier_that_fails_its_auth_events_is_rejected_and_one_missing_them_is_not_stored() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let full = ingest_whole(&events);
    let message = events
        .iter()
        .find(|e| e.event_type == "m.room.message")
        .unwrap();
    let store = Store::in_memory().unwrap();
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    // Its auth chain first.
    let chain = {
        let rx = full.store.read().unwrap();
        let nid = rx.event_nid(&message.event_id).unwrap().unwrap();
        let chain = query::auth_chain(&rx, &[nid]).unwrap();
        chain
            .iter()
            .map(|n| rx.event_id(*n).unwrap())
            .collect::<Vec<_>>()
    };
    for id in &chain {
        let got = server
            .receive(&mut tx, &InputEvent::outlier(full.json[id].as_bytes()))
            .unwrap();
        assert_eq!(got.outcome, InputOutcome::Outlier);
    }
    // A stranger's message, citing someone else's membership: the rules refuse it.
    let stranger = forged(
        message,
        "@stranger:elsewhere.test",
        "AAAAAAAAAAAAAAAAAAAAAAA",
    );
    let got = server
        .receive(&mut tx, &InputEvent::outlier(stranger.as_bytes()))
        .unwrap();
    let InputOutcome::Rejected(why) = &got.outcome else {
        panic!("{:?}", got.outcome);
    };
    assert_eq!(why.step, roomstate::AuthStep::AuthEvents);
    assert!(got.outlier);
    assert!(tx.event(got.event.unwrap()).unwrap().unwrap().rejected);
    // The real message, with none of its auth events stored in a fresh store.
    let empty = Store::in_memory().unwrap();
    let mut tx2 = empty.write().unwrap();
    let line = &full.json[&message.event_id];
    let got = RoomServer::new()
        .receive(&mut tx2, &InputEvent::outlier(line.as_bytes()))
        .unwrap();
    let InputOutcome::MissingAuthEvents(missing) = got.outcome else {
        panic!("{:?}", got.outcome);
    };
    assert_eq!(missing, message.auth_events);
    assert!(tx2.event_nid(&message.event_id).unwrap().is_none());
    tx.commit().unwrap();
}

#[test]
fn a_bad_event_is_a_typed_error_and_the_transaction_goes_on() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let store = Store::in_memory().unwrap();
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    let create = events[0].to_json_line();
    server
        .receive(&mut tx, &InputEvent::new(create.as_bytes()))
        .unwrap();
    let err = server
        .receive(&mut tx, &InputEvent::new(b"{\"event_id\":\"$x\"}"))
        .unwrap_err();
    assert!(
        matches!(&err, roomstate::Error::BadEvent { event_id: Some(id), .. } if id == "$x"),
        "{err}"
    );
    // Prepared on another thread, a bad event fails the same way, at the same point. This one
    // passes the store's own reading and fails the rules' (its sender is no user ID).
    let no_user = events[1].to_json_line().replace(
        &format!("\"sender\":\"{}\"", events[1].sender),
        "\"sender\":\"nobody\"",
    );
    assert_ne!(no_user, events[1].to_json_line());
    for pdu in [b"{\"event_id\":\"$x\"}".as_slice(), no_user.as_bytes()] {
        let event = InputEvent::new(pdu);
        let plain = server.receive(&mut tx, &event).unwrap_err().to_string();
        let prepared = PreparedEvent::new(&event, &store, true);
        let ahead = server.batch(&mut tx).receive_prepared(prepared);
        assert_eq!(ahead.unwrap_err().to_string(), plain);
        assert!(pdu.len() < 20 || plain.contains("not an event"), "{plain}");
    }
    let state = [events[0].event_id.clone()];
    let err = server
        .receive(
            &mut tx,
            &InputEvent::outlier(create.as_bytes()).with_state_before(&state),
        )
        .unwrap_err();
    assert!(err.to_string().contains("take none"), "{err}");
    let join = events[1].to_json_line();
    let got = server
        .receive(&mut tx, &InputEvent::new(join.as_bytes()))
        .unwrap();
    assert_eq!(got.outcome, InputOutcome::Accepted);
    tx.commit().unwrap();
}

/// The auth chain the plain way: a walk over the events' JSON.
fn walk_auth_chain(events: &[GenEvent], from: &[String]) -> BTreeSet<String> {
    let by_id: HashMap<&str, &GenEvent> = events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = from
        .iter()
        .flat_map(|id| by_id[id.as_str()].auth_events.iter().map(String::as_str))
        .collect();
    while let Some(id) = stack.pop() {
        if seen.insert(id.to_owned()) {
            stack.extend(by_id[id].auth_events.iter().map(String::as_str));
        }
    }
    seen
}

#[test]
fn queries_answer_what_other_servers_ask() {
    for version in [RoomVersion::V10, RoomVersion::V12] {
        let events = history(Workload::Forky, version);
        let full = ingest_whole(&events);
        let rx = full.store.read().unwrap();
        let nid = |id: &str| rx.event_nid(id).unwrap().unwrap();
        let position: HashMap<String, usize> = events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.event_id.clone(), i))
            .collect();
        // The create event is in a chain when another event of its room was asked about, though
        // in room version 12 none lists it.
        let (create, second) = (nid(&events[0].event_id), nid(&events[1].event_id));
        assert_eq!(query::auth_chain(&rx, &[create, create]).unwrap(), []);
        assert_eq!(query::auth_chain(&rx, &[create, second]).unwrap(), [create]);
        assert_eq!(query::auth_chain(&rx, &[second, create]).unwrap(), [create]);
        for e in events.iter().step_by(37) {
            // The auth chain: the plain walk's events, each after its own auth events.
            let chain = query::auth_chain(&rx, &[nid(&e.event_id)]).unwrap();
            let names: Vec<String> = chain.iter().map(|n| rx.event_id(*n).unwrap()).collect();
            let mut expected = walk_auth_chain(&events, std::slice::from_ref(&e.event_id));
            // In room version 12 the create event is implied, not listed.
            if version == RoomVersion::V12 && !e.prev_events.is_empty() {
                expected.insert(events[0].event_id.clone());
            }
            assert_eq!(names.iter().cloned().collect::<BTreeSet<_>>(), expected);
            assert_eq!(names.len(), expected.len(), "each once");
            for (i, id) in names.iter().enumerate() {
                let ev = &events[position[id]];
                for a in &ev.auth_events {
                    assert!(names[..i].contains(a), "{a} before {id}");
                }
            }
            // /state_ids: the state before, and its auth chain.
            if e.prev_events.is_empty() {
                continue;
            }
            let StateIds {
                pdu_ids,
                auth_chain_ids,
            } = query::state_ids(&rx, nid(&e.event_id)).unwrap();
            assert_eq!(
                ids(&rx, pdu_ids.iter().copied()),
                state_before_ids(&full.store, &e.event_id)
            );
            let state_names = ids(&rx, pdu_ids);
            let mut expected = walk_auth_chain(&events, &state_names);
            if version == RoomVersion::V12 {
                expected.insert(events[0].event_id.clone());
            }
            assert_eq!(
                ids(&rx, auth_chain_ids)
                    .into_iter()
                    .collect::<BTreeSet<_>>(),
                expected
            );
            // A user's membership at the event: the sender's, which lets them send it.
            let membership = query::membership_at(&rx, nid(&e.event_id), &e.sender, false).unwrap();
            if e.event_type != "m.room.member" {
                assert_eq!(
                    membership,
                    Some(roomstate::Membership::Join),
                    "{}",
                    e.event_id
                );
            }
        }
        // The state after a merge's prev events together is the state before the merge.
        let mut merges = 0;
        for e in events.iter().filter(|e| e.prev_events.len() > 1) {
            let prevs: Vec<EventNid> = e.prev_events.iter().map(|p| nid(p)).collect();
            let state =
                query::state_after_events(&rx, &mut MatrixResolver::default(), &prevs).unwrap();
            assert_eq!(
                ids(&rx, state.entries().iter().map(|x| x.event)),
                state_before_ids(&full.store, &e.event_id),
                "{}",
                e.event_id
            );
            merges += 1;
        }
        assert!(merges > 0);
        // Joined servers: the servers of the members joined in the current state.
        let room = rx.room_nid(&events[0].room_id).unwrap().unwrap();
        let expected: BTreeSet<String> = rx
            .members(room, Some(roomstate::Membership::Join))
            .unwrap()
            .into_iter()
            .map(|(u, _)| {
                rx.state_key(u)
                    .unwrap()
                    .split_once(':')
                    .unwrap()
                    .1
                    .to_owned()
            })
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(
            rx.joined_servers(room).unwrap(),
            expected.into_iter().collect::<Vec<_>>()
        );
    }
}

#[test]
fn the_current_state_deltas_add_up_to_the_current_state() {
    for workload in [Workload::Hq, Workload::Forky] {
        let events = history(workload, RoomVersion::V10);
        let full = ingest_whole(&events);
        let mut model: BTreeSet<EventNid> = BTreeSet::new();
        for (adds, removes) in &full.deltas {
            for r in removes {
                assert!(model.remove(r), "{workload:?}: removes only what is there");
            }
            for a in adds {
                assert!(
                    model.insert(*a),
                    "{workload:?}: adds only what is not there"
                );
            }
        }
        let rx = full.store.read().unwrap();
        let room = rx.room(rx.room_nid(&events[0].room_id).unwrap().unwrap());
        let current = rx.flatten(room.unwrap().unwrap().current_state).unwrap();
        let expected: BTreeSet<EventNid> = current.entries().iter().map(|e| e.event).collect();
        assert_eq!(model, expected, "{workload:?}");
    }
}

/// Envelope lines through JSON-lines ingest take the same path as the typed API: a room version
/// 12 join (the create event, without a room ID, among the outliers), then the rest as bare PDUs.
#[test]
fn a_version_12_join_as_envelope_lines() {
    let events = history(Workload::Hq, RoomVersion::V12);
    let full = ingest_whole(&events);
    let k = events.len() / 2;
    let state = state_before_ids(&full.store, &events[k].event_id);
    let order = {
        let rx = full.store.read().unwrap();
        let nids: Vec<EventNid> = state
            .iter()
            .map(|id| rx.event_nid(id).unwrap().unwrap())
            .collect();
        let mut order: Vec<String> = query::auth_chain(&rx, &nids)
            .unwrap()
            .iter()
            .map(|n| rx.event_id(*n).unwrap())
            .collect();
        order.extend(
            state
                .iter()
                .filter(|id| !order.contains(id))
                .cloned()
                .collect::<Vec<_>>(),
        );
        order
    };
    assert!(
        !full.json[&events[0].event_id].contains("room_id"),
        "a v12 create has none"
    );
    let mut text = String::new();
    for id in &order {
        text += &format!("{{\"kind\":\"outlier\",\"event\":{}}}\n", full.json[id]);
    }
    text += &format!(
        "{{\"event\":{},\"kind\":\"new\",\"state_before\":{}}}\n",
        full.json[&events[k].event_id],
        serde_json::to_string(&state).unwrap()
    );
    for e in &events[k + 1..] {
        text += &full.json[&e.event_id];
        text += "\n";
    }
    let store = Store::in_memory().unwrap();
    let report = roomstate::ingest::ingest(
        &store,
        text.as_bytes(),
        roomstate::ingest::IngestOptions::default(),
        MatrixResolver::default(),
    )
    .unwrap();
    assert_eq!(report.events as usize, order.len() + events.len() - k);
    assert_eq!(report.outliers as usize, order.len());
    assert_eq!(report.accepted(), report.events);
    for e in &events[k..] {
        assert_eq!(
            state_before_ids(&store, &e.event_id),
            state_before_ids(&full.store, &e.event_id)
        );
    }
    let room = &events[0].room_id;
    assert_eq!(room_view(&store, room), room_view(&full.store, room));
}

/// A room known only by outliers (a join that never finished) purges like any other.
#[test]
fn a_room_of_outliers_alone_purges() {
    let events = history(Workload::Hq, RoomVersion::V10);
    let full = ingest_whole(&events);
    let mut joiner = Joiner::new(&full);
    let state = state_before_ids(&full.store, &events[40].event_id);
    joiner.store_outliers(&state);
    let mut tx = joiner.store.write().unwrap();
    let room = tx.room_nid(&events[0].room_id).unwrap().unwrap();
    assert!(tx.room(room).unwrap().is_none(), "no timeline yet");
    let purged = tx.purge_room(room).unwrap();
    assert!(purged.events as usize >= state.len());
    tx.commit().unwrap();
    let rx = joiner.store.read().unwrap();
    assert!(rx.outliers(room).unwrap().is_empty());
    assert!(rx.event_nid(&events[0].event_id).unwrap().is_none());
    assert!(rx.check().unwrap().is_clean());
}
