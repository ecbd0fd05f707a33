//! Helpers shared by the integration tests.
#![allow(dead_code)]

use roomstate::{EventNid, StateKey, StateKeyNid, TypeNid};

/// SplitMix64: a tiny seeded generator, so every test sequence can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub fn key(ty: u64, sk: u64) -> StateKey {
    StateKey::new(TypeNid::new(ty).unwrap(), StateKeyNid::new(sk).unwrap())
}

pub fn ev(n: u64) -> EventNid {
    EventNid::new(n).unwrap()
}

// ---------------------------------------------------------------------------------------------
// States as strings, for comparing the store with references written in strings.

use roomstate::{ReadTxn, StateMap, StoreRead};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// A (type, state key) pair as strings.
pub type NamedKey = (Rc<str>, Rc<str>);
/// A state as strings: (type, state key) to event ID.
pub type NamedState = BTreeMap<NamedKey, Rc<str>>;

/// Turns NIDs back into strings through a read transaction, caching each string.
#[derive(Default)]
pub struct StringNames {
    types: HashMap<TypeNid, Rc<str>>,
    keys: HashMap<StateKeyNid, Rc<str>>,
    events: HashMap<EventNid, Rc<str>>,
}

impl StringNames {
    pub fn event_type(&mut self, rx: &ReadTxn, ty: TypeNid) -> Rc<str> {
        self.types
            .entry(ty)
            .or_insert_with(|| rx.event_type(ty).unwrap().into())
            .clone()
    }

    pub fn state_key(&mut self, rx: &ReadTxn, key: StateKeyNid) -> Rc<str> {
        self.keys
            .entry(key)
            .or_insert_with(|| rx.state_key(key).unwrap().into())
            .clone()
    }

    pub fn event_id(&mut self, rx: &ReadTxn, event: EventNid) -> Rc<str> {
        self.events
            .entry(event)
            .or_insert_with(|| rx.event_id(event).unwrap().into())
            .clone()
    }

    /// A state with every NID turned into its string.
    pub fn state(&mut self, rx: &ReadTxn, state: &StateMap) -> NamedState {
        state
            .iter()
            .map(|e| {
                let key = (self.event_type(rx, e.key.ty), self.state_key(rx, e.key.key));
                (key, self.event_id(rx, e.event))
            })
            .collect()
    }
}

/// The first few keys on which two states differ, for assertion messages.
pub fn describe_difference(expected: &NamedState, got: &NamedState) -> String {
    let mut out = Vec::new();
    for (k, v) in expected {
        match got.get(k) {
            None => out.push(format!("  missing {k:?} -> {v}")),
            Some(g) if g != v => out.push(format!("  {k:?}: expected {v}, got {g}")),
            Some(_) => {}
        }
    }
    for (k, v) in got {
        if !expected.contains_key(k) {
            out.push(format!("  unexpected {k:?} -> {v}"));
        }
    }
    let total = out.len();
    out.truncate(20);
    format!(
        "{} of {total} differences (expected {} entries, got {}):\n{}",
        out.len(),
        expected.len(),
        got.len(),
        out.join("\n")
    )
}

/// Every row of every table, hashed in key order: two stores with the same rows answer every
/// read alike. (The table layouts are `docs/format.md`'s.) The event-ID keys depend on each
/// store's random seed, so they count by the NIDs they name, and the seed not at all.
pub fn rows(db: &std::path::Path) -> u64 {
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
    let db = redb::Database::open(db).unwrap();
    let rx = db.begin_read().unwrap();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    use std::hash::Hasher;
    macro_rules! hash_table {
        ($name:expr, $k:ty, $v:ty) => {{
            let def: TableDefinition<$k, $v> = TableDefinition::new($name);
            let table = rx.open_table(def).unwrap();
            hasher.write(format!("{}: {} rows", $name, table.len().unwrap()).as_bytes());
            for row in table.iter().unwrap() {
                let (k, v) = row.unwrap();
                hasher.write(format!("{:?}={:?};", k.value(), v.value()).as_bytes());
            }
        }};
    }
    // The NIDs an event-ID table names, in NID order.
    macro_rules! hash_nids {
        ($name:expr, $k:ty, $v:ty, $nid:expr) => {{
            let def: TableDefinition<$k, $v> = TableDefinition::new($name);
            let table = rx.open_table(def).unwrap();
            let mut nids: Vec<u64> = table
                .iter()
                .unwrap()
                .map(|row| {
                    let (k, v) = row.unwrap();
                    $nid(k.value(), v.value())
                })
                .collect();
            nids.sort_unstable();
            hasher.write(format!("{}: {nids:?}", $name).as_bytes());
        }};
    }
    let meta: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    for row in rx.open_table(meta).unwrap().iter().unwrap() {
        let (k, v) = row.unwrap();
        if k.value() != b"event_key_seed" {
            hasher.write(format!("meta {:?}={:?};", k.value(), v.value()).as_bytes());
        }
    }
    for name in ["room_ids", "event_types", "state_keys"] {
        hash_table!(name, &[u8], u64);
    }
    hash_nids!("event_keys", u64, u64, |_, nid| nid);
    hash_nids!("event_key_collisions", (u64, u64), (), |(_, nid), ()| nid);
    for name in [
        "room_ids_rev",
        "event_types_rev",
        "state_keys_rev",
        "event_ids_rev",
    ] {
        hash_table!(name, u64, &[u8]);
    }
    for name in ["snapshots", "events", "rooms", "event_json", "outcomes"] {
        hash_table!(name, u64, &[u8]);
    }
    hash_table!("blocks", u128, &[u8]);
    hash_table!("snapshot_hashes", u128, u64);
    hash_table!("block_refs", u128, u64);
    hash_table!("snapshot_refs", u64, u64);
    hash_table!("unreferenced_snapshots", u64, ());
    hash_table!("unreferenced_blocks", u128, ());
    hash_table!("membership", (u64, u64), u8);
    hash_table!("room_events", (u64, u64), u64);
    for name in ["user_rooms", "outliers"] {
        hash_table!(name, (u64, u64), ());
    }
    hasher.finish()
}

/// The schema version a store's file says it holds, read with redb alone.
pub fn schema_version(path: &std::path::Path) -> Option<u64> {
    use redb::{ReadableDatabase, TableDefinition};
    const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    let db = redb::Database::open(path).unwrap();
    db.begin_read()
        .unwrap()
        .open_table(META)
        .unwrap()
        .get(b"schema_version".as_slice())
        .unwrap()
        .map(|v| v.value())
}

/// Puts a store's event-ID index back as schemas before 8 kept it: `event_ids`, keyed by the
/// whole ID, in place of the keyed tables.
pub fn key_event_ids_by_string(tx: &redb::WriteTransaction) {
    use redb::{ReadableTable, TableDefinition};
    const BY_STRING: TableDefinition<&[u8], u64> = TableDefinition::new("event_ids");
    const IDS: TableDefinition<u64, &[u8]> = TableDefinition::new("event_ids_rev");
    const KEYS: TableDefinition<u64, u64> = TableDefinition::new("event_keys");
    const COLLISIONS: TableDefinition<(u64, u64), ()> =
        TableDefinition::new("event_key_collisions");
    let rows: Vec<(u64, Vec<u8>)> = tx
        .open_table(IDS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| {
            let (nid, id) = row.unwrap();
            (nid.value(), id.value().to_vec())
        })
        .collect();
    let mut by_string = tx.open_table(BY_STRING).unwrap();
    for (nid, id) in rows {
        by_string.insert(id.as_slice(), nid).unwrap();
    }
    drop(by_string);
    assert!(tx.delete_table(KEYS).unwrap());
    assert!(tx.delete_table(COLLISIONS).unwrap());
    const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    let mut meta = tx.open_table(META).unwrap();
    for row in ["event_key_seed", "event_key_bits"] {
        assert!(meta.remove(row.as_bytes()).unwrap().is_some(), "{row}");
    }
}

/// The names of a file's tables, read with redb alone.
pub fn table_names(path: &std::path::Path) -> Vec<String> {
    use redb::{ReadableDatabase, TableHandle};
    let db = redb::Database::open(path).unwrap();
    let rx = db.begin_read().unwrap();
    rx.list_tables()
        .unwrap()
        .map(|t| t.name().to_owned())
        .collect()
}

/// Writes the schema version a store's file says it holds.
pub fn set_schema_version(tx: &redb::WriteTransaction, version: u64) {
    const META: redb::TableDefinition<&[u8], u64> = redb::TableDefinition::new("meta");
    tx.open_table(META)
        .unwrap()
        .insert(b"schema_version".as_slice(), version)
        .unwrap();
}

/// Rewrites the store at `path` as schema 8 wrote it: event records in bincode behind format
/// byte 1, and every JSON row raw, untemplated. Leaves the schema version as it is.
pub fn write_as_schema_8(path: &std::path::Path) {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    use roomstate::{EventNid, Store, StoreRead};
    const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
    const EVENT_JSON: TableDefinition<u64, &[u8]> = TableDefinition::new("event_json");
    let nids: Vec<u64> = {
        let db = redb::Database::open(path).unwrap();
        let rx = db.begin_read().unwrap();
        let table = rx.open_table(EVENTS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    };
    let mut old = Vec::new();
    {
        let store = Store::open(path).unwrap();
        let rx = store.read().unwrap();
        for &nid in &nids {
            let event = EventNid::new(nid).unwrap();
            let record = rx.event(event).unwrap().unwrap();
            let mut bytes = vec![1u8];
            bytes.extend(
                bincode::serde::encode_to_vec(&record, bincode::config::standard()).unwrap(),
            );
            old.push((nid, bytes, rx.event_json(event).unwrap()));
        }
    }
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut events = tx.open_table(EVENTS).unwrap();
        let mut json = tx.open_table(EVENT_JSON).unwrap();
        for (nid, record, text) in &old {
            events.insert(nid, record.as_slice()).unwrap();
            if let Some(text) = text {
                json.insert(nid, text.as_bytes()).unwrap();
            }
        }
    }
    tx.commit().unwrap();
}

/// Every row of a `u64`-keyed bytes table, read with redb alone.
pub fn table_rows(path: &std::path::Path, name: &str) -> Vec<(u64, Vec<u8>)> {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    let db = redb::Database::open(path).unwrap();
    let rx = db.begin_read().unwrap();
    let table = rx
        .open_table(TableDefinition::<u64, &[u8]>::new(name))
        .unwrap();
    table
        .iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}
