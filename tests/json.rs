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

#[test]
fn a_store_that_trains_nothing_keeps_json_raw() {
    let events = events(Workload::Hq);
    let raw: u64 = events.iter().map(|e| e.to_json_line().len() as u64).sum();
    let store = StoreBuilder::default()
        .json_training(&[])
        .in_memory()
        .unwrap();
    ingest_into(&store, &events);
    assert_json_as_given(&store, &events);
    // Each row's stored bytes include its 8-byte key.
    assert_eq!(json_bytes(&store), (raw + 8 * events.len() as u64, 0));
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
    assert_eq!(common::schema_version(&path), Some(8));
}

/// A damaged frame, or one naming a dictionary the store lacks, is an error naming the event;
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
    let damages: [(&str, Damage); 3] = [
        ("a flipped byte", |row| {
            let last = row.len() - 3;
            row[last] ^= 0x5a;
        }),
        ("a cut frame", |row| row.truncate(row.len() / 2)),
        ("an unknown dictionary", |row| {
            // The frame header's 4-byte dictionary ID follows the magic and the descriptor.
            assert_eq!(row[4] & 3, 3, "a 4-byte dictionary ID");
            row[5..9].copy_from_slice(&7u32.to_le_bytes());
        }),
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
