//! Matrix state resolution through the full ingest path, checked against `ruma-state-res`
//! called directly on the same events with whole state maps.
//!
//! The classic scenarios are written from the descriptions in the spec and in Synapse's and
//! ruma's test suites, as JSON-lines histories built event by event: each event's `auth_events`
//! are the auth keys of the state before it, as a homeserver would choose them.

mod common;

use common::StringNames;
use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, ingest};
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{Store, StoreRead};
use ruma_common::room_version_rules::RoomVersionRules;
use ruma_common::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
};
use ruma_events::{StateEventType, TimelineEventType};
use ruma_state_res::utils::event_id_set::EventIdSet;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};

// ------------------------------------------------------------------------------------------
// The direct call: ruma-state-res on whole maps, with events and auth chains from the JSON.

#[derive(Debug, Deserialize)]
struct Pdu {
    event_id: OwnedEventId,
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    event_type: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
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
        None
    }
    fn rejected(&self) -> bool {
        false
    }
}

type Named = BTreeMap<(String, String), String>;

fn auth_chain(pdus: &HashMap<OwnedEventId, Pdu>, state: &Named) -> EventIdSet<OwnedEventId> {
    let mut out = EventIdSet::new();
    let mut stack: Vec<OwnedEventId> = state
        .values()
        .flat_map(|id| {
            pdus[EventId::parse(id).unwrap().as_ref() as &EventId]
                .auth_events
                .clone()
        })
        .collect();
    while let Some(id) = stack.pop() {
        if out.contains(&id) {
            continue;
        }
        if let Some(p) = pdus.get(&id) {
            stack.extend(p.auth_events.iter().cloned());
        }
        out.insert(id);
    }
    out
}

/// `ruma_state_res::resolve` on whole state maps (room versions 2 to 11).
fn direct(lines: &[String], forks: &[Named]) -> Named {
    let pdus: HashMap<OwnedEventId, Pdu> = lines
        .iter()
        .map(|l| {
            let p: Pdu = serde_json::from_str(l).unwrap();
            (p.event_id.clone(), p)
        })
        .collect();
    let maps: Vec<ruma_state_res::StateMap<OwnedEventId>> = forks
        .iter()
        .map(|f| {
            f.iter()
                .map(|((t, k), e)| {
                    (
                        (StateEventType::from(t.as_str()), k.clone()),
                        EventId::parse(e).unwrap(),
                    )
                })
                .collect()
        })
        .collect();
    let chains = forks.iter().map(|f| auth_chain(&pdus, f)).collect();
    let rules = RoomVersionRules::V10;
    let resolved = ruma_state_res::resolve(
        &rules.authorization,
        rules.state_res.v2_rules().unwrap(),
        maps.iter(),
        chains,
        |id: &EventId| pdus.get(id),
        |_| None,
    )
    .unwrap();
    resolved
        .into_iter()
        .map(|((t, k), e)| ((t.to_string(), k), e.to_string()))
        .collect()
}

fn named(store: &Store, state: &roomstate::StateMap) -> Named {
    let rx = store.read().unwrap();
    StringNames::default()
        .state(&rx, state)
        .into_iter()
        .map(|((t, k), e)| ((t.to_string(), k.to_string()), e.to_string()))
        .collect()
}

fn state_after(store: &Store, id: &str) -> Named {
    let rx = store.read().unwrap();
    let state = rx.state_after(rx.event_nid(id).unwrap().unwrap()).unwrap();
    drop(rx);
    named(store, &state)
}

fn state_before(store: &Store, id: &str) -> Named {
    let rx = store.read().unwrap();
    let state = rx.state_before(rx.event_nid(id).unwrap().unwrap()).unwrap();
    drop(rx);
    named(store, &state)
}

// ------------------------------------------------------------------------------------------
// Histories built event by event through ingest.

const ROOM: &str = "!classic:test";

struct Room {
    store: Store,
    lines: Vec<String>,
    ts: u64,
    /// Events soft-failed on arrival.
    soft_failed: u64,
}

impl Room {
    /// A public room (version 10): alice creates it and holds 100, bob and charlie join.
    fn new() -> Room {
        let mut room = Room {
            store: Store::in_memory().unwrap(),
            lines: Vec::new(),
            ts: 0,
            soft_failed: 0,
        };
        room.send(
            "CREATE",
            "m.room.create",
            Some(""),
            "alice",
            json!({"creator": "@alice:test", "room_version": "10"}),
            &[],
        );
        room.send(
            "IMA",
            "m.room.member",
            Some("@alice:test"),
            "alice",
            json!({"membership": "join"}),
            &["CREATE"],
        );
        room.send(
            "IPOWER",
            "m.room.power_levels",
            Some(""),
            "alice",
            json!({"users": {"@alice:test": 100}}),
            &["IMA"],
        );
        room.send(
            "IJR",
            "m.room.join_rules",
            Some(""),
            "alice",
            json!({"join_rule": "public"}),
            &["IPOWER"],
        );
        room.send(
            "IMB",
            "m.room.member",
            Some("@bob:test"),
            "bob",
            json!({"membership": "join"}),
            &["IJR"],
        );
        room.send(
            "IMC",
            "m.room.member",
            Some("@charlie:test"),
            "charlie",
            json!({"membership": "join"}),
            &["IMB"],
        );
        room
    }

    /// Ingests one event. Its auth events are chosen from the state after its first prev
    /// event, by the auth rules' selection.
    fn send(
        &mut self,
        name: &str,
        ty: &str,
        state_key: Option<&str>,
        sender: &str,
        content: Value,
        prevs: &[&str],
    ) {
        let sender = format!("@{sender}:test");
        let before = prevs
            .first()
            .map(|p| state_after(&self.store, &id(p)))
            .unwrap_or_default();
        let mut auth_keys = vec![("m.room.create", ""), ("m.room.power_levels", "")];
        auth_keys.push(("m.room.member", sender.as_str()));
        if ty == "m.room.member" {
            auth_keys.push(("m.room.member", state_key.unwrap()));
            if content["membership"] == "join" || content["membership"] == "invite" {
                auth_keys.push(("m.room.join_rules", ""));
            }
        }
        let mut auth_events: Vec<String> = Vec::new();
        if ty != "m.room.create" {
            for (t, k) in auth_keys {
                if let Some(e) = before.get(&(t.to_owned(), k.to_owned()))
                    && !auth_events.contains(e)
                {
                    auth_events.push(e.clone());
                }
            }
        }
        self.ts += 1;
        let mut event = json!({
            "event_id": id(name),
            "room_id": ROOM,
            "type": ty,
            "sender": sender,
            "prev_events": prevs.iter().map(|p| id(p)).collect::<Vec<_>>(),
            "auth_events": auth_events,
            "origin_server_ts": self.ts,
            "content": content,
        });
        if let Some(k) = state_key {
            event["state_key"] = json!(k);
        }
        let line = event.to_string();
        let options = IngestOptions {
            batch_size: 1,
            on_bad_line: OnBadLine::Stop,
            ..IngestOptions::default()
        };
        let report = ingest(
            &self.store,
            line.as_bytes(),
            options,
            &mut MatrixResolver::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        // The scenarios are authorized histories: nothing in them is rejected. An event that
        // loses a race (Bob's power-levels change after Alice's concurrent ban has become the
        // current state, say) is soft-failed, as the spec's step 6 says; the merges after it
        // still name it, and state resolution still weighs it.
        assert_eq!(report.rejected, 0, "{name}");
        self.soft_failed += report.soft_failed;
        self.lines.push(line);
    }

    /// A non-state marker merging `prevs`; returns the state before it, after checking it
    /// against ruma-state-res called directly on the whole states after `prevs`.
    fn merge(&mut self, prevs: &[&str]) -> Named {
        self.send(
            "END",
            "m.room.message",
            None,
            "alice",
            json!({"body": "end"}),
            prevs,
        );
        let forks: Vec<Named> = prevs
            .iter()
            .map(|p| state_after(&self.store, &id(p)))
            .collect();
        let ours = state_before(&self.store, &id("END"));
        assert_eq!(
            ours,
            direct(&self.lines, &forks),
            "ingest and the direct call disagree"
        );
        ours
    }
}

fn id(name: &str) -> String {
    format!("${name}:test")
}

fn holder(state: &Named, ty: &str, key: &str) -> Option<String> {
    state.get(&(ty.to_owned(), key.to_owned())).map(|e| {
        e.trim_start_matches('$')
            .trim_end_matches(":test")
            .to_owned()
    })
}

fn pl(users: Value) -> Value {
    json!({ "users": users })
}

#[test]
fn ban_against_power_levels() {
    // Alice raises bob to 50. Then, concurrently, alice bans bob and bob edits the power levels:
    // the ban is the more powerful event, and bob's edit no longer passes authorization.
    let mut r = Room::new();
    r.send(
        "PA",
        "m.room.power_levels",
        Some(""),
        "alice",
        pl(json!({"@alice:test": 100, "@bob:test": 50})),
        &["IMC"],
    );
    r.send(
        "MB",
        "m.room.member",
        Some("@bob:test"),
        "alice",
        json!({"membership": "ban"}),
        &["PA"],
    );
    r.send(
        "PB",
        "m.room.power_levels",
        Some(""),
        "bob",
        pl(json!({"@alice:test": 100, "@bob:test": 50, "@charlie:test": 50})),
        &["PA"],
    );
    // Bob's edit arrives after the ban is the current state: soft-failed on receipt.
    assert_eq!(r.soft_failed, 1);
    let state = r.merge(&["MB", "PB"]);
    assert_eq!(
        holder(&state, "m.room.member", "@bob:test").as_deref(),
        Some("MB")
    );
    assert_eq!(
        holder(&state, "m.room.power_levels", "").as_deref(),
        Some("PA")
    );
}

#[test]
fn topic_reset() {
    // Bob sets a topic under the power alice gave him; on another branch alice bans him, and a
    // merge with an older point leaves the topic as it was before bob's.
    let mut r = Room::new();
    r.send(
        "T1",
        "m.room.topic",
        Some(""),
        "alice",
        json!({"topic": "T1"}),
        &["IMC"],
    );
    r.send(
        "PA",
        "m.room.power_levels",
        Some(""),
        "alice",
        pl(json!({"@alice:test": 100, "@bob:test": 50})),
        &["T1"],
    );
    r.send(
        "T2",
        "m.room.topic",
        Some(""),
        "bob",
        json!({"topic": "T2"}),
        &["PA"],
    );
    r.send(
        "MB",
        "m.room.member",
        Some("@bob:test"),
        "alice",
        json!({"membership": "ban"}),
        &["T2"],
    );
    let state = r.merge(&["MB", "T1"]);
    assert_eq!(holder(&state, "m.room.topic", "").as_deref(), Some("T1"));
    assert_eq!(
        holder(&state, "m.room.member", "@bob:test").as_deref(),
        Some("MB")
    );
    assert_eq!(
        holder(&state, "m.room.power_levels", "").as_deref(),
        Some("PA")
    );
}

#[test]
fn join_rules_evasion() {
    // Alice makes the room invite-only while ella joins on a branch that has not seen it:
    // ella's join does not survive.
    let mut r = Room::new();
    r.send(
        "JR",
        "m.room.join_rules",
        Some(""),
        "alice",
        json!({"join_rule": "invite"}),
        &["IMC"],
    );
    r.send(
        "ME",
        "m.room.member",
        Some("@ella:test"),
        "ella",
        json!({"membership": "join"}),
        &["IMC"],
    );
    let state = r.merge(&["JR", "ME"]);
    assert_eq!(
        holder(&state, "m.room.join_rules", "").as_deref(),
        Some("JR")
    );
    assert_eq!(holder(&state, "m.room.member", "@ella:test"), None);
}

#[test]
fn off_topic_power_levels_change() {
    // Alice raises bob, bob raises charlie, charlie lowers himself; merged with the branch that
    // only saw alice's change, the chain of valid changes wins.
    let mut r = Room::new();
    r.send(
        "PA",
        "m.room.power_levels",
        Some(""),
        "alice",
        pl(json!({"@alice:test": 100, "@bob:test": 50})),
        &["IMC"],
    );
    r.send(
        "PB",
        "m.room.power_levels",
        Some(""),
        "bob",
        pl(json!({"@alice:test": 100, "@bob:test": 50, "@charlie:test": 50})),
        &["PA"],
    );
    r.send(
        "PC",
        "m.room.power_levels",
        Some(""),
        "charlie",
        pl(json!({"@alice:test": 100, "@bob:test": 50, "@charlie:test": 0})),
        &["PB"],
    );
    let state = r.merge(&["PC", "PA"]);
    assert_eq!(
        holder(&state, "m.room.power_levels", "").as_deref(),
        Some("PC")
    );
}

#[test]
fn mainline_ordering() {
    // Topics on two branches are ordered by the power-levels mainline they were sent under:
    // T2, sent after alice's last power change, beats bob's T3, sent under an older one.
    let mut r = Room::new();
    r.send(
        "T1",
        "m.room.topic",
        Some(""),
        "alice",
        json!({"topic": "T1"}),
        &["IMC"],
    );
    r.send(
        "PA1",
        "m.room.power_levels",
        Some(""),
        "alice",
        pl(json!({"@alice:test": 100, "@bob:test": 50})),
        &["T1"],
    );
    r.send(
        "T2",
        "m.room.topic",
        Some(""),
        "alice",
        json!({"topic": "T2"}),
        &["PA1"],
    );
    r.send(
        "PA2",
        "m.room.power_levels",
        Some(""),
        "alice",
        pl(json!({"@alice:test": 100, "@bob:test": 0})),
        &["T2"],
    );
    r.send(
        "PB",
        "m.room.power_levels",
        Some(""),
        "bob",
        pl(json!({"@alice:test": 100, "@bob:test": 50})),
        &["PA1"],
    );
    r.send(
        "T3",
        "m.room.topic",
        Some(""),
        "bob",
        json!({"topic": "T3"}),
        &["PB"],
    );
    let state = r.merge(&["PA2", "T3"]);
    assert_eq!(
        holder(&state, "m.room.power_levels", "").as_deref(),
        Some("PA2")
    );
    assert_eq!(holder(&state, "m.room.topic", "").as_deref(), Some("T2"));
}

#[test]
fn concurrent_joins() {
    let mut r = Room::new();
    r.send(
        "ME",
        "m.room.member",
        Some("@ella:test"),
        "ella",
        json!({"membership": "join"}),
        &["IMC"],
    );
    r.send(
        "MZ",
        "m.room.member",
        Some("@zara:test"),
        "zara",
        json!({"membership": "join"}),
        &["IMC"],
    );
    let state = r.merge(&["ME", "MZ"]);
    assert_eq!(
        holder(&state, "m.room.member", "@ella:test").as_deref(),
        Some("ME")
    );
    assert_eq!(
        holder(&state, "m.room.member", "@zara:test").as_deref(),
        Some("MZ")
    );
    assert_eq!(state.len(), 8, "create, power, join rules and five members");
}

// ------------------------------------------------------------------------------------------
// Generated histories with conflicts.

#[test]
fn forky_ingests_whole_and_every_merge_matches_the_direct_call() {
    let config = GenConfig {
        workload: Workload::Forky,
        seed: 4,
        members: 40,
        state_events: 400,
        messages_per_state: 1,
        room_version: Default::default(),
    };
    let lines: Vec<String> = Generator::new(config).map(|e| e.to_json_line()).collect();
    let text = lines.join("\n");
    let options = IngestOptions {
        batch_size: 50,
        on_bad_line: OnBadLine::Stop,
        ..IngestOptions::default()
    };
    let store = Store::in_memory().unwrap();
    let mut resolver = MatrixResolver::default();
    let report = ingest(&store, text.as_bytes(), options.clone(), &mut resolver).unwrap();
    assert_eq!(report.events as usize, lines.len());
    assert_eq!((report.rejected, report.soft_failed), (0, 0));
    assert!(
        resolver.timings().len() > 20,
        "{} conflicted merges",
        resolver.timings().len()
    );

    let whole = Store::in_memory().unwrap();
    ingest(
        &whole,
        text.as_bytes(),
        options,
        &mut MatrixResolver::whole_maps(),
    )
    .unwrap();

    let mut merges = 0;
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap();
        let event = v["event_id"].as_str().unwrap();
        let ours = state_before(&store, event);
        assert_eq!(
            ours,
            state_before(&whole, event),
            "{event}: conflicted-only and whole maps"
        );
        let prevs: Vec<&str> = v["prev_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        if prevs.len() > 1 {
            let forks: Vec<Named> = prevs.iter().map(|p| state_after(&store, p)).collect();
            if forks.iter().any(|f| f != &forks[0]) {
                assert_eq!(
                    ours,
                    direct(&lines, &forks),
                    "{event}: ingest and the direct call"
                );
                merges += 1;
            }
        }
    }
    assert!(merges > 20, "only {merges} merges with differing states");
    assert!(store.read().unwrap().check().unwrap().is_clean());
}

#[test]
fn unsupported_room_versions_are_bad_lines_naming_the_version() {
    for (version, reason) in [
        ("1", "state resolution v1 is not implemented"),
        ("999", "not a room version ruma-state-res knows"),
    ] {
        let store = Store::in_memory().unwrap();
        let ev = |name: &str, ty: &str, key: &str, prevs: &[&str], content: Value| {
            json!({"event_id": id(name), "room_id": ROOM, "type": ty, "state_key": key, "sender": "@alice:test",
                   "prev_events": prevs.iter().map(|p| id(p)).collect::<Vec<_>>(), "origin_server_ts": 1, "content": content})
            .to_string()
        };
        let lines = [
            ev(
                "C",
                "m.room.create",
                "",
                &[],
                json!({"room_version": version}),
            ),
            ev("A", "m.room.topic", "", &["C"], json!({"topic": "a"})),
            ev("B", "m.room.topic", "", &["C"], json!({"topic": "b"})),
        ];
        // Trusted, so that the merge reaches the resolver: authorization would reject these
        // events first (tests/auth.rs has the unknown version's rejection).
        let options = IngestOptions {
            batch_size: 10,
            on_bad_line: OnBadLine::Skip,
            trust: true,
            ..IngestOptions::default()
        };
        let report = ingest(
            &store,
            lines.join("\n").as_bytes(),
            options,
            MatrixResolver::default(),
        )
        .unwrap();
        assert_eq!(report.bad_lines, 1, "room version {version}");
        let bad = &report.listed_bad_lines[0];
        assert_eq!(bad.line, 3);
        let text = bad.to_string();
        assert!(
            text.contains(&format!("room version {version:?}")) && text.contains(reason),
            "{text}"
        );
    }
}
