//! Snapshot records: the ordered list of blocks a state is made of. A later block overrides an
//! earlier one for the same (type, state key).
//!
//! Layout (see `docs/format.md`): one tag byte, the number of entries in the resolved state as a
//! little-endian `u32`, with tag [`SNAPSHOT_FORMAT_CHILD`] the parent snapshot's NID as a
//! little-endian `u64`, then 20 bytes per block: the block's hash as a little-endian `u128` and
//! its entry count as a little-endian `u32`. A child's blocks follow its parent's, so a snapshot
//! can name a large shared prefix in 8 bytes. The counts let write policies plan, and readers
//! size their output, without reading the blocks themselves.

use crate::engine::block::BlockHash;
use crate::nid::SnapshotNid;
use std::fmt;

/// The tag byte of a snapshot that lists all of its blocks.
pub const SNAPSHOT_FORMAT_LIST: u8 = 1;
/// The tag byte of a snapshot whose blocks follow those of a parent snapshot.
pub const SNAPSHOT_FORMAT_CHILD: u8 = 2;
const REF_BYTES: usize = 20;

/// One block of a snapshot, with its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// The block's content hash.
    pub hash: BlockHash,
    /// How many entries (tombstones included) the block holds.
    pub entries: u32,
}

/// A decoded snapshot record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// How many entries the resolved state holds.
    pub state_len: u32,
    /// The snapshot whose blocks come before this record's own.
    pub parent: Option<SnapshotNid>,
    /// The record's own blocks, oldest first.
    pub blocks: Vec<BlockRef>,
}

/// Encodes a snapshot record.
pub fn encode_snapshot(record: &SnapshotRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(13 + record.blocks.len() * REF_BYTES);
    match record.parent {
        None => out.push(SNAPSHOT_FORMAT_LIST),
        Some(_) => out.push(SNAPSHOT_FORMAT_CHILD),
    }
    out.extend_from_slice(&record.state_len.to_le_bytes());
    if let Some(parent) = record.parent {
        out.extend_from_slice(&parent.get().to_le_bytes());
    }
    for b in &record.blocks {
        out.extend_from_slice(&b.hash.0.to_le_bytes());
        out.extend_from_slice(&b.entries.to_le_bytes());
    }
    out
}

/// Why snapshot bytes were refused by [`decode_snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotShapeError {
    /// Not even the tag.
    Empty,
    /// A tag this version does not know.
    UnknownFormat(u8),
    /// The header is cut short, or the body is not a whole number of block references.
    Truncated(usize),
    /// A child record names parent 0.
    ZeroParent,
}

impl fmt::Display for SnapshotShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotShapeError::Empty => f.write_str("empty snapshot record"),
            SnapshotShapeError::UnknownFormat(t) => write!(f, "unknown snapshot format {t}"),
            SnapshotShapeError::Truncated(n) => {
                write!(f, "body of {n} bytes is not whole block references")
            }
            SnapshotShapeError::ZeroParent => f.write_str("parent snapshot 0"),
        }
    }
}

/// Decodes a snapshot record.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotRecord, SnapshotShapeError> {
    let (&tag, rest) = bytes.split_first().ok_or(SnapshotShapeError::Empty)?;
    let (len, mut body) = rest
        .split_first_chunk::<4>()
        .ok_or(SnapshotShapeError::Truncated(rest.len()))?;
    let parent = match tag {
        SNAPSHOT_FORMAT_LIST => None,
        SNAPSHOT_FORMAT_CHILD => {
            let (raw, after) = body
                .split_first_chunk::<8>()
                .ok_or(SnapshotShapeError::Truncated(body.len()))?;
            body = after;
            Some(SnapshotNid::new(u64::from_le_bytes(*raw)).ok_or(SnapshotShapeError::ZeroParent)?)
        }
        other => return Err(SnapshotShapeError::UnknownFormat(other)),
    };
    let (refs, tail) = body.as_chunks::<REF_BYTES>();
    if !tail.is_empty() {
        return Err(SnapshotShapeError::Truncated(body.len()));
    }
    Ok(SnapshotRecord {
        state_len: u32::from_le_bytes(*len),
        parent,
        blocks: refs.iter().map(decode_ref).collect(),
    })
}

fn decode_ref(raw: &[u8; REF_BYTES]) -> BlockRef {
    let (hash, count) = raw.split_at(16);
    let mut h = [0u8; 16];
    let mut c = [0u8; 4];
    // The split is at a constant inside a 20-byte array: the halves are exactly 16 and 4 bytes.
    h.copy_from_slice(hash);
    c.copy_from_slice(count);
    BlockRef {
        hash: BlockHash(u128::from_le_bytes(h)),
        entries: u32::from_le_bytes(c),
    }
}

/// The content hash a snapshot is deduplicated by: xxh3-128 of its encoded record.
pub fn snapshot_hash(encoded: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let refs = vec![
            BlockRef {
                hash: BlockHash(7),
                entries: 3,
            },
            BlockRef {
                hash: BlockHash(u128::MAX),
                entries: 1,
            },
        ];
        for parent in [None, SnapshotNid::new(77)] {
            let record = SnapshotRecord {
                state_len: 9,
                parent,
                blocks: refs.clone(),
            };
            assert_eq!(decode_snapshot(&encode_snapshot(&record)).unwrap(), record);
        }
        let empty = SnapshotRecord::default();
        assert_eq!(decode_snapshot(&encode_snapshot(&empty)).unwrap(), empty);
        assert!(decode_snapshot(&[1, 2]).is_err());
        assert!(decode_snapshot(&[]).is_err());
        assert!(decode_snapshot(&[1, 0, 0, 0, 0, 7]).is_err());
        assert!(decode_snapshot(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_snapshot(&[9, 0, 0, 0, 0]).is_err());
    }
}
