//! What storing outliers costs against the least any redb store could do. The same events of a
//! generated `hq` room are stored twice in new files on the same disk, each in one write
//! transaction:
//! - **store**: as outliers through [`RoomServer`], authorized, as a join stores its answer;
//! - **floor**: three bare redb rows each and nothing else: the event ID to a number, the
//!   number to a record of the size `events` rows have, and to a JSON row of the size
//!   `event_json` rows have (30 and 200 bytes, `roomstate stats` on an `hq` store).
//!
//! `cargo bench --bench floor` prints criterion's figures, then the median store/floor ratio of
//! interleaved runs (the machine is shared, so only same-run ratios mean anything).

use criterion::{Criterion, criterion_group};
use redb::{Database, TableDefinition};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{InputEvent, InputOutcome, RoomServer, Store};
use std::time::{Duration, Instant};

/// Events stored per run: the first of a generated `hq` history, in its order (every event's
/// auth events come before it).
const EVENTS: usize = 50_000;

const IDS: TableDefinition<&str, u64> = TableDefinition::new("event_ids");
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const JSON: TableDefinition<u64, &[u8]> = TableDefinition::new("event_json");

struct Events {
    ids: Vec<String>,
    pdus: Vec<String>,
}

fn events() -> Events {
    let config = GenConfig {
        workload: Workload::Hq,
        seed: 3,
        members: 20_000,
        state_events: 40_000,
        messages_per_state: 0,
        room_version: Default::default(),
    };
    let (ids, pdus) = Generator::new(config)
        .take(EVENTS)
        .map(|e| (e.event_id.clone(), e.to_json_line()))
        .unzip();
    Events { ids, pdus }
}

fn store(events: &Events) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(dir.path().join("s.redb")).expect("store opens");
    let started = Instant::now();
    let mut tx = store.write().expect("write transaction");
    let mut server = RoomServer::new();
    let mut batch = server.batch(&mut tx);
    for pdu in &events.pdus {
        let got = batch
            .receive(&InputEvent::outlier(pdu.as_bytes()))
            .expect("an outlier is received");
        assert_eq!(got.outcome, InputOutcome::Outlier, "{pdu}");
    }
    drop(batch);
    tx.commit().expect("commit");
    started.elapsed()
}

fn floor(events: &Events) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = Database::builder()
        .set_cache_size(roomstate::DEFAULT_CACHE_BYTES)
        .create(dir.path().join("f.redb"))
        .expect("database opens");
    let (record, json) = ([7u8; 30], [9u8; 200]);
    let started = Instant::now();
    let tx = db.begin_write().expect("write transaction");
    {
        let mut ids = tx.open_table(IDS).expect("table");
        let mut records = tx.open_table(RECORDS).expect("table");
        let mut rows = tx.open_table(JSON).expect("table");
        for (n, id) in (1u64..).zip(&events.ids) {
            ids.insert(id.as_str(), n).expect("insert");
            records.insert(n, record.as_slice()).expect("insert");
            rows.insert(n, json.as_slice()).expect("insert");
        }
    }
    tx.commit().expect("commit");
    started.elapsed()
}

fn outliers(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group(format!("outliers_{EVENTS}"));
    group.sample_size(10);
    group.bench_function("store", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| store(&events)).sum())
    });
    group.bench_function("floor", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| floor(&events)).sum())
    });
    group.finish();
    let mut pairs: Vec<(f64, f64)> = (0..5)
        .map(|_| (store(&events).as_secs_f64(), floor(&events).as_secs_f64()))
        .collect();
    pairs.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
    let (ours, least) = pairs[2];
    let per = |s: f64| s * 1e6 / EVENTS as f64;
    println!(
        "{EVENTS} outliers: store {:.1} µs each, floor {:.1} µs each, median ratio {:.2} \
         (range {:.2}-{:.2})",
        per(ours),
        per(least),
        ours / least,
        pairs[0].0 / pairs[0].1,
        pairs[4].0 / pairs[4].1,
    );
}

criterion_group!(benches, outliers);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
