//! The `roomstate` command: ingest, query and measure a room-state store. It uses only the
//! library's public API.

mod auth_bench;
mod bench;
mod counted;
mod demo;
mod failure;
mod federation;
mod join;
mod maintain;
mod names;
mod plot;
mod query;
// The generator, compiled from the library's source into the CLI alone: the library builds it
// only behind its `workload` feature, so a homeserver linking it never does. The CLI uses only
// part of what the tests use.
#[allow(dead_code)]
#[path = "../../workload/mod.rs"]
mod workload;

use crate::workload::{GenConfig, Generator, RoomVersion, Workload};
use clap::{Parser, Subcommand};
use failure::{CliResult, Failure};
use roomstate::ingest::{
    IngestOptions, IngestReport, Ingester, MatrixResolver, OnBadLine, Refuse, StateResolver,
    TrivialMerge, open_input,
};
use roomstate::{Membership, Store, StoreRead};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Matrix room state in one redb file.
#[derive(Parser)]
#[command(name = "roomstate", version, about)]
struct Cli {
    /// The store file (created if missing). Accepted before or after the subcommand.
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic room, store the state before every event, and show the figures.
    Demo {
        /// Members who join the room.
        #[arg(long, default_value_t = 3_000)]
        members: u64,
        /// State events in all (joins, then churn).
        #[arg(long, default_value_t = 8_000)]
        state_events: u64,
        /// Messages after each state event.
        #[arg(long, default_value_t = 5)]
        messages_per_state: u32,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Ingest JSON-lines event files (`-` is standard input; gzip is detected).
    Ingest {
        /// Input files.
        #[arg(required = true)]
        files: Vec<String>,
        /// Events per committed batch.
        #[arg(long, default_value_t = 10_000)]
        batch_size: usize,
        /// Skip bad lines and report them, instead of stopping at the first.
        #[arg(long)]
        skip_bad_lines: bool,
        /// A trusted import: skip the Matrix authorization checks and accept every event as it
        /// comes (auth events the store lacks are allowed too). Only for histories another
        /// server already authorized; never for events from federation.
        #[arg(long)]
        trust: bool,
        /// How conflicting states are settled: `matrix` is Matrix state resolution
        /// (ruma-state-res); `matrix-whole-maps` is the same, handing it whole states (slower, for
        /// comparison); `trivial` takes a change over the state it replaced and refuses
        /// concurrent changes of one key; `refuse` settles nothing.
        #[arg(long, value_enum, default_value_t = ResolverChoice::Matrix)]
        resolver: ResolverChoice,
    },
    /// Print a state as JSON: before (or after) an event, or a room's current state.
    State {
        /// The event whose state to print.
        #[arg(long, conflicts_with = "room", required_unless_present = "room")]
        event: Option<String>,
        /// The state after the event rather than before it.
        #[arg(long, requires = "event")]
        after: bool,
        /// The room whose current state to print.
        #[arg(long)]
        room: Option<String>,
    },
    /// Print, for every event of a room in ingest order, the state before it (JSON lines).
    States {
        /// The room.
        #[arg(long)]
        room: String,
    },
    /// Print the difference between the states before two events, as JSON.
    Diff {
        /// The first event.
        a: String,
        /// The second event.
        b: String,
    },
    /// List a room's members from its current state.
    Members {
        /// The room.
        #[arg(long)]
        room: String,
        /// Only members with this membership (join, invite, leave, ban, knock).
        #[arg(long)]
        membership: Option<Membership>,
    },
    /// List the rooms a user is joined to.
    Rooms {
        /// The user ID.
        #[arg(long)]
        user: String,
    },
    /// Print the auth chain of events as a JSON list, auth events first (federation's
    /// `/event_auth`, and a `send_join` answer's `auth_chain`).
    AuthChain {
        /// The events.
        #[arg(required = true)]
        events: Vec<String>,
    },
    /// Print the state before an event and its auth chain, as event IDs (`/state_ids`).
    StateIds {
        /// The event.
        #[arg(long)]
        event: String,
    },
    /// Print the state after a set of events together, resolved where they disagree: the
    /// state an event with these prev events starts from.
    StateAfter {
        /// The events.
        #[arg(required = true)]
        events: Vec<String>,
    },
    /// List the servers with members joined to a room.
    Servers {
        /// The room.
        #[arg(long)]
        room: String,
    },
    /// Print a user's membership at an event: in the state before it, or after it.
    Membership {
        /// The user ID.
        #[arg(long)]
        user: String,
        /// The event.
        #[arg(long)]
        event: String,
        /// After the event rather than before it.
        #[arg(long)]
        after: bool,
    },
    /// Print an event's stored JSON.
    Event {
        /// The event ID.
        id: String,
        /// Print what became of the event (accepted, rejected or soft-failed, and why) instead
        /// of its JSON.
        #[arg(long)]
        outcome: bool,
    },
    /// Delete a room: its events, their JSON, its membership, and every snapshot and block no
    /// other room uses. `compact` then returns the space to the file system.
    Purge {
        /// The room ID.
        #[arg(long)]
        room: String,
    },
    /// Delete whatever nothing references any more, then rewrite the file to return free space.
    Compact,
    /// Verify redb's checksum of every page (repairing what redb can, as it does after a
    /// crash), then decode every table's rows and report damage; exits 2 if anything is wrong.
    Check,
    /// Counts and sizes per table, and deduplication figures.
    Stats {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Ingest one generated history under every write policy and compare them.
    Bench {
        /// Print one JSON object per policy.
        #[arg(long)]
        json: bool,
        /// The history's shape: hq, many or forky; or `join`, the cost of joining the `hq` room
        /// over federation (its state and auth chain as outliers, then the join); or `auth`,
        /// state resolution and auth chains in `hq` (authorized, Matrix state resolution).
        #[arg(long, default_value = "hq")]
        workload: String,
        /// `small` (seconds, for CI) or `full` (hq at 100,000 members and 200,000 state events).
        #[arg(long, value_enum, default_value_t = Scale::Small)]
        scale: Scale,
        /// Also write an SVG plot of bytes per state change against state size.
        #[arg(long, value_name = "SVG")]
        plot: Option<PathBuf>,
        /// Measure one policy in this process (used by the bench itself).
        #[arg(long, hide = true, value_name = "POLICY")]
        one: Option<String>,
        /// Receive this `send_join` answer as the joining server (used by the join bench).
        #[arg(long, hide = true, value_name = "FILE")]
        join_input: Option<PathBuf>,
    },
    /// Write a synthetic history as JSON lines to standard output.
    Gen {
        /// hq, many or forky.
        workload: Workload,
        /// Seed of every random choice.
        #[arg(long)]
        seed: Option<u64>,
        /// Members (hq, forky) or rooms (many).
        #[arg(long)]
        members: Option<u64>,
        /// State events (hq, forky) or state events per room (many).
        #[arg(long)]
        state_events: Option<u64>,
        /// Messages after each state event.
        #[arg(long)]
        messages_per_state: Option<u32>,
        /// The rooms' version: 10, or 12 (room IDs from the create events' IDs, no create event
        /// in auth_events).
        #[arg(long, default_value = "10")]
        room_version: RoomVersion,
        /// Inject unauthorized events (rejected or soft-failed) after about this many in 100
        /// events (hq and many).
        #[arg(long, default_value_t = 0)]
        unauthorized: u64,
        /// Write every event's expected outcome here, one JSON line each:
        /// {"event_id":…,"outcome":"accepted"|"rejected"|"soft_failed"}.
        #[arg(long)]
        outcomes: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scale {
    /// Seconds in debug builds: for the test suite.
    #[value(hide = true)]
    Tiny,
    Small,
    Full,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ResolverChoice {
    Matrix,
    MatrixWholeMaps,
    Trivial,
    Refuse,
}

const DEFAULT_DB: &str = "roomstate.redb";

/// Replaces the default panic message (`thread 'main' panicked at …`) with one line in our words.
/// The library turns a panic inside redb (a damaged page it trusted) into `Error::Damaged`; the
/// hook has then said everything there is to say.
fn quiet_panics() {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    std::panic::set_hook(Box::new(|info| {
        // Two threads reading one damaged page both panic: one line says it.
        if REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".to_owned());
        let message = message.lines().next().unwrap_or_default().to_owned();
        eprintln!("store failure: the store is damaged ({message}); run roomstate check");
    }));
}

fn main() -> ExitCode {
    quiet_panics();
    // Usage mistakes are the user's: exit 1 like any other user error (2 means the store
    // failed). Help and version requests print and succeed.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::User(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Reported) => ExitCode::from(2),
        Err(Failure::Store(msg)) => {
            eprintln!("store failure: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> CliResult {
    let db = cli.db;
    match cli.command {
        Command::Demo {
            members,
            state_events,
            messages_per_state,
            seed,
        } => {
            let config = GenConfig {
                workload: Workload::Hq,
                seed,
                members,
                state_events,
                messages_per_state,
                room_version: Default::default(),
            };
            demo::run(db.as_deref(), config)
        }
        Command::Ingest {
            files,
            batch_size,
            skip_bad_lines,
            trust,
            resolver,
        } => {
            let store = Store::open(db_path(&db))?;
            let options = IngestOptions {
                batch_size,
                on_bad_line: if skip_bad_lines {
                    OnBadLine::Skip
                } else {
                    OnBadLine::Stop
                },
                trust,
                ..IngestOptions::default()
            };
            let matrix = |mut r: MatrixResolver| -> CliResult {
                ingest(&store, &files, options.clone(), &mut r)?;
                resolution_summary(r.timings());
                Ok(())
            };
            match resolver {
                ResolverChoice::Matrix => matrix(MatrixResolver::default()),
                ResolverChoice::MatrixWholeMaps => matrix(MatrixResolver::whole_maps()),
                ResolverChoice::Trivial => ingest(&store, &files, options.clone(), TrivialMerge),
                ResolverChoice::Refuse => ingest(&store, &files, options.clone(), Refuse),
            }
        }
        Command::Purge { room } => maintain::purge(&open_existing(&db)?, &room),
        Command::Compact => maintain::compact(open_existing(&db)?, db_path(&db)),
        Command::Bench {
            json,
            workload,
            scale,
            plot,
            one,
            join_input,
        } => {
            let scale = match scale {
                Scale::Tiny => bench::Scale::Tiny,
                Scale::Small => bench::Scale::Small,
                Scale::Full => bench::Scale::Full,
            };
            if let Some(answer) = join_input {
                return join::receive(&answer);
            }
            if workload == "join" {
                return join::run(scale, json);
            }
            if workload == "auth" {
                return auth_bench::run(scale, json);
            }
            let workload: Workload = workload.parse().map_err(Failure::User)?;
            match one {
                Some(policy) => bench::run_one(&policy, workload, scale),
                None => bench::run(workload, scale, json, plot.as_deref()),
            }
        }
        Command::Gen {
            workload,
            seed,
            members,
            state_events,
            messages_per_state,
            unauthorized,
            outcomes,
            room_version,
        } => {
            let mut config = GenConfig::new(workload);
            config.seed = seed.unwrap_or(config.seed);
            config.members = members.unwrap_or(config.members);
            config.state_events = state_events.unwrap_or(config.state_events);
            config.messages_per_state = messages_per_state.unwrap_or(config.messages_per_state);
            config.room_version = room_version;
            let events = Generator::new(config)
                .with_unauthorized(unauthorized)
                .map_err(Failure::User)?;
            let outcomes = match &outcomes {
                Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
                None => None,
            };
            write_history(events, std::io::stdout().lock(), outcomes)
        }
        Command::Check => {
            let mut store = open_existing(&db)?;
            let pages = query::page_damage(store.verify_file());
            let rx = store.read()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            query::check(&rx, pages, &mut out)?;
            out.flush()?;
            Ok(())
        }
        query => {
            let store = open_existing(&db)?;
            let rx = store.read()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            run_query(&rx, query, &mut out)?;
            out.flush()?;
            Ok(())
        }
    }
}

fn run_query(rx: &roomstate::ReadTxn, command: Command, out: &mut impl Write) -> CliResult {
    match command {
        Command::State {
            event: Some(event),
            after,
            ..
        } => query::state_of_event(rx, &event, after, out),
        Command::State {
            room: Some(room), ..
        } => query::state_of_room(rx, &room, out),
        Command::States { room } => query::states(rx, &room, out),
        Command::Diff { a, b } => query::diff(rx, &a, &b, out),
        Command::Members { room, membership } => query::members(rx, &room, membership, out),
        Command::Rooms { user } => query::rooms(rx, &user, out),
        Command::AuthChain { events } => federation::auth_chain(rx, &events, out),
        Command::StateIds { event } => federation::state_ids(rx, &event, out),
        Command::StateAfter { events } => federation::state_after(rx, &events, out),
        Command::Servers { room } => federation::servers(rx, &room, out),
        Command::Membership { user, event, after } => {
            federation::membership(rx, &user, &event, after, out)
        }
        Command::Event { id, outcome } => query::event(rx, &id, outcome, out),
        Command::Stats { json } => query::stats(rx, json, out),
        _ => Err(Failure::User("nothing to do".into())),
    }
}

fn db_path(db: &Option<PathBuf>) -> &Path {
    db.as_deref().unwrap_or(Path::new(DEFAULT_DB))
}

/// Opens a store that must already exist: a query on a missing file is a typo, not a request
/// to create one.
fn open_existing(db: &Option<PathBuf>) -> CliResult<Store> {
    let path = db_path(db);
    let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
    if !path.exists() || empty {
        let what = if empty { "an empty file" } else { "no store" };
        return Err(Failure::User(format!(
            "{what} at {} (use --db PATH, or ingest first)",
            path.display()
        )));
    }
    Ok(Store::open(path)?)
}

fn ingest(
    store: &Store,
    files: &[String],
    options: IngestOptions,
    resolver: impl StateResolver,
) -> CliResult {
    let total_bytes: Option<u64> = files
        .iter()
        .map(|f| {
            let plain = f != "-" && !f.ends_with(".gz");
            plain
                .then(|| std::fs::metadata(f).ok().map(|m| m.len()))
                .flatten()
        })
        .sum();
    let mut progress = Progress::new(total_bytes);
    let mut ingester = Ingester::new(store, options, resolver);
    for file in files {
        let input =
            open_input(file).map_err(|e| Failure::User(format!("cannot read {file}: {e}")))?;
        ingester.set_source(file);
        let read = ingester.read_from_with(input, |report| progress.update(report));
        read.map_err(|e| stopped(e, ingester.report()))?;
    }
    let committed = ingester.report().clone();
    let report = ingester.finish().map_err(|e| stopped(e, &committed))?;
    progress.finish();
    summary(store, &report)
}

/// A bad line in stop mode, told with what was kept and how to go on.
fn stopped(e: roomstate::Error, committed: &IngestReport) -> Failure {
    match e {
        roomstate::Error::BadLine(bad) => Failure::User(format!(
            "{bad}; nothing of its batch was stored; {} events were committed before it (the \
             first {} lines of input); fix or remove the line and run the same command again \
             (events already stored are skipped), or pass --skip-bad-lines",
            committed.events, committed.committed_lines
        )),
        other => other.into(),
    }
}

/// Per-merge resolution times, for comparing the resolver's two ways of feeding the crate.
fn resolution_summary(timings: &[Duration]) {
    if timings.is_empty() {
        return;
    }
    let mut sorted = timings.to_vec();
    sorted.sort_unstable();
    let total: Duration = sorted.iter().sum();
    println!(
        "state resolution: {} conflicted merges, median {:.1} µs, p90 {:.1} µs, total {:.1} ms",
        sorted.len(),
        sorted[sorted.len() / 2].as_secs_f64() * 1e6,
        sorted[sorted.len() * 9 / 10].as_secs_f64() * 1e6,
        total.as_secs_f64() * 1e3
    );
}

/// A progress bar on a terminal, a plain line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    last_line: Instant,
    started: Instant,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let template = match total_bytes {
                Some(_) => "{bar:40} {bytes}/{total_bytes} {msg} ({eta})",
                None => "{spinner} {bytes} {msg}",
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            last_line: Instant::now(),
            started: Instant::now(),
        }
    }

    fn update(&mut self, report: &IngestReport) {
        let rate = report.events as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        match &self.bar {
            Some(bar) => {
                bar.set_position(report.bytes);
                bar.set_message(format!("{} events, {rate:.0}/s", report.events));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                eprintln!(
                    "ingested {} events ({} bytes, {rate:.0} events/s)",
                    report.events, report.bytes
                );
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn summary(store: &Store, report: &IngestReport) -> CliResult {
    let tables = store.read()?.table_sizes()?;
    let rows = |name: &str| tables.iter().find(|t| t.name == name).map_or(0, |t| t.rows);
    println!("events        {}", report.events);
    println!("state events  {}", report.state_events);
    println!("accepted      {}", report.accepted());
    println!("rejected      {}", report.rejected);
    println!("soft-failed   {}", report.soft_failed);
    println!("outliers      {}", report.outliers);
    println!("duplicates    {}", report.duplicates);
    println!("rooms         {}", report.rooms);
    println!("snapshots     {}", rows("snapshots"));
    println!("blocks        {}", rows("blocks"));
    println!("input bytes   {}", report.bytes);
    println!("state bytes   {}", roomstate::state_bytes(&tables));
    println!("events/s      {:.0}", report.events_per_second());
    println!("bad lines     {}", report.bad_lines);
    for bad in &report.listed_bad_lines {
        eprintln!("skipped {bad}");
    }
    Ok(())
}

/// Writes generated events as JSON lines, and each one's expected outcome to `outcomes`.
fn write_history(
    events: Generator,
    out: impl Write,
    mut outcomes: Option<impl Write>,
) -> CliResult {
    let mut out = std::io::BufWriter::new(out);
    for event in events {
        out.write_all(event.to_json_line().as_bytes())?;
        out.write_all(b"\n")?;
        if let Some(side) = &mut outcomes {
            let id = serde_json::to_string(&event.event_id).map_err(std::io::Error::from)?;
            writeln!(
                side,
                "{{\"event_id\":{id},\"outcome\":\"{}\"}}",
                event.expected.name()
            )?;
        }
    }
    out.flush()?;
    if let Some(side) = &mut outcomes {
        side.flush()?;
    }
    Ok(())
}
