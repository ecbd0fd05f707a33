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

/// The stored layout of event and room records (`docs/format.md`): a format byte, then
/// bincode's standard encoding. Exposed for tools and fuzzing; the store encodes and decodes
/// through these.
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
