//! Matrix state resolution per conflicted merge on a `forky` history: conflicted-only maps (the
//! default) against whole maps. Each sample ingests the history into a new in-memory store and
//! counts only the time spent resolving. `cargo bench --bench stateres` prints criterion's
//! figures and the median per-merge times of both, from interleaved runs (the machine is shared,
//! so only same-run ratios mean anything). The CLI gives the same figures at 1,000 members:
//! `roomstate ingest --resolver matrix` or `--resolver matrix-whole-maps` (docs/design.md).

use criterion::{BenchmarkId, Criterion, criterion_group};
use roomstate::Store;
use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, ingest};
use roomstate::workload::{GenConfig, Generator, Workload};
use std::time::Duration;

fn history() -> String {
    let config = GenConfig {
        workload: Workload::Forky,
        seed: 1,
        members: 300,
        state_events: 1_000,
        messages_per_state: 1,
        room_version: Default::default(),
    };
    Generator::new(config)
        .map(|e| e.to_json_line() + "\n")
        .collect()
}

/// Ingests `text` and returns the time of each resolution.
fn resolve_all(text: &str, whole: bool) -> Vec<Duration> {
    let store = Store::in_memory().expect("store");
    let mut resolver = if whole {
        MatrixResolver::whole_maps()
    } else {
        MatrixResolver::default()
    };
    let options = IngestOptions {
        on_bad_line: OnBadLine::Stop,
        ..IngestOptions::default()
    };
    ingest(&store, text.as_bytes(), options, &mut resolver).expect("ingest");
    resolver.timings().to_vec()
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort_unstable();
    d[d.len() / 2]
}

fn stateres(c: &mut Criterion) {
    let text = history();
    let mut group = c.benchmark_group("resolution_per_history");
    group.sample_size(10);
    for (name, whole) in [("conflicted_only", false), ("whole_maps", true)] {
        group.bench_with_input(BenchmarkId::from_parameter(name), &whole, |b, &whole| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| resolve_all(&text, whole).into_iter().sum::<Duration>())
                    .sum()
            })
        });
    }
    group.finish();
    let (mut only, mut whole) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        only.extend(resolve_all(&text, false));
        whole.extend(resolve_all(&text, true));
    }
    let merges = only.len() / 3;
    let (a, b) = (median(only), median(whole));
    println!(
        "forky, 300 members: {merges} conflicted merges; median per merge {:.1} µs conflicted-only, \
         {:.1} µs whole maps (ratio {:.2})",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        b.as_secs_f64() / a.as_secs_f64()
    );
}

criterion_group!(benches, stateres);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
