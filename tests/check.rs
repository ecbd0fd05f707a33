//! The integrity walk: clean after real ingest, and naming what was damaged.

use redb::{ReadableTable, TableDefinition};
use roomstate::ingest::{IngestOptions, OnBadLine, TrivialMerge, ingest};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{Store, StoreRead};
use std::path::Path;

mod common;

fn history(workload: Workload) -> String {
    let mut config = GenConfig::new(workload);
    config.members = 40;
    config.state_events = 120;
    config.messages_per_state = 1;
    Generator::new(config)
        .map(|e| e.to_json_line() + "\n")
        .collect()
}

fn ingested(path: &Path) {
    let store = Store::open(path).unwrap();
    let options = IngestOptions {
        batch_size: 50,
        on_bad_line: OnBadLine::Skip,
        ..IngestOptions::default()
    };
    for w in [Workload::Hq, Workload::Forky, Workload::Many] {
        ingest(&store, history(w).as_bytes(), options.clone(), TrivialMerge).unwrap();
    }
}

#[test]
fn a_store_built_by_ingest_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let report = Store::open(&path).unwrap().read().unwrap().check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(report.rows > 1_000);
}

const BLOCKS: TableDefinition<u128, &[u8]> = TableDefinition::new("blocks");
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
const EVENT_IDS_REV: TableDefinition<u64, &[u8]> = TableDefinition::new("event_ids_rev");

#[test]
fn damage_is_reported_with_the_row_it_is_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    // Damage three tables behind the store's back, with redb itself.
    let (block_key, snapshot_key) = {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let block_key;
        let snapshot_key;
        {
            let mut blocks = tx.open_table(BLOCKS).unwrap();
            let (key, mut bytes) = {
                let (k, v) = blocks.first().unwrap().unwrap();
                (k.value(), v.value().to_vec())
            };
            // Swap the first two entries' bytes: unsorted, and no longer its hash. Entries
            // end the block in every layout, each of the same width.
            let entries = roomstate::block::BlockView::parse(&bytes).unwrap().len();
            let width = match bytes[0] {
                1 => 24,
                2 => 12,
                _ => usize::from((bytes[1] & 0x0f) + (bytes[1] >> 4) + bytes[2]),
            };
            let start = bytes.len() - entries * width;
            if entries >= 2 && width > 0 {
                let (a, b) = bytes[start..start + 2 * width].split_at_mut(width);
                a.swap_with_slice(b);
            } else {
                bytes.push(0);
            }
            blocks.insert(key, bytes.as_slice()).unwrap();
            block_key = key;
            let mut snapshots = tx.open_table(SNAPSHOTS).unwrap();
            let last = snapshots.last().unwrap().unwrap().0.value();
            snapshots.remove(last).unwrap();
            snapshot_key = last;
            let mut rev = tx.open_table(EVENT_IDS_REV).unwrap();
            rev.remove(1).unwrap();
        }
        tx.commit().unwrap();
        (block_key, snapshot_key)
    };
    let report = Store::open(&path).unwrap().read().unwrap().check().unwrap();
    assert!(!report.is_clean());
    let tables: Vec<&str> = report.problems.iter().map(|p| p.table).collect();
    let block = format!("{block_key:032x}");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.table == "blocks" && p.key == block),
        "{:?}",
        report.problems
    );
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.table == "snapshot_hashes" && p.what.contains(&snapshot_key.to_string())),
        "{:?}",
        report.problems
    );
    assert!(tables.contains(&"event_keys"), "{tables:?}");
    // Nothing panicked, and the store still opens for reading.
    assert!(Store::open(&path).unwrap().read().is_ok());
}

#[test]
fn the_cli_exits_2_on_a_damaged_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let run = |path: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_roomstate"))
            .arg("--db")
            .arg(path)
            .arg("check")
            .output()
            .unwrap()
    };
    let clean = run(&path);
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(EVENT_IDS_REV).unwrap().remove(2).unwrap();
        tx.commit().unwrap();
    }
    let damaged = run(&path);
    assert_eq!(damaged.status.code(), Some(2));
    let stdout = String::from_utf8_lossy(&damaged.stdout);
    assert!(stdout.contains("event_keys"), "{stdout}");
}

#[test]
fn a_current_state_that_disagrees_with_its_extremity_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let store = Store::open(&path).unwrap();
    let room = store
        .read()
        .unwrap()
        .room_nid("!hq:server0.test")
        .unwrap()
        .unwrap();
    let mut tx = store.write().unwrap();
    let mut record = tx.room(room).unwrap().unwrap();
    assert_eq!(record.latest_events.len(), 1);
    record.current_state = roomstate::SnapshotNid::EMPTY;
    tx.put_room(room, &record).unwrap();
    tx.commit().unwrap();
    let report = store.read().unwrap().check().unwrap();
    assert!(
        report.problems.iter().any(|p| p.table == "rooms"
            && p.key == room.to_string()
            && p.what.contains("current state differs")),
        "{:?}",
        report.problems
    );
}

const SNAPSHOT_REFS: TableDefinition<u64, u64> = TableDefinition::new("snapshot_refs");
const BLOCK_REFS: TableDefinition<u128, u64> = TableDefinition::new("block_refs");

#[test]
fn wrong_reference_counts_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let (snapshot, block) = {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        let keys;
        {
            let mut refs = tx.open_table(SNAPSHOT_REFS).unwrap();
            let (nid, count) = {
                let (k, v) = refs.last().unwrap().unwrap();
                (k.value(), v.value())
            };
            refs.insert(nid, count + 1).unwrap();
            let mut refs = tx.open_table(BLOCK_REFS).unwrap();
            let hash = refs.first().unwrap().unwrap().0.value();
            refs.remove(hash).unwrap();
            keys = (nid, hash);
        }
        tx.commit().unwrap();
        keys
    };
    let report = Store::open(&path).unwrap().read().unwrap().check().unwrap();
    let tables: Vec<(&str, String)> = report
        .problems
        .iter()
        .map(|p| (p.table, p.key.clone()))
        .collect();
    assert_eq!(
        tables,
        vec![
            ("snapshot_refs", snapshot.to_string()),
            ("block_refs", format!("{block:032x}")),
        ],
        "{:?}",
        report.problems
    );
    assert!(report.problems[1].what.starts_with("count is 0, but"));
}

fn cli(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_roomstate"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

/// The `states` of the `hq` and `forky` rooms and of a few of `many`'s, as the CLI prints them.
fn some_states(db: &Path) -> Vec<u8> {
    let mut rooms: Vec<String> = Vec::new();
    for w in [Workload::Hq, Workload::Forky, Workload::Many] {
        let mut config = GenConfig::new(w);
        config.members = 40;
        config.state_events = 120;
        for e in Generator::new(config) {
            if !rooms.contains(&e.room_id) {
                rooms.push(e.room_id);
            }
        }
    }
    let mut out = Vec::new();
    for room in rooms.iter().take(5) {
        out.extend(cli(db, &["states", "--room", room]).stdout);
    }
    out
}

/// Random bytes flipped in a real store, 200 times: `roomstate check` never prints Rust's panic
/// message, and says what it has to say in at most one line of stderr. A panic inside redb is
/// reported by the CLI's hook, in its own words. Damage `check` does not find changes no read.
#[test]
fn damaged_bytes_never_print_a_panic_and_are_found_or_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let original = std::fs::read(&path).unwrap();
    let states = some_states(&path);
    assert!(states.len() > 10_000);
    let mut rng = common::Rng(7);
    let damages: Vec<Vec<usize>> = (0..200)
        .map(|_| {
            (0..1 + rng.below(8))
                .map(|_| {
                    let at = rng.below(original.len() as u64) as usize;
                    at << 3 | rng.below(8) as usize
                })
                .collect()
        })
        .collect();
    // Each trial runs the CLI, which waits on its child: two threads keep both cores busy.
    let outcomes: Vec<(bool, bool)> = std::thread::scope(|scope| {
        let halves: Vec<_> = damages
            .chunks(100)
            .enumerate()
            .map(|(half, chunk)| {
                let (dir, original, states) = (dir.path(), &original, &states);
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, bits)| trial(dir, original, states, half * 100 + i, bits))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let found = outcomes.iter().filter(|(f, _)| *f).count();
    let hooked = outcomes.iter().filter(|(_, h)| *h).count();
    eprintln!("200 damaged stores: {found} found by check, {hooked} met a panic inside redb");
}

/// One damaged copy, `bits` flipped (byte << 3 | bit): whether `check` found it, and whether it
/// met a panic inside redb.
fn trial(dir: &Path, original: &[u8], states: &[u8], trial: usize, bits: &[usize]) -> (bool, bool) {
    let mut bytes = original.to_vec();
    for bit in bits {
        bytes[bit >> 3] ^= 1 << (bit & 7);
    }
    let damaged = dir.join(format!("d{trial}.redb"));
    std::fs::write(&damaged, &bytes).unwrap();
    let out = cli(&damaged, &["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "trial {trial}: {stderr}");
    assert!(stderr.lines().count() <= 1, "trial {trial}: {stderr}");
    let found = match out.status.code() {
        Some(2) => true,
        Some(0) => {
            std::fs::write(&damaged, &bytes).unwrap();
            let got = some_states(&damaged);
            assert!(
                got == states,
                "trial {trial}: check passed, yet states changed"
            );
            false
        }
        _ => panic!("trial {trial}: {stderr}"),
    };
    std::fs::remove_file(&damaged).unwrap();
    (found, stderr.contains("the store is damaged"))
}

/// The meta row that says every stored event's auth events are older than it.
const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");

#[test]
fn the_auth_order_holds_until_a_trusted_import_breaks_it_and_check_holds_meta_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let store = Store::open(&path).unwrap();
    assert!(store.read().unwrap().auth_events_precede().unwrap());
    // A trusted import may name auth events it does not hold: interned after the event.
    let lines = [
        r#"{"event_id":"$c","room_id":"!t:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"content":{"room_version":"10"}}"#,
        r#"{"event_id":"$m","room_id":"!t:x","type":"m.room.member","state_key":"@a:x","sender":"@a:x","prev_events":["$c"],"auth_events":["$c","$later"],"content":{"membership":"join"}}"#,
    ];
    let trusted = IngestOptions {
        trust: true,
        ..IngestOptions::default()
    };
    let report = ingest(&store, lines.join("\n").as_bytes(), trusted, TrivialMerge).unwrap();
    assert_eq!(report.events, 2);
    let rx = store.read().unwrap();
    assert!(!rx.auth_events_precede().unwrap());
    assert!(rx.check().unwrap().is_clean());
    let member = rx.event_nid("$m").unwrap().unwrap();
    drop((rx, store));
    // Claimed again, it is false: check names the event.
    let db = redb::Database::open(&path).unwrap();
    let tx = db.begin_write().unwrap();
    tx.open_table(META)
        .unwrap()
        .insert(b"auth_events_precede".as_slice(), 1)
        .unwrap();
    tx.commit().unwrap();
    drop(db);
    let report = Store::open(&path).unwrap().read().unwrap().check().unwrap();
    let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("events {member}: auth event "))
            && problems[0].ends_with("is not older, but meta says auth events are"),
        "{problems:?}"
    );
}

const AUTH_POSITIONS: TableDefinition<u64, u64> = TableDefinition::new("auth_positions");
const AUTH_CHAINS: TableDefinition<u64, u64> = TableDefinition::new("auth_chains");
const AUTH_LINKS: TableDefinition<(u64, u64), ()> = TableDefinition::new("auth_links");
const AUTH_LINKS_INTO: TableDefinition<(u64, u64), ()> = TableDefinition::new("auth_links_into");

/// One damage to the auth-chain index, done with redb itself.
type IndexDamage = fn(&redb::WriteTransaction);

/// Each way of damaging the auth-chain index is reported against the table it is in, and the
/// rest of the store still reads.
#[test]
fn damage_to_the_auth_chain_index_is_reported_in_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    ingested(&path);
    let damages: [(&str, &str, IndexDamage); 5] = [
        ("a position row removed", "auth_positions", |tx| {
            let mut t = tx.open_table(AUTH_POSITIONS).unwrap();
            t.pop_last().unwrap().unwrap();
        }),
        ("a chain row naming another event", "auth_chains", |tx| {
            let mut t = tx.open_table(AUTH_CHAINS).unwrap();
            let (at, event) = t
                .last()
                .unwrap()
                .map(|(k, v)| (k.value(), v.value()))
                .unwrap();
            t.insert(at, event + 1).unwrap();
        }),
        ("a link without its mirror", "auth_links", |tx| {
            let mut into = tx.open_table(AUTH_LINKS_INTO).unwrap();
            into.pop_first().unwrap().unwrap();
        }),
        ("a mirror without its link", "auth_links_into", |tx| {
            let mut links = tx.open_table(AUTH_LINKS).unwrap();
            links.pop_last().unwrap().unwrap();
        }),
        ("a link to no event", "auth_links", |tx| {
            let far = (1u64 << 60) | 1;
            let (origin, _) = {
                let links = tx.open_table(AUTH_LINKS).unwrap();
                links.first().unwrap().unwrap().0.value()
            };
            tx.open_table(AUTH_LINKS)
                .unwrap()
                .insert((origin, far), ())
                .unwrap();
            tx.open_table(AUTH_LINKS_INTO)
                .unwrap()
                .insert((far, origin), ())
                .unwrap();
        }),
    ];
    for (what, table, damage) in damages {
        let copy = dir.path().join("damaged.redb");
        std::fs::copy(&path, &copy).unwrap();
        {
            let db = redb::Database::open(&copy).unwrap();
            let tx = db.begin_write().unwrap();
            damage(&tx);
            tx.commit().unwrap();
        }
        let store = Store::open(&copy).unwrap();
        let rx = store.read().unwrap();
        let report = rx.check().unwrap();
        assert!(
            report.problems.iter().any(|p| p.table == table),
            "{what}: {:?}",
            report.problems
        );
        let room = rx.room_nid("!hq:server0.test").unwrap().unwrap();
        assert!(rx.room(room).unwrap().is_some(), "{what}");
    }
}
