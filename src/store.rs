//! The store: one redb file, its transactions, and the read operations both kinds of transaction
//! share.

use crate::block::{BlockHash, BlockView, DeltaEntry};
use crate::cache::{BlockCache, DEFAULT_BLOCK_CACHE_BYTES};
use crate::codec;
use crate::error::{Error, Result};
use crate::intern::{self, Kind};
use crate::membership::Membership;
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::policy::{Layer, WritePolicy, default_policy};
use crate::purge::Purged;
use crate::record::{EventRecord, RoomRecord};
use crate::refs::Collected;
use crate::resolve::{self, Combined, Conflict, Run, StateDiff, StateMap};
use crate::snapshot::{BlockRef, SnapshotRecord, decode_snapshot, encode_snapshot, snapshot_hash};
use crate::tables;
use crate::write::{NEXT_SNAPSHOT, Writer};
use redb::{
    AccessGuard, Database, Durability, Key, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, Value,
};
use std::path::Path;
use std::sync::Arc;

/// A room-state store in one redb file (or in memory).
///
/// Reads run in [`ReadTxn`]s, which see a consistent snapshot of the store while a writer runs;
/// writes run in one [`WriteTxn`] at a time, which commits or aborts as a whole.
///
/// ```
/// use roomstate::{DeltaEntry, StateKey, Store, StoreRead, TypeNid};
///
/// # fn main() -> roomstate::Result<()> {
/// let store = Store::in_memory()?;
/// let mut tx = store.write()?;
/// let alice = tx.get_or_create_state_key("@alice:example.org")?;
/// let join = tx.get_or_create_event("$join-alice")?;
/// let key = StateKey::new(TypeNid::MEMBER, alice);
/// let snap = tx.snapshot_from_delta(roomstate::SnapshotNid::EMPTY, vec![DeltaEntry::set(key, join)])?;
/// tx.commit()?;
///
/// let rx = store.read()?;
/// assert_eq!(rx.lookup(snap, key)?, Some(join));
/// assert_eq!(rx.flatten(snap)?.len(), 1);
/// # Ok(())
/// # }
/// ```
pub struct Store {
    db: Database,
    policy: Arc<dyn WritePolicy>,
    two_phase_commit: bool,
    block_cache: Arc<BlockCache>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`Store`].
#[derive(Debug)]
pub struct StoreBuilder {
    policy: Arc<dyn WritePolicy>,
    cache_bytes: usize,
    block_cache_bytes: usize,
    two_phase_commit: bool,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder {
            policy: Arc::from(default_policy()),
            cache_bytes: DEFAULT_CACHE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            two_phase_commit: true,
        }
    }
}

/// The page cache a store gets unless told otherwise: 128 MiB, an eighth of redb's own default.
///
/// redb caches whole pages in 131 stripes and evicts within a stripe, so a page larger than
/// about 1/131 of the cache is read from the file again on every access: the 2 MiB page of a
/// 100,000-entry block is never kept at this size. The [`BlockCache`] keeps such blocks instead,
/// so reads stay fast. With both caches at their defaults the full-scale benchmark peaked at
/// 230 MiB; redb's 1 GiB default ingested that history about 30% faster (more of the event-ID
/// index stays in memory) and peaked at 1.16 GiB. `docs/benchmarks.md` has both runs.
pub const DEFAULT_CACHE_BYTES: usize = 128 << 20;

impl StoreBuilder {
    /// The write policy new snapshots are laid out by. Stores written under different policies
    /// read the same way; the policy only shapes new snapshots.
    pub fn policy(mut self, policy: impl WritePolicy + 'static) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// The write policy, already boxed.
    pub fn boxed_policy(mut self, policy: Box<dyn WritePolicy>) -> Self {
        self.policy = Arc::from(policy);
        self
    }

    /// Whether durable commits use redb's two-phase commit (the default).
    ///
    /// With one phase, redb tells a torn commit from a whole one by a non-cryptographic
    /// checksum, which input chosen by an attacker could in principle collide with; redb's docs
    /// advise two phases when stored data comes from untrusted parties, as federation events
    /// do. Two phases add one more fsync per durable commit; `docs/design.md` gives the measured
    /// cost.
    pub fn two_phase_commit(mut self, enabled: bool) -> Self {
        self.two_phase_commit = enabled;
        self
    }

    /// Opens a store on a storage backend of the caller's (an encrypted file, a test double
    /// that fails on demand), creating the store's tables if the backend is empty.
    pub fn open_backend(self, backend: impl redb::StorageBackend) -> Result<Store> {
        crate::error::guard(|| {
            let db = self.redb().create_with_backend(backend)?;
            Store::init(db, &self)
        })
    }

    /// Bytes of block content kept in memory across transactions for the resolver
    /// ([`DEFAULT_BLOCK_CACHE_BYTES`] when not set; 0 turns the cache off). Blocks never change
    /// once written, so the cache needs no invalidation; see [`BlockCache`].
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    /// redb's page cache size in bytes ([`DEFAULT_CACHE_BYTES`] when not set).
    pub fn cache_bytes(mut self, bytes: usize) -> Self {
        self.cache_bytes = bytes;
        self
    }

    fn redb(&self) -> redb::Builder {
        let mut b = Database::builder();
        b.set_cache_size(self.cache_bytes);
        b
    }

    /// Opens the store at `path`, creating the file if it is missing.
    ///
    /// A new file is built under a temporary name beside `path` and linked into place only
    /// once its tables are committed, so a crash while creating never leaves a half-written
    /// file at `path`. An empty file at `path` is treated as missing.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        crate::error::guard(|| self.open_path(path.as_ref()))
    }

    fn open_path(self, path: &Path) -> Result<Store> {
        match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => {
                // Another opener may have removed it first: that is fine.
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                self.create_file(path)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create_file(path)?,
            Err(e) => return Err(e.into()),
        }
        let db = self.redb().open(path)?;
        Store::init(db, &self)
    }

    fn create_file(&self, path: &Path) -> Result<()> {
        // Unique per process and per call, so concurrent creators never touch each other's
        // file. One killed while creating leaves its temporary file behind; nothing reads it.
        static CREATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = CREATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".creating-{}-{n}-{nanos}", std::process::id()));
        let temporary = path.with_file_name(name);
        drop(Store::init(self.redb().create(&temporary)?, self)?);
        // A hard link never replaces an existing file: if another process created the store
        // meanwhile, its file stays and ours is dropped. File systems without hard links get a
        // rename, which is atomic too but would replace a store created in the same instant.
        let placed = match std::fs::hard_link(&temporary, path) {
            Ok(()) => std::fs::remove_file(&temporary),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_file(&temporary)
            }
            Err(_) => std::fs::rename(&temporary, path),
        };
        placed?;
        sync_parent(path)
    }

    /// A store held in memory, for tests and scratch work.
    pub fn in_memory(self) -> Result<Store> {
        let db = self
            .redb()
            .create_with_backend(redb::backends::InMemoryBackend::new())?;
        Store::init(db, &self)
    }
}

impl Store {
    /// Opens the store at `path` with the default write policy, creating the file if missing.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        StoreBuilder::default().open(path)
    }

    /// A store held in memory with the default write policy.
    pub fn in_memory() -> Result<Store> {
        StoreBuilder::default().in_memory()
    }

    /// Options for opening a store.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    fn init(db: Database, options: &StoreBuilder) -> Result<Store> {
        crate::error::guard(|| {
            let tx = db.begin_write()?;
            let found = tx
                .open_table(tables::META)?
                .get(tables::SCHEMA_KEY.as_bytes())?
                .map(|v| v.value());
            match found {
                Some(tables::SCHEMA_VERSION) => tx.abort()?,
                Some(other) => return Err(Error::UnsupportedSchema(other)),
                None => {
                    create_tables(&tx)?;
                    intern::seed_well_known(&tx)?;
                    let empty = encode_snapshot(&SnapshotRecord::default());
                    tx.open_table(tables::SNAPSHOTS)?
                        .insert(SnapshotNid::EMPTY.get(), empty.as_slice())?;
                    tx.open_table(tables::SNAPSHOT_HASHES)?
                        .insert(snapshot_hash(&empty), SnapshotNid::EMPTY.get())?;
                    let mut meta = tx.open_table(tables::META)?;
                    meta.insert(NEXT_SNAPSHOT.as_bytes(), SnapshotNid::EMPTY.get() + 1)?;
                    meta.insert(tables::SCHEMA_KEY.as_bytes(), tables::SCHEMA_VERSION)?;
                    drop(meta);
                    tx.commit()?;
                }
            }
            Ok(Store {
                db,
                policy: Arc::clone(&options.policy),
                two_phase_commit: options.two_phase_commit,
                block_cache: Arc::new(BlockCache::new(options.block_cache_bytes)),
            })
        })
    }

    /// The write policy new snapshots follow.
    pub fn policy(&self) -> &dyn WritePolicy {
        &*self.policy
    }

    /// The block cache every transaction of this store reads through.
    pub fn block_cache(&self) -> &BlockCache {
        &self.block_cache
    }

    /// Starts a read transaction: a consistent view of the last commit, unaffected by writers.
    pub fn read(&self) -> Result<ReadTxn> {
        crate::error::guard(|| {
            Ok(ReadTxn {
                tx: self.db.begin_read()?,
                block_cache: Arc::clone(&self.block_cache),
            })
        })
    }

    /// Starts the write transaction, waiting for any other writer to finish. Commits are durable
    /// when [`WriteTxn::commit`] returns, unless [`WriteTxn::set_durable`] says otherwise.
    pub fn write(&self) -> Result<WriteTxn> {
        crate::error::guard(|| {
            let mut tx = self.db.begin_write()?;
            tx.set_two_phase_commit(self.two_phase_commit);
            Ok(WriteTxn {
                tx,
                policy: Arc::clone(&self.policy),
                counts: WriteCounts::default(),
                poisoned: false,
                block_cache: Arc::clone(&self.block_cache),
            })
        })
    }

    /// Verifies the checksum of every page of the file, as redb keeps them, and repairs what
    /// redb can repair. `Ok(true)`: the file was sound; `Ok(false)`: it was damaged and has been
    /// repaired. A file that cannot be repaired is an error. It reads the whole file, so it is
    /// for startup after a suspected fault and for `roomstate check`, not for every open.
    pub fn verify_file(&mut self) -> Result<bool> {
        crate::error::guard(|| Ok(self.db.check_integrity()?))
    }

    /// Rewrites the file to return free space to the file system. Fails while transactions are
    /// open.
    pub fn compact(&mut self) -> Result<bool> {
        crate::error::guard(|| Ok(self.db.compact()?))
    }
}

/// Makes the new directory entry of `path` durable. Only Unix can open a directory to sync
/// it; elsewhere the file system's own ordering is all there is.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
    for def in [
        tables::ROOM_IDS,
        tables::TYPES,
        tables::STATE_KEYS,
        tables::EVENT_IDS,
    ] {
        tx.open_table(def)?;
    }
    for def in [
        tables::ROOM_IDS_REV,
        tables::TYPES_REV,
        tables::STATE_KEYS_REV,
        tables::EVENT_IDS_REV,
    ] {
        tx.open_table(def)?;
    }
    for def in [
        tables::SNAPSHOTS,
        tables::EVENTS,
        tables::ROOMS,
        tables::EVENT_JSON,
    ] {
        tx.open_table(def)?;
    }
    tx.open_table(tables::MEMBERSHIP)?;
    tx.open_table(tables::USER_ROOMS)?;
    tx.open_table(tables::ROOM_EVENTS)?;
    tx.open_table(tables::BLOCKS)?;
    tx.open_table(tables::SNAPSHOT_HASHES)?;
    tx.open_table(tables::SNAPSHOT_REFS)?;
    tx.open_table(tables::BLOCK_REFS)?;
    tx.open_table(tables::UNREFERENCED_SNAPSHOTS)?;
    tx.open_table(tables::UNREFERENCED_BLOCKS)?;
    Ok(())
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ReadTxn {}
    impl Sealed for super::WriteTxn {}
    impl Sealed for redb::ReadTransaction {}
    impl Sealed for redb::WriteTransaction {}
}

/// Opens tables for reading, from either kind of redb transaction. Not for use outside the
/// crate; it is public only because [`StoreRead`] names it.
#[doc(hidden)]
pub trait Tables: sealed::Sealed {
    /// The table type this transaction opens.
    type Table<'a, K: Key + 'static, V: Value + 'static>: ReadableTable<K, V>
    where
        Self: 'a;

    /// Opens a table that the store created.
    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>>;
}

impl Tables for redb::ReadTransaction {
    type Table<'a, K: Key + 'static, V: Value + 'static> = redb::ReadOnlyTable<K, V>;

    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>> {
        Ok(self.open_table(def)?)
    }
}

impl Tables for redb::WriteTransaction {
    type Table<'a, K: Key + 'static, V: Value + 'static> = redb::Table<'a, K, V>;

    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>> {
        Ok(self.open_table(def)?)
    }
}

type TableOf<'a, T, K, V> = <T as Tables>::Table<'a, K, V>;

/// The resolver bound to one transaction's block and snapshot tables. Hold one to answer many
/// queries without reopening the tables each time.
pub type ResolverOf<'a, T> =
    Resolver<TableOf<'a, T, u128, &'static [u8]>, TableOf<'a, T, u64, &'static [u8]>>;

/// A read transaction: a consistent view of the store as of its start.
pub struct ReadTxn {
    tx: redb::ReadTransaction,
    block_cache: Arc<BlockCache>,
}

impl std::fmt::Debug for ReadTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTxn")
    }
}

/// Reading, shared by [`ReadTxn`] and [`WriteTxn`] (which sees its own uncommitted writes).
pub trait StoreRead: sealed::Sealed {
    /// The redb transaction underneath.
    #[doc(hidden)]
    type Txn: Tables;

    /// The redb transaction underneath.
    #[doc(hidden)]
    fn txn(&self) -> &Self::Txn;

    /// The store's block cache, which the resolver reads through.
    #[doc(hidden)]
    fn block_cache(&self) -> &Arc<BlockCache>;

    /// The resolver over this transaction's tables. In a [`WriteTxn`], drop it before writing.
    fn resolver(&self) -> Result<ResolverOf<'_, Self::Txn>> {
        crate::error::guard(|| {
            Ok(Resolver {
                blocks: self.txn().open(tables::BLOCKS)?,
                snapshots: self.txn().open(tables::SNAPSHOTS)?,
                cache: Arc::clone(self.block_cache()),
            })
        })
    }

    /// The full state of a snapshot, one entry per key, sorted.
    fn flatten(&self, snapshot: SnapshotNid) -> Result<StateMap> {
        crate::error::guard(|| self.resolver()?.flatten(snapshot))
    }

    /// The event holding `key` in a snapshot, without building the whole state.
    fn lookup(&self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        crate::error::guard(|| self.resolver()?.lookup(snapshot, key))
    }

    /// The difference from snapshot `a` to snapshot `b`.
    fn diff(&self, a: SnapshotNid, b: SnapshotNid) -> Result<StateDiff> {
        crate::error::guard(|| self.resolver()?.diff(a, b))
    }

    /// Several snapshots combined into agreed entries and conflicts.
    fn combine(&self, snapshots: &[SnapshotNid]) -> Result<Combined> {
        crate::error::guard(|| self.resolver()?.combine(snapshots))
    }

    /// The NID of a room ID, if interned.
    fn room_nid(&self, room_id: &str) -> Result<Option<RoomNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::ROOM, room_id).map(|n| n.and_then(RoomNid::new))
        })
    }

    /// The room ID behind a room NID.
    fn room_id(&self, room: RoomNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::ROOM, room.get()))
    }

    /// The NID of an event type, if interned.
    fn type_nid(&self, event_type: &str) -> Result<Option<TypeNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::TYPE, event_type).map(|n| n.and_then(TypeNid::new))
        })
    }

    /// The event type behind a type NID.
    fn event_type(&self, ty: TypeNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::TYPE, ty.get()))
    }

    /// The NID of a state key, if interned.
    fn state_key_nid(&self, state_key: &str) -> Result<Option<StateKeyNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::STATE_KEY, state_key)
                .map(|n| n.and_then(StateKeyNid::new))
        })
    }

    /// The state key behind a state-key NID.
    fn state_key(&self, key: StateKeyNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::STATE_KEY, key.get()))
    }

    /// The NID of an event ID, if interned.
    fn event_nid(&self, event_id: &str) -> Result<Option<EventNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::EVENT, event_id).map(|n| n.and_then(EventNid::new))
        })
    }

    /// The event ID behind an event NID.
    fn event_id(&self, event: EventNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::EVENT, event.get()))
    }

    /// The (type, state key) pair of two strings, if both are interned.
    fn state_key_of(&self, event_type: &str, state_key: &str) -> Result<Option<StateKey>> {
        crate::error::guard(|| {
            Ok(
                match (self.type_nid(event_type)?, self.state_key_nid(state_key)?) {
                    (Some(ty), Some(key)) => Some(StateKey::new(ty, key)),
                    _ => None,
                },
            )
        })
    }

    /// An event's record, or `None` if the store has none.
    fn event(&self, event: EventNid) -> Result<Option<EventRecord>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::EVENTS)?;
            let row = table.get(event.get())?;
            row.map(|v| codec::decode("events", event, v.value()))
                .transpose()
        })
    }

    /// An event's record; a missing record is an error.
    fn expect_event(&self, event: EventNid) -> Result<EventRecord> {
        crate::error::guard(|| self.event(event)?.ok_or(Error::UnknownEvent(event)))
    }

    /// A room's record, or `None` if the store has none.
    fn room(&self, room: RoomNid) -> Result<Option<RoomRecord>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::ROOMS)?;
            let row = table.get(room.get())?;
            row.map(|v| codec::decode("rooms", room, v.value()))
                .transpose()
        })
    }

    /// The state before an event.
    fn state_before(&self, event: EventNid) -> Result<StateMap> {
        crate::error::guard(|| self.flatten(self.expect_event(event)?.state_before))
    }

    /// The state after an event: the state before it, plus its own entry when it is a state
    /// event that was not rejected.
    fn state_after(&self, event: EventNid) -> Result<StateMap> {
        crate::error::guard(|| {
            let record = self.expect_event(event)?;
            let before = self.flatten(record.state_before)?;
            Ok(match record.sets() {
                Some(key) => {
                    let mut entries = before.into_vec();
                    entries.push(crate::StateEntry { key, event });
                    StateMap::from_entries(entries)
                }
                None => before,
            })
        })
    }

    /// Row counts and sizes of every table, and how many entries the blocks hold. Reads every
    /// block, snapshot and event record; [`table_sizes`](Self::table_sizes) is the cheap part.
    fn stats(&self) -> Result<StoreStats> {
        crate::error::guard(|| store_stats(self.txn()))
    }

    /// Walks every table: every row decodes, every block is sorted, every NID a block, event or
    /// room names is interned both ways, every snapshot's parent and blocks exist with the
    /// entry counts it gives, and the deduplication index matches. Problems are listed, not
    /// raised; only a failure to read the file is an error.
    fn check(&self) -> Result<crate::check::CheckReport> {
        crate::error::guard(|| crate::check::check(self.txn()))
    }

    /// Row counts and sizes of every table, from redb's own counters (no scan).
    fn table_sizes(&self) -> Result<Vec<TableSize>> {
        crate::error::guard(|| table_sizes(self.txn()))
    }

    /// The event's JSON exactly as ingested, if stored.
    fn event_json(&self, event: EventNid) -> Result<Option<String>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::EVENT_JSON)?;
            let row = table.get(event.get())?;
            row.map(|v| {
                String::from_utf8(v.value().to_vec())
                    .map_err(|e| Error::corrupt("event_json", event, e))
            })
            .transpose()
        })
    }

    /// A room's events in ingest order.
    fn room_events(&self, room: RoomNid) -> Result<Vec<EventNid>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::ROOM_EVENTS)?;
            let r = room.get();
            table
                .range((r, 0)..=(r, u64::MAX))?
                .map(|row| {
                    let (key, event) = row?;
                    EventNid::new(event.value()).ok_or_else(|| {
                        Error::corrupt("room_events", format!("{:?}", key.value()), "zero NID")
                    })
                })
                .collect()
        })
    }

    /// The members of a room in its current state, by user (state-key NID), optionally only
    /// those with one membership.
    fn members(
        &self,
        room: RoomNid,
        only: Option<Membership>,
    ) -> Result<Vec<(StateKeyNid, Membership)>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::MEMBERSHIP)?;
            let r = room.get();
            let mut out = Vec::new();
            for row in table.range((r, 0)..=(r, u64::MAX))? {
                let (key, code) = row?;
                let (_, user) = key.value();
                let shown = || format!("({r}, {user})");
                let m = Membership::from_code(code.value()).ok_or_else(|| {
                    Error::corrupt("membership", shown(), "unknown membership code")
                })?;
                let user = StateKeyNid::new(user)
                    .ok_or_else(|| Error::corrupt("membership", shown(), "zero NID"))?;
                if only.is_none_or(|o| o == m) {
                    out.push((user, m));
                }
            }
            Ok(out)
        })
    }

    /// The rooms a user (by state-key NID) is joined to in their current state.
    fn rooms_of_user(&self, user: StateKeyNid) -> Result<Vec<RoomNid>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::USER_ROOMS)?;
            let u = user.get();
            table
                .range((u, 0)..=(u, u64::MAX))?
                .map(|row| {
                    let (key, _) = row?;
                    let (_, room) = key.value();
                    RoomNid::new(room).ok_or_else(|| {
                        Error::corrupt("user_rooms", format!("({u}, {room})"), "zero NID")
                    })
                })
                .collect()
        })
    }

    /// A user's membership in a snapshot's state: the membership of the `m.room.member` event
    /// the state holds for them.
    fn membership_in(
        &self,
        snapshot: SnapshotNid,
        user: StateKeyNid,
    ) -> Result<Option<Membership>> {
        crate::error::guard(|| {
            match self.lookup(snapshot, StateKey::new(TypeNid::MEMBER, user))? {
                Some(event) => Ok(self.expect_event(event)?.membership),
                None => Ok(None),
            }
        })
    }

    /// A user's membership in the state before an event, or after it with `after`.
    fn membership_at(
        &self,
        event: EventNid,
        user: StateKeyNid,
        after: bool,
    ) -> Result<Option<Membership>> {
        crate::error::guard(|| {
            let record = self.expect_event(event)?;
            if after && record.sets() == Some(StateKey::new(TypeNid::MEMBER, user)) {
                return Ok(record.membership);
            }
            self.membership_in(record.state_before, user)
        })
    }
}

fn lookup_nid<T: Tables>(tx: &T, kind: Kind, s: &str) -> Result<Option<u64>> {
    intern::lookup(&tx.open(kind.forward)?, s)
}

fn resolve_nid<T: Tables>(tx: &T, kind: Kind, nid: u64) -> Result<String> {
    intern::resolve(&tx.open(kind.reverse)?, kind, nid)
}

impl StoreRead for ReadTxn {
    type Txn = redb::ReadTransaction;
    fn txn(&self) -> &Self::Txn {
        &self.tx
    }
    fn block_cache(&self) -> &Arc<BlockCache> {
        &self.block_cache
    }
}

/// The one write transaction. Dropping it without [`commit`](WriteTxn::commit) aborts it: none of
/// its writes become visible.
pub struct WriteTxn {
    tx: redb::WriteTransaction,
    policy: Arc<dyn WritePolicy>,
    counts: WriteCounts,
    /// A write failed inside redb (see [`WriteTxn::guarded`]).
    poisoned: bool,
    block_cache: Arc<BlockCache>,
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
        Writer::new(&self.tx, &*self.policy, &mut self.counts, &self.block_cache)
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

    /// Deletes a room and everything only it used: its events (records, JSON and event IDs),
    /// its membership rows, its room record, and the snapshots and blocks no other room shares.
    /// The space returns to the file system at the next [`Store::compact`].
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
            self.poisoned = true;
        }
        result
    }

    /// Makes every write of this transaction visible and (by default) durable, all at once.
    pub fn commit(self) -> Result<()> {
        if self.poisoned {
            return Err(Error::Damaged(
                "an earlier write of this transaction failed inside redb; it cannot commit".into(),
            ));
        }
        crate::error::guard(|| Ok(self.tx.commit()?))
    }

    /// Discards every write of this transaction.
    pub fn abort(self) -> Result<()> {
        crate::error::guard(|| Ok(self.tx.abort()?))
    }
}

/// Resolves snapshots through one transaction's block and snapshot tables.
pub struct Resolver<B, S> {
    blocks: B,
    snapshots: S,
    cache: Arc<BlockCache>,
}

impl<B, S> std::fmt::Debug for Resolver<B, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// A snapshot's block list with its blocks' bytes held in place.
pub(crate) struct Loaded<'t> {
    snapshot: SnapshotNid,
    pub refs: Vec<BlockRef>,
    guards: Vec<BlockBytes<'t>>,
}

/// A block's bytes: in redb's page, or shared from the block cache.
pub(crate) enum BlockBytes<'t> {
    Page(AccessGuard<'t, &'static [u8]>),
    Cached(Arc<[u8]>),
}

impl BlockBytes<'_> {
    fn value(&self) -> &[u8] {
        match self {
            BlockBytes::Page(guard) => guard.value(),
            BlockBytes::Cached(bytes) => bytes,
        }
    }
}

/// Reads one block of `snapshot`, through the cache when there is one.
pub(crate) fn read_block<'b>(
    blocks: &'b impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    hash: BlockHash,
    snapshot: SnapshotNid,
) -> Result<BlockBytes<'b>> {
    if let Some(hit) = cache.and_then(|c| c.get(hash.0)) {
        return Ok(BlockBytes::Cached(hit));
    }
    let guard = blocks.get(hash.0)?.ok_or(Error::MissingBlock {
        snapshot,
        block: hash.0,
    })?;
    Ok(match cache.and_then(|c| c.insert(hash.0, guard.value())) {
        Some(shared) => BlockBytes::Cached(shared),
        None => BlockBytes::Page(guard),
    })
}

impl Loaded<'_> {
    pub fn runs(&self) -> Result<Vec<Run<'_>>> {
        self.refs
            .iter()
            .zip(&self.guards)
            .map(|(r, g)| {
                let view =
                    BlockView::parse(g.value()).map_err(|e| Error::corrupt("blocks", r.hash, e))?;
                if view.len() != r.entries as usize {
                    return Err(block_count_mismatch(self.snapshot, r, view.len()));
                }
                Ok(Run::whole(r.hash, view))
            })
            .collect()
    }
}

/// A snapshot's record: its state size and its blocks.
pub(crate) fn snapshot_record(
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    snapshot: SnapshotNid,
) -> Result<SnapshotRecord> {
    let row = snapshots
        .get(snapshot.get())?
        .ok_or(Error::UnknownSnapshot(snapshot))?;
    decode_snapshot(row.value()).map_err(|e| Error::corrupt("snapshots", snapshot, e))
}

/// The longest parent chain a snapshot may have; a longer one means a damaged (cyclic) chain.
pub(crate) const MAX_CHAIN: usize = 1024;

/// A snapshot's records from its root to itself.
pub(crate) fn snapshot_chain(
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    snapshot: SnapshotNid,
) -> Result<Vec<Layer>> {
    Ok(snapshot_chain_and_len(snapshots, snapshot)?.0)
}

/// A snapshot's records from its root to itself, and the size of its state.
pub(crate) fn snapshot_chain_and_len(
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    snapshot: SnapshotNid,
) -> Result<(Vec<Layer>, u32)> {
    let mut chain = Vec::new();
    let mut next = Some(snapshot);
    let mut state_len = None;
    while let Some(nid) = next {
        if chain.len() >= MAX_CHAIN {
            return Err(Error::corrupt(
                "snapshots",
                snapshot,
                "parent chain too long",
            ));
        }
        let record = match snapshot_record(snapshots, nid) {
            Err(Error::UnknownSnapshot(missing)) if missing != snapshot => {
                return Err(Error::corrupt(
                    "snapshots",
                    snapshot,
                    format!("missing parent {missing}"),
                ));
            }
            other => other?,
        };
        state_len.get_or_insert(record.state_len);
        next = record.parent;
        chain.push(Layer {
            snapshot: nid,
            blocks: record.blocks,
        });
    }
    chain.reverse();
    Ok((chain, state_len.unwrap_or(0)))
}

/// Every block of a snapshot, oldest first.
pub(crate) fn all_blocks(chain: &[Layer]) -> Vec<BlockRef> {
    chain
        .iter()
        .flat_map(|l| l.blocks.iter().copied())
        .collect()
}

/// A snapshot's blocks with each block's bytes held in place.
pub(crate) fn load<'b>(
    blocks: &'b impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    snapshot: SnapshotNid,
) -> Result<Loaded<'b>> {
    let chain = snapshot_chain(snapshots, snapshot)?;
    load_refs(blocks, cache, all_blocks(&chain), snapshot)
}

fn block_count_mismatch(snapshot: SnapshotNid, r: &BlockRef, found: usize) -> Error {
    Error::corrupt(
        "snapshots",
        snapshot,
        format!("block {} holds {found} entries, not {}", r.hash, r.entries),
    )
}

/// Looks a key up, reading blocks from the newest and stopping at the first that holds it, so
/// a key changed recently costs one block read however many blocks the snapshot has.
pub(crate) fn lookup_lazily(
    blocks: &impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    snapshot: SnapshotNid,
    key: StateKey,
) -> Result<Option<EventNid>> {
    for r in all_blocks(&snapshot_chain(snapshots, snapshot)?)
        .iter()
        .rev()
    {
        let row = read_block(blocks, cache, r.hash, snapshot)?;
        let view =
            BlockView::parse(row.value()).map_err(|e| Error::corrupt("blocks", r.hash, e))?;
        if let Some(event) = Run::whole(r.hash, view).find(key)? {
            return Ok(event);
        }
    }
    Ok(None)
}

/// Several snapshots combined into agreed entries and conflicts, with the states it flattened
/// on the way: the first snapshot's always, and every snapshot's when it fell back to
/// flattening them all.
///
/// Equal blocks hold equal entries, so the snapshots' common leading blocks are skipped: only
/// keys that some snapshot's later blocks set or remove can differ, and the snapshots after the
/// first are only asked about those keys. When they share little (different bases), that would
/// be a lookup per key, so it flattens them all and merges instead.
pub(crate) fn combine(
    blocks: &impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    list: &[SnapshotNid],
) -> Result<(Vec<StateMap>, Combined)> {
    let Some((&first, rest)) = list.split_first() else {
        return Ok((Vec::new(), Combined::default()));
    };
    let flatten = |s| resolve::flatten(&load(blocks, cache, snapshots, s)?.runs()?);
    let base = flatten(first)?;
    let keys = if rest.is_empty() {
        Vec::new()
    } else {
        keys_above_shared_blocks(blocks, cache, snapshots, list)?
    };
    if keys.len() > base.len() / LOOKUPS_PER_ENTRY + 64 {
        let mut states = vec![base];
        for s in rest {
            states.push(flatten(*s)?);
        }
        let combined = resolve::combine_maps(&states);
        return Ok((states, combined));
    }
    // Each other snapshot's blocks are loaded once and searched per key.
    let others = rest
        .iter()
        .map(|s| load(blocks, cache, snapshots, *s))
        .collect::<Result<Vec<_>>>()?;
    let others = others
        .iter()
        .map(|l| l.runs())
        .collect::<Result<Vec<_>>>()?;
    let mut conflicted = Vec::new();
    for key in keys {
        let mut held = vec![base.get(key)];
        for runs in &others {
            held.push(resolve::lookup(runs, key)?);
        }
        if held.iter().all(|h| *h == held[0]) {
            continue;
        }
        let mut candidates: Vec<EventNid> = held.into_iter().flatten().collect();
        candidates.sort_unstable();
        candidates.dedup();
        conflicted.push(Conflict { key, candidates });
    }
    let mut gone = conflicted.iter().map(|c| c.key).peekable();
    let unconflicted = base
        .iter()
        .filter(|e| {
            while gone.next_if(|k| *k < e.key).is_some() {}
            gone.next_if(|k| *k == e.key).is_none()
        })
        .copied()
        .collect();
    let combined = Combined {
        unconflicted: StateMap::from_sorted(unconflicted),
        conflicted,
    };
    Ok((vec![base], combined))
}

/// A lazy lookup costs about as much as flattening this many entries: past one lookup per
/// that many entries of state, [`combine`] flattens instead.
const LOOKUPS_PER_ENTRY: usize = 16;

/// The keys, sorted, of every block after the longest run of leading blocks all of `list`
/// share.
fn keys_above_shared_blocks(
    blocks: &impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    snapshots: &impl ReadableTable<u64, &'static [u8]>,
    list: &[SnapshotNid],
) -> Result<Vec<StateKey>> {
    let lists = list
        .iter()
        .map(|s| Ok(all_blocks(&snapshot_chain(snapshots, *s)?)))
        .collect::<Result<Vec<_>>>()?;
    let shared = (0..)
        .take_while(|&i| {
            let first = lists[0].get(i).map(|r| r.hash);
            first.is_some() && lists.iter().all(|l| l.get(i).map(|r| r.hash) == first)
        })
        .count();
    let mut keys = Vec::new();
    for (refs, snapshot) in lists.iter().zip(list) {
        let loaded = load_refs(blocks, cache, refs[shared..].to_vec(), *snapshot)?;
        for run in loaded.runs()? {
            keys.extend((run.start..run.end).filter_map(|i| run.view.key_at(i)));
        }
    }
    keys.sort_unstable();
    keys.dedup();
    Ok(keys)
}

/// Blocks' bytes held in place; `snapshot` is named in errors.
pub(crate) fn load_refs<'b>(
    blocks: &'b impl ReadableTable<u128, &'static [u8]>,
    cache: Option<&BlockCache>,
    refs: Vec<BlockRef>,
    snapshot: SnapshotNid,
) -> Result<Loaded<'b>> {
    let guards = refs
        .iter()
        .map(|r| read_block(blocks, cache, r.hash, snapshot))
        .collect::<Result<_>>()?;
    Ok(Loaded {
        snapshot,
        refs,
        guards,
    })
}

impl<B, S> Resolver<B, S>
where
    B: ReadableTable<u128, &'static [u8]>,
    S: ReadableTable<u64, &'static [u8]>,
{
    /// Every block of a snapshot, its parents' included, oldest first.
    pub fn blocks(&self, snapshot: SnapshotNid) -> Result<Vec<BlockRef>> {
        crate::error::guard(|| Ok(all_blocks(&snapshot_chain(&self.snapshots, snapshot)?)))
    }

    /// A snapshot's records, from the root of its parent chain to itself.
    pub fn chain(&self, snapshot: SnapshotNid) -> Result<Vec<Layer>> {
        crate::error::guard(|| snapshot_chain(&self.snapshots, snapshot))
    }

    /// How many entries a snapshot's state holds, read from its record without flattening.
    pub fn state_len(&self, snapshot: SnapshotNid) -> Result<u64> {
        crate::error::guard(|| {
            Ok(u64::from(
                snapshot_record(&self.snapshots, snapshot)?.state_len,
            ))
        })
    }

    fn load(&self, snapshot: SnapshotNid) -> Result<Loaded<'_>> {
        crate::error::guard(|| load(&self.blocks, Some(&*self.cache), &self.snapshots, snapshot))
    }

    /// The full state of a snapshot, one entry per key, sorted.
    pub fn flatten(&self, snapshot: SnapshotNid) -> Result<StateMap> {
        crate::error::guard(|| resolve::flatten(&self.load(snapshot)?.runs()?))
    }

    /// The event holding `key`, found by binary search in each block from the newest, without
    /// building the state.
    pub fn lookup(&self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        crate::error::guard(|| {
            lookup_lazily(
                &self.blocks,
                Some(&*self.cache),
                &self.snapshots,
                snapshot,
                key,
            )
        })
    }

    /// The entries of the given event types.
    pub fn filter_types(&self, snapshot: SnapshotNid, types: &[TypeNid]) -> Result<StateMap> {
        crate::error::guard(|| resolve::filter_types(&self.load(snapshot)?.runs()?, types))
    }

    /// The entries of the given (type, state key) pairs that the state holds.
    pub fn filter_keys(&self, snapshot: SnapshotNid, keys: &[StateKey]) -> Result<StateMap> {
        crate::error::guard(|| resolve::filter_keys(&self.load(snapshot)?.runs()?, keys))
    }

    /// The difference from snapshot `a` to snapshot `b`. When the two share leading blocks,
    /// only keys in the blocks after those are compared.
    pub fn diff(&self, a: SnapshotNid, b: SnapshotNid) -> Result<StateDiff> {
        crate::error::guard(|| {
            let (a, b) = (self.load(a)?, self.load(b)?);
            resolve::diff(&a.runs()?, &b.runs()?)
        })
    }

    /// Several snapshots combined: the entries all agree on, and the conflicted keys with their
    /// candidate events.
    ///
    /// Equal blocks hold equal entries, so the snapshots' common leading blocks are skipped: only
    /// keys that some snapshot's later blocks set or remove can differ. The first snapshot is
    /// flattened; the others are only asked about those keys.
    pub fn combine(&self, snapshots: &[SnapshotNid]) -> Result<Combined> {
        crate::error::guard(|| {
            Ok(combine(&self.blocks, Some(&*self.cache), &self.snapshots, snapshots)?.1)
        })
    }
}

/// Sizes of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSize {
    /// The table's name.
    pub name: &'static str,
    /// Rows in the table.
    pub rows: u64,
    /// Bytes of keys and values (redb's `stored_bytes`).
    pub stored_bytes: u64,
    /// Bytes of redb's own bookkeeping (`metadata_bytes`).
    pub metadata_bytes: u64,
    /// Bytes lost to page slack (`fragmented_bytes`).
    pub fragmented_bytes: u64,
}

/// Counts and sizes of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Every table, in a fixed order.
    pub tables: Vec<TableSize>,
    /// Entries held by all blocks together, tombstones included.
    pub stored_entries: u64,
    /// Entries of every snapshot's state, flattened and added up: what storing each snapshot
    /// in full would take.
    pub snapshot_entries: u64,
    /// Entries of the state before every event, added up: what storing a full copy per event
    /// would take.
    pub event_entries: u64,
    /// Event records.
    pub events: u64,
    /// Of which state events.
    pub state_events: u64,
}

impl StoreStats {
    /// The sizes of the named table.
    pub fn table(&self, name: &str) -> Option<&TableSize> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Rows of the named table (0 if there is no such table).
    pub fn rows(&self, name: &str) -> u64 {
        self.table(name).map_or(0, |t| t.rows)
    }

    /// Stored plus metadata bytes of the state tables: blocks, snapshots and their index.
    pub fn state_bytes(&self) -> u64 {
        state_bytes(&self.tables)
    }
}

/// Stored plus metadata bytes of the state tables (blocks, snapshots and their index) among
/// `tables`.
pub fn state_bytes(tables: &[TableSize]) -> u64 {
    tables
        .iter()
        .filter(|t| STATE_TABLES.contains(&t.name))
        .map(|t| t.stored_bytes + t.metadata_bytes)
        .sum()
}

/// The tables that hold states: what "state bytes" counts.
pub const STATE_TABLES: [&str; 7] = [
    "blocks",
    "snapshots",
    "snapshot_hashes",
    "snapshot_refs",
    "block_refs",
    "unreferenced_snapshots",
    "unreferenced_blocks",
];

fn table_size<K: Key + 'static, V: Value + 'static, T: Tables>(
    tx: &T,
    def: TableDefinition<'static, K, V>,
    name: &'static str,
) -> Result<TableSize> {
    let table = tx.open(def)?;
    let stats = table.stats()?;
    Ok(TableSize {
        name,
        rows: table.len()?,
        stored_bytes: stats.stored_bytes(),
        metadata_bytes: stats.metadata_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
    })
}

fn table_sizes<T: Tables>(tx: &T) -> Result<Vec<TableSize>> {
    let mut out = vec![
        table_size(tx, tables::BLOCKS, "blocks")?,
        table_size(tx, tables::SNAPSHOTS, "snapshots")?,
        table_size(tx, tables::SNAPSHOT_HASHES, "snapshot_hashes")?,
        table_size(tx, tables::SNAPSHOT_REFS, "snapshot_refs")?,
        table_size(tx, tables::BLOCK_REFS, "block_refs")?,
        table_size(tx, tables::UNREFERENCED_SNAPSHOTS, "unreferenced_snapshots")?,
        table_size(tx, tables::UNREFERENCED_BLOCKS, "unreferenced_blocks")?,
        table_size(tx, tables::EVENTS, "events")?,
        table_size(tx, tables::ROOMS, "rooms")?,
        table_size(tx, tables::EVENT_JSON, "event_json")?,
        table_size(tx, tables::MEMBERSHIP, "membership")?,
        table_size(tx, tables::USER_ROOMS, "user_rooms")?,
        table_size(tx, tables::ROOM_EVENTS, "room_events")?,
    ];
    for kind in [intern::ROOM, intern::TYPE, intern::STATE_KEY, intern::EVENT] {
        out.push(table_size(tx, kind.forward, kind.forward_name)?);
        out.push(table_size(tx, kind.reverse, kind.reverse_name)?);
    }
    Ok(out)
}

fn store_stats<T: Tables>(tx: &T) -> Result<StoreStats> {
    let out = table_sizes(tx)?;
    let mut stored_entries = 0;
    for row in tx.open(tables::BLOCKS)?.range::<u128>(..)? {
        let (hash, bytes) = row?;
        let view = BlockView::parse(bytes.value())
            .map_err(|e| Error::corrupt("blocks", BlockHash(hash.value()), e))?;
        stored_entries += view.len() as u64;
    }
    let mut state_lens = std::collections::HashMap::new();
    for row in tx.open(tables::SNAPSHOTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        let record = decode_snapshot(bytes.value())
            .map_err(|e| Error::corrupt("snapshots", nid.value(), e))?;
        state_lens.insert(nid.value(), u64::from(record.state_len));
    }
    let (mut events, mut state_events, mut event_entries) = (0, 0, 0);
    for row in tx.open(tables::EVENTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        let record: EventRecord = codec::decode("events", nid.value(), bytes.value())?;
        events += 1;
        state_events += u64::from(record.state_key.is_some());
        event_entries += state_lens
            .get(&record.state_before.get())
            .copied()
            .ok_or(Error::UnknownSnapshot(record.state_before))?;
    }
    Ok(StoreStats {
        tables: out,
        stored_entries,
        snapshot_entries: state_lens.values().sum(),
        event_entries,
        events,
        state_events,
    })
}
