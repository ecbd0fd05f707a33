//! The read-only subcommands: state, states, diff, members, rooms, event, stats.

use crate::failure::{CliResult, Failure};
use crate::names::{Named, Names, event_nid, event_with_state, room_nid};
use roomstate::{EventNid, Membership, ReadTxn, SnapshotNid, StateMap, StoreRead};
use serde_json::{Value, json};
use std::io::Write;

fn entry_json(n: &Named) -> Value {
    json!({"type": n.event_type, "state_key": n.state_key, "event_id": n.event_id})
}

fn print_state(rx: &ReadTxn, state: &StateMap, out: &mut impl Write) -> CliResult {
    let named = Names::default().state(rx, state)?;
    let list: Vec<Value> = named.iter().map(entry_json).collect();
    serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub fn state_of_event(rx: &ReadTxn, id: &str, after: bool, out: &mut impl Write) -> CliResult {
    let event = event_with_state(rx, id)?;
    let state = if after {
        rx.state_after(event)?
    } else {
        rx.state_before(event)?
    };
    print_state(rx, &state, out)
}

pub fn state_of_room(rx: &ReadTxn, id: &str, out: &mut impl Write) -> CliResult {
    let room = room_nid(rx, id)?;
    let record = rx
        .room(room)?
        .ok_or_else(|| Failure::User(format!("room {id} has no events")))?;
    print_state(rx, &rx.flatten(record.current_state)?, out)
}

/// One line per event. Consecutive events often share a snapshot (every message does), so the
/// rendered state of the last snapshot is reused.
pub fn states(rx: &ReadTxn, id: &str, out: &mut impl Write) -> CliResult {
    let room = room_nid(rx, id)?;
    let mut names = Names::default();
    // Outliers first: they have no state, and no place in the timeline.
    for event in rx.outliers(room)? {
        let event_id =
            serde_json::to_string(&names.event_id(rx, event)?).map_err(std::io::Error::from)?;
        writeln!(
            out,
            "{{\"event_id\":{event_id},{}}}",
            outcome_fields(rx, event)?
        )?;
    }
    let mut last: Option<(SnapshotNid, String)> = None;
    for event in rx.room_events(room)? {
        let before = rx.expect_event(event)?.state_before;
        let rendered = match &last {
            Some((snap, text)) if *snap == before => text.clone(),
            _ => {
                let named = names.state(rx, &rx.flatten(before)?)?;
                let rows: Vec<[&str; 3]> = named
                    .iter()
                    .map(|n| [&*n.event_type, &*n.state_key, &*n.event_id])
                    .collect();
                let text = serde_json::to_string(&rows).map_err(std::io::Error::from)?;
                last = Some((before, text.clone()));
                text
            }
        };
        let event_id =
            serde_json::to_string(&names.event_id(rx, event)?).map_err(std::io::Error::from)?;
        let outcome = outcome_fields(rx, event)?;
        writeln!(
            out,
            "{{\"event_id\":{event_id},{outcome},\"state_before\":{rendered}}}"
        )?;
    }
    Ok(())
}

pub fn diff(rx: &ReadTxn, a: &str, b: &str, out: &mut impl Write) -> CliResult {
    let before = |id| -> CliResult<SnapshotNid> {
        Ok(rx.expect_event(event_with_state(rx, id)?)?.state_before)
    };
    let d = rx.diff(before(a)?, before(b)?)?;
    let mut names = Names::default();
    let mut list = |entries: &[roomstate::StateEntry]| -> CliResult<Vec<Value>> {
        let mut named = entries
            .iter()
            .map(|e| names.entry(rx, e))
            .collect::<CliResult<Vec<_>>>()?;
        named.sort();
        Ok(named.iter().map(entry_json).collect())
    };
    let added = list(&d.added)?;
    let removed = list(&d.removed)?;
    let mut changed = Vec::new();
    for c in &d.changed {
        changed.push((
            names.event_type(rx, c.key.ty)?,
            names.state_key(rx, c.key.key)?,
            names.event_id(rx, c.old)?,
            names.event_id(rx, c.new)?,
        ));
    }
    changed.sort();
    let changed: Vec<Value> = changed
        .into_iter()
        .map(|(t, k, old, new)| json!({"type": t, "state_key": k, "old_event_id": old, "new_event_id": new}))
        .collect();
    let doc = json!({"added": added, "removed": removed, "changed": changed});
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub fn members(
    rx: &ReadTxn,
    id: &str,
    only: Option<Membership>,
    out: &mut impl Write,
) -> CliResult {
    let room = room_nid(rx, id)?;
    let mut list = Vec::new();
    for (user, membership) in rx.members(room, only)? {
        list.push((rx.state_key(user)?, membership));
    }
    list.sort();
    let list: Vec<Value> = list
        .into_iter()
        .map(|(user, m)| json!({"user_id": user, "membership": m.as_str()}))
        .collect();
    serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub fn rooms(rx: &ReadTxn, user: &str, out: &mut impl Write) -> CliResult {
    let mut list = Vec::new();
    if let Some(nid) = rx.state_key_nid(user)? {
        for room in rx.rooms_of_user(nid)? {
            list.push(rx.room_id(room)?);
        }
    }
    list.sort();
    serde_json::to_writer_pretty(&mut *out, &list).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// `"outcome":…` and, for a rejected or soft-failed event, `"reason":…`, as JSON members.
fn outcome_fields(rx: &ReadTxn, event: EventNid) -> CliResult<String> {
    let outcome = rx
        .event_outcome(event)?
        .ok_or(roomstate::Error::UnknownEvent(event))?;
    let name = match &outcome {
        roomstate::EventOutcome::Accepted if rx.is_outlier(event)? => "outlier",
        other => other.name(),
    };
    let mut fields = format!("\"outcome\":\"{name}\"");
    if let Some(why) = outcome.rejection() {
        let reason = serde_json::to_string(&why.to_string()).map_err(std::io::Error::from)?;
        fields.push_str(&format!(",\"reason\":{reason}"));
    }
    Ok(fields)
}

/// An event's JSON as ingested, or with `outcome`, what became of it.
pub fn event(rx: &ReadTxn, id: &str, outcome: bool, out: &mut impl Write) -> CliResult {
    let nid = event_nid(rx, id)?;
    if outcome {
        let event_id = serde_json::to_string(id).map_err(std::io::Error::from)?;
        writeln!(
            out,
            "{{\"event_id\":{event_id},{}}}",
            outcome_fields(rx, nid)?
        )?;
        return Ok(());
    }
    let json = rx
        .event_json(nid)?
        .ok_or_else(|| Failure::User(format!("no JSON stored for event {id}")))?;
    writeln!(out, "{json}")?;
    Ok(())
}

pub fn stats(rx: &ReadTxn, as_json: bool, out: &mut impl Write) -> CliResult {
    let s = rx.stats()?;
    let per = |bytes: u64, n: u64| if n == 0 { 0.0 } else { bytes as f64 / n as f64 };
    let total_bytes: u64 = s
        .tables
        .iter()
        .map(|t| t.stored_bytes + t.metadata_bytes)
        .sum();
    if as_json {
        let tables: Vec<Value> = s
            .tables
            .iter()
            .map(|t| {
                json!({"table": t.name, "rows": t.rows, "stored_bytes": t.stored_bytes,
                       "metadata_bytes": t.metadata_bytes, "fragmented_bytes": t.fragmented_bytes})
            })
            .collect();
        let doc = json!({
            "tables": tables,
            "events": s.events,
            "state_events": s.state_events,
            "stored_entries": s.stored_entries,
            "snapshot_entries": s.snapshot_entries,
            "event_entries": s.event_entries,
            "state_bytes": s.state_bytes(),
            "table_bytes": total_bytes,
            "bytes_per_event": per(total_bytes, s.events),
            "bytes_per_state_event": per(total_bytes, s.state_events),
            "state_bytes_per_state_event": per(s.state_bytes(), s.state_events),
        });
        serde_json::to_writer_pretty(&mut *out, &doc).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<18} {:>12} {:>14} {:>14}",
        "table", "rows", "stored bytes", "meta bytes"
    )?;
    for t in &s.tables {
        writeln!(
            out,
            "{:<18} {:>12} {:>14} {:>14}",
            t.name, t.rows, t.stored_bytes, t.metadata_bytes
        )?;
    }
    writeln!(out)?;
    writeln!(out, "events                     {}", s.events)?;
    writeln!(out, "state events               {}", s.state_events)?;
    writeln!(out, "entries stored in blocks   {}", s.stored_entries)?;
    writeln!(
        out,
        "entries of all snapshots   {} ({:.1}x deduplicated)",
        s.snapshot_entries,
        per(s.snapshot_entries, s.stored_entries)
    )?;
    writeln!(
        out,
        "entries of a copy per event {} ({:.1}x)",
        s.event_entries,
        per(s.event_entries, s.stored_entries)
    )?;
    writeln!(
        out,
        "table bytes per event       {:.1}",
        per(total_bytes, s.events)
    )?;
    writeln!(
        out,
        "auth index bytes per event  {:.1}",
        per(s.auth_index_bytes(), s.events)
    )?;
    writeln!(
        out,
        "table bytes per state event {:.1}",
        per(total_bytes, s.state_events)
    )?;
    writeln!(
        out,
        "state bytes per state event {:.1}",
        per(s.state_bytes(), s.state_events)
    )?;
    Ok(())
}

/// What redb's page checksums said, as a problem line; `None` when the file was sound.
pub fn page_damage(verified: roomstate::Result<bool>) -> Option<String> {
    match verified {
        Ok(true) => None,
        Ok(false) => Some(
            "redb's page checksums found damage: the file was repaired, back to its last intact \
             commit"
                .to_owned(),
        ),
        Err(e) => Some(format!("redb's page checksums found damage: {e}")),
    }
}

pub fn check(rx: &ReadTxn, pages: Option<String>, out: &mut impl Write) -> CliResult {
    let report = rx.check()?;
    let mut problems: Vec<String> = pages.into_iter().collect();
    problems.extend(report.problems.iter().map(ToString::to_string));
    for p in &problems {
        writeln!(out, "{p}")?;
    }
    writeln!(
        out,
        "checked {} rows: {} problem(s)",
        report.rows,
        problems.len()
    )?;
    if problems.is_empty() {
        Ok(())
    } else {
        out.flush()?;
        Err(Failure::Store(format!(
            "the store has {} problem(s)",
            problems.len()
        )))
    }
}
