//! Reading states from where blocks and snapshot records are kept: the two source traits a key
//! value store implements, and the resolver's operations over them (load a snapshot's blocks,
//! flatten, lookup, diff, combine).
//!
//! The engine never names the store: the store implements [`BlockSource`] and
//! [`SnapshotSource`] for its tables, and anything else that can hand out bytes by key could.

use crate::engine::block::{BlockHash, BlockView};
use crate::engine::cache::BlockCache;
use crate::engine::policy::Layer;
use crate::engine::resolve::{self, Combined, Conflict, Run, StateDiff, StateMap};
use crate::engine::snapshot::{BlockRef, SnapshotRecord, decode_snapshot};
use crate::error::{Error, Result};
use crate::nid::{EventNid, SnapshotNid, StateKey, TypeNid};
use std::sync::Arc;

/// Where blocks are kept: their encoded bytes by content hash.
pub trait BlockSource {
    /// A block's bytes, held in place for as long as the borrow of the source lasts.
    type Bytes<'a>: AsRef<[u8]>
    where
        Self: 'a;

    /// The bytes of the block with this hash, if stored.
    fn block(&self, hash: BlockHash) -> Result<Option<Self::Bytes<'_>>>;
}

/// Where snapshot records are kept: their encoded bytes by snapshot NID.
pub trait SnapshotSource {
    /// A record's bytes, held in place for as long as the borrow of the source lasts.
    type Bytes<'a>: AsRef<[u8]>
    where
        Self: 'a;

    /// The bytes of the snapshot's record, if stored.
    fn snapshot(&self, snapshot: SnapshotNid) -> Result<Option<Self::Bytes<'_>>>;
}

/// Resolves snapshots through a block source and a snapshot source (in the store, one
/// transaction's two tables).
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
pub(crate) struct Loaded<P> {
    snapshot: SnapshotNid,
    pub refs: Vec<BlockRef>,
    guards: Vec<BlockBytes<P>>,
}

/// A block's bytes: in the source's page, or shared from the block cache.
pub(crate) enum BlockBytes<P> {
    Page(P),
    Cached(Arc<[u8]>),
}

impl<P: AsRef<[u8]>> BlockBytes<P> {
    pub(crate) fn value(&self) -> &[u8] {
        match self {
            BlockBytes::Page(page) => page.as_ref(),
            BlockBytes::Cached(bytes) => bytes,
        }
    }
}

/// Reads one block of `snapshot`, through the cache when there is one.
pub(crate) fn read_block<'b, B: BlockSource>(
    blocks: &'b B,
    cache: Option<&BlockCache>,
    hash: BlockHash,
    snapshot: SnapshotNid,
) -> Result<BlockBytes<B::Bytes<'b>>> {
    if let Some(hit) = cache.and_then(|c| c.get(hash.0)) {
        return Ok(BlockBytes::Cached(hit));
    }
    let page = blocks.block(hash)?.ok_or(Error::MissingBlock {
        snapshot,
        block: hash.0,
    })?;
    Ok(match cache.and_then(|c| c.insert(hash.0, page.as_ref())) {
        Some(shared) => BlockBytes::Cached(shared),
        None => BlockBytes::Page(page),
    })
}

impl<P: AsRef<[u8]>> Loaded<P> {
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
    snapshots: &impl SnapshotSource,
    snapshot: SnapshotNid,
) -> Result<SnapshotRecord> {
    let row = snapshots
        .snapshot(snapshot)?
        .ok_or(Error::UnknownSnapshot(snapshot))?;
    decode_snapshot(row.as_ref()).map_err(|e| Error::corrupt("snapshots", snapshot, e))
}

/// The longest parent chain a snapshot may have; a longer one means a damaged (cyclic) chain.
pub(crate) const MAX_CHAIN: usize = 1024;

/// A snapshot's records from its root to itself.
pub(crate) fn snapshot_chain(
    snapshots: &impl SnapshotSource,
    snapshot: SnapshotNid,
) -> Result<Vec<Layer>> {
    Ok(snapshot_chain_and_len(snapshots, snapshot)?.0)
}

/// A snapshot's records from its root to itself, and the size of its state.
pub(crate) fn snapshot_chain_and_len(
    snapshots: &impl SnapshotSource,
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
pub(crate) fn load<'b, B: BlockSource>(
    blocks: &'b B,
    cache: Option<&BlockCache>,
    snapshots: &impl SnapshotSource,
    snapshot: SnapshotNid,
) -> Result<Loaded<B::Bytes<'b>>> {
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
    blocks: &impl BlockSource,
    cache: Option<&BlockCache>,
    snapshots: &impl SnapshotSource,
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
    blocks: &impl BlockSource,
    cache: Option<&BlockCache>,
    snapshots: &impl SnapshotSource,
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
    blocks: &impl BlockSource,
    cache: Option<&BlockCache>,
    snapshots: &impl SnapshotSource,
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
pub(crate) fn load_refs<'b, B: BlockSource>(
    blocks: &'b B,
    cache: Option<&BlockCache>,
    refs: Vec<BlockRef>,
    snapshot: SnapshotNid,
) -> Result<Loaded<B::Bytes<'b>>> {
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

impl<B: BlockSource, S: SnapshotSource> Resolver<B, S> {
    /// A resolver over the given block and snapshot sources, reading blocks through `cache`.
    pub fn new(blocks: B, snapshots: S, cache: Arc<BlockCache>) -> Self {
        Resolver {
            blocks,
            snapshots,
            cache,
        }
    }

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

    fn load(&self, snapshot: SnapshotNid) -> Result<Loaded<B::Bytes<'_>>> {
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
