//! Strings certainly not interned yet: a blocked Bloom filter per kind of string, kept by the
//! store across transactions. Receiving a new event first asks whether its ID is stored, then
//! interns it (and a new member's user ID as a state key): the first question is a B-tree
//! descent that can only say "absent", and the filter answers it in memory instead.
//!
//! The filter may say "perhaps" of a string that is not interned (about one in a hundred, at
//! [`BITS_PER_KEY`]), and the writer then asks the B-tree as before; it never says "absent" of
//! one that is: every string is added before its row is written, and a filter is built by a scan
//! of the table. A string whose row is never committed (an aborted transaction) or is deleted (a
//! purge) only costs a B-tree lookup later. A filter filled to its capacity is built again, twice
//! as large, so it costs about [`BITS_PER_KEY`] bits per interned string.

use std::sync::{Mutex, MutexGuard, PoisonError};
use xxhash_rust::xxh3::xxh3_128;

/// Bits per string a filter holds: about 1% of absent strings are taken for interned ones.
const BITS_PER_KEY: u64 = 10;
/// The fewest strings a filter is sized for: a new store's grows without a rebuild per string.
const MIN_KEYS: u64 = 1 << 16;

/// One kind's filter. A string sets one bit in each of the eight words of one 64-byte block, so
/// a question reads one cache line.
pub(crate) struct Filter {
    blocks: Vec<[u64; 8]>,
    keys: u64,
    capacity: u64,
}

impl Filter {
    /// An empty filter for up to `capacity` strings (at least [`MIN_KEYS`]).
    pub(crate) fn with_capacity(capacity: u64) -> Filter {
        let capacity = capacity.max(MIN_KEYS);
        let blocks = (capacity * BITS_PER_KEY).div_ceil(512);
        Filter {
            blocks: vec![[0; 8]; blocks as usize],
            keys: 0,
            capacity,
        }
    }

    /// The block `s` lives in, and the bits it sets there (a byte per word).
    fn place(&self, s: &[u8]) -> (usize, u64) {
        let hash = xxh3_128(s);
        // `blocks` is never empty (at least MIN_KEYS strings), so the index is in range.
        let block = ((hash >> 64) as u64 % self.blocks.len() as u64) as usize;
        (block, hash as u64)
    }

    pub(crate) fn insert(&mut self, s: &[u8]) {
        let (block, bits) = self.place(s);
        if let Some(words) = self.blocks.get_mut(block) {
            for (i, word) in words.iter_mut().enumerate() {
                *word |= 1 << ((bits >> (i * 8)) & 63);
            }
        }
        self.keys += 1;
    }

    /// `false`: `s` is certainly not among the strings added.
    pub(crate) fn may_contain(&self, s: &[u8]) -> bool {
        let (block, bits) = self.place(s);
        self.blocks.get(block).is_none_or(|words| {
            words
                .iter()
                .enumerate()
                .all(|(i, word)| word & (1 << ((bits >> (i * 8)) & 63)) != 0)
        })
    }

    /// Whether it holds as many strings as it was sized for.
    pub(crate) fn is_full(&self) -> bool {
        self.keys >= self.capacity
    }

    /// The capacity of the filter that replaces this one, or is built for `interned` strings.
    pub(crate) fn next_capacity(interned: u64) -> u64 {
        interned.saturating_mul(2)
    }
}

/// The store's filters, one per kind of string, built when a writer first asks.
#[derive(Default)]
pub(crate) struct AbsentFilters(Mutex<[Option<Filter>; 4]>);

impl AbsentFilters {
    /// The filters; a panic while one was held left at worst a string half added, which only
    /// makes it look interned.
    pub(crate) fn lock(&self) -> MutexGuard<'_, [Option<Filter>; 4]> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_added_is_never_taken_for_absent_and_few_others_are_taken_for_added() {
        let mut filter = Filter::with_capacity(10_000);
        let added: Vec<String> = (0..MIN_KEYS).map(|i| format!("$added{i}")).collect();
        for s in &added {
            filter.insert(s.as_bytes());
        }
        assert!(added.iter().all(|s| filter.may_contain(s.as_bytes())));
        assert!(filter.is_full());
        let wrong = (0..100_000)
            .filter(|i| filter.may_contain(format!("$other{i}").as_bytes()))
            .count();
        assert!(
            wrong < 2_000,
            "{wrong} of 100,000 absent strings taken for added"
        );
    }
}
