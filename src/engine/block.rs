//! State entries and state blocks: sorted runs of entries in little-endian layouts that are read
//! in place, keyed by the xxh3-128 hash of their bytes.
//!
//! Layout (see `docs/format.md`): one tag byte, then the same number of bytes for every entry, so
//! that every layout is read in place and searched by bisection. [`BLOCK_FORMAT_PACKED`] stores
//! each NID as its distance from the block's smallest, in as few bytes as the block's largest
//! distance needs: a block of memberships spends no byte on the type and three on each state key
//! and event. [`BLOCK_FORMAT_FIXED12`] stores `u32` NIDs, [`BLOCK_FORMAT_FIXED24`] `u64` ones.
//! The writer packs blocks of up to [`PACKED_MAX_ENTRIES`] entries, and gives larger ones a
//! fixed layout, which flattens faster. An event NID of 0 is a tombstone: the key is removed by
//! this block.

use crate::engine::varint::{put_varint, take_varint};
use crate::error::{Error, Result};
use crate::nid::{EventNid, StateKey, StateKeyNid, TypeNid};
use std::fmt;
use std::num::{NonZeroU32, NonZeroU64};
use std::ops::Range;

/// The tag byte of the layout with `u64` NIDs, 24 bytes an entry.
pub const BLOCK_FORMAT_FIXED24: u8 = 1;
/// The tag byte of the layout with `u32` NIDs, 12 bytes an entry.
pub const BLOCK_FORMAT_FIXED12: u8 = 2;
/// Bytes per entry with `u64` NIDs.
pub const ENTRY_BYTES: usize = 24;
/// Bytes per entry with `u32` NIDs.
pub const NARROW_ENTRY_BYTES: usize = 12;
/// The tag byte of the packed layout: per-block bases and byte widths.
pub const BLOCK_FORMAT_PACKED: u8 = 3;

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

/// Blocks of more entries than this are written in a fixed-width layout: flattening them, one
/// pass over every entry, takes half the time it takes packed (`cargo bench --bench block`), and
/// a store rewrites them rarely. Smaller blocks, the runs rewritten at every state change, are
/// packed.
pub const PACKED_MAX_ENTRIES: usize = 4_096;

/// Encodes entries that are sorted by key with no key twice: packed, or in a fixed-width layout
/// beyond [`PACKED_MAX_ENTRIES`]. Checks the order, so that a block on disk is always
/// searchable.
pub fn encode_block(entries: &[DeltaEntry]) -> Result<Vec<u8>> {
    check_order(entries)?;
    Ok(if entries.len() > PACKED_MAX_ENTRIES {
        fixed(entries)
    } else {
        pack(entries)
    })
}

/// Encodes entries in the packed layout, whatever their number. For tests and benches.
#[doc(hidden)]
pub fn encode_packed_block(entries: &[DeltaEntry]) -> Result<Vec<u8>> {
    check_order(entries)?;
    Ok(pack(entries))
}

/// Encodes entries in the fixed-width layout: `u32` NIDs when all fit, `u64` otherwise. For
/// tests and benches.
#[doc(hidden)]
pub fn encode_fixed_block(entries: &[DeltaEntry]) -> Result<Vec<u8>> {
    check_order(entries)?;
    Ok(fixed(entries))
}

fn check_order(entries: &[DeltaEntry]) -> Result<()> {
    match entries.windows(2).find(|w| w[0].key >= w[1].key) {
        Some(w) => Err(Error::InvalidState(format!(
            "block entries out of order or repeated at {:?}",
            w[1].key
        ))),
        None => Ok(()),
    }
}

fn pack(entries: &[DeltaEntry]) -> Vec<u8> {
    let events = || entries.iter().filter_map(|e| e.event).map(EventNid::get);
    // Sorted by type first, so the first entry has the smallest type.
    let bases = [
        entries.first().map_or(0, |e| e.key.ty.get()),
        entries.iter().map(|e| e.key.key.get()).min().unwrap_or(0),
        events().min().unwrap_or(0),
    ];
    // An event is stored as its distance from the base plus one, leaving 0 for a tombstone.
    let fields = |e: &DeltaEntry| {
        [
            e.key.ty.get() - bases[0],
            e.key.key.get() - bases[1],
            e.event.map_or(0, |n| n.get() - bases[2] + 1),
        ]
    };
    let widths = [
        width_of(entries.last().map_or(0, |e| fields(e)[0])),
        width_of(entries.iter().map(|e| fields(e)[1]).max().unwrap_or(0)),
        width_of(events().max().map_or(0, |n| n - bases[2] + 1)),
    ];
    let stride: usize = widths.iter().sum();
    let mut out = Vec::with_capacity(PACKED_MAX_HEADER + entries.len() * stride);
    out.push(BLOCK_FORMAT_PACKED);
    // Each width is at most 8, so each fits its nibble.
    out.push((widths[0] | widths[1] << 4) as u8);
    out.push(widths[2] as u8);
    put_varint(&mut out, entries.len() as u64);
    for base in bases {
        put_varint(&mut out, base);
    }
    for e in entries {
        for (value, width) in fields(e).into_iter().zip(widths) {
            out.extend_from_slice(&value.to_le_bytes()[..width]);
        }
    }
    out
}

/// The packed header's size at most: tag, widths, and four varints of up to ten bytes.
const PACKED_MAX_HEADER: usize = 3 + 4 * 10;

/// Bytes needed to hold `value` (0 for 0).
fn width_of(value: u64) -> usize {
    (64 - value.leading_zeros() as usize).div_ceil(8)
}

fn fixed(entries: &[DeltaEntry]) -> Vec<u8> {
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
    let mut out = vec![if narrow {
        BLOCK_FORMAT_FIXED12
    } else {
        BLOCK_FORMAT_FIXED24
    }];
    for w in entries.iter().flat_map(words) {
        if narrow {
            // Every word was checked to fit 32 bits above: its low four bytes are all of it.
            out.extend_from_slice(&w.to_le_bytes()[..4]);
        } else {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
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
    Packed(Packed<'a>),
}

/// Bytes an entry's three fields are read from at once: each field starts at most 16 bytes in
/// (two fields of at most 8 before it) and is read as 8 bytes, then masked to its width.
const WINDOW: usize = 24;

/// The little-endian `u64` at `offset` (at most 16) of a window.
#[inline(always)]
fn load(window: &[u8; WINDOW], offset: usize) -> u64 {
    // The bound lets the compiler drop the range check; offsets are at most 16 by construction.
    let offset = offset.min(WINDOW - 8);
    window
        .get(offset..)
        .and_then(|w| w.first_chunk::<8>())
        .map_or(0, |w| u64::from_le_bytes(*w))
}

/// The packed layout's entries: each field is `width` little-endian bytes added to its base.
#[derive(Clone, Copy)]
struct Packed<'a> {
    body: &'a [u8],
    len: usize,
    stride: usize,
    /// Where each field starts within an entry.
    offsets: [usize; 3],
    masks: [u64; 3],
    bases: [u64; 3],
}

impl<'a> Packed<'a> {
    fn parse(mut header: &'a [u8]) -> Result<Self, BlockShapeError> {
        let bad = BlockShapeError::BadHeader;
        let (&[types_keys, events], rest) = header.split_first_chunk::<2>().ok_or(bad)?;
        header = rest;
        let widths = [
            usize::from(types_keys & 0x0f),
            usize::from(types_keys >> 4),
            usize::from(events),
        ];
        if widths.iter().any(|&w| w > 8) {
            return Err(bad);
        }
        let len = take_varint(&mut header).ok_or(bad)?;
        let mut bases = [0; 3];
        for base in &mut bases {
            *base = take_varint(&mut header).ok_or(bad)?;
        }
        let stride = widths.iter().sum::<usize>();
        // Entries of no bytes all hold one key: more than one of them repeats it.
        let len = usize::try_from(len).map_err(|_| bad)?;
        if stride == 0 && len > 1 {
            return Err(bad);
        }
        if len.checked_mul(stride) != Some(header.len()) {
            return Err(BlockShapeError::Truncated(header.len()));
        }
        let mask = |w: usize| u64::MAX.checked_shr(64 - 8 * w as u32).unwrap_or(0);
        Ok(Packed {
            body: header,
            len,
            stride,
            offsets: [0, widths[0], widths[0] + widths[1]],
            masks: widths.map(mask),
            bases,
        })
    }

    /// Entry `i`'s type, state-key and event NIDs. The sums wrap: the writer never stores a
    /// distance that overflows its base, and a damaged block that does decodes to some NIDs,
    /// which `check` finds out of order or under the wrong hash.
    #[inline(always)]
    fn words(&self, i: usize) -> [u64; 3] {
        let at = i * self.stride;
        let [t, k, e] = match self.body.get(at..).and_then(|b| b.first_chunk::<WINDOW>()) {
            Some(window) => self.offsets.map(|o| load(window, o)),
            None => self.offsets.map(|o| self.load_near_end(at + o)),
        };
        let event = match e & self.masks[2] {
            0 => 0,
            n => self.bases[2].wrapping_add(n - 1),
        };
        [
            self.bases[0].wrapping_add(t & self.masks[0]),
            self.bases[1].wrapping_add(k & self.masks[1]),
            event,
        ]
    }

    /// The eight bytes at `at` as a little-endian `u64`, zeros past the body's end: for the last
    /// entries, whose window would run past it. Byte by byte where fewer than eight are left,
    /// since a copy into a zeroed window cost a quarter of a small run's flatten.
    #[cold]
    fn load_near_end(&self, at: usize) -> u64 {
        let rest = self.body.get(at..).unwrap_or(&[]);
        match rest.first_chunk::<8>() {
            Some(word) => u64::from_le_bytes(*word),
            None => rest
                .iter()
                .enumerate()
                .fold(0, |word, (i, &b)| word | u64::from(b) << (8 * i)),
        }
    }

    fn rows(self, range: Range<usize>) -> PackedRows<'a> {
        let range = if range.start <= range.end && range.end <= self.len {
            range
        } else {
            0..0
        };
        PackedRows {
            packed: self,
            next: range.start,
            end: range.end,
        }
    }
}

/// A range of a packed block's entries, decoded one by one. Its own type rather than a mapped
/// range, whose closure the compiler kept out of line: that made flatten four times slower.
struct PackedRows<'a> {
    packed: Packed<'a>,
    next: usize,
    end: usize,
}

impl Iterator for PackedRows<'_> {
    type Item = [u64; 3];

    #[inline(always)]
    fn next(&mut self) -> Option<[u64; 3]> {
        if self.next >= self.end {
            return None;
        }
        let words = self.packed.words(self.next);
        self.next += 1;
        Some(words)
    }
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
    /// A packed block's header is cut short or names impossible widths.
    BadHeader,
}

impl fmt::Display for BlockShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockShapeError::Empty => f.write_str("empty block"),
            BlockShapeError::UnknownFormat(t) => write!(f, "unknown block format {t}"),
            BlockShapeError::Truncated(n) => write!(f, "body of {n} bytes is not whole entries"),
            BlockShapeError::BadHeader => f.write_str("packed block header is damaged"),
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
            BLOCK_FORMAT_PACKED => {
                return Ok(BlockView {
                    entries: Entries::Packed(Packed::parse(body)?),
                });
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
            Entries::Packed(p) => p.len,
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
            Entries::Narrow(e) => e.get(index).and_then(|c| key_of(c.words())),
            Entries::Packed(p) => (index < p.len).then(|| key_of(p.words(index))).flatten(),
        }
    }

    /// The entry at `index`, or `None` when it is out of range or damaged.
    pub fn entry_at(&self, index: usize) -> Option<DeltaEntry> {
        match self.entries {
            Entries::Wide(e) => e.get(index).and_then(|c| entry_of(wide(c))),
            Entries::Narrow(e) => e.get(index).and_then(|c| entry_of(c.words())),
            Entries::Packed(p) => (index < p.len).then(|| entry_of(p.words(index))).flatten(),
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
    /// flatten's pass over the base block: one comparison per row, or, in a fixed-width block
    /// where newer keys are sparse, a stretch of rows at a time.
    pub fn overlay<S: MergeSink>(
        &self,
        range: Range<usize>,
        newer: &[DeltaEntry],
        out: &mut S,
    ) -> Result<(), usize> {
        let start = range.start;
        match self.entries {
            Entries::Wide(e) => overlay_rows(start, fixed_rows(e, range), newer, out),
            Entries::Narrow(e) => overlay_rows(start, fixed_rows(e, range), newer, out),
            Entries::Packed(p) => overlay(start, p.rows(range), newer, out),
        }
    }
}

/// `key` as one `u128` that orders like the key itself: type NID high, state-key NID low.
#[inline(always)]
fn packed(key: StateKey) -> u128 {
    packed_words(key.ty.get(), key.key.get())
}

/// A stored row's type and state-key NIDs packed as [`packed`] packs a key.
#[inline(always)]
fn packed_words(ty: u64, key: u64) -> u128 {
    (u128::from(ty) << 64) | u128::from(key)
}

/// Where a merge of sorted entries writes: a flattened state drops tombstones, a merged run
/// keeps them (it must still hide the keys of older runs).
pub trait MergeSink {
    /// Appends the entry for `key`, `None` being a tombstone.
    fn put(&mut self, key: StateKey, event: Option<EventNid>);

    /// Appends rows of a fixed-width block that no newer entry touches. `Err(first + i)` names
    /// the `i`th row when its type or state key is 0.
    #[inline(always)]
    fn put_rows<R: FixedRow>(&mut self, first: usize, rows: &[R]) -> Result<(), usize>
    where
        Self: Sized,
    {
        put_each(self, first, rows.iter().map(FixedRow::words))
    }
}

/// [`MergeSink::put_rows`] a row at a time.
#[inline(always)]
fn put_each<S: MergeSink>(
    out: &mut S,
    first: usize,
    rows: impl Iterator<Item = [u64; 3]>,
) -> Result<(), usize> {
    for (i, [t, k, e]) in rows.enumerate() {
        let (Some(ty), Some(key)) = (TypeNid::new(t), StateKeyNid::new(k)) else {
            return Err(first + i);
        };
        out.put(StateKey { ty, key }, EventNid::new(e));
    }
    Ok(())
}

impl MergeSink for Vec<StateEntry> {
    #[inline(always)]
    fn put(&mut self, key: StateKey, event: Option<EventNid>) {
        if let Some(event) = event {
            self.push(StateEntry { key, event });
        }
    }

    /// Rows with no 0 among their NIDs (no tombstone, no damage: every row of a base block) go
    /// in one copy without a branch per row; anything else goes row by row.
    #[inline(always)]
    fn put_rows<R: FixedRow>(&mut self, first: usize, rows: &[R]) -> Result<(), usize> {
        if rows.len() >= COPY_ROWS && R::append_unbroken(rows, self) {
            return Ok(());
        }
        put_each(self, first, rows.iter().map(FixedRow::words))
    }
}

/// Rows from which a run is checked and copied whole rather than row by row: below it, setting
/// up the check and the copy costs more than the branches it saves.
const COPY_ROWS: usize = 32;

/// An entry of a fixed-width layout: its three NIDs, type, state key and event, in order.
/// Implemented by this module's layouts only.
pub trait FixedRow: sealed::Sealed + Copy {
    /// The row's NIDs, 0 where the row holds 0.
    fn words(&self) -> [u64; 3];

    /// Appends `rows` to `out` and returns `true` when none of their NIDs is 0; otherwise
    /// appends nothing and returns `false`.
    fn append_unbroken(rows: &[Self], out: &mut Vec<StateEntry>) -> bool;
}

mod sealed {
    /// Keeps [`super::FixedRow`] to the layouts this module reads.
    pub trait Sealed {}
    impl Sealed for [u8; super::NARROW_ENTRY_BYTES] {}
    impl Sealed for [u8; super::ENTRY_BYTES] {}
}

impl FixedRow for [u8; NARROW_ENTRY_BYTES] {
    #[inline(always)]
    fn words(&self) -> [u64; 3] {
        narrow(self).map(u64::from)
    }

    /// Both passes run without a branch per row, so the compiler vectorizes them: the check
    /// compares every 4-byte field with 0 at once, and the copy widens each field from a
    /// `NonZeroU32`, whose fallback for 0 the check has ruled out.
    #[inline(always)]
    fn append_unbroken(rows: &[Self], out: &mut Vec<StateEntry>) -> bool {
        let (fields, _) = rows.as_flattened().as_chunks::<4>();
        if fields.iter().fold(false, |zero, f| zero | (*f == [0; 4])) {
            return false;
        }
        let nid = |x: u32| NonZeroU64::from(NonZeroU32::new(x).unwrap_or(NonZeroU32::MAX));
        out.extend(rows.iter().map(|row| {
            let [t, k, e] = narrow(row).map(nid);
            StateEntry {
                key: StateKey::new(TypeNid::from(t), StateKeyNid::from(k)),
                event: EventNid::from(e),
            }
        }));
        true
    }
}

impl FixedRow for [u8; ENTRY_BYTES] {
    #[inline(always)]
    fn words(&self) -> [u64; 3] {
        wide(self)
    }

    /// Wide blocks hold NIDs beyond `u32`, which only stores past four billion events reach:
    /// row by row.
    fn append_unbroken(_: &[Self], _: &mut Vec<StateEntry>) -> bool {
        false
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
fn overlay<S: MergeSink>(
    start: usize,
    rows: impl Iterator<Item = [u64; 3]>,
    newer: &[DeltaEntry],
    out: &mut S,
) -> Result<(), usize> {
    let mut taken = 0;
    let next_key = |taken: usize| newer.get(taken).map_or(u128::MAX, |e| packed(e.key));
    let mut next = next_key(0);
    let mut i = 0;
    for [t, k, e] in rows {
        i += 1;
        let (Some(ty), Some(key)) = (TypeNid::new(t), StateKeyNid::new(k)) else {
            return Err(start + i - 1);
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

/// Rows of a fixed-width layout between two newer keys, on average, from which a stretch at a
/// time ([`overlay_fixed`]) beats one pass with a comparison per row ([`overlay`]). A stretch
/// costs a search and a check before its copy: with the one newer entry per dozen rows of a
/// large room's state, the full-scale `hq` flatten took 1.4 times as long by stretches.
const STRETCH_ROWS: usize = 32;

/// [`overlay`] for the fixed-width layouts: by stretches where newer keys are sparse.
#[inline(always)]
fn overlay_rows<R: FixedRow, S: MergeSink>(
    start: usize,
    rows: &[R],
    newer: &[DeltaEntry],
    out: &mut S,
) -> Result<(), usize> {
    if newer.len().saturating_mul(STRETCH_ROWS) <= rows.len() {
        overlay_fixed(start, rows, newer, out)
    } else {
        overlay(start, rows.iter().map(FixedRow::words), newer, out)
    }
}

/// [`overlay`] for the fixed-width layouts, a stretch at a time: the rows below the next newer
/// key are found by comparing keys alone, then handed to the sink in one
/// [`MergeSink::put_rows`], so that the copy of a large base block has no branch per row.
#[inline(always)]
fn overlay_fixed<R: FixedRow, S: MergeSink>(
    start: usize,
    rows: &[R],
    newer: &[DeltaEntry],
    out: &mut S,
) -> Result<(), usize> {
    let key_at = |row: &R| {
        let [t, k, _] = row.words();
        packed_words(t, k)
    };
    let mut at = 0;
    for n in newer {
        let next = packed(n.key);
        let rest = rows.get(at..).unwrap_or(&[]);
        let (stretch, tail) = rest.split_at(rows_below(rest, |r| key_at(r) < next));
        out.put_rows(start + at, stretch)?;
        at += stretch.len();
        // A row the newer entry replaces is skipped: its key is the newer one's, so not damaged.
        if tail.first().is_some_and(|r| key_at(r) == next) {
            at += 1;
        }
        out.put(n.key, n.event);
    }
    out.put_rows(start + at, rows.get(at..).unwrap_or(&[]))
}

/// How many leading rows `below` holds for, in sorted rows: a gallop, then a bisection of the
/// last step, about 2·log₂ of the answer in probes rather than one per row. In a damaged block,
/// whose rows are out of order, the answer is some split, and every row is still read once.
#[inline(always)]
fn rows_below<R>(rows: &[R], below: impl Fn(&R) -> bool) -> usize {
    let mut step = 1;
    while rows.get(step - 1).is_some_and(&below) {
        step = step.saturating_mul(2);
    }
    let from = step / 2;
    let to = (step - 1).min(rows.len());
    from + rows.get(from..to).map_or(0, |r| r.partition_point(&below))
}

/// The entries of `range` of a fixed-width layout; none when the range is out of bounds.
fn fixed_rows<const N: usize>(chunks: &[[u8; N]], range: Range<usize>) -> &[[u8; N]] {
    chunks.get(range).unwrap_or(&[])
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
fn narrow(chunk: &[u8; NARROW_ENTRY_BYTES]) -> [u32; 3] {
    let [a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3] = *chunk;
    [
        u32::from_le_bytes([a0, a1, a2, a3]),
        u32::from_le_bytes([b0, b1, b2, b3]),
        u32::from_le_bytes([c0, c1, c2, c3]),
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
        let fixed = encode_fixed_block(&entries).unwrap();
        assert_eq!(fixed.len(), 1 + 3 * NARROW_ENTRY_BYTES);
        let packed = encode_block(&entries).unwrap();
        // Header: tag, widths, count and bases 1, 1, 10; then a byte per field.
        assert_eq!(packed[..7], [BLOCK_FORMAT_PACKED, 0x11, 1, 3, 1, 1, 10]);
        assert_eq!(packed.len(), 7 + 3 * 3);
        for bytes in [fixed, packed] {
            let view = BlockView::parse(&bytes).unwrap();
            let back: Vec<_> = view.iter().map(|e| e.unwrap()).collect();
            assert_eq!(back, entries);
            assert_eq!(view.find(key(5, 3)), Ok(Some(None)));
            assert_eq!(view.find(key(5, 9)), Ok(Some(EventNid::new(11))));
            assert_eq!(view.find(key(5, 4)), Ok(None));
            assert_eq!(view.find(key(9, 9)), Ok(None));
        }
    }

    #[test]
    fn packed_widths_follow_the_spread_of_each_field() {
        // One type, state keys 70,000 apart, events 300 apart: no type byte, three key bytes,
        // two event bytes.
        let entries: Vec<DeltaEntry> = (0..4u64)
            .map(|i| {
                DeltaEntry::set(
                    key(5, 100 + i * 70_000),
                    EventNid::new(1_000_000 + i * 100).unwrap(),
                )
            })
            .collect();
        let bytes = encode_block(&entries).unwrap();
        assert_eq!(bytes[1..3], [0x30, 2]);
        let view = BlockView::parse(&bytes).unwrap();
        assert_eq!(view.iter().map(|e| e.unwrap()).collect::<Vec<_>>(), entries);
        // The largest NIDs take eight bytes, and nothing overflows.
        let top = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(1).unwrap()),
            DeltaEntry::set(
                StateKey::new(TypeNid::MAX, StateKeyNid::MAX),
                EventNid::new(u64::MAX).unwrap(),
            ),
        ];
        let bytes = encode_block(&top).unwrap();
        assert_eq!(bytes[1..3], [0x88, 8]);
        let view = BlockView::parse(&bytes).unwrap();
        assert_eq!(view.iter().map(|e| e.unwrap()).collect::<Vec<_>>(), top);
        // No entries, one entry, and only tombstones.
        for entries in [
            vec![],
            vec![DeltaEntry::remove(key(2, 2))],
            vec![DeltaEntry::remove(key(2, 2)), DeltaEntry::remove(key(2, 3))],
        ] {
            let bytes = encode_block(&entries).unwrap();
            let view = BlockView::parse(&bytes).unwrap();
            assert_eq!(view.iter().map(|e| e.unwrap()).collect::<Vec<_>>(), entries);
        }
    }

    #[test]
    fn only_large_blocks_are_fixed_width() {
        let entries = |n: u64| -> Vec<DeltaEntry> {
            (1..=n)
                .map(|i| DeltaEntry::set(key(5, i), EventNid::new(i).unwrap()))
                .collect()
        };
        let limit = PACKED_MAX_ENTRIES as u64;
        assert_eq!(
            encode_block(&entries(limit)).unwrap()[0],
            BLOCK_FORMAT_PACKED
        );
        let large = encode_block(&entries(limit + 1)).unwrap();
        assert_eq!(large[0], BLOCK_FORMAT_FIXED12);
        assert_eq!(
            BlockView::parse(&large).unwrap().len(),
            PACKED_MAX_ENTRIES + 1
        );
    }

    #[test]
    fn damaged_packed_headers_are_refused() {
        let entries = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(10).unwrap()),
            DeltaEntry::set(key(1, 2), EventNid::new(12).unwrap()),
        ];
        let bytes = encode_block(&entries).unwrap();
        for cut in 1..bytes.len() {
            assert!(BlockView::parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut wide = bytes.clone();
        wide[2] = 9;
        assert_eq!(
            BlockView::parse(&wide).err(),
            Some(BlockShapeError::BadHeader)
        );
        // Entries of no bytes, more than one of them: every one would hold the same key.
        let empty_entries = [BLOCK_FORMAT_PACKED, 0, 0, 2, 1, 1, 1];
        assert_eq!(
            BlockView::parse(&empty_entries).err(),
            Some(BlockShapeError::BadHeader)
        );
        // A base so large that adding the stored distance overflows wraps (to a damaged entry
        // here, type 0), rather than panicking.
        let mut huge = vec![BLOCK_FORMAT_PACKED, 0x01, 1, 1];
        huge.extend_from_slice(&[0xff; 9]);
        huge.push(0x01);
        huge.extend_from_slice(&[1, 1, 1, 1]);
        let view = BlockView::parse(&huge).unwrap();
        assert_eq!(view.entry_at(0), None);
        assert_eq!(view.iter().next(), Some(Err(0)));
    }

    #[test]
    fn large_nids_use_the_wide_layout() {
        let entries = vec![
            DeltaEntry::set(key(1, 1), EventNid::new(u64::from(u32::MAX) + 1).unwrap()),
            DeltaEntry::set(key(5, 1 << 40), EventNid::new(3).unwrap()),
        ];
        let bytes = encode_fixed_block(&entries).unwrap();
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
        let bytes = encode_fixed_block(&entries).unwrap();
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
