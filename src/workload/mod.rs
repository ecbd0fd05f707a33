//! Deterministic synthetic Matrix room histories (the `hq`, `many` and `forky` workloads).
//!
//! `docs/workloads.md` defines the three shapes. Everything here is a pure function of the
//! [`GenConfig`]: a hand-written SplitMix64 drives every choice and event IDs are hashes of a
//! running counter, so one config always yields byte-identical JSON lines. The [`Generator`]
//! streams: it keeps per-member bookkeeping and the current forward extremities, never the
//! events it has already produced.
//!
//! Branching ("forking") always creates a *sibling* of an extremity (a new event with the same
//! prev events), so the extremities stay an antichain. Keeping an extremity next to its own
//! child would make later merges list an event together with its descendant, and a naive
//! "combined states disagree" check would then report conflicts that nobody created.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::str::FromStr;

use serde_json::{Map, Value, json};
use xxhash_rust::xxh3::xxh3_128_with_seed;

mod event;
mod forky;
mod hq;
mod ids;
mod inject;
mod many;
mod rng;
mod room;
#[cfg(test)]
mod tests;

pub use event::GenEvent;
use forky::*;
use hq::*;
use ids::*;
pub use inject::Expected;
use inject::Injector;
use many::*;
use rng::*;
use room::*;

const START_TS: u64 = 1_700_000_000_000;
const MAX_TS_STEP: u64 = 5_000;
const SERVERS: u64 = 50;
/// create, creator join, power_levels, join_rules, history_visibility.
const SETUP_STEPS: u64 = 5;
const MAX_TIPS: usize = 10;
const HQ_ADMINS: u64 = 5;
const FORKY_ADMINS: u64 = 3;
const HQ_FORK_EVERY: u64 = 500;
const FORKY_CONFLICT_EVERY: u64 = 200;
/// Distinct state keys of the custom state type.
const CUSTOM_KEYS: u64 = 16;
/// How many random picks look for an unsettled-free key before giving up.
const PICK_TRIES: usize = 16;

const CREATE: &str = "m.room.create";
const MEMBER: &str = "m.room.member";
const POWER_LEVELS: &str = "m.room.power_levels";
const JOIN_RULES: &str = "m.room.join_rules";
const HISTORY_VISIBILITY: &str = "m.room.history_visibility";
const TOPIC: &str = "m.room.topic";
const NAME: &str = "m.room.name";
const CANONICAL_ALIAS: &str = "m.room.canonical_alias";
const SERVER_ACL: &str = "m.room.server_acl";
const GUEST_ACCESS: &str = "m.room.guest_access";
const CUSTOM: &str = "org.example.custom";
const MESSAGE: &str = "m.room.message";

const WORDS: [&str; 24] = [
    "matrix",
    "room",
    "state",
    "event",
    "hello",
    "thanks",
    "federation",
    "server",
    "bridge",
    "client",
    "synapse",
    "dendrite",
    "conduit",
    "question",
    "anyone",
    "works",
    "broken",
    "update",
    "release",
    "today",
    "join",
    "merge",
    "resolve",
    "graph",
];
const NAME_TAGS: [&str; 8] = [
    "away",
    "busy",
    "afk",
    "on holiday",
    "he/him",
    "she/her",
    "they/them",
    "🦀",
];

/// Which history shape to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One huge public room with heavy membership churn and rare forks.
    Hq,
    /// Many small rooms created with identical settings.
    Many,
    /// One room with a wide event graph and a few genuine state conflicts.
    Forky,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hq" => Ok(Self::Hq),
            "many" => Ok(Self::Many),
            "forky" => Ok(Self::Forky),
            other => Err(format!(
                "unknown workload {other:?}: expected hq, many or forky"
            )),
        }
    }
}

impl Workload {
    /// The name `FromStr` accepts for this workload.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hq => "hq",
            Self::Many => "many",
            Self::Forky => "forky",
        }
    }

    /// Mixed into the ID hash so two workloads loaded into one store never share event IDs.
    fn tag(self) -> u64 {
        match self {
            Self::Hq => 1,
            Self::Many => 2,
            Self::Forky => 3,
        }
    }
}

/// Generator settings. Defaults per workload via [`GenConfig::new`].
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// The history shape.
    pub workload: Workload,
    /// Seed of every random choice and of the event IDs.
    pub seed: u64,
    /// hq/forky: members of the room; many: number of rooms (each gets 2–50 members).
    pub members: u64,
    /// Total state events to produce (hq, forky); for many: per-room state events (~20).
    pub state_events: u64,
    /// Messages (non-state m.room.message events) after each state event.
    pub messages_per_state: u32,
    /// The rooms' version.
    pub room_version: RoomVersion,
}

/// The room version of generated rooms: 10, or 12, whose room IDs are their create events' IDs
/// and whose events leave the create event out of `auth_events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoomVersion {
    /// Room version 10.
    #[default]
    V10,
    /// Room version 12.
    V12,
}

impl RoomVersion {
    /// The version string of the create event's `content.room_version`.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomVersion::V10 => "10",
            RoomVersion::V12 => "12",
        }
    }
}

impl FromStr for RoomVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "10" => Ok(RoomVersion::V10),
            "12" => Ok(RoomVersion::V12),
            other => Err(format!(
                "room version {other:?}: the generator writes 10 or 12"
            )),
        }
    }
}

impl GenConfig {
    /// The documented defaults of `workload`, with seed 1.
    pub fn new(workload: Workload) -> Self {
        let (members, state_events, messages_per_state) = match workload {
            Workload::Hq => (100_000, 200_000, 10),
            Workload::Many => (10_000, 20, 2),
            Workload::Forky => (1_000, 5_000, 1),
        };
        Self {
            workload,
            seed: 1,
            members,
            state_events,
            messages_per_state,
            room_version: RoomVersion::V10,
        }
    }
}

/// Writes one line per event (each ending in `'\n'`) and returns the number of events.
pub fn write_jsonl<W: Write>(config: GenConfig, out: W) -> io::Result<u64> {
    let mut out = io::BufWriter::new(out);
    let mut count = 0;
    for event in Generator::new(config) {
        out.write_all(event.to_json_line().as_bytes())?;
        out.write_all(b"\n")?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
}

#[derive(Debug)]
enum Shape {
    Hq(Hq),
    Many(Many),
    Forky(Forky),
}

impl Shape {
    /// Produces the next batch of events; false once the workload is complete.
    fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
        match self {
            Self::Hq(hq) => hq.step(ctx, out),
            Self::Many(many) => many.step(ctx, out),
            Self::Forky(forky) => forky.step(ctx, out),
        }
    }
}

/// A streaming, deterministic iterator of events. Memory stays bounded independent of the
/// number of events produced: per-member bookkeeping and the current extremities only.
#[derive(Debug)]
pub struct Generator {
    ctx: Ctx,
    shape: Shape,
    config: GenConfig,
    injector: Option<Injector>,
    pending: VecDeque<GenEvent>,
    finished: bool,
}

impl Generator {
    /// A generator positioned before the first event of `config`'s workload.
    pub fn new(config: GenConfig) -> Self {
        let shape = match config.workload {
            Workload::Hq => Shape::Hq(Hq::new(&config)),
            Workload::Many => Shape::Many(Many::new(&config)),
            Workload::Forky => Shape::Forky(Forky::new(&config)),
        };
        Self {
            ctx: Ctx::new(&config),
            shape,
            config,
            injector: None,
            pending: VecDeque::new(),
            finished: false,
        }
    }

    /// Adds unauthorized events after about `percent` in 100 events, each with the outcome the
    /// authorization rules give it ([`GenEvent::expected`]); the rest of the history is the same
    /// byte for byte. Only where the room has one forward extremity, which `forky` rarely has:
    /// it is refused there.
    pub fn with_unauthorized(mut self, percent: u64) -> Result<Self, String> {
        if percent > 0 && self.config.workload == Workload::Forky {
            return Err("unauthorized events are injected into hq and many, not forky".into());
        }
        self.injector = (percent > 0).then(|| Injector::new(&self.config, percent.min(100)));
        Ok(self)
    }

    /// Genuine conflicts created so far (only forky creates them).
    #[cfg(test)]
    fn conflicts(&self) -> u64 {
        match &self.shape {
            Shape::Forky(forky) => forky.conflicts,
            Shape::Hq(_) | Shape::Many(_) => 0,
        }
    }
}

impl Iterator for Generator {
    type Item = GenEvent;

    fn next(&mut self) -> Option<GenEvent> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                if event.expected == Expected::Accepted
                    && let Some(injector) = &mut self.injector
                    && let Some(extra) = injector.after(&event)
                {
                    self.pending.push_front(extra);
                }
                return Some(event);
            }
            if self.finished {
                return None;
            }
            self.finished = !self.shape.step(&mut self.ctx, &mut self.pending);
        }
    }
}
