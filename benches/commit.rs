//! The cost of two-phase commit: the same history ingested into a new file with durable commits,
//! with redb's one-phase and two-phase commit, at two batch sizes. `cargo bench --bench commit`
//! prints criterion's figures and the median 2PC/1PC ratio per batch size, from interleaved
//! runs (the machine is shared, so only same-run ratios mean anything).

use criterion::{BenchmarkId, Criterion, criterion_group};
use roomstate::Store;
use roomstate::ingest::{IngestOptions, OnBadLine, TrivialMerge, ingest};
use roomstate::workload::{GenConfig, Generator, Workload};
use std::time::{Duration, Instant};

fn history() -> String {
    let config = GenConfig {
        workload: Workload::Hq,
        seed: 5,
        members: 300,
        state_events: 1_000,
        messages_per_state: 2,
        room_version: Default::default(),
    };
    Generator::new(config)
        .map(|e| e.to_json_line() + "\n")
        .collect()
}

/// Ingests `text` into a new file and returns how long the ingest took.
fn run(text: &str, batch: usize, two_phase: bool) -> Duration {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::builder()
        .two_phase_commit(two_phase)
        .open(dir.path().join("s.redb"))
        .expect("store opens");
    let options = IngestOptions {
        batch_size: batch,
        on_bad_line: OnBadLine::Stop,
        durable_batches: true,
        ..IngestOptions::default()
    };
    let started = Instant::now();
    ingest(&store, text.as_bytes(), options, TrivialMerge).expect("ingest");
    started.elapsed()
}

fn commit(c: &mut Criterion) {
    let text = history();
    let mut group = c.benchmark_group("ingest_durable");
    group.sample_size(10);
    for batch in [100, 1_000] {
        for (name, two_phase) in [("1pc", false), ("2pc", true)] {
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter_custom(|iters| (0..iters).map(|_| run(&text, batch, two_phase)).sum())
            });
        }
    }
    group.finish();
    for batch in [100, 1_000] {
        let mut ratios: Vec<f64> = (0..9)
            .map(|_| {
                let one = run(&text, batch, false).as_secs_f64();
                run(&text, batch, true).as_secs_f64() / one
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        println!(
            "batch {batch}: {} lines, 2pc/1pc median ratio {:.2} (range {:.2}-{:.2})",
            text.lines().count(),
            ratios[4],
            ratios[0],
            ratios[8]
        );
    }
}

criterion_group!(benches, commit);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
