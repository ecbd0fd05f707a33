//! The redb tables of a store. `docs/format.md` gives each key and value layout.

use redb::TableDefinition;

/// Strings are stored as bytes and checked as UTF-8 when read: redb's own `&str` type panics on
/// bytes that are not UTF-8, and a damaged file must give an error instead.
pub(crate) type Text = &'static [u8];

/// Counters and the schema version, by name.
pub(crate) const META: TableDefinition<Text, u64> = TableDefinition::new("meta");

/// Room ID to room NID, and back.
pub(crate) const ROOM_IDS: TableDefinition<Text, u64> = TableDefinition::new("room_ids");
pub(crate) const ROOM_IDS_REV: TableDefinition<u64, Text> = TableDefinition::new("room_ids_rev");
/// Event type to type NID, and back.
pub(crate) const TYPES: TableDefinition<Text, u64> = TableDefinition::new("event_types");
pub(crate) const TYPES_REV: TableDefinition<u64, Text> = TableDefinition::new("event_types_rev");
/// State key to state-key NID, and back.
pub(crate) const STATE_KEYS: TableDefinition<Text, u64> = TableDefinition::new("state_keys");
pub(crate) const STATE_KEYS_REV: TableDefinition<u64, Text> =
    TableDefinition::new("state_keys_rev");
/// Event NID to event ID; the other way is the keyed index of `event_ids.rs`.
pub(crate) const EVENT_IDS_REV: TableDefinition<u64, Text> = TableDefinition::new("event_ids_rev");

/// Block hash to encoded block (`block.rs`).
pub(crate) const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
/// Snapshot NID to encoded block list (`snapshot.rs`).
pub(crate) const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
/// Hash of an encoded block list to its snapshot NID: the deduplication index.
pub(crate) const SNAPSHOT_HASHES: TableDefinition<u128, u64> =
    TableDefinition::new("snapshot_hashes");

/// Snapshot NID to the number of references to it: child snapshot records naming it as their
/// parent, event records naming it as their state before, and room records naming it as their
/// current state. Snapshot 1 (the empty state) is never counted. A count of zero has no row
/// here and a row in [`UNREFERENCED_SNAPSHOTS`] instead.
pub(crate) const SNAPSHOT_REFS: TableDefinition<u64, u64> = TableDefinition::new("snapshot_refs");
/// Block hash to the number of times snapshot records list it.
pub(crate) const BLOCK_REFS: TableDefinition<u128, u64> = TableDefinition::new("block_refs");
/// Snapshots nothing references: what the next garbage collection deletes.
pub(crate) const UNREFERENCED_SNAPSHOTS: TableDefinition<u64, ()> =
    TableDefinition::new("unreferenced_snapshots");
/// Blocks no snapshot lists: what the next garbage collection deletes.
pub(crate) const UNREFERENCED_BLOCKS: TableDefinition<u128, ()> =
    TableDefinition::new("unreferenced_blocks");

/// Event NID to event record (`record.rs`, via `codec.rs`).
pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Room NID to room record.
pub(crate) const ROOMS: TableDefinition<u64, &[u8]> = TableDefinition::new("rooms");

/// Event NID to the event's JSON exactly as ingested.
pub(crate) const EVENT_JSON: TableDefinition<u64, &[u8]> = TableDefinition::new("event_json");
/// (room NID, user's state-key NID) to membership (`membership.rs`), from the room's current
/// state.
pub(crate) const MEMBERSHIP: TableDefinition<(u64, u64), u8> = TableDefinition::new("membership");
/// (user's state-key NID, room NID) for every room the user is joined to.
pub(crate) const USER_ROOMS: TableDefinition<(u64, u64), ()> = TableDefinition::new("user_rooms");
/// (room NID, ingest sequence number) to event NID: each room's events in ingest order.
pub(crate) const ROOM_EVENTS: TableDefinition<(u64, u64), u64> =
    TableDefinition::new("room_events");

/// Event NID to why the event was rejected or soft-failed (`record.rs`, via `codec.rs`). An
/// accepted event has no row.
pub(crate) const OUTCOMES: TableDefinition<u64, &[u8]> = TableDefinition::new("outcomes");

/// (room NID, event NID) for every outlier: an event stored with its JSON and auth events but
/// no state, outside its room's timeline. Its record's state before is the empty snapshot.
pub(crate) const OUTLIERS: TableDefinition<(u64, u64), ()> = TableDefinition::new("outliers");

/// The schema version this build reads and writes, kept in [`META`] under [`SCHEMA_KEY`].
/// Version 2 lacks [`OUTCOMES`] and [`OUTLIERS`], version 3 lacks [`OUTLIERS`], version 4 lacks
/// `json_dictionaries` and holds every event's JSON raw, versions before 6 hold blocks in the
/// fixed-width layouts only, and versions before 7 link every auth event in the auth-chain
/// index, even one another auth event reaches, and versions before 8 find event IDs through an
/// `event_ids` table keyed by the whole ID, and versions before 9 hold no templated JSON rows.
/// Opening such a store adds the missing tables (empty), builds the event-ID keys from
/// `event_ids_rev` and deletes `event_ids` (before 8), and moves it to 9. Raw JSON rows, untemplated
/// rows, fixed-width blocks and extra links stay readable as they are.
pub(crate) const SCHEMA_VERSION: u64 = 9;
/// The earlier schemas that opening upgrades in place.
pub(crate) const SCHEMA_WITHOUT_OUTCOMES: u64 = 2;
pub(crate) const SCHEMA_WITHOUT_OUTLIERS: u64 = 3;
pub(crate) const SCHEMA_WITHOUT_COMPRESSION: u64 = 4;
pub(crate) const SCHEMA_WITHOUT_PACKED_BLOCKS: u64 = 5;
pub(crate) const SCHEMA_WITH_EVERY_LINK: u64 = 6;
pub(crate) const SCHEMA_WITH_EVENT_IDS_BY_STRING: u64 = 7;
pub(crate) const SCHEMA_WITHOUT_JSON_REFERENCES: u64 = 8;
pub(crate) const SCHEMA_KEY: &str = "schema_version";

/// The [`META`] key of the auth order: 1 while every stored event's auth events have smaller
/// NIDs than the event, which holds when events are only stored after their auth events, as
/// authorization requires; 0 once a record breaks it (a trusted import naming auth events not
/// stored yet, or an event ID interned ahead of its auth events). Stores created before the key
/// lack it, which reads as 0.
pub(crate) const AUTH_ORDER_KEY: &str = "auth_events_precede";
