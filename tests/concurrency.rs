//! Readers see whole commits while a writer runs.

mod common;

use common::{ev, key};
use roomstate::{DeltaEntry, RoomRecord, SnapshotNid, Store, StoreRead};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[test]
fn readers_see_consistent_snapshots_while_a_writer_commits() {
    let store = Store::in_memory().unwrap();
    let room = {
        let mut tx = store.write().unwrap();
        let room = tx.get_or_create_room("!r:x").unwrap();
        tx.put_room(
            room,
            &RoomRecord {
                version: "10".into(),
                current_state: SnapshotNid::EMPTY,
                latest_events: vec![],
                event_count: 0,
            },
        )
        .unwrap();
        tx.commit().unwrap();
        room
    };
    let done = AtomicBool::new(false);
    let commits = 300u64;
    let reads = crossbeam::scope(|s| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|_| {
                    let mut reads = 0u64;
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                        let rx = store.read().unwrap();
                        let record = rx.room(room).unwrap().unwrap();
                        let n = record.latest_events.first().map_or(0, |e| e.get());
                        let state = rx.flatten(record.current_state).unwrap();
                        // Commit n set keys 1..=n, key k to event k, all in the same commit as
                        // the room record: any other shape is a half-seen commit.
                        assert_eq!(state.len() as u64, n);
                        for (i, e) in state.iter().enumerate() {
                            assert_eq!(e.key, key(5, i as u64 + 1));
                            assert_eq!(e.event, ev(i as u64 + 1));
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let mut current = SnapshotNid::EMPTY;
        for i in 1..=commits {
            let mut tx = store.write().unwrap();
            tx.set_durable(false).unwrap();
            assert_eq!(tx.get_or_create_event(&format!("${i}")).unwrap(), ev(i));
            current = tx
                .snapshot_from_delta(current, vec![DeltaEntry::set(key(5, i), ev(i))])
                .unwrap();
            tx.put_room(
                room,
                &RoomRecord {
                    version: "10".into(),
                    current_state: current,
                    latest_events: vec![ev(i)],
                    event_count: i,
                },
            )
            .unwrap_or_else(|e| panic!("commit {i}: {e}"));
            tx.commit().unwrap();
        }
        done.store(true, Ordering::Release);
        readers.into_iter().map(|r| r.join().unwrap()).sum::<u64>()
    })
    .unwrap();
    assert!(reads > 0);
    let rx = store.read().unwrap();
    assert_eq!(
        rx.flatten(rx.room(room).unwrap().unwrap().current_state)
            .unwrap()
            .len() as u64,
        commits
    );
}

/// Eight readers against a writer that ingests a real history in batches. Every read is
/// compared with a reference built by ingesting the same history batch by batch into another
/// store: the room's current state after each batch, and the state before each event.
#[test]
fn eight_readers_during_ingest_see_whole_batches_and_the_reference_states() {
    use roomstate::ingest::{IngestOptions, Ingester, OnBadLine, TrivialMerge};
    use roomstate::workload::{GenConfig, Generator, Workload};
    use roomstate::{StateMap, StoreRead};
    use std::collections::HashMap;

    const BATCH: usize = 20;
    const ROOM: &str = "!hq:server0.test";
    let config = GenConfig {
        workload: Workload::Hq,
        seed: 8,
        members: 150,
        state_events: 600,
        messages_per_state: 2,
        room_version: Default::default(),
    };
    let lines: Vec<String> = Generator::new(config).map(|e| e.to_json_line()).collect();
    let ids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["event_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let options = IngestOptions {
        batch_size: BATCH,
        on_bad_line: OnBadLine::Stop,
        durable_batches: false,
        ..IngestOptions::default()
    };
    let text = lines.join("\n");

    // The reference: the room's current state after every batch, by event count.
    let reference = Store::in_memory().unwrap();
    let mut current_after: HashMap<u64, StateMap> = HashMap::new();
    let record_current = |current: &mut HashMap<u64, StateMap>| {
        let rx = reference.read().unwrap();
        let room = rx.room_nid(ROOM).unwrap().unwrap();
        let record = rx.room(room).unwrap().unwrap();
        current.insert(
            record.event_count,
            rx.flatten(record.current_state).unwrap(),
        );
    };
    let mut ingester = Ingester::new(&reference, options.clone(), TrivialMerge);
    ingester
        .read_from_with(text.as_bytes(), |_| record_current(&mut current_after))
        .unwrap();
    ingester.finish().unwrap();
    record_current(&mut current_after);
    let rx = reference.read().unwrap();
    let before: Vec<StateMap> = ids
        .iter()
        .map(|id| rx.state_before(rx.event_nid(id).unwrap().unwrap()).unwrap())
        .collect();
    drop(rx);

    let store = Store::in_memory().unwrap();
    let done = AtomicBool::new(false);
    let total = lines.len() as u64;
    let reads = crossbeam::scope(|s| {
        let readers: Vec<_> = (0..8u64)
            .map(|seed| {
                let (store, done, ids, before, current_after) =
                    (&store, &done, &ids, &before, &current_after);
                s.spawn(move |_| {
                    let mut rng = common::Rng(seed + 1);
                    let mut reads = 0u64;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !done.load(Ordering::Acquire) && Instant::now() < deadline {
                        let rx = store.read().unwrap();
                        let Some(room) = rx.room_nid(ROOM).unwrap() else {
                            continue;
                        };
                        let Some(record) = rx.room(room).unwrap() else {
                            continue;
                        };
                        let n = record.event_count;
                        let expected = current_after
                            .get(&n)
                            .unwrap_or_else(|| panic!("{n} events: not a batch boundary"));
                        assert_eq!(&rx.flatten(record.current_state).unwrap(), expected);
                        let i = rng.below(n) as usize;
                        let event = rx.event_nid(&ids[i]).unwrap().expect("a committed event");
                        let state = rx.state_before(event).unwrap();
                        assert_eq!(state, before[i], "state before line {i}");
                        if let Some(e) = before[i]
                            .iter()
                            .nth(rng.below(state.len() as u64 + 1) as usize)
                        {
                            let snapshot = rx.expect_event(event).unwrap().state_before;
                            assert_eq!(rx.lookup(snapshot, e.key).unwrap(), Some(e.event));
                        }
                        if n < total {
                            assert_eq!(rx.event_nid(&ids[n as usize]).unwrap(), None);
                        }
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let mut ingester = Ingester::new(&store, options, TrivialMerge);
        ingester.read_from(text.as_bytes()).unwrap();
        ingester.finish().unwrap();
        done.store(true, Ordering::Release);
        readers
            .into_iter()
            .map(|r| r.join().unwrap())
            .collect::<Vec<u64>>()
    })
    .unwrap();
    assert!(
        reads.iter().all(|&r| r > 0),
        "a reader never read: {reads:?}"
    );
    eprintln!("reads per reader: {reads:?}");
}
