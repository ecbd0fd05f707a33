//! The write path: every write to the store goes through a [`Writer`], which opens each table
//! on first use and keeps it open. A [`crate::WriteTxn`] call uses a writer for one operation;
//! ingest keeps one for a whole batch, since opening a redb table costs about a microsecond.

use crate::engine::block::{BlockHash, BlockView, DeltaEntry, encode_block};
use crate::engine::cache::BlockCache;
use crate::engine::policy::Layer;
use crate::engine::policy::WritePolicy;
use crate::engine::resolve::{self, Run, StateDiff, StateMap};
use crate::engine::snapshot::{BlockRef, SnapshotRecord, encode_snapshot, snapshot_hash};
use crate::engine::{
    MAX_CHAIN, all_blocks, load, load_refs, lookup_lazily, snapshot_chain, snapshot_chain_and_len,
};
use crate::error::{Error, Result};
use crate::nid::NidMap;
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid};
use crate::store::WriteCounts;
use crate::store::auth_index::{self, Position};
use crate::store::codec;
use crate::store::counted::Counted;
use crate::store::counters::Counters;
use crate::store::event_ids::{self, EventIdTables, Keying};
use crate::store::intern::{self, Forward, Kind};
use crate::store::json::{JsonDictionaries, WriterJson};
use crate::store::membership::Membership;
use crate::store::record::{EventRecord, Rejection, RoomRecord};
use crate::store::refs::PendingRefs;
use crate::store::tables;
use crate::store::write::WriteTxn;
use redb::{Key, ReadableTable, TableDefinition, Value, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// The meta key of the snapshot NID counter.
pub(crate) const NEXT_SNAPSHOT: &str = "next_snapshot_nid";

type Bytes = &'static [u8];
type BlockTable<'t> = Counted<'t, u128, Bytes>;
type SnapshotTable<'t> = Counted<'t, u64, Bytes>;

/// Where a plan puts the new snapshot: its parent, where its tail starts among the parent's
/// blocks, and how many tail blocks it keeps.
fn layout(
    chain: &[Layer],
    refs: &[BlockRef],
    plan: crate::engine::policy::Plan,
) -> (Option<SnapshotNid>, usize, usize) {
    // A record deeper than readers accept would commit a snapshot nobody can read: such a plan
    // falls back to a flat record, whatever policy made it.
    let base = plan
        .base
        .filter(|b| b + 2 <= MAX_CHAIN)
        .and_then(|b| chain.get(b).map(|_| b));
    let (parent, tail_start) = match base {
        Some(b) => (
            Some(chain[b].snapshot),
            chain[..=b].iter().map(|l| l.blocks.len()).sum(),
        ),
        None => (None, 0),
    };
    let keep = plan.keep.min(refs.len() - tail_start);
    (parent, tail_start, keep)
}

pub(crate) struct Writer<'t> {
    pub(super) tx: &'t WriteTransaction,
    /// The transaction's reason not to commit, set through [`Writer::poison`].
    poisoned: &'t mut Option<String>,
    policy: &'t dyn WritePolicy,
    counts: &'t mut WriteCounts,
    /// The transaction's count of B-tree operations, which the writer's tables add to
    /// ([`WriteTxn::btree_ops`](super::WriteTxn::btree_ops)).
    pub(super) btree_ops: &'t AtomicU64,
    block_cache: &'t BlockCache,
    pub(super) json_dictionaries: &'t JsonDictionaries,
    meta: Option<Counted<'t, tables::Text, u64>>,
    forward: [Option<Counted<'t, tables::Text, u64>>; 4],
    reverse: [Option<Counted<'t, u64, tables::Text>>; 4],
    event_keys: Option<Counted<'t, u64, u64>>,
    event_key_collisions: Option<Counted<'t, (u64, u64), ()>>,
    blocks: Option<Counted<'t, u128, Bytes>>,
    snapshots: Option<Counted<'t, u64, Bytes>>,
    snapshot_hashes: Option<Counted<'t, u128, u64>>,
    events: Option<Counted<'t, u64, Bytes>>,
    rooms: Option<Counted<'t, u64, Bytes>>,
    event_json: Option<Counted<'t, u64, Bytes>>,
    outcomes: Option<Counted<'t, u64, Bytes>>,
    membership: Option<Counted<'t, (u64, u64), u8>>,
    user_rooms: Option<Counted<'t, (u64, u64), ()>>,
    room_events: Option<Counted<'t, (u64, u64), u64>>,
    outliers: Option<Counted<'t, (u64, u64), ()>>,
    snapshot_refs: Option<Counted<'t, u64, u64>>,
    block_refs: Option<Counted<'t, u128, u64>>,
    unreferenced_snapshots: Option<Counted<'t, u64, ()>>,
    unreferenced_blocks: Option<Counted<'t, u128, ()>>,
    auth_positions: Option<Counted<'t, u64, u64>>,
    auth_chains: Option<Counted<'t, u64, u64>>,
    auth_links: Option<Counted<'t, (u64, u64), ()>>,
    auth_links_into: Option<Counted<'t, (u64, u64), ()>>,
    /// The NID counters handed out from, written back when the writer is dropped.
    pub(super) counters: Counters,
    /// The reference counts moved and not yet written back (`refs.rs`).
    pub(super) refs: PendingRefs,
    /// Room records put and not yet written back, encoded: every event of a batch moves its
    /// room's record on, and only the last one needs to reach the B-tree.
    rooms_put: BTreeMap<RoomNid, Vec<u8>>,
    /// Read-through, write-through caches for the life of the writer (one ingest batch): the
    /// previous event, its room and its strings are almost always the ones just written.
    pub(super) cache: Cache,
}

#[derive(Default)]
pub(super) struct Cache {
    nids: [HashMap<Box<str>, u64, Xxh3DefaultBuilder>; 4],
    /// Strings by NID, as [`Writer::string`] read them: state resolution reads the JSON of the
    /// same conflicted events again and again, and each row names its event IDs by NID.
    strings: [NidMap<u64, Box<str>>; 4],
    /// The last string of each kind looked up and found absent, until it is interned: receiving
    /// an event asks whether it is stored, then interns it.
    absent: [Option<Box<str>>; 4],
    /// Whether every stored event's auth events are older than it, once read.
    auth_order: Option<bool>,
    /// Whether the auth-chain index is complete, once read.
    pub(super) auth_index: Option<bool>,
    /// Events' auth-chain positions: a new event's auth events are almost always recent.
    pub(super) positions: NidMap<EventNid, Option<Position>>,
    /// Per auth chain written to, the highest sequence number its links reach on each other
    /// chain: read from `auth_links` once per writer, not once per event of a long chain.
    pub(super) chain_links: NidMap<u64, NidMap<u64, u64>>,
    /// Per chain of an auth event asked about, all its links, by target chain: (origin, target)
    /// sequence numbers. Read whole once, and each link written from the chain after is added.
    pub(super) links_of: NidMap<u64, NidMap<u64, Vec<(u64, u64)>>>,
    events: NidMap<EventNid, EventRecord>,
    afters: NidMap<EventNid, SnapshotNid>,
    /// Room records, and rooms without one: every outlier of a join asks for its room's.
    rooms: NidMap<RoomNid, Option<RoomRecord>>,
    /// Per room asked about, whether it may hold outliers: every timeline event asks whether its
    /// prev events are, and most rooms hold none.
    may_hold_outliers: NidMap<RoomNid, bool>,
    /// The store's event-ID keying, once read.
    event_keying: Option<Keying>,
    /// The current JSON dictionary and when the next is due, once read.
    pub(super) json: WriterJson,
}

fn open<'t, 's, K: Key + 'static, V: Value + 'static>(
    tx: &'t WriteTransaction,
    ops: &'t AtomicU64,
    slot: &'s mut Option<Counted<'t, K, V>>,
    def: TableDefinition<'_, K, V>,
) -> Result<&'s mut Counted<'t, K, V>> {
    match slot {
        Some(table) => Ok(table),
        None => Ok(slot.insert(Counted::new(tx.open_table(def)?, ops))),
    }
}

macro_rules! table {
    ($name:ident, $def:expr, $k:ty, $v:ty) => {
        pub(crate) fn $name(&mut self) -> Result<&mut Counted<'t, $k, $v>> {
            open(self.tx, self.btree_ops, &mut self.$name, $def)
        }
    };
}

impl<'t> Writer<'t> {
    /// A writer of `txn`, borrowing it whole: a transaction has one writer at a time.
    pub fn new(txn: &'t mut WriteTxn) -> Self {
        Writer {
            tx: &txn.tx,
            poisoned: &mut txn.poisoned,
            policy: &*txn.policy,
            counts: &mut txn.counts,
            btree_ops: &txn.btree_ops,
            block_cache: &txn.block_cache,
            json_dictionaries: &txn.json_dictionaries,
            meta: None,
            forward: [None, None, None, None],
            reverse: [None, None, None, None],
            event_keys: None,
            event_key_collisions: None,
            blocks: None,
            snapshots: None,
            snapshot_hashes: None,
            events: None,
            rooms: None,
            event_json: None,
            outcomes: None,
            membership: None,
            user_rooms: None,
            room_events: None,
            outliers: None,
            snapshot_refs: None,
            block_refs: None,
            unreferenced_snapshots: None,
            unreferenced_blocks: None,
            auth_positions: None,
            auth_chains: None,
            auth_links: None,
            auth_links_into: None,
            counters: Counters::default(),
            refs: PendingRefs::default(),
            rooms_put: BTreeMap::new(),
            cache: Cache::default(),
        }
    }

    table!(meta, tables::META, tables::Text, u64);
    table!(blocks, tables::BLOCKS, u128, Bytes);
    table!(snapshots, tables::SNAPSHOTS, u64, Bytes);
    table!(snapshot_hashes, tables::SNAPSHOT_HASHES, u128, u64);
    table!(events, tables::EVENTS, u64, Bytes);
    table!(rooms, tables::ROOMS, u64, Bytes);
    table!(event_json, tables::EVENT_JSON, u64, Bytes);
    table!(outcomes, tables::OUTCOMES, u64, Bytes);
    table!(membership, tables::MEMBERSHIP, (u64, u64), u8);
    table!(user_rooms, tables::USER_ROOMS, (u64, u64), ());
    table!(room_events, tables::ROOM_EVENTS, (u64, u64), u64);
    table!(outliers, tables::OUTLIERS, (u64, u64), ());
    table!(snapshot_refs, tables::SNAPSHOT_REFS, u64, u64);
    table!(block_refs, tables::BLOCK_REFS, u128, u64);
    table!(
        unreferenced_snapshots,
        tables::UNREFERENCED_SNAPSHOTS,
        u64,
        ()
    );
    table!(unreferenced_blocks, tables::UNREFERENCED_BLOCKS, u128, ());
    table!(auth_positions, auth_index::AUTH_POSITIONS, u64, u64);
    table!(auth_chains, auth_index::AUTH_CHAINS, u64, u64);
    table!(auth_links, auth_index::AUTH_LINKS, (u64, u64), ());
    table!(auth_links_into, auth_index::AUTH_LINKS_INTO, (u64, u64), ());

    /// Marks the transaction as holding half an operation: its commit refuses, saying `why`.
    pub(crate) fn poison(&mut self, why: String) {
        self.poisoned.get_or_insert(why);
    }

    /// The NIDs of `strings`, interning the new ones. Repeats in `strings` get the same NID.
    /// Every string is checked before anything is written.
    pub fn intern(&mut self, kind: Kind, strings: &[&str]) -> Result<Vec<u64>> {
        let misses: Vec<&str> = strings
            .iter()
            .copied()
            .filter(|s| !self.cache.nids[kind.index].contains_key(*s))
            .collect();
        for s in &misses {
            intern::validate(kind.string, kind.may_be_empty, s)?;
        }
        for s in misses {
            // A repeat is cached by now, and an event looked up just before it is interned is
            // remembered absent: neither asks the B-tree again.
            if self.lookup_nid(kind, s)?.is_none() {
                let nid = self.take_counter(kind.counter, kind.first_dynamic)?;
                match kind.forward {
                    Forward::Strings(def) => {
                        // Two tables at once: borrowed field by field.
                        let (tx, ops) = (self.tx, self.btree_ops);
                        let tables = intern::InternTables {
                            forward: open(tx, ops, &mut self.forward[kind.index], def)?,
                            reverse: open(tx, ops, &mut self.reverse[kind.index], kind.reverse)?,
                        };
                        intern::create(tables, kind, s, nid)?;
                    }
                    Forward::EventKeys => self.event_id_tables()?.create(s, nid)?,
                }
                self.cache.absent[kind.index] = None;
                self.cache.nids[kind.index].insert(Box::from(s), nid);
            }
        }
        strings
            .iter()
            .map(|s| {
                self.cache.nids[kind.index].get(*s).copied().ok_or_else(|| {
                    Error::InvalidState(format!("{} {s:?} was not interned", kind.nid))
                })
            })
            .collect()
    }

    /// Whether every stored event's auth events have smaller NIDs than the event (see
    /// [`tables::AUTH_ORDER_KEY`]).
    pub(crate) fn auth_events_precede(&mut self) -> Result<bool> {
        if let Some(known) = self.cache.auth_order {
            return Ok(known);
        }
        let known = self
            .meta()?
            .get(tables::AUTH_ORDER_KEY.as_bytes())?
            .is_some_and(|v| v.value() == 1);
        self.cache.auth_order = Some(known);
        Ok(known)
    }

    /// The string-to-NID table of a kind other than event IDs.
    fn forward_table(&mut self, kind: Kind) -> Result<&mut Counted<'t, tables::Text, u64>> {
        let def = kind.string_table()?;
        open(self.tx, self.btree_ops, &mut self.forward[kind.index], def)
    }

    /// The event-ID index's tables, with the IDs by NID it checks keys against.
    fn event_id_tables(&mut self) -> Result<EventIdTables<'_, 't>> {
        let keying = match self.cache.event_keying {
            Some(keying) => keying,
            None => {
                let keying = Keying::read(self.meta()?)?;
                *self.cache.event_keying.insert(keying)
            }
        };
        // Three tables at once: borrowed field by field.
        let (tx, ops) = (self.tx, self.btree_ops);
        Ok(EventIdTables {
            keying,
            keys: open(tx, ops, &mut self.event_keys, event_ids::EVENT_KEYS)?,
            collisions: open(
                tx,
                ops,
                &mut self.event_key_collisions,
                event_ids::EVENT_KEY_COLLISIONS,
            )?,
            ids: open(
                tx,
                ops,
                &mut self.reverse[intern::EVENT.index],
                intern::EVENT.reverse,
            )?,
        })
    }

    /// The NID-to-string table of `kind`.
    fn reverse_table(&mut self, kind: Kind) -> Result<&mut Counted<'t, u64, tables::Text>> {
        let slot = &mut self.reverse[kind.index];
        open(self.tx, self.btree_ops, slot, kind.reverse)
    }

    /// The NID of `s`, if interned.
    pub fn lookup_nid(&mut self, kind: Kind, s: &str) -> Result<Option<u64>> {
        if let Some(nid) = self.cache.nids[kind.index].get(s) {
            return Ok(Some(*nid));
        }
        if self.cache.absent[kind.index].as_deref() == Some(s) {
            return Ok(None);
        }
        let found = match kind.forward {
            Forward::Strings(_) => intern::lookup(self.forward_table(kind)?, s)?,
            Forward::EventKeys => self.event_id_tables()?.lookup(s)?,
        };
        match found {
            Some(nid) => {
                self.cache.nids[kind.index].insert(Box::from(s), nid);
            }
            None => self.cache.absent[kind.index] = Some(Box::from(s)),
        }
        Ok(found)
    }

    /// The string behind `nid`.
    pub fn string(&mut self, kind: Kind, nid: u64) -> Result<String> {
        if let Some(s) = self.cache.strings[kind.index].get(&nid) {
            return Ok(s.to_string());
        }
        let reverse = self.reverse_table(kind)?;
        let s = intern::resolve(reverse, kind, nid)?;
        self.cache.strings[kind.index].insert(nid, Box::from(s.as_str()));
        Ok(s)
    }

    /// Removes an interned string both ways; true if it was interned.
    pub(crate) fn forget(&mut self, kind: Kind, nid: u64) -> Result<bool> {
        let reverse = self.reverse_table(kind)?;
        let Some(s) = reverse.get(nid)?.map(|v| v.value().to_owned()) else {
            return Ok(false);
        };
        // Every check before the first write: a failed forget removes nothing.
        match kind.forward {
            Forward::Strings(_) => {
                self.forward_table(kind)?.remove(s.as_slice())?;
            }
            Forward::EventKeys => {
                let id = intern::text(kind.reverse_name, nid, &s)?;
                self.event_id_tables()?.forget(id, nid)?;
            }
        }
        self.reverse_table(kind)?.remove(nid)?;
        self.cache.strings[kind.index].remove(&nid);
        if let Ok(s) = std::str::from_utf8(&s) {
            self.cache.nids[kind.index].remove(s);
        }
        Ok(true)
    }

    /// Fails unless `nid` is interned as `kind`.
    pub fn require(&mut self, kind: Kind, nid: u64) -> Result<()> {
        let reverse = self.reverse_table(kind)?;
        match reverse.get(nid)? {
            Some(_) => Ok(()),
            None => Err(Error::UnknownNid {
                kind: kind.nid,
                nid,
            }),
        }
    }

    /// Stores a block unless one with the same content exists.
    pub fn put_block(&mut self, entries: &[DeltaEntry]) -> Result<BlockRef> {
        let bytes = encode_block(entries)?;
        let count = u32::try_from(entries.len())
            .map_err(|_| Error::InvalidState(format!("block of {} entries", entries.len())))?;
        let hash = BlockHash::of(&bytes);
        let table = self.blocks()?;
        let existing = table.get(hash.0)?.map(|v| v.value() == bytes.as_slice());
        match existing {
            Some(true) => {}
            Some(false) => {
                return Err(Error::HashCollision {
                    table: "blocks",
                    hash: hash.0,
                });
            }
            None => {
                table.insert(hash.0, bytes.as_slice())?;
                self.counts.blocks += 1;
                self.counts.entries += u64::from(count);
                self.count_block_ref(hash.0, 0)?;
            }
        }
        Ok(BlockRef {
            hash,
            entries: count,
        })
    }

    /// Fails unless every block is stored with the entry count its reference gives.
    pub fn check_blocks(&mut self, blocks: &[BlockRef]) -> Result<()> {
        let table = self.blocks()?;
        for r in blocks {
            let row = table
                .get(r.hash.0)?
                .ok_or_else(|| Error::InvalidState(format!("block {} is not stored", r.hash)))?;
            let view =
                BlockView::parse(row.value()).map_err(|e| Error::corrupt("blocks", r.hash, e))?;
            if view.len() != r.entries as usize {
                return Err(Error::InvalidState(format!(
                    "block {} holds {} entries, not {}",
                    r.hash,
                    view.len(),
                    r.entries
                )));
            }
        }
        Ok(())
    }

    /// Stores a block list, or finds the identical one already stored.
    pub fn insert_snapshot(
        &mut self,
        state_len: usize,
        parent: Option<SnapshotNid>,
        blocks: Vec<BlockRef>,
    ) -> Result<SnapshotNid> {
        let state_len = u32::try_from(state_len)
            .map_err(|_| Error::InvalidState(format!("state of {state_len} entries")))?;
        let record = encode_snapshot(&SnapshotRecord {
            state_len,
            parent,
            blocks: blocks.clone(),
        });
        let hash = snapshot_hash(&record);
        let existing = self.snapshot_hashes()?.get(hash)?.map(|v| v.value());
        if let Some(nid) = existing {
            let same = self
                .snapshots()?
                .get(nid)?
                .is_some_and(|stored| stored.value() == record.as_slice());
            if !same {
                return Err(Error::HashCollision {
                    table: "snapshot_hashes",
                    hash,
                });
            }
            return SnapshotNid::new(nid)
                .ok_or_else(|| Error::corrupt("snapshot_hashes", hash, "zero NID"));
        }
        let next = self.take_counter(NEXT_SNAPSHOT, SnapshotNid::EMPTY.get() + 1)?;
        let nid = SnapshotNid::new(next)
            .ok_or_else(|| Error::corrupt("meta", NEXT_SNAPSHOT, "zero NID"))?;
        // A counter behind the rows it hands out means a damaged file; never overwrite a row.
        if self.snapshots()?.insert(next, record.as_slice())?.is_some() {
            return Err(Error::corrupt(
                "snapshots",
                next,
                "counter reused an existing NID",
            ));
        }
        self.snapshot_hashes()?.insert(hash, next)?;
        self.counts.snapshots += 1;
        self.count_snapshot_ref(nid, 0)?;
        if let Some(parent) = parent {
            self.count_snapshot_ref(parent, 1)?;
        }
        for block in &blocks {
            self.count_block_ref(block.hash.0, 1)?;
        }
        Ok(nid)
    }

    /// The block and snapshot tables, and the block cache to read blocks through.
    fn read_tables(
        &mut self,
    ) -> Result<(&BlockTable<'t>, &SnapshotTable<'t>, Option<&'t BlockCache>)> {
        self.blocks()?;
        self.snapshots()?;
        match (&self.blocks, &self.snapshots) {
            (Some(b), Some(s)) => Ok((b, s, Some(self.block_cache))),
            // Both were opened just above.
            _ => Err(Error::InvalidState("tables failed to open".into())),
        }
    }

    pub fn snapshot_blocks(&mut self, snapshot: SnapshotNid) -> Result<Vec<BlockRef>> {
        Ok(all_blocks(&snapshot_chain(self.snapshots()?, snapshot)?))
    }

    /// The state the given blocks make, as if they were a snapshot.
    pub fn flatten_refs(&mut self, refs: &[BlockRef]) -> Result<StateMap> {
        let (blocks, _, cache) = self.read_tables()?;
        resolve::flatten(&load_refs(blocks, cache, refs.to_vec(), SnapshotNid::EMPTY)?.runs()?)
    }

    pub fn flatten(&mut self, snapshot: SnapshotNid) -> Result<StateMap> {
        let (blocks, snapshots, cache) = self.read_tables()?;
        resolve::flatten(&load(blocks, cache, snapshots, snapshot)?.runs()?)
    }

    pub fn lookup_key(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        let (blocks, snapshots, cache) = self.read_tables()?;
        lookup_lazily(blocks, cache, snapshots, snapshot, key)
    }

    /// Several keys looked up in one snapshot, whose blocks are loaded once.
    pub fn lookup_keys(
        &mut self,
        snapshot: SnapshotNid,
        keys: &[StateKey],
    ) -> Result<Vec<Option<EventNid>>> {
        let (blocks, snapshots, cache) = self.read_tables()?;
        let loaded = load(blocks, cache, snapshots, snapshot)?;
        let runs = loaded.runs()?;
        keys.iter().map(|k| resolve::lookup(&runs, *k)).collect()
    }

    /// Several snapshots combined, skipping the blocks they share; and the first one's state.
    pub fn combine(
        &mut self,
        list: &[SnapshotNid],
    ) -> Result<(Vec<StateMap>, crate::engine::resolve::Combined)> {
        let (blocks, snapshots, cache) = self.read_tables()?;
        crate::engine::combine(blocks, cache, snapshots, list)
    }

    pub fn diff(&mut self, a: SnapshotNid, b: SnapshotNid) -> Result<StateDiff> {
        let (blocks, snapshots, cache) = self.read_tables()?;
        let (a, b) = (
            load(blocks, cache, snapshots, a)?,
            load(blocks, cache, snapshots, b)?,
        );
        resolve::diff(&a.runs()?, &b.runs()?)
    }

    /// Stores a whole state that was built from several parents, `base` among them (given
    /// flattened as `base_state`, which the caller has already): as a delta from `base` when the
    /// policy prefers that, else in full.
    pub fn snapshot_from_merge(
        &mut self,
        base: SnapshotNid,
        base_state: &StateMap,
        state: &StateMap,
    ) -> Result<SnapshotNid> {
        if !self.policy.merge_as_delta() {
            return self.snapshot_from_state(state);
        }
        let diff = resolve::diff_maps(base_state, state);
        let delta = diff
            .added
            .iter()
            .map(|e| DeltaEntry::from(*e))
            .chain(diff.changed.iter().map(|c| DeltaEntry::set(c.key, c.new)))
            .chain(diff.removed.iter().map(|e| DeltaEntry::remove(e.key)))
            .collect();
        self.snapshot_from_delta(base, delta)
    }

    /// Stores a whole state as one block.
    pub fn snapshot_from_state(&mut self, state: &StateMap) -> Result<SnapshotNid> {
        if state.is_empty() {
            return Ok(SnapshotNid::EMPTY);
        }
        let entries: Vec<DeltaEntry> = state.iter().map(|e| DeltaEntry::from(*e)).collect();
        let block = self.put_block(&entries)?;
        self.insert_snapshot(state.len(), None, vec![block])
    }

    /// Stores `parent` changed by `delta`, laid out by the write policy.
    pub fn snapshot_from_delta(
        &mut self,
        parent: SnapshotNid,
        mut delta: Vec<DeltaEntry>,
    ) -> Result<SnapshotNid> {
        delta.sort_unstable_by_key(|e| e.key);
        if let Some(w) = delta.windows(2).find(|w| w[0].key == w[1].key) {
            return Err(Error::InvalidState(format!(
                "delta names {:?} twice",
                w[0].key
            )));
        }
        let policy = self.policy;
        let (blocks, snapshots, _) = self.read_tables()?;
        let (chain, parent_len) = snapshot_chain_and_len(snapshots, parent)?;
        if delta.is_empty() {
            return Ok(parent);
        }
        let parent_len = parent_len as usize;
        let refs = all_blocks(&chain);
        // Read in place, around the block cache: every state event reads its parent's blocks
        // here, base included, and filling the cache on a miss would copy a large base again
        // each time rooms take turns evicting each other's.
        let loaded = load_refs(blocks, None, refs.clone(), parent)?;
        let (base, tail_start, keep) = layout(&chain, &refs, policy.plan(&chain, delta.len()));
        let delta_bytes = encode_block(&delta)?;
        let delta_view =
            BlockView::parse(&delta_bytes).map_err(|e| Error::InvalidState(e.to_string()))?;
        let mut runs = loaded.runs()?;
        let mut state_len = parent_len;
        for d in &delta {
            let was = resolve::lookup(&runs, d.key)?.is_some();
            state_len =
                (state_len + usize::from(d.event.is_some())).saturating_sub(usize::from(was));
        }
        runs.drain(..tail_start + keep);
        runs.push(Run::whole(BlockHash::of(&delta_bytes), delta_view));
        let merged = resolve::merge(&runs, tail_start + keep > 0)?;
        let mut own = refs[tail_start..tail_start + keep].to_vec();
        drop(runs);
        drop(loaded);
        if !merged.is_empty() {
            own.push(self.put_block(&merged)?);
        }
        self.insert_snapshot(state_len, base, own)
    }

    pub fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        Ok(self.event_ref(event)?.cloned())
    }

    /// What `read` takes of a stored event's record, without copying the record.
    pub fn with_event<T>(
        &mut self,
        event: EventNid,
        read: impl FnOnce(&EventRecord) -> T,
    ) -> Result<Option<T>> {
        Ok(self.event_ref(event)?.map(read))
    }

    pub(super) fn event_ref(&mut self, event: EventNid) -> Result<Option<&EventRecord>> {
        if !self.cache.events.contains_key(&event) {
            let record: Option<EventRecord> = {
                let row = self.events()?.get(event.get())?;
                row.map(|v| codec::decode("events", event, v.value()))
                    .transpose()?
            };
            match record {
                Some(r) => self.cache.events.insert(event, r),
                None => return Ok(None),
            };
        }
        Ok(self.cache.events.get(&event))
    }

    pub fn expect_event(&mut self, event: EventNid) -> Result<EventRecord> {
        self.event(event)?.ok_or(Error::UnknownEvent(event))
    }

    pub fn put_event(&mut self, event: EventNid, record: &EventRecord) -> Result<()> {
        let bytes = codec::encode(record)?;
        if record.auth_events.iter().any(|a| *a >= event) && self.auth_events_precede()? {
            self.meta()?.insert(tables::AUTH_ORDER_KEY.as_bytes(), 0)?;
            self.cache.auth_order = Some(false);
        }
        // The replaced row comes back from the insert: a new event (every event of an ingest)
        // costs no extra read to learn that no reference moves away.
        let replaced = self
            .events()?
            .insert(event.get(), bytes.as_slice())?
            .map(|v| v.value().to_vec());
        let old = replaced
            .map(|b| codec::decode::<EventRecord>("events", event, &b))
            .transpose()?;
        self.move_snapshot_ref(old.as_ref().map(|r| r.state_before), record.state_before)?;
        self.index_event(event, record, old.as_ref())?;
        self.cache.afters.remove(&event);
        self.cache.events.insert(event, record.clone());
        Ok(())
    }

    pub fn room(&mut self, room: RoomNid) -> Result<Option<RoomRecord>> {
        Ok(self.room_ref(room)?.cloned())
    }

    fn room_ref(&mut self, room: RoomNid) -> Result<Option<&RoomRecord>> {
        if !self.cache.rooms.contains_key(&room) {
            let record: Option<RoomRecord> = {
                let row = self.rooms()?.get(room.get())?;
                row.map(|v| codec::decode("rooms", room, v.value()))
                    .transpose()?
            };
            self.cache.rooms.insert(room, record);
        }
        Ok(self.cache.rooms.get(&room).and_then(Option::as_ref))
    }

    /// Forgets what the per-batch caches hold, after rows were deleted under them. The room
    /// records they hold unwritten are written first.
    pub(crate) fn clear_cache(&mut self) -> Result<()> {
        self.write_back_rooms()?;
        self.cache = Cache::default();
        Ok(())
    }

    /// Puts a room's record; the row is written when the writer is dropped
    /// ([`write_back`](Self::write_back)), and read from the cache until then.
    pub fn put_room(&mut self, room: RoomNid, record: &RoomRecord) -> Result<()> {
        let old = self.room_ref(room)?.map(|r| r.current_state);
        let bytes = codec::encode(record)?;
        self.move_snapshot_ref(old, record.current_state)?;
        self.rooms_put.insert(room, bytes);
        self.cache.rooms.insert(room, Some(record.clone()));
        Ok(())
    }

    /// Deletes a room's record, written or not.
    pub(crate) fn delete_room(&mut self, room: RoomNid) -> Result<()> {
        self.rooms_put.remove(&room);
        self.cache.rooms.insert(room, None);
        self.rooms()?.remove(room.get())?;
        Ok(())
    }

    /// Writes the room records put since the last write-back; a failure part way poisons the
    /// transaction, as for the reference counts (`refs.rs`).
    fn write_back_rooms(&mut self) -> Result<()> {
        let mut result = Ok(());
        for (room, bytes) in std::mem::take(&mut self.rooms_put) {
            result = self
                .rooms()
                .and_then(|t| Ok(t.insert(room.get(), bytes.as_slice()).map(drop)?));
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = &result {
            self.poison(format!("writing back the room records failed: {e}"));
        }
        result
    }

    /// The snapshot after `event`, stored if new.
    pub fn state_after_snapshot(&mut self, event: EventNid) -> Result<SnapshotNid> {
        if let Some(after) = self.cache.afters.get(&event) {
            return Ok(*after);
        }
        let record = self.expect_event(event)?;
        let after = match record.sets() {
            Some(key) => {
                self.snapshot_from_delta(record.state_before, vec![DeltaEntry::set(key, event)])?
            }
            None => record.state_before,
        };
        self.cache.afters.insert(event, after);
        Ok(after)
    }

    /// Records why an event was rejected or soft-failed; accepted events have no row.
    pub fn put_rejection(&mut self, event: EventNid, rejection: &Rejection) -> Result<()> {
        let bytes = codec::encode(rejection)?;
        self.outcomes()?.insert(event.get(), bytes.as_slice())?;
        Ok(())
    }

    /// Forgets why an event was rejected: it has been received again, and accepted.
    pub fn clear_rejection(&mut self, event: EventNid) -> Result<()> {
        self.outcomes()?.remove(event.get())?;
        Ok(())
    }

    /// Marks a stored event of `room` as an outlier (`true`) or as part of the room's timeline.
    pub fn set_outlier(&mut self, room: RoomNid, event: EventNid, outlier: bool) -> Result<()> {
        let key = (room.get(), event.get());
        if outlier {
            self.cache.may_hold_outliers.insert(room, true);
            self.outliers()?.insert(key, ())?;
        } else {
            self.outliers()?.remove(key)?;
        }
        Ok(())
    }

    /// Whether a stored event of `room` is an outlier.
    pub fn is_outlier(&mut self, room: RoomNid, event: EventNid) -> Result<bool> {
        let may_hold = match self.cache.may_hold_outliers.get(&room) {
            Some(&known) => known,
            None => {
                let (from, to) = ((room.get(), 0), (room.get(), u64::MAX));
                let any = self.outliers()?.range(from..=to)?.next().is_some();
                self.cache.may_hold_outliers.insert(room, any);
                any
            }
        };
        Ok(may_hold && self.outliers()?.get((room.get(), event.get()))?.is_some())
    }

    pub fn add_room_event(&mut self, room: RoomNid, seq: u64, event: EventNid) -> Result<()> {
        self.room_events()?.insert((room.get(), seq), event.get())?;
        Ok(())
    }

    /// Records `user`'s membership of `room` (`None`: no longer in the room's state).
    pub fn set_membership(
        &mut self,
        room: RoomNid,
        user: StateKeyNid,
        membership: Option<Membership>,
    ) -> Result<()> {
        let (r, u) = (room.get(), user.get());
        match membership {
            Some(m) => self.membership()?.insert((r, u), m.code())?,
            None => self.membership()?.remove((r, u))?,
        };
        if membership == Some(Membership::Join) {
            self.user_rooms()?.insert((u, r), ())?;
        } else {
            self.user_rooms()?.remove((u, r))?;
        }
        Ok(())
    }
}

/// Dropping a writer writes what it holds in memory to its tables: room records, reference
/// counts (`refs.rs`) and NID counters (`counters.rs`). A failure poisons the transaction, so
/// that it cannot commit rows without them.
impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if self.counters.is_empty() && self.refs.is_empty() && self.rooms_put.is_empty() {
            return;
        }
        // Unwinding from a panic inside redb is no time to call it again; the transaction is
        // failing anyway, and is poisoned so that it cannot commit.
        if std::thread::panicking() {
            self.poison("a panic while writing".into());
            return;
        }
        // The first two poison the transaction themselves when they fail.
        if self.write_back_rooms().is_ok()
            && self.write_back_refs().is_ok()
            && let Err(e) = self.write_counters()
        {
            self.poison(format!("writing back the NID counters failed: {e}"));
        }
    }
}
