//! One room as the generator tracks it (members, extremities, current state keys), and the
//! drafts of the events every workload writes: setup, joins, renames, leaves, kicks, bans,
//! messages.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Membership {
    Never,
    Join,
    Leave,
    Ban,
}

#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) membership: Membership,
    pub(super) event: Option<String>,
    /// Position in `Room::joined`, so random joined senders cost O(1).
    pub(super) joined_pos: usize,
}

pub(super) const NOT_JOINED: usize = usize::MAX;

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
pub(super) struct Link {
    pub(super) id: String,
    pub(super) depth: u64,
}

/// A forward extremity and its prev events (needed to create siblings).
#[derive(Clone, Debug)]
pub(super) struct Tip {
    pub(super) link: Link,
    pub(super) parents: Vec<Link>,
}

/// How a new event attaches to the extremities. Indices point into `Room::tips`.
#[derive(Clone, Debug)]
pub(super) enum Op {
    /// prev = [tip i]; the new event replaces it.
    Extend(usize),
    /// prev = tip i's prevs; the new event becomes an extra extremity (a fork).
    Sibling(usize),
    /// prev = these tips (ascending); they are replaced by the new event.
    Merge(Vec<usize>),
}

impl Op {
    /// The op that builds on every extremity (n must be at least 1).
    pub(super) fn all(n: usize) -> Self {
        if n == 1 {
            Self::Extend(0)
        } else {
            Self::Merge((0..n).collect())
        }
    }

    pub(super) fn covers_all(&self, n: usize) -> bool {
        match self {
            Self::Extend(_) => n == 1,
            Self::Sibling(_) => false,
            Self::Merge(ix) => ix.len() == n,
        }
    }
}

/// An event before it gets an ID; `sender` and `membership.0` are local user indices.
#[derive(Debug)]
pub(super) struct Draft {
    pub(super) event_type: &'static str,
    pub(super) state_key: Option<String>,
    pub(super) sender: usize,
    pub(super) content: Value,
    pub(super) membership: Option<(usize, Membership)>,
}

#[derive(Debug)]
pub(super) struct Room {
    pub(super) version: RoomVersion,
    pub(super) id: String,
    /// Global user number of each local user index; index 0 is the creator.
    pub(super) users: Vec<u64>,
    pub(super) slots: Vec<Slot>,
    pub(super) joined: Vec<usize>,
    pub(super) create: Option<String>,
    pub(super) power_levels: Option<String>,
    pub(super) join_rules: Option<String>,
    pub(super) tips: Vec<Tip>,
}

impl Room {
    /// A room of `users`; in room version 12 `id` is replaced by the create event's.
    pub(super) fn new(id: String, users: Vec<u64>, version: RoomVersion) -> Self {
        let slots = vec![Slot::default(); users.len()];
        Self {
            id,
            version,
            users,
            slots,
            joined: Vec::new(),
            create: None,
            power_levels: None,
            join_rules: None,
            tips: Vec::new(),
        }
    }

    pub(super) fn user(&self, local: usize) -> String {
        user_id(self.users[local])
    }

    pub(super) fn random_joined(&self, rng: &mut Rng) -> Option<usize> {
        if self.joined.is_empty() {
            return None;
        }
        Some(self.joined[rng.index(self.joined.len())])
    }

    /// Builds on every extremity, leaving exactly one.
    pub(super) fn extend_all(&mut self, ctx: &mut Ctx, draft: Draft) -> GenEvent {
        let prevs = std::mem::take(&mut self.tips)
            .into_iter()
            .map(|t| t.link)
            .collect();
        let (event, tip) = self.build(ctx, draft, prevs);
        self.tips.push(tip);
        event
    }

    pub(super) fn apply(&mut self, ctx: &mut Ctx, draft: Draft, op: &Op) -> GenEvent {
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

    pub(super) fn build(
        &mut self,
        ctx: &mut Ctx,
        draft: Draft,
        prevs: Vec<Link>,
    ) -> (GenEvent, Tip) {
        let depth = prevs.iter().map(|l| l.depth).max().map_or(1, |d| d + 1);
        let auth_events = self.auth_for(&draft);
        let event_id = ctx.next_id();
        let origin_server_ts = ctx.next_ts();
        if draft.event_type == CREATE && self.version == RoomVersion::V12 {
            self.id = format!("!{}", &event_id[1..]);
        }
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
            expected: Expected::Accepted,
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
    pub(super) fn auth_for(&self, draft: &Draft) -> Vec<String> {
        let mut auth = Vec::with_capacity(5);
        if draft.event_type == CREATE {
            return auth;
        }
        // Room version 12 implies the create event from the room ID.
        if self.version != RoomVersion::V12 {
            auth.extend(self.create.iter().cloned());
        }
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

    pub(super) fn record(&mut self, draft: &Draft, event_id: &str) {
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

    pub(super) fn set_membership(&mut self, user: usize, membership: Membership, event_id: String) {
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

pub(super) fn state(
    event_type: &'static str,
    key: impl Into<String>,
    sender: usize,
    content: Value,
) -> Draft {
    Draft {
        event_type,
        state_key: Some(key.into()),
        sender,
        content,
        membership: None,
    }
}

pub(super) fn member(
    room: &Room,
    sender: usize,
    target: usize,
    m: Membership,
    content: Value,
) -> Draft {
    Draft {
        event_type: MEMBER,
        state_key: Some(room.user(target)),
        sender,
        content,
        membership: Some((target, m)),
    }
}

pub(super) fn join_draft(room: &Room, user: usize) -> Draft {
    let name = format!("User {}", room.users[user]);
    member(
        room,
        user,
        user,
        Membership::Join,
        json!({"membership": "join", "displayname": name}),
    )
}

pub(super) fn rename_with(room: &Room, user: usize, label: &str) -> Draft {
    let name = format!("User {} ({label})", room.users[user]);
    member(
        room,
        user,
        user,
        Membership::Join,
        json!({"membership": "join", "displayname": name}),
    )
}

pub(super) fn rename_draft(room: &Room, rng: &mut Rng, user: usize) -> Draft {
    let label = format!(
        "{} {}",
        NAME_TAGS[rng.index(NAME_TAGS.len())],
        rng.below(1000)
    );
    rename_with(room, user, &label)
}

pub(super) fn leave_draft(room: &Room, user: usize) -> Draft {
    member(
        room,
        user,
        user,
        Membership::Leave,
        json!({"membership": "leave"}),
    )
}

pub(super) fn kick_draft(room: &Room, admin: usize, user: usize) -> Draft {
    let content = json!({"membership": "leave", "reason": "off-topic"});
    member(room, admin, user, Membership::Leave, content)
}

pub(super) fn ban_draft(room: &Room, admin: usize, user: usize) -> Draft {
    member(
        room,
        admin,
        user,
        Membership::Ban,
        json!({"membership": "ban", "reason": "spam"}),
    )
}

pub(super) fn unban_draft(room: &Room, admin: usize, user: usize) -> Draft {
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
pub(super) struct ChurnMix {
    pub(super) rename: u64,
    pub(super) leave: u64,
    pub(super) kick: u64,
}

pub(super) const HQ_MIX: ChurnMix = ChurnMix {
    rename: 45,
    leave: 50,
    kick: 4,
};
pub(super) const MANY_MIX: ChurnMix = ChurnMix {
    rename: 40,
    leave: 60,
    kick: 0,
};
pub(super) const FORKY_MIX: ChurnMix = ChurnMix {
    rename: 70,
    leave: 30,
    kick: 0,
};

/// The next membership change of `target`, chosen to be legal for its current membership.
pub(super) fn churn_draft(
    room: &Room,
    rng: &mut Rng,
    target: usize,
    admin: usize,
    mix: ChurnMix,
) -> Draft {
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

pub(super) fn message_draft(room: &Room, rng: &mut Rng) -> Option<Draft> {
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

pub(super) fn power_levels_content(users: Map<String, Value>, users_default: u64) -> Value {
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
pub(super) fn admin_power_levels(room: &Room, admins: usize, moderator: Option<usize>) -> Value {
    let mut users = Map::new();
    // Every admin may send every event the workloads write, power levels included. In room
    // version 12 the creator's power is implied and may not be listed.
    let first = usize::from(room.version == RoomVersion::V12);
    for admin in first..admins {
        users.insert(room.user(admin), json!(100));
    }
    if let Some(m) = moderator.filter(|m| *m >= first) {
        users.entry(room.user(m)).or_insert(json!(50));
    }
    power_levels_content(users, 0)
}

/// The fixed opening of every room; `step` counts from 0 (the create event).
pub(super) fn setup_draft(room: &Room, step: u64, power_levels: Value) -> Draft {
    match step {
        0 => state(
            CREATE,
            "",
            0,
            match room.version {
                RoomVersion::V10 => json!({"creator": room.user(0), "room_version": "10"}),
                RoomVersion::V12 => json!({"room_version": "12"}),
            },
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
pub(super) fn linear_messages(
    room: &mut Room,
    ctx: &mut Ctx,
    count: u32,
    out: &mut VecDeque<GenEvent>,
) {
    for _ in 0..count {
        let Some(draft) = message_draft(room, &mut ctx.rng) else {
            return;
        };
        out.push_back(room.extend_all(ctx, draft));
    }
}

// ---------------------------------------------------------------------------------------------
// hq
