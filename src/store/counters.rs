//! The counters in `meta` that hand out NIDs (events, types, state keys, rooms, snapshots) and
//! auth-chain numbers. A writer reads each once, moves it on in memory, and writes it back once,
//! when it is dropped: one row write per batch, where one per NID handed out was a B-tree insert
//! for most events.
//!
//! A writer borrows its transaction, so it is dropped before the transaction can commit: the
//! counters are always written with the rows they numbered. When writing them back fails, the
//! transaction is poisoned and cannot commit, so a NID is never handed out twice. A writer never
//! dropped (a `Batch` passed to `mem::forget`) cannot commit its rows without its counters
//! either: it read them from `meta`, whose table it then holds open, and redb refuses to commit
//! a transaction whose tables were leaked.
//!
//! The same drop (`writer.rs`) first writes the room records and the reference counts the
//! writer holds (`refs.rs`), which follow the same rules: every count or record it holds came
//! with a row it wrote, so its tables are open.

use crate::error::{Error, Result};
use crate::store::writer::Writer;
use redb::ReadableTable;

/// Counters moved on and not yet written back, by `meta` key. A writer uses at most six.
#[derive(Default)]
pub(super) struct Counters(Vec<(&'static str, u64)>);

impl Counters {
    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Writer<'_> {
    /// The value of the counter `key` (`first` when the store never set it), which the counter
    /// then moves past.
    pub(crate) fn take_counter(&mut self, key: &'static str, first: u64) -> Result<u64> {
        let slot = match self.counters.0.iter().position(|(k, _)| *k == key) {
            Some(slot) => slot,
            None => {
                let stored = self.meta()?.get(key.as_bytes())?.map(|v| v.value());
                self.counters.0.push((key, stored.unwrap_or(first)));
                self.counters.0.len() - 1
            }
        };
        let held = &mut self.counters.0[slot].1;
        let value = *held;
        *held = value
            .checked_add(1)
            .ok_or_else(|| Error::corrupt("meta", key, "counter exhausted"))?;
        Ok(value)
    }

    /// Writes the counters back to `meta`.
    pub(super) fn write_counters(&mut self) -> Result<()> {
        for (key, value) in std::mem::take(&mut self.counters.0) {
            self.meta()?.insert(key.as_bytes(), value)?;
        }
        Ok(())
    }
}
