//! Event and room records: the cold per-event and per-room facts, stored through the crate's
//! one bincode module (`codec`).

use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::membership::Membership;
use serde::{Deserialize, Serialize};

/// What the store knows of one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The room the event belongs to.
    pub room: RoomNid,
    /// The event's type.
    pub event_type: TypeNid,
    /// The event's state key; `None` for a non-state event. `Some(StateKeyNid::EMPTY)` is a
    /// state event with the key `""`.
    pub state_key: Option<StateKeyNid>,
    /// The state before the event.
    pub state_before: SnapshotNid,
    /// Whether the event was rejected by authorization. A rejected event changes no state.
    pub rejected: bool,
    /// The event's `prev_events`.
    pub prev_events: Vec<EventNid>,
    /// The event's `auth_events`.
    pub auth_events: Vec<EventNid>,
    /// For an `m.room.member` event, its `content.membership`.
    pub membership: Option<Membership>,
}

/// The first field of an [`EventRecord`] in bincode (format 1), decoded alone by
/// [`codec::event_room`]. It must stay the record's first field.
///
/// [`codec::event_room`]: crate::store::codec::event_room
#[derive(Deserialize)]
pub(crate) struct RecordRoom {
    pub(crate) room: RoomNid,
}

impl EventRecord {
    /// A record for an event with no prev or auth events recorded.
    pub fn new(
        room: RoomNid,
        event_type: TypeNid,
        state_key: Option<StateKeyNid>,
        state_before: SnapshotNid,
    ) -> Self {
        EventRecord {
            room,
            event_type,
            state_key,
            state_before,
            rejected: false,
            prev_events: Vec::new(),
            auth_events: Vec::new(),
            membership: None,
        }
    }

    /// The state key this event sets in the state after it, if it sets one: a state event that
    /// was not rejected.
    pub fn sets(&self) -> Option<StateKey> {
        match (self.state_key, self.rejected) {
            (Some(key), false) => Some(StateKey::new(self.event_type, key)),
            _ => None,
        }
    }
}

/// The stored layout of records (`docs/format.md`): a format byte, then the event record's own
/// layout, or bincode's standard encoding. Exposed for tools and fuzzing; the store encodes and
/// decodes through these.
macro_rules! stored_layout {
    ($record:ty, $table:literal) => {
        impl $record {
            /// The bytes stored for this record.
            pub fn to_bytes(&self) -> crate::error::Result<Vec<u8>> {
                crate::store::codec::encode(self)
            }

            /// A record from stored bytes; damaged bytes are an [`crate::Error::Corrupt`].
            pub fn from_bytes(bytes: &[u8]) -> crate::error::Result<Self> {
                crate::store::codec::decode($table, "(given bytes)", bytes)
            }
        }
    };
}

stored_layout!(EventRecord, "events");
stored_layout!(Rejection, "outcomes");

/// Which of the spec's checks on receipt of a PDU found an event unauthorized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuthStep {
    /// Step 4: the authorization rules given the event's own `auth_events`.
    AuthEvents,
    /// Step 5: the rules given the state before the event.
    StateBefore,
    /// Step 6: the rules given the room's current state. Failing only this one soft-fails.
    CurrentState,
}

impl AuthStep {
    /// The step's number in the spec's list of checks performed on receipt of a PDU.
    pub fn number(self) -> u8 {
        match self {
            AuthStep::AuthEvents => 4,
            AuthStep::StateBefore => 5,
            AuthStep::CurrentState => 6,
        }
    }

    /// A short name, as the CLI prints it.
    pub fn name(self) -> &'static str {
        match self {
            AuthStep::AuthEvents => "auth_events",
            AuthStep::StateBefore => "state_before",
            AuthStep::CurrentState => "current_state",
        }
    }
}

/// Why an event was rejected or soft-failed: the step that found it, and the rule it broke in
/// the authorization rules' own words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Whether it was soft-failed (step 6 alone) rather than rejected.
    pub soft_failed: bool,
    /// The step that found it.
    pub step: AuthStep,
    /// The rule, as the authorization code states it.
    pub rule: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "step {} ({}): {}",
            self.step.number(),
            self.step.name(),
            self.rule
        )
    }
}

/// What became of a stored event when it was received.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventOutcome {
    /// It passed every check, or was imported as trusted.
    Accepted,
    /// It failed step 4 or 5: it is stored, and changes no state.
    Rejected(Rejection),
    /// It failed step 6 only: it is stored with its state, but moved neither the room's current
    /// state nor its forward extremities.
    SoftFailed(Rejection),
}

impl EventOutcome {
    /// `accepted`, `rejected` or `soft_failed`.
    pub fn name(&self) -> &'static str {
        match self {
            EventOutcome::Accepted => "accepted",
            EventOutcome::Rejected(_) => "rejected",
            EventOutcome::SoftFailed(_) => "soft_failed",
        }
    }

    /// Why, for a rejected or soft-failed event.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            EventOutcome::Accepted => None,
            EventOutcome::Rejected(r) | EventOutcome::SoftFailed(r) => Some(r),
        }
    }

    /// The outcome a stored rejection row stands for.
    pub fn from_rejection(rejection: Rejection) -> Self {
        if rejection.soft_failed {
            EventOutcome::SoftFailed(rejection)
        } else {
            EventOutcome::Rejected(rejection)
        }
    }
}
stored_layout!(RoomRecord, "rooms");

/// What the store knows of one room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// The room version, from the create event's `content.room_version` ("1" when absent).
    pub version: String,
    /// The room's current state.
    pub current_state: SnapshotNid,
    /// The forward extremities: events no other event names as a prev event yet.
    pub latest_events: Vec<EventNid>,
    /// How many events of the room have been ingested; the next one gets this sequence number.
    pub event_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nid::{EventNid, SnapshotNid, StateKeyNid, TypeNid};
    use crate::store::codec;

    #[test]
    fn the_room_alone_decodes_from_a_whole_record_in_either_format() {
        let room = RoomNid::new(300_000).expect("not 0");
        let mut record = EventRecord::new(
            room,
            TypeNid::MEMBER,
            Some(StateKeyNid::EMPTY),
            SnapshotNid::EMPTY,
        );
        record.auth_events = vec![EventNid::new(7).expect("not 0")];
        record.membership = Some(Membership::Knock);
        for bytes in [
            codec::encode(&record).expect("encodes"),
            codec::encode_bincode(&record).expect("encodes"),
        ] {
            assert_eq!(
                codec::event_room("events", 1, &bytes).expect("decodes"),
                room
            );
            assert_eq!(
                codec::decode::<EventRecord>("events", 1, &bytes).expect("decodes"),
                record
            );
        }
    }
}
