//! Bad bytes fed straight to every decoder of a stored layout: each answers with a typed error
//! (or a value), never a panic. The fixed inputs are what the fuzz targets found.

use roomstate::block::BlockView;
use roomstate::snapshot::decode_snapshot;
use roomstate::{Error, EventRecord, RoomRecord};

/// Inputs the `decode_records` fuzz target found crashing: a string length prefix that asked
/// bincode for more memory than exists.
const FOUND_BY_FUZZING: &[&[u8]] = &[&[
    0x01, 0xfd, 0xfa, 0x1c, 0x1c, 0x1c, 0xff, 0x01, 0x01, 0xfb, 0x31,
]];

#[test]
fn records_found_by_fuzzing_are_corrupt_not_a_crash() {
    for bytes in FOUND_BY_FUZZING {
        assert!(matches!(
            EventRecord::from_bytes(bytes),
            Err(Error::Corrupt { .. })
        ));
        assert!(matches!(
            RoomRecord::from_bytes(bytes),
            Err(Error::Corrupt { .. })
        ));
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Flips a bit, cuts the bytes short, or appends up to eight random bytes.
    fn damage(&mut self, bytes: &mut Vec<u8>) {
        match self.next() % 3 {
            0 => {
                let i = self.next() as usize % bytes.len();
                bytes[i] ^= 1 << (self.next() % 8);
            }
            1 => bytes.truncate(self.next() as usize % bytes.len()),
            _ => {
                let extra = self.next() % 9;
                bytes.extend((0..extra).map(|_| self.next() as u8));
            }
        }
    }
}

/// Valid records with bytes flipped, cut short or extended: every decoder either decodes or
/// says the row is corrupt.
#[test]
fn damaged_records_decode_or_are_corrupt() {
    let room = RoomRecord {
        version: "10".into(),
        current_state: roomstate::SnapshotNid::new(9).unwrap(),
        latest_events: vec![roomstate::EventNid::new(70_000).unwrap()],
        event_count: 12,
    };
    let mut event = EventRecord::new(
        roomstate::RoomNid::new(65_536).unwrap(),
        roomstate::TypeNid::new(7).unwrap(),
        Some(roomstate::StateKeyNid::new(3).unwrap()),
        roomstate::SnapshotNid::new(5).unwrap(),
    );
    event.prev_events = vec![roomstate::EventNid::new(65_537).unwrap(); 3];
    let originals = [room.to_bytes().unwrap(), event.to_bytes().unwrap()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..20_000 {
        let mut bytes = originals[case % 2].clone();
        rng.damage(&mut bytes);
        for result in [
            EventRecord::from_bytes(&bytes).map(|_| ()),
            RoomRecord::from_bytes(&bytes).map(|_| ()),
        ] {
            assert!(
                matches!(result, Ok(()) | Err(Error::Corrupt { .. })),
                "{bytes:?}"
            );
        }
        let _ = BlockView::parse(&bytes).map(|v| v.iter().count());
        let _ = decode_snapshot(&bytes);
    }
}

/// Valid blocks of every layout with bytes flipped, cut short or extended: parsing, reading,
/// searching and merging either work or report the damage; nothing panics.
#[test]
fn damaged_blocks_decode_or_are_refused() {
    use roomstate::block::{encode_fixed_block, encode_packed_block};
    use roomstate::{DeltaEntry, EventNid, StateEntry, StateKey, StateKeyNid, TypeNid};

    let entries: Vec<DeltaEntry> = (1..40u64)
        .map(|i| {
            let key = StateKey::new(
                TypeNid::new(1 + i / 10).unwrap(),
                StateKeyNid::new(i * 1_000).unwrap(),
            );
            match i % 7 {
                0 => DeltaEntry::remove(key),
                _ => DeltaEntry::set(key, EventNid::new(70_000 + i * 300).unwrap()),
            }
        })
        .collect();
    let originals = [
        encode_packed_block(&entries).unwrap(),
        encode_fixed_block(&entries).unwrap(),
    ];
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for case in 0..20_000 {
        let mut bytes = originals[case % 2].clone();
        rng.damage(&mut bytes);
        let Ok(view) = BlockView::parse(&bytes) else {
            continue;
        };
        let _ = view.iter().count();
        let _ = view.find(entries[case % entries.len()].key);
        let mut out: Vec<StateEntry> = Vec::new();
        let _ = view.overlay(0..view.len(), &entries[..3], &mut out);
    }
}

/// What the `ingest_lines` fuzz target found: a line whose ignored field held bytes that are not
/// UTF-8. serde_json skipped them unchecked, the line was stored as the event's JSON, and
/// reading it back failed the whole ingest. Now the line is a bad line, and nothing else.
#[test]
fn ingest_input_found_by_fuzzing_is_a_bad_line_not_a_failure() {
    use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, Problem, ingest};
    use roomstate::{Store, StoreRead};

    let found = include_bytes!("fuzz_found/ingest_lines-invalid-utf8");
    // As the fuzz target reads it: the first byte picks the batch size and the resolver.
    let (first, text) = found.split_first().unwrap();
    assert!(first & 0x80 != 0, "the Matrix resolver");
    let store = Store::in_memory().unwrap();
    let options = IngestOptions {
        batch_size: usize::from(first % 8) + 1,
        on_bad_line: OnBadLine::Skip,
        max_listed_bad_lines: usize::MAX,
        ..IngestOptions::default()
    };
    let report = ingest(&store, text, options, MatrixResolver::default()).unwrap();
    assert!(
        report
            .listed_bad_lines
            .iter()
            .any(|b| matches!(&b.problem, Problem::NotJson(why) if why.starts_with("not UTF-8"))),
        "{:?}",
        report.listed_bad_lines
    );
    assert!(store.read().unwrap().check().unwrap().is_clean());

    // The smallest such line.
    let mut line = br#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"ignored":"#.to_vec();
    line.extend_from_slice(b"\"\xff\"}");
    let store = Store::in_memory().unwrap();
    let options = IngestOptions {
        on_bad_line: OnBadLine::Skip,
        ..IngestOptions::default()
    };
    let report = ingest(&store, &line[..], options, MatrixResolver::default()).unwrap();
    assert_eq!((report.events, report.bad_lines), (0, 1));
}

/// Flatten's pass over a block against a `BTreeMap`, in every layout: blocks of up to 3,000
/// entries (long stretches between newer keys take the copy without a branch per row, short ones
/// go row by row), with tombstones in the block and in the newer entries, over part of the block
/// or all of it; and the same blocks in the fixed layouts (12 and 24 bytes an entry) with one
/// type NID zeroed, whose index is the error.
#[test]
fn overlay_matches_a_btreemap_in_every_layout() {
    use roomstate::block::{encode_fixed_block, encode_packed_block};
    use roomstate::{DeltaEntry, EventNid, StateEntry, StateKey, StateKeyNid, TypeNid};
    use std::collections::BTreeMap;

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..200u64 {
        // Wide NIDs (past u32) make the fixed layout 24 bytes an entry.
        let wide = if case % 5 == 0 { 1 << 40 } else { 0 };
        let len = match case % 4 {
            0 => rng.next() % 40,
            _ => rng.next() % 3_000,
        };
        let gap = 1 + rng.next() % 4;
        let spread = 1 + rng.next() % 200;
        let key = |i: u64| {
            StateKey::new(
                TypeNid::new(1 + i / 1_000).unwrap(),
                StateKeyNid::new(wide + 1 + i * gap).unwrap(),
            )
        };
        let mut base = Vec::new();
        for i in 0..len {
            let event = match rng.next() % 50 {
                0 => None,
                _ => EventNid::new(wide + 1 + rng.next() % 1_000_000),
            };
            base.push(DeltaEntry { key: key(i), event });
        }
        // Newer entries: on base keys and between them, one in about `spread` places.
        let mut newer: BTreeMap<StateKey, Option<EventNid>> = BTreeMap::new();
        for _ in 0..(len * gap / spread + 1) {
            let i = rng.next() % (len * gap + 2);
            let k = StateKey::new(
                TypeNid::new(1 + (i / gap) / 1_000).unwrap(),
                StateKeyNid::new(wide + 1 + i).unwrap(),
            );
            let event =
                (!rng.next().is_multiple_of(10)).then(|| EventNid::new(2_000_000 + i).unwrap());
            newer.insert(k, event);
        }
        let newer: Vec<DeltaEntry> = newer
            .into_iter()
            .map(|(key, event)| DeltaEntry { key, event })
            .collect();
        let range = match case % 3 {
            0 if len > 2 => 1..(len as usize - 1),
            _ => 0..len as usize,
        };
        let mut model: BTreeMap<StateKey, Option<EventNid>> = base[range.clone()]
            .iter()
            .map(|e| (e.key, e.event))
            .collect();
        model.extend(newer.iter().map(|e| (e.key, e.event)));
        let expected: Vec<StateEntry> = model
            .iter()
            .filter_map(|(&key, &event)| Some(StateEntry { key, event: event? }))
            .collect();
        for bytes in [
            encode_packed_block(&base).unwrap(),
            encode_fixed_block(&base).unwrap(),
        ] {
            let view = BlockView::parse(&bytes).unwrap();
            let mut out: Vec<StateEntry> = Vec::new();
            view.overlay(range.clone(), &newer, &mut out).unwrap();
            assert_eq!(out, expected, "case {case}, {len} entries, {bytes:?}");
            let mut run: Vec<DeltaEntry> = Vec::new();
            view.overlay(range.clone(), &newer, &mut run).unwrap();
            let whole: Vec<DeltaEntry> = model
                .iter()
                .map(|(&key, &event)| DeltaEntry { key, event })
                .collect();
            assert_eq!(run, whole, "case {case}: the merged run keeps tombstones");
        }
        let Some(width) = bytes_per_entry(&base).filter(|_| !range.is_empty()) else {
            continue;
        };
        // A zeroed type NID in a fixed-width block: the pass reports that row's index.
        let damaged_at = range.start + (rng.next() as usize % range.len());
        let mut bytes = encode_fixed_block(&base).unwrap();
        let row = 1 + width * damaged_at;
        bytes[row..row + width / 3].fill(0);
        let view = BlockView::parse(&bytes).unwrap();
        let mut out: Vec<StateEntry> = Vec::new();
        assert_eq!(
            view.overlay(range.clone(), &newer, &mut out),
            Err(damaged_at),
            "case {case}"
        );
    }
}

/// The fixed layout's bytes per entry for these entries: 12 when every NID fits `u32`, else 24.
fn bytes_per_entry(entries: &[roomstate::DeltaEntry]) -> Option<usize> {
    let bytes = roomstate::block::encode_fixed_block(entries).ok()?;
    (!entries.is_empty()).then(|| (bytes.len() - 1) / entries.len())
}
