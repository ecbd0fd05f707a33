//! Interning: each kind of Matrix string maps to a NID and back through two tables.

use crate::error::{Error, Result, StringKind};
use crate::nid::{FIRST_DYNAMIC_NID, NidKind, WELL_KNOWN_STATE_KEYS, WELL_KNOWN_TYPES};
use crate::store::counted::Counted;
use crate::store::tables::{self, Text};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

/// The spec's limit on room IDs, event IDs, types and state keys, in bytes.
pub const MAX_ID_BYTES: usize = 255;

/// Where a kind's strings find their NIDs.
#[derive(Clone, Copy)]
pub(crate) enum Forward {
    /// A table keyed by the string itself.
    Strings(TableDefinition<'static, Text, u64>),
    /// The event-ID index, keyed by a 64-bit key of the ID (`event_ids.rs`).
    EventKeys,
}

/// Everything that differs between the kinds of interned string.
#[derive(Clone, Copy)]
pub(crate) struct Kind {
    /// Position among the four kinds, for per-kind arrays.
    pub index: usize,
    pub forward: Forward,
    pub reverse: TableDefinition<'static, u64, Text>,
    pub forward_name: &'static str,
    pub reverse_name: &'static str,
    pub counter: &'static str,
    pub first_dynamic: u64,
    pub string: StringKind,
    pub nid: NidKind,
    pub may_be_empty: bool,
}

pub(crate) const ROOM: Kind = Kind {
    index: 0,
    forward: Forward::Strings(tables::ROOM_IDS),
    reverse: tables::ROOM_IDS_REV,
    forward_name: "room_ids",
    reverse_name: "room_ids_rev",
    counter: "next_room_nid",
    first_dynamic: 1,
    string: StringKind::RoomId,
    nid: NidKind::Room,
    may_be_empty: false,
};

pub(crate) const TYPE: Kind = Kind {
    index: 1,
    forward: Forward::Strings(tables::TYPES),
    reverse: tables::TYPES_REV,
    forward_name: "event_types",
    reverse_name: "event_types_rev",
    counter: "next_type_nid",
    first_dynamic: FIRST_DYNAMIC_NID,
    string: StringKind::EventType,
    nid: NidKind::EventType,
    may_be_empty: true,
};

pub(crate) const STATE_KEY: Kind = Kind {
    index: 2,
    forward: Forward::Strings(tables::STATE_KEYS),
    reverse: tables::STATE_KEYS_REV,
    forward_name: "state_keys",
    reverse_name: "state_keys_rev",
    counter: "next_state_key_nid",
    first_dynamic: FIRST_DYNAMIC_NID,
    string: StringKind::StateKey,
    nid: NidKind::StateKey,
    may_be_empty: true,
};

pub(crate) const EVENT: Kind = Kind {
    index: 3,
    forward: Forward::EventKeys,
    reverse: tables::EVENT_IDS_REV,
    forward_name: "event_keys",
    reverse_name: "event_ids_rev",
    counter: "next_event_nid",
    first_dynamic: 1,
    string: StringKind::EventId,
    nid: NidKind::Event,
    may_be_empty: false,
};

impl Kind {
    /// The table keyed by this kind's strings; event IDs have none (`event_ids.rs`).
    pub(crate) fn string_table(self) -> Result<TableDefinition<'static, Text, u64>> {
        match self.forward {
            Forward::Strings(def) => Ok(def),
            Forward::EventKeys => Err(Error::InvalidState(format!(
                "{} IDs are found by key, not by a table of strings",
                self.nid
            ))),
        }
    }
}

/// What the spec forbids in an ID-like string, if anything: over 255 bytes, or empty where it
/// must not be.
pub(crate) fn id_problem(s: &str, may_be_empty: bool) -> Option<&'static str> {
    if s.len() > MAX_ID_BYTES {
        Some("longer than 255 bytes")
    } else if s.is_empty() && !may_be_empty {
        Some("empty")
    } else {
        None
    }
}

/// Refuses strings the spec forbids for `kind`.
pub(crate) fn validate(kind: StringKind, may_be_empty: bool, s: &str) -> Result<()> {
    let Some(reason) = id_problem(s, may_be_empty) else {
        return Ok(());
    };
    Err(Error::InvalidId {
        kind,
        shown: s.chars().take(64).collect(),
        reason,
    })
}

/// Interns `s`, which the caller knows is absent from `forward`, under `nid`: the kind's
/// counter, which the caller moves on.
pub(crate) fn create(tables: InternTables<'_, '_>, kind: Kind, s: &str, nid: u64) -> Result<()> {
    create_reverse(tables.reverse, kind, s, nid)?;
    tables.forward.insert(s.as_bytes(), nid)?;
    Ok(())
}

/// Checks `s` and writes its NID-to-string row, the half of [`create`] every kind shares.
pub(crate) fn create_reverse(
    reverse: &mut Counted<'_, u64, Text>,
    kind: Kind,
    s: &str,
    nid: u64,
) -> Result<()> {
    validate(kind.string, kind.may_be_empty, s)?;
    // A counter behind the rows it hands out means a damaged file; never overwrite a row.
    if reverse.insert(nid, s.as_bytes())?.is_some() {
        return Err(Error::corrupt(
            kind.counter,
            nid,
            "counter reused an existing NID",
        ));
    }
    Ok(())
}

/// The two tables interning writes: a kind's two directions.
pub(crate) struct InternTables<'a, 't> {
    pub forward: &'a mut Counted<'t, Text, u64>,
    pub reverse: &'a mut Counted<'t, u64, Text>,
}

/// The NID of `s`, if interned. Never creates.
pub(crate) fn lookup(table: &impl ReadableTable<Text, u64>, s: &str) -> Result<Option<u64>> {
    Ok(table.get(s.as_bytes())?.map(|g| g.value()))
}

/// The string behind `nid`; an unknown NID is an error.
pub(crate) fn resolve(
    table: &impl ReadableTable<u64, Text>,
    kind: Kind,
    nid: u64,
) -> Result<String> {
    match table.get(nid)? {
        Some(s) => text(kind.reverse_name, nid, s.value()).map(str::to_owned),
        None => Err(Error::UnknownNid {
            kind: kind.nid,
            nid,
        }),
    }
}

/// Stored bytes as a string; bytes that are not UTF-8 are a damaged row of `table` at `key`.
pub(crate) fn text<'a>(
    table: &'static str,
    key: impl std::fmt::Display,
    bytes: &'a [u8],
) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|e| Error::corrupt(table, key, e))
}

/// Writes the preassigned NIDs of a new store.
pub(crate) fn seed_well_known(tx: &WriteTransaction) -> Result<()> {
    for (kind, strings) in [
        (TYPE, &WELL_KNOWN_TYPES[..]),
        (STATE_KEY, &WELL_KNOWN_STATE_KEYS[..]),
    ] {
        let mut forward = tx.open_table(kind.string_table()?)?;
        let mut reverse = tx.open_table(kind.reverse)?;
        for (nid, s) in (1u64..).zip(strings) {
            forward.insert(s.as_bytes(), nid)?;
            reverse.insert(nid, s.as_bytes())?;
        }
    }
    Ok(())
}
