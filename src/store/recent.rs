//! The NIDs of recently interned and looked-up strings, kept from one write transaction to the
//! next: a new event's prev and auth events, its sender and its room were almost always seen
//! lately, and finding them here saves a B-tree lookup in a table too large for the page cache.
//!
//! The store holds the map between write transactions. A write transaction takes it when it
//! begins and gives it back only when it commits, so the map never holds a NID that an aborted
//! transaction handed out; a purge removes the strings it forgets. There is one writer at a
//! time, so no other transaction can change the tables while the map is out.

use std::collections::HashMap;
use std::sync::Mutex;
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// Strings held per kind in each of the two generations: about 10 MiB of event IDs at the
/// most.
const HELD_PER_GENERATION: usize = 64_000;

type Map = HashMap<Box<str>, u64, Xxh3DefaultBuilder>;

/// Interned strings to NIDs, by kind (`Kind::index`), in two generations: when the young one
/// is full it becomes the old one and the old one is dropped, and a string found in the old
/// one moves back to the young. A string asked for often (a busy sender's membership event)
/// stays, however many strings pass through once.
#[derive(Default)]
pub(crate) struct RecentNids {
    young: [Map; 4],
    old: [Map; 4],
}

impl RecentNids {
    pub(crate) fn get(&mut self, kind: usize, s: &str) -> Option<u64> {
        if let Some(nid) = self.young.get(kind)?.get(s) {
            return Some(*nid);
        }
        let (key, nid) = self.old.get_mut(kind)?.remove_entry(s)?;
        self.insert_owned(kind, key, nid);
        Some(nid)
    }

    pub(crate) fn insert(&mut self, kind: usize, s: &str, nid: u64) {
        self.insert_owned(kind, Box::from(s), nid);
    }

    fn insert_owned(&mut self, kind: usize, s: Box<str>, nid: u64) {
        let (Some(young), Some(old)) = (self.young.get_mut(kind), self.old.get_mut(kind)) else {
            return;
        };
        if young.len() >= HELD_PER_GENERATION {
            *old = std::mem::take(young);
        }
        young.insert(s, nid);
    }

    pub(crate) fn remove(&mut self, kind: usize, s: &str) {
        for map in [&mut self.young, &mut self.old] {
            if let Some(map) = map.get_mut(kind) {
                map.remove(s);
            }
        }
    }
}

/// Where the store keeps the map between write transactions.
#[derive(Default)]
pub(crate) struct RecentSlot(Mutex<RecentNids>);

impl RecentSlot {
    /// The map, for a write transaction that begins. A poisoned lock (a panic while it was
    /// held, which nothing here does) gives an empty map rather than a doubtful one.
    pub(crate) fn take(&self) -> RecentNids {
        match self.0.lock() {
            Ok(mut held) => std::mem::take(&mut *held),
            Err(_) => RecentNids::default(),
        }
    }

    /// The map back, from a write transaction that committed.
    pub(crate) fn give_back(&self, nids: RecentNids) {
        if let Ok(mut held) = self.0.lock() {
            *held = nids;
        }
    }
}
