//! Unauthorized events slipped into a generated history, each with the outcome the Matrix
//! authorization rules give it.
//!
//! The injector watches the stream: for the room of the latest event it keeps the create event,
//! the power levels, the join rules, every user's membership (with their last join), and the
//! forward extremities. Where the room has one extremity its view is the room's state exactly,
//! and there it may add, after an event, one event that must fail:
//! - a message from someone who never joined (rejected);
//! - a member raising themselves to power 100 (rejected);
//! - a member banning someone of higher power (rejected);
//! - a banned user joining again (rejected);
//! - a message naming one of the injected rejected events among its auth events (rejected);
//! - a message naming an auth event the selection does not (the join rules; rejected);
//! - a message from a user who left, naming their old join: it passes its auth events, not the
//!   state before it (rejected);
//! - a message from a banned user on a fork from before the ban (soft-failed).
//!
//! Injected events are never named by later events, and they draw on their own random stream
//! and ID counter, so the history without them is byte for byte the one generated without
//! injection.

use super::*;
use std::collections::HashMap;

/// How a generated event should fare under the authorization rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    /// It passes every check.
    Accepted,
    /// It fails the checks given its auth events or the state before it.
    Rejected,
    /// It fails only the check given the room's current state.
    SoftFailed,
}

impl Expected {
    /// `accepted`, `rejected` or `soft_failed`, as `roomstate states` prints outcomes.
    pub fn name(self) -> &'static str {
        match self {
            Expected::Accepted => "accepted",
            Expected::Rejected => "rejected",
            Expected::SoftFailed => "soft_failed",
        }
    }
}

/// The kinds of unauthorized event, in the order the injector tries them.
const KINDS: u64 = 8;

#[derive(Debug, Default)]
struct Member {
    membership: String,
    event: String,
    last_join: Option<String>,
}

/// The watched room, as its accepted events left it.
#[derive(Debug, Default)]
struct Watched {
    room_id: String,
    create: String,
    /// In room version 12 the create event's sender, whose power is unlimited.
    creator: Option<String>,
    power_levels: Option<(String, Value)>,
    join_rules: Option<String>,
    members: HashMap<String, Member>,
    /// In stream order, for deterministic picks.
    users: Vec<String>,
    tips: Vec<String>,
    depth: u64,
    ts: u64,
    /// Injected power-level events that were rejected, with their senders.
    rejected: Vec<(String, String)>,
    /// Bans seen while the room had one extremity: the user, that extremity, their join.
    bans: Vec<(String, String, String)>,
}

#[derive(Debug)]
pub(super) struct Injector {
    rng: Rng,
    id_seed: u64,
    counter: u64,
    percent: u64,
    room: Watched,
}

impl Injector {
    pub(super) fn new(config: &GenConfig, percent: u64) -> Self {
        let mut mix = Rng(config.seed ^ 0x005E_ED0F_1A7E_u64.wrapping_mul(config.workload.tag()));
        Injector {
            id_seed: mix.next_u64(),
            rng: Rng(mix.next_u64()),
            counter: 0,
            percent,
            room: Watched::default(),
        }
    }

    /// Takes in a generated (accepted) event, and perhaps returns an unauthorized one to follow
    /// it.
    pub(super) fn after(&mut self, event: &GenEvent) -> Option<GenEvent> {
        self.observe(event);
        if self.room.tips.len() != 1 || self.room.power_levels.is_none() {
            return None;
        }
        if !self.rng.percent(self.percent) {
            return None;
        }
        let first = self.rng.below(KINDS);
        (0..KINDS).find_map(|i| self.build((first + i) % KINDS))
    }

    fn observe(&mut self, e: &GenEvent) {
        if e.room_id != self.room.room_id {
            self.room = Watched {
                room_id: e.room_id.clone(),
                ..Watched::default()
            };
        }
        let single_before = self.room.tips.len() == 1;
        let before: Option<String> = self.room.tips.first().cloned();
        let room = &mut self.room;
        room.tips.retain(|t| !e.prev_events.contains(t));
        room.tips.push(e.event_id.clone());
        room.depth = room.depth.max(e.depth);
        room.ts = room.ts.max(e.origin_server_ts);
        let Some(key) = &e.state_key else {
            return;
        };
        match e.event_type.as_str() {
            CREATE => {
                room.create = e.event_id.clone();
                if e.content["room_version"] == "12" {
                    room.creator = Some(e.sender.clone());
                }
            }
            POWER_LEVELS => room.power_levels = Some((e.event_id.clone(), e.content.clone())),
            JOIN_RULES => room.join_rules = Some(e.event_id.clone()),
            MEMBER => {
                let membership = e.content["membership"].as_str().unwrap_or_default();
                if !room.members.contains_key(key) {
                    room.users.push(key.clone());
                }
                let member = room.members.entry(key.clone()).or_default();
                if membership == "ban"
                    && member.membership == "join"
                    && single_before
                    && let (Some(tip), Some(join)) = (before, member.last_join.clone())
                {
                    room.bans.push((key.clone(), tip, join));
                }
                member.membership = membership.to_owned();
                member.event = e.event_id.clone();
                if membership == "join" {
                    member.last_join = Some(e.event_id.clone());
                }
            }
            _ => {}
        }
    }

    fn level(&self, user: &str) -> i64 {
        if self.room.creator.as_deref() == Some(user) {
            return i64::MAX;
        }
        let Some((_, pl)) = &self.room.power_levels else {
            return 0;
        };
        pl["users"][user]
            .as_i64()
            .or_else(|| pl["users_default"].as_i64())
            .unwrap_or(0)
    }

    /// Users of the room with this membership, in the order they first appeared.
    fn with_membership(&self, membership: &str) -> Vec<String> {
        self.room
            .users
            .iter()
            .filter(|u| self.room.members[*u].membership == membership)
            .cloned()
            .collect()
    }

    fn pick(&mut self, users: &[String]) -> Option<String> {
        (!users.is_empty()).then(|| users[self.rng.index(users.len())].clone())
    }

    fn member_event(&self, user: &str) -> String {
        self.room.members[user].event.clone()
    }

    fn build(&mut self, kind: u64) -> Option<GenEvent> {
        let (pl_id, pl) = self.room.power_levels.clone()?;
        let joined = self.with_membership("join");
        let create = self.room.create.clone();
        let low: Vec<String> = joined
            .iter()
            .filter(|u| self.level(u) < 100)
            .cloned()
            .collect();
        let message = json!({"msgtype": "m.text", "body": "let me in"});
        let (sender, ty, key, content, auth, prevs, expected) = match kind {
            0 => {
                let n = self.counter;
                let sender = format!("@intruder{n}:evil.test");
                (
                    sender,
                    MESSAGE,
                    None,
                    message,
                    vec![create, pl_id],
                    None,
                    Expected::Rejected,
                )
            }
            1 => {
                let sender = self.pick(&low)?;
                let mut raised = pl;
                raised["users"][sender.as_str()] = json!(100);
                let auth = vec![create, pl_id, self.member_event(&sender)];
                (
                    sender.clone(),
                    POWER_LEVELS,
                    Some(String::new()),
                    raised,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            2 => {
                let sender = self.pick(&low)?;
                let above: Vec<String> = joined
                    .iter()
                    .filter(|u| self.level(u) > self.level(&sender))
                    .cloned()
                    .collect();
                let target = self.pick(&above)?;
                let auth = vec![
                    create,
                    pl_id,
                    self.member_event(&sender),
                    self.member_event(&target),
                ];
                let content = json!({"membership": "ban"});
                (
                    sender,
                    MEMBER,
                    Some(target),
                    content,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            3 => {
                let banned = self.with_membership("ban");
                let user = self.pick(&banned)?;
                let mut auth = vec![create, pl_id, self.member_event(&user)];
                auth.extend(self.room.join_rules.clone());
                let content = json!({"membership": "join"});
                (
                    user.clone(),
                    MEMBER,
                    Some(user),
                    content,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            4 => {
                let still: Vec<(String, String)> = self
                    .room
                    .rejected
                    .iter()
                    .filter(|(_, s)| joined.contains(s))
                    .cloned()
                    .collect();
                let (bad, sender) = still.get(self.rng.index(still.len().max(1))).cloned()?;
                let auth = vec![create, bad, self.member_event(&sender)];
                (
                    sender,
                    MESSAGE,
                    None,
                    message,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            5 => {
                let sender = self.pick(&joined)?;
                let rules = self.room.join_rules.clone()?;
                let auth = vec![create, pl_id, self.member_event(&sender), rules];
                (
                    sender,
                    MESSAGE,
                    None,
                    message,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            6 => {
                let left: Vec<String> = self
                    .with_membership("leave")
                    .into_iter()
                    .filter(|u| self.room.members[u].last_join.is_some())
                    .collect();
                let sender = self.pick(&left)?;
                let join = self.room.members[&sender].last_join.clone()?;
                let auth = vec![create, pl_id, join];
                (
                    sender,
                    MESSAGE,
                    None,
                    message,
                    auth,
                    None,
                    Expected::Rejected,
                )
            }
            _ => {
                let bans: Vec<(String, String, String)> = self
                    .room
                    .bans
                    .iter()
                    .filter(|(u, _, _)| self.room.members[u].membership == "ban")
                    .cloned()
                    .collect();
                let (user, tip, join) = bans.get(self.rng.index(bans.len().max(1))).cloned()?;
                let auth = vec![create, pl_id, join];
                (
                    user,
                    MESSAGE,
                    None,
                    message,
                    auth,
                    Some(vec![tip]),
                    Expected::SoftFailed,
                )
            }
        };
        let mut auth = auth;
        if self.room.creator.is_some() {
            // Room version 12 implies the create event; naming it is refused.
            auth.retain(|id| *id != self.room.create);
        }
        let event_id = self.next_id();
        if kind == 1 {
            self.room.rejected.push((event_id.clone(), sender.clone()));
        }
        self.room.ts += 1;
        Some(GenEvent {
            event_id,
            room_id: self.room.room_id.clone(),
            event_type: ty.to_owned(),
            state_key: key,
            sender,
            prev_events: prevs.unwrap_or_else(|| self.room.tips.clone()),
            auth_events: auth,
            depth: self.room.depth + 1,
            origin_server_ts: self.room.ts,
            content,
            expected,
        })
    }

    fn next_id(&mut self) -> String {
        self.counter += 1;
        event_id(self.id_seed, self.counter - 1)
    }
}
