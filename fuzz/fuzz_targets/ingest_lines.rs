//! Arbitrary bytes as a JSON-lines history, ingested with bad lines skipped: every line is
//! either stored or reported as a typed bad line, ingest itself never fails, and the store the
//! accepted lines leave behind passes the integrity walk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, TrivialMerge, ingest};
use roomstate::StoreRead;

/// Small batches put boundaries everywhere; large ones spare most runs a commit per line, which
/// costs more than the line itself.
const BATCH_SIZES: [usize; 8] = [1, 2, 3, 5, 64, 64, 64, 64];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the batch size, so batch boundaries (and batch redos after a late bad
    // line) land everywhere, and the resolver: Matrix state resolution or the trivial merge.
    let (batch, matrix, text) = match data.split_first() {
        Some((b, rest)) => (BATCH_SIZES[usize::from(b % 8)], b & 0x80 != 0, rest),
        None => (1, false, data),
    };
    // Nothing here outlives the run, so commits need not be durable: a sixth more runs a second.
    let store = roomstate::StoreBuilder::default()
        .two_phase_commit(false)
        .in_memory()
        .expect("an in-memory store opens");
    let options = IngestOptions {
        durable_batches: false,
        batch_size: batch,
        on_bad_line: OnBadLine::Skip,
        max_listed_bad_lines: usize::MAX,
        ..IngestOptions::default()
    };
    let report = if matrix {
        ingest(&store, text, options, MatrixResolver::default())
    } else {
        ingest(&store, text, options, TrivialMerge)
    }
    .expect("bad lines are skipped");
    assert_eq!(
        report.events + report.duplicates + report.bad_lines + blank_lines(text),
        report.lines
    );
    let check = store.read().expect("read").check().expect("check runs");
    assert!(check.is_clean(), "{:?}", check.problems);
});

fn blank_lines(text: &[u8]) -> u64 {
    let mut lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    lines.iter().filter(|l| l.trim_ascii().is_empty()).count() as u64
}
