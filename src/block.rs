//! State entries and state blocks: sorted runs of entries in a fixed little-endian layout that is
//! read in place, keyed by the xxh3-128 hash of their bytes.
//!
//! Layout (see `docs/format.md`): one tag byte [`BLOCK_FORMAT_FIXED24`], then 24 bytes per entry:
//! type NID, state-key NID, event NID, each a little-endian `u64`. An event NID of 0 is a
//! tombstone: the key is removed by this block.

use crate::error::{Error, Result};
use crate::nid::{EventNid, StateKey, StateKeyNid, TypeNid};
use std::fmt;
use std::ops::Range;

/// The tag byte of the fixed-width entry layout.
pub const BLOCK_FORMAT_FIXED24: u8 = 1;
/// Bytes per encoded entry.
pub const ENTRY_BYTES: usize = 24;
const HEADER_BYTES: usize = 1;

/// One entry of a resolved state: the event that holds a (type, state key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateEntry {
    /// The (type, state key) the entry is for.
    pub key: StateKey,
    /// The event that currently holds the key.
    pub event: EventNid,
}

/// One entry of a block or a state delta: sets a key to an event, or removes it (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeltaEntry {
    /// The (type, state key) the entry is for.
    pub key: StateKey,
    /// The new event, or `None` to remove the key (a tombstone).
    pub event: Option<EventNid>,
}

impl DeltaEntry {
    /// An entry that sets `key` to `event`.
    pub fn set(key: StateKey, event: EventNid) -> Self {
        DeltaEntry {
            key,
            event: Some(event),
        }
    }

    /// An entry that removes `key`.
    pub fn remove(key: StateKey) -> Self {
        DeltaEntry { key, event: None }
    }
}

impl From<StateEntry> for DeltaEntry {
    fn from(e: StateEntry) -> Self {
        DeltaEntry::set(e.key, e.event)
    }
}

/// The content hash a block is stored under: xxh3-128 of its encoded bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHash(pub u128);

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({:032x})", self.0)
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl BlockHash {
    /// Hashes encoded block bytes.
    pub fn of(bytes: &[u8]) -> Self {
        BlockHash(xxhash_rust::xxh3::xxh3_128(bytes))
    }
}

/// Encodes entries that are sorted by key with no key twice. Checks both, so that a block on
/// disk is always searchable.
pub fn encode_block(entries: &[DeltaEntry]) -> Result<Vec<u8>> {
    if let Some(w) = entries.windows(2).find(|w| w[0].key >= w[1].key) {
        return Err(Error::InvalidState(format!(
            "block entries out of order or repeated at {:?}",
            w[1].key
        )));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * ENTRY_BYTES);
    out.push(BLOCK_FORMAT_FIXED24);
    for e in entries {
        out.extend_from_slice(&e.key.ty.get().to_le_bytes());
        out.extend_from_slice(&e.key.key.get().to_le_bytes());
        out.extend_from_slice(&e.event.map_or(0, EventNid::get).to_le_bytes());
    }
    Ok(out)
}

/// A block's bytes, checked for shape and read in place.
#[derive(Clone, Copy)]
pub struct BlockView<'a> {
    entries: &'a [[u8; ENTRY_BYTES]],
}

impl fmt::Debug for BlockView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockView")
            .field("entries", &self.len())
            .finish()
    }
}

/// Why block bytes were refused by [`BlockView::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockShapeError {
    /// No bytes at all: not even the tag.
    Empty,
    /// A tag this version does not know.
    UnknownFormat(u8),
    /// The body is not a whole number of entries.
    Truncated(usize),
}

impl fmt::Display for BlockShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockShapeError::Empty => f.write_str("empty block"),
            BlockShapeError::UnknownFormat(t) => write!(f, "unknown block format {t}"),
            BlockShapeError::Truncated(n) => write!(f, "body of {n} bytes is not whole entries"),
        }
    }
}

impl<'a> BlockView<'a> {
    /// Checks the tag and length. Entry contents are checked as they are read.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BlockShapeError> {
        let (&tag, body) = bytes.split_first().ok_or(BlockShapeError::Empty)?;
        if tag != BLOCK_FORMAT_FIXED24 {
            return Err(BlockShapeError::UnknownFormat(tag));
        }
        let (entries, rest) = body.as_chunks::<ENTRY_BYTES>();
        if !rest.is_empty() {
            return Err(BlockShapeError::Truncated(body.len()));
        }
        Ok(BlockView { entries })
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the block has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key at `index`, or `None` when either NID is 0 (a damaged block).
    pub fn key_at(&self, index: usize) -> Option<StateKey> {
        self.entries.get(index).and_then(decode_key)
    }

    /// The entry at `index`, or `None` when it is out of range or damaged.
    pub fn entry_at(&self, index: usize) -> Option<DeltaEntry> {
        self.entries.get(index).and_then(decode)
    }

    /// Binary search: `Some(event)` when the block holds `key` (`Some(None)` for a tombstone).
    /// `Err` when a probed entry is damaged.
    pub fn find(&self, key: StateKey) -> Result<Option<Option<EventNid>>, usize> {
        let index = self.lower_bound(key, 0..self.len())?;
        match self.entry_at(index) {
            Some(e) if e.key == key => Ok(Some(e.event)),
            _ => Ok(None),
        }
    }

    /// The first index in `range` whose key is not below `key`. `Err(index)` names a damaged
    /// entry met on the way.
    pub fn lower_bound(&self, key: StateKey, range: Range<usize>) -> Result<usize, usize> {
        let (mut lo, mut hi) = (range.start, range.end.min(self.len()));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key_at(mid) {
                Some(k) if k < key => lo = mid + 1,
                Some(_) => hi = mid,
                None => return Err(mid),
            }
        }
        Ok(lo)
    }

    /// Entries in order; a damaged entry yields `Err(index)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<DeltaEntry, usize>> + 'a {
        self.entries
            .iter()
            .enumerate()
            .map(|(i, c)| decode(c).ok_or(i))
    }

    /// Appends the live entries of `range` to `out`, skipping tombstones. `Err(index)` names a
    /// damaged entry. This is the bulk path of flatten, kept free of per-entry search.
    pub fn copy_live(&self, range: Range<usize>, out: &mut Vec<StateEntry>) -> Result<(), usize> {
        let start = range.start;
        let slice = self.entries.get(range).unwrap_or(&[]);
        for (offset, chunk) in slice.iter().enumerate() {
            let e = decode(chunk).ok_or(start + offset)?;
            if let Some(event) = e.event {
                out.push(StateEntry { key: e.key, event });
            }
        }
        Ok(())
    }
}

#[inline]
fn word(chunk: &[u8; ENTRY_BYTES], index: usize) -> u64 {
    let mut w = [0u8; 8];
    // index is 0, 1 or 2 at every call site, so the range lies inside the 24-byte chunk.
    w.copy_from_slice(&chunk[index * 8..index * 8 + 8]);
    u64::from_le_bytes(w)
}

#[inline]
fn decode_key(chunk: &[u8; ENTRY_BYTES]) -> Option<StateKey> {
    Some(StateKey {
        ty: TypeNid::new(word(chunk, 0))?,
        key: StateKeyNid::new(word(chunk, 1))?,
    })
}

#[inline]
fn decode(chunk: &[u8; ENTRY_BYTES]) -> Option<DeltaEntry> {
    Some(DeltaEntry {
        key: decode_key(chunk)?,
        event: EventNid::new(word(chunk, 2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: u64, k: u64) -> StateKey {
        StateKey::new(TypeNid::new(t).unwrap(), StateKeyNid::new(k).unwrap())
    }

    #[test]
    fn round_trip_and_find() {
        let entries = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(10).unwrap()),
            DeltaEntry::remove(key(5, 3)),
            DeltaEntry::set(key(5, 9), EventNid::new(11).unwrap()),
        ];
        let bytes = encode_block(&entries).unwrap();
        assert_eq!(bytes.len(), 1 + 3 * ENTRY_BYTES);
        let view = BlockView::parse(&bytes).unwrap();
        let back: Vec<_> = view.iter().map(|e| e.unwrap()).collect();
        assert_eq!(back, entries);
        assert_eq!(view.find(key(5, 3)), Ok(Some(None)));
        assert_eq!(view.find(key(5, 9)), Ok(Some(EventNid::new(11))));
        assert_eq!(view.find(key(5, 4)), Ok(None));
        assert_eq!(view.find(key(9, 9)), Ok(None));
    }

    #[test]
    fn refuses_unsorted() {
        let e = DeltaEntry::remove(key(2, 2));
        assert!(encode_block(&[e, e]).is_err());
    }
}
