//! Event JSON at rest: compressing one event with a trained dictionary, decompressing it, and
//! training the dictionary, on generated `hq` events (`cargo bench --bench json`). The row
//! codec is the store's own (`roomstate::store::json`); reading a row through a store adds
//! one B-tree lookup, which `roomstate bench` times as `json_read_ns`.

use criterion::{Criterion, criterion_group, criterion_main};
use roomstate::store::json::{Dictionary, decode_row, encode_row};
use roomstate::workload::{GenConfig, Generator, Workload};
use std::hint::black_box;
use std::sync::Arc;

fn events() -> Vec<String> {
    let config = GenConfig {
        members: 2_000,
        state_events: 5_000,
        ..GenConfig::new(Workload::Hq)
    };
    Generator::new(config)
        .take(12_000)
        .map(|e| e.to_json_line())
        .collect()
}

fn json(c: &mut Criterion) {
    let events = events();
    let (training, rest) = events.split_at(2_000);
    let samples: Vec<&[u8]> = training.iter().map(|e| e.as_bytes()).collect();
    let dictionary = Arc::new(Dictionary::train(&samples).expect("a dictionary"));
    let dictionaries = [Arc::clone(&dictionary)];
    let rows: Vec<Vec<u8>> = rest
        .iter()
        .map(|e| encode_row(e.as_bytes(), &dictionary).expect("compresses"))
        .collect();
    let given: usize = rest.iter().map(String::len).sum();
    let stored: usize = rows.iter().map(Vec::len).sum();
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
            black_box(encode_row(rest[i].as_bytes(), &dictionary).expect("compresses"))
        })
    });
    c.bench_function("decompress one event", |b| {
        b.iter(|| {
            i = (i + 1) % rows.len();
            black_box(decode_row(&rows[i], &dictionaries).expect("decodes"))
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
