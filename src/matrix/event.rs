//! Events as the Matrix rules read them: the PDU fields `ruma-state-res` needs, parsed from the
//! JSON the store keeps, with the store's verdict on whether the event was rejected.

use crate::error::{Error, Result};
use ruma_common::{
    MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use ruma_events::TimelineEventType;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::cell::RefCell;

/// The first store error met inside `ruma-state-res`'s callbacks, which cannot fail: a callback
/// keeps it and answers "not found", and the caller returns it once the crate is done.
#[derive(Debug, Default)]
pub(crate) struct FirstError(RefCell<Option<Error>>);

impl FirstError {
    /// The value, or `None` after keeping the error (the first one wins).
    pub(crate) fn keep<T>(&self, result: Result<T>) -> Option<T> {
        result
            .map_err(|e| {
                self.0.borrow_mut().get_or_insert(e);
            })
            .ok()
    }

    /// The kept error, if any, taken.
    pub(crate) fn take(&self) -> Result<()> {
        self.0.borrow_mut().take().map_or(Ok(()), Err)
    }
}

/// An event reference in `prev_events` or `auth_events`: an ID (room version 3 on), or an
/// `[ID, hashes]` pair (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    Pair((OwnedEventId, serde::de::IgnoredAny)),
}

pub(crate) fn event_refs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<OwnedEventId>, D::Error> {
    Ok(Vec::<EventRef>::deserialize(d)?
        .into_iter()
        .map(|r| match r {
            EventRef::Id(id) | EventRef::Pair((id, _)) => id,
        })
        .collect())
}

/// The fields of an event that state resolution reads.
#[derive(Debug)]
pub(crate) struct Pdu {
    pub(crate) event_id: OwnedEventId,
    pub(crate) room_id: Option<OwnedRoomId>,
    pub(crate) sender: OwnedUserId,
    pub(crate) origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub(crate) event_type: TimelineEventType,
    pub(crate) content: Box<RawValue>,
    pub(crate) state_key: Option<String>,
    pub(crate) prev_events: Vec<OwnedEventId>,
    pub(crate) auth_events: Vec<OwnedEventId>,
    pub(crate) redacts: Option<OwnedEventId>,
    pub(crate) rejected: bool,
}

/// A [`Pdu`] as its JSON has it: room versions 3 on leave `event_id` out, since the ID is the
/// event's reference hash, which the store keeps.
#[derive(Deserialize)]
pub(crate) struct PduJson {
    #[serde(default)]
    event_id: Option<OwnedEventId>,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    event_type: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(deserialize_with = "event_refs", default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(deserialize_with = "event_refs", default)]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
}

/// A stored event as the rules read it: its stored JSON parsed, named by the ID it declares or
/// else by `id`, and marked rejected as its record says. `None` when the JSON lacks what the
/// rules read (an event imported as trusted, say): to them it is missing.
pub(crate) fn stored_pdu(
    json: &str,
    rejected: bool,
    id: impl FnOnce() -> Result<Option<OwnedEventId>>,
) -> Result<Option<Pdu>> {
    let Ok(fields) = serde_json::from_str::<PduJson>(json) else {
        return Ok(None);
    };
    Ok(fields.named(id)?.map(|pdu| Pdu { rejected, ..pdu }))
}

impl PduJson {
    /// The event under the ID its JSON declares, or else the one `known` gives (`None`: the
    /// event is unknown to the rules).
    pub(crate) fn named(
        self,
        known: impl FnOnce() -> Result<Option<OwnedEventId>>,
    ) -> Result<Option<Pdu>> {
        let event_id = match self.event_id {
            Some(id) => id,
            None => match known()? {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        Ok(Some(Pdu {
            event_id,
            room_id: self.room_id,
            sender: self.sender,
            origin_server_ts: self.origin_server_ts,
            event_type: self.event_type,
            content: self.content,
            state_key: self.state_key,
            prev_events: self.prev_events,
            auth_events: self.auth_events,
            redacts: self.redacts,
            rejected: false,
        }))
    }
}

impl ruma_state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &OwnedEventId {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.event_type
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &OwnedEventId> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&OwnedEventId> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
