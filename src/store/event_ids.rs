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
use std::collections::hash_map::RandomState;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// An event ID's key ([`event_key`]) to the NID of the first event ID interned under it.
pub(crate) const EVENT_KEYS: TableDefinition<u64, u64> = TableDefinition::new("event_keys");
/// (key, NID) of every other event ID interned under a key that [`EVENT_KEYS`] already held.
pub(crate) const EVENT_KEY_COLLISIONS: TableDefinition<(u64, u64), ()> =
    TableDefinition::new("event_key_collisions");

/// The index of schemas before 8: event ID to NID, keyed by the whole ID. Opening such a store
/// builds [`EVENT_KEYS`] from `event_ids_rev` and deletes it.
const EVENT_IDS_BY_STRING: TableDefinition<Text, u64> = TableDefinition::new("event_ids");

/// The [`META`](tables::META) row of the store's secret seed for [`Keying`].
const SEED_KEY: &str = "event_key_seed";
/// The [`META`](tables::META) row of the key width, in bits; a store without one uses 64.
const BITS_KEY: &str = "event_key_bits";

/// How a store turns an event ID into its key: xxh3-64 of the ID with the store's own seed,
/// drawn at random when the store was created, so that no one outside the store can choose IDs
/// that share a key (servers choose their event IDs in room versions 1 and 2, and any PDU may
/// declare one). Tests narrow the key to fewer bits to force collisions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keying {
    seed: u64,
    mask: u64,
}

impl Keying {
    /// The key of an event ID.
    pub(crate) fn key(self, id: &str) -> u64 {
        xxh3_64_with_seed(id.as_bytes(), self.seed) & self.mask
    }

    /// The keying a store's `meta` holds.
    pub(crate) fn read(meta: &impl ReadableTable<Text, u64>) -> Result<Keying> {
        let seed = meta
            .get(SEED_KEY.as_bytes())?
            .ok_or_else(|| Error::corrupt("meta", SEED_KEY, "missing"))?
            .value();
        let bits = meta.get(BITS_KEY.as_bytes())?.map_or(64, |v| v.value());
        Ok(Keying {
            seed,
            mask: mask(bits),
        })
    }

    /// Draws a new store's seed and writes it, with a key width of `bits` (64 at most).
    pub(crate) fn create(tx: &WriteTransaction, bits: u32) -> Result<Keying> {
        // `RandomState` is seeded from the operating system's randomness once per process and
        // moved on for each instance: a fresh one hashes to a fresh secret.
        let seed = std::hash::BuildHasher::hash_one(&RandomState::new(), SEED_KEY);
        let bits = u64::from(bits.min(64));
        let mut meta = tx.open_table(tables::META)?;
        meta.insert(SEED_KEY.as_bytes(), seed)?;
        meta.insert(BITS_KEY.as_bytes(), bits)?;
        Ok(Keying {
            seed,
            mask: mask(bits),
        })
    }
}

/// The low `bits` bits set.
fn mask(bits: u64) -> u64 {
    u64::MAX
        .checked_shr(64u32.saturating_sub(bits.min(64) as u32))
        .unwrap_or(0)
}

/// The NID of `id`, if interned: its key's owner in `keys`, else one of the key's collisions,
/// each checked against its ID in `ids`. A key with no owner has no collisions either.
pub(crate) fn find(
    keying: Keying,
    keys: &impl ReadableTable<u64, u64>,
    collisions: &impl ReadableTable<(u64, u64), ()>,
    ids: &impl ReadableTable<u64, Text>,
    id: &str,
) -> Result<Option<u64>> {
    let key = keying.key(id);
    let Some(owner) = keys.get(key)?.map(|g| g.value()) else {
        return Ok(None);
    };
    if is_id(ids, key, owner, id)? {
        return Ok(Some(owner));
    }
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
    let keying = Keying::read(&tx.open(tables::META)?)?;
    let (keys, collisions) = (tx.open(EVENT_KEYS)?, tx.open(EVENT_KEY_COLLISIONS)?);
    find(
        keying,
        &keys,
        &collisions,
        &tx.open(tables::EVENT_IDS_REV)?,
        id,
    )
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
    pub keying: Keying,
    pub keys: &'a mut Counted<'t, u64, u64>,
    pub collisions: &'a mut Counted<'t, (u64, u64), ()>,
    pub ids: &'a mut Counted<'t, u64, Text>,
}

impl EventIdTables<'_, '_> {
    /// The NID of `id`, if interned.
    pub(crate) fn lookup(&self, id: &str) -> Result<Option<u64>> {
        find(self.keying, self.keys, self.collisions, self.ids, id)
    }

    /// Interns `id`, which the caller knows is absent, under `nid`: the key row, its ID by
    /// `intern::create`'s rules.
    pub(crate) fn create(&mut self, id: &str, nid: u64) -> Result<()> {
        intern::create_reverse(self.ids, intern::EVENT, id, nid)?;
        let key = self.keying.key(id);
        // One write when the key is free, the usual case; a taken key goes back to its owner.
        let owner = self.keys.insert(key, nid)?.map(|g| g.value());
        if let Some(owner) = owner {
            self.keys.insert(key, owner)?;
            self.collisions.insert((key, nid), ())?;
        }
        Ok(())
    }

    /// Removes the index's row of `id`, interned as `nid`. A collision of the same key takes
    /// over the key when its owner goes.
    pub(crate) fn forget(&mut self, id: &str, nid: u64) -> Result<()> {
        let key = self.keying.key(id);
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

/// Moves a store of a schema before 8 to keyed event IDs: draws the store's seed, builds the
/// keys from `event_ids_rev`, and deletes the index by whole ID.
pub(crate) fn build_from_ids(tx: &WriteTransaction) -> Result<()> {
    let keying = Keying::create(tx, 64)?;
    let mut keys = tx.open_table(EVENT_KEYS)?;
    let mut collisions = tx.open_table(EVENT_KEY_COLLISIONS)?;
    let ids = tx.open_table(tables::EVENT_IDS_REV)?;
    for row in ids.range::<u64>(..)? {
        let (nid, id) = row?;
        let (nid, id) = (nid.value(), id.value());
        let key = keying.key(text("event_ids_rev", nid, id)?);
        // NIDs ascend, so each key's owner is its oldest ID, as interning would have made it.
        let owner = keys.insert(key, nid)?.map(|g| g.value());
        if let Some(owner) = owner {
            keys.insert(key, owner)?;
            collisions.insert((key, nid), ())?;
        }
    }
    drop((keys, collisions, ids));
    tx.delete_table(EVENT_IDS_BY_STRING)?;
    Ok(())
}

/// Every key row and collision names an event ID with that key, and no collision's key lacks
/// an owner or is its owner.
pub(crate) fn check_keys<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let keying = Keying::read(&tx.open(tables::META)?)?;
    let keys = tx.open(EVENT_KEYS)?;
    let ids = tx.open(tables::EVENT_IDS_REV)?;
    for row in keys.range::<u64>(..)? {
        let (key, nid) = row?;
        report.rows += 1;
        check_key(keying, &ids, "event_keys", key.value(), nid.value(), report)?;
    }
    for row in tx.open(EVENT_KEY_COLLISIONS)?.range::<(u64, u64)>(..)? {
        let (key, nid) = row?.0.value();
        report.rows += 1;
        check_key(keying, &ids, "event_key_collisions", key, nid, report)?;
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
    keying: Keying,
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
        Ok(id) if keying.key(id) == key => {}
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
    let keying = Keying::read(&tx.open(tables::META)?)?;
    let keys = tx.open(EVENT_KEYS)?;
    let collisions = tx.open(EVENT_KEY_COLLISIONS)?;
    let ids = tx.open(tables::EVENT_IDS_REV)?;
    walk_reverse(&ids, "event_ids_rev", report, |id| {
        // An ID that is not UTF-8 is reported by the walk; a key naming a NID without an ID by
        // `check_keys`. Here both are misses.
        let Ok(id) = std::str::from_utf8(id) else {
            return Ok(None);
        };
        match find(keying, &keys, &collisions, &ids, id) {
            Err(Error::Corrupt { .. }) => Ok(None),
            found => found,
        }
    })
}
