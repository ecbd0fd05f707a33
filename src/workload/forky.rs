//! The `forky` workload: one room with a wide event graph and a few genuine state conflicts.

use super::*;

/// Keys changed on some branch that not every future event is guaranteed to descend from.
///
/// After the graph collapses to one extremity T, every later event descends from all events
/// but T (siblings of T skip only T itself), so the set shrinks to T's own key. Touching only
/// keys outside the set therefore never creates a conflict by accident.
#[derive(Debug)]
pub(super) struct KeySet {
    pub(super) flags: Vec<bool>,
    pub(super) dirty: Vec<usize>,
}

impl KeySet {
    pub(super) fn new(size: usize) -> Self {
        Self {
            flags: vec![false; size],
            dirty: Vec::new(),
        }
    }

    pub(super) fn contains(&self, key: usize) -> bool {
        self.flags[key]
    }

    pub(super) fn insert(&mut self, key: usize) {
        if !self.flags[key] {
            self.flags[key] = true;
            self.dirty.push(key);
        }
    }

    pub(super) fn clear(&mut self) {
        for key in self.dirty.drain(..) {
            self.flags[key] = false;
        }
    }
}

pub(super) fn choose_op(rng: &mut Rng, tips: &[Tip]) -> Op {
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

pub(super) fn merge_op(rng: &mut Rng, n: usize) -> Op {
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
pub(super) struct Forky {
    pub(super) room: Room,
    pub(super) budget: u64,
    pub(super) states: u64,
    pub(super) next_join: usize,
    /// Users below this index join on the linear history before forking starts.
    pub(super) linear_end: usize,
    pub(super) admins: usize,
    pub(super) messages: u32,
    pub(super) unsettled: KeySet,
    pub(super) conflicts: u64,
    pub(super) others: u64,
}

impl Forky {
    pub(super) fn new(config: &GenConfig) -> Self {
        let members = config.members.max(1);
        let linear = 1 + config.state_events.saturating_sub(SETUP_STEPS) / 2;
        Self {
            room: Room::new(
                "!forky:server0.test".to_owned(),
                (0..members).collect(),
                config.room_version,
            ),
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

    pub(super) fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
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

    pub(super) fn linear_step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
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
    pub(super) fn final_merge(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        let (draft, key) = self.any_draft(ctx);
        self.emit(ctx, draft, &Op::all(self.room.tips.len()), Some(key), out);
        self.states += 1;
        self.linear_messages(ctx, out);
    }

    pub(super) fn normal_state(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
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
    pub(super) fn try_conflict(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
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

    pub(super) fn conflict_drafts(&mut self, ctx: &mut Ctx) -> Option<(Draft, Draft, usize)> {
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
    pub(super) fn free_draft(&mut self, ctx: &mut Ctx) -> Option<(Draft, usize)> {
        for _ in 0..PICK_TRIES {
            let (draft, key) = self.any_draft(ctx);
            if !self.unsettled.contains(key) {
                return Some((draft, key));
            }
        }
        None
    }

    /// A state change and its key index: members by user index, then topic, name, custom keys.
    pub(super) fn any_draft(&mut self, ctx: &mut Ctx) -> (Draft, usize) {
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

    pub(super) fn other_draft(&mut self, ctx: &mut Ctx) -> (Draft, usize) {
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

    pub(super) fn graph_messages(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        for _ in 0..self.messages {
            let Some(draft) = self.settled_message(ctx) else {
                return;
            };
            let op = choose_op(&mut ctx.rng, &self.room.tips);
            self.emit(ctx, draft, &op, None, out);
        }
    }

    pub(super) fn linear_messages(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) {
        for _ in 0..self.messages {
            let Some(draft) = message_draft(&self.room, &mut ctx.rng) else {
                return;
            };
            self.emit_linear(ctx, draft, None, out);
        }
    }

    /// A message from a member whose membership no extremity disagrees on, so that it is
    /// joined in the state of whichever extremity the message extends.
    pub(super) fn settled_message(&mut self, ctx: &mut Ctx) -> Option<Draft> {
        for _ in 0..PICK_TRIES {
            let draft = message_draft(&self.room, &mut ctx.rng)?;
            if !self.unsettled.contains(draft.sender) {
                return Some(draft);
            }
        }
        None
    }

    pub(super) fn emit(
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

    pub(super) fn emit_linear(
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
    pub(super) fn settle(&mut self, key: Option<usize>) {
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
