//! Numeric IDs (NIDs): the small numbers that stand for Matrix strings inside the store.
//!
//! Every NID wraps a [`NonZeroU64`], so 0 can never be an ID and `Option<Nid>` is as small as the
//! NID itself. On disk, 0 is free to mean "none" (see `docs/format.md`).

use std::fmt;
use std::num::NonZeroU64;

macro_rules! nid_type {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(NonZeroU64);

        impl $name {
            /// Wraps a raw value; `None` for 0, which is never an ID.
            pub const fn new(raw: u64) -> Option<Self> {
                match NonZeroU64::new(raw) {
                    Some(n) => Some(Self(n)),
                    None => None,
                }
            }

            /// The raw number, as stored on disk.
            pub const fn get(self) -> u64 {
                self.0.get()
            }

            /// Which kind of ID this is, for error messages.
            pub const KIND: NidKind = $kind;

            /// The largest value, a placeholder that decoding never hands out for a real ID.
            pub const MAX: Self = Self(NonZeroU64::MAX);
        }

        impl From<NonZeroU64> for $name {
            fn from(raw: NonZeroU64) -> Self {
                Self(raw)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<$name> for u64 {
            fn from(nid: $name) -> u64 {
                nid.get()
            }
        }
    };
}

nid_type!(
    /// A room, interned from its room ID (`!abc:server`).
    RoomNid,
    NidKind::Room
);
nid_type!(
    /// An event type such as `m.room.member`.
    TypeNid,
    NidKind::EventType
);
nid_type!(
    /// A state key such as `@alice:server` or `""`.
    StateKeyNid,
    NidKind::StateKey
);
nid_type!(
    /// An event, interned from its event ID (`$...`).
    EventNid,
    NidKind::Event
);
nid_type!(
    /// A stored state snapshot.
    SnapshotNid,
    NidKind::Snapshot
);

/// The kinds of numeric ID, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NidKind {
    /// [`RoomNid`]
    Room,
    /// [`TypeNid`]
    EventType,
    /// [`StateKeyNid`]
    StateKey,
    /// [`EventNid`]
    Event,
    /// [`SnapshotNid`]
    Snapshot,
}

impl fmt::Display for NidKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NidKind::Room => "room",
            NidKind::EventType => "event type",
            NidKind::StateKey => "state key",
            NidKind::Event => "event",
            NidKind::Snapshot => "snapshot",
        })
    }
}

const fn nz(raw: u64) -> NonZeroU64 {
    match NonZeroU64::new(raw) {
        Some(n) => n,
        None => panic!("well-known NIDs are non-zero"),
    }
}

impl TypeNid {
    /// `m.room.create`
    pub const CREATE: TypeNid = TypeNid(nz(1));
    /// `m.room.power_levels`
    pub const POWER_LEVELS: TypeNid = TypeNid(nz(2));
    /// `m.room.join_rules`
    pub const JOIN_RULES: TypeNid = TypeNid(nz(3));
    /// `m.room.third_party_invite`
    pub const THIRD_PARTY_INVITE: TypeNid = TypeNid(nz(4));
    /// `m.room.member`
    pub const MEMBER: TypeNid = TypeNid(nz(5));
    /// `m.room.redaction`
    pub const REDACTION: TypeNid = TypeNid(nz(6));
    /// `m.room.history_visibility`
    pub const HISTORY_VISIBILITY: TypeNid = TypeNid(nz(7));
}

impl StateKeyNid {
    /// The empty state key `""`.
    pub const EMPTY: StateKeyNid = StateKeyNid(nz(1));
    /// The smallest state-key NID, for range bounds.
    pub const MIN: StateKeyNid = StateKeyNid(nz(1));
}

impl SnapshotNid {
    /// The empty state, which every store holds from the moment it is created.
    pub const EMPTY: SnapshotNid = SnapshotNid(nz(1));
}

/// Event types with preassigned NIDs, in NID order starting at 1.
pub const WELL_KNOWN_TYPES: [&str; 7] = [
    "m.room.create",
    "m.room.power_levels",
    "m.room.join_rules",
    "m.room.third_party_invite",
    "m.room.member",
    "m.room.redaction",
    "m.room.history_visibility",
];

/// State keys with preassigned NIDs, in NID order starting at 1.
pub const WELL_KNOWN_STATE_KEYS: [&str; 1] = [""];

/// The first NID handed out for event types and state keys that are not well known. The gap
/// leaves room to preassign more well-known strings without renumbering existing stores.
pub const FIRST_DYNAMIC_NID: u64 = 65_536;

/// The (type, state key) pair that a state entry is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// The event type.
    pub ty: TypeNid,
    /// The state key.
    pub key: StateKeyNid,
}

impl StateKey {
    /// Pairs a type with a state key.
    pub const fn new(ty: TypeNid, key: StateKeyNid) -> Self {
        StateKey { ty, key }
    }
}

/// A hasher for NIDs and other integer keys: one multiply, where std's SipHash spends tens of
/// cycles guarding against collision attacks that numbers we hand out ourselves cannot mount.
#[derive(Clone, Copy, Debug, Default)]
pub struct NidHasher(u64);

impl std::hash::Hasher for NidHasher {
    fn finish(&self) -> u64 {
        // Fibonacci hashing: the multiply spreads consecutive NIDs over the high bits, which
        // hashbrown reads for its control bytes.
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8)) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.rotate_left(32) ^ n;
    }
}

/// A `HashSet` of NIDs with [`NidHasher`].
pub type NidSet<T> = std::collections::HashSet<T, std::hash::BuildHasherDefault<NidHasher>>;

/// A `HashMap` keyed by NIDs, with [`NidHasher`].
pub type NidMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<NidHasher>>;
