//! Streaming ingest of Matrix events, one JSON object per line, in the federation (PDU) shape.
//!
//! A line is a bare PDU, received as a new event, or an envelope naming how the event arrives,
//! `{"kind":"outlier"|"new"|"backfill","event":{…PDU…},"state_before":["$id",…]}` (see
//! [`crate::RoomServer`], which receives events the same way one at a time). A new event's state
//! before it comes from its `prev_events`: nothing for the create event, the state after the one
//! prev event, or the combination of the states after several, whose conflicts go to a
//! [`StateResolver`]. Events are committed in batches; a batch that fails
//! leaves the store exactly as it was. `../docs/design.md` describes the rules in full.
//!
//! ```
//! use roomstate::ingest::{IngestOptions, Refuse, ingest};
//! use roomstate::{Store, StoreRead};
//!
//! # fn main() -> roomstate::Result<()> {
//! let lines = concat!(
//!     r#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"origin_server_ts":1,"content":{"creator":"@a:x","room_version":"10"}}"#, "\n",
//!     r#"{"event_id":"$j","room_id":"!r:x","type":"m.room.member","state_key":"@a:x","sender":"@a:x","prev_events":["$c"],"auth_events":["$c"],"origin_server_ts":2,"content":{"membership":"join"}}"#, "\n",
//! );
//! let store = Store::in_memory()?;
//! let report = ingest(&store, lines.as_bytes(), IngestOptions::default(), Refuse)?;
//! assert_eq!(report.events, 2);
//! let rx = store.read()?;
//! let join = rx.event_nid("$j")?.unwrap();
//! assert_eq!(rx.state_after(join)?.len(), 2);
//! # Ok(())
//! # }
//! ```

use crate::error::{Error, Result};
use crate::matrix::auth::Authorizer;
use crate::matrix::input::{Failure, InputKind, Outcome, Request, Verdict, receive};
use crate::matrix::prepare::{Ahead, Preparer, pipelined};
use crate::store::Store;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::error::{BadLine, MAX_EVENT_BYTES, Problem};
pub use crate::matrix::resolver::{
    Refuse, ResolveRequest, StateResolver, StateSource, TRIVIAL_MERGE_MAX_DEPTH, TrivialMerge,
};
pub use crate::matrix::stateres::{AUTH_CHAIN_CACHE_NIDS, MatrixResolver};

/// What to do with a bad line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnBadLine {
    /// Fail with the line's error; nothing of its batch is stored, and every earlier batch
    /// stays committed ([`IngestReport::committed_lines`] says how far). The good lines of the
    /// failing batch are not committed either: the batch is one transaction, so the store is
    /// left at a batch boundary, and running the same input again after fixing the line stores
    /// the rest (events already stored are skipped as duplicates).
    #[default]
    Stop,
    /// Store the good events, and list the bad lines in the report.
    Skip,
}

/// Ingest settings.
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Events per write transaction.
    pub batch_size: usize,
    /// What to do with a bad line.
    pub on_bad_line: OnBadLine,
    /// Whether each batch's commit is flushed to disk before the next batch starts. The last
    /// batch is always durable.
    pub durable_batches: bool,
    /// How many bad lines the report lists in full; it counts all of them.
    pub max_listed_bad_lines: usize,
    /// A trusted import: skip authorization. Every event is accepted as it comes, and auth
    /// events the store does not hold are allowed. Only for histories whose events another
    /// server already authorized (a server's own export, say); federation input must be
    /// checked. Off by default.
    pub trust: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch_size: 10_000,
            on_bad_line: OnBadLine::Stop,
            durable_batches: true,
            max_listed_bad_lines: 1_000,
            trust: false,
        }
    }
}

/// What an ingest run did. Only committed events are counted.
#[derive(Clone, Debug, Default)]
pub struct IngestReport {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Lines whose batches are committed: the first this many lines of input are done.
    pub committed_lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Events stored.
    pub events: u64,
    /// Of which state events.
    pub state_events: u64,
    /// Of the events stored, those that failed the checks given their auth events or the
    /// state before them: stored, changing no state.
    pub rejected: u64,
    /// Of the events stored, those that failed only the check given the room's current state:
    /// stored with their state, moving neither the current state nor the extremities.
    pub soft_failed: u64,
    /// Of the events stored, those stored as outliers (envelope lines of kind `outlier`): no
    /// state, outside their rooms' timelines. Accepted ones count as accepted too.
    pub outliers: u64,
    /// Events already stored (the same JSON, or the same reference hash), skipped: an import
    /// re-run after a kill counts here what the first run committed.
    pub duplicates: u64,
    /// Rooms created.
    pub rooms: u64,
    /// Batches committed.
    pub batches: u64,
    /// Bad lines skipped (with [`OnBadLine::Skip`]).
    pub bad_lines: u64,
    /// B-tree operations the committed batches made ([`crate::store::WriteTxn::btree_ops`]).
    pub btree_ops: u64,
    /// The first of them, in full.
    pub listed_bad_lines: Vec<BadLine>,
    /// Time spent, reading included.
    pub elapsed: Duration,
}

impl IngestReport {
    /// Events stored that passed every check (or were imported as trusted).
    pub fn accepted(&self) -> u64 {
        self.events - self.rejected - self.soft_failed
    }

    /// Events stored per second of `elapsed`.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Ingests every line of `input`, then commits what is left.
pub fn ingest(
    store: &Store,
    input: impl BufRead,
    options: IngestOptions,
    resolver: impl StateResolver,
) -> Result<IngestReport> {
    let mut ingester = Ingester::new(store, options, resolver);
    ingester.read_from(input)?;
    ingester.finish()
}

/// Opens an input: `-` is standard input, and gzip is recognised by its magic bytes (so `.gz`
/// files and gzipped standard input both work).
pub fn open_input(path: &str) -> io::Result<Box<dyn BufRead>> {
    let raw: Box<dyn Read> = if path == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(Path::new(path))?)
    };
    let mut reader = BufReader::with_capacity(1 << 16, raw);
    let magic = reader.fill_buf()?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::bufread::MultiGzDecoder::new(reader);
        Ok(Box::new(BufReader::with_capacity(1 << 16, gz)))
    } else {
        Ok(Box::new(reader))
    }
}

/// Feeds lines to the store in batches. Use [`ingest`] for a whole reader, or push lines one by
/// one and call [`finish`](Ingester::finish).
pub struct Ingester<'s, R> {
    store: &'s Store,
    options: IngestOptions,
    resolver: R,
    authorizer: Authorizer,
    /// Prepares each batch's events just ahead of the writer (on a second thread for a batch of
    /// 64 lines or more), remembering room versions across batches.
    preparer: Preparer<'s>,
    pending: Vec<Pending>,
    report: IngestReport,
    started: Instant,
    source: Option<Arc<str>>,
    source_line: u64,
}

/// A line waiting for its batch. An oversized line keeps its place, so that bad lines are met
/// and reported in line order.
struct Pending {
    source: Option<Arc<str>>,
    line: u64,
    body: Body,
}

enum Body {
    Json(Vec<u8>),
    TooLarge(usize),
}

impl Pending {
    fn bad(&self, event_id: Option<String>, problem: Problem) -> BadLine {
        BadLine {
            source: self.source.as_deref().map(str::to_owned),
            line: self.line,
            event_id,
            problem,
        }
    }
}

impl<R> fmt::Debug for Ingester<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ingester")
            .field("options", &self.options)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct BatchTally {
    events: u64,
    state_events: u64,
    rejected: u64,
    soft_failed: u64,
    outliers: u64,
    duplicates: u64,
    rooms: u64,
}

impl BatchTally {
    fn count(&mut self, outcome: &Outcome) {
        if outcome.already_stored {
            self.duplicates += 1;
            return;
        }
        self.events += 1;
        self.state_events += u64::from(outcome.state);
        self.outliers += u64::from(outcome.outlier);
        self.rooms += u64::from(outcome.new_room);
        match &outcome.rejection {
            Some(r) if r.soft_failed => self.soft_failed += 1,
            Some(_) => self.rejected += 1,
            None => {}
        }
    }
}

impl<'s, R: StateResolver> Ingester<'s, R> {
    /// A new ingester writing to `store`.
    pub fn new(store: &'s Store, options: IngestOptions, resolver: R) -> Self {
        let capacity = options.batch_size.clamp(1, 100_000);
        let preparer = Preparer::new(store, !options.trust);
        Ingester {
            store,
            options,
            resolver,
            authorizer: Authorizer::default(),
            preparer,
            pending: Vec::with_capacity(capacity),
            report: IngestReport::default(),
            started: Instant::now(),
            source: None,
            source_line: 0,
        }
    }

    /// Names the input the following lines come from, and numbers them from 1 again. Bad lines
    /// name it.
    pub fn set_source(&mut self, name: &str) {
        self.source = Some(Arc::from(name));
        self.source_line = 0;
    }

    /// What has been committed so far.
    pub fn report(&self) -> &IngestReport {
        &self.report
    }

    /// Reads `input` to its end, line by line, never holding more than one batch.
    pub fn read_from(&mut self, input: impl BufRead) -> Result<()> {
        self.read_from_with(input, |_| {})
    }

    /// Like [`read_from`](Self::read_from), calling `on_commit` with the report after each
    /// committed batch, for progress display.
    pub fn read_from_with(
        &mut self,
        mut input: impl BufRead,
        mut on_commit: impl FnMut(&IngestReport),
    ) -> Result<()> {
        let mut line = Vec::new();
        // One byte more than an event may take, for a carriage return before the newline.
        let limit = MAX_EVENT_BYTES + 1;
        loop {
            let batches = self.report.batches;
            let read = read_bounded_line(&mut input, &mut line, limit)?;
            if read.consumed == 0 {
                return Ok(());
            }
            self.report.bytes += read.consumed as u64;
            if read.oversized {
                self.push(Body::TooLarge(read.line_len))?;
            } else {
                self.push_line(&line)?;
            }
            if self.report.batches != batches {
                on_commit(&self.report);
            }
        }
    }

    /// Adds one line (without its newline). Blank lines are counted and skipped.
    pub fn push_line(&mut self, line: &[u8]) -> Result<()> {
        let trimmed = line.trim_ascii();
        if trimmed.len() > MAX_EVENT_BYTES {
            return self.push(Body::TooLarge(trimmed.len()));
        }
        if trimmed.is_empty() {
            self.report.lines += 1;
            self.source_line += 1;
            return Ok(());
        }
        self.push(Body::Json(trimmed.to_vec()))
    }

    fn push(&mut self, body: Body) -> Result<()> {
        self.report.lines += 1;
        self.source_line += 1;
        self.pending.push(Pending {
            source: self.source.clone(),
            line: self.source_line,
            body,
        });
        if self.pending.len() >= self.options.batch_size.max(1) {
            self.flush(self.options.durable_batches)?;
        }
        Ok(())
    }

    /// Commits the last batch durably and returns the report.
    pub fn finish(mut self) -> Result<IngestReport> {
        self.flush(true)?;
        self.report.elapsed = self.started.elapsed();
        Ok(self.report)
    }

    fn reject(&mut self, bad: BadLine) -> Result<()> {
        if self.options.on_bad_line == OnBadLine::Stop {
            return Err(Error::BadLine(Box::new(bad)));
        }
        self.report.bad_lines += 1;
        if self.report.listed_bad_lines.len() < self.options.max_listed_bad_lines {
            self.report.listed_bad_lines.push(bad);
        }
        Ok(())
    }

    /// Commits the pending lines as one transaction. A bad line found after its event began
    /// writing aborts the attempt, and the batch is redone without that line.
    fn flush(&mut self, durable: bool) -> Result<()> {
        crate::error::guard(|| self.flush_batch(durable))
    }

    fn flush_batch(&mut self, durable: bool) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut late: Vec<usize> = Vec::new();
        let mut late_bad = Vec::new();
        loop {
            let mut tx = self.store.write()?;
            tx.set_durable(durable)?;
            let mut tally = BatchTally::default();
            let mut early_bad = Vec::new();
            let retry = {
                let mut w = tx.writer();
                let options = &self.options;
                let (resolver, authorizer) = (&mut self.resolver, &mut self.authorizer);
                let authorizing = !options.trust;
                let preparer = &mut self.preparer;
                let stopped = pipelined(
                    &self.pending,
                    |pending| line_ahead(pending, preparer),
                    |index, pending, ahead| {
                        if late.contains(&index) {
                            return Ok(ControlFlow::Continue(()));
                        }
                        let auth = authorizing.then_some(&mut *authorizer);
                        match receive_pending(&mut w, resolver, auth, pending, ahead) {
                            Ok(outcome) => tally.count(&outcome),
                            Err(Failed::Store(e)) => return Err(e),
                            Err(Failed::Early(bad)) => {
                                if options.on_bad_line == OnBadLine::Stop {
                                    return Err(Error::BadLine(Box::new(bad)));
                                }
                                early_bad.push(bad);
                            }
                            Err(Failed::Late(bad)) => {
                                if options.on_bad_line == OnBadLine::Stop {
                                    return Err(Error::BadLine(Box::new(bad)));
                                }
                                late.push(index);
                                late_bad.push(bad);
                                return Ok(ControlFlow::Break(()));
                            }
                        }
                        Ok(ControlFlow::Continue(()))
                    },
                )?;
                // Snapshots computed on the way (the state after a merged-away branch, say) that
                // no event or room ended up using go now, not at the next compaction.
                if stopped.is_none() {
                    w.collect_garbage()?;
                }
                stopped.is_some()
            };
            if retry {
                tx.abort()?;
                self.resolver.rolled_back();
                self.authorizer.rolled_back();
                continue;
            }
            let btree_ops = tx.btree_ops();
            tx.commit()?;
            self.report.btree_ops += btree_ops;
            let mut bad: Vec<BadLine> = early_bad.into_iter().chain(late_bad).collect();
            bad.sort_by_key(|b| b.line);
            for b in bad {
                self.reject(b)?;
            }
            self.report.events += tally.events;
            self.report.state_events += tally.state_events;
            self.report.rejected += tally.rejected;
            self.report.soft_failed += tally.soft_failed;
            self.report.outliers += tally.outliers;
            self.report.duplicates += tally.duplicates;
            self.report.rooms += tally.rooms;
            self.report.batches += 1;
            self.report.committed_lines = self.report.lines;
            self.pending.clear();
            return Ok(());
        }
    }
}

/// A pending line's failure, placed at its line.
enum Failed {
    Early(BadLine),
    Late(BadLine),
    Store(Error),
}

fn receive_pending<R: StateResolver>(
    w: &mut crate::store::Writer<'_>,
    resolver: &mut R,
    auth: Option<&mut Authorizer>,
    pending: &Pending,
    mut ahead: Option<LineAhead>,
) -> Result<Outcome, Failed> {
    let bytes = match &pending.body {
        Body::Json(bytes) => bytes,
        Body::TooLarge(n) => return Err(Failed::Early(pending.bad(None, Problem::TooLarge(*n)))),
    };
    // Most lines are bare PDUs: an envelope is looked for only in a line with neither an event
    // ID nor a type of its own, which stored nothing.
    let mut auth = auth;
    let bare = request_of(&None, bytes, &mut ahead);
    let verdict = match receive(w, resolver, auth.as_deref_mut(), bare) {
        Err(
            no_id @ Failure::Early {
                problem: Problem::NotAPdu,
                ..
            },
        ) => match read_envelope(bytes).map_err(|p| Failed::Early(pending.bad(None, p)))? {
            Some(envelope) => {
                let envelope = Some(envelope);
                let request = request_of(&envelope, bytes, &mut ahead);
                receive(w, resolver, auth, request)
            }
            None => Err(no_id),
        },
        other => other,
    };
    let verdict = verdict.map_err(|failure| match failure {
        Failure::Early { event_id, problem } => Failed::Early(pending.bad(event_id, problem)),
        Failure::Late { event_id, problem } => Failed::Late(pending.bad(Some(event_id), problem)),
        Failure::Store(e) => Failed::Store(e),
    })?;
    match verdict {
        Verdict::Stored { outcome, .. } => Ok(outcome),
        Verdict::Missing { event_id, missing } => {
            Err(Failed::Early(pending.bad(event_id, missing.problem())))
        }
    }
}

/// The fields of an envelope line, `{"kind":…,"event":{…},"state_before":[…]}`. A bare PDU
/// has none of them.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    state_before: Option<Vec<Cow<'a, str>>>,
}

/// A line's envelope, or `None` for a bare PDU. An object with a `kind` or an `event` is an
/// envelope, and needs both.
fn read_envelope(line: &[u8]) -> Result<Option<Envelope<'_>>, Problem> {
    let Ok(envelope) = serde_json::from_slice::<Envelope<'_>>(line) else {
        // Not an envelope's shape: the PDU parser says what is wrong with it.
        return Ok(None);
    };
    match (&envelope.kind, envelope.event) {
        (None, None) if envelope.state_before.is_none() => Ok(None),
        (Some(kind), Some(_)) => {
            kind.parse::<InputKind>()?;
            Ok(Some(envelope))
        }
        (None, _) => Err(Problem::MissingField("kind")),
        (_, None) => Err(Problem::MissingField("event")),
    }
}

/// The work done ahead for a line's PDU, on the preparing thread: where the PDU sits in the
/// line (the line itself, or an envelope's `event`), and what was done to it.
struct LineAhead {
    start: usize,
    len: usize,
    ahead: Ahead,
}

/// Prepares the PDU a line holds. The writer uses the work only if it receives that same span
/// of the line: it decides for itself what the line holds, as if nothing had been done ahead.
fn line_ahead(pending: &Pending, preparer: &mut Preparer<'_>) -> Option<LineAhead> {
    let Body::Json(line) = &pending.body else {
        return None;
    };
    let envelope = read_envelope(line).ok().flatten();
    let pdu = match envelope.as_ref().and_then(|e| e.event) {
        Some(raw) => raw.get().as_bytes(),
        None => line.as_slice(),
    };
    Some(LineAhead {
        start: offset_in(line, pdu),
        len: pdu.len(),
        ahead: preparer.ahead(pdu),
    })
}

/// Where `part`, a slice of `line`, starts in it.
fn offset_in(line: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize)
}

/// What to receive for a line: its envelope's event, or the bare PDU as a new event, with the
/// work done ahead for it, if any was.
fn request_of<'a>(
    envelope: &'a Option<Envelope<'a>>,
    line: &'a [u8],
    ahead: &mut Option<LineAhead>,
) -> Request<'a> {
    let mut ahead_for = |json: &[u8]| {
        let same = |a: &&mut LineAhead| a.start == offset_in(line, json) && a.len == json.len();
        match ahead.as_mut().filter(same) {
            Some(_) => ahead.take().map(|a| a.ahead).unwrap_or_default(),
            None => Ahead::default(),
        }
    };
    match envelope {
        None => Request {
            kind: InputKind::New,
            json: line,
            state_before: None,
            ahead: ahead_for(line),
        },
        Some(e) => Request {
            // The kind was checked by `read_envelope`.
            kind: e
                .kind
                .as_deref()
                .and_then(|k| k.parse().ok())
                .unwrap_or_default(),
            json: e.event.map_or(line, |raw| raw.get().as_bytes()),
            state_before: e
                .state_before
                .as_ref()
                .map(|ids| ids.iter().map(|id| &**id).collect()),
            ahead: ahead_for(e.event.map_or(line, |raw| raw.get().as_bytes())),
        },
    }
}

struct LineRead {
    /// Bytes taken from the input, newline included.
    consumed: usize,
    /// Bytes of the line, newline excluded.
    line_len: usize,
    /// Whether the line was longer than the limit (and `buf` holds none of it).
    oversized: bool,
}

/// Reads one line into `buf` (newline dropped), keeping at most `limit` bytes; the rest of a
/// longer line is read and dropped.
fn read_bounded_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<LineRead> {
    buf.clear();
    let mut consumed = 0;
    let mut line_len = 0;
    let mut oversized = false;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(LineRead {
                consumed,
                line_len,
                oversized,
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], i + 1),
            None => (available, available.len()),
        };
        if !oversized && buf.len() + chunk.len() <= limit {
            buf.extend_from_slice(chunk);
        } else {
            oversized = true;
            buf.clear();
        }
        let ended = done > chunk.len();
        line_len += chunk.len();
        input.consume(done);
        consumed += done;
        if ended {
            return Ok(LineRead {
                consumed,
                line_len,
                oversized,
            });
        }
    }
}
