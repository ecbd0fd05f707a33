//! The running context every workload shares: the random stream, the event counter behind
//! event IDs, timestamps, and user IDs.

use super::*;

/// Stream-wide state shared by all rooms: randomness, the ID counter and the clock.
#[derive(Debug)]
pub(super) struct Ctx {
    pub(super) rng: Rng,
    pub(super) id_seed: u64,
    pub(super) counter: u64,
    pub(super) ts: u64,
}

impl Ctx {
    pub(super) fn new(config: &GenConfig) -> Self {
        let mut mix = Rng(config.seed ^ config.workload.tag().wrapping_mul(0xA076_1D64_78BD_642F));
        let id_seed = mix.next_u64();
        Self {
            rng: Rng(mix.next_u64()),
            id_seed,
            counter: 0,
            ts: START_TS,
        }
    }

    pub(super) fn next_id(&mut self) -> String {
        self.counter += 1;
        event_id(self.id_seed, self.counter - 1)
    }

    pub(super) fn next_ts(&mut self) -> u64 {
        let ts = self.ts;
        self.ts += self.rng.range(1, MAX_TS_STEP);
        ts
    }
}

/// The `counter`th event ID of the stream seeded with `seed`: `$` and 43 characters of a 256-bit
/// hash, like a room version 4+ reference hash.
pub(super) fn event_id(seed: u64, counter: u64) -> String {
    let input = counter.to_le_bytes();
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&xxh3_128_with_seed(&input, seed).to_le_bytes());
    bytes[16..].copy_from_slice(&xxh3_128_with_seed(&input, !seed).to_le_bytes());
    let mut id = String::with_capacity(44);
    id.push('$');
    push_base64url(&mut id, &bytes);
    id
}

pub(super) const BASE64URL: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded URL-safe base64 (RFC 4648 §5); 32 bytes give the 43 characters of an event ID.
pub(super) fn push_base64url(out: &mut String, bytes: &[u8]) {
    for chunk in bytes.chunks(3) {
        let mut group = [0u8; 3];
        group[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
        for i in 0..=chunk.len() {
            let sextet = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(BASE64URL[sextet as usize]));
        }
    }
}

pub(super) fn user_id(n: u64) -> String {
    format!("@user{n}:server{}.test", n % SERVERS)
}

// ---------------------------------------------------------------------------------------------
// Rooms, drafts and the event graph
