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
