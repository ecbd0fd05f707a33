//! Matrix on top of the store: PDUs as they arrive, receiving an event into a room (its state
//! before and after, its room's bookkeeping), and settling conflicted state.
//!
//! Architecture invariant: the Matrix layer reads and writes only through the store's API
//! ([`crate::store`]) and the engine's types; it knows nothing of redb tables, and nothing of
//! JSON lines, batching or the CLI ([`crate::ingest`] sits above it).

pub(crate) mod auth;
pub(crate) mod auth_difference;
pub(crate) mod event;
pub(crate) mod input;
pub(crate) mod pdu;
pub(crate) mod prepare;
pub mod query;
pub(crate) mod reference;
pub mod resolver;
pub mod roomserver;
pub(crate) mod stateres;
