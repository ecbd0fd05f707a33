//! Streaming ingest of Matrix events, one JSON object per line, in the federation (PDU) shape.
//!
//! Each event's state before it comes from its `prev_events`: nothing for the create event, the
//! state after the one prev event, or the combination of the states after several, whose
//! conflicts go to a [`StateResolver`]. Events are committed in batches; a batch that fails
//! leaves the store exactly as it was. `../docs/design.md` describes the rules in full.
//!
//! ```
//! use roomstate::ingest::{IngestOptions, Refuse, ingest};
//! use roomstate::{Store, StoreRead};
//!
//! # fn main() -> roomstate::Result<()> {
//! let lines = concat!(
//!     r#"{"event_id":"$c","room_id":"!r:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"content":{"room_version":"10"}}"#, "\n",
//!     r#"{"event_id":"$j","room_id":"!r:x","type":"m.room.member","state_key":"@a:x","sender":"@a:x","prev_events":["$c"],"content":{"membership":"join"}}"#, "\n",
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
use crate::intern;
use crate::membership::Membership;
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::record::{EventRecord, RoomRecord};
use crate::resolve::{Combined, StateMap};
use crate::store::Store;
use crate::write::Writer;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::borrow::Cow;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "state-res")]
pub use crate::matrix::{AUTH_CHAIN_CACHE_NIDS, MatrixResolver};

/// The spec's limit on an event's size, which also bounds the memory one line may take.
pub const MAX_EVENT_BYTES: usize = 65_536;

/// What to do with a bad line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnBadLine {
    /// Fail with the line's error; nothing of its batch is stored.
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
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            batch_size: 10_000,
            on_bad_line: OnBadLine::Stop,
            durable_batches: true,
            max_listed_bad_lines: 1_000,
        }
    }
}

/// What is wrong with a bad line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The line is not JSON.
    NotJson(String),
    /// The JSON does not have the shape of an event (a field of the wrong type, say).
    NotAnEvent(String),
    /// The line is longer than an event may be.
    TooLarge(usize),
    /// A required field is absent.
    MissingField(&'static str),
    /// A field is over the spec's 255-byte limit, or empty where it must not be.
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A prev event the store has never seen.
    UnknownPrevEvent(String),
    /// A prev event that belongs to another room.
    PrevEventInOtherRoom(String),
    /// An auth event that belongs to another room.
    AuthEventInOtherRoom(String),
    /// The event ID is already stored.
    DuplicateEvent,
    /// No prev events, but not the room's create event.
    NoPrevEvents,
    /// A create event for a room the store already has.
    RoomExists,
    /// The resolver could not settle the states: an unsupported room version, or state
    /// resolution failed (an auth event it needs is missing, say).
    ResolutionFailed(String),
    /// States disagree and the resolver did not settle them. Lists the conflicted
    /// (type, state key) pairs.
    NeedsStateResolution(Vec<(String, String)>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotJson(e) => write!(f, "not JSON: {e}"),
            Problem::NotAnEvent(e) => write!(f, "not an event: {e}"),
            Problem::TooLarge(n) => write!(f, "line of {n} bytes exceeds {MAX_EVENT_BYTES}"),
            Problem::MissingField(field) => write!(f, "missing field `{field}`"),
            Problem::BadField { field, reason } => write!(f, "field `{field}` is {reason}"),
            Problem::UnknownPrevEvent(id) => write!(f, "unknown prev event {id}"),
            Problem::PrevEventInOtherRoom(id) => write!(f, "prev event {id} is in another room"),
            Problem::AuthEventInOtherRoom(id) => write!(f, "auth event {id} is in another room"),
            Problem::DuplicateEvent => f.write_str("event already stored"),
            Problem::NoPrevEvents => f.write_str("no prev_events, but not a create event"),
            Problem::RoomExists => f.write_str("create event for a room that already exists"),
            Problem::ResolutionFailed(why) => write!(f, "state resolution failed: {why}"),
            Problem::NeedsStateResolution(keys) => {
                write!(f, "needs state resolution of {} key(s):", keys.len())?;
                for (ty, key) in keys.iter().take(10) {
                    write!(f, " ({ty}, {key:?})")?;
                }
                Ok(())
            }
        }
    }
}

/// A line that was refused, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// The input it came from, when the ingester was told (see [`Ingester::set_source`]).
    pub source: Option<String>,
    /// The line number within its input, from 1.
    pub line: u64,
    /// The event ID, when the line had one.
    pub event_id: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        write!(f, "line {}", self.line)?;
        if let Some(id) = &self.event_id {
            write!(f, " (event {id})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

/// What a [`StateResolver`] is asked to settle.
#[derive(Debug)]
#[non_exhaustive]
pub struct ResolveRequest<'a> {
    /// The room.
    pub room: RoomNid,
    /// The room's version, which picks the resolution algorithm.
    pub room_version: &'a str,
    /// The event being ingested when the conflict arose.
    pub event_id: &'a str,
    /// The states to combine, in full.
    pub states: &'a [StateMap],
    /// Their combination: what they agree on, and the conflicted keys with candidates.
    pub combined: &'a Combined,
}

/// What a resolver may read while it works: the store as the ingest batch has written it so
/// far.
pub trait StateSource {
    /// An event's record, if stored.
    fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>>;
    /// The event holding `key` in a snapshot.
    fn lookup(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>>;
    /// An event's ID.
    fn event_id(&mut self, event: EventNid) -> Result<String>;
    /// An event's JSON as ingested, if stored.
    fn event_json(&mut self, event: EventNid) -> Result<Option<String>>;
    /// The NID of an event ID, if interned.
    fn event_nid(&mut self, event_id: &str) -> Result<Option<EventNid>>;
    /// An event type's string.
    fn event_type(&mut self, ty: TypeNid) -> Result<String>;
    /// A state key's string.
    fn state_key(&mut self, key: StateKeyNid) -> Result<String>;
    /// The NID of a state key, if interned.
    fn state_key_nid(&mut self, state_key: &str) -> Result<Option<StateKeyNid>>;
    /// The NID of an event type, if interned.
    fn type_nid(&mut self, event_type: &str) -> Result<Option<TypeNid>>;
}

impl StateSource for Writer<'_> {
    fn event(&mut self, event: EventNid) -> Result<Option<EventRecord>> {
        Writer::event(self, event)
    }
    fn lookup(&mut self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        self.lookup_key(snapshot, key)
    }
    fn event_id(&mut self, event: EventNid) -> Result<String> {
        self.string(intern::EVENT, event.get())
    }
    fn event_json(&mut self, event: EventNid) -> Result<Option<String>> {
        Writer::event_json_text(self, event)
    }
    fn event_nid(&mut self, event_id: &str) -> Result<Option<EventNid>> {
        Ok(self
            .lookup_nid(intern::EVENT, event_id)?
            .and_then(EventNid::new))
    }
    fn event_type(&mut self, ty: TypeNid) -> Result<String> {
        self.string(intern::TYPE, ty.get())
    }
    fn state_key(&mut self, key: StateKeyNid) -> Result<String> {
        self.string(intern::STATE_KEY, key.get())
    }
    fn state_key_nid(&mut self, state_key: &str) -> Result<Option<StateKeyNid>> {
        Ok(self
            .lookup_nid(intern::STATE_KEY, state_key)?
            .and_then(StateKeyNid::new))
    }
    fn type_nid(&mut self, event_type: &str) -> Result<Option<TypeNid>> {
        Ok(self
            .lookup_nid(intern::TYPE, event_type)?
            .and_then(TypeNid::new))
    }
}

/// Settles conflicted state. Ingest calls it when states to combine disagree on a key.
pub trait StateResolver {
    /// The resolved state, or `None` to refuse: the event is then reported as needing state
    /// resolution.
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>>;

    /// Called when the writes it has read were rolled back (a batch aborted to be redone): a
    /// resolver that caches what it read from the store must forget it, since the NIDs of
    /// rolled-back rows are handed out again.
    fn rolled_back(&mut self) {}
}

/// A resolver that settles nothing: an event whose states disagree at all is a bad line naming
/// the conflicted keys.
#[derive(Clone, Copy, Debug, Default)]
pub struct Refuse;

impl StateResolver for Refuse {
    fn resolve(
        &mut self,
        _request: &ResolveRequest<'_>,
        _source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        Ok(None)
    }
}

/// Settles only the disagreements that are not contests: for each conflicted key it takes the
/// candidate whose own history replaced every other candidate (following the key back through
/// each event's state before it), and a state that lacks the key contests nothing. This is what
/// a fork looks like when its branches change different keys. Two concurrent changes to the
/// same key are a real conflict and are refused, as [`Refuse`] would.
///
/// It is not Matrix state resolution: it applies no authorization rules, so a branch that
/// changed power levels does not invalidate events of the other. Use it where histories are
/// trusted, and a full state-resolution implementation where they are not.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrivialMerge;

/// How far back [`TrivialMerge`] follows one key's history before calling a conflict real.
pub const TRIVIAL_MERGE_MAX_DEPTH: usize = 10_000;

impl StateResolver for TrivialMerge {
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        let mut entries = request.combined.unconflicted.entries().to_vec();
        for conflict in &request.combined.conflicted {
            match superseding(source, conflict.key, &conflict.candidates)? {
                Some(event) => entries.push(crate::StateEntry {
                    key: conflict.key,
                    event,
                }),
                None => return Ok(None),
            }
        }
        Ok(Some(StateMap::from_entries(entries)))
    }
}

/// The candidate whose history for `key` holds every other candidate, if there is one.
fn superseding(
    source: &mut dyn StateSource,
    key: StateKey,
    candidates: &[EventNid],
) -> Result<Option<EventNid>> {
    for &winner in candidates {
        let mut others: Vec<EventNid> = candidates
            .iter()
            .copied()
            .filter(|c| *c != winner)
            .collect();
        let mut current = winner;
        for _ in 0..TRIVIAL_MERGE_MAX_DEPTH {
            if others.is_empty() {
                break;
            }
            let Some(record) = source.event(current)? else {
                break;
            };
            let Some(previous) = source.lookup(record.state_before, key)? else {
                break;
            };
            others.retain(|o| *o != previous);
            current = previous;
        }
        if others.is_empty() {
            return Ok(Some(winner));
        }
    }
    Ok(None)
}

impl<R: StateResolver + ?Sized> StateResolver for &mut R {
    fn resolve(
        &mut self,
        request: &ResolveRequest<'_>,
        source: &mut dyn StateSource,
    ) -> Result<Option<StateMap>> {
        (**self).resolve(request, source)
    }

    fn rolled_back(&mut self) {
        (**self).rolled_back();
    }
}

/// What an ingest run did. Only committed events are counted.
#[derive(Clone, Debug, Default)]
pub struct IngestReport {
    /// Lines read, blank ones included.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Events stored.
    pub events: u64,
    /// Of which state events.
    pub state_events: u64,
    /// Rooms created.
    pub rooms: u64,
    /// Batches committed.
    pub batches: u64,
    /// Bad lines skipped (with [`OnBadLine::Skip`]).
    pub bad_lines: u64,
    /// The first of them, in full.
    pub listed_bad_lines: Vec<BadLine>,
    /// Time spent, reading included.
    pub elapsed: Duration,
}

impl IngestReport {
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

enum Failure {
    /// Found before the event wrote anything: the batch can go on without it.
    Early(BadLine),
    /// Found after the event wrote: the batch must be redone without it.
    Late(BadLine),
    Store(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

#[derive(Default)]
struct BatchTally {
    events: u64,
    state_events: u64,
    rooms: u64,
}

impl<'s, R: StateResolver> Ingester<'s, R> {
    /// A new ingester writing to `store`.
    pub fn new(store: &'s Store, options: IngestOptions, resolver: R) -> Self {
        let capacity = options.batch_size.clamp(1, 100_000);
        Ingester {
            store,
            options,
            resolver,
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
            let mut retry = false;
            {
                let mut w = tx.writer();
                for (index, pending) in self.pending.iter().enumerate() {
                    if late.contains(&index) {
                        continue;
                    }
                    match ingest_one(&mut w, &mut self.resolver, pending) {
                        Ok(outcome) => outcome.count(&mut tally),
                        Err(Failure::Store(e)) => return Err(e),
                        Err(Failure::Early(bad)) => {
                            if self.options.on_bad_line == OnBadLine::Stop {
                                return Err(Error::BadLine(Box::new(bad)));
                            }
                            early_bad.push(bad);
                        }
                        Err(Failure::Late(bad)) => {
                            if self.options.on_bad_line == OnBadLine::Stop {
                                return Err(Error::BadLine(Box::new(bad)));
                            }
                            late.push(index);
                            late_bad.push(bad);
                            retry = true;
                            break;
                        }
                    }
                }
                // Snapshots computed on the way (the state after a merged-away branch, say) that
                // no event or room ended up using go now, not at the next compaction.
                if !retry {
                    w.collect_garbage()?;
                }
            }
            if retry {
                tx.abort()?;
                self.resolver.rolled_back();
                continue;
            }
            tx.commit()?;
            let mut bad: Vec<BadLine> = early_bad.into_iter().chain(late_bad).collect();
            bad.sort_by_key(|b| b.line);
            for b in bad {
                self.reject(b)?;
            }
            self.report.events += tally.events;
            self.report.state_events += tally.state_events;
            self.report.rooms += tally.rooms;
            self.report.batches += 1;
            self.pending.clear();
            return Ok(());
        }
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

/// An event ID in `prev_events` or `auth_events`: a plain string (room version 3 and later) or
/// an `[id, hashes]` pair (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef<'a> {
    Id(#[serde(borrow)] Cow<'a, str>),
    Pair(#[serde(borrow)] Cow<'a, str>, IgnoredAny),
}

impl<'a> EventRef<'a> {
    fn id(&self) -> &str {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

/// A content field that only some event types give a meaning to: any JSON value is accepted,
/// and only a string is read.
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

impl Loose<'_> {
    fn text(&self) -> Option<&str> {
        match self {
            Loose::Text(s) => Some(s),
            Loose::Other(_) => None,
        }
    }
}

#[derive(Deserialize, Default)]
struct Content<'a> {
    #[serde(borrow, default)]
    membership: Option<Loose<'a>>,
    #[serde(borrow, default)]
    room_version: Option<Loose<'a>>,
}

#[derive(Deserialize)]
struct Pdu<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prev_events: Option<Vec<EventRef<'a>>>,
    #[serde(borrow, default)]
    auth_events: Option<Vec<EventRef<'a>>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A line's event, checked for shape and sizes.
struct Parsed<'a> {
    event_id: Cow<'a, str>,
    room_id: Cow<'a, str>,
    event_type: Cow<'a, str>,
    state_key: Option<Cow<'a, str>>,
    prev_events: Vec<EventRef<'a>>,
    auth_events: Vec<EventRef<'a>>,
    content: Content<'a>,
}

impl Parsed<'_> {
    fn is_create(&self) -> bool {
        self.event_type == "m.room.create" && self.state_key.as_deref() == Some("")
    }
}

fn parse(bytes: &[u8]) -> Result<Parsed<'_>, (Option<String>, Problem)> {
    // serde_json skips the strings of ignored fields without checking their UTF-8, and the line
    // is stored as the event's JSON text: check it whole.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| (None, Problem::NotJson(format!("not UTF-8: {e}"))))?;
    let pdu: Pdu<'_> = serde_json::from_str(text).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => Problem::NotAnEvent(e.to_string()),
            _ => Problem::NotJson(e.to_string()),
        };
        (None, problem)
    })?;
    let id = pdu.event_id.as_deref().map(str::to_owned);
    let fail = |p| (id.clone(), p);
    let missing = |field| fail(Problem::MissingField(field));
    let event_id = pdu.event_id.ok_or_else(|| missing("event_id"))?;
    let room_id = pdu.room_id.ok_or_else(|| missing("room_id"))?;
    let event_type = pdu.event_type.ok_or_else(|| missing("type"))?;
    let prev_events = pdu.prev_events.ok_or_else(|| missing("prev_events"))?;
    let auth_events = pdu.auth_events.unwrap_or_default();
    let checks = [
        ("event_id", Some(&*event_id), false),
        ("room_id", Some(&*room_id), false),
        ("type", Some(&*event_type), true),
        ("state_key", pdu.state_key.as_deref(), true),
        ("sender", pdu.sender.as_deref(), true),
    ];
    let refs = prev_events
        .iter()
        .map(|r| ("prev_events", Some(r.id()), false))
        .chain(
            auth_events
                .iter()
                .map(|r| ("auth_events", Some(r.id()), false)),
        );
    for (field, value, may_be_empty) in checks.into_iter().chain(refs) {
        if let Some(v) = value {
            check_field(field, v, may_be_empty).map_err(fail)?;
        }
    }
    Ok(Parsed {
        event_id,
        room_id,
        event_type,
        state_key: pdu.state_key,
        prev_events,
        auth_events,
        content: pdu.content.unwrap_or_default(),
    })
}

fn check_field(field: &'static str, value: &str, may_be_empty: bool) -> Result<(), Problem> {
    match intern::id_problem(value, may_be_empty) {
        Some(reason) => Err(Problem::BadField { field, reason }),
        None => Ok(()),
    }
}

/// What one stored event adds to the report.
struct Outcome {
    state: bool,
    new_room: bool,
}

impl Outcome {
    fn count(&self, tally: &mut BatchTally) {
        tally.events += 1;
        tally.state_events += u64::from(self.state);
        tally.rooms += u64::from(self.new_room);
    }
}

/// The checks that need the store but write nothing.
struct Checked {
    room: Option<(RoomNid, RoomRecord)>,
    prevs: Vec<EventNid>,
}

fn check(w: &mut Writer<'_>, p: &Parsed<'_>) -> Result<Result<Checked, Problem>> {
    if let Some(nid) = w
        .lookup_nid(intern::EVENT, &p.event_id)?
        .and_then(EventNid::new)
        && w.event_room(nid)?.is_some()
    {
        return Ok(Err(Problem::DuplicateEvent));
    }
    let room_nid = w
        .lookup_nid(intern::ROOM, &p.room_id)?
        .and_then(RoomNid::new);
    let room = match room_nid {
        Some(nid) => w.room(nid)?.map(|r| (nid, r)),
        None => None,
    };
    if p.prev_events.is_empty() {
        return Ok(match (p.is_create(), room) {
            (false, _) => Err(Problem::NoPrevEvents),
            (true, Some(_)) => Err(Problem::RoomExists),
            (true, None) => Ok(Checked {
                room: None,
                prevs: Vec::new(),
            }),
        });
    }
    let mut prevs = Vec::with_capacity(p.prev_events.len());
    for r in &p.prev_events {
        let id = r.id();
        let Some(nid) = w.lookup_nid(intern::EVENT, id)?.and_then(EventNid::new) else {
            return Ok(Err(Problem::UnknownPrevEvent(id.to_owned())));
        };
        let Some(prev_room) = w.event_room(nid)? else {
            return Ok(Err(Problem::UnknownPrevEvent(id.to_owned())));
        };
        if Some(prev_room) != room_nid {
            return Ok(Err(Problem::PrevEventInOtherRoom(id.to_owned())));
        }
        if !prevs.contains(&nid) {
            prevs.push(nid);
        }
    }
    // Auth events may be unknown (they are interned for later), but a known one must be of this
    // room: state resolution follows them, and a purge of another room would leave them dangling.
    for r in &p.auth_events {
        let id = r.id();
        if let Some(nid) = w.lookup_nid(intern::EVENT, id)?.and_then(EventNid::new)
            && let Some(auth_room) = w.event_room(nid)?
            && Some(auth_room) != room_nid
        {
            return Ok(Err(Problem::AuthEventInOtherRoom(id.to_owned())));
        }
    }
    match room {
        Some(room) => Ok(Ok(Checked {
            room: Some(room),
            prevs,
        })),
        // A prev event in this room implies the room exists; a record missing means damage.
        None => Err(Error::corrupt(
            "rooms",
            &*p.room_id,
            "room has events but no record",
        )),
    }
}

fn ingest_one<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    pending: &Pending,
) -> Result<Outcome, Failure> {
    let bytes = match &pending.body {
        Body::Json(bytes) => bytes,
        Body::TooLarge(n) => return Err(Failure::Early(pending.bad(None, Problem::TooLarge(*n)))),
    };
    let parsed = parse(bytes)
        .map_err(|(event_id, problem)| Failure::Early(pending.bad(event_id, problem)))?;
    let bad = |problem| pending.bad(Some(parsed.event_id.to_string()), problem);
    let checked = check(w, &parsed)?.map_err(|p| Failure::Early(bad(p)))?;
    store_event(w, resolver, &parsed, checked, bytes).map_err(|f| match f {
        Failure::Late(b) => Failure::Late(bad(b.problem)),
        other => other,
    })
}

fn nid<T>(raw: u64, make: fn(u64) -> Option<T>, what: &'static str) -> Result<T> {
    make(raw).ok_or_else(|| Error::corrupt("meta", what, "zero NID"))
}

/// Writes one checked event: its NIDs, record, JSON, and its room's bookkeeping.
fn store_event<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    p: &Parsed<'_>,
    checked: Checked,
    json: &[u8],
) -> Result<Outcome, Failure> {
    let [event] = intern_one(w, intern::EVENT, &p.event_id, EventNid::new)?;
    let [event_type] = intern_one(w, intern::TYPE, &p.event_type, TypeNid::new)?;
    let state_key = match &p.state_key {
        Some(k) => Some(intern_one(w, intern::STATE_KEY, k, StateKeyNid::new)?[0]),
        None => None,
    };
    let auth_ids: Vec<&str> = p.auth_events.iter().map(EventRef::id).collect();
    let auth_events = w
        .intern(intern::EVENT, &auth_ids)?
        .into_iter()
        .map(|n| nid(n, EventNid::new, "next_event_nid"))
        .collect::<Result<Vec<_>>>()?;
    let new_room = checked.room.is_none();
    let (room, mut room_record) = match checked.room {
        Some(r) => r,
        None => {
            let [room] = intern_one(w, intern::ROOM, &p.room_id, RoomNid::new)?;
            let version = p
                .content
                .room_version
                .as_ref()
                .and_then(Loose::text)
                .unwrap_or("1")
                .to_owned();
            let record = RoomRecord {
                version,
                current_state: SnapshotNid::EMPTY,
                latest_events: Vec::new(),
                event_count: 0,
            };
            (room, record)
        }
    };
    let ctx = Context {
        room,
        version: &room_record.version,
        event_id: &p.event_id,
    };
    // A merge of exactly the room's forward extremities was already combined into its current
    // state when the last of them arrived.
    let same_set =
        |a: &[EventNid], b: &[EventNid]| a.len() == b.len() && a.iter().all(|e| b.contains(e));
    let before = if checked.prevs.len() > 1 && same_set(&checked.prevs, &room_record.latest_events)
    {
        room_record.current_state
    } else {
        state_of_all(w, resolver, &ctx, &checked.prevs)?
    };
    let membership = match (
        event_type,
        p.content.membership.as_ref().and_then(Loose::text),
    ) {
        (TypeNid::MEMBER, Some(m)) => m.parse::<Membership>().ok(),
        _ => None,
    };
    let record = EventRecord {
        room,
        event_type,
        state_key,
        state_before: before,
        rejected: false,
        prev_events: checked.prevs.clone(),
        auth_events,
        membership,
    };
    w.put_event(event, &record)?;
    w.put_event_json(event, json)?;
    w.add_room_event(room, room_record.event_count, event)?;
    room_record.event_count += 1;
    room_record
        .latest_events
        .retain(|e| !checked.prevs.contains(e));
    room_record.latest_events.push(event);
    let latest = room_record.latest_events.clone();
    let current = state_of_all(w, resolver, &ctx, &latest)?;
    if room_record.current_state == before && latest.as_slice() == [event] {
        // The common, linear case: the new current state is the old one plus this event, so
        // only this event's own key can change a membership.
        if let Some(key) = record.sets().filter(|k| k.ty == TypeNid::MEMBER) {
            w.set_membership(room, key.key, record.membership)?;
        }
    } else {
        update_membership(w, room, room_record.current_state, current)?;
    }
    room_record.current_state = current;
    w.put_room(room, &room_record)?;
    Ok(Outcome {
        state: state_key.is_some(),
        new_room,
    })
}

fn intern_one<T>(
    w: &mut Writer<'_>,
    kind: intern::Kind,
    s: &str,
    make: fn(u64) -> Option<T>,
) -> Result<[T; 1]> {
    let raw = w.intern(kind, &[s])?;
    let first = raw.first().copied().unwrap_or(0);
    Ok([nid(first, make, kind.counter)?])
}

struct Context<'a> {
    room: RoomNid,
    version: &'a str,
    event_id: &'a str,
}

/// The state after all of `events` together: empty for none, the state after the one event, or
/// the combination of the states after several, with conflicts settled by the resolver.
fn state_of_all<R: StateResolver>(
    w: &mut Writer<'_>,
    resolver: &mut R,
    ctx: &Context<'_>,
    events: &[EventNid],
) -> Result<SnapshotNid, Failure> {
    let mut afters = Vec::with_capacity(events.len());
    for e in events {
        let s = w.state_after_snapshot(*e)?;
        if !afters.contains(&s) {
            afters.push(s);
        }
    }
    match afters.as_slice() {
        [] => return Ok(SnapshotNid::EMPTY),
        [one] => return Ok(*one),
        _ => {}
    }
    // Combined on blocks first: the blocks the states share are skipped, and the other states
    // are flattened only when there is a conflict to show the resolver.
    let (mut states, combined) = w.combine(&afters)?;
    let resolved = if combined.conflicted.is_empty() {
        combined.unconflicted
    } else {
        for s in &afters[states.len()..] {
            states.push(w.flatten(*s)?);
        }
        let request = ResolveRequest {
            room: ctx.room,
            room_version: ctx.version,
            event_id: ctx.event_id,
            states: &states,
            combined: &combined,
        };
        match resolver.resolve(&request, w) {
            Ok(Some(state)) => state,
            Ok(None) => return Err(Failure::Late(needs_resolution(w, &combined)?)),
            Err(e @ (Error::UnsupportedRoomVersion { .. } | Error::StateResolution(_))) => {
                return Err(Failure::Late(BadLine {
                    source: None,
                    line: 0,
                    event_id: Some(ctx.event_id.to_owned()),
                    problem: Problem::ResolutionFailed(e.to_string()),
                }));
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(w.snapshot_from_merge(afters[0], &states[0], &resolved)?)
}

fn needs_resolution(w: &mut Writer<'_>, combined: &Combined) -> Result<BadLine> {
    let mut keys = Vec::with_capacity(combined.conflicted.len());
    for c in &combined.conflicted {
        keys.push((
            w.string(intern::TYPE, c.key.ty.get())?,
            w.string(intern::STATE_KEY, c.key.key.get())?,
        ));
    }
    Ok(BadLine {
        source: None,
        line: 0,
        event_id: None,
        problem: Problem::NeedsStateResolution(keys),
    })
}

/// Brings the room's membership index from its old current state to the new one.
fn update_membership(
    w: &mut Writer<'_>,
    room: RoomNid,
    old: SnapshotNid,
    new: SnapshotNid,
) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let diff = w.diff(old, new)?;
    let is_member = |k: &StateKey| k.ty == TypeNid::MEMBER;
    for e in diff.removed.iter().filter(|e| is_member(&e.key)) {
        w.set_membership(room, e.key.key, None)?;
    }
    let set = diff
        .added
        .iter()
        .map(|e| (e.key, e.event))
        .chain(diff.changed.iter().map(|c| (c.key, c.new)));
    for (key, event) in set.filter(|(k, _)| is_member(k)) {
        let membership = w.expect_event(event)?.membership;
        w.set_membership(room, key.key, membership)?;
    }
    Ok(())
}
