//! State entries and state blocks: sorted runs of entries in a fixed little-endian layout that is
//! read in place, keyed by the xxh3-128 hash of their bytes.
//!
//! Layout (see `docs/format.md`): one tag byte, then a fixed number of bytes per entry: type NID,
//! state-key NID, event NID, each little-endian. [`BLOCK_FORMAT_FIXED12`] stores them as `u32`s
//! (12 bytes an entry) when every NID of the block fits, which is all of them below four
//! billion; [`BLOCK_FORMAT_FIXED24`] as `u64`s otherwise. Both are read in place and searched by
//! bisection; widening a `u32` costs nothing next to a copy. An event NID of 0 is a tombstone:
//! the key is removed by this block.

use crate::error::{Error, Result};
use crate::nid::{EventNid, StateKey, StateKeyNid, TypeNid};
use std::fmt;
use std::ops::Range;

/// The tag byte of the layout with `u64` NIDs, 24 bytes an entry.
pub const BLOCK_FORMAT_FIXED24: u8 = 1;
/// The tag byte of the layout with `u32` NIDs, 12 bytes an entry.
pub const BLOCK_FORMAT_FIXED12: u8 = 2;
/// Bytes per entry with `u64` NIDs.
pub const ENTRY_BYTES: usize = 24;
/// Bytes per entry with `u32` NIDs.
pub const NARROW_ENTRY_BYTES: usize = 12;
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
    let words = |e: &DeltaEntry| {
        [
            e.key.ty.get(),
            e.key.key.get(),
            e.event.map_or(0, EventNid::get),
        ]
    };
    let narrow = entries
        .iter()
        .all(|e| words(e).iter().all(|w| u32::try_from(*w).is_ok()));
    let width = if narrow {
        NARROW_ENTRY_BYTES
    } else {
        ENTRY_BYTES
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + entries.len() * width);
    if narrow {
        out.push(BLOCK_FORMAT_FIXED12);
        for w in entries.iter().flat_map(words) {
            // Every word was checked to fit above.
            out.extend_from_slice(&u32::try_from(w).unwrap_or(u32::MAX).to_le_bytes());
        }
    } else {
        out.push(BLOCK_FORMAT_FIXED24);
        for w in entries.iter().flat_map(words) {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    Ok(out)
}

/// A block's bytes, checked for shape and read in place.
#[derive(Clone, Copy)]
pub struct BlockView<'a> {
    entries: Entries<'a>,
}

#[derive(Clone, Copy)]
enum Entries<'a> {
    Wide(&'a [[u8; ENTRY_BYTES]]),
    Narrow(&'a [[u8; NARROW_ENTRY_BYTES]]),
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
        let (entries, rest) = match tag {
            BLOCK_FORMAT_FIXED24 => {
                let (e, rest) = body.as_chunks::<ENTRY_BYTES>();
                (Entries::Wide(e), rest)
            }
            BLOCK_FORMAT_FIXED12 => {
                let (e, rest) = body.as_chunks::<NARROW_ENTRY_BYTES>();
                (Entries::Narrow(e), rest)
            }
            other => return Err(BlockShapeError::UnknownFormat(other)),
        };
        if !rest.is_empty() {
            return Err(BlockShapeError::Truncated(body.len()));
        }
        Ok(BlockView { entries })
    }

    /// Number of entries, tombstones included.
    pub fn len(&self) -> usize {
        match self.entries {
            Entries::Wide(e) => e.len(),
            Entries::Narrow(e) => e.len(),
        }
    }

    /// Whether the block has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key at `index`, or `None` when either NID is 0 (a damaged block).
    pub fn key_at(&self, index: usize) -> Option<StateKey> {
        match self.entries {
            Entries::Wide(e) => e.get(index).and_then(|c| key_of(wide(c))),
            Entries::Narrow(e) => e.get(index).and_then(|c| key_of(narrow(c))),
        }
    }

    /// The entry at `index`, or `None` when it is out of range or damaged.
    pub fn entry_at(&self, index: usize) -> Option<DeltaEntry> {
        match self.entries {
            Entries::Wide(e) => e.get(index).and_then(|c| entry_of(wide(c))),
            Entries::Narrow(e) => e.get(index).and_then(|c| entry_of(narrow(c))),
        }
    }

    /// Binary search: `Some(event)` when the block holds `key` (`Some(None)` for a tombstone).
    /// `Err` when a probed entry is damaged.
    pub fn find(&self, key: StateKey) -> Result<Option<Option<EventNid>>, usize> {
        let index = self.lower_bound(key, 0..self.len())?;
        if index >= self.len() {
            return Ok(None);
        }
        match self.entry_at(index) {
            Some(e) if e.key == key => Ok(Some(e.event)),
            Some(_) => Ok(None),
            None => Err(index),
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
        let view = *self;
        (0..self.len()).map(move |i| view.entry_at(i).ok_or(i))
    }

    /// Appends the entries of `range` merged with `newer` (sorted, distinct keys) to `out`: on a
    /// shared key the newer entry wins. Whether tombstones are kept is the sink's choice.
    /// `Err(index)` names a damaged entry, and `out` then holds part of the merge. This is
    /// flatten's one pass over the base block.
    pub fn overlay<S: MergeSink>(
        &self,
        range: Range<usize>,
        newer: &[DeltaEntry],
        out: &mut S,
    ) -> Result<(), usize> {
        match self.entries {
            Entries::Wide(e) => overlay(e, range, wide, newer, out),
            Entries::Narrow(e) => overlay(e, range, narrow, newer, out),
        }
    }
}

/// `key` as one `u128` that orders like the key itself: type NID high, state-key NID low.
#[inline(always)]
fn packed(key: StateKey) -> u128 {
    (u128::from(key.ty.get()) << 64) | u128::from(key.key.get())
}

/// Where a merge of sorted entries writes: a flattened state drops tombstones, a merged run
/// keeps them (it must still hide the keys of older runs).
pub trait MergeSink {
    /// Appends the entry for `key`, `None` being a tombstone.
    fn put(&mut self, key: StateKey, event: Option<EventNid>);
}

impl MergeSink for Vec<StateEntry> {
    #[inline(always)]
    fn put(&mut self, key: StateKey, event: Option<EventNid>) {
        if let Some(event) = event {
            self.push(StateEntry { key, event });
        }
    }
}

impl MergeSink for Vec<DeltaEntry> {
    #[inline(always)]
    fn put(&mut self, key: StateKey, event: Option<EventNid>) {
        self.push(DeltaEntry { key, event });
    }
}

/// Merges `chunks[range]` with `newer` (sorted, distinct keys) in one pass, the newer entry
/// winning on a shared key. An entry below the next newer key costs one well-predicted
/// comparison, and one the newer entries replace one more; keys the block lacks are placed by
/// [`place_newer`], off the hot loop.
#[inline(always)]
fn overlay<const N: usize, S: MergeSink>(
    chunks: &[[u8; N]],
    range: Range<usize>,
    words: impl Fn(&[u8; N]) -> [u64; 3] + Copy,
    newer: &[DeltaEntry],
    out: &mut S,
) -> Result<(), usize> {
    let start = range.start;
    let slice = chunks.get(range).unwrap_or(&[]);
    let mut taken = 0;
    let next_key = |taken: usize| newer.get(taken).map_or(u128::MAX, |e| packed(e.key));
    let mut next = next_key(0);
    for (i, chunk) in slice.iter().enumerate() {
        let [t, k, e] = words(chunk);
        let (Some(ty), Some(key)) = (TypeNid::new(t), StateKeyNid::new(k)) else {
            return Err(start + i);
        };
        let key = StateKey { ty, key };
        let at = packed(key);
        if at >= next {
            if at > next {
                taken = place_newer(newer, taken, key, out);
            }
            // `next` is `u128::MAX` once `newer` is used up, which a real key can also pack
            // to: only the entry itself says whether it replaces this one.
            if let Some(replacing) = newer.get(taken).filter(|n| n.key == key) {
                out.put(key, replacing.event);
                taken += 1;
                next = next_key(taken);
                continue;
            }
            next = next_key(taken);
        }
        out.put(key, EventNid::new(e));
    }
    for n in newer.get(taken..).unwrap_or(&[]) {
        out.put(n.key, n.event);
    }
    Ok(())
}

/// Emits the newer entries from `newer[taken..]` whose keys are below `key`; returns how many
/// are taken now.
#[inline(never)]
fn place_newer<S: MergeSink>(
    newer: &[DeltaEntry],
    mut taken: usize,
    key: StateKey,
    out: &mut S,
) -> usize {
    while let Some(n) = newer.get(taken).filter(|n| n.key < key) {
        out.put(n.key, n.event);
        taken += 1;
    }
    taken
}

#[inline(always)]
fn wide(chunk: &[u8; ENTRY_BYTES]) -> [u64; 3] {
    // Destructuring the array is infallible and lets the compiler emit three plain loads.
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
        c0,
        c1,
        c2,
        c3,
        c4,
        c5,
        c6,
        c7,
    ] = *chunk;
    [
        u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
        u64::from_le_bytes([c0, c1, c2, c3, c4, c5, c6, c7]),
    ]
}

#[inline(always)]
fn narrow(chunk: &[u8; NARROW_ENTRY_BYTES]) -> [u64; 3] {
    let [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3] = *chunk;
    [
        u64::from(u32::from_le_bytes([a0, a1, a2, a3])),
        u64::from(u32::from_le_bytes([b0, b1, b2, b3])),
        u64::from(u32::from_le_bytes([c0, c1, c2, c3])),
    ]
}

#[inline]
fn key_of(words: [u64; 3]) -> Option<StateKey> {
    Some(StateKey {
        ty: TypeNid::new(words[0])?,
        key: StateKeyNid::new(words[1])?,
    })
}

#[inline]
fn entry_of(words: [u64; 3]) -> Option<DeltaEntry> {
    Some(DeltaEntry {
        key: key_of(words)?,
        event: EventNid::new(words[2]),
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
        assert_eq!(bytes.len(), 1 + 3 * NARROW_ENTRY_BYTES);
        let view = BlockView::parse(&bytes).unwrap();
        let back: Vec<_> = view.iter().map(|e| e.unwrap()).collect();
        assert_eq!(back, entries);
        assert_eq!(view.find(key(5, 3)), Ok(Some(None)));
        assert_eq!(view.find(key(5, 9)), Ok(Some(EventNid::new(11))));
        assert_eq!(view.find(key(5, 4)), Ok(None));
        assert_eq!(view.find(key(9, 9)), Ok(None));
    }

    #[test]
    fn large_nids_use_the_wide_layout() {
        let entries = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(u64::from(u32::MAX) + 1).unwrap()),
            DeltaEntry::set(key(5, 1 << 40), EventNid::new(3).unwrap()),
        ];
        let bytes = encode_block(&entries).unwrap();
        assert_eq!(bytes[0], BLOCK_FORMAT_FIXED24);
        assert_eq!(bytes.len(), 1 + 2 * ENTRY_BYTES);
        let view = BlockView::parse(&bytes).unwrap();
        let back: Vec<_> = view.iter().map(|e| e.unwrap()).collect();
        assert_eq!(back, entries);
        let mut live: Vec<StateEntry> = Vec::new();
        view.overlay(0..2, &[], &mut live).unwrap();
        assert_eq!(live.len(), 2);
    }

    #[test]
    fn overlay_skips_tombstones_and_reports_damage() {
        let entries = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(10).unwrap()),
            DeltaEntry::remove(key(1, 2)),
            DeltaEntry::set(key(1, 3), EventNid::new(12).unwrap()),
            DeltaEntry::remove(key(1, 4)),
        ];
        let bytes = encode_block(&entries).unwrap();
        let view = BlockView::parse(&bytes).unwrap();
        let earlier = StateEntry {
            key: key(1, 1),
            event: EventNid::new(99).unwrap(),
        };
        let mut out = vec![earlier];
        view.overlay(1..4, &[], &mut out).unwrap();
        let events: Vec<u64> = out.iter().map(|e| e.event.get()).collect();
        assert_eq!(events, [99, 12]);
        // A zero type NID in the range is reported by index.
        let mut damaged = bytes.clone();
        damaged[1 + 2 * NARROW_ENTRY_BYTES..1 + 2 * NARROW_ENTRY_BYTES + 4].fill(0);
        let view = BlockView::parse(&damaged).unwrap();
        let mut out: Vec<StateEntry> = Vec::new();
        assert_eq!(view.overlay(0..4, &[], &mut out), Err(2));
    }

    #[test]
    fn overlay_handles_the_largest_key_with_nothing_newer() {
        let top = StateKey::new(TypeNid::MAX, StateKeyNid::MAX);
        let entries = vec![DeltaEntry::set(top, EventNid::new(3).unwrap())];
        let bytes = encode_block(&entries).unwrap();
        let view = BlockView::parse(&bytes).unwrap();
        let mut out: Vec<StateEntry> = Vec::new();
        view.overlay(0..1, &[], &mut out).unwrap();
        assert_eq!(out.len(), 1);
        let newer = [DeltaEntry::remove(top)];
        let mut out: Vec<StateEntry> = Vec::new();
        view.overlay(0..1, &newer, &mut out).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn overlay_lets_newer_entries_win() {
        let ev = |n| EventNid::new(n).unwrap();
        let base = vec![
            DeltaEntry::set(key(1, 2), ev(1)),
            DeltaEntry::remove(key(1, 4)),
            DeltaEntry::set(key(1, 6), ev(3)),
            DeltaEntry::set(key(1, 8), ev(4)),
        ];
        let bytes = encode_block(&base).unwrap();
        let view = BlockView::parse(&bytes).unwrap();
        let newer = vec![
            DeltaEntry::set(key(1, 1), ev(20)), // before every base key
            DeltaEntry::set(key(1, 2), ev(21)), // replaces
            DeltaEntry::set(key(1, 4), ev(22)), // revives a base tombstone
            DeltaEntry::remove(key(1, 5)),      // removes a key the base lacks
            DeltaEntry::remove(key(1, 6)),      // removes
            DeltaEntry::set(key(1, 7), ev(23)), // between base keys
            DeltaEntry::set(key(2, 1), ev(24)), // after every base key
        ];
        let mut out: Vec<StateEntry> = Vec::new();
        view.overlay(0..4, &newer, &mut out).unwrap();
        let got: Vec<(u64, u64)> = out
            .iter()
            .map(|e| (e.key.key.get(), e.event.get()))
            .collect();
        assert_eq!(got, [(1, 20), (2, 21), (4, 22), (7, 23), (8, 4), (1, 24)]);
        // Merged into a run instead, the tombstones stay: they must hide older runs' keys.
        let mut run: Vec<DeltaEntry> = Vec::new();
        view.overlay(0..4, &newer, &mut run).unwrap();
        let got: Vec<(u64, u64)> = run
            .iter()
            .map(|e| (e.key.key.get(), e.event.map_or(0, EventNid::get)))
            .collect();
        assert_eq!(
            got,
            [
                (1, 20),
                (2, 21),
                (4, 22),
                (5, 0),
                (6, 0),
                (7, 23),
                (8, 4),
                (1, 24)
            ]
        );
    }

    #[test]
    fn refuses_unsorted() {
        let e = DeltaEntry::remove(key(2, 2));
        assert!(encode_block(&[e, e]).is_err());
    }
}
