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
        }
    }
}

/// One generated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenEvent {
    /// Room version 10 event ID: `$` and 43 URL-safe base64 characters.
    pub event_id: String,
    /// The room the event belongs to.
    pub room_id: String,
    /// The event type, e.g. `m.room.member`.
    pub event_type: String,
    /// Present exactly for state events (`""` is a valid key).
    pub state_key: Option<String>,
    /// The sending user.
    pub sender: String,
    /// The room's forward extremities the event was built on.
    pub prev_events: Vec<String>,
    /// Plausible auth events: create, power levels and the relevant memberships.
    pub auth_events: Vec<String>,
    /// 1 + the largest depth among the prev events.
    pub depth: u64,
    /// Milliseconds since the epoch, increasing through the stream.
    pub origin_server_ts: u64,
    /// The event content as a JSON object.
    pub content: serde_json::Value,
}

impl GenEvent {
    /// One JSON line in the federation shape of workloads.md (no trailing newline). Field order:
    /// event_id, room_id, type, state_key (omitted when None), sender, prev_events, auth_events,
    /// depth, origin_server_ts, content.
    pub fn to_json_line(&self) -> String {
        let mut out = String::with_capacity(256 + 48 * self.prev_events.len());
        out.push_str("{\"event_id\":");
        push_json_str(&mut out, &self.event_id);
        out.push_str(",\"room_id\":");
        push_json_str(&mut out, &self.room_id);
        out.push_str(",\"type\":");
        push_json_str(&mut out, &self.event_type);
        if let Some(key) = &self.state_key {
            out.push_str(",\"state_key\":");
            push_json_str(&mut out, key);
        }
        out.push_str(",\"sender\":");
        push_json_str(&mut out, &self.sender);
        out.push_str(",\"prev_events\":");
        push_json_list(&mut out, &self.prev_events);
        out.push_str(",\"auth_events\":");
        push_json_list(&mut out, &self.auth_events);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            ",\"depth\":{},\"origin_server_ts\":{},\"content\":{}}}",
            self.depth, self.origin_server_ts, self.content
        );
        out
    }
}

fn push_json_list(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, item);
    }
    out.push(']');
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Writing into a String cannot fail.
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
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

// ---------------------------------------------------------------------------------------------
// Randomness and IDs

/// SplitMix64: tiny, fast and fully specified, so output never depends on a crate version.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-high, no modulo bias worth caring about); `n == 0` gives 0.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// Stream-wide state shared by all rooms: randomness, the ID counter and the clock.
#[derive(Debug)]
struct Ctx {
    rng: Rng,
    id_seed: u64,
    counter: u64,
    ts: u64,
}

impl Ctx {
    fn new(config: &GenConfig) -> Self {
        let mut mix = Rng(config.seed ^ config.workload.tag().wrapping_mul(0xA076_1D64_78BD_642F));
        let id_seed = mix.next_u64();
        Self {
            rng: Rng(mix.next_u64()),
            id_seed,
            counter: 0,
            ts: START_TS,
        }
    }

    fn next_id(&mut self) -> String {
        let input = self.counter.to_le_bytes();
        self.counter += 1;
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&xxh3_128_with_seed(&input, self.id_seed).to_le_bytes());
        bytes[16..].copy_from_slice(&xxh3_128_with_seed(&input, !self.id_seed).to_le_bytes());
        let mut id = String::with_capacity(44);
        id.push('$');
        push_base64url(&mut id, &bytes);
        id
    }

    fn next_ts(&mut self) -> u64 {
        let ts = self.ts;
        self.ts += self.rng.range(1, MAX_TS_STEP);
        ts
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded URL-safe base64 (RFC 4648 §5); 32 bytes give the 43 characters of an event ID.
fn push_base64url(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(BASE64URL[sextet as usize]));
        }
    }
}

fn user_id(n: u64) -> String {
    format!("@user{n}:server{}.test", n % SERVERS)
}

// ---------------------------------------------------------------------------------------------
// Rooms, drafts and the event graph

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Membership {
    Never,
    Join,
    Leave,
    Ban,
}

#[derive(Clone, Debug)]
struct Slot {
    membership: Membership,
    event: Option<String>,
    /// Position in `Room::joined`, so random joined senders cost O(1).
    joined_pos: usize,
}

const NOT_JOINED: usize = usize::MAX;

impl Default for Slot {
    fn default() -> Self {
        Self {
            membership: Membership::Never,
            event: None,
            joined_pos: NOT_JOINED,
        }
    }
}

#[derive(Clone, Debug)]
struct Link {
    id: String,
    depth: u64,
}

/// A forward extremity and its prev events (needed to create siblings).
#[derive(Clone, Debug)]
struct Tip {
    link: Link,
    parents: Vec<Link>,
}

/// How a new event attaches to the extremities. Indices point into `Room::tips`.
#[derive(Clone, Debug)]
enum Op {
    /// prev = [tip i]; the new event replaces it.
    Extend(usize),
    /// prev = tip i's prevs; the new event becomes an extra extremity (a fork).
    Sibling(usize),
    /// prev = these tips (ascending); they are replaced by the new event.
    Merge(Vec<usize>),
}

impl Op {
    /// The op that builds on every extremity (n must be at least 1).
    fn all(n: usize) -> Self {
        if n == 1 {
            Self::Extend(0)
        } else {
            Self::Merge((0..n).collect())
        }
    }

    fn covers_all(&self, n: usize) -> bool {
        match self {
            Self::Extend(_) => n == 1,
            Self::Sibling(_) => false,
            Self::Merge(ix) => ix.len() == n,
        }
    }
}

/// An event before it gets an ID; `sender` and `membership.0` are local user indices.
#[derive(Debug)]
struct Draft {
    event_type: &'static str,
    state_key: Option<String>,
    sender: usize,
    content: Value,
    membership: Option<(usize, Membership)>,
}

#[derive(Debug)]
struct Room {
    id: String,
    /// Global user number of each local user index; index 0 is the creator.
    users: Vec<u64>,
    slots: Vec<Slot>,
    joined: Vec<usize>,
    create: Option<String>,
    power_levels: Option<String>,
    join_rules: Option<String>,
    tips: Vec<Tip>,
}

impl Room {
    fn new(id: String, users: Vec<u64>) -> Self {
        let slots = vec![Slot::default(); users.len()];
        Self {
            id,
            users,
            slots,
            joined: Vec::new(),
            create: None,
            power_levels: None,
            join_rules: None,
            tips: Vec::new(),
        }
    }

    fn user(&self, local: usize) -> String {
        user_id(self.users[local])
    }

    fn random_joined(&self, rng: &mut Rng) -> Option<usize> {
        if self.joined.is_empty() {
            return None;
        }
        Some(self.joined[rng.index(self.joined.len())])
    }

    /// Builds on every extremity, leaving exactly one.
    fn extend_all(&mut self, ctx: &mut Ctx, draft: Draft) -> GenEvent {
        let prevs = std::mem::take(&mut self.tips)
            .into_iter()
            .map(|t| t.link)
            .collect();
        let (event, tip) = self.build(ctx, draft, prevs);
        self.tips.push(tip);
        event
    }

    fn apply(&mut self, ctx: &mut Ctx, draft: Draft, op: &Op) -> GenEvent {
        let prevs = match op {
            Op::Extend(i) => vec![self.tips[*i].link.clone()],
            Op::Sibling(i) => self.tips[*i].parents.clone(),
            Op::Merge(ix) => ix.iter().map(|&i| self.tips[i].link.clone()).collect(),
        };
        let (event, tip) = self.build(ctx, draft, prevs);
        match op {
            Op::Extend(i) => self.tips[*i] = tip,
            Op::Sibling(_) => self.tips.push(tip),
            Op::Merge(ix) => {
                // Descending order keeps the smaller, still pending indices valid.
                for &i in ix.iter().rev() {
                    self.tips.swap_remove(i);
                }
                self.tips.push(tip);
            }
        }
        event
    }

    fn build(&mut self, ctx: &mut Ctx, draft: Draft, prevs: Vec<Link>) -> (GenEvent, Tip) {
        let depth = prevs.iter().map(|l| l.depth).max().map_or(1, |d| d + 1);
        let auth_events = self.auth_for(&draft);
        let event_id = ctx.next_id();
        let origin_server_ts = ctx.next_ts();
        self.record(&draft, &event_id);
        let event = GenEvent {
            event_id: event_id.clone(),
            room_id: self.id.clone(),
            event_type: draft.event_type.to_owned(),
            state_key: draft.state_key,
            sender: self.user(draft.sender),
            prev_events: prevs.iter().map(|l| l.id.clone()).collect(),
            auth_events,
            depth,
            origin_server_ts,
            content: draft.content,
        };
        (
            event,
            Tip {
                link: Link {
                    id: event_id,
                    depth,
                },
                parents: prevs,
            },
        )
    }

    /// Roughly what the auth rules select; only plausibility matters to the store.
    fn auth_for(&self, draft: &Draft) -> Vec<String> {
        let mut auth = Vec::with_capacity(5);
        if draft.event_type == CREATE {
            return auth;
        }
        auth.extend(self.create.iter().cloned());
        auth.extend(self.power_levels.iter().cloned());
        auth.extend(self.slots[draft.sender].event.iter().cloned());
        if let Some((target, membership)) = draft.membership {
            if target != draft.sender {
                auth.extend(self.slots[target].event.iter().cloned());
            }
            if membership == Membership::Join {
                auth.extend(self.join_rules.iter().cloned());
            }
        }
        auth
    }

    fn record(&mut self, draft: &Draft, event_id: &str) {
        match draft.event_type {
            CREATE => self.create = Some(event_id.to_owned()),
            POWER_LEVELS => self.power_levels = Some(event_id.to_owned()),
            JOIN_RULES => self.join_rules = Some(event_id.to_owned()),
            _ => {}
        }
        if let Some((target, membership)) = draft.membership {
            self.set_membership(target, membership, event_id.to_owned());
        }
    }

    fn set_membership(&mut self, user: usize, membership: Membership, event_id: String) {
        let was_joined = self.slots[user].membership == Membership::Join;
        let is_joined = membership == Membership::Join;
        if was_joined && !is_joined {
            let pos = self.slots[user].joined_pos;
            self.joined.swap_remove(pos);
            if let Some(&moved) = self.joined.get(pos) {
                self.slots[moved].joined_pos = pos;
            }
            self.slots[user].joined_pos = NOT_JOINED;
        } else if is_joined && !was_joined {
            self.slots[user].joined_pos = self.joined.len();
            self.joined.push(user);
        }
        self.slots[user].membership = membership;
        self.slots[user].event = Some(event_id);
    }
}

fn state(event_type: &'static str, key: impl Into<String>, sender: usize, content: Value) -> Draft {
    Draft {
        event_type,
        state_key: Some(key.into()),
        sender,
        content,
        membership: None,
    }
}

fn member(room: &Room, sender: usize, target: usize, m: Membership, content: Value) -> Draft {
    Draft {
        event_type: MEMBER,
        state_key: Some(room.user(target)),
        sender,
        content,
        membership: Some((target, m)),
    }
}

fn join_draft(room: &Room, user: usize) -> Draft {
    let name = format!("User {}", room.users[user]);
    member(
        room,
        user,
        user,
        Membership::Join,
        json!({"membership": "join", "displayname": name}),
    )
}

fn rename_with(room: &Room, user: usize, label: &str) -> Draft {
    let name = format!("User {} ({label})", room.users[user]);
    member(
        room,
        user,
        user,
        Membership::Join,
        json!({"membership": "join", "displayname": name}),
    )
}

fn rename_draft(room: &Room, rng: &mut Rng, user: usize) -> Draft {
    let label = format!(
        "{} {}",
        NAME_TAGS[rng.index(NAME_TAGS.len())],
        rng.below(1000)
    );
    rename_with(room, user, &label)
}

fn leave_draft(room: &Room, user: usize) -> Draft {
    member(
        room,
        user,
        user,
        Membership::Leave,
        json!({"membership": "leave"}),
    )
}

fn kick_draft(room: &Room, admin: usize, user: usize) -> Draft {
    let content = json!({"membership": "leave", "reason": "off-topic"});
    member(room, admin, user, Membership::Leave, content)
}

fn ban_draft(room: &Room, admin: usize, user: usize) -> Draft {
    member(
        room,
        admin,
        user,
        Membership::Ban,
        json!({"membership": "ban", "reason": "spam"}),
    )
}

fn unban_draft(room: &Room, admin: usize, user: usize) -> Draft {
    member(
        room,
        admin,
        user,
        Membership::Leave,
        json!({"membership": "leave"}),
    )
}

/// Percentages of the actions taken on a joined user; whatever remains up to 100 are bans.
#[derive(Clone, Copy, Debug)]
struct ChurnMix {
    rename: u64,
    leave: u64,
    kick: u64,
}

const HQ_MIX: ChurnMix = ChurnMix {
    rename: 45,
    leave: 50,
    kick: 4,
};
const MANY_MIX: ChurnMix = ChurnMix {
    rename: 40,
    leave: 60,
    kick: 0,
};
const FORKY_MIX: ChurnMix = ChurnMix {
    rename: 70,
    leave: 30,
    kick: 0,
};

/// The next membership change of `target`, chosen to be legal for its current membership.
fn churn_draft(room: &Room, rng: &mut Rng, target: usize, admin: usize, mix: ChurnMix) -> Draft {
    match room.slots[target].membership {
        Membership::Join => {
            let r = rng.below(100);
            if r < mix.rename {
                rename_draft(room, rng, target)
            } else if r < mix.rename + mix.leave {
                leave_draft(room, target)
            } else if r < mix.rename + mix.leave + mix.kick {
                kick_draft(room, admin, target)
            } else {
                ban_draft(room, admin, target)
            }
        }
        Membership::Ban => unban_draft(room, admin, target),
        Membership::Leave | Membership::Never => join_draft(room, target),
    }
}

fn message_draft(room: &Room, rng: &mut Rng) -> Option<Draft> {
    let sender = room.random_joined(rng)?;
    let words = rng.range(2, 9);
    let mut body = String::new();
    for i in 0..words {
        if i > 0 {
            body.push(' ');
        }
        body.push_str(WORDS[rng.index(WORDS.len())]);
    }
    Some(Draft {
        event_type: MESSAGE,
        state_key: None,
        sender,
        content: json!({"msgtype": "m.text", "body": body}),
        membership: None,
    })
}

fn power_levels_content(users: Map<String, Value>, users_default: u64) -> Value {
    json!({
        "ban": 50,
        "events": {
            "m.room.canonical_alias": 50,
            "m.room.history_visibility": 100,
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.server_acl": 100,
            "m.room.topic": 50
        },
        "events_default": 0,
        "invite": 0,
        "kick": 50,
        "redact": 50,
        "state_default": 50,
        "users": users,
        "users_default": users_default
    })
}

/// Power levels of a single-room workload: the creator at 100, the other admins at 50.
fn admin_power_levels(room: &Room, admins: usize, moderator: Option<usize>) -> Value {
    let mut users = Map::new();
    users.insert(room.user(0), json!(100));
    for admin in 1..admins {
        users.insert(room.user(admin), json!(50));
    }
    if let Some(m) = moderator {
        users.entry(room.user(m)).or_insert(json!(50));
    }
    power_levels_content(users, 0)
}

/// The fixed opening of every room; `step` counts from 0 (the create event).
fn setup_draft(room: &Room, step: u64, power_levels: Value) -> Draft {
    match step {
        0 => state(
            CREATE,
            "",
            0,
            json!({"creator": room.user(0), "room_version": "10"}),
        ),
        1 => join_draft(room, 0),
        2 => state(POWER_LEVELS, "", 0, power_levels),
        3 => state(JOIN_RULES, "", 0, json!({"join_rule": "public"})),
        _ => state(
            HISTORY_VISIBILITY,
            "",
            0,
            json!({"history_visibility": "shared"}),
        ),
    }
}

/// Messages on a linear history; skipped while nobody has joined yet.
fn linear_messages(room: &mut Room, ctx: &mut Ctx, count: u32, out: &mut VecDeque<GenEvent>) {
    for _ in 0..count {
        let Some(draft) = message_draft(room, &mut ctx.rng) else {
            return;
        };
        out.push_back(room.extend_all(ctx, draft));
    }
}

// ---------------------------------------------------------------------------------------------
// hq

#[derive(Debug)]
struct Hq {
    room: Room,
    budget: u64,
    states: u64,
    /// Users `0..next_join` have a membership event.
    next_join: usize,
    admins: usize,
    /// Only joins until this many users have joined, so churn has a crowd to work on.
    warmup: usize,
    messages: u32,
    others: u64,
}

impl Hq {
    fn new(config: &GenConfig) -> Self {
        let members = config.members.max(1);
        let admins = members.min(HQ_ADMINS) as usize;
        Self {
            room: Room::new("!hq:server0.test".to_owned(), (0..members).collect()),
            budget: config.state_events,
            states: 0,
            next_join: 1,
            admins,
            warmup: ((members / 10) as usize).max(admins),
            messages: config.messages_per_state,
            others: 0,
        }
    }

    fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
        if self.states >= self.budget {
            return false;
        }
        if self.states < SETUP_STEPS {
            let pl = admin_power_levels(&self.room, self.admins, None);
            let draft = setup_draft(&self.room, self.states, pl);
            out.push_back(self.room.extend_all(ctx, draft));
            self.states += 1;
        } else {
            let draft = self.next_draft(ctx);
            // A fork right after a fork would leave the earlier branch's key unchecked.
            let single_tip = self.room.tips.len() == 1;
            if single_tip && self.budget - self.states >= 2 && ctx.rng.one_in(HQ_FORK_EVERY) {
                self.fork(ctx, draft, out);
            } else {
                out.push_back(self.room.extend_all(ctx, draft));
                self.states += 1;
            }
        }
        linear_messages(&mut self.room, ctx, self.messages, out);
        true
    }

    fn next_draft(&mut self, ctx: &mut Ctx) -> Draft {
        let remaining = self.budget - self.states;
        let joins_left = (self.room.users.len() - self.next_join) as u64;
        let must_join = joins_left >= remaining || self.next_join < self.warmup;
        if joins_left > 0 && (must_join || ctx.rng.below(remaining) < joins_left) {
            self.next_join += 1;
            return join_draft(&self.room, self.next_join - 1);
        }
        if ctx.rng.one_in(100) {
            return self.other_draft(ctx);
        }
        self.churn(ctx)
    }

    fn churn(&mut self, ctx: &mut Ctx) -> Draft {
        if self.next_join <= self.admins {
            // Too few members for churn targets: admins only ever rename themselves.
            let user = self.room.random_joined(&mut ctx.rng).unwrap_or(0);
            return rename_draft(&self.room, &mut ctx.rng, user);
        }
        let target = ctx.rng.range(self.admins as u64, self.next_join as u64 - 1) as usize;
        let admin = ctx.rng.index(self.admins);
        churn_draft(&self.room, &mut ctx.rng, target, admin, HQ_MIX)
    }

    fn other_draft(&mut self, ctx: &mut Ctx) -> Draft {
        self.others += 1;
        let n = self.others;
        let admin = ctx.rng.index(self.admins.min(self.next_join));
        match ctx.rng.below(100) {
            0..30 => {
                let alt = format!("#hq-{n}:server{}.test", n % SERVERS);
                let content = json!({"alias": "#hq:server0.test", "alt_aliases": [alt]});
                state(CANONICAL_ALIAS, "", admin, content)
            }
            30..45 => {
                let deny = [format!("spam{n}.test"), "*.evil.test".to_owned()];
                let content = json!({"allow": ["*"], "allow_ip_literals": false, "deny": deny});
                state(SERVER_ACL, "", admin, content)
            }
            45..65 => {
                let key = format!("key{}", ctx.rng.below(CUSTOM_KEYS));
                state(CUSTOM, key, admin, json!({"value": n}))
            }
            65..75 => state(
                TOPIC,
                "",
                admin,
                json!({"topic": format!("Matrix HQ, topic #{n}")}),
            ),
            75..80 => state(NAME, "", admin, json!({"name": format!("Matrix HQ #{n}")})),
            80..85 => state(JOIN_RULES, "", admin, json!({"join_rule": "public"})),
            85..90 => {
                let access = if n.is_multiple_of(2) {
                    "can_join"
                } else {
                    "forbidden"
                };
                state(GUEST_ACCESS, "", admin, json!({"guest_access": access}))
            }
            _ => {
                let moderator = self.room.random_joined(&mut ctx.rng);
                let content = admin_power_levels(&self.room, self.admins, moderator);
                state(POWER_LEVELS, "", admin, content)
            }
        }
    }

    /// Two siblings on different keys (or a state event and a message); the next event merges
    /// them, and the merge has nothing to resolve.
    fn fork(&mut self, ctx: &mut Ctx, first: Draft, out: &mut VecDeque<GenEvent>) {
        let first_key = (first.event_type, first.state_key.clone());
        out.push_back(self.room.apply(ctx, first, &Op::Extend(0)));
        self.states += 1;
        let second = self.fork_partner(ctx, &first_key);
        if second.state_key.is_some() {
            self.states += 1;
        }
        out.push_back(self.room.apply(ctx, second, &Op::Sibling(0)));
    }

    fn fork_partner(&mut self, ctx: &mut Ctx, taken: &(&str, Option<String>)) -> Draft {
        let candidate = self
            .room
            .random_joined(&mut ctx.rng)
            .filter(|&u| u >= self.admins);
        if let Some(user) = candidate.filter(|_| ctx.rng.percent(50)) {
            let draft = rename_draft(&self.room, &mut ctx.rng, user);
            if (draft.event_type, &draft.state_key) != (taken.0, &taken.1) {
                return draft;
            }
        }
        // After setup the creator never leaves, so a sender always exists; 0 is a safe default.
        message_draft(&self.room, &mut ctx.rng)
            .unwrap_or_else(|| rename_with(&self.room, 0, "fork"))
    }
}

// ---------------------------------------------------------------------------------------------
// many

#[derive(Debug)]
struct SmallRoom {
    room: Room,
    number: u64,
    setup: u64,
    next_join: usize,
    extras_left: u64,
}

impl SmallRoom {
    /// Emits one state event and its messages; returns whether the room is complete.
    fn step(
        &mut self,
        ctx: &mut Ctx,
        pl: &Value,
        messages: u32,
        out: &mut VecDeque<GenEvent>,
    ) -> bool {
        let draft = if self.setup < SETUP_STEPS {
            self.setup += 1;
            setup_draft(&self.room, self.setup - 1, pl.clone())
        } else {
            self.next_draft(ctx)
        };
        out.push_back(self.room.extend_all(ctx, draft));
        linear_messages(&mut self.room, ctx, messages, out);
        self.setup >= SETUP_STEPS
            && self.next_join >= self.room.users.len()
            && self.extras_left == 0
    }

    fn next_draft(&mut self, ctx: &mut Ctx) -> Draft {
        let joins = (self.room.users.len() - self.next_join) as u64;
        if joins > 0 && ctx.rng.below(joins + self.extras_left) < joins {
            self.next_join += 1;
            return join_draft(&self.room, self.next_join - 1);
        }
        self.extras_left = self.extras_left.saturating_sub(1);
        let r = ctx.rng.below(100);
        if r < 50 && self.next_join > 1 {
            let target = ctx.rng.range(1, self.next_join as u64 - 1) as usize;
            return churn_draft(&self.room, &mut ctx.rng, target, 0, MANY_MIX);
        }
        let n = self.number;
        if r < 75 {
            state(
                NAME,
                "",
                0,
                json!({"name": format!("Room {n}, v{}", ctx.rng.below(100))}),
            )
        } else {
            state(
                TOPIC,
                "",
                0,
                json!({"topic": format!("Topic of room {n}, v{}", ctx.rng.below(100))}),
            )
        }
    }
}

#[derive(Debug)]
struct Many {
    rooms: u64,
    next_room: u64,
    /// Users are drawn from `0..pool`, so most users are in several rooms.
    pool: u64,
    target: u64,
    messages: u32,
    /// Shared by every room, which is what makes the content deduplicable.
    power_levels: Value,
    current: Option<SmallRoom>,
}

impl Many {
    fn new(config: &GenConfig) -> Self {
        let mut users = Map::new();
        users.insert("@admin:server0.test".to_owned(), json!(100));
        Self {
            rooms: config.members,
            next_room: 0,
            pool: config.members.saturating_mul(5).max(100),
            target: config.state_events,
            messages: config.messages_per_state,
            power_levels: power_levels_content(users, 50),
            current: None,
        }
    }

    fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
        if self.current.is_none() {
            if self.next_room >= self.rooms {
                return false;
            }
            self.current = Some(self.start_room(ctx));
        }
        let Some(room) = self.current.as_mut() else {
            return false;
        };
        if room.step(ctx, &self.power_levels, self.messages, out) {
            self.current = None;
        }
        true
    }

    fn start_room(&mut self, ctx: &mut Ctx) -> SmallRoom {
        let number = self.next_room;
        self.next_room += 1;
        // The product of two uniforms skews towards small rooms, as on real servers.
        let size = 2 + (ctx.rng.below(49) * ctx.rng.below(49) / 48) as usize;
        let mut users = Vec::with_capacity(size);
        while users.len() < size {
            // pool >= 100 > 50 >= size, so this terminates.
            let user = ctx.rng.below(self.pool);
            if !users.contains(&user) {
                users.push(user);
            }
        }
        let base = SETUP_STEPS + size as u64 - 1;
        let extras = if self.target > base {
            self.target - base
        } else {
            ctx.rng.range(1, 3)
        };
        let id = format!("!room{number}:server{}.test", number % SERVERS);
        SmallRoom {
            room: Room::new(id, users),
            number,
            setup: 0,
            next_join: 1,
            extras_left: extras,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// forky

/// Keys changed on some branch that not every future event is guaranteed to descend from.
///
/// After the graph collapses to one extremity T, every later event descends from all events
/// but T (siblings of T skip only T itself), so the set shrinks to T's own key. Touching only
/// keys outside the set therefore never creates a conflict by accident.
#[derive(Debug)]
struct KeySet {
    flags: Vec<bool>,
    dirty: Vec<usize>,
}

impl KeySet {
    fn new(size: usize) -> Self {
        Self {
            flags: vec![false; size],
            dirty: Vec::new(),
        }
    }

    fn contains(&self, key: usize) -> bool {
        self.flags[key]
    }

    fn insert(&mut self, key: usize) {
        if !self.flags[key] {
            self.flags[key] = true;
            self.dirty.push(key);
        }
    }

    fn clear(&mut self) {
        for key in self.dirty.drain(..) {
            self.flags[key] = false;
        }
    }
}

fn choose_op(rng: &mut Rng, tips: &[Tip]) -> Op {
    let n = tips.len();
    let r = rng.below(100);
    if n >= 2 && (n >= MAX_TIPS || r < 20) {
        return merge_op(rng, n);
    }
    let i = rng.index(n);
    if n < MAX_TIPS && r >= 65 && !tips[i].parents.is_empty() {
        Op::Sibling(i)
    } else {
        Op::Extend(i)
    }
}

fn merge_op(rng: &mut Rng, n: usize) -> Op {
    let k = rng.range(2, n as u64) as usize;
    let mut picks: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.index(n - i);
        picks.swap(i, j);
    }
    picks.truncate(k);
    picks.sort_unstable();
    Op::Merge(picks)
}

#[derive(Debug)]
struct Forky {
    room: Room,
    budget: u64,
    states: u64,
    next_join: usize,
    /// Users below this index join on the linear history before forking starts.
    linear_end: usize,
    admins: usize,
    messages: u32,
    unsettled: KeySet,
    conflicts: u64,
    others: u64,
}

impl Forky {
    fn new(config: &GenConfig) -> Self {
        let members = config.members.max(1);
        let linear = 1 + config.state_events.saturating_sub(SETUP_STEPS) / 2;
        Self {
            room: Room::new("!forky:server0.test".to_owned(), (0..members).collect()),
            budget: config.state_events,
            states: 0,
            next_join: 1,
            linear_end: linear.min(members) as usize,
            admins: members.min(FORKY_ADMINS) as usize,
            messages: config.messages_per_state,
            unsettled: KeySet::new(members as usize + 2 + CUSTOM_KEYS as usize),
            conflicts: 0,
            others: 0,
        }
    }

    fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
        if self.states >= self.budget {
            return false;
        }
        if self.states < SETUP_STEPS || self.next_join < self.linear_end {
            self.linear_step(ctx, out);
            return true;
        }
        let remaining = self.budget - self.states;
        if remaining == 1 {
            self.final_merge(ctx, out);
            return true;
        }
        let conflicted =
            remaining >= 3 && ctx.rng.one_in(FORKY_CONFLICT_EVERY) && self.try_conflict(ctx, out);
        if !conflicted {
            self.normal_state(ctx, out);
        }
        self.graph_messages(ctx, out);
        true
    }

    fn linear_step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        let (draft, key) = if self.states < SETUP_STEPS {
            let pl = admin_power_levels(&self.room, self.admins, None);
            let key = (self.states == 1).then_some(0);
            (setup_draft(&self.room, self.states, pl), key)
        } else {
            self.next_join += 1;
            (
                join_draft(&self.room, self.next_join - 1),
                Some(self.next_join - 1),
            )
        };
        self.emit_linear(ctx, draft, key, out);
        self.states += 1;
        self.linear_messages(ctx, out);
    }

    /// The last state event merges every extremity, so the history ends with one.
    fn final_merge(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        let (draft, key) = self.any_draft(ctx);
        self.emit(ctx, draft, &Op::all(self.room.tips.len()), Some(key), out);
        self.states += 1;
        self.linear_messages(ctx, out);
    }

    fn normal_state(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        let n = self.room.tips.len();
        let mut op = choose_op(&mut ctx.rng, &self.room.tips);
        let picked = if op.covers_all(n) {
            None
        } else {
            self.free_draft(ctx)
        };
        let (draft, key) = match picked {
            Some(found) => found,
            None => {
                // Building on every extremity makes any key safe to touch.
                op = Op::all(n);
                self.any_draft(ctx)
            }
        };
        self.emit(ctx, draft, &op, Some(key), out);
        self.states += 1;
    }

    /// Two concurrent changes of one settled key, on different branches.
    fn try_conflict(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
        let Some((first, second, key)) = self.conflict_drafts(ctx) else {
            return false;
        };
        let n = self.room.tips.len();
        let (op1, op2) = if n >= 2 {
            let i = ctx.rng.index(n);
            let j = (i + 1 + ctx.rng.index(n - 1)) % n;
            (Op::Extend(i), Op::Extend(j))
        } else {
            (Op::Extend(0), Op::Sibling(0))
        };
        self.emit(ctx, first, &op1, Some(key), out);
        self.emit(ctx, second, &op2, Some(key), out);
        self.states += 2;
        self.conflicts += 1;
        true
    }

    fn conflict_drafts(&mut self, ctx: &mut Ctx) -> Option<(Draft, Draft, usize)> {
        let members = self.room.users.len();
        for _ in 0..PICK_TRIES {
            if ctx.rng.percent(70) {
                let user = self.room.random_joined(&mut ctx.rng)?;
                if !self.unsettled.contains(user) {
                    let a = rename_with(&self.room, user, "branch a");
                    return Some((a, rename_with(&self.room, user, "branch b"), user));
                }
                continue;
            }
            let admin = ctx.rng.index(self.admins);
            let slot = ctx.rng.below(CUSTOM_KEYS + 1);
            let key = members + 1 + slot as usize;
            if slot == 0 && !self.unsettled.contains(members) {
                let a = state(TOPIC, "", admin, json!({"topic": "branch a"}));
                return Some((
                    a,
                    state(TOPIC, "", admin, json!({"topic": "branch b"})),
                    members,
                ));
            }
            if slot > 0 && !self.unsettled.contains(key) {
                let sk = format!("key{}", slot - 1);
                let a = state(CUSTOM, sk.clone(), admin, json!({"value": "branch a"}));
                return Some((
                    a,
                    state(CUSTOM, sk, admin, json!({"value": "branch b"})),
                    key,
                ));
            }
        }
        None
    }

    /// A state change whose key every extremity agrees on, if one turns up quickly.
    fn free_draft(&mut self, ctx: &mut Ctx) -> Option<(Draft, usize)> {
        for _ in 0..PICK_TRIES {
            let (draft, key) = self.any_draft(ctx);
            if !self.unsettled.contains(key) {
                return Some((draft, key));
            }
        }
        None
    }

    /// A state change and its key index: members by user index, then topic, name, custom keys.
    fn any_draft(&mut self, ctx: &mut Ctx) -> (Draft, usize) {
        if self.next_join < self.room.users.len() && ctx.rng.percent(35) {
            self.next_join += 1;
            return (
                join_draft(&self.room, self.next_join - 1),
                self.next_join - 1,
            );
        }
        if ctx.rng.percent(5) {
            return self.other_draft(ctx);
        }
        if self.next_join <= self.admins {
            let user = self.room.random_joined(&mut ctx.rng).unwrap_or(0);
            return (rename_draft(&self.room, &mut ctx.rng, user), user);
        }
        let target = ctx.rng.range(self.admins as u64, self.next_join as u64 - 1) as usize;
        let admin = ctx.rng.index(self.admins);
        (
            churn_draft(&self.room, &mut ctx.rng, target, admin, FORKY_MIX),
            target,
        )
    }

    fn other_draft(&mut self, ctx: &mut Ctx) -> (Draft, usize) {
        self.others += 1;
        let n = self.others;
        let members = self.room.users.len();
        let admin = ctx.rng.index(self.admins);
        match ctx.rng.below(4) {
            0 => (
                state(
                    TOPIC,
                    "",
                    admin,
                    json!({"topic": format!("Forky topic #{n}")}),
                ),
                members,
            ),
            1 => (
                state(NAME, "", admin, json!({"name": format!("Forky #{n}")})),
                members + 1,
            ),
            _ => {
                let slot = ctx.rng.below(CUSTOM_KEYS);
                let draft = state(CUSTOM, format!("key{slot}"), admin, json!({"value": n}));
                (draft, members + 2 + slot as usize)
            }
        }
    }

    fn graph_messages(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        for _ in 0..self.messages {
            let Some(draft) = message_draft(&self.room, &mut ctx.rng) else {
                return;
            };
            let op = choose_op(&mut ctx.rng, &self.room.tips);
            self.emit(ctx, draft, &op, None, out);
        }
    }

    fn linear_messages(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        for _ in 0..self.messages {
            let Some(draft) = message_draft(&self.room, &mut ctx.rng) else {
                return;
            };
            self.emit_linear(ctx, draft, None, out);
        }
    }

    fn emit(
        &mut self,
        ctx: &mut Ctx,
        draft: Draft,
        op: &Op,
        key: Option<usize>,
        out: &mut VecDeque<GenEvent>,
    ) {
        out.push_back(self.room.apply(ctx, draft, op));
        self.settle(key);
    }

    fn emit_linear(
        &mut self,
        ctx: &mut Ctx,
        draft: Draft,
        key: Option<usize>,
        out: &mut VecDeque<GenEvent>,
    ) {
        out.push_back(self.room.extend_all(ctx, draft));
        self.settle(key);
    }

    /// Bookkeeping of `unsettled` after an event touching `key` was added.
    fn settle(&mut self, key: Option<usize>) {
        if self.room.tips.len() == 1 {
            self.unsettled.clear();
        }
        if let Some(key) = key {
            self.unsettled.insert(key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The iterator

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
            pending: VecDeque::new(),
            finished: false,
        }
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
                return Some(event);
            }
            if self.finished {
                return None;
            }
            self.finished = !self.shape.step(&mut self.ctx, &mut self.pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn config(workload: Workload, members: u64, state_events: u64, messages: u32) -> GenConfig {
        GenConfig {
            members,
            state_events,
            messages_per_state: messages,
            ..GenConfig::new(workload)
        }
    }

    fn lines(config: GenConfig) -> Vec<String> {
        Generator::new(config).map(|e| e.to_json_line()).collect()
    }

    /// Ancestor bitsets by stream position, plus a check that every prev is earlier and in
    /// the same room.
    fn ancestors(events: &[GenEvent]) -> Vec<Vec<u64>> {
        let words = events.len().div_ceil(64);
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut result: Vec<Vec<u64>> = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let mut bits = vec![0u64; words];
            for prev in &event.prev_events {
                let p = *index
                    .get(prev.as_str())
                    .unwrap_or_else(|| panic!("unknown prev {prev}"));
                assert_eq!(events[p].room_id, event.room_id, "prev in another room");
                for (b, a) in bits.iter_mut().zip(&result[p]) {
                    *b |= a;
                }
                bits[p / 64] |= 1 << (p % 64);
            }
            assert!(
                index.insert(&event.event_id, i).is_none(),
                "duplicate event ID"
            );
            result.push(bits);
        }
        result
    }

    /// Pairs of state events on one key where neither is an ancestor of the other.
    fn concurrent_same_key_pairs(events: &[GenEvent]) -> u64 {
        let anc = ancestors(events);
        let mut by_key: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            if let Some(key) = &e.state_key {
                by_key
                    .entry((&e.room_id, &e.event_type, key))
                    .or_default()
                    .push(i);
            }
        }
        let mut pairs = 0;
        for list in by_key.values() {
            for (x, &a) in list.iter().enumerate() {
                for &b in &list[x + 1..] {
                    if anc[b][a / 64] & (1 << (a % 64)) == 0 {
                        pairs += 1;
                    }
                }
            }
        }
        pairs
    }

    #[test]
    fn deterministic_per_seed() {
        for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
            let small = config(workload, 30, 120, 2);
            assert_eq!(lines(small.clone()), lines(small.clone()));
            let other = GenConfig {
                seed: 2,
                ..small.clone()
            };
            assert_ne!(lines(small), lines(other));
        }
    }

    #[test]
    fn event_ids_are_room_version_10() {
        for event in Generator::new(config(Workload::Forky, 50, 300, 1)) {
            let id = event.event_id.strip_prefix('$').expect("IDs start with $");
            assert_eq!(id.len(), 43, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
        }
    }

    #[test]
    fn lines_are_valid_json_with_expected_fields() {
        for line in lines(config(Workload::Many, 5, 20, 1)) {
            let v: Value = serde_json::from_str(&line).expect("valid JSON");
            for field in [
                "event_id",
                "room_id",
                "type",
                "sender",
                "prev_events",
                "depth",
                "content",
            ] {
                assert!(v.get(field).is_some(), "{field} missing in {line}");
            }
            assert!(line.starts_with("{\"event_id\":\"$"));
        }
    }

    #[test]
    fn topological_order_and_depths() {
        for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
            let events: Vec<GenEvent> = Generator::new(config(workload, 40, 400, 2)).collect();
            ancestors(&events);
            let depth: HashMap<&str, u64> = events
                .iter()
                .map(|e| (e.event_id.as_str(), e.depth))
                .collect();
            for e in &events {
                let max = e
                    .prev_events
                    .iter()
                    .map(|p| depth[p.as_str()])
                    .max()
                    .unwrap_or(0);
                assert_eq!(e.depth, max + 1);
                assert_eq!(e.prev_events.is_empty(), e.event_type == CREATE);
            }
        }
    }

    #[test]
    fn hq_is_mostly_membership_and_forks_without_conflicts() {
        let events: Vec<GenEvent> = Generator::new(config(Workload::Hq, 2000, 5000, 0)).collect();
        let states: Vec<&GenEvent> = events.iter().filter(|e| e.state_key.is_some()).collect();
        assert_eq!(states.len(), 5000);
        let members = states.iter().filter(|e| e.event_type == MEMBER).count();
        assert!(
            members * 100 >= states.len() * 95,
            "{members} of {}",
            states.len()
        );
        assert!(
            events.iter().any(|e| e.prev_events.len() == 2),
            "no fork was merged"
        );
        assert_eq!(concurrent_same_key_pairs(&events), 0);
    }

    #[test]
    fn hq_messages_follow_each_state_event() {
        let events: Vec<GenEvent> = Generator::new(config(Workload::Hq, 100, 200, 3)).collect();
        let states = events.iter().filter(|e| e.state_key.is_some()).count();
        assert_eq!(states, 200);
        // Only the create event lacks messages (nobody has joined yet); a fork may add one.
        assert!(events.len() >= 200 + 3 * 199);
    }

    #[test]
    fn many_rooms_share_settings() {
        let events: Vec<GenEvent> = Generator::new(config(Workload::Many, 20, 20, 1)).collect();
        let rooms: HashSet<&str> = events.iter().map(|e| e.room_id.as_str()).collect();
        assert_eq!(rooms.len(), 20);
        let pls: HashSet<String> = events
            .iter()
            .filter(|e| e.event_type == POWER_LEVELS)
            .map(|e| e.content.to_string())
            .collect();
        assert_eq!(pls.len(), 1);
        assert_eq!(concurrent_same_key_pairs(&events), 0);
    }

    #[test]
    fn forky_merges_wide_and_conflicts_only_on_purpose() {
        for seed in 1..=3 {
            let cfg = GenConfig {
                seed,
                ..config(Workload::Forky, 200, 2000, 1)
            };
            let mut generator = Generator::new(cfg);
            let events: Vec<GenEvent> = generator.by_ref().collect();
            assert_eq!(
                events.iter().filter(|e| e.state_key.is_some()).count(),
                2000
            );
            assert!(events.iter().any(|e| e.prev_events.len() >= 3));
            let conflicts = generator.conflicts();
            assert!(conflicts >= 1);
            assert_eq!(concurrent_same_key_pairs(&events), conflicts);
        }
    }

    #[test]
    fn hq_back_to_back_forks_stay_conflict_free() {
        // No messages, so nothing merges a fork before the next state step.
        let cfg = GenConfig {
            seed: 7,
            ..config(Workload::Hq, 300, 4000, 0)
        };
        let events: Vec<GenEvent> = Generator::new(cfg).collect();
        assert!(events.iter().all(|e| e.prev_events.len() <= 2));
        assert_eq!(concurrent_same_key_pairs(&events), 0);
    }

    #[test]
    fn forky_ends_with_one_extremity() {
        let events: Vec<GenEvent> = Generator::new(config(Workload::Forky, 100, 800, 2)).collect();
        let referenced: HashSet<&str> = events
            .iter()
            .flat_map(|e| e.prev_events.iter().map(String::as_str))
            .collect();
        let tips = events
            .iter()
            .filter(|e| !referenced.contains(e.event_id.as_str()))
            .count();
        assert_eq!(tips, 1);
    }

    #[test]
    fn write_jsonl_counts_lines() {
        let mut buf = Vec::new();
        let n = write_jsonl(config(Workload::Many, 3, 20, 2), &mut buf).expect("Vec never fails");
        let text = String::from_utf8(buf).expect("UTF-8");
        assert_eq!(text.lines().count() as u64, n);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn workload_names_round_trip() {
        for w in [Workload::Hq, Workload::Many, Workload::Forky] {
            assert_eq!(w.name().parse::<Workload>(), Ok(w));
        }
        assert!("nope".parse::<Workload>().is_err());
    }
}
