//! Reference counts and garbage collection of blocks and snapshots.
//!
//! Every stored snapshot other than the empty one has a count: the child snapshot records that
//! name it as their parent, the event records that name it as their state before, and the room
//! records that name it as their current state. Every block has a count of the snapshot records
//! that list it. Counts move in the same write transaction as the references, so a commit never
//! holds a count that disagrees with its rows.
//!
//! Rows whose count is zero are listed in an `unreferenced_*` table, so a collection costs what
//! it deletes rather than a scan of the store. A collection deletes each unreferenced snapshot,
//! which releases its parent and its blocks, and so on down the chain, then every unreferenced
//! block.
//!
//! A writer keeps the counts it moves in memory, as net changes, and writes them in key order
//! when it is dropped (or before it collects): the ten messages after a state event share one
//! state before, and a new block or snapshot is registered and then referenced at once, so most
//! moves cancel or merge before they reach a B-tree. Writing them back is part of the writer's
//! drop, like the NID counters (`counters.rs`): if it fails, the transaction cannot commit.

use crate::engine::block::BlockHash;
use crate::engine::snapshot::{decode_snapshot, snapshot_hash};
use crate::error::{Error, Result};
use crate::nid::SnapshotNid;
use crate::store::counted::Counted;
use crate::store::writer::Writer;
use redb::ReadableTable;
use std::collections::BTreeMap;
use std::fmt;

/// What a garbage collection deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Snapshot rows deleted.
    pub snapshots: u64,
    /// Block rows deleted.
    pub blocks: u64,
}

/// The keys counted: snapshot NIDs and block hashes, both stored as plain integers.
pub(crate) trait CountKey:
    redb::Key + 'static + for<'a> redb::Value<SelfType<'a> = Self> + Copy
{
}
impl<K> CountKey for K where K: redb::Key + 'static + for<'a> redb::Value<SelfType<'a> = K> + Copy {}

/// Counts moved by a writer and not yet written back, by key.
#[derive(Default)]
pub(crate) struct PendingRefs {
    snapshots: BTreeMap<u64, Pending>,
    blocks: BTreeMap<u128, Pending>,
}

impl PendingRefs {
    pub(crate) fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.blocks.is_empty()
    }
}

/// One key's net change, and whether this writer created the row it counts.
#[derive(Clone, Copy, Default)]
struct Pending {
    delta: i64,
    created: bool,
}

impl Pending {
    fn add(&mut self, delta: i64, shown: impl fmt::Display) -> Result<()> {
        self.delta = self.delta.checked_add(delta).ok_or_else(|| {
            Error::InvalidState(format!("the count of {shown} cannot move by {delta}"))
        })?;
        self.created |= delta == 0;
        Ok(())
    }
}

/// Writes one key's net change to `refs`, where a zero count has no row, and returns whether
/// the key must now be listed as unreferenced (`Some(true)`), unlisted (`Some(false)`), or
/// neither.
fn recount<K: CountKey>(
    refs: &mut Counted<'_, K, u64>,
    key: K,
    Pending { delta, created }: Pending,
    table: &'static str,
    shown: impl fmt::Display,
) -> Result<Option<bool>> {
    if delta == 0 && !created {
        return Ok(None);
    }
    // A row this writer created has had no count before: no read needed.
    let old = match created {
        true => 0,
        false => refs.get(key)?.map_or(0, |v| v.value()),
    };
    let new = old.checked_add_signed(delta).ok_or_else(|| {
        Error::corrupt(table, shown, format!("count {old} cannot move by {delta}"))
    })?;
    match new {
        0 if old != 0 => refs.remove(key).map(drop)?,
        0 => {}
        _ => refs.insert(key, new).map(drop)?,
    }
    // A created row was never listed; one whose count was 0 before was.
    let listed = old == 0 && !created;
    Ok((listed != (new == 0)).then_some(new == 0))
}

/// Lists or unlists `key` as [`recount`] says.
fn relist<K: CountKey>(unreferenced: &mut Counted<'_, K, ()>, key: K, list: bool) -> Result<()> {
    match list {
        true => unreferenced.insert(key, ()).map(drop)?,
        false => unreferenced.remove(key).map(drop)?,
    }
    Ok(())
}

impl Writer<'_> {
    /// Adds `delta` to a snapshot's count. A delta of zero registers a new snapshot, which
    /// starts unreferenced.
    pub(crate) fn count_snapshot_ref(&mut self, snapshot: SnapshotNid, delta: i64) -> Result<()> {
        if snapshot == SnapshotNid::EMPTY {
            return Ok(());
        }
        let pending = self.refs.snapshots.entry(snapshot.get()).or_default();
        pending.add(delta, snapshot)
    }

    /// Adds `delta` to a block's count; zero registers a new, unreferenced block.
    pub(crate) fn count_block_ref(&mut self, hash: u128, delta: i64) -> Result<()> {
        let pending = self.refs.blocks.entry(hash).or_default();
        pending.add(delta, BlockHash(hash))
    }

    /// Writes the counts moved since the last write-back, in key order. They leave memory as
    /// they are written, so a failure part way poisons the transaction: it could otherwise
    /// commit without the moves not yet written.
    pub(crate) fn write_back_refs(&mut self) -> Result<()> {
        let result = self.write_pending_refs();
        if let Err(e) = &result {
            self.poison(format!("writing back the reference counts failed: {e}"));
        }
        result
    }

    fn write_pending_refs(&mut self) -> Result<()> {
        for (key, pending) in std::mem::take(&mut self.refs.snapshots) {
            if let Some(list) = recount(self.snapshot_refs()?, key, pending, "snapshot_refs", key)?
            {
                relist(self.unreferenced_snapshots()?, key, list)?;
            }
        }
        for (hash, pending) in std::mem::take(&mut self.refs.blocks) {
            let shown = BlockHash(hash);
            if let Some(list) = recount(self.block_refs()?, hash, pending, "block_refs", shown)? {
                relist(self.unreferenced_blocks()?, hash, list)?;
            }
        }
        Ok(())
    }

    /// Moves one reference from `old` (if any) to `new`.
    pub(crate) fn move_snapshot_ref(
        &mut self,
        old: Option<SnapshotNid>,
        new: SnapshotNid,
    ) -> Result<()> {
        if old == Some(new) {
            return Ok(());
        }
        self.count_snapshot_ref(new, 1)?;
        match old {
            Some(old) => self.count_snapshot_ref(old, -1),
            None => Ok(()),
        }
    }

    /// Deletes every snapshot and block that nothing references, following each deletion down
    /// to what it released.
    pub(crate) fn collect_garbage(&mut self) -> Result<Collected> {
        let mut collected = Collected::default();
        self.write_back_refs()?;
        while let Some((nid, ())) = pop_first(self.unreferenced_snapshots()?)? {
            self.delete_snapshot(nid)?;
            // What the deletion released must be listed before the next is popped.
            self.write_back_refs()?;
            collected.snapshots += 1;
        }
        while let Some((hash, ())) = pop_first(self.unreferenced_blocks()?)? {
            if self.blocks()?.remove(hash)?.is_none() {
                return Err(Error::corrupt(
                    "unreferenced_blocks",
                    format!("{hash:032x}"),
                    "names no block",
                ));
            }
            collected.blocks += 1;
        }
        // Cached snapshots after events may name rows just deleted.
        self.clear_cache()?;
        Ok(collected)
    }

    fn delete_snapshot(&mut self, nid: u64) -> Result<()> {
        let bytes = self
            .snapshots()?
            .remove(nid)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| Error::corrupt("unreferenced_snapshots", nid, "names no snapshot"))?;
        let record = decode_snapshot(&bytes).map_err(|e| Error::corrupt("snapshots", nid, e))?;
        self.snapshot_hashes()?.remove(snapshot_hash(&bytes))?;
        if let Some(parent) = record.parent {
            self.count_snapshot_ref(parent, -1)?;
        }
        for block in &record.blocks {
            self.count_block_ref(block.hash.0, -1)?;
        }
        Ok(())
    }
}

/// Removes and returns the first row of a table whose values are `()`.
fn pop_first<K: CountKey>(table: &mut Counted<'_, K, ()>) -> Result<Option<(K, ())>> {
    Ok(table.pop_first()?.map(|(k, _)| (k.value(), ())))
}
