//! Event IDs from reference hashes. In room versions 3 on, a PDU carries no `event_id`: its ID
//! is `$` and the hash of its redacted JSON. In room version 12 on, a room's ID is its create
//! event's ID with `!` for `$`.
//!
//! The hash is ruma-signatures' `reference_hash`, which applies the room version's redaction
//! algorithm and canonical JSON, as the spec's "Calculating the reference hash for an event"
//! says.

use crate::error::Problem;
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
