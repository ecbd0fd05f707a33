//! The store: one redb file, its tables and transactions, interning, records, reference counts
//! and collection, purge, check and stats.
//!
//! Architecture invariant: the store knows redb and the engine, and nothing of Matrix events'
//! JSON or rules. It imports [`crate::engine`], [`crate::nid`] and [`crate::error`], never
//! [`crate::matrix`] or [`crate::ingest`].

mod auth_chain;
mod auth_index;
mod auth_index_check;
pub mod check;
pub(crate) mod codec;
mod counted;
mod counters;
mod event_ids;
pub mod intern;
#[doc(hidden)]
pub mod json;
pub mod membership;
mod open;
mod parallel;
pub mod purge;
mod read;
pub mod record;
mod record_layout;
pub mod refs;
pub mod source;
mod stats;
pub(crate) mod tables;
mod write;
pub(crate) mod writer;

pub use open::{DEFAULT_CACHE_BYTES, Store, StoreBuilder};
pub use read::{ReadTxn, ResolverOf, StoreRead, Tables};
pub use stats::{AUTH_INDEX_TABLES, STATE_TABLES, StoreStats, TableSize, state_bytes};
pub use write::{WriteCounts, WriteTxn};

// What the Matrix layer may use beyond the public API: the batch writer, the interning kinds,
// the auth-chain walk with the rooms it met, and JSON compressed ahead of its write.
pub(crate) use auth_chain::auth_chain;
pub(crate) use auth_index::{
    ChainKeys, IndexRead, ReadIndex, difference as indexed_auth_difference,
};
pub(crate) use intern::{EVENT, Kind, ROOM, STATE_KEY, TYPE, id_problem};
pub(crate) use json::PreparedJson;
pub(crate) use open::Serials;
pub(crate) use writer::Writer;
