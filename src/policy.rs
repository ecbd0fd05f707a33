//! Write policies: how a new snapshot is laid out from its parent's blocks and a state delta.
//!
//! A policy answers one question, [`WritePolicy::plan`]: how many of the parent's leading blocks
//! to keep as they are. The store merges the remaining blocks with the delta into one new block
//! and appends it. Keeping every block appends the delta alone; keeping none writes the whole
//! state again. This one primitive covers the seed's rule and the layered rules that compare
//! against it.

use crate::snapshot::BlockRef;
use std::fmt;

/// The decision of a [`WritePolicy`]: keep the parent's first `keep` blocks, and merge the rest
/// with the delta into one new block after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// How many of the parent's leading blocks the new snapshot reuses unchanged.
    pub keep: usize,
}

impl Plan {
    /// Append the delta as a block of its own after all of the parent's blocks.
    pub fn append(parent: &[BlockRef]) -> Self {
        Plan { keep: parent.len() }
    }

    /// Write the whole state again as one block.
    pub fn rewrite() -> Self {
        Plan { keep: 0 }
    }
}

/// Chooses the layout of each new snapshot. Implementations must be deterministic: the same
/// parent and delta size give the same plan, so that equal histories give equal snapshots.
pub trait WritePolicy: fmt::Debug + Send + Sync {
    /// A short name for reports, such as `dendrite64`.
    fn name(&self) -> &str;

    /// Plans a snapshot built from `parent` (its blocks, oldest first) plus a delta of
    /// `delta_len` entries. A `keep` larger than `parent.len()` is treated as `parent.len()`.
    fn plan(&self, parent: &[BlockRef], delta_len: usize) -> Plan;

    /// Whether a state built from several parents is stored as a delta from the first parent
    /// (`true`), or written in full (`false`, the seed's rule).
    fn merge_as_delta(&self) -> bool {
        false
    }
}

/// The seed's rule, from Dendrite's roomserver: append the delta as a new block while the parent
/// has fewer than `max_blocks` blocks; otherwise write the whole state again.
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

    fn plan(&self, parent: &[BlockRef], _delta_len: usize) -> Plan {
        if parent.len() < self.max_blocks {
            Plan::append(parent)
        } else {
            Plan::rewrite()
        }
    }
}

/// The policy a store uses unless its builder is given another.
pub fn default_policy() -> Box<dyn WritePolicy> {
    Box::new(Dendrite::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::BlockHash;

    #[test]
    fn dendrite_appends_until_limit() {
        let p = Dendrite { max_blocks: 3 };
        let r = BlockRef {
            hash: BlockHash(1),
            entries: 1,
        };
        assert_eq!(p.plan(&[], 1), Plan { keep: 0 });
        assert_eq!(p.plan(&[r, r], 1), Plan { keep: 2 });
        assert_eq!(p.plan(&[r, r, r], 1), Plan::rewrite());
    }
}
