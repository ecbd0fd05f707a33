//! What disks and users do to a store, through the CLI: a disk that fills, a read-only file, two
//! writers on one file, and kills during `purge` and `compact`. Each keeps the store's last commit, leaves
//! `check` clean, and gives a clear error. (Kills during `ingest` are `tests/resume.rs`; files
//! that are not stores, `tests/cli.rs` and `tests/store.rs`.)

mod common;

use common::rows;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOM: &str = "!hq:server0.test";

fn roomstate(db: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomstate"));
    command.arg("--db").arg(db).args(args);
    command
}

fn output(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().unwrap()
}

fn succeeds(command: Command) -> String {
    let out = output(command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An `hq` history of about 8,000 events, written to a file.
fn history(dir: &Path) -> PathBuf {
    let path = dir.join("history.jsonl");
    let mut gen_command = Command::new(env!("CARGO_BIN_EXE_roomstate"));
    gen_command.args(["gen", "hq", "--members", "400", "--state-events", "800"]);
    std::fs::write(&path, succeeds(gen_command)).unwrap();
    path
}

fn stored_events(db: &Path) -> u64 {
    let stats = succeeds(roomstate(db, &["stats", "--json"]));
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    stats["events"].as_u64().unwrap()
}

#[test]
fn a_full_disk_keeps_the_last_commit_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(dir.path());
    let history = history.to_str().unwrap();
    let ingest = ["ingest", "--batch-size", "500", history];
    let whole = dir.path().join("whole.redb");
    succeeds(roomstate(&whole, &ingest));
    let full_size = std::fs::metadata(&whole).unwrap().len();

    // A file-size limit at half the store's size stands in for a disk that fills: the write
    // past it fails with EFBIG (SIGXFSZ ignored, as a server would).
    let db = dir.path().join("full.redb");
    let limit_kib = full_size / 2 / 1024;
    let binary = env!("CARGO_BIN_EXE_roomstate");
    let script = format!(
        "trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" --db \"$1\" ingest --batch-size 500 \"$2\""
    );
    let mut limited = Command::new("bash");
    limited.args(["-c", &script, binary, db.to_str().unwrap(), history]);
    let out = output(limited);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("store failure:"), "{stderr}");
    assert!(stderr.contains("File too large"), "{stderr}");
    // What was committed stands, whole batches of it, and the store is sound.
    succeeds(roomstate(&db, &["check"]));
    let kept = stored_events(&db);
    assert!(kept > 0 && kept.is_multiple_of(500), "{kept} events kept");
    // With room again, the same command completes as if nothing had happened.
    succeeds(roomstate(&db, &ingest));
    assert_eq!(rows(&db), rows(&whole));
}

#[test]
fn a_second_writer_fails_at_once_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(dir.path());
    let history = history.to_str().unwrap();
    let db = dir.path().join("s.redb");
    let first = roomstate(&db, &["ingest", "--batch-size", "500", history])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until the first has the file open.
    while !db.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let second = output(roomstate(&db, &["ingest", history]));
    let stderr = String::from_utf8_lossy(&second.stderr);
    // Not the store's failure but the user's situation: exit 1.
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("open in another process"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second writer waited"
    );
    // Readers are refused the same way while the writer holds the file.
    let reader = output(roomstate(&db, &["stats"]));
    assert_eq!(reader.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&reader.stderr).contains("open in another process"));
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    succeeds(roomstate(&db, &["check"]));
}

#[test]
fn a_read_only_file_is_refused_and_left_as_it_was() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let history = history(dir.path());
    let db = dir.path().join("s.redb");
    succeeds(roomstate(&db, &["ingest", history.to_str().unwrap()]));
    let bytes = std::fs::read(&db).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Root writes to any file, so a root test runs the CLI as nobody, from a copy in the
    // temporary directory: the build's own directory may be closed to others.
    let as_root = std::fs::metadata(&db).unwrap().uid() == 0;
    let binary = dir.path().join("roomstate");
    std::fs::copy(env!("CARGO_BIN_EXE_roomstate"), &binary).unwrap();
    for args in [
        &["stats"][..],
        &["ingest", history.to_str().unwrap()],
        &["compact"],
    ] {
        let mut command = Command::new(&binary);
        command.arg("--db").arg(&db).args(args);
        if as_root {
            command.uid(65534).gid(65534);
        }
        let out = output(command);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("s.redb: permission denied"), "{stderr}");
    }
    assert!(std::fs::read(&db).unwrap() == bytes, "the file changed");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    succeeds(roomstate(&db, &["check"]));
    // An empty file, which a store would replace, stays too when it is read-only, even in a
    // directory anyone may write to.
    let empty = dir.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    std::fs::set_permissions(&empty, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut command = Command::new(&binary);
    command
        .arg("--db")
        .arg(&empty)
        .args(["ingest", history.to_str().unwrap()]);
    if as_root {
        command.uid(65534).gid(65534);
    }
    let out = output(command);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("empty.redb: permission denied"), "{stderr}");
    let left = std::fs::metadata(&empty).unwrap();
    assert_eq!(
        (left.len(), left.uid()),
        (0, std::fs::metadata(&db).unwrap().uid())
    );
}

/// Runs `args` on a copy of `template` and kills it after `at`; the copy, and whether the
/// command had finished by then.
fn killed(template: &Path, copy: &Path, args: &[&str], at: Duration) -> bool {
    std::fs::copy(template, copy).unwrap();
    let mut child = roomstate(copy, args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(at);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    child.wait().unwrap();
    finished
}

/// Kills `args` at points of its uninterrupted run, crowded towards the end where the commit
/// is. Each leaves `check` clean and the rows of before or after; the same command again ends
/// with the rows of after. Returns the kills' count that left the rows, or (`by_size`) the file,
/// as before, as after, and that came once the command had finished.
fn kill_at_ten_points(dir: &Path, template: &Path, args: &[&str], by_size: bool) -> [u32; 3] {
    let done = dir.join("done.redb");
    std::fs::copy(template, &done).unwrap();
    let started = Instant::now();
    succeeds(roomstate(&done, args));
    let took = started.elapsed();
    let (before, after) = (rows(template), rows(&done));
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let copy = dir.join("killed.redb");
    let mut tally = [0; 3];
    for percent in [20, 40, 60, 80, 90, 95, 98, 100, 102, 105] {
        let at = took * percent / 100;
        let finished = killed(template, &copy, args, at);
        succeeds(roomstate(&copy, &["check"]));
        let now = rows(&copy);
        assert!(now == before || now == after, "{args:?} killed at {at:?}");
        let changed = if by_size {
            size(&copy) < size(template)
        } else {
            now != before
        };
        tally[if finished { 2 } else { usize::from(changed) }] += 1;
        let again = output(roomstate(&copy, args));
        let stderr = String::from_utf8_lossy(&again.stderr);
        if args[0] == "purge" && now == after {
            assert_eq!(again.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("nothing to purge"), "{stderr}");
        } else {
            assert!(again.status.success(), "{args:?} again: {stderr}");
        }
        assert_eq!(rows(&copy), after, "{args:?} again after a kill at {at:?}");
    }
    eprintln!(
        "{args:?} took {took:?}; kills left {} as before, {} as after, {} had finished",
        tally[0], tally[1], tally[2]
    );
    tally
}

#[test]
fn kills_during_purge_and_compact_leave_one_commit_or_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let history = history(dir.path());
    let template = dir.path().join("template.redb");
    succeeds(roomstate(&template, &["ingest", history.to_str().unwrap()]));
    kill_at_ten_points(dir.path(), &template, &["purge", "--room", ROOM], false);

    // Compact moves pages only when a purge has freed some: another room stays, so there
    // is live data to move.
    let mut forky = Command::new(env!("CARGO_BIN_EXE_roomstate"));
    forky.args(["gen", "forky", "--members", "200", "--state-events", "1500"]);
    let forky_path = dir.path().join("forky.jsonl");
    std::fs::write(&forky_path, succeeds(forky)).unwrap();
    succeeds(roomstate(
        &template,
        &["ingest", forky_path.to_str().unwrap()],
    ));
    succeeds(roomstate(&template, &["purge", "--room", ROOM]));
    kill_at_ten_points(dir.path(), &template, &["compact"], true);
}
