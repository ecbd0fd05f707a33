//! Event IDs from reference hashes. In room versions 3 on, a PDU carries no `event_id`: its ID
//! is `$` and the hash of its redacted JSON. In room version 12 on, a room's ID is its create
//! event's ID with `!` for `$`.
//!
//! The hash is ruma-signatures' `reference_hash`, which applies the room version's redaction
//! algorithm and canonical JSON, as the spec's "Calculating the reference hash for an event"
//! says.

use crate::error::{Error, Problem};
use ruma_common::{CanonicalJsonObject, RoomVersionId, room_version_rules::EventIdFormatVersion};

/// The ID of an event whose JSON does not declare one, in room version `version`.
pub(crate) fn event_id(json: &[u8], version: &str) -> Result<String, Problem> {
    let not_derived = |why: String| Problem::EventIdNotDerived(why);
    let rules = RoomVersionId::try_from(version)
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| not_derived(format!("room version {version:?} is unknown")))?;
    if rules.event_id_format == EventIdFormatVersion::V1 {
        return Err(not_derived(format!(
            "events of room version {version} carry their own ID"
        )));
    }
    // Canonical JSON is stricter than JSON (integers within ±2^53, no floats): a PDU that is
    // not canonical has no reference hash, and the spec has servers refuse it.
    let object: CanonicalJsonObject = serde_json::from_slice(json)
        .map_err(|e| not_derived(format!("not canonical JSON: {e}")))?;
    let hash = ruma_signatures::reference_hash(&object, &rules)
        .map_err(|e| not_derived(format!("reference hash: {e}")))?;
    Ok(format!("${hash}"))
}

/// The ID of a PDU that declares none, in a room of version `room_version` (3 on): `$` and the
/// reference hash of its redacted JSON, as the spec's "Calculating the reference hash for an
/// event" says. This is the ID [`RoomServer`](crate::RoomServer) stores such an event under.
///
/// ```
/// let pdu = br#"{"room_id":"!r:x","type":"m.room.message","sender":"@a:x","prev_events":[],"auth_events":[],"depth":1,"origin_server_ts":1,"content":{"body":"hi"}}"#;
/// let id = roomstate::derive_event_id(pdu, "10")?;
/// assert!(id.starts_with('$') && id.len() == 44);
/// // Room versions 1 and 2 name their events themselves.
/// assert!(roomstate::derive_event_id(pdu, "2").is_err());
/// # Ok::<(), roomstate::Error>(())
/// ```
pub fn derive_event_id(pdu: &[u8], room_version: &str) -> Result<String, Error> {
    event_id(pdu, room_version).map_err(|problem| Error::BadEvent {
        event_id: None,
        problem,
    })
}
