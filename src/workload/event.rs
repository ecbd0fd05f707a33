//! One generated event and its JSON line, written by hand in the PDU field order.

use super::*;

/// One generated event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenEvent {
    /// Room version 10 event ID: `$` and 43 URL-safe base64 characters.
    pub event_id: String,
    /// The room the event belongs to.
    pub room_id: String,
    /// The event type, e.g. `m.room.member`.
    pub event_type: String,
    /// Present exactly for state events (`""` is a valid key).
    pub state_key: Option<String>,
    /// The sending user.
    pub sender: String,
    /// The room's forward extremities the event was built on.
    pub prev_events: Vec<String>,
    /// Plausible auth events: create, power levels and the relevant memberships.
    pub auth_events: Vec<String>,
    /// 1 + the largest depth among the prev events.
    pub depth: u64,
    /// Milliseconds since the epoch, increasing through the stream.
    pub origin_server_ts: u64,
    /// The event content as a JSON object.
    pub content: serde_json::Value,
    /// How the authorization rules should judge it: accepted, unless it was injected by
    /// [`Generator::with_unauthorized`].
    pub expected: Expected,
}

impl GenEvent {
    /// One JSON line in the federation shape of workloads.md (no trailing newline). Field order:
    /// event_id, room_id, type, state_key (omitted when None), sender, prev_events, auth_events,
    /// depth, origin_server_ts, content.
    pub fn to_json_line(&self) -> String {
        let mut out = String::with_capacity(256 + 48 * self.prev_events.len());
        out.push_str("{\"event_id\":");
        push_json_str(&mut out, &self.event_id);
        // A room version 12 create event has no room ID: its own ID is the room's.
        if !(self.event_type == CREATE && self.content["room_version"] == "12") {
            out.push_str(",\"room_id\":");
            push_json_str(&mut out, &self.room_id);
        }
        out.push_str(",\"type\":");
        push_json_str(&mut out, &self.event_type);
        if let Some(key) = &self.state_key {
            out.push_str(",\"state_key\":");
            push_json_str(&mut out, key);
        }
        out.push_str(",\"sender\":");
        push_json_str(&mut out, &self.sender);
        out.push_str(",\"prev_events\":");
        push_json_list(&mut out, &self.prev_events);
        out.push_str(",\"auth_events\":");
        push_json_list(&mut out, &self.auth_events);
        // Writing into a String cannot fail.
        let _ = write!(
            out,
            ",\"depth\":{},\"origin_server_ts\":{},\"content\":{}}}",
            self.depth, self.origin_server_ts, self.content
        );
        out
    }
}

pub(super) fn push_json_list(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, item);
    }
    out.push(']');
}

pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Writing into a String cannot fail.
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
