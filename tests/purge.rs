//! Purging rooms and collecting garbage: what a purge deletes, what it must leave alone, and
//! that the reference counts stay exact throughout.

mod common;

use common::{NamedState, StringNames, describe_difference};
use roomstate::ingest::{IngestOptions, OnBadLine, TrivialMerge, ingest};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{Error, RoomNid, Store, StoreRead};
use std::collections::BTreeMap;

fn lines(workload: Workload, seed: u64, members: u64, states: u64) -> Vec<String> {
    let config = GenConfig {
        workload,
        seed,
        members,
        state_events: states,
        messages_per_state: 1,
        room_version: Default::default(),
    };
    Generator::new(config).map(|e| e.to_json_line()).collect()
}

/// An hq room, a forky one and five small ones, dealt out line by line so every batch mixes rooms.
fn mixed_history() -> String {
    let sources = [
        lines(Workload::Hq, 11, 80, 300),
        lines(Workload::Forky, 12, 40, 200),
        lines(Workload::Many, 13, 5, 20),
    ];
    let longest = sources.iter().map(Vec::len).max().unwrap_or(0);
    let mut text = String::new();
    for i in 0..longest {
        for source in &sources {
            if let Some(l) = source.get(i) {
                text.push_str(l);
                text.push('\n');
            }
        }
    }
    text
}

fn ingest_into(store: &Store, text: &str) {
    let opts = IngestOptions {
        batch_size: 113,
        // Forky holds conflicts that the trivial resolver refuses.
        on_bad_line: OnBadLine::Skip,
        ..IngestOptions::default()
    };
    ingest(store, text.as_bytes(), opts, TrivialMerge).unwrap();
}

fn room_ids(store: &Store) -> Vec<String> {
    let rx = store.read().unwrap();
    let mut ids: Vec<String> = mixed_history()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["room_id"].to_string())
        .map(|s| s.trim_matches('"').to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert!(ids.iter().all(|id| rx.room_nid(id).unwrap().is_some()));
    ids
}

/// Every event of a room with the state before it, by strings.
fn history(store: &Store, room: RoomNid) -> BTreeMap<String, NamedState> {
    let rx = store.read().unwrap();
    let mut names = StringNames::default();
    rx.room_events(room)
        .unwrap()
        .into_iter()
        .map(|e| {
            let state = rx.state_before(e).unwrap();
            (rx.event_id(e).unwrap(), names.state(&rx, &state))
        })
        .collect()
}

fn assert_clean(store: &Store, what: &str) {
    let report = store.read().unwrap().check().unwrap();
    assert!(report.is_clean(), "{what}: {:?}", report.problems);
}

fn purge(store: &Store, room: RoomNid) -> roomstate::Purged {
    let mut tx = store.write().unwrap();
    let purged = tx.purge_room(room).unwrap();
    tx.commit().unwrap();
    purged
}

#[test]
fn purging_rooms_one_by_one_leaves_the_others_exactly_as_they_were() {
    for policy in roomstate::policy::POLICY_NAMES {
        let store = Store::builder()
            .boxed_policy(roomstate::policy::by_name(policy).unwrap())
            .in_memory()
            .unwrap();
        ingest_into(&store, &mixed_history());
        assert_clean(&store, policy);
        let ids = room_ids(&store);
        let rx = store.read().unwrap();
        let nids: Vec<RoomNid> = ids
            .iter()
            .map(|id| rx.room_nid(id).unwrap().unwrap())
            .collect();
        drop(rx);
        let mut before: Vec<_> = nids.iter().map(|&r| history(&store, r)).collect();

        for (i, &room) in nids.iter().enumerate() {
            let events = store.read().unwrap().room_events(room).unwrap();
            let purged = purge(&store, room);
            let what = format!("{policy}: after purging room {}", ids[i]);
            assert_eq!(purged.events, events.len() as u64, "{what}");
            assert!(purged.collected.snapshots > 0, "{what}");
            assert_clean(&store, &what);
            let rx = store.read().unwrap();
            assert!(rx.room(room).unwrap().is_none(), "{what}");
            assert!(rx.room_events(room).unwrap().is_empty(), "{what}");
            assert!(rx.members(room, None).unwrap().is_empty(), "{what}");
            for e in &events {
                assert!(rx.event(*e).unwrap().is_none(), "{what}");
                assert!(rx.event_json(*e).unwrap().is_none(), "{what}");
            }
            drop(rx);
            before[i].clear();
            for (j, &other) in nids.iter().enumerate().skip(i + 1) {
                let now = history(&store, other);
                for (event, state) in &before[j] {
                    let got = &now[event];
                    assert!(
                        state == got,
                        "{what}: state before {event} changed:\n{}",
                        describe_difference(state, got)
                    );
                }
            }
        }
        let stats = store.read().unwrap().table_sizes().unwrap();
        for table in [
            "blocks",
            "snapshot_refs",
            "block_refs",
            "unreferenced_snapshots",
            "unreferenced_blocks",
            "events",
            "event_json",
            "event_keys",
            "rooms",
            "membership",
            "user_rooms",
            "room_events",
            "outcomes",
            "outliers",
            "auth_positions",
            "auth_chains",
            "auth_links",
            "auth_links_into",
        ] {
            let rows = stats.iter().find(|t| t.name == table).unwrap().rows;
            assert_eq!(rows, 0, "{policy}: {table} after purging every room");
        }
        // Rooms' auth chains never cross, so no purge abandoned the index.
        assert!(store.read().unwrap().auth_index_complete().unwrap());
        let snapshots = stats.iter().find(|t| t.name == "snapshots").unwrap().rows;
        assert_eq!(snapshots, 1, "{policy}: only the empty snapshot stays");
    }
}

#[test]
fn a_purged_room_ingests_again_to_the_same_states() {
    let text = lines(Workload::Hq, 21, 50, 150).join("\n") + "\n";
    let store = Store::in_memory().unwrap();
    ingest_into(&store, &text);
    let id =
        serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let nid = store.read().unwrap().room_nid(&id).unwrap().unwrap();
    let first = history(&store, nid);
    purge(&store, nid);
    ingest_into(&store, &text);
    let nid = store.read().unwrap().room_nid(&id).unwrap().unwrap();
    assert_eq!(history(&store, nid), first);
    assert_clean(&store, "after ingesting again");
}

#[test]
fn purging_an_unknown_room_is_a_typed_error_and_writes_nothing() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let room = tx.get_or_create_room("!never:x").unwrap();
    match tx.purge_room(room) {
        Err(Error::UnknownRoom(r)) => assert_eq!(r, room),
        other => panic!("expected UnknownRoom, got {other:?}"),
    }
}

#[test]
fn compact_after_purge_returns_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let mut store = Store::open(&path).unwrap();
    let text = lines(Workload::Hq, 31, 300, 1500).join("\n") + "\n";
    ingest_into(&store, &text);
    while store.compact().unwrap() {}
    let full = std::fs::metadata(&path).unwrap().len();
    let id =
        serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
    let nid = store.read().unwrap().room_nid(&id).unwrap().unwrap();
    purge(&store, nid);
    while store.compact().unwrap() {}
    let empty = std::fs::metadata(&path).unwrap().len();
    assert!(
        empty * 4 < full,
        "file of {full} bytes only shrank to {empty} after purging its one room"
    );
    assert_clean(&store, "after compacting");
}

#[test]
fn garbage_collection_deletes_only_what_nothing_references() {
    use roomstate::block::DeltaEntry;
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let ty = tx.get_or_create_type("m.room.member").unwrap();
    let keys = tx.get_or_create_state_keys(&["@a:x", "@b:x"]).unwrap();
    let evs = tx.get_or_create_events(&["$1", "$2"]).unwrap();
    let room = tx.get_or_create_room("!r:x").unwrap();
    let set = |k: usize, e: usize| DeltaEntry::set(roomstate::StateKey::new(ty, keys[k]), evs[e]);
    let one = tx
        .snapshot_from_delta(roomstate::SnapshotNid::EMPTY, vec![set(0, 0)])
        .unwrap();
    let two = tx.snapshot_from_delta(one, vec![set(1, 1)]).unwrap();
    let record = roomstate::RoomRecord {
        version: "10".into(),
        current_state: two,
        latest_events: vec![],
        event_count: 0,
    };
    tx.put_room(room, &record).unwrap();
    let stray = tx.put_block(&[set(1, 0)]).unwrap();
    let collected = tx.collect_garbage().unwrap();
    // `one` is kept only if the policy made it `two`'s parent; the stray block always goes.
    assert!(collected.blocks >= 1, "{collected:?}");
    assert!(matches!(
        tx.put_snapshot(&[stray]),
        Err(Error::InvalidState(_))
    ));
    tx.commit().unwrap();
    assert_clean(&store, "after collecting the stray block");
    assert_eq!(store.read().unwrap().flatten(two).unwrap().len(), 2);

    // Moving the room on releases the old state and, with it, whatever only it used.
    let mut tx = store.write().unwrap();
    let record = roomstate::RoomRecord {
        current_state: roomstate::SnapshotNid::EMPTY,
        ..record
    };
    tx.put_room(room, &record).unwrap();
    let collected = tx.collect_garbage().unwrap();
    assert!(
        collected.snapshots >= 1 && collected.blocks >= 1,
        "{collected:?}"
    );
    tx.commit().unwrap();
    assert_clean(&store, "after releasing the room's state");
    assert!(matches!(
        store.read().unwrap().flatten(two),
        Err(Error::UnknownSnapshot(_))
    ));
}

#[test]
fn purging_events_another_room_names_as_auth_events_abandons_the_auth_index() {
    let store = Store::in_memory().unwrap();
    ingest_into(&store, &(lines(Workload::Hq, 31, 20, 40).join("\n") + "\n"));
    let rx = store.read().unwrap();
    let room = rx.room_nid("!hq:server0.test").unwrap().unwrap();
    let create = rx.room_events(room).unwrap()[0];
    drop(rx);
    // An event of another room naming the first room's create event: no valid event does,
    // but records are what the index follows.
    let mut tx = store.write().unwrap();
    let other = tx.get_or_create_room("!other:x").unwrap();
    let stray = tx.get_or_create_event("$stray").unwrap();
    let mut record = roomstate::EventRecord::new(
        other,
        roomstate::TypeNid::CREATE,
        Some(roomstate::StateKeyNid::EMPTY),
        roomstate::SnapshotNid::EMPTY,
    );
    record.auth_events = vec![create];
    tx.put_event(stray, &record).unwrap();
    assert!(tx.auth_index_complete().unwrap());
    assert!(tx.is_in_auth_chain(create, stray).unwrap());
    tx.commit().unwrap();
    purge(&store, room);
    let rx = store.read().unwrap();
    assert!(!rx.auth_index_complete().unwrap());
    assert!(!rx.is_in_auth_chain(create, stray).unwrap());
}

/// A count found too low while a purge writes its count moves back (a damaged file) is a
/// corrupt-store error, and the transaction then refuses to commit: the moves after the bad one
/// were never written, so committing would leave the counts half moved.
#[test]
fn a_count_too_low_for_a_purge_poisons_its_transaction() {
    use redb::ReadableTable;
    const SNAPSHOT_REFS: redb::TableDefinition<u64, u64> =
        redb::TableDefinition::new("snapshot_refs");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let text = lines(Workload::Hq, 21, 20, 40).join("\n");
    ingest_into(&Store::open(&path).unwrap(), &text);
    // The most referenced snapshot (a state before several events) now counts one reference.
    let snapshot = {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let nid = {
            let mut refs = tx.open_table(SNAPSHOT_REFS).unwrap();
            let (nid, count) = refs
                .range::<u64>(..)
                .unwrap()
                .map(|row| row.map(|(k, v)| (k.value(), v.value())).unwrap())
                .max_by_key(|&(_, count)| count)
                .unwrap();
            assert!(count > 1, "snapshot {nid} counts {count}");
            refs.insert(nid, 1).unwrap();
            nid
        };
        tx.commit().unwrap();
        nid
    };
    let store = Store::open(&path).unwrap();
    let room = store
        .read()
        .unwrap()
        .room_nid("!hq:server0.test")
        .unwrap()
        .unwrap();
    let mut tx = store.write().unwrap();
    match tx.purge_room(room) {
        Err(Error::Corrupt { table, key, .. }) => {
            assert_eq!((table, key), ("snapshot_refs", snapshot.to_string()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(tx.commit(), Err(Error::Poisoned(_))));
    // Nothing of the purge was committed.
    assert!(store.read().unwrap().room(room).unwrap().is_some());
}
