//! The `many` workload: many small rooms created with identical settings.

use super::*;

#[derive(Debug)]
pub(super) struct SmallRoom {
    pub(super) room: Room,
    pub(super) number: u64,
    pub(super) setup: u64,
    pub(super) next_join: usize,
    pub(super) extras_left: u64,
}

impl SmallRoom {
    /// Emits one state event and its messages; returns whether the room is complete.
    pub(super) fn step(
        &mut self,
        ctx: &mut Ctx,
        pl: &Value,
        messages: u32,
        out: &mut VecDeque<GenEvent>,
    ) -> bool {
        let draft = if self.setup < SETUP_STEPS {
            self.setup += 1;
            setup_draft(&self.room, self.setup - 1, with_creator(pl, &self.room))
        } else {
            self.next_draft(ctx)
        };
        out.push_back(self.room.extend_all(ctx, draft));
        linear_messages(&mut self.room, ctx, messages, out);
        self.setup >= SETUP_STEPS
            && self.next_join >= self.room.users.len()
            && self.extras_left == 0
    }

    pub(super) fn next_draft(&mut self, ctx: &mut Ctx) -> Draft {
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
pub(super) struct Many {
    pub(super) rooms: u64,
    pub(super) next_room: u64,
    /// Users are drawn from `0..pool`, so most users are in several rooms.
    pub(super) pool: u64,
    pub(super) target: u64,
    pub(super) messages: u32,
    /// Shared by every room, which is what makes the content deduplicable.
    pub(super) power_levels: Value,
    pub(super) current: Option<SmallRoom>,
    pub(super) room_version: RoomVersion,
}

/// The shared power levels with the room's creator at 100: above everyone it kicks or bans, and
/// allowed every setup event.
fn with_creator(shared: &Value, room: &Room) -> Value {
    let mut pl = shared.clone();
    if room.version == RoomVersion::V12 {
        // The creator's power is implied, and listing it is refused.
        return pl;
    }
    if let Some(users) = pl.get_mut("users").and_then(Value::as_object_mut) {
        users.insert(room.user(0), json!(100));
    }
    pl
}

impl Many {
    pub(super) fn new(config: &GenConfig) -> Self {
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
            room_version: config.room_version,
        }
    }

    pub(super) fn step(&mut self, ctx: &mut Ctx, out: &mut VecDeque<GenEvent>) -> bool {
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

    pub(super) fn start_room(&mut self, ctx: &mut Ctx) -> SmallRoom {
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
        // The spec wants a room ID on its creator's server.
        let id = format!("!room{number}:server{}.test", users[0] % SERVERS);
        SmallRoom {
            room: Room::new(id, users, self.room_version),
            number,
            setup: 0,
            next_join: 1,
            extras_left: extras,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// forky
