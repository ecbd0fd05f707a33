//! `roomstate bench --workload auth`: what auth chains cost in the generated `hq` room. One
//! authorized ingest with Matrix state resolution gives the per-merge times and their share of
//! the ingest; then, in the finished store, the auth chain of the whole current state, the
//! auth-chain difference of two forked states, and the auth-chain index's size.

use crate::bench::{Scale, config};
use crate::failure::{CliResult, Failure};
use crate::workload::{Generator, Workload};
use roomstate::ingest::{IngestOptions, Ingester};
use roomstate::matrix::query;
use roomstate::{EventNid, MatrixResolver, ReadTxn, StateMap, Store, StoreRead};
use serde::Serialize;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The figures of one run.
#[derive(Debug, Serialize)]
pub struct AuthFigures {
    pub events: u64,
    pub ingest_s: f64,
    pub merges: usize,
    pub merge_median_ms: f64,
    pub merge_p90_ms: f64,
    pub resolution_s: f64,
    /// State resolution's share of the ingest's wall time.
    pub resolution_share: f64,
    pub state_entries: usize,
    pub state_auth_chain_events: usize,
    /// The auth chain of the whole current state: median of three.
    pub state_auth_chain_ms: f64,
    /// The two forked states: the states after the prev events of the room's last merge whose
    /// prev events' states differ.
    pub forked_difference_events: usize,
    pub forked_difference_ms: f64,
    pub auth_index_complete: bool,
    pub auth_index_bytes_per_event: f64,
}

pub fn run(scale: Scale, as_json: bool) -> CliResult {
    let path = std::env::temp_dir().join(format!("roomstate-auth-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let result = Store::open(&path)
        .map_err(Failure::from)
        .and_then(|store| measure(&store, scale));
    let _ = std::fs::remove_file(&path);
    let f = result?;
    if as_json {
        let line = serde_json::to_string(&f).map_err(std::io::Error::from)?;
        println!("{line}");
        return Ok(());
    }
    println!(
        "auth chains in hq ({}): {} events ingested in {:.1} s",
        scale.name(),
        f.events,
        f.ingest_s
    );
    println!(
        "  state resolution: {} merges, median {:.1} ms, p90 {:.1} ms, {:.2} s in all ({:.1}% of the ingest)",
        f.merges,
        f.merge_median_ms,
        f.merge_p90_ms,
        f.resolution_s,
        f.resolution_share * 100.0
    );
    println!(
        "  auth chain of the current state ({} entries): {} events in {:.1} ms",
        f.state_entries, f.state_auth_chain_events, f.state_auth_chain_ms
    );
    println!(
        "  auth-chain difference of two forked states: {} events in {:.2} ms",
        f.forked_difference_events, f.forked_difference_ms
    );
    println!(
        "  auth-chain index: {}, {:.1} bytes per event",
        if f.auth_index_complete {
            "complete"
        } else {
            "abandoned"
        },
        f.auth_index_bytes_per_event
    );
    Ok(())
}

fn measure(store: &Store, scale: Scale) -> CliResult<AuthFigures> {
    let mut resolver = MatrixResolver::default();
    let started = Instant::now();
    let mut ingester = Ingester::new(store, IngestOptions::default(), &mut resolver);
    for event in Generator::new(config(Workload::Hq, scale)) {
        ingester.push_line(event.to_json_line().as_bytes())?;
    }
    let report = ingester.finish()?;
    let ingest = started.elapsed();
    let mut merges = resolver.timings().to_vec();
    merges.sort_unstable();
    let resolution: Duration = merges.iter().sum();
    let at = |q: usize| merges.get(merges.len() * q / 10).map_or(0.0, ms_of);

    let rx = store.read()?;
    let room = rx
        .room_nid("!hq:server0.test")?
        .ok_or_else(|| Failure::Store("the hq room was not ingested".into()))?;
    let record = rx
        .room(room)?
        .ok_or_else(|| Failure::Store("no room record".into()))?;
    let current: Vec<EventNid> = rx
        .flatten(record.current_state)?
        .iter()
        .map(|e| e.event)
        .collect();
    let mut chain_len = 0;
    let state_auth_chain_ms = median_ms(|| {
        chain_len = black_box(query::auth_chain(&rx, &current)?).len();
        Ok(())
    })?;
    let forks = forked_states(&rx, room)?;
    let mut difference = 0;
    let forked_difference_ms = median_ms(|| {
        difference = black_box(query::auth_chain_difference(&rx, &forks)?).len();
        Ok(())
    })?;
    let stats = rx.stats()?;
    Ok(AuthFigures {
        events: report.events,
        ingest_s: ingest.as_secs_f64(),
        merges: merges.len(),
        merge_median_ms: at(5),
        merge_p90_ms: at(9),
        resolution_s: resolution.as_secs_f64(),
        resolution_share: resolution.as_secs_f64() / ingest.as_secs_f64().max(1e-9),
        state_entries: current.len(),
        state_auth_chain_events: chain_len,
        state_auth_chain_ms,
        forked_difference_events: difference,
        forked_difference_ms,
        auth_index_complete: rx.auth_index_complete()?,
        auth_index_bytes_per_event: stats.auth_index_bytes() as f64 / stats.events.max(1) as f64,
    })
}

fn ms_of(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of three timed runs of `f`, in milliseconds.
fn median_ms(mut f: impl FnMut() -> CliResult) -> CliResult<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}

/// The states after the prev events of the room's last merge whose prev events' states differ.
fn forked_states(rx: &ReadTxn, room: roomstate::RoomNid) -> CliResult<Vec<StateMap>> {
    for event in rx.room_events(room)?.into_iter().rev() {
        let record = rx.expect_event(event)?;
        if record.prev_events.len() < 2 {
            continue;
        }
        let states = record
            .prev_events
            .iter()
            .map(|p| rx.state_after(*p))
            .collect::<roomstate::Result<Vec<StateMap>>>()?;
        if states.windows(2).any(|w| w[0] != w[1]) {
            return Ok(states);
        }
    }
    Err(Failure::Store("the room has no forked merge".into()))
}
