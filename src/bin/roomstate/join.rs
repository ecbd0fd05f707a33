//! `roomstate bench --workload join`: what joining a large room costs. A full store of the
//! generated `hq` room answers the `send_join` question (the state before its last event and
//! that state's auth chain, timed); a child process then receives that answer as a joining
//! server does, through the typed API: every event as an outlier, auth events first, then the
//! join with its state supplied. The child's wall time and peak memory are its own.

use crate::bench::{Scale, config, peak_rss};
use crate::failure::{CliResult, Failure};
use crate::workload::{Generator, Workload};
use roomstate::ingest::{IngestOptions, Ingester, TrivialMerge};
use roomstate::matrix::query;
use roomstate::{
    EventNid, InputEvent, InputOutcome, PreparedEvent, Preparer, RoomServer, Store, StoreRead,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Outliers per write transaction in the joining server.
const OUTLIERS_PER_COMMIT: usize = 20_000;

/// The figures of one join.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinFigures {
    pub state_entries: u64,
    pub auth_chain_events: u64,
    /// Events stored as outliers: the state and its auth chain, each once.
    pub outliers: u64,
    /// The joining server: storing the outliers.
    pub outliers_ms: f64,
    /// The joining server: the join event with its state supplied, committed.
    pub join_ms: f64,
    /// Both, with the reading of the answer.
    pub total_ms: f64,
    /// The joining process's peak resident set.
    pub peak_rss_bytes: u64,
    /// The joining server's CPU time storing the outliers, on the writing thread and on the
    /// thread that reads and prepares them: where the work is, as the wall time on a shared
    /// machine does not say.
    #[serde(default)]
    pub writer_cpu_ms: f64,
    #[serde(default)]
    pub reader_cpu_ms: f64,
    /// The joining server: B-tree operations per outlier stored.
    #[serde(default)]
    pub btree_ops_per_outlier: f64,
    /// The resident server: `/state_ids` of the last event (the state and its auth chain).
    pub state_ids_ms: f64,
    /// The resident server: the auth chain of the whole current state.
    pub auth_chain_ms: f64,
}

/// The history the join bench builds the room from: `hq` without messages, which are neither
/// state nor in any auth chain.
fn join_config(scale: Scale) -> crate::workload::GenConfig {
    let mut c = config(Workload::Hq, scale);
    c.messages_per_state = 0;
    c
}

pub fn run(scale: Scale, as_json: bool) -> CliResult {
    let dir = tempfile_dir()?;
    let result = prepare_and_join(&dir, scale);
    let _ = std::fs::remove_dir_all(&dir);
    let figures = result?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string(&figures).map_err(std::io::Error::from)?
        );
        return Ok(());
    }
    let mib = figures.peak_rss_bytes as f64 / (1 << 20) as f64;
    println!(
        "join of hq ({}): {} state entries, auth chain {} events, {} outliers",
        scale.name(),
        figures.state_entries,
        figures.auth_chain_events,
        figures.outliers
    );
    println!(
        "  joining server: {:.0} ms in all ({:.0} ms outliers, {:.0} ms the join), peak {mib:.0} MiB",
        figures.total_ms, figures.outliers_ms, figures.join_ms
    );
    println!(
        "  joining server: {:.1} B-tree operations per outlier; CPU {:.0} ms writing, {:.0} ms reading and preparing",
        figures.btree_ops_per_outlier, figures.writer_cpu_ms, figures.reader_cpu_ms
    );
    println!(
        "  resident server: /state_ids {:.0} ms, auth chain of the current state {:.0} ms",
        figures.state_ids_ms, figures.auth_chain_ms
    );
    Ok(())
}

fn tempfile_dir() -> CliResult<PathBuf> {
    let dir = std::env::temp_dir().join(format!("roomstate-join-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn prepare_and_join(dir: &Path, scale: Scale) -> CliResult<JoinFigures> {
    let resident = Store::open(dir.join("resident.redb"))?;
    let options = IngestOptions {
        trust: true,
        ..IngestOptions::default()
    };
    let mut ingester = Ingester::new(&resident, options, TrivialMerge);
    for event in Generator::new(join_config(scale)) {
        ingester.push_line(event.to_json_line().as_bytes())?;
    }
    let report = ingester.finish()?;
    let answer = dir.join("send_join.jsonl");
    let (state_ids_ms, auth_chain_ms, state_entries, chain_len) =
        write_answer(&resident, &report, &answer)?;
    drop(resident);
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["bench", "--workload", "join", "--join-input"])
        .arg(&answer)
        .output()?;
    if !out.status.success() {
        return Err(Failure::Store(format!(
            "the joining process failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut figures: JoinFigures = serde_json::from_slice(&out.stdout)
        .map_err(|e| Failure::Store(format!("the joining process printed no figures: {e}")))?;
    figures.state_ids_ms = state_ids_ms;
    figures.auth_chain_ms = auth_chain_ms;
    figures.state_entries = state_entries;
    figures.auth_chain_events = chain_len;
    Ok(figures)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

/// Answers `send_join` for a join after the room's last event, timing the queries, and writes
/// the answer as envelope lines: the outliers, auth events first, then the join.
fn write_answer(
    resident: &Store,
    report: &roomstate::ingest::IngestReport,
    path: &Path,
) -> CliResult<(f64, f64, u64, u64)> {
    let rx = resident.read()?;
    let room = rx
        .room_nid("!hq:server0.test")?
        .ok_or_else(|| Failure::Store(format!("no room after {} events", report.events)))?;
    let record = rx
        .room(room)?
        .ok_or_else(|| Failure::Store("no room record".into()))?;
    let last = *record
        .latest_events
        .first()
        .ok_or_else(|| Failure::Store("no forward extremity".into()))?;
    // The queries, each the median of three runs.
    let mut times = Vec::new();
    let mut answer = None;
    for _ in 0..3 {
        let t = Instant::now();
        answer = Some(query::state_ids(&rx, last)?);
        times.push(ms(t));
    }
    let state_ids_ms = median(&mut times);
    let current: Vec<EventNid> = rx
        .flatten(record.current_state)?
        .entries()
        .iter()
        .map(|e| e.event)
        .collect();
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        std::hint::black_box(query::auth_chain(&rx, &current)?);
        times.push(ms(t));
    }
    let auth_chain_ms = median(&mut times);
    let answer = answer.ok_or_else(|| Failure::Store("no answer".into()))?;

    // The state after the last event is what the join needs: the state before it, plus it.
    let mut state = answer.pdu_ids.clone();
    let last_record = rx.expect_event(last)?;
    if last_record.sets().is_some() {
        state = rx
            .state_after(last)?
            .entries()
            .iter()
            .map(|e| e.event)
            .collect();
    }
    let mut chain = query::auth_chain(&rx, &state)?;
    let in_chain: std::collections::HashSet<EventNid> = chain.iter().copied().collect();
    let chain_len = chain.len() as u64;
    chain.extend(state.iter().filter(|e| !in_chain.contains(e)));
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut renamed = Renamed::new(&record.version);
    for event in &chain {
        let json = rx
            .event_json(*event)?
            .ok_or_else(|| Failure::Store(format!("no JSON for event NID {event}")))?;
        let json = renamed.as_sent(rx.event_id(*event)?, &json)?;
        writeln!(out, "{{\"kind\":\"outlier\",\"event\":{json}}}")?;
    }
    let ids: Vec<String> = state
        .iter()
        .map(|e| Ok(renamed.id(rx.event_id(*e)?)))
        .collect::<CliResult<_>>()?;
    let join = join_event(&rx, last, &record.version)?;
    let join = renamed.as_sent("$joining-server-joins-hq-bench".into(), &join)?;
    let state_json = serde_json::to_string(&ids).map_err(std::io::Error::from)?;
    writeln!(
        out,
        "{{\"kind\":\"new\",\"event\":{join},\"state_before\":{state_json}}}"
    )?;
    out.flush()?;
    Ok((state_ids_ms, auth_chain_ms, state.len() as u64, chain_len))
}

/// The answer's events as federation sends them: in room versions 3 on a PDU carries no
/// `event_id`, its ID is its reference hash, and the joining server derives it. The generator's
/// events declare made-up IDs, so each is renamed to its reference hash, and the events that
/// name it (later in the answer: auth events come first) name it so.
struct Renamed {
    version: String,
    /// Made-up ID to reference hash; versions 1 and 2 keep their IDs (none are renamed).
    ids: std::collections::HashMap<String, String>,
}

impl Renamed {
    fn new(version: &str) -> Self {
        Renamed {
            version: version.to_owned(),
            ids: Default::default(),
        }
    }

    fn id(&self, id: String) -> String {
        self.ids.get(&id).cloned().unwrap_or(id)
    }

    /// `json` without its `event_id`, naming renamed events by their new IDs; remembers its own.
    fn as_sent(&mut self, id: String, json: &str) -> CliResult<String> {
        match self.version.as_str() {
            "1" | "2" => return Ok(json.to_owned()),
            // The room's ID would be renamed too, as its create event's hash.
            "12" => {
                return Err(Failure::User(
                    "the join bench answers for room versions 3 to 11 only".into(),
                ));
            }
            _ => {}
        }
        let mut event: serde_json::Value =
            serde_json::from_str(json).map_err(std::io::Error::from)?;
        let Some(fields) = event.as_object_mut() else {
            return Err(Failure::Store(format!("event {id} is no JSON object")));
        };
        fields.remove("event_id");
        for list in ["auth_events", "prev_events"] {
            if let Some(serde_json::Value::Array(ids)) = fields.get_mut(list) {
                for named in ids.iter_mut() {
                    if let Some(new) = named.as_str().and_then(|old| self.ids.get(old)) {
                        *named = serde_json::Value::String(new.clone());
                    }
                }
            }
        }
        let sent = event.to_string();
        let derived = roomstate::derive_event_id(sent.as_bytes(), &self.version)?;
        self.ids.insert(id, derived);
        Ok(sent)
    }
}

fn median(times: &mut [f64]) -> f64 {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// The joining user's `m.room.member` join, after the room's last event.
fn join_event(rx: &roomstate::ReadTxn, last: EventNid, version: &str) -> CliResult<String> {
    let room_id = "!hq:server0.test";
    let after = rx.state_after(last)?;
    let mut auth = Vec::new();
    for (ty, key) in [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
    ] {
        if version == "12" && ty == "m.room.create" {
            continue;
        }
        if let Some(k) = rx.state_key_of(ty, key)?
            && let Some(event) = after.get(k)
        {
            auth.push(rx.event_id(event)?);
        }
    }
    let event = serde_json::json!({
        "event_id": "$joining-server-joins-hq-bench-0000000000000",
        "room_id": room_id,
        "type": "m.room.member",
        "state_key": "@newcomer:joining.test",
        "sender": "@newcomer:joining.test",
        "origin_server_ts": 1_900_000_000_000u64,
        "prev_events": [rx.event_id(last)?],
        "auth_events": auth,
        "depth": 1,
        "content": {"membership": "join"},
    });
    Ok(event.to_string())
}

/// The joining server: reads the answer and receives it, timing that alone.
pub fn receive(path: &Path) -> CliResult {
    let dir = tempfile_dir()?;
    let store = Store::open(dir.join("joining.redb"));
    let result = store
        .map_err(Failure::from)
        .and_then(|s| receive_into(&s, path));
    let _ = std::fs::remove_dir_all(&dir);
    let figures = result?;
    println!(
        "{}",
        serde_json::to_string(&figures).map_err(std::io::Error::from)?
    );
    Ok(())
}

#[derive(Deserialize)]
struct Envelope {
    kind: String,
    event: Box<serde_json::value::RawValue>,
    #[serde(default)]
    state_before: Option<Vec<String>>,
}

fn receive_into(store: &Store, path: &Path) -> CliResult<JoinFigures> {
    let start = Instant::now();
    let lines = std::io::BufReader::new(std::fs::File::open(path)?).lines();
    // A reader thread parses and compresses each event while this one stores the one before,
    // as a homeserver receiving a `send_join` answer would.
    let (outliers, btree_ops, join, writer_cpu_ms, reader_cpu_ms) = std::thread::scope(|scope| {
        let (ready, prepared) = crossbeam::channel::bounded(4);
        let reader = scope.spawn(move || {
            read_answer(lines, store, &ready).map(|()| crate::bench::thread_cpu_ms())
        });
        let before = crate::bench::thread_cpu_ms();
        let stored = store_outliers(store, &prepared);
        let writer_cpu_ms = crate::bench::thread_cpu_ms() - before;
        drop(prepared);
        let read = reader
            .join()
            .map_err(|_| Failure::Store("the reading thread panicked".into()))?;
        let (outliers, btree_ops, join) = stored?;
        Ok::<_, Failure>((outliers, btree_ops, join, writer_cpu_ms, read?))
    })?;
    let outliers_ms = ms(start);
    let joined = Instant::now();
    let join = join.ok_or_else(|| Failure::Store("the answer has no join".into()))?;
    let state = join.state_before.unwrap_or_default();
    let mut server = RoomServer::new();
    let mut tx = store.write()?;
    let event = InputEvent::new(join.event.get().as_bytes()).with_state_before(&state);
    let got = server.receive(&mut tx, &event)?;
    expect(&got.outcome, &InputOutcome::Accepted)?;
    tx.commit()?;
    let join_ms = ms(joined);
    Ok(JoinFigures {
        state_entries: 0,
        auth_chain_events: 0,
        outliers,
        outliers_ms,
        join_ms,
        total_ms: ms(start),
        peak_rss_bytes: peak_rss(),
        btree_ops_per_outlier: btree_ops as f64 / outliers.max(1) as f64,
        writer_cpu_ms,
        reader_cpu_ms,
        state_ids_ms: 0.0,
        auth_chain_ms: 0.0,
    })
}

/// What the reading thread hands the writing one: an outlier ready to store, or the join.
#[expect(
    clippy::large_enum_variant,
    reason = "all but one of an answer's lines are outliers: boxing them would allocate for each"
)]
enum Answered {
    Outlier(PreparedEvent),
    Join(Envelope),
}

/// Reads the answer's lines, preparing each outlier, until the join (sent last). Events are
/// handed over in chunks: waking the other thread for each would cost more than it saves.
fn read_answer(
    lines: impl Iterator<Item = std::io::Result<String>>,
    store: &Store,
    ready: &crossbeam::channel::Sender<Vec<Answered>>,
) -> CliResult {
    let mut chunk = Vec::with_capacity(64);
    let mut preparer = Preparer::new(store, true);
    for line in lines {
        let envelope: Envelope = serde_json::from_str(&line?)
            .map_err(|e| Failure::Store(format!("a bad answer line: {e}")))?;
        let last = envelope.kind != "outlier";
        chunk.push(if last {
            Answered::Join(envelope)
        } else {
            let event = InputEvent::outlier(envelope.event.get().as_bytes());
            Answered::Outlier(preparer.prepare(&event))
        });
        if chunk.len() == chunk.capacity() || last {
            // The writer stopped on an error of its own, which it reports.
            if ready
                .send(std::mem::replace(&mut chunk, Vec::with_capacity(64)))
                .is_err()
            {
                return Ok(());
            }
        }
        if last {
            return Ok(());
        }
    }
    ready.send(chunk).ok();
    Ok(())
}

/// Stores the outliers as they come, in transactions of [`OUTLIERS_PER_COMMIT`], and returns
/// their count, the B-tree operations that took, and the join.
fn store_outliers(
    store: &Store,
    prepared: &crossbeam::channel::Receiver<Vec<Answered>>,
) -> CliResult<(u64, u64, Option<Envelope>)> {
    let mut server = RoomServer::new();
    let (mut outliers, mut btree_ops) = (0u64, 0u64);
    let mut incoming = prepared.iter().flatten();
    loop {
        let mut tx = store.write()?;
        // The join's commit makes the outliers durable with it: a crash before it loses the
        // join, which starts again.
        tx.set_durable(false)?;
        let mut batch = server.batch(&mut tx);
        let mut join = None;
        let mut ended = true;
        for answered in incoming.by_ref() {
            match answered {
                Answered::Outlier(event) => {
                    let got = batch.receive_prepared(event)?;
                    expect(&got.outcome, &InputOutcome::Outlier)?;
                    outliers += 1;
                }
                Answered::Join(envelope) => {
                    join = Some(envelope);
                    break;
                }
            }
            if outliers.is_multiple_of(OUTLIERS_PER_COMMIT as u64) {
                ended = false;
                break;
            }
        }
        drop(batch);
        btree_ops += tx.btree_ops();
        tx.commit()?;
        if ended || join.is_some() {
            return Ok((outliers, btree_ops, join));
        }
    }
}

fn expect(got: &InputOutcome, want: &InputOutcome) -> CliResult {
    if got == want {
        Ok(())
    } else {
        Err(Failure::Store(format!("expected {want:?}, got {got:?}")))
    }
}
