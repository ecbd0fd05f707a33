//! Table sizes and whole-store counts, for `stats` and the benches.

use crate::engine::block::{BlockHash, BlockView};
use crate::engine::snapshot::decode_snapshot;
use crate::error::{Error, Result};
use crate::store::auth_index;
use crate::store::codec;
use crate::store::event_ids;
use crate::store::intern;
use crate::store::read::Tables;
use crate::store::record::EventRecord;
use crate::store::tables;
use redb::{Key, ReadableTable, ReadableTableMetadata, TableDefinition, Value};

/// Sizes of one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSize {
    /// The table's name.
    pub name: &'static str,
    /// Rows in the table.
    pub rows: u64,
    /// Bytes of keys and values (redb's `stored_bytes`).
    pub stored_bytes: u64,
    /// Bytes of redb's own bookkeeping (`metadata_bytes`).
    pub metadata_bytes: u64,
    /// Bytes lost to page slack (`fragmented_bytes`).
    pub fragmented_bytes: u64,
}

/// Counts and sizes of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Every table, in a fixed order.
    pub tables: Vec<TableSize>,
    /// Entries held by all blocks together, tombstones included.
    pub stored_entries: u64,
    /// Entries of every snapshot's state, flattened and added up: what storing each snapshot
    /// in full would take.
    pub snapshot_entries: u64,
    /// Entries of the state before every event, added up: what storing a full copy per event
    /// would take.
    pub event_entries: u64,
    /// Event records.
    pub events: u64,
    /// Of which state events.
    pub state_events: u64,
}

impl StoreStats {
    /// The sizes of the named table.
    pub fn table(&self, name: &str) -> Option<&TableSize> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Rows of the named table (0 if there is no such table).
    pub fn rows(&self, name: &str) -> u64 {
        self.table(name).map_or(0, |t| t.rows)
    }

    /// Stored plus metadata bytes of the auth-chain index's tables (0 without an index).
    pub fn auth_index_bytes(&self) -> u64 {
        self.tables
            .iter()
            .filter(|t| AUTH_INDEX_TABLES.contains(&t.name))
            .map(|t| t.stored_bytes + t.metadata_bytes)
            .sum()
    }

    /// Stored plus metadata bytes of the state tables: blocks, snapshots and their index.
    pub fn state_bytes(&self) -> u64 {
        state_bytes(&self.tables)
    }
}

/// Stored plus metadata bytes of the state tables (blocks, snapshots and their index) among
/// `tables`.
pub fn state_bytes(tables: &[TableSize]) -> u64 {
    tables
        .iter()
        .filter(|t| STATE_TABLES.contains(&t.name))
        .map(|t| t.stored_bytes + t.metadata_bytes)
        .sum()
}

/// The tables of the auth-chain index.
pub const AUTH_INDEX_TABLES: [&str; 4] = [
    "auth_positions",
    "auth_chains",
    "auth_links",
    "auth_links_into",
];

/// The tables that hold states: what "state bytes" counts.
pub const STATE_TABLES: [&str; 7] = [
    "blocks",
    "snapshots",
    "snapshot_hashes",
    "snapshot_refs",
    "block_refs",
    "unreferenced_snapshots",
    "unreferenced_blocks",
];

fn table_size<K: Key + 'static, V: Value + 'static, T: Tables>(
    tx: &T,
    def: TableDefinition<'static, K, V>,
    name: &'static str,
) -> Result<TableSize> {
    let table = tx.open(def)?;
    let stats = table.stats()?;
    Ok(TableSize {
        name,
        rows: table.len()?,
        stored_bytes: stats.stored_bytes(),
        metadata_bytes: stats.metadata_bytes(),
        fragmented_bytes: stats.fragmented_bytes(),
    })
}

pub(super) fn table_sizes<T: Tables>(tx: &T) -> Result<Vec<TableSize>> {
    let mut out = vec![
        table_size(tx, tables::BLOCKS, "blocks")?,
        table_size(tx, tables::SNAPSHOTS, "snapshots")?,
        table_size(tx, tables::SNAPSHOT_HASHES, "snapshot_hashes")?,
        table_size(tx, tables::SNAPSHOT_REFS, "snapshot_refs")?,
        table_size(tx, tables::BLOCK_REFS, "block_refs")?,
        table_size(tx, tables::UNREFERENCED_SNAPSHOTS, "unreferenced_snapshots")?,
        table_size(tx, tables::UNREFERENCED_BLOCKS, "unreferenced_blocks")?,
        table_size(tx, tables::EVENTS, "events")?,
        table_size(tx, tables::ROOMS, "rooms")?,
        table_size(tx, tables::EVENT_JSON, "event_json")?,
        table_size(
            tx,
            crate::store::json::JSON_DICTIONARIES,
            "json_dictionaries",
        )?,
        table_size(tx, tables::MEMBERSHIP, "membership")?,
        table_size(tx, tables::USER_ROOMS, "user_rooms")?,
        table_size(tx, tables::ROOM_EVENTS, "room_events")?,
        table_size(tx, tables::OUTCOMES, "outcomes")?,
        table_size(tx, tables::OUTLIERS, "outliers")?,
    ];
    // Stores created before the index lack its meta key, and its tables.
    let indexed = tx
        .open(tables::META)?
        .get(auth_index::AUTH_INDEX_KEY.as_bytes())?
        .is_some();
    if indexed {
        out.push(table_size(
            tx,
            auth_index::AUTH_POSITIONS,
            "auth_positions",
        )?);
        out.push(table_size(tx, auth_index::AUTH_CHAINS, "auth_chains")?);
        out.push(table_size(tx, auth_index::AUTH_LINKS, "auth_links")?);
        out.push(table_size(
            tx,
            auth_index::AUTH_LINKS_INTO,
            "auth_links_into",
        )?);
    }
    for kind in [intern::ROOM, intern::TYPE, intern::STATE_KEY] {
        out.push(table_size(tx, kind.string_table()?, kind.forward_name)?);
        out.push(table_size(tx, kind.reverse, kind.reverse_name)?);
    }
    out.push(table_size(
        tx,
        event_ids::EVENT_KEYS,
        intern::EVENT.forward_name,
    )?);
    out.push(table_size(
        tx,
        event_ids::EVENT_KEY_COLLISIONS,
        "event_key_collisions",
    )?);
    out.push(table_size(tx, intern::EVENT.reverse, "event_ids_rev")?);
    Ok(out)
}

pub(super) fn store_stats<T: Tables>(tx: &T) -> Result<StoreStats> {
    let out = table_sizes(tx)?;
    let mut stored_entries = 0;
    for row in tx.open(tables::BLOCKS)?.range::<u128>(..)? {
        let (hash, bytes) = row?;
        let view = BlockView::parse(bytes.value())
            .map_err(|e| Error::corrupt("blocks", BlockHash(hash.value()), e))?;
        stored_entries += view.len() as u64;
    }
    let mut state_lens = std::collections::HashMap::new();
    for row in tx.open(tables::SNAPSHOTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        let record = decode_snapshot(bytes.value())
            .map_err(|e| Error::corrupt("snapshots", nid.value(), e))?;
        state_lens.insert(nid.value(), u64::from(record.state_len));
    }
    let (mut events, mut state_events, mut event_entries) = (0, 0, 0);
    for row in tx.open(tables::EVENTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        let record: EventRecord = codec::decode("events", nid.value(), bytes.value())?;
        events += 1;
        state_events += u64::from(record.state_key.is_some());
        event_entries += state_lens
            .get(&record.state_before.get())
            .copied()
            .ok_or(Error::UnknownSnapshot(record.state_before))?;
    }
    Ok(StoreStats {
        tables: out,
        stored_entries,
        snapshot_entries: state_lens.values().sum(),
        event_entries,
        events,
        state_events,
    })
}
