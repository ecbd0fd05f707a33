//! The subcommands that answer what other servers ask of a room: auth chains, `/state_ids`,
//! the state after a set of events, joined servers, a user's membership at an event.

use crate::failure::CliResult;
use crate::names::{Names, event_nid, event_with_state, room_nid};
use roomstate::matrix::query;
use roomstate::{EventNid, MatrixResolver, ReadTxn, StoreRead};
use serde_json::{Value, json};
use std::io::Write;

fn print(value: &Value, out: &mut impl Write) -> CliResult {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

fn nids(rx: &ReadTxn, ids: &[String]) -> CliResult<Vec<EventNid>> {
    ids.iter().map(|id| event_nid(rx, id)).collect()
}

fn nids_with_state(rx: &ReadTxn, ids: &[String]) -> CliResult<Vec<EventNid>> {
    ids.iter().map(|id| event_with_state(rx, id)).collect()
}

fn names(rx: &ReadTxn, names: &mut Names, nids: &[EventNid]) -> CliResult<Vec<String>> {
    nids.iter().map(|n| names.event_id(rx, *n)).collect()
}

/// The auth chain of events, auth events first (`/event_auth`).
pub fn auth_chain(rx: &ReadTxn, events: &[String], out: &mut impl Write) -> CliResult {
    let chain = query::auth_chain(rx, &nids(rx, events)?)?;
    print(&json!(names(rx, &mut Names::default(), &chain)?), out)
}

/// The state before an event and its auth chain (`/state_ids`).
pub fn state_ids(rx: &ReadTxn, event: &str, out: &mut impl Write) -> CliResult {
    let answer = query::state_ids(rx, event_with_state(rx, event)?)?;
    let mut n = Names::default();
    let doc = json!({
        "pdu_ids": names(rx, &mut n, &answer.pdu_ids)?,
        "auth_chain_ids": names(rx, &mut n, &answer.auth_chain_ids)?,
    });
    print(&doc, out)
}

/// The state after a set of events together, resolved where they disagree.
pub fn state_after(rx: &ReadTxn, events: &[String], out: &mut impl Write) -> CliResult {
    let state = query::state_after_events(
        rx,
        &mut MatrixResolver::default(),
        &nids_with_state(rx, events)?,
    )?;
    let named = Names::default().state(rx, &state)?;
    let list: Vec<Value> = named
        .iter()
        .map(|n| json!({"type": n.event_type, "state_key": n.state_key, "event_id": n.event_id}))
        .collect();
    print(&json!(list), out)
}

/// The servers joined to a room.
pub fn servers(rx: &ReadTxn, room: &str, out: &mut impl Write) -> CliResult {
    print(&json!(rx.joined_servers(room_nid(rx, room)?)?), out)
}

/// A user's membership at an event: before it, or after it.
pub fn membership(
    rx: &ReadTxn,
    user: &str,
    event: &str,
    after: bool,
    out: &mut impl Write,
) -> CliResult {
    let m = query::membership_at(rx, event_with_state(rx, event)?, user, after)?;
    let doc = json!({
        "user_id": user,
        "event_id": event,
        "at": if after { "after" } else { "before" },
        "membership": m.map(|m| m.as_str()),
    });
    print(&doc, out)
}
