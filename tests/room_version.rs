//! Room version 12 end to end: rooms whose ID is their create event's, with the create event left
//! out of `auth_events`, generated, ingested and queried beside version 10 rooms.

use roomstate::ingest::{IngestOptions, MatrixResolver, ingest};
use roomstate::workload::{GenConfig, GenEvent, Generator, RoomVersion, Workload};
use roomstate::{Store, StoreRead};

fn config(workload: Workload, version: RoomVersion) -> GenConfig {
    GenConfig {
        members: if workload == Workload::Many { 20 } else { 200 },
        state_events: if workload == Workload::Many { 20 } else { 600 },
        messages_per_state: 1,
        room_version: version,
        ..GenConfig::new(workload)
    }
}

fn events(workload: Workload, version: RoomVersion) -> Vec<GenEvent> {
    Generator::new(config(workload, version)).collect()
}

fn ingest_into(store: &Store, events: &[GenEvent]) -> roomstate::ingest::IngestReport {
    let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
    let options = IngestOptions {
        batch_size: 300,
        ..IngestOptions::default()
    };
    ingest(store, text.as_bytes(), options, MatrixResolver::default()).unwrap()
}

/// For every event, in order: its type, and the size of the state before it.
fn shape(store: &Store, events: &[GenEvent]) -> Vec<(String, usize)> {
    let rx = store.read().unwrap();
    events
        .iter()
        .map(|e| {
            let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
            (e.event_type.clone(), rx.state_before(nid).unwrap().len())
        })
        .collect()
}

#[test]
fn version_12_rooms_take_their_id_from_the_create_event() {
    let history = events(Workload::Hq, RoomVersion::V12);
    let create = &history[0];
    assert_eq!(create.event_type, "m.room.create");
    let line = create.to_json_line();
    assert!(!line.contains("room_id"), "{line}");
    let room_id = format!("!{}", &create.event_id[1..]);
    assert!(history[1..].iter().all(|e| e.room_id == room_id));
    assert!(
        history[1..]
            .iter()
            .all(|e| !e.auth_events.contains(&create.event_id)),
        "a version 12 event names the create event"
    );
    let store = Store::in_memory().unwrap();
    let report = ingest_into(&store, &history);
    assert_eq!((report.rejected, report.soft_failed), (0, 0));
    let rx = store.read().unwrap();
    let room = rx
        .room_nid(&room_id)
        .unwrap()
        .expect("stored under the derived ID");
    assert_eq!(rx.room(room).unwrap().unwrap().version, "12");
    let create_nid = rx.event_nid(&create.event_id).unwrap().unwrap();
    assert_eq!(rx.expect_event(create_nid).unwrap().room, room);
}

#[test]
fn every_workload_at_version_12_matches_its_version_10_twin_in_shape() {
    for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
        let (v10, v12) = (
            events(workload, RoomVersion::V10),
            events(workload, RoomVersion::V12),
        );
        assert_eq!(v10.len(), v12.len(), "{workload:?}");
        let (a, b) = (Store::in_memory().unwrap(), Store::in_memory().unwrap());
        let (ra, rb) = (ingest_into(&a, &v10), ingest_into(&b, &v12));
        assert_eq!((rb.rejected, rb.soft_failed), (0, 0), "{workload:?}");
        assert_eq!((ra.events, ra.state_events), (rb.events, rb.state_events));
        assert_eq!(shape(&a, &v10), shape(&b, &v12), "{workload:?}");
        assert!(b.read().unwrap().check().unwrap().is_clean());
    }
}

#[test]
fn version_12_and_version_10_rooms_share_a_store() {
    let mixed = Store::in_memory().unwrap();
    let histories = [
        events(Workload::Hq, RoomVersion::V10),
        events(Workload::Forky, RoomVersion::V12),
        events(Workload::Many, RoomVersion::V10),
        // Another seed: event IDs do not depend on the room version.
        Generator::new(GenConfig {
            seed: 2,
            ..config(Workload::Hq, RoomVersion::V12)
        })
        .collect(),
    ];
    for history in &histories {
        let report = ingest_into(&mixed, history);
        assert_eq!((report.rejected, report.soft_failed), (0, 0));
    }
    // Each history's states are what it gets alone.
    for history in &histories {
        let alone = Store::in_memory().unwrap();
        ingest_into(&alone, history);
        assert_eq!(shape(&mixed, history), shape(&alone, history));
    }
    let rx = mixed.read().unwrap();
    assert!(rx.check().unwrap().is_clean());
}

/// For every event, in order: the IDs of the events of the state before it, sorted.
fn states_before(store: &Store, events: &[GenEvent]) -> Vec<Vec<String>> {
    let rx = store.read().unwrap();
    events
        .iter()
        .map(|e| {
            let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
            let state = rx.state_before(nid).unwrap();
            let mut ids: Vec<String> = state
                .entries()
                .iter()
                .map(|s| rx.event_id(s.event).unwrap())
                .collect();
            ids.sort_unstable();
            ids
        })
        .collect()
}

#[test]
fn version_12_merges_resolve_alike_by_the_ordered_walk_and_by_whole_chains() {
    // A new store keeps auth events older than their events, so the default resolver walks the
    // auth DAG in order, the conflicted subgraph too; whole maps build every chain.
    let history = events(Workload::Forky, RoomVersion::V12);
    let text: String = history.iter().map(|e| e.to_json_line() + "\n").collect();
    let (walked, whole) = (Store::in_memory().unwrap(), Store::in_memory().unwrap());
    let mut ordered = MatrixResolver::default();
    let options = IngestOptions::default();
    ingest(&walked, text.as_bytes(), options.clone(), &mut ordered).unwrap();
    let mut chains = MatrixResolver::whole_maps();
    ingest(&whole, text.as_bytes(), options, &mut chains).unwrap();
    assert!(walked.read().unwrap().auth_events_precede().unwrap());
    assert!(ordered.timings().len() > 20, "{}", ordered.timings().len());
    assert_eq!(
        states_before(&walked, &history),
        states_before(&whole, &history)
    );
}
