//! `roomstate demo`: a synthetic room through the public API, and what the store made of it.

use crate::failure::{CliResult, Failure};
use crate::names::Names;
use crate::workload::{GenConfig, Generator};
use roomstate::ingest::{IngestOptions, Ingester, TrivialMerge};
use roomstate::{StateKey, Store, StoreRead, TypeNid};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the demo writes when no `--db` is given. It is the demo's own file, replaced on each
/// run; a file named with `--db` is never replaced.
const DEMO_DB: &str = "roomstate-demo.redb";

pub fn run(db: Option<&Path>, config: GenConfig) -> CliResult {
    let path = prepare(db)?;
    let store = Store::open(&path)?;
    let has_events = store
        .read()?
        .table_sizes()?
        .iter()
        .any(|t| t.name == "events" && t.rows > 0);
    if has_events {
        return Err(Failure::User(format!(
            "{} already holds events; the demo needs a new store",
            path.display()
        )));
    }
    println!(
        "Generating an `hq`-shaped room: {} members, {} state events, {} messages after each.",
        config.members, config.state_events, config.messages_per_state
    );
    let started = Instant::now();
    let mut ingester = Ingester::new(&store, IngestOptions::default(), TrivialMerge);
    let mut room_id = None;
    for event in Generator::new(config) {
        room_id.get_or_insert_with(|| event.room_id.clone());
        ingester.push_line(event.to_json_line().as_bytes())?;
    }
    let report = ingester.finish()?;
    let seconds = started.elapsed().as_secs_f64();
    let room_id = room_id.ok_or_else(|| Failure::User("the generator made no events".into()))?;
    print_figures(&store, &path, report.events, seconds)?;
    print_room(&store, &room_id)?;
    println!();
    println!("The store is {}. Try:", path.display());
    println!(
        "  roomstate --db {} state --room '{room_id}' | head",
        path.display()
    );
    println!("  roomstate --db {} stats", path.display());
    Ok(())
}

fn prepare(db: Option<&Path>) -> CliResult<PathBuf> {
    match db {
        Some(path) => Ok(path.to_path_buf()),
        None => {
            let path = PathBuf::from(DEMO_DB);
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            Ok(path)
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn print_figures(store: &Store, path: &Path, events: u64, seconds: f64) -> CliResult {
    let stats = store.read()?.stats()?;
    let file_bytes = std::fs::metadata(path)?.len();
    println!();
    println!("events                      {:>12}", stats.events);
    println!("state events                {:>12}", stats.state_events);
    println!(
        "snapshots                   {:>12}",
        stats.rows("snapshots")
    );
    println!("blocks                      {:>12}", stats.rows("blocks"));
    println!("entries stored in blocks    {:>12}", stats.stored_entries);
    println!(
        "entries of a copy per event {:>12}  ({:.0}x what the store keeps)",
        stats.event_entries,
        ratio(stats.event_entries, stats.stored_entries)
    );
    println!("file bytes                  {:>12}", file_bytes);
    println!(
        "file bytes per state event  {:>12.1}",
        ratio(file_bytes, stats.state_events)
    );
    println!(
        "state-table bytes per state event {:>6.1}",
        ratio(stats.state_bytes(), stats.state_events)
    );
    println!(
        "ingest rate                 {:>12.0} events/s",
        events as f64 / seconds.max(1e-9)
    );
    Ok(())
}

fn print_room(store: &Store, room_id: &str) -> CliResult {
    let rx = store.read()?;
    let room = rx
        .room_nid(room_id)?
        .ok_or_else(|| Failure::Store(format!("room {room_id} was not stored")))?;
    let record = rx
        .room(room)?
        .ok_or_else(|| Failure::Store(format!("room {room_id} has no record")))?;
    let current = rx.flatten(record.current_state)?;
    let mut names = Names::default();
    println!();
    println!(
        "Current state of {room_id}: {} entries. The first few:",
        current.len()
    );
    for e in current.iter().take(5) {
        let n = names.entry(&rx, e)?;
        println!("  ({}, {:?}) -> {}", n.event_type, n.state_key, n.event_id);
    }
    let events = rx.room_events(room)?;
    let Some(&old) = events.get(events.len() / 4) else {
        return Ok(());
    };
    let before = rx.expect_event(old)?.state_before;
    let first_member = rx
        .flatten(before)?
        .iter()
        .find(|e| e.key.ty == TypeNid::MEMBER && e.key.key != roomstate::StateKeyNid::EMPTY)
        .map(|e| e.key.key);
    if let Some(user) = first_member {
        let started = Instant::now();
        let found = rx.lookup(before, StateKey::new(TypeNid::MEMBER, user))?;
        let took = started.elapsed();
        let user_id = names.state_key(&rx, user)?;
        let event_id = names.event_id(&rx, old)?;
        let holder = match found {
            Some(e) => names.event_id(&rx, e)?,
            None => "nothing".into(),
        };
        println!();
        println!("Lookup at an old event ({event_id}, a quarter of the way in):");
        println!(
            "  (m.room.member, {user_id}) -> {holder}   [{took:?}, one key, no full state built]"
        );
    }
    Ok(())
}
