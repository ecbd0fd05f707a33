//! Helpers shared by the integration tests.
#![allow(dead_code)]

use roomstate::{EventNid, StateKey, StateKeyNid, TypeNid};

/// SplitMix64: a tiny seeded generator, so every test sequence can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub fn key(ty: u64, sk: u64) -> StateKey {
    StateKey::new(TypeNid::new(ty).unwrap(), StateKeyNid::new(sk).unwrap())
}

pub fn ev(n: u64) -> EventNid {
    EventNid::new(n).unwrap()
}
