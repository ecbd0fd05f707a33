//! Write policies: how a new snapshot is laid out from its parent and a state delta.
//!
//! A snapshot is a chain of records, root first; each record adds blocks after its parent's
//! (see [`crate::engine::snapshot`]). A policy sees the parent's chain and answers with a [`Plan`]: which
//! record of the chain the new snapshot hangs from (or none), and how many of the blocks after
//! that record to reuse as they are. The store merges the remaining blocks with the delta into
//! one new block and appends it. Every layout the anchors use, and ours, is a choice of these two
//! numbers:
//!
//! | policy | plan |
//! |---|---|
//! | [`Full`] | no parent, reuse nothing: the whole state again |
//! | [`Dendrite`] | no parent; reuse every block while there are fewer than 64, else nothing |
//! | [`Synapse`] | hang from the parent (a one-block delta) while the chain has fewer than 100 hops |
//! | [`Conduit`] | hang from the parent, or fold into lower layers by Conduit's size rule |
//! | [`Tiered`] | our default: a shared base record plus a few small runs, merged by size |

use crate::engine::snapshot::BlockRef;
use crate::nid::SnapshotNid;
use std::fmt;

/// One record of a snapshot's chain: the snapshot and the blocks it adds to its parent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The record's snapshot.
    pub snapshot: SnapshotNid,
    /// The blocks it adds, oldest first.
    pub blocks: Vec<BlockRef>,
}

impl Layer {
    /// Entries in the layer's own blocks, tombstones included.
    pub fn entries(&self) -> u64 {
        self.blocks.iter().map(|b| u64::from(b.entries)).sum()
    }
}

/// The decision of a [`WritePolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The index in the parent's chain of the record the new snapshot hangs from; `None` for a
    /// snapshot that lists all of its blocks itself. The blocks of the records after it form the
    /// *tail*.
    pub base: Option<usize>,
    /// How many leading blocks of the tail the new snapshot reuses unchanged; the rest are merged
    /// with the delta into one new block. Values past the tail's end mean the whole tail.
    pub keep: usize,
}

impl Plan {
    /// A record of its own listing every block, with the delta as one more block.
    pub fn append() -> Self {
        Plan {
            base: None,
            keep: usize::MAX,
        }
    }

    /// The whole state again, as one block.
    pub fn rewrite() -> Self {
        Plan {
            base: None,
            keep: 0,
        }
    }

    /// A record hanging from the parent itself, holding just the delta.
    pub fn on_parent(chain: &[Layer]) -> Self {
        Plan {
            base: chain.len().checked_sub(1),
            keep: 0,
        }
    }
}

/// Chooses the layout of each new snapshot. Implementations must be deterministic, so that the
/// same history gives the same snapshots.
pub trait WritePolicy: fmt::Debug + Send + Sync {
    /// A short name for reports, such as `dendrite64`.
    fn name(&self) -> &str;

    /// Plans a snapshot built from a parent, given as its chain of records (root first), plus
    /// a delta of `delta_len` entries.
    fn plan(&self, chain: &[Layer], delta_len: usize) -> Plan;

    /// Whether a state built from several parents is stored as a delta from the first parent
    /// (`true`), or written in full (`false`, the seed's rule).
    fn merge_as_delta(&self) -> bool {
        false
    }
}

fn block_count(chain: &[Layer]) -> usize {
    chain.iter().map(|l| l.blocks.len()).sum()
}

/// A full copy of the state for every change: the naive baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Full;

impl WritePolicy for Full {
    fn name(&self) -> &str {
        "full"
    }

    fn plan(&self, _chain: &[Layer], _delta_len: usize) -> Plan {
        Plan::rewrite()
    }
}

/// The seed's rule, from Dendrite's roomserver: append the delta as a new block while the parent
/// has fewer than `max_blocks` blocks; otherwise write the whole state again. Merges are written
/// in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dendrite {
    /// The block count at which the state is written again in full.
    pub max_blocks: usize,
}

/// Dendrite's `maxStateBlockNIDs`.
pub const DENDRITE_MAX_BLOCKS: usize = 64;

impl Default for Dendrite {
    fn default() -> Self {
        Dendrite {
            max_blocks: DENDRITE_MAX_BLOCKS,
        }
    }
}

impl WritePolicy for Dendrite {
    fn name(&self) -> &str {
        "dendrite64"
    }

    fn plan(&self, chain: &[Layer], _delta_len: usize) -> Plan {
        if block_count(chain) < self.max_blocks {
            Plan::append()
        } else {
            Plan::rewrite()
        }
    }
}

/// Synapse's state groups: each state is a delta on its predecessor until the chain would reach
/// `max_hops`, then a full state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synapse {
    /// Synapse's `MAX_STATE_DELTA_HOPS`.
    pub max_hops: usize,
}

/// Synapse's `MAX_STATE_DELTA_HOPS`.
pub const SYNAPSE_MAX_HOPS: usize = 100;

impl Default for Synapse {
    fn default() -> Self {
        Synapse {
            max_hops: SYNAPSE_MAX_HOPS,
        }
    }
}

impl WritePolicy for Synapse {
    fn name(&self) -> &str {
        "synapse100"
    }

    fn plan(&self, chain: &[Layer], _delta_len: usize) -> Plan {
        // A chain of n records is n - 1 hops; the new record adds one.
        if chain.is_empty() || chain.len() >= self.max_hops {
            Plan::rewrite()
        } else {
            Plan::on_parent(chain)
        }
    }

    fn merge_as_delta(&self) -> bool {
        true
    }
}

/// The Conduit family's state compressor: a full layer and at most `max_layers - 1` diff layers.
/// A new diff folds into the layer below it while `diff² ≥ 2 · diff_to_sibling · layer`, and
/// always when the layers are full; folding past the full layer writes a new full state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conduit {
    /// Layers, the full one included.
    pub max_layers: usize,
    /// Conduit passes 2 for current-state updates and 1,000,000 for state before an event.
    pub diff_to_sibling: u64,
}

impl Default for Conduit {
    /// Four layers; `diff_to_sibling` 2, the value of the published simulation of this rule
    /// (about 456 bytes per change at 30,000 entries). With Conduit's 1,000,000 for states
    /// before events, the top layer only grows and every change rewrites it.
    fn default() -> Self {
        Conduit {
            max_layers: 4,
            diff_to_sibling: 2,
        }
    }
}

impl WritePolicy for Conduit {
    fn name(&self) -> &str {
        "conduit4"
    }

    fn plan(&self, chain: &[Layer], delta_len: usize) -> Plan {
        let mut diff = delta_len as u64;
        let mut base = chain.len();
        while let Some(candidate) = base.checked_sub(1) {
            let layer = chain[candidate].entries();
            let layers_full = candidate + 1 >= self.max_layers;
            if !layers_full && diff * diff < 2 * self.diff_to_sibling * layer {
                return Plan {
                    base: Some(candidate),
                    keep: 0,
                };
            }
            diff += layer;
            base = candidate;
        }
        Plan::rewrite()
    }

    fn merge_as_delta(&self) -> bool {
        true
    }
}

/// Our default: a *base* record listing a few large runs, and on top of it one record of small
/// runs per snapshot, so a snapshot's own record stays a handful of references however large
/// the state.
///
/// - The small runs form a binary counter: the delta merges with the newest runs while they are
///   no larger than it, so there are at most log₂(`promote_at`) of them and each entry is
///   rewritten at most that many times.
/// - When the small runs would pass `promote_at` entries, they are merged into one run that joins
///   the base, and the new snapshot becomes the next base. The base's runs merge by size ratio
///   (`base_ratio`), like a tiered LSM, so the largest run — nearly the whole state — is rewritten
///   rarely.
/// - Merges are stored as deltas from their first parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiered {
    /// Entries the small runs may hold before they join the base.
    pub promote_at: u64,
    /// A base run merges with the newer runs after it once it is at most this many times their
    /// size.
    pub base_ratio: u64,
}

impl Default for Tiered {
    fn default() -> Self {
        Tiered {
            promote_at: 64,
            base_ratio: 8,
        }
    }
}

impl Tiered {
    /// How many of `runs` stay when `incoming` entries arrive after them: runs at most `ratio`
    /// times the merged size are merged in, newest first.
    fn keep(runs: &[BlockRef], incoming: u64, ratio: u64) -> usize {
        let mut merged = incoming;
        let mut keep = runs.len();
        while let Some(last) = keep.checked_sub(1) {
            let size = u64::from(runs[last].entries);
            if size > merged.saturating_mul(ratio) {
                break;
            }
            merged += size;
            keep = last;
        }
        keep
    }
}

impl WritePolicy for Tiered {
    fn name(&self) -> &str {
        "tiered"
    }

    fn plan(&self, chain: &[Layer], delta_len: usize) -> Plan {
        let delta = delta_len as u64;
        match chain {
            [] => Plan::rewrite(),
            [_base] => Plan::on_parent(chain),
            [base_chain @ .., small] => {
                if small.entries() + delta <= self.promote_at {
                    return Plan {
                        base: Some(base_chain.len() - 1),
                        keep: Tiered::keep(&small.blocks, delta, 1),
                    };
                }
                let base_runs: Vec<BlockRef> =
                    base_chain.iter().flat_map(|l| l.blocks.clone()).collect();
                Plan {
                    base: None,
                    keep: Tiered::keep(&base_runs, small.entries() + delta, self.base_ratio),
                }
            }
        }
    }

    fn merge_as_delta(&self) -> bool {
        true
    }
}

/// The policy a store uses unless its builder is given another.
pub fn default_policy() -> Box<dyn WritePolicy> {
    Box::new(Tiered::default())
}

/// Every shipped policy by name, for the bench command and tests.
pub fn by_name(name: &str) -> Option<Box<dyn WritePolicy>> {
    Some(match name {
        "full" => Box::new(Full),
        "dendrite64" => Box::new(Dendrite::default()),
        "synapse100" => Box::new(Synapse::default()),
        "conduit4" => Box::new(Conduit::default()),
        "tiered" => Box::new(Tiered::default()),
        _ => return None,
    })
}

/// The names [`by_name`] knows.
pub const POLICY_NAMES: [&str; 5] = ["tiered", "dendrite64", "synapse100", "conduit4", "full"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::block::BlockHash;

    fn layer(sizes: &[u32]) -> Layer {
        Layer {
            snapshot: SnapshotNid::EMPTY,
            blocks: sizes
                .iter()
                .map(|&entries| BlockRef {
                    hash: BlockHash(1),
                    entries,
                })
                .collect(),
        }
    }

    #[test]
    fn dendrite_appends_until_limit() {
        let p = Dendrite { max_blocks: 3 };
        assert_eq!(p.plan(&[layer(&[])], 1).keep, usize::MAX);
        assert_eq!(p.plan(&[layer(&[5, 1])], 1), Plan::append());
        assert_eq!(p.plan(&[layer(&[5, 1, 1])], 1), Plan::rewrite());
    }

    #[test]
    fn synapse_chains_until_max_hops() {
        let p = Synapse { max_hops: 3 };
        let l = layer(&[1]);
        assert_eq!(
            p.plan(std::slice::from_ref(&l), 1),
            Plan {
                base: Some(0),
                keep: 0
            }
        );
        assert_eq!(
            p.plan(&[l.clone(), l.clone()], 1),
            Plan {
                base: Some(1),
                keep: 0
            }
        );
        assert_eq!(p.plan(&[l.clone(), l.clone(), l], 1), Plan::rewrite());
    }

    #[test]
    fn conduit_folds_by_size_and_when_full() {
        let p = Conduit::default();
        // Small diff on a large layer: a new layer on top.
        assert_eq!(
            p.plan(&[layer(&[1000])], 1),
            Plan {
                base: Some(0),
                keep: 0
            }
        );
        // Layers full: fold into the top diff, which sits on a large enough layer.
        let chain = [layer(&[1000]), layer(&[40]), layer(&[3]), layer(&[1])];
        assert_eq!(
            p.plan(&chain, 1),
            Plan {
                base: Some(2),
                keep: 0
            }
        );
        // A diff as large as everything folds to a full state.
        assert_eq!(p.plan(&[layer(&[10])], 100), Plan::rewrite());
    }

    #[test]
    fn tiered_counts_in_binary_and_promotes() {
        let p = Tiered {
            promote_at: 8,
            base_ratio: 4,
        };
        let base = layer(&[1000]);
        assert_eq!(
            p.plan(std::slice::from_ref(&base), 1),
            Plan {
                base: Some(0),
                keep: 0
            }
        );
        // Runs 4, 2 and a new 1: nothing merges (2 > 1).
        assert_eq!(p.plan(&[base.clone(), layer(&[4, 2])], 1).keep, 2);
        // Runs 4, 2, 1 and a new 1: 1 and 1 merge, then 2, then 4.
        assert_eq!(p.plan(&[base.clone(), layer(&[4, 2, 1])], 1).keep, 0);
        // Past promote_at: a new base record; the large run stays.
        let plan = p.plan(&[base, layer(&[4, 2, 1, 1])], 1);
        assert_eq!(
            plan,
            Plan {
                base: None,
                keep: 1
            }
        );
    }
}
