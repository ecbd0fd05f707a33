//! `check` of the auth-chain index, while meta says it is complete: every row agrees with its
//! mirror and with the event records, and every auth event of an indexed event is reached.
//! A write transaction lends a table out once at a time: the row checks open the tables, and
//! close them before the index opens them again to ask what each event reaches.

use crate::error::Result;
use crate::nid::EventNid;
use crate::store::Tables;
use crate::store::auth_index::{
    AUTH_CHAINS, AUTH_INDEX_KEY, AUTH_LINKS, AUTH_LINKS_INTO, AUTH_POSITIONS, IndexRead, Position,
    ReadIndex, position, reach,
};
use crate::store::check::CheckReport;
use crate::store::codec;
use crate::store::record::EventRecord;
use crate::store::tables;
use redb::ReadableTable;

/// The index's tables and the events', open for one check.
struct Open<P, C, L, I, E> {
    positions: P,
    chains: C,
    links: L,
    links_into: I,
    events: E,
}

pub(crate) fn check_auth_index<T: Tables>(tx: &T, report: &mut CheckReport) -> Result<()> {
    let complete = tx
        .open(tables::META)?
        .get(AUTH_INDEX_KEY.as_bytes())?
        .is_some_and(|v| v.value() == 1);
    if !complete {
        return Ok(());
    }
    let open = Open {
        positions: tx.open(AUTH_POSITIONS)?,
        chains: tx.open(AUTH_CHAINS)?,
        links: tx.open(AUTH_LINKS)?,
        links_into: tx.open(AUTH_LINKS_INTO)?,
        events: tx.open(tables::EVENTS)?,
    };
    open.check_positions(report)?;
    open.check_chains(report)?;
    open.check_links(report)?;
    // A write transaction opens a table once at a time: the index opens them again.
    drop(open);
    match ReadIndex::open(tx)? {
        Some(mut index) => check_events(&mut index, report),
        None => Ok(()),
    }
}

/// Records read at a time by [`check_events`], which asks the index between reads.
const RECORDS_AT_ONCE: usize = 1024;

/// Every state event is indexed, and every auth event of every event is reached: on the event's
/// own chain below it, or through links from its chain at or below it, followed as far as they
/// go.
fn check_events<T: Tables>(index: &mut ReadIndex<'_, T>, report: &mut CheckReport) -> Result<()> {
    let mut records = Vec::with_capacity(RECORDS_AT_ONCE);
    let mut after = 0;
    loop {
        records.clear();
        let Some(last) = index.records_after(after, RECORDS_AT_ONCE, &mut records)? else {
            return Ok(());
        };
        // A damaged B-tree can hand back keys out of order: the walk must still move on.
        if last <= after {
            report.problem("events", last, format!("read after event {after}"));
            return Ok(());
        }
        after = last;
        for (event, record) in &records {
            check_event(index, *event, record, report)?;
        }
    }
}

fn check_event(
    index: &mut dyn IndexRead,
    event: EventNid,
    record: &EventRecord,
    report: &mut CheckReport,
) -> Result<()> {
    let nid = event.get();
    let own = index.position(event).ok().flatten();
    if own.is_none() && record.state_key.is_some() {
        report.problem("auth_positions", nid, "a state event has no position");
    }
    // Read once per event, when an auth event first needs them: the links from its chain, and
    // then, when none of them covers an auth event, everything the event reaches.
    let (mut links, mut reached) = (None, None);
    for a in &record.auth_events {
        let Some(target) = index.position(*a).ok().flatten() else {
            report.problem("auth_positions", nid, format!("auth event {a} has none"));
            continue;
        };
        let Some(own) = own else { continue };
        if own.chain() == target.chain() && target.seq() < own.seq() {
            continue;
        }
        if links.is_none() {
            let mut targets = Vec::new();
            index.links_from(own.chain(), 1, own.seq(), &mut targets)?;
            links = Some(targets);
        }
        let linked = links
            .iter()
            .flatten()
            .any(|t| t.chain() == target.chain() && t.seq() >= target.seq());
        if !linked && reached.is_none() {
            reached = Some(reach(index, [own], [])?);
        }
        let upto = reached.as_ref().map_or(0, |r| r.upto(target.chain()));
        if !linked && upto < target.seq() {
            report.problem("auth_links", nid, format!("auth event {a} is not reached"));
        }
    }
    Ok(())
}

impl<P, C, L, I, E> Open<P, C, L, I, E>
where
    P: ReadableTable<u64, u64>,
    C: ReadableTable<u64, u64>,
    L: ReadableTable<(u64, u64), ()>,
    I: ReadableTable<(u64, u64), ()>,
    E: ReadableTable<u64, &'static [u8]>,
{
    /// A stored event's record: `None` when not stored, and an error inside when it does not
    /// decode (which the walk over events reports; here the row is skipped).
    fn record(&self, event: EventNid) -> Result<Option<Result<EventRecord>>> {
        let row = self.events.get(event.get())?;
        Ok(row.map(|v| codec::decode::<EventRecord>("events", event, v.value())))
    }

    fn event_at(&self, at: u64) -> Result<Option<EventNid>> {
        Ok(self.chains.get(at)?.and_then(|v| EventNid::new(v.value())))
    }

    /// Each position row has its mirror.
    fn check_positions(&self, report: &mut CheckReport) -> Result<()> {
        for row in self.positions.range::<u64>(..)? {
            let (event, at) = row?;
            report.rows += 1;
            let (event, at) = (event.value(), at.value());
            if self.event_at(at)?.map(EventNid::get) != Some(event) {
                report.problem("auth_positions", event, format!("no chain row {at} back"));
            }
        }
        Ok(())
    }

    /// Each chain row names a stored state event with its position, which (after a chain's
    /// first) follows an auth event of the same type, state key and room.
    fn check_chains(&self, report: &mut CheckReport) -> Result<()> {
        for row in self.chains.range::<u64>(..)? {
            let (at, event) = row?;
            report.rows += 1;
            let (raw, event) = (at.value(), event.value());
            let (Ok(at), Some(nid)) = (Position::from_raw(raw), EventNid::new(event)) else {
                report.problem("auth_chains", raw, "not a position and an event");
                continue;
            };
            if position(&self.positions, nid).ok().flatten() != Some(at) {
                report.problem(
                    "auth_chains",
                    raw,
                    format!("event {event} has another position"),
                );
            }
            let record = match self.record(nid)? {
                Some(Ok(record)) => record,
                Some(Err(_)) => continue,
                None => {
                    report.problem("auth_chains", raw, format!("event {event} is not stored"));
                    continue;
                }
            };
            if record.state_key.is_none() {
                report.problem("auth_chains", raw, format!("event {event} is not state"));
            }
            if at.seq() == 1 {
                continue;
            }
            let follows = match self.event_at(raw - 1)? {
                Some(before) => {
                    let same = self.record(before)?.is_some_and(|r| {
                        r.is_ok_and(|r| {
                            r.event_type == record.event_type
                                && r.state_key == record.state_key
                                && r.room == record.room
                        })
                    });
                    same && record.auth_events.contains(&before)
                }
                None => false,
            };
            if !follows {
                let what = "does not follow an auth event of its key and room on its chain";
                report.problem("auth_chains", raw, what);
            }
        }
        Ok(())
    }

    /// Each link has its mirror and joins an event to one of its auth events.
    fn check_links(&self, report: &mut CheckReport) -> Result<()> {
        for row in self.links.range::<(u64, u64)>(..)? {
            let (key, _) = row?;
            report.rows += 1;
            let (origin, target) = key.value();
            let shown = format!("({origin}, {target})");
            if self.links_into.get((target, origin))?.is_none() {
                report.problem("auth_links", &shown, "no mirror in auth_links_into");
            }
            let (Some(o), Some(t)) = (self.event_at(origin)?, self.event_at(target)?) else {
                report.problem("auth_links", &shown, "an end has no event");
                continue;
            };
            match self.record(o)? {
                Some(Ok(r)) if r.auth_events.contains(&t) => {}
                Some(Err(_)) => {}
                _ => report.problem("auth_links", &shown, format!("{t} is no auth event of {o}")),
            }
        }
        for row in self.links_into.range::<(u64, u64)>(..)? {
            let (key, _) = row?;
            report.rows += 1;
            let (target, origin) = key.value();
            if self.links.get((origin, target))?.is_none() {
                let shown = format!("({target}, {origin})");
                report.problem("auth_links_into", shown, "no mirror in auth_links");
            }
        }
        Ok(())
    }
}
