//! The event-ID index: an event ID finds its NID through a 64-bit key of the ID rather than the
//! ID itself.
//!
//! Event IDs are most of a store's interned strings and arrive in random order, so each new one
//! lands on a random leaf of the index, and the smaller the index the more of it the page cache
//! holds: keyed by the 44-byte ID it took 57 B per event, keyed by 8 bytes it takes 16 B
//! (`docs/benchmarks.md` has the figures). The ID itself is kept once, in `event_ids_rev`, and
//! every key that matches is checked against it there, so two IDs with one key are told apart:
//! the first interned owns the key in [`EVENT_KEYS`], the others are listed in
//! [`EVENT_KEY_COLLISIONS`].
//!
//! Architecture invariant: a key in [`EVENT_KEY_COLLISIONS`] always has its owner in
//! [`EVENT_KEYS`], so a key missing there means an ID never interned, without a second look.

use crate::error::{Error, Result};
use crate::store::check::{CheckReport, walk_reverse};
use crate::store::counted::Counted;
use crate::store::intern::{self, text};
use crate::store::read::Tables;
use crate::store::tables::{self, Text};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use std::collections::HashSet;
use xxhash_rust::xxh3::xxh3_64;

/// An event ID's key ([`event_key`]) to the NID of the first event ID interned under it.
pub(crate) const EVENT_KEYS: TableDefinition<u64, u64> = TableDefinition::new("event_keys");
/// (key, NID) of every other event ID interned under a key that [`EVENT_KEYS`] already held.
pub(crate) const EVENT_KEY_COLLISIONS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("event_key_collisions");

/// The index of schemas before 8: event ID to NID, keyed by the whole ID. Opening such a store
/// builds [`EVENT_KEYS`] from `event_ids_rev` and deletes it.
const EVENT_IDS_BY_STRING: TableDefinition<Text, u64> = TableDefinition::new("event_ids");

/// The characters of a room version 3+ event ID after its `$`: 43 of base64 without padding.
const REFERENCE_HASH_CHARS: usize = 43;

/// The key of an event ID. An ID of room version 3 or later, `$` and the base64 of a 256-bit
/// reference hash, is already uniform: its key is the hash's first 64 bits, decoded from the
/// first 11 characters. Any other ID (room versions 1 and 2 let servers choose them) is keyed by
/// its xxh3 hash.
pub(crate) fn event_key(id: &str) -> u64 {
    reference_hash_prefix(id).unwrap_or_else(|| xxh3_64(id.as_bytes()))
}

/// The first 64 bits of the hash an ID of reference-hash shape encodes; `None` for another shape.
fn reference_hash_prefix(id: &str) -> Option<u64> {
    let rest = id.strip_prefix('$')?.as_bytes();
    if rest.len() != REFERENCE_HASH_CHARS {
        return None;
    }
    // 10 characters give 60 bits, and the 11th its top 4.
    let mut bits = 0u64;
    for &c in &rest[..10] {
        bits = (bits << 6) | u64::from(sextet(c)?);
    }
    Some((bits << 4) | u64::from(sextet(rest[10])? >> 2))
}

/// A base64 character's value, in the standard alphabet (room version 3) or the URL-safe one
/// (4 and later).
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// What the key of an ID finds before the collisions are looked at.
pub(crate) enum Probe {
    /// No ID has the key: the ID is not interned.
    Absent,
    /// The key's owner is the ID.
    Found(u64),
    /// The key's owner is another ID: the ID, if interned, is among the key's collisions.
    Collided(u64),
}

/// Looks `id` up under its key's owner in `keys`, checking the owner's ID in `ids`.
pub(crate) fn probe(
    keys: &impl ReadableTable<u64, u64>,
    ids: &impl ReadableTable<u64, Text>,
    id: &str,
) -> Result<Probe> {
    let key = event_key(id);
    let Some(owner) = keys.get(key)?.map(|g| g.value()) else {
        return Ok(Probe::Absent);
    };
    Ok(if is_id(ids, key, owner, id)? {
        Probe::Found(owner)
    } else {
        Probe::Collided(key)
    })
}

/// Looks `id` up among the collisions of `key`.
pub(crate) fn among_collisions(
    collisions: &impl ReadableTable<(u64, u64), ()>,
    ids: &impl ReadableTable<u64, Text>,
    key: u64,
    id: &str,
) -> Result<Option<u64>> {
    for row in collisions.range((key, 0)..=(key, u64::MAX))? {
        let (_, nid) = row?.0.value();
        if is_id(ids, key, nid, id)? {
            return Ok(Some(nid));
        }
    }
    Ok(None)
}

/// The NID of `id`, if interned, in a transaction's tables.
pub(crate) fn lookup<T: Tables>(tx: &T, id: &str) -> Result<Option<u64>> {
    let ids = tx.open(tables::EVENT_IDS_REV)?;
    match probe(&tx.open(EVENT_KEYS)?, &ids, id)? {
        Probe::Absent => Ok(None),
        Probe::Found(nid) => Ok(Some(nid)),
        Probe::Collided(key) => among_collisions(&tx.open(EVENT_KEY_COLLISIONS)?, &ids, key, id),
    }
}

/// Whether `nid`, found under `key`, is the NID of `id`. A NID the index names without an ID is
/// a damaged file.
fn is_id(ids: &impl ReadableTable<u64, Text>, key: u64, nid: u64, id: &str) -> Result<bool> {
    match ids.get(nid)? {
        Some(stored) => Ok(stored.value() == id.as_bytes()),
        None => Err(Error::corrupt(
            "event_keys",
            key,
            format!("names event NID {nid}, which has no event ID"),
        )),
    }
}

/// The three tables the index writes: the keys, their collisions, and the IDs by NID.
pub(crate) struct EventIdTables<'a, 't> {
    pub keys: &'a mut Counted<'t, u64, u64>,
    pub collisions: &'a mut Counted<'t, (u64, u64), ()>,
    pub ids: &'a mut Counted<'t, u64, Text>,
}

impl EventIdTables<'_, '_> {
    /// The NID of `id`, if interned.
    pub(crate) fn lookup(&self, id: &str) -> Result<Option<u64>> {
        match probe(self.keys, self.ids, id)? {
            Probe::Absent => Ok(None),
            Probe::Found(nid) => Ok(Some(nid)),
            Probe::Collided(key) => among_collisions(self.collisions, self.ids, key, id),
        }
    }

    /// Interns `id`, which the caller knows is absent, under `nid`.
    pub(crate) fn create(&mut self, id: &str, nid: u64) -> Result<()> {
        intern::validate(intern::EVENT.string, false, id)?;
        // A counter behind the rows it hands out means a damaged file; never overwrite a row.
        if self.ids.insert(nid, id.as_bytes())?.is_some() {
            return Err(Error::corrupt(
                intern::EVENT.counter,
                nid,
                "counter reused an existing NID",
            ));
        }
        let key = event_key(id);
        // One write when the key is free, the usual case; a taken key goes back to its owner.
        let owner = self.keys.insert(key, nid)?.map(|g| g.value());
        if let Some(owner) = owner {
            self.keys.insert(key, owner)?;
            self.collisions.insert((key, nid), ())?;
        }
        Ok(())
    }

    /// Removes the index's row of `id`, interned as `nid`, whose `event_ids_rev` row the caller
    /// has removed. A collision of the same key takes over the key when its owner goes.
    pub(crate) fn forget(&mut self, id: &str, nid: u64) -> Result<()> {
        let key = event_key(id);
        if self.keys.get(key)?.map(|g| g.value()) != Some(nid) {
            self.collisions.remove((key, nid))?;
            return Ok(());
        }
        let heir = self
            .collisions
            .range((key, 0)..=(key, u64::MAX))?
            .next()
            .transpose()?
            .map(|(k, _)| k.value().1);
        match heir {
            Some(heir) => {
                self.collisions.remove((key, heir))?;
                self.keys.insert(key, heir)?;
            }
            None => {
                self.keys.remove(key)?;
            }
        }
        Ok(())
    }
}

/// Moves a store of a schema before 8 to keyed event IDs: the keys are built from
/// `event_ids_rev`, and the index by whole ID is deleted.
pub(crate) fn build_from_ids(tx: &WriteTransaction) -> Result<()> {
    let ops = std::sync::atomic::AtomicU64::new(0);
    let mut keys = Counted::new(tx.open_table(EVENT_KEYS)?, &ops);
    let mut collisions = Counted::new(tx.open_table(EVENT_KEY_COLLISIONS)?, &ops);
    let ids = tx.open_table(tables::EVENT_IDS_REV)?;
    for row in ids.range::<u64>(..)? {
        let (nid, id) = row?;
        let (nid, id) = (nid.value(), id.value());
        let key = event_key(text("event_ids_rev", nid, id)?);
        // NIDs ascend, so each key's owner is its oldest ID, as interning would have made it.
        if keys.get(key)?.is_some() {
            collisions.insert((key, nid), ())?;
        } else {
            keys.insert(key, nid)?;
        }
    }
    drop((keys, collisions, ids));
    tx.delete_table(EVENT_IDS_BY_STRING)?;
    Ok(())
}

/// Every key row and collision names an event ID with that key, and no collision's key lacks
/// an owner.
pub(crate) fn check_keys<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let keys = tx.open(EVENT_KEYS)?;
    let ids = tx.open(tables::EVENT_IDS_REV)?;
    for row in keys.range::<u64>(..)? {
        let (key, nid) = row?;
        report.rows += 1;
        check_key(&ids, "event_keys", key.value(), nid.value(), report)?;
    }
    for row in tx.open(EVENT_KEY_COLLISIONS)?.range::<(u64, u64)>(..)? {
        let (key, nid) = row?.0.value();
        report.rows += 1;
        check_key(&ids, "event_key_collisions", key, nid, report)?;
        match keys.get(key)?.map(|g| g.value()) {
            None => report.problem("event_key_collisions", key, "the key has no owner"),
            Some(owner) if owner == nid => {
                report.problem("event_key_collisions", key, "lists the key's owner")
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// `nid`, found in `table` under `key`, has an event ID with that key.
fn check_key(
    ids: &impl ReadableTable<u64, Text>,
    table: &'static str,
    key: u64,
    nid: u64,
    report: &mut CheckReport,
) -> Result<()> {
    let Some(id) = ids.get(nid)? else {
        report.problem(table, key, format!("event NID {nid} has no event ID"));
        return Ok(());
    };
    match std::str::from_utf8(id.value()) {
        Ok(id) if event_key(id) == key => {}
        Ok(id) => report.problem(
            table,
            key,
            format!("event NID {nid}, {id:?}, has another key"),
        ),
        Err(_) => report.problem(table, key, format!("event NID {nid}'s ID is not UTF-8")),
    }
    Ok(())
}

/// Every event NID's ID finds that NID through the index; returns the NIDs.
pub(crate) fn check_ids<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<HashSet<u64>> {
    let keys = tx.open(EVENT_KEYS)?;
    let collisions = tx.open(EVENT_KEY_COLLISIONS)?;
    let ids = tx.open(tables::EVENT_IDS_REV)?;
    walk_reverse(&ids, "event_ids_rev", report, |ids, id| {
        // An ID that is not UTF-8 is reported by the walk; a key naming a NID without an ID by
        // `check_keys`. Here both are misses.
        let Ok(id) = std::str::from_utf8(id) else {
            return Ok(None);
        };
        let found = match probe(&keys, ids, id) {
            Ok(Probe::Found(found)) => Ok(Some(found)),
            Ok(Probe::Collided(key)) => among_collisions(&collisions, ids, key, id),
            Ok(Probe::Absent) => Ok(None),
            Err(e) => Err(e),
        };
        match found {
            Err(Error::Corrupt { .. }) => Ok(None),
            found => found,
        }
    })
}
