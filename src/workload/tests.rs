//! The generator's own tests: determinism, shapes, and each workload's promises.

use std::collections::{HashMap, HashSet};

use super::*;

fn config(workload: Workload, members: u64, state_events: u64, messages: u32) -> GenConfig {
    GenConfig {
        members,
        state_events,
        messages_per_state: messages,
        ..GenConfig::new(workload)
    }
}

fn lines(config: GenConfig) -> Vec<String> {
    Generator::new(config).map(|e| e.to_json_line()).collect()
}

/// Ancestor bitsets by stream position, plus a check that every prev is earlier and in
/// the same room.
fn ancestors(events: &[GenEvent]) -> Vec<Vec<u64>> {
    let words = events.len().div_ceil(64);
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut result: Vec<Vec<u64>> = Vec::with_capacity(events.len());
    for (i, event) in events.iter().enumerate() {
        let mut bits = vec![0u64; words];
        for prev in &event.prev_events {
            let p = *index
                .get(prev.as_str())
                .unwrap_or_else(|| panic!("unknown prev {prev}"));
            assert_eq!(events[p].room_id, event.room_id, "prev in another room");
            for (b, a) in bits.iter_mut().zip(&result[p]) {
                *b |= a;
            }
            bits[p / 64] |= 1 << (p % 64);
        }
        assert!(
            index.insert(&event.event_id, i).is_none(),
            "duplicate event ID"
        );
        result.push(bits);
    }
    result
}

/// Pairs of state events on one key where neither is an ancestor of the other.
fn concurrent_same_key_pairs(events: &[GenEvent]) -> u64 {
    let anc = ancestors(events);
    let mut by_key: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if let Some(key) = &e.state_key {
            by_key
                .entry((&e.room_id, &e.event_type, key))
                .or_default()
                .push(i);
        }
    }
    let mut pairs = 0;
    for list in by_key.values() {
        for (x, &a) in list.iter().enumerate() {
            for &b in &list[x + 1..] {
                if anc[b][a / 64] & (1 << (a % 64)) == 0 {
                    pairs += 1;
                }
            }
        }
    }
    pairs
}

#[test]
fn deterministic_per_seed() {
    for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
        let small = config(workload, 30, 120, 2);
        assert_eq!(lines(small.clone()), lines(small.clone()));
        let other = GenConfig {
            seed: 2,
            ..small.clone()
        };
        assert_ne!(lines(small), lines(other));
    }
}

#[test]
fn event_ids_are_room_version_10() {
    for event in Generator::new(config(Workload::Forky, 50, 300, 1)) {
        let id = event.event_id.strip_prefix('$').expect("IDs start with $");
        assert_eq!(id.len(), 43, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
}

#[test]
fn lines_are_valid_json_with_expected_fields() {
    for line in lines(config(Workload::Many, 5, 20, 1)) {
        let v: Value = serde_json::from_str(&line).expect("valid JSON");
        for field in [
            "event_id",
            "room_id",
            "type",
            "sender",
            "prev_events",
            "depth",
            "content",
        ] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert!(line.starts_with("{\"event_id\":\"$"));
    }
}

#[test]
fn topological_order_and_depths() {
    for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
        let events: Vec<GenEvent> = Generator::new(config(workload, 40, 400, 2)).collect();
        ancestors(&events);
        let depth: HashMap<&str, u64> = events
            .iter()
            .map(|e| (e.event_id.as_str(), e.depth))
            .collect();
        for e in &events {
            let max = e
                .prev_events
                .iter()
                .map(|p| depth[p.as_str()])
                .max()
                .unwrap_or(0);
            assert_eq!(e.depth, max + 1);
            assert_eq!(e.prev_events.is_empty(), e.event_type == CREATE);
        }
    }
}

#[test]
fn hq_is_mostly_membership_and_forks_without_conflicts() {
    let events: Vec<GenEvent> = Generator::new(config(Workload::Hq, 2000, 5000, 0)).collect();
    let states: Vec<&GenEvent> = events.iter().filter(|e| e.state_key.is_some()).collect();
    assert_eq!(states.len(), 5000);
    let members = states.iter().filter(|e| e.event_type == MEMBER).count();
    assert!(
        members * 100 >= states.len() * 95,
        "{members} of {}",
        states.len()
    );
    assert!(
        events.iter().any(|e| e.prev_events.len() == 2),
        "no fork was merged"
    );
    assert_eq!(concurrent_same_key_pairs(&events), 0);
}

#[test]
fn hq_messages_follow_each_state_event() {
    let events: Vec<GenEvent> = Generator::new(config(Workload::Hq, 100, 200, 3)).collect();
    let states = events.iter().filter(|e| e.state_key.is_some()).count();
    assert_eq!(states, 200);
    // Only the create event lacks messages (nobody has joined yet); a fork may add one.
    assert!(events.len() >= 200 + 3 * 199);
}

#[test]
fn many_rooms_share_settings() {
    let events: Vec<GenEvent> = Generator::new(config(Workload::Many, 20, 20, 1)).collect();
    let rooms: HashSet<&str> = events.iter().map(|e| e.room_id.as_str()).collect();
    assert_eq!(rooms.len(), 20);
    // The same power levels everywhere, but for each room's creator, who is listed at 100.
    let pls: HashSet<String> = events
        .iter()
        .filter(|e| e.event_type == POWER_LEVELS)
        .map(|e| {
            let mut content = e.content.clone();
            let creator = content["users"][e.sender.as_str()].take();
            assert_eq!(creator, json!(100));
            content["users"]
                .as_object_mut()
                .map(|u| u.remove(&e.sender));
            content.to_string()
        })
        .collect();
    assert_eq!(pls.len(), 1);
    assert_eq!(concurrent_same_key_pairs(&events), 0);
}

#[test]
fn forky_merges_wide_and_conflicts_only_on_purpose() {
    for seed in 1..=3 {
        let cfg = GenConfig {
            seed,
            ..config(Workload::Forky, 200, 2000, 1)
        };
        let mut generator = Generator::new(cfg);
        let events: Vec<GenEvent> = generator.by_ref().collect();
        assert_eq!(
            events.iter().filter(|e| e.state_key.is_some()).count(),
            2000
        );
        assert!(events.iter().any(|e| e.prev_events.len() >= 3));
        let conflicts = generator.conflicts();
        assert!(conflicts >= 1);
        assert_eq!(concurrent_same_key_pairs(&events), conflicts);
    }
}

#[test]
fn hq_back_to_back_forks_stay_conflict_free() {
    // No messages, so nothing merges a fork before the next state step.
    let cfg = GenConfig {
        seed: 7,
        ..config(Workload::Hq, 300, 4000, 0)
    };
    let events: Vec<GenEvent> = Generator::new(cfg).collect();
    assert!(events.iter().all(|e| e.prev_events.len() <= 2));
    assert_eq!(concurrent_same_key_pairs(&events), 0);
}

#[test]
fn forky_ends_with_one_extremity() {
    let events: Vec<GenEvent> = Generator::new(config(Workload::Forky, 100, 800, 2)).collect();
    let referenced: HashSet<&str> = events
        .iter()
        .flat_map(|e| e.prev_events.iter().map(String::as_str))
        .collect();
    let tips = events
        .iter()
        .filter(|e| !referenced.contains(e.event_id.as_str()))
        .count();
    assert_eq!(tips, 1);
}

#[test]
fn write_jsonl_counts_lines() {
    let mut buf = Vec::new();
    let n = write_jsonl(config(Workload::Many, 3, 20, 2), &mut buf).expect("Vec never fails");
    let text = String::from_utf8(buf).expect("UTF-8");
    assert_eq!(text.lines().count() as u64, n);
    assert!(text.ends_with('\n'));
}

#[test]
fn workload_names_round_trip() {
    for w in [Workload::Hq, Workload::Many, Workload::Forky] {
        assert_eq!(w.name().parse::<Workload>(), Ok(w));
    }
    assert!("nope".parse::<Workload>().is_err());
}
