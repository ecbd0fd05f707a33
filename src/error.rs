//! The error type of every fallible operation in the crate.

use crate::nid::{EventNid, NidKind, RoomNid, SnapshotNid};
use std::fmt;

/// Shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which kind of Matrix string an [`Error::InvalidId`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StringKind {
    /// A room ID.
    RoomId,
    /// An event type.
    EventType,
    /// A state key.
    StateKey,
    /// An event ID.
    EventId,
}

impl fmt::Display for StringKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StringKind::RoomId => "room ID",
            StringKind::EventType => "event type",
            StringKind::StateKey => "state key",
            StringKind::EventId => "event ID",
        })
    }
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A string the Matrix spec forbids: empty where it must not be, or over 255 bytes.
    #[error("invalid {kind} {shown:?}: {reason}")]
    InvalidId {
        /// Which kind of string.
        kind: StringKind,
        /// The string, cut to 64 characters.
        shown: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A NID that no interning table knows.
    #[error("unknown {kind} NID {nid}")]
    UnknownNid {
        /// Which kind of NID.
        kind: NidKind,
        /// The raw number.
        nid: u64,
    },
    /// A string that has not been interned (lookups never create).
    #[error("unknown {kind} {value:?}")]
    UnknownString {
        /// Which kind of string.
        kind: StringKind,
        /// The string.
        value: String,
    },
    /// A snapshot NID with no snapshot row.
    #[error("unknown snapshot {0}")]
    UnknownSnapshot(SnapshotNid),
    /// An event NID with no event record.
    #[error("no event record for event NID {0}")]
    UnknownEvent(EventNid),
    /// A room NID with no room record.
    #[error("no room record for room NID {0}")]
    UnknownRoom(RoomNid),
    /// redb failed inside its own code while reading the file: a page of the file is damaged
    /// in a way redb does not check for. The store should not be used further; see
    /// [`crate::Store::verify_file`].
    #[error("a panic was caught inside the store, most likely a damaged page redb trusted ({0})")]
    Damaged(String),
    /// A snapshot names a block that is not stored.
    #[error("snapshot {snapshot} names missing block {block:032x}")]
    MissingBlock {
        /// The snapshot that refers to it.
        snapshot: SnapshotNid,
        /// The block's content hash.
        block: u128,
    },
    /// A row that does not decode: the file is damaged or was written by something else.
    #[error("corrupt row in table {table} at key {key}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key, printed.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// Two different contents hashed to the same xxh3-128 key. Nothing was written.
    #[error("hash collision in table {table} at {hash:032x}")]
    HashCollision {
        /// The table.
        table: &'static str,
        /// The hash both contents share.
        hash: u128,
    },
    /// A state delta or state map that breaks an invariant (unsorted, duplicate keys).
    #[error("invalid state input: {0}")]
    InvalidState(String),
    /// A line of ingest input that was refused: which line, which event, and why.
    #[error("{0}")]
    BadLine(Box<BadLine>),
    /// An event handed to the typed input API that was refused, and why. Nothing of it is
    /// stored.
    #[error("event {}: {problem}", event_id.as_deref().unwrap_or("(no event_id)"))]
    BadEvent {
        /// The event's ID, when its JSON had one.
        event_id: Option<String>,
        /// What is wrong.
        problem: Problem,
    },
    /// The write transaction holds half an operation and cannot commit: abort it. Says why.
    #[error("the transaction cannot commit: {0}; abort it")]
    Poisoned(String),
    /// An outlier has no state: the state before or after it was asked for.
    #[error("event NID {0} is an outlier: the store holds no state for it")]
    Outlier(EventNid),
    /// The path is not a store of this crate: a directory, a file that is not a redb database,
    /// or another program's redb database (other tables, none of ours; its tables are left as
    /// they were). Says which.
    #[error("not a roomstate store: {0}")]
    ForeignFile(String),
    /// The store's file is already open, in another process or through another [`crate::Store`]
    /// in this one. redb takes a file whole, so the second opener fails at once rather than
    /// waiting: share one `Store` within a process, and run one command on a file at a time.
    #[error(
        "the store is open in another process (or another handle in this one); try again when it is done"
    )]
    InUse,
    /// The store's file may not be opened for writing (a read-only file, or one of another
    /// user's). The store opens read-write even to be read, so nothing is done; the file is
    /// left as it was.
    #[error("{0}: permission denied; the store opens its file read-write, even to read it")]
    NotWritable(String),
    /// The file was written by a version of this crate with another schema.
    #[error("unsupported schema version {0}")]
    UnsupportedSchema(u64),
    /// A room version whose state resolution is not available.
    #[error("room version {version:?}: {reason}")]
    UnsupportedRoomVersion {
        /// The version, as the room's create event gave it.
        version: String,
        /// Why it is not supported.
        reason: &'static str,
    },
    /// State resolution failed: an event it needs is missing or malformed.
    #[error("state resolution failed: {0}")]
    StateResolution(String),
    /// An earlier write on this handle failed with an I/O error (a full disk, say), and redb
    /// refuses every further operation until the store is closed and opened again. The commit
    /// that failed wrote nothing; the commits before it stand.
    #[error("an earlier write failed with an I/O error: close and reopen the store")]
    ReopenRequired,
    /// An error from the redb storage engine.
    #[error("storage error: {0}")]
    Storage(#[from] redb::Error),
    /// An I/O error outside redb.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether the caller caused this error (bad input, unknown ID), as opposed to a failure of the
    /// store itself. The CLI maps the two to exit codes 1 and 2.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::InvalidId { .. }
                | Error::UnknownNid { .. }
                | Error::UnknownString { .. }
                | Error::UnknownSnapshot(_)
                | Error::UnknownEvent(_)
                | Error::UnknownRoom(_)
                | Error::UnsupportedRoomVersion { .. }
                | Error::StateResolution(_)
                | Error::InvalidState(_)
                | Error::BadLine(_)
                | Error::BadEvent { .. }
                | Error::Outlier(_)
                | Error::ForeignFile(_)
                | Error::InUse
                | Error::NotWritable(_)
        )
    }

    pub(crate) fn corrupt(
        table: &'static str,
        key: impl fmt::Display,
        reason: impl fmt::Display,
    ) -> Self {
        Error::Corrupt {
            table,
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                match e.into() {
                    redb::Error::PreviousIo => Error::ReopenRequired,
                    redb::Error::DatabaseAlreadyOpen => Error::InUse,
                    other => Error::Storage(other),
                }
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    redb::SetDurabilityError
);

/// Runs `f`, turning a panic into [`Error::Damaged`].
///
/// redb trusts the bytes of its own pages: some damaged pages make it index out of bounds
/// rather than return an error. Every public entry point that reaches redb runs through here,
/// so a damaged file gives callers an error, never an unwinding thread. Panics from this crate's
/// own code would surface the same way, but none are expected: the fuzz targets and tests look
/// for them with the guard's help, since they treat any error on valid input as a failure.
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| Err(damaged(p)))
}

/// The [`Error::Damaged`] for a panic's payload: caught by [`guard`], or by joining a thread of
/// our own that read the store.
pub(crate) fn damaged(payload: Box<dyn std::any::Any + Send>) -> Error {
    Error::Damaged(panic_message(&*payload))
}

/// A panic's message. crossbeam's scopes hand back the panics of their threads as a list.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    type Panics = Vec<Box<dyn std::any::Any + Send>>;
    if let Some(s) = payload.downcast_ref::<&str>() {
        return (*s).to_owned();
    }
    if let Some(s) = payload.downcast_ref::<String>() {
        return s.clone();
    }
    match payload.downcast_ref::<Panics>().and_then(|p| p.first()) {
        Some(first) => panic_message(&**first),
        None => "a panic without a message".to_owned(),
    }
}

/// The spec's limit on an event's size, which also bounds the memory one line may take.
pub const MAX_EVENT_BYTES: usize = 65_536;

/// What is wrong with a bad line.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The line is not JSON.
    NotJson(String),
    /// The JSON does not have the shape of an event (a field of the wrong type, say).
    NotAnEvent(String),
    /// The line is longer than an event may be.
    TooLarge(usize),
    /// A required field is absent.
    MissingField(&'static str),
    /// A JSON object with neither `type` nor `event_id`: no event at all. (A JSON-lines
    /// envelope is such an object, and is read as one.)
    NotAPdu,
    /// The event declares no `event_id`, and its reference hash cannot be taken: its room
    /// version names events otherwise (1 and 2), is unknown, or the JSON is not canonical.
    EventIdNotDerived(String),
    /// A field is over the spec's 255-byte limit, or empty where it must not be.
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A prev event the store has never seen.
    UnknownPrevEvent(String),
    /// A prev event that belongs to another room.
    PrevEventInOtherRoom(String),
    /// An auth event that belongs to another room.
    AuthEventInOtherRoom(String),
    /// An auth event the store has never seen: the event cannot be authorized until it is
    /// stored.
    UnknownAuthEvent(String),
    /// The event ID is already stored with other content. (The same event again is not a
    /// problem: it is counted as a duplicate and skipped.)
    DuplicateEvent,
    /// No prev events, but not the room's create event.
    NoPrevEvents,
    /// An event of the supplied state before an event that the store has never seen: store it
    /// (as an outlier, say) first.
    UnknownStateEvent(String),
    /// An event of the supplied state that cannot be in it: not a state event, of another
    /// room, rejected, or a second event for the same (type, state key).
    BadStateEvent {
        /// The event's ID.
        event_id: String,
        /// Why.
        reason: &'static str,
    },
    /// The room's version is unknown: the store has no timeline for the room, and neither the
    /// event nor its auth events include the room's create event.
    NoCreateEvent,
    /// State was supplied with an event that takes none: an outlier, or a create event.
    StateNotTaken,
    /// A backfilled event of a room the store has no timeline for: join the room (an event
    /// with its state supplied) first.
    BackfillWithoutRoom,
    /// An envelope line whose `kind` is not `outlier`, `new` or `backfill`.
    UnknownKind(String),
    /// A create event for a room the store already has.
    RoomExists,
    /// The resolver could not settle the states: an unsupported room version, or state
    /// resolution failed (an auth event it needs is missing, say).
    ResolutionFailed(String),
    /// States disagree and the resolver did not settle them. Lists the conflicted
    /// (type, state key) pairs.
    NeedsStateResolution(Vec<(String, String)>),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotJson(e) => write!(f, "not JSON: {e}"),
            Problem::NotAnEvent(e) => write!(f, "not an event: {e}"),
            Problem::TooLarge(n) => write!(f, "line of {n} bytes exceeds {MAX_EVENT_BYTES}"),
            Problem::MissingField(field) => write!(f, "missing field `{field}`"),
            Problem::NotAPdu => f.write_str("neither `type` nor `event_id`: not an event"),
            Problem::EventIdNotDerived(why) => {
                write!(f, "no `event_id`, and none can be derived: {why}")
            }
            Problem::BadField { field, reason } => write!(f, "field `{field}` is {reason}"),
            Problem::UnknownPrevEvent(id) => write!(f, "unknown prev event {id}"),
            Problem::PrevEventInOtherRoom(id) => write!(f, "prev event {id} is in another room"),
            Problem::AuthEventInOtherRoom(id) => write!(f, "auth event {id} is in another room"),
            Problem::UnknownAuthEvent(id) => write!(f, "unknown auth event {id}"),
            Problem::DuplicateEvent => f.write_str("event ID already stored with other content"),
            Problem::NoPrevEvents => f.write_str("no prev_events, but not a create event"),
            Problem::UnknownStateEvent(id) => write!(f, "unknown event {id} in state_before"),
            Problem::BadStateEvent { event_id, reason } => {
                write!(f, "event {event_id} in state_before {reason}")
            }
            Problem::NoCreateEvent => f.write_str(
                "the room's create event is neither stored nor among the auth events: its version is unknown",
            ),
            Problem::StateNotTaken => {
                f.write_str("state_before given for an outlier or a create event, which take none")
            }
            Problem::BackfillWithoutRoom => {
                f.write_str("backfill into a room with no timeline yet: join it first")
            }
            Problem::UnknownKind(kind) => {
                write!(f, "unknown kind {kind:?} (outlier, new or backfill)")
            }
            Problem::RoomExists => f.write_str("create event for a room that already exists"),
            Problem::ResolutionFailed(why) => write!(f, "state resolution failed: {why}"),
            Problem::NeedsStateResolution(keys) => {
                write!(f, "needs state resolution of {} key(s):", keys.len())?;
                for (ty, key) in keys.iter().take(10) {
                    write!(f, " ({ty}, {key:?})")?;
                }
                Ok(())
            }
        }
    }
}

/// A line that was refused, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// The input it came from, when the ingester was told (see `ingest::Ingester::set_source`).
    pub source: Option<String>,
    /// The line number within its input, from 1.
    pub line: u64,
    /// The event ID, when the line had one.
    pub event_id: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "{source}: ")?;
        }
        write!(f, "line {}", self.line)?;
        if let Some(id) = &self.event_id {
            write!(f, " (event {id})")?;
        }
        write!(f, ": {}", self.problem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic on a thread of a crossbeam scope reaches `damaged` inside a list.
    #[test]
    fn a_scoped_threads_panic_keeps_its_message() {
        let payload = crossbeam::thread::scope(|s| {
            s.spawn(|_| panic!("page 7 is damaged"));
        })
        .unwrap_err();
        let Error::Damaged(message) = damaged(payload) else {
            panic!("not Damaged");
        };
        assert_eq!(message, "page 7 is damaged");
    }
}
