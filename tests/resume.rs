//! Resuming an import killed part-way: the CLI's `ingest` is killed (SIGKILL, a real process
//! kill) at ten points of a real run, and after each kill the same command is run again. Every
//! re-run must complete, and end with the store an uninterrupted run gives: the same `states`
//! output, and a clean `check`.
//!
//! The size, the batch size and the binary can be changed for a longer run, with a release
//! build: `ROOMSTATE_RESUME_STATE_EVENTS=40000 ROOMSTATE_RESUME_BATCH=10000
//! ROOMSTATE_BIN=target/release/roomstate cargo test --release --test resume -- --nocapture`
//! kills a 400,000-event import made with the CLI's default batch size.

mod common;

use common::{Rng, rows};
use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROOM: &str = "!hq:server0.test";
const KILLS: u64 = 10;

fn binary() -> PathBuf {
    std::env::var_os("ROOMSTATE_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_roomstate").into(), Into::into)
}

fn roomstate(db: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command.arg("--db").arg(db).args(args);
    command
}

/// Runs a command to its end; its stdout, which it must succeed to give.
fn run(mut command: Command) -> Vec<u8> {
    let out = command.stderr(Stdio::piped()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?}: {stderr}");
    out.stdout
}

/// `check` passing, every row, and (up to a size) the room's `states` output, hashed as it
/// streams.
fn fingerprint(db: &Path, with_states: bool) -> (u64, u64, usize) {
    run(roomstate(db, &["check"]));
    let rows = rows(db);
    if !with_states {
        return (rows, 0, 0);
    }
    let mut child = roomstate(db, &["states", "--room", ROOM])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut hasher, mut len, mut buf) = (DefaultHasher::new(), 0, vec![0; 1 << 16]);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.write(&buf[..n]);
        len += n;
    }
    assert!(child.wait().unwrap().success());
    (rows, hasher.finish(), len)
}

/// What the re-run's summary says it skipped as already stored.
fn duplicates(summary: &[u8]) -> u64 {
    let summary = String::from_utf8_lossy(summary);
    let line = summary.lines().find(|l| l.starts_with("duplicates"));
    line.and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no duplicates line in {summary}"))
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

#[test]
fn an_import_killed_ten_times_and_rerun_ends_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    let state_events = setting("ROOMSTATE_RESUME_STATE_EVENTS", 800);
    let batch = setting("ROOMSTATE_RESUME_BATCH", 500).to_string();
    let members = (state_events / 2).to_string();
    let history = dir.path().join("history.jsonl");
    let gen_args = ["gen", "hq", "--members", &members, "--state-events"];
    let mut gen_command = Command::new(binary());
    gen_command.args(gen_args).arg(state_events.to_string());
    gen_command.args(["--messages-per-state", "9"]);
    std::fs::write(&history, run(gen_command)).unwrap();
    let history = history.to_str().unwrap();
    let ingest = ["ingest", "--batch-size", &batch, history];

    let whole = dir.path().join("whole.redb");
    let started = Instant::now();
    run(roomstate(&whole, &ingest));
    let uninterrupted = started.elapsed();
    // `states` prints every event's whole state: past 2,000 state events it is too big to read.
    let with_states = state_events <= 2_000;
    let expected = fingerprint(&whole, with_states);

    let mut rng = Rng(0x5e5e);
    let mut skipped = Vec::new();
    for kill in 0..KILLS {
        let db = dir.path().join(format!("killed-{kill}.redb"));
        // One kill in each tenth of the uninterrupted run's time.
        let tenth = uninterrupted.as_micros() as u64 / KILLS;
        let at = Duration::from_micros(tenth * kill + rng.below(tenth));
        let mut child = roomstate(&db, &ingest)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        child.kill().unwrap();
        child.wait().unwrap();
        let summary = run(roomstate(&db, &ingest));
        skipped.push(duplicates(&summary));
        assert_eq!(
            fingerprint(&db, with_states),
            expected,
            "killed after {at:?}, then run again"
        );
        std::fs::remove_file(&db).unwrap();
    }
    eprintln!(
        "{history}: uninterrupted {uninterrupted:?}; {KILLS} kills, re-runs skipped {skipped:?} \
         events already stored, every one ending as the uninterrupted run"
    );
    assert!(
        skipped.iter().filter(|&&n| n > 0).count() >= KILLS as usize / 2,
        "most kills should land after a commit: {skipped:?}"
    );
}
