//! PDUs as they arrive: the fields of an event's JSON that the store reads, checked for shape
//! and for the spec's limits on sizes.

use crate::error::Problem;
use crate::store::id_problem;
use ruma_common::RoomVersionId;
use serde::Deserialize;
use serde::de::IgnoredAny;
use std::borrow::Cow;

/// An event ID in `prev_events` or `auth_events`: a plain string (room version 3 and later) or
/// an `[id, hashes]` pair (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum EventRef<'a> {
    Id(#[serde(borrow)] Cow<'a, str>),
    Pair(#[serde(borrow)] Cow<'a, str>, IgnoredAny),
}

impl<'a> EventRef<'a> {
    pub(crate) fn id(&self) -> &str {
        match self {
            EventRef::Id(id) | EventRef::Pair(id, _) => id,
        }
    }
}

/// A content field that only some event types give a meaning to: any JSON value is accepted,
/// and only a string is read.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum Loose<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

impl Loose<'_> {
    pub(crate) fn text(&self) -> Option<&str> {
        match self {
            Loose::Text(s) => Some(s),
            Loose::Other(_) => None,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct Content<'a> {
    #[serde(borrow, default)]
    pub(crate) membership: Option<Loose<'a>>,
    #[serde(borrow, default)]
    pub(crate) room_version: Option<Loose<'a>>,
}

impl Content<'_> {
    /// The room version a create event's content declares (`1` when it declares none).
    fn version(&self) -> &str {
        self.room_version
            .as_ref()
            .and_then(Loose::text)
            .unwrap_or("1")
    }
}

/// A PDU's fields as the JSON has them, before its ID is settled: room versions 3 on leave
/// `event_id` out, since the ID is the event's reference hash.
#[derive(Deserialize)]
pub(crate) struct Fields<'a> {
    #[serde(borrow, default)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    room_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    state_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    sender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prev_events: Option<Vec<EventRef<'a>>>,
    #[serde(borrow, default)]
    auth_events: Option<Vec<EventRef<'a>>>,
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
}

/// A line's event, checked for shape and sizes.
pub(crate) struct Parsed<'a> {
    pub(crate) event_id: Cow<'a, str>,
    pub(crate) room_id: Cow<'a, str>,
    pub(crate) event_type: Cow<'a, str>,
    pub(crate) state_key: Option<Cow<'a, str>>,
    pub(crate) prev_events: Vec<EventRef<'a>>,
    pub(crate) auth_events: Vec<EventRef<'a>>,
    pub(crate) content: Content<'a>,
}

impl Parsed<'_> {
    pub(crate) fn is_create(&self) -> bool {
        self.event_type == "m.room.create" && self.state_key.as_deref() == Some("")
    }

    /// The room version a create event declares.
    pub(crate) fn content_version(&self) -> &str {
        self.content.version()
    }
}

/// Parses an event's fields, all of them optional.
pub(crate) fn fields(bytes: &[u8]) -> Result<Fields<'_>, (Option<String>, Problem)> {
    // serde_json skips the strings of ignored fields without checking their UTF-8, and the line
    // is stored as the event's JSON text: check it whole.
    let text = std::str::from_utf8(bytes)
        .map_err(|e| (None, Problem::NotJson(format!("not UTF-8: {e}"))))?;
    serde_json::from_str(text).map_err(|e| {
        let problem = match e.classify() {
            serde_json::error::Category::Data => Problem::NotAnEvent(e.to_string()),
            _ => Problem::NotJson(e.to_string()),
        };
        (None, problem)
    })
}

impl<'a> Fields<'a> {
    /// The `event_id` the JSON gives, if any.
    pub(crate) fn declared_id(&self) -> Option<&str> {
        self.event_id.as_deref()
    }

    /// Whether the JSON has a `type`: without one it is no PDU at all.
    pub(crate) fn has_type(&self) -> bool {
        self.event_type.is_some()
    }

    pub(crate) fn is_create(&self) -> bool {
        self.event_type.as_deref() == Some("m.room.create") && self.state_key.as_deref() == Some("")
    }

    pub(crate) fn room_id(&self) -> Option<&str> {
        self.room_id.as_deref()
    }

    pub(crate) fn auth_ids(&self) -> impl Iterator<Item = &str> {
        self.auth_events.iter().flatten().map(EventRef::id)
    }

    /// The room ID, or for a create event without one the ID its own ID gives it (room version
    /// 12 on).
    pub(crate) fn room_id_given(&self, event_id: &str) -> Option<Cow<'_, str>> {
        match &self.room_id {
            Some(id) => Some(Cow::Borrowed(id)),
            None => room_of_create(event_id, self.event_type.as_deref()?, self.content.as_ref()),
        }
    }

    /// The room version a create event declares (`1` when it declares none).
    pub(crate) fn declared_version(&self) -> &str {
        self.content.as_ref().map_or("1", Content::version)
    }

    /// The event, checked, under the ID its JSON declares or else under `derived`.
    pub(crate) fn named(
        self,
        derived: Option<String>,
    ) -> Result<Parsed<'a>, (Option<String>, Problem)> {
        let event_id = self.event_id.or(derived.map(Cow::Owned));
        let id = event_id.as_deref().map(str::to_owned);
        let fail = |p| (id.clone(), p);
        let missing = |field| fail(Problem::MissingField(field));
        let event_id = event_id.ok_or_else(|| missing("event_id"))?;
        let event_type = self.event_type.ok_or_else(|| missing("type"))?;
        let room_id = match self.room_id {
            Some(id) => id,
            None => room_of_create(&event_id, &event_type, self.content.as_ref())
                .ok_or_else(|| missing("room_id"))?,
        };
        let prev_events = self.prev_events.ok_or_else(|| missing("prev_events"))?;
        let auth_events = self.auth_events.unwrap_or_default();
        let checks = [
            ("event_id", Some(&*event_id), false),
            ("room_id", Some(&*room_id), false),
            ("type", Some(&*event_type), true),
            ("state_key", self.state_key.as_deref(), true),
            ("sender", self.sender.as_deref(), true),
        ];
        let refs = prev_events
            .iter()
            .map(|r| ("prev_events", Some(r.id()), false))
            .chain(
                auth_events
                    .iter()
                    .map(|r| ("auth_events", Some(r.id()), false)),
            );
        for (field, value, may_be_empty) in checks.into_iter().chain(refs) {
            if let Some(v) = value {
                check_field(field, v, may_be_empty).map_err(fail)?;
            }
        }
        Ok(Parsed {
            event_id,
            room_id,
            event_type,
            state_key: self.state_key,
            prev_events,
            auth_events,
            content: self.content.unwrap_or_default(),
        })
    }
}

/// The room ID a create event without one names: in room versions whose room ID is the create
/// event's reference hash (12 on), `!` and the event ID without its `$`.
fn room_of_create<'a>(
    event_id: &str,
    event_type: &str,
    content: Option<&Content<'_>>,
) -> Option<Cow<'a, str>> {
    let version = content?.room_version.as_ref()?.text()?;
    let rules = RoomVersionId::try_from(version).ok()?.rules()?;
    let hash = event_id.strip_prefix('$')?;
    (event_type == "m.room.create" && rules.authorization.room_create_event_id_as_room_id)
        .then(|| Cow::Owned(format!("!{hash}")))
}

fn check_field(field: &'static str, value: &str, may_be_empty: bool) -> Result<(), Problem> {
    match id_problem(value, may_be_empty) {
        Some(reason) => Err(Problem::BadField { field, reason }),
        None => Ok(()),
    }
}

/// The byte ranges of the event IDs `json` quotes, in order: every string that starts with `$`
/// and holds no escape, so that its bytes in the JSON are the ID itself. Found without parsing,
/// on any thread; the writer names by NID those that are stored events of the room, and the
/// rest stay in the row as they are.
pub fn quoted_event_ids(json: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(found) = json[at..].windows(2).position(|w| w == b"\"$") {
        let start = at + found + 1;
        let Some(len) = json[start..].iter().position(|&b| b == b'"') else {
            break;
        };
        let end = start + len;
        if !json[start..end].contains(&b'\\') {
            ranges.push(start..end);
        }
        at = end + 1;
    }
    ranges
}
