//! The write transaction: interning, snapshots, records, purge and collection, commit.

use crate::engine::block::DeltaEntry;
use crate::engine::cache::BlockCache;
use crate::engine::policy::WritePolicy;
use crate::engine::resolve::StateMap;
use crate::engine::snapshot::BlockRef;
use crate::error::{Error, Result};
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKeyNid, TypeNid};
use crate::store::Serials;
use crate::store::intern;
use crate::store::json::JsonDictionaries;
use crate::store::purge::Purged;
use crate::store::read::StoreRead;
use crate::store::record::{EventRecord, RoomRecord};
use crate::store::refs::Collected;
use crate::store::writer::Writer;
use redb::Durability;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The one write transaction. Dropping it without [`commit`](WriteTxn::commit) aborts it: none of
/// its writes become visible.
pub struct WriteTxn {
    pub(super) tx: redb::WriteTransaction,
    pub(super) serial: u64,
    pub(super) serials: Arc<Serials>,
    pub(super) policy: Arc<dyn WritePolicy>,
    pub(super) counts: WriteCounts,
    /// The B-tree operations of its writers' tables.
    pub(super) btree_ops: AtomicU64,
    /// Why the transaction may hold half an operation and must not commit: a write failed
    /// inside redb (see [`WriteTxn::guarded`]), or an event was refused after it began writing.
    pub(super) poisoned: Option<String>,
    pub(super) block_cache: Arc<BlockCache>,
    pub(super) json_dictionaries: Arc<JsonDictionaries>,
}

impl std::fmt::Debug for WriteTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl StoreRead for WriteTxn {
    type Txn = redb::WriteTransaction;
    fn txn(&self) -> &Self::Txn {
        &self.tx
    }
    fn block_cache(&self) -> &Arc<BlockCache> {
        &self.block_cache
    }
    fn json_dictionaries(&self) -> &JsonDictionaries {
        &self.json_dictionaries
    }
}

/// What a write transaction has added so far. Deduplicated writes count zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// New block rows.
    pub blocks: u64,
    /// Entries in new block rows.
    pub entries: u64,
    /// New snapshot rows.
    pub snapshots: u64,
}

macro_rules! get_or_create {
    ($(#[$doc:meta])* $one:ident, $(#[$docs:meta])* $many:ident, $kind:expr, $nid:ty) => {
        $(#[$doc])*
        pub fn $one(&mut self, s: &str) -> Result<$nid> {
            let nids = self.$many(&[s])?;
            nids.into_iter()
                .next()
                .ok_or_else(|| Error::InvalidState("interning returned nothing".into()))
        }

        $(#[$docs])*
        pub fn $many(&mut self, strings: &[&str]) -> Result<Vec<$nid>> {
            self.guarded(|this| {
                this.writer()
                    .intern($kind, strings)?
                    .into_iter()
                    .map(|n| {
                        <$nid>::new(n).ok_or(Error::corrupt("meta", $kind.counter, "zero NID"))
                    })
                    .collect()
            })
        }
    };
}

impl WriteTxn {
    pub(crate) fn writer(&mut self) -> Writer<'_> {
        Writer::new(self)
    }

    get_or_create!(
        /// The NID of a room ID, interning it if new.
        get_or_create_room,
        /// The NIDs of several room IDs, interning the new ones.
        get_or_create_rooms,
        intern::ROOM,
        RoomNid
    );
    get_or_create!(
        /// The NID of an event type, interning it if new.
        get_or_create_type,
        /// The NIDs of several event types, interning the new ones.
        get_or_create_types,
        intern::TYPE,
        TypeNid
    );
    get_or_create!(
        /// The NID of a state key, interning it if new.
        get_or_create_state_key,
        /// The NIDs of several state keys, interning the new ones.
        get_or_create_state_keys,
        intern::STATE_KEY,
        StateKeyNid
    );
    get_or_create!(
        /// The NID of an event ID, interning it if new.
        get_or_create_event,
        /// The NIDs of several event IDs, interning the new ones.
        get_or_create_events,
        intern::EVENT,
        EventNid
    );

    /// Whether commits are flushed to disk before [`commit`](Self::commit) returns (the
    /// default). A non-durable commit is still atomic, and becomes durable with the next durable
    /// one; a crash in between loses it whole.
    pub fn set_durable(&mut self, durable: bool) -> Result<()> {
        self.guarded(|this| {
            let level = if durable {
                Durability::Immediate
            } else {
                Durability::None
            };
            Ok(this.tx.set_durability(level)?)
        })
    }

    /// What this transaction has written so far.
    pub fn counts(&self) -> WriteCounts {
        self.counts
    }

    /// The B-tree operations this transaction has made on the store's tables so far: gets,
    /// range scans, inserts and removes, reads included. What its events cost redb, which
    /// `bench` reports per event.
    pub fn btree_ops(&self) -> u64 {
        self.btree_ops.load(Ordering::Relaxed)
    }

    /// Stores a block of entries (sorted by key, no key twice) and returns its reference.
    /// A block with the same content already stored is reused and nothing is written.
    pub fn put_block(&mut self, entries: &[DeltaEntry]) -> Result<BlockRef> {
        self.guarded(|this| this.writer().put_block(entries))
    }

    /// Stores a snapshot made of `blocks`, oldest first, each of which must already be stored
    /// with the entry count given. The same list stored again returns the same NID and writes
    /// nothing.
    ///
    /// A snapshot that no event, room or child snapshot references is garbage: the next
    /// [`collect_garbage`](Self::collect_garbage), which every ingest batch runs, deletes it.
    /// Reference it (with [`put_event`](Self::put_event) or [`put_room`](Self::put_room)) in
    /// the transaction that creates it. The same holds for the other `snapshot_*` methods.
    pub fn put_snapshot(&mut self, blocks: &[BlockRef]) -> Result<SnapshotNid> {
        self.guarded(|this| {
            let mut w = this.writer();
            w.check_blocks(blocks)?;
            let state_len = w.flatten_refs(blocks)?.len();
            w.insert_snapshot(state_len, None, blocks.to_vec())
        })
    }

    /// Stores a snapshot for a whole state: the form used when a state is built from several
    /// parents or by state resolution.
    pub fn snapshot_from_state(&mut self, state: &StateMap) -> Result<SnapshotNid> {
        self.guarded(|this| this.writer().snapshot_from_state(state))
    }

    /// Stores the snapshot of `parent` changed by `delta`: each entry sets its key to an event,
    /// or removes the key when its event is `None`. The write policy decides the layout. The
    /// delta may come in any order but must not name a key twice.
    pub fn snapshot_from_delta(
        &mut self,
        parent: SnapshotNid,
        delta: Vec<DeltaEntry>,
    ) -> Result<SnapshotNid> {
        crate::error::guard(|| self.writer().snapshot_from_delta(parent, delta))
    }

    /// The snapshot of the state after an event, stored if new. For an event that sets no state
    /// (not a state event, or rejected) it is the snapshot before it.
    pub fn state_after_snapshot(&mut self, event: EventNid) -> Result<SnapshotNid> {
        self.guarded(|this| this.writer().state_after_snapshot(event))
    }

    /// Stores (or replaces) an event's record. Every NID it names, and its snapshot, must exist.
    ///
    /// Unlike ingest, this does not add the event to its room's event sequence, so
    /// [`purge_room`](Self::purge_room) does not find it: delete such records yourself, or
    /// ingest events instead.
    pub fn put_event(&mut self, event: EventNid, record: &EventRecord) -> Result<()> {
        self.guarded(|this| {
            let mut w = this.writer();
            w.require(intern::EVENT, event.get())?;
            w.require(intern::ROOM, record.room.get())?;
            w.require(intern::TYPE, record.event_type.get())?;
            if let Some(key) = record.state_key {
                w.require(intern::STATE_KEY, key.get())?;
            }
            for e in record.prev_events.iter().chain(&record.auth_events) {
                w.require(intern::EVENT, e.get())?;
            }
            w.snapshot_blocks(record.state_before)?;
            w.put_event(event, record)
        })
    }

    /// Stores (or replaces) a room's record. Its room, its current snapshot and its latest
    /// events must exist.
    pub fn put_room(&mut self, room: RoomNid, record: &RoomRecord) -> Result<()> {
        self.guarded(|this| {
            let mut w = this.writer();
            w.require(intern::ROOM, room.get())?;
            for e in &record.latest_events {
                w.require(intern::EVENT, e.get())?;
            }
            w.snapshot_blocks(record.current_state)?;
            w.put_room(room, record)
        })
    }

    /// Deletes a room and everything only it used: its events and outliers (records, JSON and
    /// event IDs), its membership rows, its room record, and the snapshots and blocks no other room shares.
    /// The space returns to the file system at the next [`Store::compact`](crate::Store::compact).
    pub fn purge_room(&mut self, room: RoomNid) -> Result<Purged> {
        self.guarded(|this| this.writer().purge_room(room))
    }

    /// Deletes every snapshot and block that nothing references any more. Snapshots are
    /// referenced by events, rooms and child snapshots; one stored through
    /// [`put_snapshot`](Self::put_snapshot) and never used by an event or room is collected
    /// here, so commit the event or room that uses it first.
    pub fn collect_garbage(&mut self) -> Result<Collected> {
        self.guarded(|this| this.writer().collect_garbage())
    }

    /// Runs a write, remembering a failure inside redb: after one, the transaction may hold
    /// half an operation, so [`commit`](Self::commit) refuses.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let result = crate::error::guard(|| f(self));
        if let Err(Error::Damaged(_)) = &result {
            self.poison("an earlier write of this transaction failed inside redb".into());
        }
        result
    }

    /// Makes every write of this transaction visible and (by default) durable, all at once.
    pub fn commit(self) -> Result<()> {
        if let Some(why) = self.poisoned {
            // A transaction whose write failed inside redb may hold redb's table lock
            // poisoned, and then dropping it panics: caught here, as the failure it is.
            let tx = self.tx;
            crate::error::guard(|| {
                drop(tx);
                Ok(())
            })?;
            return Err(Error::Poisoned(why));
        }
        let (serial, serials) = (self.serial, Arc::clone(&self.serials));
        crate::error::guard(|| Ok(self.tx.commit()?))?;
        serials.committed.store(serial, Ordering::Relaxed);
        Ok(())
    }

    fn poison(&mut self, why: String) {
        self.poisoned.get_or_insert(why);
    }

    /// Whether what transaction `serial` of the same store wrote is visible to this one: it is
    /// this transaction, or the last one committed before it.
    pub(crate) fn sees_writes_of(&self, serials: &Arc<Serials>, serial: u64) -> bool {
        Arc::ptr_eq(serials, &self.serials)
            && (serial == self.serial || serial == self.serials.committed.load(Ordering::Relaxed))
    }

    /// This transaction's store and serial, for [`sees_writes_of`](Self::sees_writes_of).
    pub(crate) fn serial(&self) -> (Arc<Serials>, u64) {
        (Arc::clone(&self.serials), self.serial)
    }

    /// Discards every write of this transaction.
    pub fn abort(self) -> Result<()> {
        crate::error::guard(|| Ok(self.tx.abort()?))
    }
}
