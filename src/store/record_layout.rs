//! Event records' own layout: every field a LEB128 varint, behind format byte 2.
//!
//! An event record is read for every auth event an event names, and written once per event: a
//! few NIDs and two short lists. bincode's varints take 5 bytes for any NID from 65,536 to 2^32,
//! and a store of a million events is all such NIDs; LEB128 takes 3 bytes up to 2^21 and 4 up
//! to 2^28. The layout (`docs/format.md`, "Event records"):
//!
//! ```text
//! 02 | room | type | flags | state key (if flagged) | state before
//!    | prev count | prev events… | auth count | auth events…
//! ```
//!
//! `flags`: bit 0 rejected, bit 1 a state event, bits 2–4 the membership code (0: none). Records of format 1
//! (bincode) stay readable; [`crate::store::codec`] sends each format its way.

use crate::engine::{put_varint, take_varint};
use crate::error::{Error, Result};
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKeyNid, TypeNid};
use crate::store::membership::Membership;
use crate::store::record::EventRecord;
use std::fmt::Display;

/// The format byte of an event record in this layout.
pub(crate) const FORMAT: u8 = 2;

/// The flag bit of a rejected event.
const REJECTED: u64 = 1;
/// The flag bit of a state event, whose state key follows the flags.
const STATE: u64 = 2;
/// The membership code's first bit in the flags.
const MEMBERSHIP_SHIFT: u32 = 2;

/// The record's bytes.
pub(crate) fn encode(record: &EventRecord) -> Vec<u8> {
    let lists = record.prev_events.len() + record.auth_events.len();
    let mut out = Vec::with_capacity(16 + 4 * lists);
    out.push(FORMAT);
    put_varint(&mut out, record.room.get());
    put_varint(&mut out, record.event_type.get());
    let membership = record.membership.map_or(0, |m| u64::from(m.code()));
    let state = if record.state_key.is_some() { STATE } else { 0 };
    let rejected = if record.rejected { REJECTED } else { 0 };
    put_varint(
        &mut out,
        (membership << MEMBERSHIP_SHIFT) | state | rejected,
    );
    if let Some(key) = record.state_key {
        put_varint(&mut out, key.get());
    }
    put_varint(&mut out, record.state_before.get());
    for list in [&record.prev_events, &record.auth_events] {
        put_varint(&mut out, list.len() as u64);
        for event in list {
            put_varint(&mut out, event.get());
        }
    }
    out
}

/// A record in this layout, `bytes` after the format byte; damage is an [`Error::Corrupt`]
/// naming `table` and `key`.
pub(crate) fn decode(table: &'static str, key: &dyn Display, bytes: &[u8]) -> Result<EventRecord> {
    let mut rest = bytes;
    let corrupt = |what: &str| Error::corrupt(table, key, what);
    let mut field = |what: &'static str| take_varint(&mut rest).ok_or_else(|| corrupt(what));
    let room = RoomNid::new(field("room")?);
    let event_type = TypeNid::new(field("type")?);
    let flags = field("flags")?;
    let state_key = match flags & STATE {
        0 => None,
        _ => Some(StateKeyNid::new(field("state key")?).ok_or_else(|| corrupt("state key NID 0"))?),
    };
    let state_before = SnapshotNid::new(field("state before")?);
    let membership = match flags >> MEMBERSHIP_SHIFT {
        0 => None,
        code => Some(
            u8::try_from(code)
                .ok()
                .and_then(Membership::from_code)
                .ok_or_else(|| corrupt("an unknown membership code"))?,
        ),
    };
    let prev_events = events(&mut rest, &corrupt)?;
    let auth_events = events(&mut rest, &corrupt)?;
    if !rest.is_empty() {
        return Err(corrupt("trailing bytes after record"));
    }
    Ok(EventRecord {
        room: room.ok_or_else(|| corrupt("room NID 0"))?,
        event_type: event_type.ok_or_else(|| corrupt("type NID 0"))?,
        state_key,
        state_before: state_before.ok_or_else(|| corrupt("snapshot NID 0"))?,
        rejected: flags & REJECTED != 0,
        prev_events,
        auth_events,
        membership,
    })
}

/// The room of a record in this layout, its first field, without decoding the rest.
pub(crate) fn room(table: &'static str, key: &dyn Display, bytes: &[u8]) -> Result<RoomNid> {
    let mut rest = bytes;
    take_varint(&mut rest)
        .and_then(RoomNid::new)
        .ok_or_else(|| Error::corrupt(table, key, "no room"))
}

/// A counted list of event NIDs.
fn events(rest: &mut &[u8], corrupt: &dyn Fn(&str) -> Error) -> Result<Vec<EventNid>> {
    let n = take_varint(rest).ok_or_else(|| corrupt("a list's count"))?;
    // Each NID takes a byte at least: a count beyond the bytes left is damage, refused before
    // anything is allocated for it.
    if n > rest.len() as u64 {
        return Err(corrupt("a list longer than the record"));
    }
    (0..n)
        .map(|_| {
            take_varint(rest)
                .and_then(EventNid::new)
                .ok_or_else(|| corrupt("an event NID"))
        })
        .collect()
}
