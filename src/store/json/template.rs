//! Event IDs out of stored JSON: a row names the events its JSON quotes by NID.
//!
//! A compressed event is mostly the random event IDs it quotes (its own, its prev and auth
//! events), and `event_ids_rev` holds each of them already. A templated row keeps the JSON with
//! those IDs taken out, and a reference for each in their place:
//!
//! ```text
//! 01 | varint n | n references | body
//! ```
//!
//! - A reference is a varint `v`, its low two bits a tag: `0`, event NID `v >> 2`; `1`, the NID
//!   `v >> 2` below the row's own event's (`0` is the event itself: prev events are its recent
//!   neighbours); `2`, an ID kept as it is, its `v >> 2` bytes following.
//! - The body is the template, stored as an untemplated row stores its JSON (a zstd frame, or
//!   raw): the JSON with each taken-out ID replaced by `01 k`, reference `k` (one byte).
//!
//! JSON never holds the byte `01` (control characters are escaped inside strings and not
//! allowed outside), so neither the row's first byte nor a marker can be mistaken for JSON. The
//! caller says which byte ranges hold IDs; this module only moves bytes, and reading a row gives
//! back exactly the JSON written.
//!
//! Architecture invariant: a row names by NID only its own event and stored events of its own
//! room. A purge deletes a room's events with their rows, so no row outlives an ID it names.

use crate::engine::{put_varint, take_varint};
use crate::nid::EventNid;
use std::borrow::Cow;
use std::ops::Range;

/// The first byte of a templated row, and the marker of an ID in its body.
pub(crate) const TAG: u8 = 0x01;
/// A template names at most this many distinct IDs: a marker's index is one byte.
const MAX_REFERENCES: usize = 255;

/// JSON with the IDs at given byte ranges taken out.
#[derive(Debug)]
pub(crate) struct Template {
    /// The distinct IDs taken out, as ranges of the JSON, in the order of their references.
    ids: Vec<Range<usize>>,
    body: Vec<u8>,
}

impl Template {
    /// `json` with the IDs at `ranges` (ascending, not overlapping) taken out; `None` when none
    /// is, or when `json` holds the marker byte and so is not JSON.
    pub(crate) fn new(json: &[u8], ranges: &[Range<usize>]) -> Option<Template> {
        if ranges.is_empty() || json.contains(&TAG) {
            return None;
        }
        let mut ids: Vec<Range<usize>> = Vec::new();
        let mut body = Vec::with_capacity(json.len());
        let mut copied = 0;
        for range in ranges {
            let Some(id) = json.get(range.clone()).filter(|_| range.start >= copied) else {
                continue;
            };
            let k = match ids.iter().position(|r| json[r.clone()] == *id) {
                Some(k) => k,
                None if ids.len() < MAX_REFERENCES => {
                    ids.push(range.clone());
                    ids.len() - 1
                }
                None => continue,
            };
            body.extend_from_slice(&json[copied..range.start]);
            // `k` < MAX_REFERENCES = 255: the cast keeps it.
            body.extend_from_slice(&[TAG, k as u8]);
            copied = range.end;
        }
        if ids.is_empty() {
            return None;
        }
        body.extend_from_slice(&json[copied..]);
        body.shrink_to_fit();
        Some(Template { ids, body })
    }

    /// The IDs taken out of `json`, the JSON this template was made from.
    pub(crate) fn ids<'j>(&self, json: &'j [u8]) -> impl Iterator<Item = &'j [u8]> {
        // Given other JSON than its own, a range past its end reads as an empty ID rather than
        // a panic; `references` then keeps that empty ID, and the row reads back wrong but whole.
        self.ids
            .iter()
            .map(|r| json.get(r.clone()).unwrap_or_default())
    }

    /// The JSON with its IDs taken out.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }
}

/// The references of a templated row, `own` its event: each event NID that `nids` gives for an
/// ID of `template`, the ID itself where it gives none.
pub(crate) fn references(
    own: EventNid,
    json: &[u8],
    template: &Template,
    nids: &[Option<EventNid>],
) -> Vec<u8> {
    let mut out = vec![TAG];
    put_varint(&mut out, template.ids.len() as u64);
    for (i, id) in template.ids(json).enumerate() {
        // A NID from 2^62 on (no counter gets there) would not fit beside its tag: kept as an ID.
        match nids.get(i).copied().flatten().filter(|n| n.get() < 1 << 62) {
            Some(nid) if nid <= own && own.get() - nid.get() < nid.get() => {
                put_varint(&mut out, ((own.get() - nid.get()) << 2) | 1);
            }
            Some(nid) => put_varint(&mut out, nid.get() << 2),
            None => {
                put_varint(&mut out, (id.len() as u64) << 2 | 2);
                out.extend_from_slice(id);
            }
        }
    }
    out
}

/// One reference of a row.
#[derive(Debug)]
pub(crate) enum Reference<'a> {
    /// An event's NID, whose ID `event_ids_rev` holds.
    Event(u64),
    /// The ID itself.
    Literal(&'a [u8]),
}

/// A templated row's references, and its body.
pub(crate) type Split<'a> = (Vec<Reference<'a>>, &'a [u8]);

/// A templated row's references and body; `Ok(None)` for a row that is not templated.
pub(crate) fn split(row: &[u8], own: EventNid) -> Result<Option<Split<'_>>, &'static str> {
    let Some(mut rest) = row.strip_prefix(&[TAG]) else {
        return Ok(None);
    };
    let cut = "references cut short";
    let n = take_varint(&mut rest).ok_or(cut)?;
    if n == 0 || n > MAX_REFERENCES as u64 {
        return Err("a reference count out of range");
    }
    let mut references = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let v = take_varint(&mut rest).ok_or(cut)?;
        let x = v >> 2;
        references.push(match v & 3 {
            0 if x != 0 => Reference::Event(x),
            1 if x < own.get() => Reference::Event(own.get() - x),
            2 => {
                let len = usize::try_from(x).map_err(|_| cut)?;
                if len > rest.len() {
                    return Err(cut);
                }
                let (id, tail) = rest.split_at(len);
                rest = tail;
                Reference::Literal(id)
            }
            _ => return Err("a reference to no event"),
        });
    }
    Ok(Some((references, rest)))
}

/// The JSON of a template, its IDs given in the order of their references.
pub(crate) fn restore(body: &[u8], ids: &[Cow<'_, [u8]>]) -> Result<Vec<u8>, &'static str> {
    let mut json = Vec::with_capacity(body.len() + ids.iter().map(|id| id.len()).sum::<usize>());
    let mut rest = body;
    while let Some(at) = rest.iter().position(|&b| b == TAG) {
        json.extend_from_slice(&rest[..at]);
        let k = *rest.get(at + 1).ok_or("a marker cut short")?;
        json.extend_from_slice(
            ids.get(usize::from(k))
                .ok_or("a marker with no reference")?,
        );
        rest = &rest[at + 2..];
    }
    json.extend_from_slice(rest);
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nid(n: u64) -> EventNid {
        EventNid::new(n).expect("not 0")
    }

    /// The row's references and body, restored with `ids` for the events it names.
    fn round_trip(json: &[u8], own: EventNid, nids: &[Option<EventNid>], ids: &[(u64, &[u8])]) {
        let ranges: Vec<Range<usize>> = (0..json.len())
            .filter(|&i| json[i] == b'$')
            .map(|i| i..i + 2)
            .collect();
        let template = Template::new(json, &ranges).expect("IDs to take out");
        let mut row = references(own, json, &template, nids);
        row.extend_from_slice(template.body());
        let (refs, body) = split(&row, own).expect("splits").expect("templated");
        let named: Vec<Cow<'_, [u8]>> = refs
            .into_iter()
            .map(|r| match r {
                Reference::Event(n) => {
                    Cow::Borrowed(ids.iter().find(|i| i.0 == n).expect("an ID").1)
                }
                Reference::Literal(id) => Cow::Borrowed(id),
            })
            .collect();
        assert_eq!(restore(body, &named).expect("restores"), json);
    }

    #[test]
    fn nids_below_own_above_it_and_beyond_two_to_the_62_read_back() {
        let json = br#"{"a":"$x","b":["$y","$z","$x"],"c":"$w"}"#;
        let own = nid(1_000);
        let huge = nid(1 << 62);
        let ids: [(u64, &[u8]); 3] = [(1_000, b"$x"), (999, b"$y"), (5_000, b"$z")];
        round_trip(
            json,
            own,
            &[Some(own), Some(nid(999)), Some(nid(5_000)), Some(huge)],
            &ids,
        );
        // NID 2^62 has no room beside its tag: its ID stays in the row as it is.
        let json = br#"{"a":"$w"}"#;
        let one_id = vec![Range { start: 6, end: 8 }];
        let template = Template::new(json, &one_id).expect("one ID");
        let row = references(own, json, &template, &[Some(huge)]);
        assert_eq!(row, [TAG, 1, 2 << 2 | 2, b'$', b'w']);
    }

    #[test]
    fn damaged_references_and_markers_are_errors() {
        let own = nid(10);
        assert!(split(&[TAG, 0], own).is_err(), "no references");
        assert!(split(&[TAG, 0x80, 0x02], own).is_err(), "256 references");
        assert!(split(&[TAG, 1, 3], own).is_err(), "tag 3");
        assert!(
            split(&[TAG, 1, 10 << 2 | 1], own).is_err(),
            "at or below NID 0"
        );
        assert!(split(&[TAG, 1, 0], own).is_err(), "NID 0");
        assert!(
            split(&[TAG, 1, 5 << 2 | 2, b'$'], own).is_err(),
            "a literal cut short"
        );
        assert!(split(b"{}", own).expect("not templated").is_none());
        let ids = [Cow::Borrowed(&b"$x"[..])];
        assert!(restore(&[b'{', TAG], &ids).is_err(), "a marker at the end");
        assert!(
            restore(&[b'{', TAG, 1, b'}'], &ids).is_err(),
            "a marker past the references"
        );
    }
}
