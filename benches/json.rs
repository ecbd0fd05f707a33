//! Event JSON at rest: one event's row (its event IDs named by NID, the rest compressed with a
//! dictionary), reading it back, and training the dictionary, on generated `hq` events
//! (`cargo bench --bench json`). The dictionary is trained from whole events; a store trains
//! from the rows' templates, which compress a little better. The row codec is the store's own (`roomstate::store::json`);
//! reading a row through a store adds a B-tree lookup for the row and one per ID it names,
//! which `roomstate bench` times as `json_read_ns`.

use criterion::{Criterion, criterion_group, criterion_main};
use roomstate::EventNid;
use roomstate::quoted_event_ids;
use roomstate::store::json::{Dictionary, decode_row, encode_row};
use roomstate::workload::{GenConfig, Generator, Workload};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

fn events() -> Vec<(EventNid, String, String)> {
    let config = GenConfig {
        members: 2_000,
        state_events: 5_000,
        ..GenConfig::new(Workload::Hq)
    };
    Generator::new(config)
        .take(12_000)
        .zip(1..)
        .filter_map(|(e, n)| Some((EventNid::new(n)?, e.event_id.clone(), e.to_json_line())))
        .collect()
}

/// Event `own`'s row, its IDs named by the NIDs `nids` knows.
fn encode(
    own: EventNid,
    json: &str,
    nids: &HashMap<&str, EventNid>,
    dictionary: &Dictionary,
) -> Vec<u8> {
    let ids = quoted_event_ids(json.as_bytes());
    let mut seen: Vec<&str> = Vec::new();
    for r in &ids {
        if !seen.contains(&&json[r.clone()]) {
            seen.push(&json[r.clone()]);
        }
    }
    let named: Vec<Option<EventNid>> = seen.iter().map(|id| nids.get(id).copied()).collect();
    encode_row(json.as_bytes(), own, &ids, &named, dictionary).expect("compresses")
}

fn json(c: &mut Criterion) {
    let events = events();
    let (training, rest) = events.split_at(2_000);
    let nids: HashMap<&str, EventNid> = events.iter().map(|(n, id, _)| (id.as_str(), *n)).collect();
    let ids: HashMap<u64, &str> = events
        .iter()
        .map(|(n, id, _)| (n.get(), id.as_str()))
        .collect();
    let id_of = |nid: u64| ids.get(&nid).map(|id| id.to_string());
    let samples: Vec<&[u8]> = training.iter().map(|e| e.2.as_bytes()).collect();
    let dictionary = Arc::new(Dictionary::train(&samples).expect("a dictionary"));
    let dictionaries = [Arc::clone(&dictionary)];
    let rows: Vec<(EventNid, Vec<u8>)> = rest
        .iter()
        .map(|(own, _, json)| (*own, encode(*own, json, &nids, &dictionary)))
        .collect();
    let given: usize = rest.iter().map(|e| e.2.len()).sum();
    let stored: usize = rows.iter().map(|r| r.1.len()).sum();
    println!(
        "{} events: {:.0} B each as given, {:.0} B stored ({:.3})",
        rest.len(),
        given as f64 / rest.len() as f64,
        stored as f64 / rest.len() as f64,
        stored as f64 / given as f64
    );
    let mut i = 0;
    c.bench_function("compress one event", |b| {
        b.iter(|| {
            i = (i + 1) % rest.len();
            let (own, _, json) = &rest[i];
            black_box(encode(*own, json, &nids, &dictionary))
        })
    });
    c.bench_function("decompress one event", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            let (own, row) = &rows[i];
            black_box(decode_row(row, *own, &dictionaries, id_of).expect("decodes"))
        })
    });
    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    group.bench_function("a dictionary from 2,000 events", |b| {
        b.iter(|| black_box(Dictionary::train(&samples)))
    });
    group.finish();
}

criterion_group!(benches, json);
criterion_main!(benches);
