//! Crash safety: ingest in a child process killed with SIGKILL at random moments. After every
//! kill the store must open, pass the integrity walk, hold every batch the child reported
//! committed with the states a clean ingest computes, and hold nothing of a batch that did not
//! commit.
//!
//! The child is this test binary run again with `CRASH_CHILD` set: it resumes ingest where
//! the store left off and prints `committed N` once the first N lines are durably stored.

mod common;

use common::Rng;
use roomstate::ingest::{IngestOptions, Ingester, OnBadLine, TrivialMerge};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{EventNid, StateMap, Store, StoreRead};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BATCH: usize = 25;
const KILLS: usize = 60;

fn history() -> Vec<String> {
    let config = GenConfig {
        workload: Workload::Hq,
        seed: 41,
        members: 120,
        state_events: 500,
        messages_per_state: 2,
        room_version: Default::default(),
    };
    Generator::new(config).map(|e| e.to_json_line()).collect()
}

fn options() -> IngestOptions {
    IngestOptions {
        batch_size: BATCH,
        on_bad_line: OnBadLine::Stop,
        durable_batches: true,
        ..IngestOptions::default()
    }
}

fn stored_events(store: &Store) -> u64 {
    store.read().unwrap().stats().unwrap().events
}

/// The child's side: not a test of its own unless `CRASH_CHILD` names a store.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var("CRASH_CHILD") else {
        return;
    };
    let store = Store::open(&path).unwrap();
    let skip = stored_events(&store) as usize;
    let rest = history()[skip..].join("\n");
    let mut ingester = Ingester::new(&store, options(), TrivialMerge);
    ingester
        .read_from_with(rest.as_bytes(), |r| {
            println!("committed {}", skip as u64 + r.lines);
        })
        .unwrap();
    let report = ingester.finish().unwrap();
    println!("committed {}", skip as u64 + report.lines);
}

/// The state before every event, from a clean ingest in memory.
fn reference(lines: &[String]) -> (HashMap<String, StateMap>, Vec<String>) {
    let store = Store::in_memory().unwrap();
    roomstate::ingest::ingest(&store, lines.join("\n").as_bytes(), options(), TrivialMerge)
        .unwrap();
    let rx = store.read().unwrap();
    let ids: Vec<String> = lines.iter().map(|l| event_id(l)).collect();
    let states = ids
        .iter()
        .map(|id| {
            let nid = rx.event_nid(id).unwrap().unwrap();
            (id.clone(), rx.state_before(nid).unwrap())
        })
        .collect();
    (states, ids)
}

fn event_id(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["event_id"].as_str().unwrap().to_owned()
}

/// Runs the child, killing it after `delay` unless it finished first. Returns the last
/// committed count it printed and whether it was killed.
fn run_child(path: &Path, delay: Duration) -> (u64, bool) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env("CRASH_CHILD", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < delay {
        std::thread::sleep(Duration::from_micros(200));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        child.kill().unwrap();
    }
    let status = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(killed || status.success(), "child failed: {status}\n{out}");
    let committed = out
        .lines()
        .filter_map(|l| l.strip_prefix("committed "))
        .filter_map(|n| n.parse().ok())
        .next_back()
        .unwrap_or(0);
    (committed, killed)
}

/// The store after a kill: opens, is clean, and holds exactly a whole-batch prefix of the
/// history that includes every batch the child reported.
fn verify(path: &Path, reported: u64, ids: &[String], states: &HashMap<String, StateMap>) -> u64 {
    let store = Store::open(path).unwrap_or_else(|e| panic!("the store does not open: {e}"));
    let rx = store.read().unwrap();
    let check = rx.check().unwrap();
    assert!(check.is_clean(), "after a kill: {:?}", check.problems);
    let stored = rx.stats().unwrap().events;
    assert!(
        stored >= reported,
        "{reported} lines reported committed, {stored} stored"
    );
    let total = ids.len() as u64;
    assert!(
        stored == total || stored.is_multiple_of(BATCH as u64) || stored == reported,
        "{stored} events stored: not a whole number of batches"
    );
    for (i, id) in ids.iter().enumerate() {
        let nid: Option<EventNid> = rx.event_nid(id).unwrap();
        if (i as u64) < stored {
            let nid = nid.unwrap_or_else(|| panic!("committed event {id} (line {i}) is missing"));
            assert_eq!(
                &rx.state_before(nid).unwrap(),
                &states[id],
                "state before {id}"
            );
        } else {
            assert!(
                nid.is_none(),
                "event {id} of an uncommitted batch is present"
            );
        }
    }
    stored
}

#[test]
fn sigkill_at_random_moments_loses_only_uncommitted_batches() {
    if std::env::var("CRASH_CHILD").is_ok() {
        return;
    }
    let lines = history();
    let (states, ids) = reference(&lines);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    // One uninterrupted run, to learn how long a whole ingest takes here.
    let path = dir.path().join("calibrate.redb");
    let started = Instant::now();
    let (committed, killed) = run_child(&path, Duration::from_secs(600));
    let whole = started.elapsed();
    assert!(!killed);
    assert_eq!(verify(&path, committed, &ids, &states), ids.len() as u64);

    let deadline = Instant::now() + Duration::from_secs(240);
    let (mut kills, mut stores) = (0, 0);
    let mut path = dir.path().join("s0.redb");
    while kills < KILLS {
        assert!(
            Instant::now() < deadline,
            "only {kills} kills in the time allowed"
        );
        // Anywhere from before the store opens to the end of the ingest.
        let delay = whole.mul_f64(rng.below(1000) as f64 / 2000.0);
        let (reported, killed) = run_child(&path, delay);
        kills += usize::from(killed);
        let stored = verify(&path, reported, &ids, &states);
        if stored == ids.len() as u64 {
            stores += 1;
            path = dir.path().join(format!("s{stores}.redb"));
        }
    }
    eprintln!(
        "{kills} kills survived across {} stores (a whole ingest takes {whole:?})",
        stores + 1
    );
}
