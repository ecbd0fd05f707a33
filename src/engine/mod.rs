//! The state engine: states as content-addressed blocks listed by snapshots, the write policies
//! that lay new snapshots out, and the resolver that reads them back.
//!
//! Architecture invariant: the engine knows nothing of Matrix and nothing of redb. It reads
//! through [`source::BlockSource`] and [`source::SnapshotSource`], which the store implements
//! for its tables, and imports only [`crate::nid`] and [`crate::error`].

pub mod block;
pub mod cache;
pub mod policy;
pub mod resolve;
pub mod snapshot;
pub mod source;
#[cfg(test)]
pub(crate) mod testing;
pub(crate) mod varint;

// What the store may use beyond the public API.
pub(crate) use source::{
    MAX_CHAIN, all_blocks, combine, load, load_refs, lookup_lazily, snapshot_chain,
    snapshot_chain_and_len,
};
pub(crate) use varint::{put_varint, take_varint};
