//! `roomstate bench`: the same generated history under every write policy, each in its own
//! child process and store, with size, speed and memory figures side by side.
//!
//! Each policy runs in a child (`bench --one POLICY`) so that its peak memory is its own. Times
//! are medians, and flatten is reported against a plain copy of the same entries measured in the
//! same process, since the machine is shared. The read figures are measured in several rounds:
//! each figure is the median round's, with the lowest and highest round beside it.

use crate::counted::{CountedFile, IoCounts, IoTotals};
use crate::failure::{CliResult, Failure};
use crate::plot::{Series, svg};
use crate::workload::{GenConfig, Generator, Workload};
use roomstate::ingest::{IngestOptions, Ingester, MatrixResolver};
use roomstate::{EventNid, SnapshotNid, StateEntry, Store, StoreRead, policy};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

/// One policy's figures: the `--json` line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figures {
    pub policy: String,
    pub workload: String,
    pub events: u64,
    pub state_events: u64,
    pub bytes_per_state_change: f64,
    pub file_bytes_per_event: f64,
    pub entries_written_per_state_change: f64,
    pub blocks_per_load: u64,
    pub final_state_entries: u64,
    pub flatten_ns: u64,
    pub copy_ns: u64,
    pub flatten_over_copy: f64,
    pub lookup_ns: u64,
    pub diff_ns: u64,
    /// The lowest and highest round of each read figure.
    #[serde(default)]
    pub flatten_over_copy_spread: Spread,
    #[serde(default)]
    pub lookup_ns_spread: Spread,
    #[serde(default)]
    pub diff_ns_spread: Spread,
    /// Event JSON per event: as ingested, and as stored (the `event_json` table's values).
    #[serde(default)]
    pub json_bytes_per_event: f64,
    #[serde(default)]
    pub json_stored_bytes_per_event: f64,
    /// Reading one event's JSON by NID, decompression included.
    #[serde(default)]
    pub json_read_ns: u64,
    #[serde(default)]
    pub json_read_ns_spread: Spread,
    pub ingest_events_per_s: f64,
    /// Ingest over the first batches that hold a tenth of the events, and over the last: how
    /// far the rate falls as the store grows.
    #[serde(default)]
    pub ingest_first_tenth_events_per_s: f64,
    #[serde(default)]
    pub ingest_last_tenth_events_per_s: f64,
    /// What redb read from and wrote to the file during ingest, per event: calls (mostly one
    /// 4 KiB page each) and bytes. Exact, unlike times on a shared machine.
    #[serde(default)]
    pub ingest_reads_per_event: f64,
    #[serde(default)]
    pub ingest_writes_per_event: f64,
    #[serde(default)]
    pub ingest_read_bytes_per_event: f64,
    #[serde(default)]
    pub ingest_written_bytes_per_event: f64,
    /// B-tree operations (gets, range scans, inserts, removes) per event during ingest.
    #[serde(default)]
    pub ingest_btree_ops_per_event: f64,
    /// For the default policy only: the same history ingested as a trusted import (no
    /// authorization), in the same process right after, for the checks' cost.
    #[serde(default)]
    pub trusted_events_per_s: Option<f64>,
    pub peak_rss_bytes: u64,
    /// (state entries, state bytes per state change so far), sampled during ingest.
    pub samples: Vec<(u64, f64)>,
}

/// The lowest and the highest of a figure's rounds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub max: f64,
}

/// Rounds of the read measurements: enough for the median round to shrug off a round the
/// shared machine disturbed.
const READ_ROUNDS: usize = 7;

/// One round of the read measurements.
#[derive(Clone, Copy, Default)]
struct ReadRound {
    flatten_ns: u64,
    copy_ns: u64,
    lookup_ns: u64,
    diff_ns: u64,
    json_read_ns: u64,
}

impl ReadRound {
    fn ratio(&self) -> f64 {
        self.flatten_ns as f64 / self.copy_ns.max(1) as f64
    }
}

/// The median of `rounds` by `figure`, and the spread of that figure.
fn median_round(rounds: &[ReadRound], figure: impl Fn(&ReadRound) -> f64) -> (ReadRound, Spread) {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let spread = Spread {
        min: sorted.first().map_or(0.0, &figure),
        max: sorted.last().map_or(0.0, &figure),
    };
    let middle = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    (middle, spread)
}

/// How large a history to bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// For the test suite.
    Tiny,
    /// Under a minute, for CI smoke runs.
    Small,
    /// `hq` at 100,000 members and 200,000 state events.
    Full,
}

impl Scale {
    /// The scale as `--scale` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scale::Tiny => "tiny",
            Scale::Small => "small",
            Scale::Full => "full",
        }
    }
}

/// The history a workload and scale stand for.
pub fn config(workload: Workload, scale: Scale) -> GenConfig {
    let mut c = GenConfig::new(workload);
    match (workload, scale) {
        (_, Scale::Tiny) => {
            c.members = c.members.min(100);
            c.state_events = c.state_events.min(300);
            c.messages_per_state = 1;
        }
        (Workload::Hq, Scale::Full) => {
            c.members = 100_000;
            c.state_events = 200_000;
            c.messages_per_state = 10;
        }
        (Workload::Hq, Scale::Small) => {
            c.members = 2_000;
            c.state_events = 5_000;
            c.messages_per_state = 10;
        }
        (Workload::Many, Scale::Small) => {
            c.members = 500;
        }
        (Workload::Forky, Scale::Small) => {
            c.members = 300;
            c.state_events = 2_000;
        }
        _ => {}
    }
    c
}

/// Runs every policy in a child process and prints their figures.
pub fn run(workload: Workload, scale: Scale, json: bool, plot: Option<&Path>) -> CliResult {
    let exe = std::env::current_exe()?;
    let mut all = Vec::new();
    for name in policy::POLICY_NAMES {
        if scale == Scale::Full && name == "full" {
            // A full copy per change would write hundreds of gigabytes at this scale.
            continue;
        }
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "--one", name, "--workload", workload.name()]);
        cmd.args(["--scale", scale.name()]);
        let out = cmd.output()?;
        if !out.status.success() {
            return Err(Failure::Store(format!(
                "bench of {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let figures: Figures = serde_json::from_slice(&out.stdout)
            .map_err(|e| Failure::Store(format!("bench of {name} printed no figures: {e}")))?;
        if json {
            let mut line = serde_json::to_value(&figures).map_err(std::io::Error::from)?;
            if let Some(map) = line.as_object_mut() {
                map.remove("samples");
            }
            println!("{line}");
        } else {
            eprintln!("{name}: done");
        }
        all.push(figures);
    }
    if !json {
        print_table(&all, &mut std::io::stdout().lock())?;
    }
    if let Some(path) = plot {
        let series: Vec<Series<'_>> = all
            .iter()
            .map(|f| Series {
                policy: &f.policy,
                samples: &f.samples,
            })
            .collect();
        std::fs::write(path, svg(&series))?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

fn print_table(all: &[Figures], out: &mut impl Write) -> CliResult {
    writeln!(
        out,
        "{:<11} {:>10} {:>9} {:>7} {:>10} {:>10} {:>6} {:>9} {:>9} {:>10} {:>9}",
        "policy",
        "B/change",
        "entries",
        "blocks",
        "flatten",
        "copy",
        "ratio",
        "lookup",
        "diff",
        "events/s",
        "peak MiB"
    )?;
    for f in all {
        writeln!(
            out,
            "{:<11} {:>10.1} {:>9.1} {:>7} {:>8}µs {:>8}µs {:>6.2} {:>7}ns {:>7}ns {:>10.0} {:>9.1}",
            f.policy,
            f.bytes_per_state_change,
            f.entries_written_per_state_change,
            f.blocks_per_load,
            f.flatten_ns / 1_000,
            f.copy_ns / 1_000,
            f.flatten_over_copy,
            f.lookup_ns,
            f.diff_ns,
            f.ingest_events_per_s,
            f.peak_rss_bytes as f64 / (1 << 20) as f64
        )?;
    }
    writeln!(
        out,
        "reads: the median of {READ_ROUNDS} rounds; each round's lowest and highest:"
    )?;
    for f in all {
        writeln!(
            out,
            "{}: flatten/copy {:.2} to {:.2}, lookup {:.0} to {:.0} ns, diff {:.0} to {:.0} ns",
            f.policy,
            f.flatten_over_copy_spread.min,
            f.flatten_over_copy_spread.max,
            f.lookup_ns_spread.min,
            f.lookup_ns_spread.max,
            f.diff_ns_spread.min,
            f.diff_ns_spread.max,
        )?;
    }
    for f in all {
        writeln!(
            out,
            "{}: ingest {:.0} events/s over the first tenth of the events, {:.0} over the last ({:.2}x)",
            f.policy,
            f.ingest_first_tenth_events_per_s,
            f.ingest_last_tenth_events_per_s,
            f.ingest_last_tenth_events_per_s / f.ingest_first_tenth_events_per_s.max(1e-9)
        )?;
    }
    for f in all {
        writeln!(
            out,
            "{}: ingest read {:.0} B and wrote {:.0} B of the file per event ({:.2} reads, {:.2} writes); {:.1} B-tree operations per event",
            f.policy,
            f.ingest_read_bytes_per_event,
            f.ingest_written_bytes_per_event,
            f.ingest_reads_per_event,
            f.ingest_writes_per_event,
            f.ingest_btree_ops_per_event,
        )?;
    }
    for f in all {
        writeln!(
            out,
            "{}: event JSON {:.0} B per event as given, {:.0} B stored ({:.3}); a read {} ns ({:.0} to {:.0})",
            f.policy,
            f.json_bytes_per_event,
            f.json_stored_bytes_per_event,
            f.json_stored_bytes_per_event / f.json_bytes_per_event.max(1e-9),
            f.json_read_ns,
            f.json_read_ns_spread.min,
            f.json_read_ns_spread.max,
        )?;
    }
    for f in all.iter().filter(|f| f.trusted_events_per_s.is_some()) {
        let trusted = f.trusted_events_per_s.unwrap_or(0.0);
        writeln!(
            out,
            "{}: {:.0} events/s authorized, {:.0} trusted ({:.2}x)",
            f.policy,
            f.ingest_events_per_s,
            trusted,
            f.ingest_events_per_s / trusted.max(1e-9)
        )?;
    }
    Ok(())
}

/// The child: ingest under one policy, measure, print one JSON object.
pub fn run_one(name: &str, workload: Workload, scale: Scale) -> CliResult {
    let policy =
        policy::by_name(name).ok_or_else(|| Failure::User(format!("unknown policy {name}")))?;
    let path = scratch_path(name);
    let result = measure(&path, policy, workload, scale);
    let _ = std::fs::remove_file(&path);
    let mut figures = result?;
    if name == policy::default_policy().name() {
        let trusted = scratch_path(&format!("{name}-trusted"));
        let _ = std::fs::remove_file(&trusted);
        let store = Store::builder()
            .boxed_policy(policy::default_policy())
            .open(&trusted);
        let rate = store.map_err(Failure::from).and_then(|store| {
            let report = ingest(&store, config(workload, scale), true, None)?.report;
            Ok(report.events_per_second())
        });
        let _ = std::fs::remove_file(&trusted);
        figures.trusted_events_per_s = Some(rate?);
    }
    println!(
        "{}",
        serde_json::to_string(&figures).map_err(std::io::Error::from)?
    );
    Ok(())
}

fn scratch_path(policy: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "roomstate-bench-{}-{policy}.redb",
        std::process::id()
    ))
}

fn measure(
    path: &Path,
    policy: Box<dyn policy::WritePolicy>,
    workload: Workload,
    scale: Scale,
) -> CliResult<Figures> {
    let _ = std::fs::remove_file(path);
    let counts = Arc::new(IoCounts::default());
    let mut store = Store::builder()
        .boxed_policy(policy)
        .open_backend(CountedFile::open(path, Arc::clone(&counts))?)?;
    let config = config(workload, scale);
    let name = store.policy().name().to_owned();
    let Ingested {
        report,
        samples,
        timeline,
        io,
        json_bytes,
    } = ingest(&store, config, false, Some(&counts))?;
    let per_event = |x: u64| x as f64 / report.events.max(1) as f64;
    let (first_tenth, last_tenth) = tenths(&timeline);
    store.compact()?;
    // Measure reads on a freshly opened store, as after a restart: compaction leaves redb's page
    // cache full of pages it copied, which would otherwise evict the state's pages.
    drop(store);
    let store = Store::open(path)?;
    let rx = store.read()?;
    let stats = rx.stats()?;
    let file_bytes = std::fs::metadata(path)?.len();
    let per_state = |x: f64| x / stats.state_events.max(1) as f64;
    let (final_state, consecutive) = probes(&rx)?;
    let resolver = rx.resolver()?;
    let flat: Vec<StateEntry> = resolver.flatten(final_state)?.into_vec();
    // Event NIDs count from 1 with no gaps in a generated history: the events `median_over`
    // would pick from all of them, without listing all of them.
    let step = (report.events as usize / 2_000).max(1);
    let some_events: Vec<EventNid> = (1..=report.events)
        .step_by(step)
        .filter_map(EventNid::new)
        .collect();
    let json = stats.table("event_json");
    // A row's stored bytes include its 8-byte key.
    let json_stored = json.map_or(0, |t| t.stored_bytes.saturating_sub(8 * t.rows));
    let mut rounds = Vec::with_capacity(READ_ROUNDS);
    for _ in 0..READ_ROUNDS {
        let (flatten_ns, copy_ns) = interleaved(
            || resolver.flatten(final_state).map(|s| drop(black_box(s))),
            || drop(black_box(flat.to_vec())),
        )?;
        let lookup_ns = median_over(&flat, |e| {
            resolver.lookup(final_state, e.key).map(|found| {
                black_box(found);
            })
        })?;
        let diff_ns = median_over(&consecutive, |(a, b)| {
            resolver.diff(*a, *b).map(|d| drop(black_box(d)))
        })?;
        let json_read_ns = median_over(&some_events, |e| {
            rx.event_json(*e).map(|j| drop(black_box(j)))
        })?;
        rounds.push(ReadRound {
            flatten_ns,
            copy_ns,
            lookup_ns,
            diff_ns,
            json_read_ns,
        });
    }
    let (flattens, flatten_over_copy_spread) = median_round(&rounds, ReadRound::ratio);
    let (lookups, lookup_ns_spread) = median_round(&rounds, |r| r.lookup_ns as f64);
    let (diffs, diff_ns_spread) = median_round(&rounds, |r| r.diff_ns as f64);
    let (json_reads, json_read_ns_spread) = median_round(&rounds, |r| r.json_read_ns as f64);
    Ok(Figures {
        policy: name,
        workload: workload.name().to_owned(),
        events: report.events,
        state_events: stats.state_events,
        bytes_per_state_change: per_state(stats.state_bytes() as f64),
        file_bytes_per_event: file_bytes as f64 / report.events.max(1) as f64,
        entries_written_per_state_change: per_state(stats.stored_entries as f64),
        blocks_per_load: resolver.blocks(final_state)?.len() as u64,
        final_state_entries: flat.len() as u64,
        flatten_ns: flattens.flatten_ns,
        copy_ns: flattens.copy_ns,
        flatten_over_copy: flattens.ratio(),
        lookup_ns: lookups.lookup_ns,
        diff_ns: diffs.diff_ns,
        flatten_over_copy_spread,
        lookup_ns_spread,
        diff_ns_spread,
        json_bytes_per_event: per_event(json_bytes),
        json_stored_bytes_per_event: per_event(json_stored),
        json_read_ns: json_reads.json_read_ns,
        json_read_ns_spread,
        ingest_events_per_s: report.events_per_second(),
        ingest_first_tenth_events_per_s: first_tenth,
        ingest_last_tenth_events_per_s: last_tenth,
        ingest_reads_per_event: per_event(io.reads),
        ingest_writes_per_event: per_event(io.writes),
        ingest_read_bytes_per_event: per_event(io.read_bytes),
        ingest_written_bytes_per_event: per_event(io.written_bytes),
        ingest_btree_ops_per_event: per_event(report.btree_ops),
        trusted_events_per_s: None,
        peak_rss_bytes: peak_rss(),
        samples,
    })
}

/// What one bench ingest gives.
struct Ingested {
    report: roomstate::ingest::IngestReport,
    /// (state entries, state bytes per state change so far), every fourth batch.
    samples: Vec<(u64, f64)>,
    /// (events committed, seconds of ingest) at each batch's commit.
    timeline: Vec<(u64, f64)>,
    /// The file's reads and writes during ingest, sampling excluded; zero when not counted.
    io: IoTotals,
    /// Event JSON given, in bytes.
    json_bytes: u64,
}

/// The ingest rate over the first batches that hold a tenth of the events, and over the last
/// batches that do.
fn tenths(timeline: &[(u64, f64)]) -> (f64, f64) {
    let Some(&(events, seconds)) = timeline.last() else {
        return (0.0, 0.0);
    };
    let tenth = events.div_ceil(10);
    let rate = |(e0, t0): (u64, f64), (e1, t1): (u64, f64)| (e1 - e0) as f64 / (t1 - t0).max(1e-9);
    let first = timeline.iter().find(|(e, _)| *e >= tenth).copied();
    let last = timeline
        .iter()
        .rev()
        .find(|(e, _)| *e + tenth <= events)
        .copied();
    (
        first.map_or(0.0, |f| rate((0, 0.0), f)),
        last.map_or(0.0, |l| rate(l, (events, seconds))),
    )
}

/// Ingests the generated history, sampling state bytes per change as the state grows, and
/// timing each batch (sampling excluded).
fn ingest(
    store: &Store,
    config: GenConfig,
    trust: bool,
    counts: Option<&IoCounts>,
) -> CliResult<Ingested> {
    let io_now = || counts.map(IoCounts::totals).unwrap_or_default();
    let options = IngestOptions {
        batch_size: 10_000,
        trust,
        ..IngestOptions::default()
    };
    // forky's merges conflict: Matrix state resolution settles them, as a homeserver would.
    let mut ingester = Ingester::new(store, options, MatrixResolver::default());
    let mut samples = Vec::new();
    let mut last_batches = 0;
    let mut sample_room = None;
    let started = Instant::now();
    let mut sampling = 0.0;
    let mut timeline = vec![(0, 0.0)];
    let io_before = io_now();
    let mut sampling_io = IoTotals::default();
    let mut json_bytes = 0;
    for event in Generator::new(config) {
        sample_room.get_or_insert_with(|| event.room_id.clone());
        let line = event.to_json_line();
        json_bytes += line.len() as u64;
        ingester.push_line(line.as_bytes())?;
        let report = ingester.report();
        if report.batches != last_batches {
            last_batches = report.batches;
            let at = started.elapsed().as_secs_f64() - sampling;
            timeline.push((report.events, at));
            if let Some(room) = sample_room.as_ref().filter(|_| report.batches % 4 == 0) {
                let (t, io) = (Instant::now(), io_now());
                samples.push(sample(store, room, report.state_events)?);
                sampling += t.elapsed().as_secs_f64();
                sampling_io = sampling_io + (io_now() - io);
            }
        }
    }
    let report = ingester.finish()?;
    timeline.push((report.events, started.elapsed().as_secs_f64() - sampling));
    let io = io_now() - io_before - sampling_io;
    if let Some(room) = &sample_room {
        samples.push(sample(store, room, report.state_events)?);
    }
    Ok(Ingested {
        report,
        samples,
        timeline,
        io,
        json_bytes,
    })
}

fn sample(store: &Store, room_id: &str, state_events: u64) -> CliResult<(u64, f64)> {
    let rx = store.read()?;
    let bytes = roomstate::state_bytes(&rx.table_sizes()?);
    let entries = match rx.room_nid(room_id)? {
        Some(room) => match rx.room(room)? {
            Some(record) => rx.resolver()?.state_len(record.current_state)?,
            None => 0,
        },
        None => 0,
    };
    Ok((entries, bytes as f64 / state_events.max(1) as f64))
}

/// The largest room's current state, and up to 200 pairs of states before consecutive state
/// events of that room, from the end of its history.
fn probes(rx: &roomstate::ReadTxn) -> CliResult<(SnapshotNid, Vec<(SnapshotNid, SnapshotNid)>)> {
    let resolver = rx.resolver()?;
    let mut best: Option<(u64, roomstate::RoomNid, SnapshotNid)> = None;
    for raw in 1.. {
        let Some(room) = roomstate::RoomNid::new(raw) else {
            continue;
        };
        let Some(record) = rx.room(room)? else { break };
        let len = resolver.state_len(record.current_state)?;
        if best.is_none_or(|(l, _, _)| len > l) {
            best = Some((len, room, record.current_state));
        }
    }
    let (_, room, state) = best.ok_or_else(|| Failure::Store("no room was ingested".into()))?;
    let mut befores = Vec::new();
    for event in rx.room_events(room)?.into_iter().rev() {
        let record = rx.expect_event(event)?;
        if record.state_key.is_some() {
            befores.push(record.state_before);
            if befores.len() > 200 {
                break;
            }
        }
    }
    let pairs = befores.windows(2).map(|w| (w[1], w[0])).collect();
    Ok((state, pairs))
}

/// Median times of `a` and `b`, run alternately so that both see the same machine load.
fn interleaved(
    mut a: impl FnMut() -> roomstate::Result<()>,
    mut b: impl FnMut(),
) -> CliResult<(u64, u64)> {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..51 {
        let t = Instant::now();
        a()?;
        ta.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        b();
        tb.push(t.elapsed().as_nanos() as u64);
    }
    Ok((median(&mut ta), median(&mut tb)))
}

/// The median time of `f` over up to 2,000 items spread across `items`.
fn median_over<T>(items: &[T], mut f: impl FnMut(&T) -> roomstate::Result<()>) -> CliResult<u64> {
    let step = (items.len() / 2_000).max(1);
    let mut times = Vec::new();
    for item in items.iter().step_by(step) {
        let t = Instant::now();
        f(item)?;
        times.push(t.elapsed().as_nanos() as u64);
    }
    Ok(median(&mut times))
}

fn median(times: &mut [u64]) -> u64 {
    times.sort_unstable();
    times.get(times.len() / 2).copied().unwrap_or(0)
}

/// The CPU time the calling thread has used, user and system, in milliseconds; 0 where
/// `/proc/thread-self/stat` is not there. Linux counts it in ticks of 10 ms (`USER_HZ` is 100 on
/// every architecture it runs on): enough for a thread that works for seconds.
pub fn thread_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // The command name, in parentheses, may hold spaces: count fields after it. utime and
    // stime are fields 14 and 15, the 12th and 13th after the name.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    ticks as f64 * 10.0
}

/// The process's peak resident set (VmHWM), or 0 where /proc does not say.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
