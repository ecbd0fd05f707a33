//! The `hq` workload: one huge public room, heavy membership churn, rare forks.

use super::*;

#[derive(Debug)]
pub(super) struct Hq {
    pub(super) room: Room,
    pub(super) budget: u64,
    pub(super) states: u64,
    /// Users `0..next_join` have a membership event.
    pub(super) next_join: usize,
    pub(super) admins: usize,
    /// Only joins until this many users have joined, so churn has a crowd to work on.
    pub(super) warmup: usize,
    pub(super) messages: u32,
    pub(super) others: u64,
}

impl Hq {
    pub(super) fn new(config: &GenConfig) -> Self {
        let members = config.members.max(1);
        let admins = members.min(HQ_ADMINS) as usize;
        Self {
            room: Room::new(
                "!hq:server0.test".to_owned(),
                (0..members).collect(),
                config.room_version,
            ),
            budget: config.state_events,
            states: 0,
            next_join: 1,
            admins,
            warmup: ((members / 10) as usize).max(admins),
            messages: config.messages_per_state,
            others: 0,
        }
    }

    pub(super) fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
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

    pub(super) fn next_draft(&mut self, ctx: &mut Ctx) -> Draft {
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

    pub(super) fn churn(&mut self, ctx: &mut Ctx) -> Draft {
        if self.next_join <= self.admins {
            // Too few members for churn targets: admins only ever rename themselves.
            let user = self.room.random_joined(&mut ctx.rng).unwrap_or(0);
            return rename_draft(&self.room, &mut ctx.rng, user);
        }
        let target = ctx.rng.range(self.admins as u64, self.next_join as u64 - 1) as usize;
        let admin = ctx.rng.index(self.admins);
        churn_draft(&self.room, &mut ctx.rng, target, admin, HQ_MIX)
    }

    pub(super) fn other_draft(&mut self, ctx: &mut Ctx) -> Draft {
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
    pub(super) fn fork(&mut self, ctx: &mut Ctx, first: Draft, out: &mut VecDeque<GenEvent>) {
        let first_key = (first.event_type, first.state_key.clone());
        out.push_back(self.room.apply(ctx, first, &Op::Extend(0)));
        self.states += 1;
        let second = self.fork_partner(ctx, &first_key);
        if second.state_key.is_some() {
            self.states += 1;
        }
        out.push_back(self.room.apply(ctx, second, &Op::Sibling(0)));
    }

    pub(super) fn fork_partner(&mut self, ctx: &mut Ctx, taken: &(&str, Option<String>)) -> Draft {
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
