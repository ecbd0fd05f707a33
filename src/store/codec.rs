//! The one place bincode is used: cold records (events, rooms), never blocks or snapshots.
//!
//! Each record is one format byte, [`RECORD_FORMAT`], then bincode's standard (varint)
//! encoding of the record, so that a later layout can be told apart from this one.

use crate::error::{Error, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Display;

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

/// Encodes a cold record.
pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>> {
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

/// Decodes a cold record from `table` at `key`, refusing trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: impl Display,
    bytes: &[u8],
) -> Result<T> {
    let (record, rest) = decode_front(table, &key, bytes)?;
    if rest != 0 {
        return Err(Error::corrupt(table, key, "trailing bytes after record"));
    }
    Ok(record)
}

/// Decodes the leading fields of a cold record, as `T` declares them, and leaves the rest
/// unread: a reader that wants one field of many records skips decoding (and allocating) the
/// others.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    table: &'static str,
    key: impl Display,
    bytes: &[u8],
) -> Result<T> {
    Ok(decode_front(table, key, bytes)?.0)
}

/// Decodes `T` from the front of a record and counts the bytes left after it.
fn decode_front<T: DeserializeOwned>(
    table: &'static str,
    key: impl Display,
    bytes: &[u8],
) -> Result<(T, usize)> {
    let Some((&RECORD_FORMAT, body)) = bytes.split_first() else {
        return Err(Error::corrupt(table, key, "unknown record format"));
    };
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| Error::corrupt(table, &key, e))?;
    Ok((value, body.len() - used))
}
