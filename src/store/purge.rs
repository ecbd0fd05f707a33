//! Purging a room: deleting everything the store holds for it, in one write transaction.
//!
//! The room's events go with their records, their JSON and their event IDs (event IDs belong to
//! one room). Its membership rows and its room record go too. The snapshots those rows
//! referenced lose a reference each, and the garbage collection of `refs.rs` then deletes every
//! snapshot and block that no other room still uses. The room ID, event types and state keys
//! stay interned: they are small, and other rooms may share them.

use crate::error::{Error, Result};
use crate::nid::{EventNid, RoomNid};
use crate::store::codec;
use crate::store::counted::Counted;
use crate::store::intern;
use crate::store::record::EventRecord;
use crate::store::refs::Collected;
use crate::store::writer::Writer;
use redb::ReadableTable;

/// What [`crate::WriteTxn::purge_room`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Event records, with their JSON and event IDs.
    pub events: u64,
    /// Membership rows.
    pub memberships: u64,
    /// Snapshots and blocks no other room used.
    pub collected: Collected,
}

/// Rows taken from a room's index per pass, so memory stays bounded in huge rooms.
const CHUNK: usize = 4096;

impl Writer<'_> {
    pub(crate) fn purge_room(&mut self, room: RoomNid) -> Result<Purged> {
        let record = self.room(room)?;
        let mut purged = Purged::default();
        let r = room.get();
        // A room joined over federation may hold only outliers, and no record yet.
        loop {
            let chunk = take_outliers(self.outliers()?, r)?;
            if chunk.is_empty() {
                break;
            }
            for event in chunk {
                self.purge_event(event, room)?;
                purged.events += 1;
            }
        }
        if record.is_none() && purged.events == 0 {
            return Err(Error::UnknownRoom(room));
        }
        loop {
            let chunk = take_chunk(self.room_events()?, r)?;
            if chunk.is_empty() {
                break;
            }
            for (_, event) in chunk {
                self.purge_event(event, room)?;
                purged.events += 1;
            }
        }
        loop {
            let users = take_chunk(self.membership()?, r)?;
            if users.is_empty() {
                break;
            }
            for (user, _) in users {
                self.user_rooms()?.remove((user, r))?;
                purged.memberships += 1;
            }
        }
        if let Some(record) = record {
            self.delete_room(room)?;
            self.count_snapshot_ref(record.current_state, -1)?;
        }
        self.clear_cache()?;
        purged.collected = self.collect_garbage()?;
        Ok(purged)
    }

    fn purge_event(&mut self, event: u64, room: RoomNid) -> Result<()> {
        let nid =
            EventNid::new(event).ok_or_else(|| Error::corrupt("room_events", event, "zero NID"))?;
        self.unindex_event(nid, room)?;
        let bytes = self.events()?.remove(event)?.map(|v| v.value().to_vec());
        if let Some(bytes) = bytes {
            let record: EventRecord = codec::decode("events", nid, &bytes)?;
            self.count_snapshot_ref(record.state_before, -1)?;
        }
        self.event_json()?.remove(event)?;
        self.outcomes()?.remove(event)?;
        self.forget(intern::EVENT, event)?;
        Ok(())
    }
}

/// Removes up to [`CHUNK`] of a room's outlier rows and returns their events.
fn take_outliers(table: &mut Counted<'_, (u64, u64), ()>, room: u64) -> Result<Vec<u64>> {
    let keys: Vec<(u64, u64)> = table
        .range((room, 0)..=(room, u64::MAX))?
        .take(CHUNK)
        .map(|row| Ok(row?.0.value()))
        .collect::<Result<_>>()?;
    for key in &keys {
        table.remove(key)?;
    }
    Ok(keys.into_iter().map(|(_, event)| event).collect())
}

/// Removes up to [`CHUNK`] rows keyed `(room, _)` and returns each as (the key's second half,
/// the value).
fn take_chunk<V: redb::Value + 'static>(
    table: &mut Counted<'_, (u64, u64), V>,
    room: u64,
) -> Result<Vec<(u64, u64)>>
where
    for<'a> V::SelfType<'a>: Into<u64>,
{
    let rows: Vec<((u64, u64), u64)> = table
        .range((room, 0)..=(room, u64::MAX))?
        .take(CHUNK)
        .map(|row| {
            let (k, v) = row?;
            Ok((k.value(), v.value().into()))
        })
        .collect::<Result<_>>()?;
    for (key, _) in &rows {
        table.remove(key)?;
    }
    Ok(rows.into_iter().map(|((_, k), v)| (k, v)).collect())
}
