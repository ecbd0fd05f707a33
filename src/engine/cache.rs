//! A store-wide cache of block bytes, shared by every transaction's resolver.
//!
//! Blocks are stored under the hash of their bytes and never change, so a copy kept in memory
//! stays right for as long as anything names that hash, across transactions and commits; a block
//! deleted by garbage collection is simply never asked for again, and if the same content comes
//! back it has the same bytes. The cache saves the B-tree descent and page-cache work of a redb
//! read, which is most of a lookup's cost when a state is a few blocks, and it keeps large
//! blocks in memory whatever redb's page cache does with them (redb evicts per stripe, so a page
//! larger than a stripe is never kept).
//!
//! Eviction is generational: entries live in a young and an old map, each holding at most half
//! the budget. A hit in the old map moves the entry to the young one; when the young map fills,
//! the old one is dropped and the young one becomes old. Every operation is O(1), the held bytes
//! (blocks plus a per-block allowance) never exceed the budget, and a block read twice within
//! half a budget's worth of reads stays.
//!
//! Write transactions read through the cache too, so a block written by a transaction that is
//! then aborted can stay cached: it wastes budget until evicted, and is never wrong, since only
//! a snapshot naming its hash would ask for it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex};

/// Bytes of block content a store caches unless its builder says otherwise.
pub const DEFAULT_BLOCK_CACHE_BYTES: usize = 32 << 20;

/// The keys are xxh3-128 hashes already, so their low 64 bits are as good a hash as any.
#[derive(Default)]
struct HashOfHash(u64);

impl Hasher for HashOfHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        // Truncation keeps the low half, which is what we want.
        self.0 = n as u64;
    }
}

/// What one cached block counts against the budget: its bytes, the `Arc` header, and about a
/// map slot's worth of key, pointer and control bytes.
const PER_BLOCK_BYTES: usize = 64;

fn cost(bytes: &[u8]) -> usize {
    bytes.len() + PER_BLOCK_BYTES
}

type Generation = HashMap<u128, Arc<[u8]>, BuildHasherDefault<HashOfHash>>;

#[derive(Default)]
struct Generations {
    young: Generation,
    young_bytes: usize,
    old: Generation,
}

/// Block bytes by content hash, bounded in bytes. Cheap to share: clone the `Arc` it lives in.
pub struct BlockCache {
    half_budget: usize,
    maps: Mutex<Generations>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("budget", &(self.half_budget * 2))
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `budget` bytes of blocks. A block larger than half the budget is
    /// never kept.
    pub fn new(budget: usize) -> Self {
        BlockCache {
            half_budget: budget / 2,
            maps: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // The maps are left whole by every operation under the lock (no user code runs there),
        // so a lock poisoned by a panic elsewhere still guards consistent maps.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cached bytes of block `hash`. Crate-private, like [`BlockCache::insert`]: bytes put
    /// in from outside could differ from the file's.
    pub(crate) fn get(&self, hash: u128) -> Option<Arc<[u8]>> {
        if self.half_budget == 0 {
            return None;
        }
        let mut g = self.lock();
        if let Some(hit) = g.young.get(&hash) {
            return Some(Arc::clone(hit));
        }
        let hit = g.old.remove(&hash)?;
        let dropped = Self::admit(&mut g, self.half_budget, hash, Arc::clone(&hit));
        drop(g);
        drop(dropped);
        Some(hit)
    }

    /// Keeps a copy of block `hash`'s bytes and returns it, or `None` when the block is larger
    /// than half the budget and is not kept.
    pub(crate) fn insert(&self, hash: u128, bytes: &[u8]) -> Option<Arc<[u8]>> {
        if cost(bytes) > self.half_budget {
            return None;
        }
        let shared: Arc<[u8]> = Arc::from(bytes);
        let mut g = self.lock();
        if let Some(already) = g.young.get(&hash) {
            return Some(Arc::clone(already));
        }
        // Another reader may have put it in meanwhile; it moves up rather than being copied.
        let kept = g.old.remove(&hash).unwrap_or(shared);
        let dropped = Self::admit(&mut g, self.half_budget, hash, Arc::clone(&kept));
        drop(g);
        drop(dropped);
        Some(kept)
    }

    /// Puts a block in the young generation, aging it first when full. Returns the generation
    /// that fell out, for the caller to free after unlocking.
    #[must_use]
    fn admit(g: &mut Generations, half_budget: usize, hash: u128, bytes: Arc<[u8]>) -> Generation {
        let mut dropped = Generation::default();
        if g.young_bytes + cost(&bytes) > half_budget {
            dropped = std::mem::replace(&mut g.old, std::mem::take(&mut g.young));
            g.young_bytes = 0;
        }
        g.young_bytes += cost(&bytes);
        g.young.insert(hash, bytes);
        dropped
    }

    /// Bytes held now: the blocks' bytes plus a fixed allowance per block for the map slot and
    /// the shared pointer's header. Never more than the budget.
    pub fn held_bytes(&self) -> usize {
        let g = self.lock();
        g.young_bytes + g.old.values().map(|b| cost(b)).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_and_stays_within_budget() {
        let cache = BlockCache::new(1000);
        let first = cache.insert(1, &[7; 100]).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.get(1).unwrap()));
        for h in 2..100 {
            cache.insert(h, &[7; 100]);
            assert!(cache.held_bytes() <= 1000);
        }
        // Too large to keep.
        assert!(cache.insert(500, &[7; 500]).is_none());
        assert!(cache.get(500).is_none());
    }

    #[test]
    fn a_block_used_again_survives_a_generation() {
        // Each block costs 36 + 64 = 100 bytes: five fill a generation.
        let cache = BlockCache::new(1000);
        for h in 1..6 {
            cache.insert(h, &[7; 36]);
        }
        // The young generation is full: the next admission makes it old, and a hit on 1 moves
        // it back to the young one.
        cache.insert(6, &[7; 36]);
        assert!(cache.get(1).is_some());
        for h in 7..11 {
            cache.insert(h, &[7; 36]);
        }
        assert!(cache.get(1).is_some());
        assert!(cache.get(2).is_none());
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let cache = BlockCache::new(0);
        assert!(cache.insert(1, &[]).is_none());
        assert!(cache.get(1).is_none());
        assert_eq!(cache.held_bytes(), 0);
    }
}
