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

use crate::engine::block::BlockHash;
use crate::engine::snapshot::{decode_snapshot, snapshot_hash};
use crate::error::{Error, Result};
use crate::nid::SnapshotNid;
use crate::store::counted::Counted;
use crate::store::writer::Writer;
use redb::ReadableTable;
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

/// Moves `key`'s count in `refs` by `delta` and returns (old, new). A zero count has no row.
fn shift<K: CountKey>(
    refs: &mut Counted<'_, K, u64>,
    key: K,
    delta: i64,
    table: &'static str,
    shown: impl fmt::Display,
) -> Result<(u64, u64)> {
    let old = refs.get(key)?.map_or(0, |v| v.value());
    let new = old.checked_add_signed(delta).ok_or_else(|| {
        Error::corrupt(table, shown, format!("count {old} cannot move by {delta}"))
    })?;
    if new == 0 {
        refs.remove(key)?;
    } else {
        refs.insert(key, new)?;
    }
    Ok((old, new))
}

/// Keeps `key` listed as unreferenced exactly while its count is zero.
fn relist<K: CountKey>(
    unreferenced: &mut Counted<'_, K, ()>,
    key: K,
    (old, new): (u64, u64),
) -> Result<()> {
    if new == 0 {
        unreferenced.insert(key, ())?;
    } else if old == 0 {
        unreferenced.remove(key)?;
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
        let key = snapshot.get();
        let moved = shift(self.snapshot_refs()?, key, delta, "snapshot_refs", key)?;
        relist(self.unreferenced_snapshots()?, key, moved)
    }

    /// Adds `delta` to a block's count; zero registers a new, unreferenced block.
    pub(crate) fn count_block_ref(&mut self, hash: u128, delta: i64) -> Result<()> {
        let shown = BlockHash(hash);
        let moved = shift(self.block_refs()?, hash, delta, "block_refs", shown)?;
        relist(self.unreferenced_blocks()?, hash, moved)
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
        while let Some((nid, ())) = pop_first(self.unreferenced_snapshots()?)? {
            self.delete_snapshot(nid)?;
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
        self.clear_cache();
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
