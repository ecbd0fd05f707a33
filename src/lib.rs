//! Matrix room state in one embedded [redb](https://docs.rs/redb) file.
//!
//! Strings become numeric IDs ([`nid`]), states are stored as content-addressed blocks of
//! entries ([`block`]) listed by deduplicated snapshots ([`snapshot`]), a [`policy`] decides how
//! each new snapshot is laid out, and the [`Resolver`] reads states back: flatten, lookup,
//! filter, diff and combine. `docs/design.md` explains the whole.
//!
//! ```
//! use roomstate::{DeltaEntry, SnapshotNid, StateKey, Store, StoreRead, TypeNid};
//!
//! # fn main() -> roomstate::Result<()> {
//! let store = Store::in_memory()?;
//! let mut tx = store.write()?;
//! let alice = tx.get_or_create_state_key("@alice:example.org")?;
//! let bob = tx.get_or_create_state_key("@bob:example.org")?;
//! let [j1, j2] = [tx.get_or_create_event("$a")?, tx.get_or_create_event("$b")?];
//! let s1 = tx.snapshot_from_delta(SnapshotNid::EMPTY, vec![DeltaEntry::set(StateKey::new(TypeNid::MEMBER, alice), j1)])?;
//! let s2 = tx.snapshot_from_delta(s1, vec![DeltaEntry::set(StateKey::new(TypeNid::MEMBER, bob), j2)])?;
//! tx.commit()?;
//!
//! let rx = store.read()?;
//! assert_eq!(rx.flatten(s2)?.len(), 2);
//! assert_eq!(rx.diff(s1, s2)?.added.len(), 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The floors, bottom up; `docs/architecture.md` maps them and `tests/layers.rs` keeps their
// imports running downward.
pub mod error;
pub mod nid;

pub mod engine;
pub mod store;

pub mod matrix;

pub mod ingest;

#[cfg(feature = "workload")]
pub mod workload;

// The modules' old paths, kept for callers.
pub use engine::{block, cache, policy, resolve, snapshot};
pub use store::{check, membership, purge, record, refs};

/// The README's tour, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use block::{BlockHash, DeltaEntry, StateEntry};
pub use cache::{BlockCache, DEFAULT_BLOCK_CACHE_BYTES};
pub use engine::source::{BlockSource, Resolver, SnapshotSource};
pub use error::{Error, Result, StringKind};
#[doc(hidden)]
pub use matrix::pdu::quoted_event_ids;
pub use matrix::reference::derive_event_id;
pub use matrix::roomserver::{
    InputEvent, InputKind, InputOutcome, Missing, PreparedEvent, Preparer, Received, RoomServer,
};
pub use matrix::stateres::MatrixResolver;
pub use membership::Membership;
pub use nid::{EventNid, NidKind, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
pub use policy::{Conduit, Dendrite, Full, Layer, Plan, Synapse, Tiered, WritePolicy};
pub use purge::Purged;
pub use record::{AuthStep, EventOutcome, EventRecord, Rejection, RoomRecord};
pub use refs::Collected;
pub use resolve::{Changed, Combined, Conflict, StateDiff, StateMap};
pub use snapshot::BlockRef;
pub use store::intern::MAX_ID_BYTES;
pub use store::{
    DEFAULT_CACHE_BYTES, ReadTxn, ResolverOf, STATE_TABLES, Store, StoreBuilder, StoreRead,
    StoreStats, TableSize, WriteCounts, WriteTxn, state_bytes,
};
