//! Event JSON at rest: compressed with a dictionary trained from the store's own events, and
//! read back byte for byte, through every reader, across retraining and from older stores.

mod common;

use roomstate::ingest::{IngestOptions, MatrixResolver, ingest};
use roomstate::workload::{GenConfig, GenEvent, Generator, Workload};
use roomstate::{Store, StoreBuilder, StoreRead};

fn events(workload: Workload) -> Vec<GenEvent> {
    let config = GenConfig {
        members: if workload == Workload::Many { 40 } else { 400 },
        state_events: if workload == Workload::Many {
            20
        } else {
            1_000
        },
        messages_per_state: 2,
        ..GenConfig::new(workload)
    };
    Generator::new(config).collect()
}

fn ingest_into(store: &Store, events: &[GenEvent]) {
    let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
    let options = IngestOptions {
        batch_size: 500,
        trust: true,
        ..IngestOptions::default()
    };
    ingest(store, text.as_bytes(), options, MatrixResolver::default()).unwrap();
}

/// Every event's JSON reads back exactly as it was given.
fn assert_json_as_given(store: &Store, events: &[GenEvent]) {
    let rx = store.read().unwrap();
    for e in events {
        let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
        let json = rx.event_json(nid).unwrap().unwrap();
        assert_eq!(json, e.to_json_line(), "{}", e.event_id);
    }
}

fn json_bytes(store: &Store) -> (u64, u64) {
    let stats = store.read().unwrap().stats().unwrap();
    let json = stats.table("event_json").unwrap().stored_bytes;
    (json, stats.rows("json_dictionaries"))
}

#[test]
fn json_is_compressed_once_trained_and_reads_back_exactly() {
    for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
        let events = events(workload);
        let raw: u64 = events.iter().map(|e| e.to_json_line().len() as u64).sum();
        let store = StoreBuilder::default()
            .json_training(&[500])
            .in_memory()
            .unwrap();
        ingest_into(&store, &events);
        assert_json_as_given(&store, &events);
        let (stored, dictionaries) = json_bytes(&store);
        assert_eq!(dictionaries, 1, "{workload:?}");
        // Generated events are about 40% random event IDs, which no dictionary shrinks.
        assert!(
            stored * 10 < raw * 6,
            "{workload:?}: {stored} bytes stored of {raw}"
        );
        assert!(store.read().unwrap().check().unwrap().is_clean());
    }
}

/// Untrained, rows keep their JSON uncompressed, but the event IDs it quotes are taken out and
/// named by NID: every row is templated, holds the JSON's other text as it is, and none holds its
/// own event's ID.
#[test]
fn a_store_that_trains_nothing_keeps_json_raw_but_its_event_ids_as_nids() {
    let events = events(Workload::Hq);
    let raw_bytes: u64 = events.iter().map(|e| e.to_json_line().len() as u64).sum();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = StoreBuilder::default()
        .json_training(&[])
        .open(&path)
        .unwrap();
    ingest_into(&store, &events);
    assert_json_as_given(&store, &events);
    let (stored, dictionaries) = json_bytes(&store);
    assert_eq!(dictionaries, 0);
    // Each row's stored bytes include its 8-byte key; each event quotes at least its own ID.
    assert!(
        stored + 40 * events.len() as u64 <= raw_bytes + 8 * events.len() as u64,
        "{stored} bytes stored of {raw_bytes}"
    );
    drop(store);
    let rows = raw::rows(&path);
    assert_eq!(rows.len(), events.len());
    for ((_, row), e) in rows.iter().zip(&events) {
        assert_eq!(row[0], 0x01, "{}", e.event_id);
        let has = |needle: &[u8]| row.windows(needle.len()).any(|w| w == needle);
        assert!(has(b"\"room_id\":\""), "{}", e.event_id);
        assert!(!has(e.event_id.as_bytes()), "{}", e.event_id);
    }
}

/// An event may quote an event of another room (here, in its content): that ID stays in its row
/// as it is, so the row still reads once the other room is purged.
#[test]
fn an_event_id_of_another_room_stays_in_the_row() {
    let mut events = events(Workload::Many);
    let first_room = events[0].room_id.clone();
    let quoted = events[0].event_id.clone();
    let quoting = events
        .iter()
        .position(|e| e.room_id != first_room && e.event_type == "m.room.message")
        .unwrap();
    let content = &mut events[quoting].content;
    content["m.relates_to"] = serde_json::json!({ "rel_type": "m.reference", "event_id": quoted });
    let store = Store::in_memory().unwrap();
    ingest_into(&store, &events);
    assert_json_as_given(&store, &events);
    let mut tx = store.write().unwrap();
    let room = tx.room_nid(&first_room).unwrap().unwrap();
    tx.purge_room(room).unwrap();
    tx.commit().unwrap();
    let rx = store.read().unwrap();
    let nid = rx.event_nid(&events[quoting].event_id).unwrap().unwrap();
    let json = rx.event_json(nid).unwrap().unwrap();
    assert_eq!(json, events[quoting].to_json_line());
    assert!(json.contains(&quoted));
    assert_eq!(rx.event_nid(&quoted).unwrap(), None);
    assert!(rx.check().unwrap().is_clean());
}

/// Rows compressed with an earlier dictionary still read after a later one takes over, and in a
/// store reopened with training turned off.
#[test]
fn retraining_keeps_older_rows_readable() {
    let events = events(Workload::Hq);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = StoreBuilder::default()
        .json_training(&[300, 1_500])
        .open(&path)
        .unwrap();
    ingest_into(&store, &events);
    assert_eq!(json_bytes(&store).1, 2);
    assert_json_as_given(&store, &events);
    drop(store);
    let store = StoreBuilder::default()
        .json_training(&[])
        .open(&path)
        .unwrap();
    assert_json_as_given(&store, &events);
    assert!(store.read().unwrap().check().unwrap().is_clean());
}

mod raw {
    //! The file underneath, through redb.
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    pub const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    pub const EVENT_JSON: TableDefinition<u64, &[u8]> = TableDefinition::new("event_json");
    pub const DICTIONARIES: TableDefinition<u32, &[u8]> = TableDefinition::new("json_dictionaries");

    /// Every JSON row, by event NID, as stored.
    pub fn rows(path: &std::path::Path) -> Vec<(u64, Vec<u8>)> {
        let db = redb::Database::open(path).unwrap();
        let rx = db.begin_read().unwrap();
        let table = rx.open_table(EVENT_JSON).unwrap();
        table
            .range::<u64>(..)
            .unwrap()
            .map(|row| {
                let (nid, json) = row.unwrap();
                (nid.value(), json.value().to_vec())
            })
            .collect()
    }

    /// The JSON row of `nid`, changed by `change`.
    pub fn change_row(path: &std::path::Path, nid: u64, change: impl FnOnce(&mut Vec<u8>)) {
        let db = redb::Database::open(path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(EVENT_JSON).unwrap();
            let mut row = table.get(nid).unwrap().unwrap().value().to_vec();
            change(&mut row);
            table.insert(nid, row.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
}

/// A store from before compression (schema 4: no dictionaries table, every row raw) opens,
/// moves to the current schema, reads as before, and compresses what it stores next.
#[test]
fn a_store_from_before_compression_is_read_and_then_compressed() {
    let events = events(Workload::Hq);
    let (old, new) = events.split_at(events.len() / 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = StoreBuilder::default()
        .json_training(&[])
        .open(&path)
        .unwrap();
    ingest_into(&store, old);
    drop(store);
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        assert!(tx.delete_table(raw::DICTIONARIES).unwrap());
        tx.open_table(raw::META)
            .unwrap()
            .insert(b"schema_version".as_slice(), 4)
            .unwrap();
        common::key_event_ids_by_string(&tx);
        tx.commit().unwrap();
    }
    let store = StoreBuilder::default()
        .json_training(&[500])
        .open(&path)
        .unwrap();
    assert_json_as_given(&store, old);
    ingest_into(&store, new);
    assert_json_as_given(&store, &events);
    let (stored, dictionaries) = json_bytes(&store);
    assert_eq!(dictionaries, 1);
    // The first training compressed the old rows too, since it learnt from every one of them.
    let raw: u64 = events.iter().map(|e| e.to_json_line().len() as u64).sum();
    assert!(stored * 10 < raw * 6, "{stored} bytes stored of {raw}");
    assert!(store.read().unwrap().check().unwrap().is_clean());
    drop(store);
    assert_eq!(common::schema_version(&path), Some(9));
}

/// A damaged frame, one naming a dictionary the store lacks, a reference to an event with no ID,
/// or references cut short, is an error naming the event (or the NID);
/// `check` reports it. Nothing panics.
#[test]
fn damaged_frames_are_errors_that_name_the_event() {
    let events = events(Workload::Hq);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = StoreBuilder::default()
        .json_training(&[200])
        .open(&path)
        .unwrap();
    ingest_into(&store, &events);
    let nid = {
        let rx = store.read().unwrap();
        rx.event_nid(&events[1_000].event_id).unwrap().unwrap()
    };
    drop(store);
    type Damage = fn(&mut Vec<u8>);
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let damages: [(&str, Damage); 5] = [
        ("a flipped byte", |row| {
            let last = row.len() - 3;
            row[last] ^= 0x5a;
        }),
        ("a cut frame", |row| row.truncate(row.len() / 2)),
        ("an unknown dictionary", |row| {
            // The frame header's 4-byte dictionary ID follows the magic and the descriptor.
            let at = row.windows(4).position(|w| w == MAGIC).unwrap();
            assert_eq!(row[at + 4] & 3, 3, "a 4-byte dictionary ID");
            row[at + 5..at + 9].copy_from_slice(&7u32.to_le_bytes());
        }),
        ("a reference to an event with no ID", |row| {
            // The first reference names NID 7,777,777 (tag 0), which is not interned; the others
            // the event itself (tag 1, 0 below it), so that the body still follows them.
            let at = row.windows(4).position(|w| w == MAGIC).unwrap();
            let n = usize::from(row[1]);
            let mut references = vec![0x01, row[1]];
            let mut v: u64 = 7_777_777 << 2;
            while v >= 0x80 {
                references.push(v as u8 | 0x80);
                v >>= 7;
            }
            references.push(v as u8);
            references.extend(std::iter::repeat_n(1, n - 1));
            row.splice(..at, references);
        }),
        ("references cut short", |row| row.truncate(3)),
    ];
    for (what, damage) in damages {
        let copy = dir.path().join("damaged.redb");
        std::fs::copy(&path, &copy).unwrap();
        raw::change_row(&copy, nid.get(), damage);
        let store = Store::open(&copy).unwrap();
        let rx = store.read().unwrap();
        let err = rx.event_json(nid).unwrap_err().to_string();
        assert!(
            err.contains(&nid.to_string()) || err.contains('7'),
            "{what}: {err}"
        );
        let report = rx.check().unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.table == "event_json" || p.table == "json_dictionaries"),
            "{what}: {report:?}"
        );
    }
}

/// Batches of 64 lines or more are read, parsed and compressed on a second thread while the
/// writer stores, with the dictionary writers used last; smaller ones are not. Across two
/// trainings, where the second thread compresses some rows with a dictionary that is no longer
/// current, the file holds the same rows either way.
#[test]
fn rows_compressed_ahead_are_the_rows_the_writer_writes() {
    let events = events(Workload::Hq);
    let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
    let dir = tempfile::tempdir().unwrap();
    let mut rows = Vec::new();
    for (batch_size, name) in [(1_000, "ahead.redb"), (40, "serial.redb")] {
        let path = dir.path().join(name);
        let store = StoreBuilder::default()
            .json_training(&[300, 1_500])
            .open(&path)
            .unwrap();
        let options = IngestOptions {
            batch_size,
            ..IngestOptions::default()
        };
        let report = ingest(&store, text.as_bytes(), options, MatrixResolver::default()).unwrap();
        assert_eq!(report.events, events.len() as u64);
        assert_eq!(json_bytes(&store).1, 2);
        assert_json_as_given(&store, &events);
        drop(store);
        rows.push(raw::rows(&path));
    }
    assert_eq!(rows[0].len(), events.len());
    assert!(rows[0] == rows[1], "the rows differ");
}
