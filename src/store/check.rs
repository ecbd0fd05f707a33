//! The integrity walk: every row of every table decoded, and every reference followed.
//!
//! It reports problems instead of stopping at the first, so one damaged row does not hide the
//! rest.

use crate::engine::MAX_CHAIN;
use crate::engine::block::{BlockHash, BlockView};
use crate::engine::snapshot::{SnapshotRecord, decode_snapshot, snapshot_hash};
use crate::error::Result;
use crate::store::Tables;
use crate::store::codec;
use crate::store::event_ids;
use crate::store::intern::{self, Kind};
use crate::store::parallel::both;
use crate::store::record::{EventRecord, Rejection, RoomRecord};
use crate::store::refs::CountKey;
use crate::store::tables::{self, Text};
use redb::ReadableTable;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// One thing wrong with a store, with the table and key it was found at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The table holding the row.
    pub table: &'static str,
    /// The row's key, printed.
    pub key: String,
    /// What is wrong.
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.table, self.key, self.what)
    }
}

/// What [`crate::StoreRead::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Rows read, all tables together.
    pub rows: u64,
    /// Every problem found, in table order.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing was wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn append(&mut self, part: &mut CheckReport) {
        self.rows += part.rows;
        self.problems.append(&mut part.problems);
    }

    pub(crate) fn problem(
        &mut self,
        table: &'static str,
        key: impl fmt::Display,
        what: impl fmt::Display,
    ) {
        self.problems.push(Problem {
            table,
            key: key.to_string(),
            what: what.to_string(),
        });
    }
}

/// The walk itself: interning, blocks, snapshots, events, rooms.
pub(crate) fn check<T: Tables + Sync>(tx: &T) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let interned = check_interning(tx, &mut report)?;
    // The events do not need the blocks and snapshots until their state-before NIDs are
    // looked up, so the two walks run side by side.
    let ((mut stored, mut tally, snapshots), (mut events, befores)) = both(
        T::SHARES_TABLES,
        || {
            let mut part = CheckReport::default();
            let blocks = check_blocks(tx, &interned, &mut part)?;
            let mut tally = RefTally {
                blocks: blocks.keys().map(|&h| (h, 0)).collect(),
                snapshots: HashMap::new(),
            };
            let snapshots = check_snapshots(tx, &blocks, &mut tally, &mut part)?;
            Ok((part, tally, snapshots))
        },
        || {
            let mut part = CheckReport::default();
            let befores = check_events(tx, &interned, &mut part)?;
            Ok((part, befores))
        },
    )?;
    report.append(&mut stored);
    check_states_before(&befores, &snapshots, &mut tally, &mut events);
    report.append(&mut events);
    check_rooms(tx, &interned, &snapshots, &mut tally, &mut report)?;
    check_outcomes(tx, &mut report)?;
    check_outliers(tx, &mut report)?;
    crate::store::json::check_json(tx, &mut report)?;
    crate::store::auth_index_check::check_auth_index(tx, &mut report)?;
    check_refs(tx, &tally, &mut report)?;
    Ok(report)
}

/// Every rejection row decodes and belongs to a stored event, and a rejected event's record
/// says it is rejected.
fn check_outcomes<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let events = tx.open(tables::EVENTS)?;
    for row in tx.open(tables::OUTCOMES)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        report.rows += 1;
        let nid = nid.value();
        let rejection: Rejection = match codec::decode("outcomes", nid, bytes.value()) {
            Ok(r) => r,
            Err(e) => {
                report.problem("outcomes", nid, e);
                continue;
            }
        };
        let Some(record) = events.get(nid)? else {
            report.problem("outcomes", nid, "no event record");
            continue;
        };
        match codec::decode::<EventRecord>("events", nid, record.value()) {
            Ok(record) if record.rejected == rejection.soft_failed => report.problem(
                "outcomes",
                nid,
                format!(
                    "the event record says rejected = {}, the outcome says {}",
                    record.rejected,
                    if rejection.soft_failed {
                        "soft-failed"
                    } else {
                        "rejected"
                    }
                ),
            ),
            _ => {}
        }
    }
    Ok(())
}

/// Every outlier row names a stored event of its room, with no state before it.
fn check_outliers<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let events = tx.open(tables::EVENTS)?;
    for row in tx.open(tables::OUTLIERS)?.range::<(u64, u64)>(..)? {
        let (key, _) = row?;
        report.rows += 1;
        let (room, event) = key.value();
        let shown = format!("({room}, {event})");
        let Some(bytes) = events.get(event)? else {
            report.problem("outliers", shown, "no event record");
            continue;
        };
        match codec::decode::<EventRecord>("events", event, bytes.value()) {
            Ok(r) if r.room.get() != room => report.problem(
                "outliers",
                shown,
                format!("the event is of room {}", r.room),
            ),
            Ok(r) if r.state_before != crate::nid::SnapshotNid::EMPTY => report.problem(
                "outliers",
                shown,
                format!("an outlier with state before it ({})", r.state_before),
            ),
            // A record that does not decode is reported by the walk over events.
            _ => {}
        }
    }
    Ok(())
}

/// The references actually present to each stored block and snapshot, counted by the walk.
struct RefTally {
    blocks: HashMap<u128, u64>,
    snapshots: HashMap<u64, u64>,
}

impl RefTally {
    fn snapshot(&mut self, nid: u64) {
        if let Some(count) = self.snapshots.get_mut(&nid) {
            *count += 1;
        }
    }
}

/// Both directions of every kind agree; returns each kind's NIDs that resolve. The event IDs
/// are most of the rows, so their forward walk runs beside the rest.
fn check_interning<T: Tables + Sync>(
    tx: &T,
    report: &mut CheckReport,
) -> Result<[HashSet<u64>; 4]> {
    let mut interned: [HashSet<u64>; 4] = Default::default();
    let (mut forward_events, mut reverse_events) = both(
        T::SHARES_TABLES,
        || {
            let mut part = CheckReport::default();
            event_ids::check_keys(tx, &mut part).map(|()| part)
        },
        || {
            for kind in [intern::ROOM, intern::TYPE, intern::STATE_KEY] {
                check_forward(tx, kind, report)?;
                interned[kind.index] = check_reverse(tx, kind, report)?;
            }
            let mut part = CheckReport::default();
            interned[intern::EVENT.index] = event_ids::check_ids(tx, &mut part)?;
            Ok(part)
        },
    )?;
    report.append(&mut forward_events);
    report.append(&mut reverse_events);
    Ok(interned)
}

/// Every string maps to a NID that maps back to it.
fn check_forward<T: Tables>(tx: &T, kind: Kind, report: &mut CheckReport) -> Result<()> {
    let forward = tx.open(kind.string_table()?)?;
    let reverse = tx.open(kind.reverse)?;
    for row in forward.range::<&[u8]>(..)? {
        let (s, nid) = row?;
        report.rows += 1;
        let (s, nid) = (s.value(), nid.value());
        let shown = format!("{:?}", String::from_utf8_lossy(s));
        if std::str::from_utf8(s).is_err() {
            report.problem(kind.forward_name, &shown, "not UTF-8");
        }
        match reverse.get(nid)? {
            Some(back) if back.value() == s => {}
            _ => report.problem(
                kind.forward_name,
                shown,
                format!("NID {nid} does not map back"),
            ),
        }
    }
    Ok(())
}

/// Every NID maps to a string that maps back to it; returns the NIDs.
fn check_reverse<T: Tables>(tx: &T, kind: Kind, report: &mut CheckReport) -> Result<HashSet<u64>> {
    let forward = tx.open(kind.string_table()?)?;
    let reverse = tx.open(kind.reverse)?;
    walk_reverse(&reverse, kind.reverse_name, report, |s| {
        Ok(forward.get(s)?.map(|n| n.value()))
    })
}

/// Every NID of the `name` table `reverse` maps to a string that `finds` maps back to it;
/// returns the NIDs.
pub(crate) fn walk_reverse(
    reverse: &impl ReadableTable<u64, Text>,
    name: &'static str,
    report: &mut CheckReport,
    mut finds: impl FnMut(&[u8]) -> Result<Option<u64>>,
) -> Result<HashSet<u64>> {
    let mut nids = HashSet::new();
    for row in reverse.range::<u64>(..)? {
        let (nid, s) = row?;
        report.rows += 1;
        let (nid, s) = (nid.value(), s.value());
        nids.insert(nid);
        if nid == 0 {
            report.problem(name, nid, "NID 0");
        }
        let shown = String::from_utf8_lossy(s);
        if std::str::from_utf8(s).is_err() {
            report.problem(name, nid, format!("{shown:?} is not UTF-8"));
        }
        if finds(s)? != Some(nid) {
            report.problem(name, nid, format!("{shown:?} does not map back"));
        }
    }
    Ok(nids)
}

/// Every block decodes, is sorted, and names interned NIDs; returns each block's entry count.
fn check_blocks<T: Tables>(
    tx: &T,
    interned: &[HashSet<u64>; 4],
    report: &mut CheckReport,
) -> Result<HashMap<u128, u32>> {
    let mut counts = HashMap::new();
    for row in tx.open(tables::BLOCKS)?.range::<u128>(..)? {
        let (hash, bytes) = row?;
        report.rows += 1;
        let (hash, bytes) = (BlockHash(hash.value()), bytes.value());
        if BlockHash::of(bytes) != hash {
            report.problem("blocks", hash, "content does not hash to its key");
        }
        let view = match BlockView::parse(bytes) {
            Ok(v) => v,
            Err(e) => {
                report.problem("blocks", hash, e);
                continue;
            }
        };
        counts.insert(hash.0, view.len() as u32);
        let mut previous = None;
        for (i, e) in view.iter().enumerate() {
            let Ok(e) = e else {
                report.problem("blocks", hash, format!("entry {i} has a zero NID"));
                continue;
            };
            if previous.is_some_and(|p| p >= e.key) {
                report.problem("blocks", hash, format!("entry {i} is out of order"));
            }
            previous = Some(e.key);
            let refs = [
                (intern::TYPE, e.key.ty.get()),
                (intern::STATE_KEY, e.key.key.get()),
            ]
            .into_iter()
            .chain(e.event.map(|ev| (intern::EVENT, ev.get())));
            for (kind, nid) in refs {
                if !interned[kind.index].contains(&nid) {
                    report.problem(
                        "blocks",
                        hash,
                        format!("entry {i}: unknown {} NID {nid}", kind.nid),
                    );
                }
            }
        }
    }
    Ok(counts)
}

/// Every snapshot decodes, its parent and blocks exist with the counts it gives, and the
/// deduplication index matches; returns the snapshot NIDs whose chains resolve.
fn check_snapshots<T: Tables>(
    tx: &T,
    blocks: &HashMap<u128, u32>,
    tally: &mut RefTally,
    report: &mut CheckReport,
) -> Result<HashSet<u64>> {
    let mut records: HashMap<u64, SnapshotRecord> = HashMap::new();
    let hashes = tx.open(tables::SNAPSHOT_HASHES)?;
    for row in tx.open(tables::SNAPSHOTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        report.rows += 1;
        let (nid, bytes) = (nid.value(), bytes.value());
        let record = match decode_snapshot(bytes) {
            Ok(r) => r,
            Err(e) => {
                report.problem("snapshots", nid, e);
                continue;
            }
        };
        if hashes.get(snapshot_hash(bytes))?.map(|n| n.value()) != Some(nid) {
            report.problem("snapshots", nid, "missing from the deduplication index");
        }
        for r in &record.blocks {
            match blocks.get(&r.hash.0) {
                Some(&n) if n == r.entries => {}
                Some(&n) => report.problem(
                    "snapshots",
                    nid,
                    format!("block {} holds {n} entries, not {}", r.hash, r.entries),
                ),
                None => report.problem("snapshots", nid, format!("block {} is missing", r.hash)),
            }
        }
        records.insert(nid, record);
    }
    for row in hashes.range::<u128>(..)? {
        let (hash, nid) = row?;
        report.rows += 1;
        if !records.contains_key(&nid.value()) {
            report.problem(
                "snapshot_hashes",
                format!("{:032x}", hash.value()),
                format!("names missing snapshot {}", nid.value()),
            );
        }
    }
    tally.snapshots = records
        .keys()
        .filter(|&&n| n != crate::nid::SnapshotNid::EMPTY.get())
        .map(|&n| (n, 0))
        .collect();
    for record in records.values() {
        if let Some(p) = record.parent {
            tally.snapshot(p.get());
        }
        for b in &record.blocks {
            if let Some(count) = tally.blocks.get_mut(&b.hash.0) {
                *count += 1;
            }
        }
    }
    let mut resolved = HashSet::new();
    // In NID order, so that a report reads the same every time.
    let mut nids: Vec<u64> = records.keys().copied().collect();
    nids.sort_unstable();
    for (nid, record) in nids.into_iter().filter_map(|n| Some((n, records.get(&n)?))) {
        let mut depth = 0;
        let mut parent = record.parent;
        while let Some(p) = parent {
            depth += 1;
            if depth > MAX_CHAIN {
                report.problem("snapshots", nid, "parent chain too long (a cycle?)");
                break;
            }
            match records.get(&p.get()) {
                Some(r) => parent = r.parent,
                None => {
                    report.problem("snapshots", nid, format!("parent {p} is missing"));
                    break;
                }
            }
        }
        if parent.is_none() {
            resolved.insert(nid);
        }
    }
    Ok(resolved)
}

/// Every event record decodes and names interned NIDs; returns each event's state-before
/// snapshot, for [`check_states_before`].
fn check_events<T: Tables>(
    tx: &T,
    interned: &[HashSet<u64>; 4],
    report: &mut CheckReport,
) -> Result<Vec<(u64, u64)>> {
    let mut befores = Vec::new();
    // Resolution walks the auth DAG newest first, and stops early, only while this holds.
    let ordered = tx
        .open(tables::META)?
        .get(tables::AUTH_ORDER_KEY.as_bytes())?
        .is_some_and(|v| v.value() == 1);
    for row in tx.open(tables::EVENTS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        report.rows += 1;
        let nid = nid.value();
        let record: EventRecord = match codec::decode("events", nid, bytes.value()) {
            Ok(r) => r,
            Err(e) => {
                report.problem("events", nid, e);
                continue;
            }
        };
        let mut refs = vec![
            (intern::EVENT, nid),
            (intern::ROOM, record.room.get()),
            (intern::TYPE, record.event_type.get()),
        ];
        refs.extend(record.state_key.map(|k| (intern::STATE_KEY, k.get())));
        refs.extend(
            record
                .prev_events
                .iter()
                .chain(&record.auth_events)
                .map(|e| (intern::EVENT, e.get())),
        );
        for (kind, n) in refs {
            if !interned[kind.index].contains(&n) {
                report.problem("events", nid, format!("unknown {} NID {n}", kind.nid));
            }
        }
        if let Some(newer) = record.auth_events.iter().find(|a| a.get() >= nid)
            && ordered
        {
            let what = format!("auth event {newer} is not older, but meta says auth events are");
            report.problem("events", nid, what);
        }
        befores.push((nid, record.state_before.get()));
    }
    Ok(befores)
}

/// Each event's state before it is a snapshot whose chain resolves. `report` holds the events'
/// other problems; it comes out in event order, as one walk would have found them.
fn check_states_before(
    befores: &[(u64, u64)],
    snapshots: &HashSet<u64>,
    tally: &mut RefTally,
    report: &mut CheckReport,
) {
    for &(nid, before) in befores {
        tally.snapshot(before);
        if !snapshots.contains(&before) {
            report.problem(
                "events",
                nid,
                format!("state before is missing or broken snapshot {before}"),
            );
        }
    }
    // Stable, so an event's own problems keep their order.
    report
        .problems
        .sort_by_key(|p| p.key.parse::<u64>().unwrap_or(u64::MAX));
}

fn check_rooms<T: Tables>(
    tx: &T,
    interned: &[HashSet<u64>; 4],
    snapshots: &HashSet<u64>,
    tally: &mut RefTally,
    report: &mut CheckReport,
) -> Result<()> {
    let events = tx.open(tables::EVENTS)?;
    for row in tx.open(tables::ROOMS)?.range::<u64>(..)? {
        let (nid, bytes) = row?;
        report.rows += 1;
        let nid = nid.value();
        let record: RoomRecord = match codec::decode("rooms", nid, bytes.value()) {
            Ok(r) => r,
            Err(e) => {
                report.problem("rooms", nid, e);
                continue;
            }
        };
        if !interned[intern::ROOM.index].contains(&nid) {
            report.problem("rooms", nid, "room NID is not interned");
        }
        tally.snapshot(record.current_state.get());
        if !snapshots.contains(&record.current_state.get()) {
            report.problem(
                "rooms",
                nid,
                format!(
                    "current state is missing or broken snapshot {}",
                    record.current_state
                ),
            );
        }
        for e in &record.latest_events {
            if events.get(e.get())?.is_none() {
                report.problem(
                    "rooms",
                    nid,
                    format!("forward extremity {e} has no event record"),
                );
            }
        }
        if let [only] = record.latest_events.as_slice()
            && snapshots.contains(&record.current_state.get())
            && let Some(mismatch) =
                current_state_mismatch(tx, &events, record.current_state, *only)?
        {
            report.problem("rooms", nid, mismatch);
        }
    }
    Ok(())
}

/// Stored counts equal the references the walk found; a count of zero is listed as
/// unreferenced, and nothing else is.
fn check_refs<T: Tables>(tx: &T, tally: &RefTally, report: &mut CheckReport) -> Result<()> {
    let snapshots = Counted {
        refs: "snapshot_refs",
        unreferenced: "unreferenced_snapshots",
        what: "snapshot",
    };
    snapshots.check(
        &tx.open(tables::SNAPSHOT_REFS)?,
        &tx.open(tables::UNREFERENCED_SNAPSHOTS)?,
        &tally.snapshots,
        |nid| nid,
        report,
    )?;
    let blocks = Counted {
        refs: "block_refs",
        unreferenced: "unreferenced_blocks",
        what: "block",
    };
    blocks.check(
        &tx.open(tables::BLOCK_REFS)?,
        &tx.open(tables::UNREFERENCED_BLOCKS)?,
        &tally.blocks,
        BlockHash,
        report,
    )
}

/// One kind of counted row, by its tables' names.
struct Counted {
    refs: &'static str,
    unreferenced: &'static str,
    what: &'static str,
}

impl Counted {
    fn check<K: CountKey + std::hash::Hash + Ord, D: fmt::Display>(
        &self,
        refs: &impl ReadableTable<K, u64>,
        unreferenced: &impl ReadableTable<K, ()>,
        counted: &HashMap<K, u64>,
        show: impl Fn(K) -> D,
        report: &mut CheckReport,
    ) -> Result<()> {
        // In key order: a report reads the same every time, and the lookups walk the table.
        let mut counted_keys: Vec<(K, u64)> = counted.iter().map(|(&k, &n)| (k, n)).collect();
        counted_keys.sort_unstable_by_key(|&(k, _)| k);
        for (key, expected) in counted_keys {
            let stored = refs.get(key)?.map_or(0, |v| v.value());
            let listed = unreferenced.get(key)?.is_some();
            count_problem(self.refs, show(key), expected, stored, listed, report);
        }
        for row in refs.range::<K>(..)? {
            let key = row?.0.value();
            report.rows += 1;
            if !counted.contains_key(&key) {
                let what = format!("counts a {} that is not stored", self.what);
                report.problem(self.refs, show(key), what);
            }
        }
        for row in unreferenced.range::<K>(..)? {
            let key = row?.0.value();
            report.rows += 1;
            if !counted.contains_key(&key) {
                let what = format!("lists a {} that is not stored", self.what);
                report.problem(self.unreferenced, show(key), what);
            }
        }
        Ok(())
    }
}

fn count_problem(
    table: &'static str,
    key: impl fmt::Display,
    expected: u64,
    stored: u64,
    listed_unreferenced: bool,
    report: &mut CheckReport,
) {
    if stored != expected {
        report.problem(
            table,
            key,
            format!("count is {stored}, but {expected} references exist"),
        );
    } else if (expected == 0) != listed_unreferenced {
        let what = if expected == 0 {
            "unreferenced but not listed for collection"
        } else {
            "listed for collection but still referenced"
        };
        report.problem(table, key, what);
    }
}

/// With one forward extremity, the current state must be the state after it. (With several,
/// it is their resolved combination, which only the resolver can recompute.)
fn current_state_mismatch<T: Tables>(
    tx: &T,
    // Open already: a write transaction lends each table out once.
    events: &impl ReadableTable<u64, &'static [u8]>,
    current: crate::nid::SnapshotNid,
    extremity: crate::nid::EventNid,
) -> Result<Option<String>> {
    let Some(bytes) = events.get(extremity.get())? else {
        return Ok(None);
    };
    let Ok(record) = codec::decode::<EventRecord>("events", extremity, bytes.value()) else {
        return Ok(None);
    };
    let blocks = tx.open(tables::BLOCKS)?;
    let snapshots = tx.open(tables::SNAPSHOTS)?;
    let flatten = |s| -> Result<crate::engine::resolve::StateMap> {
        crate::engine::resolve::flatten(&crate::engine::load(&blocks, None, &snapshots, s)?.runs()?)
    };
    let (Ok(before), Ok(now)) = (flatten(record.state_before), flatten(current)) else {
        // A snapshot that does not read back was reported with its own row.
        return Ok(None);
    };
    let mut expected = before.into_vec();
    if let Some(key) = record.sets() {
        expected.push(crate::engine::block::StateEntry {
            key,
            event: extremity,
        });
    }
    let expected = crate::engine::resolve::StateMap::from_entries(expected);
    Ok((expected != now).then(|| {
        let d = crate::engine::resolve::diff_maps(&expected, &now);
        format!(
            "current state differs from the state after its one forward extremity {extremity}: \
             {} added, {} removed, {} changed",
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        )
    }))
}
