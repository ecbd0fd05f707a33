//! Reading: the read transaction, and the reads both kinds of transaction share.

use crate::engine::cache::BlockCache;
use crate::engine::resolve::{Combined, StateDiff, StateMap};
use crate::engine::source::Resolver;
use crate::error::{Error, Result};
use crate::nid::{EventNid, RoomNid, SnapshotNid, StateKey, StateKeyNid, TypeNid};
use crate::store::auth_index::{self, ReadIndex};
use crate::store::codec;
use crate::store::event_ids;
use crate::store::intern::{self, Forward, Kind};
use crate::store::json::{self, JsonDictionaries};
use crate::store::membership::Membership;
use crate::store::record::{EventOutcome, EventRecord, RoomRecord};
use crate::store::stats::{StoreStats, TableSize, store_stats, table_sizes};
use crate::store::tables;
use crate::store::write::WriteTxn;
use redb::{Key, ReadableTable, TableDefinition, Value};
use std::sync::Arc;

pub(super) mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ReadTxn {}
    impl Sealed for super::WriteTxn {}
    impl Sealed for redb::ReadTransaction {}
    impl Sealed for redb::WriteTransaction {}
}

/// Opens tables for reading, from either kind of redb transaction. Not for use outside the
/// crate; it is public only because [`StoreRead`] names it.
#[doc(hidden)]
pub trait Tables: sealed::Sealed {
    /// The table type this transaction opens.
    type Table<'a, K: Key + 'static, V: Value + 'static>: ReadableTable<K, V>
    where
        Self: 'a;

    /// Whether two threads may open the same table at once: true of a read transaction; a
    /// write transaction lends each table out once.
    const SHARES_TABLES: bool;

    /// Opens a table that the store created.
    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>>;
}

impl Tables for redb::ReadTransaction {
    type Table<'a, K: Key + 'static, V: Value + 'static> = redb::ReadOnlyTable<K, V>;
    const SHARES_TABLES: bool = true;

    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>> {
        Ok(self.open_table(def)?)
    }
}

impl Tables for redb::WriteTransaction {
    type Table<'a, K: Key + 'static, V: Value + 'static> = redb::Table<'a, K, V>;
    const SHARES_TABLES: bool = false;

    fn open<K: Key + 'static, V: Value + 'static>(
        &self,
        def: TableDefinition<'_, K, V>,
    ) -> Result<Self::Table<'_, K, V>> {
        Ok(self.open_table(def)?)
    }
}

type TableOf<'a, T, K, V> = <T as Tables>::Table<'a, K, V>;

/// The resolver bound to one transaction's block and snapshot tables. Hold one to answer many
/// queries without reopening the tables each time.
pub type ResolverOf<'a, T> =
    Resolver<TableOf<'a, T, u128, &'static [u8]>, TableOf<'a, T, u64, &'static [u8]>>;

/// A read transaction: a consistent view of the store as of its start.
pub struct ReadTxn {
    pub(super) tx: redb::ReadTransaction,
    pub(super) block_cache: Arc<BlockCache>,
    pub(super) json_dictionaries: Arc<JsonDictionaries>,
}

impl std::fmt::Debug for ReadTxn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadTxn")
    }
}

/// Reading, shared by [`ReadTxn`] and [`WriteTxn`] (which sees its own uncommitted writes).
pub trait StoreRead: sealed::Sealed {
    /// The redb transaction underneath.
    #[doc(hidden)]
    type Txn: Tables + Sync;

    /// The redb transaction underneath.
    #[doc(hidden)]
    fn txn(&self) -> &Self::Txn;

    /// The store's block cache, which the resolver reads through.
    #[doc(hidden)]
    fn block_cache(&self) -> &Arc<BlockCache>;

    /// The store's prepared JSON dictionaries.
    #[doc(hidden)]
    fn json_dictionaries(&self) -> &JsonDictionaries;

    /// The resolver over this transaction's tables. In a [`WriteTxn`], drop it before writing.
    fn resolver(&self) -> Result<ResolverOf<'_, Self::Txn>> {
        crate::error::guard(|| {
            Ok(Resolver::new(
                self.txn().open(tables::BLOCKS)?,
                self.txn().open(tables::SNAPSHOTS)?,
                Arc::clone(self.block_cache()),
            ))
        })
    }

    /// The full state of a snapshot, one entry per key, sorted.
    fn flatten(&self, snapshot: SnapshotNid) -> Result<StateMap> {
        crate::error::guard(|| self.resolver()?.flatten(snapshot))
    }

    /// The event holding `key` in a snapshot, without building the whole state.
    fn lookup(&self, snapshot: SnapshotNid, key: StateKey) -> Result<Option<EventNid>> {
        crate::error::guard(|| self.resolver()?.lookup(snapshot, key))
    }

    /// The difference from snapshot `a` to snapshot `b`.
    fn diff(&self, a: SnapshotNid, b: SnapshotNid) -> Result<StateDiff> {
        crate::error::guard(|| self.resolver()?.diff(a, b))
    }

    /// Several snapshots combined into agreed entries and conflicts.
    fn combine(&self, snapshots: &[SnapshotNid]) -> Result<Combined> {
        crate::error::guard(|| self.resolver()?.combine(snapshots))
    }

    /// The NID of a room ID, if interned.
    fn room_nid(&self, room_id: &str) -> Result<Option<RoomNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::ROOM, room_id).map(|n| n.and_then(RoomNid::new))
        })
    }

    /// The room ID behind a room NID.
    fn room_id(&self, room: RoomNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::ROOM, room.get()))
    }

    /// The NID of an event type, if interned.
    fn type_nid(&self, event_type: &str) -> Result<Option<TypeNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::TYPE, event_type).map(|n| n.and_then(TypeNid::new))
        })
    }

    /// The event type behind a type NID.
    fn event_type(&self, ty: TypeNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::TYPE, ty.get()))
    }

    /// The NID of a state key, if interned.
    fn state_key_nid(&self, state_key: &str) -> Result<Option<StateKeyNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::STATE_KEY, state_key)
                .map(|n| n.and_then(StateKeyNid::new))
        })
    }

    /// The state key behind a state-key NID.
    fn state_key(&self, key: StateKeyNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::STATE_KEY, key.get()))
    }

    /// The NID of an event ID, if interned.
    fn event_nid(&self, event_id: &str) -> Result<Option<EventNid>> {
        crate::error::guard(|| {
            lookup_nid(self.txn(), intern::EVENT, event_id).map(|n| n.and_then(EventNid::new))
        })
    }

    /// The event ID behind an event NID.
    fn event_id(&self, event: EventNid) -> Result<String> {
        crate::error::guard(|| resolve_nid(self.txn(), intern::EVENT, event.get()))
    }

    /// The (type, state key) pair of two strings, if both are interned.
    fn state_key_of(&self, event_type: &str, state_key: &str) -> Result<Option<StateKey>> {
        crate::error::guard(|| {
            Ok(
                match (self.type_nid(event_type)?, self.state_key_nid(state_key)?) {
                    (Some(ty), Some(key)) => Some(StateKey::new(ty, key)),
                    _ => None,
                },
            )
        })
    }

    /// An event's record, or `None` if the store has none.
    fn event(&self, event: EventNid) -> Result<Option<EventRecord>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::EVENTS)?;
            let row = table.get(event.get())?;
            row.map(|v| codec::decode("events", event, v.value()))
                .transpose()
        })
    }

    /// What became of a stored event when it was received: accepted, rejected or soft-failed,
    /// with the reason. `None` for an event the store does not hold.
    fn event_outcome(&self, event: EventNid) -> Result<Option<EventOutcome>> {
        crate::error::guard(|| {
            if self.event(event)?.is_none() {
                return Ok(None);
            }
            let table = self.txn().open(tables::OUTCOMES)?;
            let row = table.get(event.get())?;
            Ok(Some(match row {
                None => EventOutcome::Accepted,
                Some(v) => {
                    EventOutcome::from_rejection(codec::decode("outcomes", event, v.value())?)
                }
            }))
        })
    }

    /// An event's record; a missing record is an error.
    fn expect_event(&self, event: EventNid) -> Result<EventRecord> {
        crate::error::guard(|| self.event(event)?.ok_or(Error::UnknownEvent(event)))
    }

    /// A room's record, or `None` if the store has none.
    fn room(&self, room: RoomNid) -> Result<Option<RoomRecord>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::ROOMS)?;
            let row = table.get(room.get())?;
            row.map(|v| codec::decode("rooms", room, v.value()))
                .transpose()
        })
    }

    /// The state before an event. An outlier has none: [`Error::Outlier`].
    fn state_before(&self, event: EventNid) -> Result<StateMap> {
        crate::error::guard(|| self.flatten(self.expect_with_state(event)?.state_before))
    }

    /// An event's record, when the event has state: neither unknown nor an outlier.
    #[doc(hidden)]
    fn expect_with_state(&self, event: EventNid) -> Result<EventRecord> {
        let record = self.expect_event(event)?;
        if self.outlier_in(record.room, event)? {
            return Err(Error::Outlier(event));
        }
        Ok(record)
    }

    /// Whether a stored event is an outlier: stored with its JSON and auth events, but no state,
    /// and outside its room's timeline. `false` for an event the store does not hold.
    fn is_outlier(&self, event: EventNid) -> Result<bool> {
        crate::error::guard(|| match self.event(event)? {
            Some(record) => self.outlier_in(record.room, event),
            None => Ok(false),
        })
    }

    #[doc(hidden)]
    fn outlier_in(&self, room: RoomNid, event: EventNid) -> Result<bool> {
        let table = self.txn().open(tables::OUTLIERS)?;
        Ok(table.get((room.get(), event.get()))?.is_some())
    }

    /// A room's outliers, by NID.
    fn outliers(&self, room: RoomNid) -> Result<Vec<EventNid>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::OUTLIERS)?;
            let r = room.get();
            table
                .range((r, 0)..=(r, u64::MAX))?
                .map(|row| {
                    let (key, _) = row?;
                    let (_, event) = key.value();
                    EventNid::new(event)
                        .ok_or_else(|| Error::corrupt("outliers", format!("({r}, 0)"), "zero NID"))
                })
                .collect()
        })
    }

    /// The auth chain of `events` (the answer to federation's `/event_auth`, and with the state
    /// IDs of `/state_ids` or `send_join`): every stored event reachable from them through
    /// `auth_events`, each once, each after its own auth events. The given events themselves
    /// are in it only when another of them names them.
    fn auth_chain(&self, events: &[EventNid]) -> Result<Vec<EventNid>> {
        crate::error::guard(|| crate::store::auth_chain::auth_chain(self.txn(), events))
            .map(|chain| chain.events)
    }

    /// Whether every stored event's auth events have smaller NIDs than the event: true while
    /// events are stored only after their auth events, as authorization requires; false once a
    /// trusted import named auth events not stored yet, or an event ID was interned ahead of
    /// its auth events, and for stores created before this was kept. Where it holds, an auth
    /// chain walked from the newest event down can stop early.
    fn auth_events_precede(&self) -> Result<bool> {
        crate::error::guard(|| crate::store::auth_chain::auth_events_precede(self.txn()))
    }

    /// Whether the store keeps a complete auth-chain index: true from a store's creation until
    /// an event is stored whose auth events are not stored state events, or a record is
    /// rewritten with other auth events, or a purge takes events that another room's events
    /// name. Auth-chain questions are answered from the index while it holds, by walking
    /// `auth_events` otherwise; the answers are the same.
    fn auth_index_complete(&self) -> Result<bool> {
        crate::error::guard(|| Ok(ReadIndex::open(self.txn())?.is_some()))
    }

    /// Whether `ancestor` is in the auth chain of `event`: reachable from it through
    /// `auth_events`, `event` itself excluded. Fails with [`Error::UnknownEvent`] when `event`
    /// is not stored.
    ///
    /// ```
    /// use roomstate::{Store, StoreRead};
    /// let store = Store::in_memory()?;
    /// let rx = store.read()?;
    /// assert!(rx.auth_index_complete()?);
    /// # Ok::<(), roomstate::Error>(())
    /// ```
    fn is_in_auth_chain(&self, ancestor: EventNid, event: EventNid) -> Result<bool> {
        crate::error::guard(|| {
            if let Some(mut index) = ReadIndex::open(self.txn())? {
                return auth_index::contains(&mut index, ancestor, event);
            }
            let chain = crate::store::auth_chain(self.txn(), &[event])?;
            Ok(chain.events.contains(&ancestor))
        })
    }

    /// The servers with a member joined to a room in its current state, sorted: who to send
    /// the room's new events to.
    fn joined_servers(&self, room: RoomNid) -> Result<Vec<String>> {
        crate::error::guard(|| {
            let mut servers = std::collections::BTreeSet::new();
            for (user, _) in self.members(room, Some(Membership::Join))? {
                let user = self.state_key(user)?;
                // A user ID is `@localpart:server`; the server name may hold a port's colon.
                if let Some((_, server)) = user.split_once(':') {
                    servers.insert(server.to_owned());
                }
            }
            Ok(servers.into_iter().collect())
        })
    }

    /// The state after an event: the state before it, plus its own entry when it is a state
    /// event that was not rejected.
    fn state_after(&self, event: EventNid) -> Result<StateMap> {
        crate::error::guard(|| {
            let record = self.expect_with_state(event)?;
            let before = self.flatten(record.state_before)?;
            Ok(match record.sets() {
                Some(key) => {
                    let mut entries = before.into_vec();
                    entries.push(crate::engine::block::StateEntry { key, event });
                    StateMap::from_entries(entries)
                }
                None => before,
            })
        })
    }

    /// Row counts and sizes of every table, and how many entries the blocks hold. Reads every
    /// block, snapshot and event record; [`table_sizes`](Self::table_sizes) is the cheap part.
    fn stats(&self) -> Result<StoreStats> {
        crate::error::guard(|| store_stats(self.txn()))
    }

    /// Walks every table: every row decodes, every block is sorted, every NID a block, event or
    /// room names is interned both ways, every snapshot's parent and blocks exist with the
    /// entry counts it gives, and the deduplication index matches. Problems are listed, not
    /// raised; only a failure to read the file is an error.
    fn check(&self) -> Result<crate::store::check::CheckReport> {
        crate::error::guard(|| crate::store::check::check(self.txn()))
    }

    /// Row counts and sizes of every table, from redb's own counters (no scan).
    fn table_sizes(&self) -> Result<Vec<TableSize>> {
        crate::error::guard(|| table_sizes(self.txn()))
    }

    /// The event's JSON exactly as ingested, if stored.
    fn event_json(&self, event: EventNid) -> Result<Option<String>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::EVENT_JSON)?;
            let Some(row) = table.get(event.get())? else {
                return Ok(None);
            };
            json::decode_text(self.txn(), self.json_dictionaries(), event, row.value()).map(Some)
        })
    }

    /// A room's events in ingest order.
    fn room_events(&self, room: RoomNid) -> Result<Vec<EventNid>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::ROOM_EVENTS)?;
            let r = room.get();
            table
                .range((r, 0)..=(r, u64::MAX))?
                .map(|row| {
                    let (key, event) = row?;
                    EventNid::new(event.value()).ok_or_else(|| {
                        Error::corrupt("room_events", format!("{:?}", key.value()), "zero NID")
                    })
                })
                .collect()
        })
    }

    /// The members of a room in its current state, by user (state-key NID), optionally only
    /// those with one membership.
    fn members(
        &self,
        room: RoomNid,
        only: Option<Membership>,
    ) -> Result<Vec<(StateKeyNid, Membership)>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::MEMBERSHIP)?;
            let r = room.get();
            let mut out = Vec::new();
            for row in table.range((r, 0)..=(r, u64::MAX))? {
                let (key, code) = row?;
                let (_, user) = key.value();
                let shown = || format!("({r}, {user})");
                let m = Membership::from_code(code.value()).ok_or_else(|| {
                    Error::corrupt("membership", shown(), "unknown membership code")
                })?;
                let user = StateKeyNid::new(user)
                    .ok_or_else(|| Error::corrupt("membership", shown(), "zero NID"))?;
                if only.is_none_or(|o| o == m) {
                    out.push((user, m));
                }
            }
            Ok(out)
        })
    }

    /// The rooms a user (by state-key NID) is joined to in their current state.
    fn rooms_of_user(&self, user: StateKeyNid) -> Result<Vec<RoomNid>> {
        crate::error::guard(|| {
            let table = self.txn().open(tables::USER_ROOMS)?;
            let u = user.get();
            table
                .range((u, 0)..=(u, u64::MAX))?
                .map(|row| {
                    let (key, _) = row?;
                    let (_, room) = key.value();
                    RoomNid::new(room).ok_or_else(|| {
                        Error::corrupt("user_rooms", format!("({u}, {room})"), "zero NID")
                    })
                })
                .collect()
        })
    }

    /// A user's membership in a snapshot's state: the membership of the `m.room.member` event
    /// the state holds for them.
    fn membership_in(
        &self,
        snapshot: SnapshotNid,
        user: StateKeyNid,
    ) -> Result<Option<Membership>> {
        crate::error::guard(|| {
            match self.lookup(snapshot, StateKey::new(TypeNid::MEMBER, user))? {
                Some(event) => Ok(self.expect_event(event)?.membership),
                None => Ok(None),
            }
        })
    }

    /// A user's membership in the state before an event, or after it with `after`.
    fn membership_at(
        &self,
        event: EventNid,
        user: StateKeyNid,
        after: bool,
    ) -> Result<Option<Membership>> {
        crate::error::guard(|| {
            let record = self.expect_with_state(event)?;
            if after && record.sets() == Some(StateKey::new(TypeNid::MEMBER, user)) {
                return Ok(record.membership);
            }
            self.membership_in(record.state_before, user)
        })
    }
}

pub(super) fn lookup_nid<T: Tables>(tx: &T, kind: Kind, s: &str) -> Result<Option<u64>> {
    match kind.forward {
        Forward::Strings(def) => intern::lookup(&tx.open(def)?, s),
        Forward::EventKeys => event_ids::lookup(tx, s),
    }
}

pub(super) fn resolve_nid<T: Tables>(tx: &T, kind: Kind, nid: u64) -> Result<String> {
    intern::resolve(&tx.open(kind.reverse)?, kind, nid)
}

impl StoreRead for ReadTxn {
    type Txn = redb::ReadTransaction;
    fn txn(&self) -> &Self::Txn {
        &self.tx
    }
    fn block_cache(&self) -> &Arc<BlockCache> {
        &self.block_cache
    }
    fn json_dictionaries(&self) -> &JsonDictionaries {
        &self.json_dictionaries
    }
}
