//! The store's contract: well-known NIDs, interning, deduplication, events and rooms,
//! persistence, and typed errors.

mod common;

use common::{ev, key, schema_version};
use roomstate::{
    DeltaEntry, Error, EventRecord, NidKind, RoomRecord, SnapshotNid, StateKeyNid, Store,
    StoreRead, StringKind, TypeNid,
};

#[test]
fn well_known_nids_are_preassigned() {
    let store = Store::in_memory().unwrap();
    let rx = store.read().unwrap();
    let expected = [
        ("m.room.create", TypeNid::CREATE),
        ("m.room.power_levels", TypeNid::POWER_LEVELS),
        ("m.room.join_rules", TypeNid::JOIN_RULES),
        ("m.room.third_party_invite", TypeNid::THIRD_PARTY_INVITE),
        ("m.room.member", TypeNid::MEMBER),
        ("m.room.redaction", TypeNid::REDACTION),
        ("m.room.history_visibility", TypeNid::HISTORY_VISIBILITY),
    ];
    for (i, (name, nid)) in expected.iter().enumerate() {
        assert_eq!(nid.get(), i as u64 + 1);
        assert_eq!(rx.type_nid(name).unwrap(), Some(*nid));
        assert_eq!(rx.event_type(*nid).unwrap(), *name);
    }
    assert_eq!(rx.state_key_nid("").unwrap(), Some(StateKeyNid::EMPTY));
    assert_eq!(StateKeyNid::EMPTY.get(), 1);
    assert!(rx.flatten(SnapshotNid::EMPTY).unwrap().is_empty());
}

#[test]
fn dynamic_nids_start_at_65536_and_intern_both_ways() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let ty = tx.get_or_create_type("m.room.topic").unwrap();
    assert_eq!(ty.get(), 65_536);
    assert_eq!(
        tx.get_or_create_type("m.room.member").unwrap(),
        TypeNid::MEMBER
    );
    let keys = tx
        .get_or_create_state_keys(&["@a:x", "@b:x", "@a:x", ""])
        .unwrap();
    assert_eq!(keys[0].get(), 65_536);
    assert_eq!(keys[1].get(), 65_537);
    assert_eq!(keys[2], keys[0]);
    assert_eq!(keys[3], StateKeyNid::EMPTY);
    let room = tx.get_or_create_room("!r:x").unwrap();
    assert_eq!(room.get(), 1);
    let event = tx.get_or_create_event("$e").unwrap();
    assert_eq!(event.get(), 1);
    tx.commit().unwrap();

    let rx = store.read().unwrap();
    assert_eq!(rx.state_key(keys[1]).unwrap(), "@b:x");
    assert_eq!(rx.room_id(room).unwrap(), "!r:x");
    assert_eq!(rx.event_id(event).unwrap(), "$e");
    assert_eq!(rx.event_nid("$nope").unwrap(), None);
    // Lookups never create.
    assert_eq!(rx.room_nid("!other:x").unwrap(), None);
    assert_eq!(store.read().unwrap().room_nid("!other:x").unwrap(), None);
}

#[test]
fn forbidden_strings_are_typed_errors() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let long = "x".repeat(256);
    match tx.get_or_create_room(&long) {
        Err(Error::InvalidId {
            kind: StringKind::RoomId,
            reason,
            ..
        }) => {
            assert!(reason.contains("255"))
        }
        other => panic!("expected InvalidId, got {other:?}"),
    }
    assert!(matches!(
        tx.get_or_create_event(""),
        Err(Error::InvalidId {
            kind: StringKind::EventId,
            ..
        })
    ));
    assert!(matches!(
        tx.get_or_create_room(""),
        Err(Error::InvalidId {
            kind: StringKind::RoomId,
            ..
        })
    ));
    assert!(matches!(
        tx.get_or_create_state_keys(&["ok", &long]),
        Err(Error::InvalidId {
            kind: StringKind::StateKey,
            ..
        })
    ));
    // A batch with one bad string interns none of them.
    assert_eq!(tx.state_key_nid("ok").unwrap(), None);
    assert!(tx.get_or_create_state_key(&"y".repeat(255)).is_ok());
}

#[test]
fn unknown_ids_are_typed_errors() {
    let store = Store::in_memory().unwrap();
    let rx = store.read().unwrap();
    let missing = SnapshotNid::new(999).unwrap();
    assert!(matches!(rx.flatten(missing), Err(Error::UnknownSnapshot(s)) if s == missing));
    assert!(matches!(
        rx.lookup(missing, key(5, 1)),
        Err(Error::UnknownSnapshot(_))
    ));
    assert!(matches!(
        rx.event_type(TypeNid::new(70_000).unwrap()),
        Err(Error::UnknownNid {
            kind: NidKind::EventType,
            nid: 70_000
        })
    ));
    assert!(matches!(rx.state_before(ev(3)), Err(Error::UnknownEvent(e)) if e == ev(3)));
    assert!(rx.event(ev(3)).unwrap().is_none());
    drop(rx);

    let mut tx = store.write().unwrap();
    assert!(matches!(
        tx.snapshot_from_delta(missing, vec![DeltaEntry::set(key(5, 1), ev(1))]),
        Err(Error::UnknownSnapshot(_))
    ));
    assert!(matches!(
        tx.snapshot_from_delta(
            SnapshotNid::EMPTY,
            vec![
                DeltaEntry::set(key(5, 1), ev(1)),
                DeltaEntry::remove(key(5, 1))
            ]
        ),
        Err(Error::InvalidState(_))
    ));
    // An event record must name interned IDs.
    let record = EventRecord::new(
        roomstate::RoomNid::new(1).unwrap(),
        TypeNid::MEMBER,
        None,
        SnapshotNid::EMPTY,
    );
    assert!(matches!(
        tx.put_event(ev(1), &record),
        Err(Error::UnknownNid {
            kind: NidKind::Event,
            nid: 1
        })
    ));
    assert!(matches!(
        tx.put_snapshot(&[roomstate::BlockRef {
            hash: roomstate::BlockHash(5),
            entries: 1
        }]),
        Err(Error::InvalidState(_))
    ));
}

fn rows(store: &Store) -> (u64, u64, u64) {
    let stats = store.read().unwrap().stats().unwrap();
    (
        stats.rows("blocks"),
        stats.rows("snapshots"),
        stats.rows("snapshot_hashes"),
    )
}

#[test]
fn same_state_twice_adds_no_rows() {
    // The seed's policy writes flat block lists, which `put_snapshot` can name again exactly.
    let store = Store::builder()
        .policy(roomstate::Dendrite::default())
        .in_memory()
        .unwrap();
    let delta = || {
        vec![
            DeltaEntry::set(key(5, 100), ev(1)),
            DeltaEntry::set(key(1, 1), ev(2)),
        ]
    };
    let mut tx = store.write().unwrap();
    let a = tx.snapshot_from_delta(SnapshotNid::EMPTY, delta()).unwrap();
    let b = tx
        .snapshot_from_delta(a, vec![DeltaEntry::set(key(5, 101), ev(3))])
        .unwrap();
    tx.commit().unwrap();
    let before = rows(&store);
    assert_eq!(before, (2, 3, 3), "two blocks; empty + two snapshots");

    let mut tx = store.write().unwrap();
    assert_eq!(
        tx.snapshot_from_delta(SnapshotNid::EMPTY, delta()).unwrap(),
        a
    );
    assert_eq!(
        tx.snapshot_from_delta(a, vec![DeltaEntry::set(key(5, 101), ev(3))])
            .unwrap(),
        b
    );
    let refs = tx.resolver().unwrap().blocks(b).unwrap();
    assert_eq!(tx.put_snapshot(&refs).unwrap(), b);
    assert_eq!(tx.put_snapshot(&refs).unwrap(), b);
    assert_eq!(tx.counts(), roomstate::WriteCounts::default());
    tx.commit().unwrap();
    assert_eq!(rows(&store), before);

    // The same full state, written as a whole, is also stored once.
    let mut tx = store.write().unwrap();
    let flat = tx.flatten(b).unwrap();
    let full1 = tx.snapshot_from_state(&flat).unwrap();
    let full2 = tx.snapshot_from_state(&flat).unwrap();
    assert_eq!(full1, full2);
    assert_eq!(tx.counts().snapshots, 1);
    tx.commit().unwrap();
    // An empty delta is the parent itself.
    let mut tx = store.write().unwrap();
    assert_eq!(tx.snapshot_from_delta(b, vec![]).unwrap(), b);
    assert_eq!(
        tx.snapshot_from_state(&roomstate::StateMap::default())
            .unwrap(),
        SnapshotNid::EMPTY
    );
}

#[test]
fn removing_every_key_gives_the_empty_state() {
    let store = Store::builder()
        .policy(roomstate::Dendrite { max_blocks: 1 })
        .in_memory()
        .unwrap();
    let mut tx = store.write().unwrap();
    let a = tx
        .snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(key(5, 9), ev(1))])
        .unwrap();
    let b = tx
        .snapshot_from_delta(a, vec![DeltaEntry::remove(key(5, 9))])
        .unwrap();
    assert_eq!(b, SnapshotNid::EMPTY);
}

#[test]
fn events_and_rooms_round_trip() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let room = tx.get_or_create_room("!r:x").unwrap();
    let create = tx.get_or_create_event("$create").unwrap();
    let msg = tx.get_or_create_event("$msg").unwrap();
    let mut rec = EventRecord::new(
        room,
        TypeNid::CREATE,
        Some(StateKeyNid::EMPTY),
        SnapshotNid::EMPTY,
    );
    rec.auth_events = vec![];
    tx.put_event(create, &rec).unwrap();
    let after_create = tx.state_after_snapshot(create).unwrap();
    let ty = tx.get_or_create_type("m.room.message").unwrap();
    let mut msg_rec = EventRecord::new(room, ty, None, after_create);
    msg_rec.prev_events = vec![create];
    tx.put_event(msg, &msg_rec).unwrap();
    assert_eq!(tx.state_after_snapshot(msg).unwrap(), after_create);
    let room_rec = RoomRecord {
        version: "10".into(),
        current_state: after_create,
        latest_events: vec![msg],
        event_count: 2,
    };
    tx.put_room(room, &room_rec).unwrap();
    tx.commit().unwrap();

    let rx = store.read().unwrap();
    assert_eq!(rx.event(msg).unwrap(), Some(msg_rec));
    assert_eq!(rx.room(room).unwrap(), Some(room_rec));
    let after = rx.state_after(create).unwrap();
    assert_eq!(
        after.get(roomstate::StateKey::new(
            TypeNid::CREATE,
            StateKeyNid::EMPTY
        )),
        Some(create)
    );
    assert_eq!(rx.state_before(msg).unwrap(), after);
    assert_eq!(rx.state_after(msg).unwrap(), after);

    // A rejected state event changes nothing.
    drop(rx);
    let mut tx = store.write().unwrap();
    let bad = tx.get_or_create_event("$bad").unwrap();
    let key = tx.get_or_create_state_key("@m:x").unwrap();
    let mut rejected = EventRecord::new(room, TypeNid::MEMBER, Some(key), after_create);
    rejected.rejected = true;
    tx.put_event(bad, &rejected).unwrap();
    assert_eq!(tx.state_after_snapshot(bad).unwrap(), after_create);
}

#[test]
fn aborted_and_dropped_writes_leave_nothing() {
    let store = Store::in_memory().unwrap();
    let before = rows(&store);
    let mut tx = store.write().unwrap();
    tx.get_or_create_room("!r:x").unwrap();
    tx.snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(key(5, 9), ev(1))])
        .unwrap();
    tx.abort().unwrap();
    let mut tx = store.write().unwrap();
    tx.snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(key(5, 9), ev(1))])
        .unwrap();
    drop(tx);
    assert_eq!(rows(&store), before);
    assert_eq!(store.read().unwrap().room_nid("!r:x").unwrap(), None);
}

/// A write transaction that does not commit leaves no NID behind, in the tables or in any cache
/// of the writers after it: its NIDs are handed out again, and its strings are new.
#[test]
fn nids_of_an_uncommitted_transaction_are_not_remembered() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    let a = tx.get_or_create_event("$a").unwrap();
    tx.commit().unwrap();
    // Aborted, then dropped: each time the next transaction hands the same NID to another
    // string, and the string of the lost transaction is new again.
    let mut next = None;
    for (lost, other, aborted) in [("$aborted", "$b", true), ("$dropped", "$c", false)] {
        let mut tx = store.write().unwrap();
        let nid = tx.get_or_create_event(lost).unwrap();
        if aborted {
            tx.abort().unwrap();
        } else {
            drop(tx);
        }
        let mut tx = store.write().unwrap();
        assert_eq!(tx.get_or_create_event("$a").unwrap(), a);
        let reused = tx.get_or_create_event(other).unwrap();
        assert_eq!(reused, nid, "the lost NID is handed out again");
        let again = tx.get_or_create_event(lost).unwrap();
        assert!(again > reused, "{lost} kept {again}, a NID it lost");
        tx.commit().unwrap();
        next = Some(again);
    }
    let rx = store.read().unwrap();
    assert_eq!(rx.event_id(next.unwrap()).unwrap(), "$dropped");
    assert!(rx.check().unwrap().is_clean());
}

/// Many strings interned over two transactions keep their one NID each, in later transactions
/// and after a reopen, and `check` passes inside a write transaction (whose tables open once at
/// a time).
#[test]
fn strings_interned_over_transactions_and_a_reopen_keep_their_nids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rooms.redb");
    let ids: Vec<String> = (0..70_000).map(|i| format!("$e{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (first_half, second_half) = refs.split_at(35_000);
    let nids = {
        let store = Store::open(&path).unwrap();
        let mut tx = store.write().unwrap();
        let mut nids = tx.get_or_create_events(first_half).unwrap();
        tx.commit().unwrap();
        let mut tx = store.write().unwrap();
        nids.extend(tx.get_or_create_events(second_half).unwrap());
        assert_eq!(tx.get_or_create_events(&refs).unwrap(), nids);
        tx.commit().unwrap();
        let mut tx = store.write().unwrap();
        assert_eq!(tx.get_or_create_events(&refs).unwrap(), nids);
        nids
    };
    let store = Store::open(&path).unwrap();
    let mut tx = store.write().unwrap();
    assert_eq!(tx.get_or_create_events(&refs).unwrap(), nids);
    let distinct: std::collections::BTreeSet<_> = nids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    assert!(tx.check().unwrap().is_clean());
}

#[test]
fn state_persists_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rooms.redb");
    let (snap, member) = {
        let store = Store::open(&path).unwrap();
        let mut tx = store.write().unwrap();
        let member = tx.get_or_create_state_key("@alice:x").unwrap();
        let join = tx.get_or_create_event("$join").unwrap();
        let k = roomstate::StateKey::new(TypeNid::MEMBER, member);
        let snap = tx
            .snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(k, join)])
            .unwrap();
        tx.commit().unwrap();
        (snap, member)
    };
    let store = Store::open(&path).unwrap();
    let rx = store.read().unwrap();
    assert_eq!(rx.state_key(member).unwrap(), "@alice:x");
    let flat = rx.flatten(snap).unwrap();
    assert_eq!(flat.len(), 1);
    assert_eq!(rx.event_id(flat.entries()[0].event).unwrap(), "$join");
    drop(rx);
    // Reopening does not re-seed: counters continue.
    let mut tx = store.write().unwrap();
    assert_eq!(
        tx.get_or_create_state_key("@bob:x").unwrap().get(),
        member.get() + 1
    );
}

#[test]
fn compact_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("c.redb")).unwrap();
    let mut tx = store.write().unwrap();
    let s = tx
        .snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(key(5, 9), ev(1))])
        .unwrap();
    tx.commit().unwrap();
    store.compact().unwrap();
    assert_eq!(
        store.read().unwrap().lookup(s, key(5, 9)).unwrap(),
        Some(ev(1))
    );
}

#[test]
fn every_policy_deduplicates_a_repeated_derivation() {
    for name in roomstate::policy::POLICY_NAMES {
        let store = Store::builder()
            .boxed_policy(roomstate::policy::by_name(name).unwrap())
            .in_memory()
            .unwrap();
        let mut tx = store.write().unwrap();
        let mut snap = SnapshotNid::EMPTY;
        for i in 1..=100 {
            snap = tx
                .snapshot_from_delta(snap, vec![DeltaEntry::set(key(5, i), ev(i))])
                .unwrap();
        }
        let counts = tx.counts();
        let mut replay = SnapshotNid::EMPTY;
        for i in 1..=100 {
            replay = tx
                .snapshot_from_delta(replay, vec![DeltaEntry::set(key(5, i), ev(i))])
                .unwrap();
        }
        assert_eq!(
            replay, snap,
            "{name}: the same history gives the same snapshot"
        );
        assert_eq!(tx.counts(), counts, "{name}: and writes nothing new");
    }
}

#[test]
fn a_policy_cannot_commit_a_chain_too_long_to_read() {
    // Synapse's rule with a limit past what readers accept: the store flattens instead.
    let store = Store::builder()
        .policy(roomstate::Synapse { max_hops: 5_000 })
        .in_memory()
        .unwrap();
    let mut tx = store.write().unwrap();
    let mut snap = SnapshotNid::EMPTY;
    for i in 1..=1_100 {
        snap = tx
            .snapshot_from_delta(snap, vec![DeltaEntry::set(key(5, i), ev(i))])
            .unwrap();
    }
    tx.commit().unwrap();
    let rx = store.read().unwrap();
    assert_eq!(rx.flatten(snap).unwrap().len(), 1_100);
    assert!(rx.resolver().unwrap().chain(snap).unwrap().len() <= 1_024);
}

#[test]
fn the_block_cache_is_shared_bounded_and_survives_collection() {
    let state = roomstate::StateMap::from_entries(
        (1..=2_000)
            .map(|k| roomstate::StateEntry {
                key: key(5, k),
                event: ev(k),
            })
            .collect(),
    );
    for budget in [0, 1 << 20] {
        let store = Store::builder()
            .block_cache_bytes(budget)
            .in_memory()
            .unwrap();
        let mut tx = store.write().unwrap();
        let snap = tx.snapshot_from_state(&state).unwrap();
        let changed = tx
            .snapshot_from_delta(snap, vec![DeltaEntry::remove(key(5, 7))])
            .unwrap();
        tx.commit().unwrap();
        for _ in 0..2 {
            let rx = store.read().unwrap();
            assert_eq!(rx.flatten(snap).unwrap(), state);
            assert_eq!(rx.lookup(changed, key(5, 7)).unwrap(), None);
            assert_eq!(rx.lookup(changed, key(5, 8)).unwrap(), Some(ev(8)));
        }
        let held = store.block_cache().held_bytes();
        if budget == 0 {
            assert_eq!(held, 0);
        } else {
            // The 2,000-entry block (packed: two bytes of state key and two of event an entry)
            // and the one-entry delta, shared by both transactions.
            assert!(held > 2_000 * 4 && held <= budget, "{held}");
        }
        // Nothing names either snapshot, so a collection deletes them and their blocks. Snapshot
        // records are not cached, so the snapshots are gone for readers too.
        let mut tx = store.write().unwrap();
        tx.collect_garbage().unwrap();
        tx.commit().unwrap();
        assert!(matches!(
            store.read().unwrap().flatten(snap),
            Err(Error::UnknownSnapshot(s)) if s == snap
        ));
        // The same state written again is the same block under the same hash: the cached bytes
        // are still right, and the file holds the block again.
        let mut tx = store.write().unwrap();
        let again = tx.snapshot_from_state(&state).unwrap();
        tx.commit().unwrap();
        let rx = store.read().unwrap();
        assert_eq!(rx.flatten(again).unwrap(), state);
        assert_eq!(rx.stats().unwrap().rows("blocks"), 1);
    }
}

/// Stores of the schemas before outcomes were kept (version 2: no `outcomes` table), before
/// outliers were (version 3: no `outliers` table), before JSON was compressed (version 4: no
/// `json_dictionaries` table), before blocks were packed (version 5) and before auth-chain links
/// another auth event reaches were left out (version 6) and before event IDs were keyed by 64
/// bits (version 7, and all before it) are upgraded in place when opened: their events read as
/// accepted and in their rooms' timelines.
#[test]
fn schema_2_to_7_stores_are_upgraded_when_opened() {
    for old in [2, 3, 4, 5, 6, 7] {
        upgrade_from(old);
    }
}

/// A schema-8 store (event records in bincode, JSON rows untemplated) is read as it is, and
/// moves to 9: every event's record and JSON read back the same, `check` finds nothing, and the
/// events stored next are written in the new layouts.
#[test]
fn a_schema_8_store_is_read_and_moves_to_9() {
    use roomstate::ingest::{IngestOptions, Refuse, ingest};
    use roomstate::workload::{GenConfig, GenEvent, Generator, Workload};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eight.redb");
    let events: Vec<GenEvent> = Generator::new(GenConfig {
        members: 30,
        state_events: 60,
        ..GenConfig::new(Workload::Hq)
    })
    .collect();
    let (first, rest) = events.split_at(events.len() / 2);
    let text = |events: &[GenEvent]| -> String {
        events.iter().map(|e| e.to_json_line() + "\n").collect()
    };
    let store = Store::open(&path).unwrap();
    ingest(
        &store,
        text(first).as_bytes(),
        IngestOptions::default(),
        Refuse,
    )
    .unwrap();
    let records: Vec<_> = {
        let rx = store.read().unwrap();
        first
            .iter()
            .map(|e| {
                let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
                (nid, rx.event(nid).unwrap().unwrap())
            })
            .collect()
    };
    drop(store);
    common::write_as_schema_8(&path);
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_write().unwrap();
    common::set_schema_version(&tx, 8);
    tx.commit().unwrap();
    drop(db);
    assert!(
        common::table_rows(&path, "events")
            .iter()
            .all(|(_, r)| r[0] == 1)
    );

    let store = Store::open(&path).unwrap();
    {
        let rx = store.read().unwrap();
        for ((nid, record), e) in records.iter().zip(first) {
            assert_eq!(rx.event(*nid).unwrap().as_ref(), Some(record));
            assert_eq!(rx.event_json(*nid).unwrap(), Some(e.to_json_line()));
        }
        assert!(rx.check().unwrap().is_clean());
    }
    ingest(
        &store,
        text(rest).as_bytes(),
        IngestOptions::default(),
        Refuse,
    )
    .unwrap();
    let rx = store.read().unwrap();
    for e in &events {
        let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
        assert_eq!(rx.event_json(nid).unwrap(), Some(e.to_json_line()));
    }
    assert!(rx.check().unwrap().is_clean());
    drop(rx);
    drop(store);
    assert_eq!(schema_version(&path), Some(9));
    let new = events.len() - first.len();
    let records = common::table_rows(&path, "events");
    assert_eq!(records.iter().filter(|(_, r)| r[0] == 2).count(), new);
    let json = common::table_rows(&path, "event_json");
    assert_eq!(json.iter().filter(|(_, r)| r[0] == 1).count(), new);
}

fn upgrade_from(old: u64) {
    use redb::TableDefinition;
    const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    const OUTCOMES: TableDefinition<u64, &[u8]> = TableDefinition::new("outcomes");
    const OUTLIERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("outliers");
    const DICTIONARIES: TableDefinition<u32, &[u8]> = TableDefinition::new("json_dictionaries");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let lines = concat!(
        r#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"origin_server_ts":1,"content":{"creator":"@a:x","room_version":"10"}}"#,
        "\n",
    );
    let store = Store::open(&path).unwrap();
    let options = roomstate::ingest::IngestOptions::default();
    roomstate::ingest::ingest(&store, lines.as_bytes(), options, roomstate::ingest::Refuse)
        .unwrap();
    drop(store);
    // Take the store back to the old schema, as an older build wrote it.
    common::write_as_schema_8(&path);
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_write().unwrap();
    if old < 5 {
        assert!(tx.delete_table(DICTIONARIES).unwrap());
    }
    if old < 4 {
        assert!(tx.delete_table(OUTLIERS).unwrap());
    }
    if old == 2 {
        assert!(tx.delete_table(OUTCOMES).unwrap());
    }
    common::key_event_ids_by_string(&tx);
    tx.open_table(META)
        .unwrap()
        .insert(b"schema_version".as_slice(), old)
        .unwrap();
    tx.commit().unwrap();
    drop(db);

    let store = Store::open(&path).unwrap();
    let rx = store.read().unwrap();
    let create = rx.event_nid("$c").unwrap().unwrap();
    assert_eq!(
        rx.event_outcome(create).unwrap(),
        Some(roomstate::EventOutcome::Accepted)
    );
    assert!(!rx.is_outlier(create).unwrap());
    assert!(rx.check().unwrap().is_clean());
    drop(rx);
    drop(store);
    assert_eq!(schema_version(&path), Some(9));
}

/// A store from a newer build is refused with the version it names, and left as it was.
#[test]
fn a_store_of_a_newer_schema_is_refused_by_its_version() {
    use redb::TableDefinition;
    const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.redb");
    drop(Store::open(&path).unwrap());
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert(b"schema_version".as_slice(), 10)
        .unwrap();
    tx.commit().unwrap();
    drop(db);

    match Store::open(&path) {
        Err(error @ roomstate::Error::UnsupportedSchema(10)) => {
            assert_eq!(error.to_string(), "unsupported schema version 10");
        }
        other => panic!(
            "expected UnsupportedSchema(10), got {:?}",
            other.map(|_| ())
        ),
    }
    assert_eq!(schema_version(&path), Some(10));
}

#[test]
fn a_file_already_open_is_in_use_until_its_store_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let first = Store::open(&path).unwrap();
    assert!(matches!(Store::open(&path), Err(roomstate::Error::InUse)));
    drop(first);
    Store::open(&path).unwrap();
}

#[test]
fn files_that_are_not_stores_are_refused_and_left_alone() {
    use redb::{ReadableDatabase, TableDefinition};
    let dir = tempfile::tempdir().unwrap();
    let foreign = |e: roomstate::Result<Store>| match e {
        Err(roomstate::Error::ForeignFile(what)) => what,
        other => panic!("{other:?}"),
    };
    assert_eq!(foreign(Store::open(dir.path())), "a directory");
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database at all\n").unwrap();
    assert!(foreign(Store::open(&text)).starts_with("not a redb database"));
    assert_eq!(std::fs::read(&text).unwrap(), b"not a database at all\n");
    // Another program's redb file: its table is left as it was.
    let other = dir.path().join("other.redb");
    let table: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
    {
        let db = redb::Database::create(&other).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(table)
            .unwrap()
            .insert(1, b"theirs".as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(foreign(Store::open(&other)).contains("other tables (t)"));
    let db = redb::Database::open(&other).unwrap();
    let rx = db.begin_read().unwrap();
    assert_eq!(rx.list_tables().unwrap().count(), 1);
    let t = rx.open_table(table).unwrap();
    assert_eq!(
        redb::ReadableTable::get(&t, 1).unwrap().unwrap().value(),
        b"theirs"
    );
    // An empty file is a new store.
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    assert!(Store::open(&empty).is_ok());
}
