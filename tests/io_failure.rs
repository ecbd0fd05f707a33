//! A write that fails with an I/O error: the commit is lost whole, the handle asks to be
//! reopened, and the file reopens with every earlier commit and nothing of the failed one.

use redb::StorageBackend;
use redb::backends::FileBackend;
use roomstate::{DeltaEntry, Error, RoomRecord, SnapshotNid, StateKey, Store, StoreRead};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The file, until `broken` is set: then every write and sync fails as a full disk would.
#[derive(Debug)]
struct FailingDisk {
    file: FileBackend,
    broken: Arc<AtomicBool>,
}

impl FailingDisk {
    fn check(&self) -> io::Result<()> {
        if self.broken.load(Ordering::SeqCst) {
            Err(io::Error::other("no space left on device"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FailingDisk {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check()?;
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.check()?;
        self.file.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check()?;
        self.file.write(offset, data)
    }
}

/// Sets key `n` to event `n` and makes it the room's current state, in one commit.
fn commit_step(store: &Store, n: u64, current: SnapshotNid) -> roomstate::Result<SnapshotNid> {
    let mut tx = store.write()?;
    let room = tx.get_or_create_room("!r:x")?;
    let ty = tx.get_or_create_type("m.room.member")?;
    let key = tx.get_or_create_state_key(&format!("@u{n}:x"))?;
    let event = tx.get_or_create_event(&format!("${n}"))?;
    let next = tx.snapshot_from_delta(
        current,
        vec![DeltaEntry::set(StateKey::new(ty, key), event)],
    )?;
    let record = RoomRecord {
        version: "10".into(),
        current_state: next,
        latest_events: vec![],
        event_count: n,
    };
    tx.put_room(room, &record)?;
    tx.commit()?;
    Ok(next)
}

#[test]
fn a_failed_commit_asks_for_a_reopen_and_loses_only_itself() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    drop(Store::open(&path).unwrap());
    let broken = Arc::new(AtomicBool::new(false));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let disk = FailingDisk {
        file: FileBackend::new(file).unwrap(),
        broken: Arc::clone(&broken),
    };
    let store = Store::builder().open_backend(disk).unwrap();
    let mut current = SnapshotNid::EMPTY;
    for n in 1..=5 {
        current = commit_step(&store, n, current).unwrap();
    }

    broken.store(true, Ordering::SeqCst);
    let failed = commit_step(&store, 6, current);
    assert!(failed.is_err(), "a commit on a full disk succeeded");
    broken.store(false, Ordering::SeqCst);
    // The disk has space again, but this handle refuses to go on: it must be reopened.
    match commit_step(&store, 6, current) {
        Err(Error::ReopenRequired) => {}
        other => panic!("expected ReopenRequired, got {other:?}"),
    }
    // Reads of what was committed still work on the old handle.
    let rx = store.read().unwrap();
    let room = rx
        .room(rx.room_nid("!r:x").unwrap().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(room.event_count, 5);
    drop(rx);
    drop(store);

    let store = Store::open(&path).unwrap();
    let rx = store.read().unwrap();
    assert!(rx.check().unwrap().is_clean());
    let room = rx
        .room(rx.room_nid("!r:x").unwrap().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(room.event_count, 5, "the failed commit left something");
    assert_eq!(rx.flatten(room.current_state).unwrap().len(), 5);
    assert_eq!(rx.event_nid("$6").unwrap(), None);
    drop(rx);
    commit_step(&store, 6, room.current_state).unwrap();
}
