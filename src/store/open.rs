//! Opening a store: the file (or memory), its caches and write policy, and its tables.

use crate::engine::cache::{BlockCache, DEFAULT_BLOCK_CACHE_BYTES};
use crate::engine::policy::{WritePolicy, default_policy};
use crate::engine::snapshot::{SnapshotRecord, encode_snapshot, snapshot_hash};
use crate::error::{Error, Result};
use crate::nid::SnapshotNid;
use crate::store::auth_index;
use crate::store::event_ids;
use crate::store::intern;
use crate::store::json::{self, JsonDictionaries};
use crate::store::read::ReadTxn;
use crate::store::tables;
use crate::store::write::{WriteCounts, WriteTxn};
use crate::store::writer::NEXT_SNAPSHOT;
use redb::{Database, ReadableDatabase, ReadableTable};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A room-state store in one redb file (or in memory).
///
/// **A damaged file.** redb trusts the bytes of its own pages, and some damaged pages make it
/// panic rather than return an error. Every entry point of this crate that reaches redb catches
/// such an unwind and returns [`Error::Damaged`](crate::Error::Damaged); the default panic hook
/// still prints Rust's panic message first (the `roomstate` CLI installs a hook that prints one
/// line instead). A binary built with `panic = "abort"` cannot catch it and dies: such an embedder
/// should run [`Store::verify_file`] (redb's checksums over every page) before trusting a file
/// after an unclean shutdown or from elsewhere, and [`StoreRead::check`](crate::StoreRead::check)
/// to decode every row.
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
    serials: Arc<Serials>,
    policy: Arc<dyn WritePolicy>,
    two_phase_commit: bool,
    block_cache: Arc<BlockCache>,
    json_dictionaries: Arc<JsonDictionaries>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("policy", &self.policy.name())
            .finish_non_exhaustive()
    }
}

/// Which write transactions of a store began and committed, so that caches of what a
/// transaction wrote (the Matrix layer's parsed events) can tell whether it still stands.
#[derive(Debug, Default)]
pub(crate) struct Serials {
    /// The serial of the last transaction begun; they count from 1.
    pub(crate) begun: AtomicU64,
    /// The serial of the last transaction committed.
    pub(crate) committed: AtomicU64,
}

/// Options for opening a [`Store`].
#[derive(Debug)]
pub struct StoreBuilder {
    policy: Arc<dyn WritePolicy>,
    cache_bytes: usize,
    block_cache_bytes: usize,
    two_phase_commit: bool,
    json_training: Vec<u64>,
    event_key_bits: u32,
}

impl Default for StoreBuilder {
    fn default() -> Self {
        StoreBuilder {
            policy: Arc::from(default_policy()),
            cache_bytes: DEFAULT_CACHE_BYTES,
            block_cache_bytes: DEFAULT_BLOCK_CACHE_BYTES,
            two_phase_commit: true,
            json_training: json::TRAIN_AT.to_vec(),
            event_key_bits: 64,
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

    /// The numbers of stored events' JSON rows at which a compression dictionary is trained
    /// from the rows stored so far (by default 2,000 and 100,000). Rows are compressed with the
    /// latest dictionary; each dictionary is kept, so older rows stay readable. An empty list
    /// trains none: rows written by this store stay raw, and rows compressed earlier still
    /// read. `docs/format.md` gives the row layout.
    ///
    /// ```
    /// # fn main() -> roomstate::Result<()> {
    /// let dir = tempfile::tempdir()?;
    /// let store = roomstate::Store::builder()
    ///     .json_training(&[500])
    ///     .open(dir.path().join("s.redb"))?;
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub fn json_training(mut self, rows: &[u64]) -> Self {
        let mut rows = rows.to_vec();
        rows.sort_unstable();
        self.json_training = rows;
        self
    }

    /// For tests: a new store keys its event IDs by `bits` bits (0 to 64) instead of 64, so
    /// that IDs share keys and the collision paths run. An existing store keeps its own width.
    #[doc(hidden)]
    pub fn event_key_bits(mut self, bits: u32) -> Self {
        self.event_key_bits = bits;
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
    /// file at `path`. An empty file at `path` is treated as missing, unless it is read-only.
    ///
    /// # Errors
    ///
    /// [`Error::InUse`] when the file is open already, in this process or another;
    /// [`Error::NotWritable`] when it may not be opened for writing; [`Error::ForeignFile`] when
    /// it is not a store of this crate. None of them touches the file.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Store> {
        crate::error::guard(|| self.open_path(path.as_ref()))
    }

    fn open_path(self, path: &Path) -> Result<Store> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(Error::ForeignFile("a directory".to_owned())),
            Ok(m) if m.len() == 0 => {
                // Replaced only if it could be written: a read-only file stays as it is.
                let writable = std::fs::OpenOptions::new().write(true).open(path);
                // Another opener may have removed it first: that is fine.
                match writable.and_then(|_| std::fs::remove_file(path)) {
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        return Err(Error::NotWritable(path.display().to_string()));
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                    _ => {}
                }
                self.create_file(path)?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.create_file(path)?,
            Err(e) => return Err(e.into()),
        }
        let db = self.redb().open(path).map_err(|e| match e {
            // A file of something else altogether, unlike a damaged store, does not even start
            // as redb's files do.
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::InvalidData && !starts_as_redb(path) =>
            {
                Error::ForeignFile(format!("not a redb database ({io})"))
            }
            redb::DatabaseError::Storage(redb::StorageError::Io(io))
                if io.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Error::NotWritable(path.display().to_string())
            }
            other => other.into(),
        })?;
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

    /// An event's JSON prepared as a writer of this store would, on the caller's thread: the
    /// event IDs at byte ranges `ids` taken out, the rest compressed.
    pub(crate) fn prepare_json(
        &self,
        json: &[u8],
        ids: &[std::ops::Range<usize>],
    ) -> json::PreparedJson {
        self.json_dictionaries.prepare(json, ids)
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
                Some(tables::SCHEMA_WITHOUT_JSON_REFERENCES) => {
                    tx.open_table(tables::META)?
                        .insert(tables::SCHEMA_KEY.as_bytes(), tables::SCHEMA_VERSION)?;
                    tx.commit()?;
                }
                Some(
                    tables::SCHEMA_WITHOUT_OUTCOMES
                    | tables::SCHEMA_WITHOUT_OUTLIERS
                    | tables::SCHEMA_WITHOUT_COMPRESSION
                    | tables::SCHEMA_WITHOUT_PACKED_BLOCKS
                    | tables::SCHEMA_WITH_EVERY_LINK
                    | tables::SCHEMA_WITH_EVENT_IDS_BY_STRING,
                ) => {
                    event_ids::build_from_ids(&tx)?;
                    tx.open_table(tables::OUTCOMES)?;
                    tx.open_table(tables::OUTLIERS)?;
                    tx.open_table(json::JSON_DICTIONARIES)?;
                    tx.open_table(tables::META)?
                        .insert(tables::SCHEMA_KEY.as_bytes(), tables::SCHEMA_VERSION)?;
                    tx.commit()?;
                }
                Some(other) => return Err(Error::UnsupportedSchema(other)),
                None => {
                    refuse_foreign(&tx)?;
                    create_tables(&tx)?;
                    intern::seed_well_known(&tx)?;
                    event_ids::Keying::create(&tx, options.event_key_bits)?;
                    let empty = encode_snapshot(&SnapshotRecord::default());
                    tx.open_table(tables::SNAPSHOTS)?
                        .insert(SnapshotNid::EMPTY.get(), empty.as_slice())?;
                    tx.open_table(tables::SNAPSHOT_HASHES)?
                        .insert(snapshot_hash(&empty), SnapshotNid::EMPTY.get())?;
                    let mut meta = tx.open_table(tables::META)?;
                    meta.insert(NEXT_SNAPSHOT.as_bytes(), SnapshotNid::EMPTY.get() + 1)?;
                    meta.insert(tables::SCHEMA_KEY.as_bytes(), tables::SCHEMA_VERSION)?;
                    meta.insert(tables::AUTH_ORDER_KEY.as_bytes(), 1)?;
                    meta.insert(auth_index::AUTH_INDEX_KEY.as_bytes(), 1)?;
                    drop(meta);
                    tx.commit()?;
                }
            }
            Ok(Store {
                db,
                serials: Arc::default(),
                policy: Arc::clone(&options.policy),
                two_phase_commit: options.two_phase_commit,
                block_cache: Arc::new(BlockCache::new(options.block_cache_bytes)),
                json_dictionaries: Arc::new(JsonDictionaries::new(options.json_training.clone())),
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
                json_dictionaries: Arc::clone(&self.json_dictionaries),
            })
        })
    }

    /// Starts the write transaction, waiting for any other writer to finish. Commits are durable
    /// when [`WriteTxn::commit`] returns, unless [`WriteTxn::set_durable`] says otherwise.
    pub fn write(&self) -> Result<WriteTxn> {
        crate::error::guard(|| {
            let mut tx = self.db.begin_write()?;
            tx.set_two_phase_commit(self.two_phase_commit);
            let serial = self.serials.begun.fetch_add(1, Ordering::Relaxed) + 1;
            Ok(WriteTxn {
                tx,
                serial,
                serials: Arc::clone(&self.serials),
                policy: Arc::clone(&self.policy),
                counts: WriteCounts::default(),
                btree_ops: Default::default(),
                poisoned: None,
                block_cache: Arc::clone(&self.block_cache),
                json_dictionaries: Arc::clone(&self.json_dictionaries),
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

/// A file without our schema is new only if it holds no tables (opening `META` above created
/// it, in this transaction, which is then dropped): another program's redb file is left alone.
fn refuse_foreign(tx: &redb::WriteTransaction) -> Result<()> {
    use redb::{MultimapTableHandle, TableHandle};
    let mut names: Vec<String> = tx.list_tables()?.map(|t| t.name().to_owned()).collect();
    names.extend(tx.list_multimap_tables()?.map(|t| t.name().to_owned()));
    names.retain(|n| n != tables::META.name());
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    Err(Error::ForeignFile(format!(
        "a redb database with other tables ({})",
        names.join(", ")
    )))
}

/// Whether the file begins with the first bytes of redb's magic number.
fn starts_as_redb(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    std::fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut head).is_ok()) && &head == b"redb"
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

pub(super) fn create_tables(tx: &redb::WriteTransaction) -> Result<()> {
    for def in [tables::ROOM_IDS, tables::TYPES, tables::STATE_KEYS] {
        tx.open_table(def)?;
    }
    tx.open_table(event_ids::EVENT_KEYS)?;
    tx.open_table(event_ids::EVENT_KEY_COLLISIONS)?;
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
        tables::OUTCOMES,
    ] {
        tx.open_table(def)?;
    }
    tx.open_table(tables::MEMBERSHIP)?;
    tx.open_table(tables::USER_ROOMS)?;
    tx.open_table(tables::ROOM_EVENTS)?;
    tx.open_table(tables::OUTLIERS)?;
    tx.open_table(tables::BLOCKS)?;
    tx.open_table(tables::SNAPSHOT_HASHES)?;
    tx.open_table(tables::SNAPSHOT_REFS)?;
    tx.open_table(tables::BLOCK_REFS)?;
    tx.open_table(tables::UNREFERENCED_SNAPSHOTS)?;
    tx.open_table(tables::UNREFERENCED_BLOCKS)?;
    tx.open_table(auth_index::AUTH_POSITIONS)?;
    tx.open_table(auth_index::AUTH_CHAINS)?;
    tx.open_table(auth_index::AUTH_LINKS)?;
    tx.open_table(auth_index::AUTH_LINKS_INTO)?;
    tx.open_table(json::JSON_DICTIONARIES)?;
    Ok(())
}
