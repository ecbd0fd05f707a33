//! The one place bincode is used: cold records (rooms, rejections), never blocks or snapshots.
//!
//! Each record is one format byte, [`RECORD_FORMAT`], then bincode's standard (varint)
//! encoding of the record, so that a later layout can be told apart from this one. Event
//! records are written in their own layout ([`record_layout`], format byte 2), and read in
//! either.

use crate::error::{Error, Result};
use crate::nid::RoomNid;
use crate::store::record::{EventRecord, RecordRoom, Rejection, RoomRecord};
use crate::store::record_layout;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;

/// A stored record: bincode behind [`RECORD_FORMAT`], unless its type lays itself out.
pub(crate) trait Stored: Serialize + DeserializeOwned {
    /// The record's bytes.
    fn to_stored(&self) -> Result<Vec<u8>> {
        encode_bincode(self)
    }

    /// A record from the bytes of `table` at `key`.
    fn from_stored(table: &'static str, key: &dyn Display, bytes: &[u8]) -> Result<Self> {
        let (record, rest) = decode_front(table, key, bytes)?;
        if rest != 0 {
            return Err(Error::corrupt(table, key, "trailing bytes after record"));
        }
        Ok(record)
    }
}

impl Stored for RoomRecord {}
impl Stored for Rejection {}

impl Stored for EventRecord {
    fn to_stored(&self) -> Result<Vec<u8>> {
        Ok(record_layout::encode(self))
    }

    fn from_stored(table: &'static str, key: &dyn Display, bytes: &[u8]) -> Result<Self> {
        match bytes.split_first() {
            Some((&record_layout::FORMAT, body)) => record_layout::decode(table, key, body),
            _ => {
                let (record, rest) = decode_front(table, key, bytes)?;
                if rest != 0 {
                    return Err(Error::corrupt(table, key, "trailing bytes after record"));
                }
                Ok(record)
            }
        }
    }
}

/// The room of a stored event record, without decoding the rest of it.
pub(crate) fn event_room(table: &'static str, key: impl Display, bytes: &[u8]) -> Result<RoomNid> {
    match bytes.split_first() {
        Some((&record_layout::FORMAT, body)) => record_layout::room(table, &key, body),
        _ => Ok(decode_front::<RecordRoom>(table, &key, bytes)?.0.room),
    }
}

/// The format byte in front of every cold record.
pub const RECORD_FORMAT: u8 = 1;

/// The most a record may claim to allocate while decoding. Records are a few hundred bytes;
/// without a limit, a damaged length prefix asks for exabytes and the allocator aborts.
const DECODE_LIMIT: usize = 1 << 20;

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a record.
pub(crate) fn encode<T: Stored>(record: &T) -> Result<Vec<u8>> {
    record.to_stored()
}

/// Decodes a record from `table` at `key`, refusing trailing bytes.
pub(crate) fn decode<T: Stored>(table: &'static str, key: impl Display, bytes: &[u8]) -> Result<T> {
    T::from_stored(table, &key, bytes)
}

/// A record in bincode, behind [`RECORD_FORMAT`].
pub(crate) fn encode_bincode<T: Serialize>(record: &T) -> Result<Vec<u8>> {
    let mut out = vec![RECORD_FORMAT];
    bincode::serde::encode_into_std_write(record, &mut out, config())
        .map_err(|e| Error::InvalidState(format!("record does not encode: {e}")))?;
    // A record decoding would refuse must not be written.
    if out.len() > DECODE_LIMIT {
        return Err(Error::InvalidState(format!(
            "record of {} bytes exceeds the {DECODE_LIMIT}-byte limit",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes `T` from the front of a bincode record and counts the bytes left after it.
fn decode_front<T: DeserializeOwned>(
    table: &'static str,
    key: &dyn Display,
    bytes: &[u8],
) -> Result<(T, usize)> {
    let Some((&RECORD_FORMAT, body)) = bytes.split_first() else {
        return Err(Error::corrupt(table, key, "unknown record format"));
    };
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| Error::corrupt(table, key, e))?;
    Ok((value, body.len() - used))
}
