//! Events named by their reference hash, as federation sends them: room versions 3 on leave
//! `event_id` out of a PDU, and room version 12 leaves `room_id` out of its create event too.
//! Checked against a real server's event, and against a hash taken here by hand.

use roomstate::error::{Error, Problem};
use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, ingest};
use roomstate::matrix::roomserver::{InputEvent, InputOutcome, Received, RoomServer};
use roomstate::{Preparer, Store, StoreRead, derive_event_id};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A create event of a room version 5 room, as its server (jki.re) sent it over federation.
/// gomatrixserverlib's tests give its ID: `$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438`.
const JKI_RE_CREATE: &str = r#"{"auth_events": [], "prev_events": [], "type": "m.room.create", "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "sender": "@erikj:jki.re", "content": {"room_version": "5", "predecessor": {"room_id": "!gdRMqOrTFdOCYHNwOo:half-shot.uk", "event_id": "$LP7ROBc4b+cMc1UE9haIz8q5AK2AIW4eJ90FfKLvyZI"}, "creator": "@erikj:jki.re"}, "depth": 1, "prev_state": [], "state_key": "", "origin": "jki.re", "origin_server_ts": 1560284621137, "hashes": {"sha256": "IX6zuNiJpJPNf70BLleL3HSCpjKeq9Uhu7uUpyDjBmc"}, "signatures": {"jki.re": {"ed25519:auto": "O4IyFfF2PPtGp5uaDm8t57dZbdh8vc8Q64LgCwvzYRVItAMI0uisfiAFaxkVT7MRpzh6N2QNN5NMRXZKmgPYDA"}}, "unsigned": {"age": 1321650}}"#;

fn receive(store: &Store, pdus: &[String]) -> Vec<Received> {
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    let got = pdus
        .iter()
        .map(|pdu| {
            server
                .receive(&mut tx, &InputEvent::new(pdu.as_bytes()))
                .unwrap()
        })
        .collect();
    tx.commit().unwrap();
    got
}

#[test]
fn a_real_servers_create_event_gets_the_id_its_server_gave_it() {
    let store = Store::in_memory().unwrap();
    let got = receive(&store, &[JKI_RE_CREATE.to_owned()]);
    assert_eq!(got[0].outcome, InputOutcome::Accepted);
    let id = "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438";
    assert_eq!(got[0].event_id.as_deref(), Some(id));
    let rx = store.read().unwrap();
    let nid = rx.event_nid(id).unwrap().unwrap();
    assert_eq!(got[0].event, Some(nid));
    // Stored as it came: the ID is kept beside the JSON, not written into it.
    assert_eq!(rx.event_json(nid).unwrap().unwrap(), JKI_RE_CREATE);
    let room = rx.room_nid("!uXDCzlYgCTHtiWCkEx:jki.re").unwrap().unwrap();
    assert_eq!(rx.room(room).unwrap().unwrap().version, "5");
}

/// JSON in the spec's canonical form: keys sorted, no spaces (the values here are ASCII).
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

fn url_safe_unpadded_base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// A version 12 create event, as a server would send it: no `event_id`, no `room_id`, with
/// keys the reference hash leaves out (`origin`, which v11's redaction drops; `signatures`;
/// `unsigned`).
fn v12_create() -> Value {
    json!({
        "type": "m.room.create", "state_key": "", "sender": "@alice:a.example",
        "content": {"room_version": "12", "additional_creators": ["@bob:b.example"]},
        "prev_events": [], "auth_events": [], "depth": 1, "origin": "a.example",
        "origin_server_ts": 1_700_000_000_000_u64,
        "hashes": {"sha256": "AAAA"}, "signatures": {"a.example": {"ed25519:1": "AAAA"}},
        "unsigned": {"age": 5},
    })
}

/// The create event's reference hash, taken here by hand, step by step as the spec says.
fn v12_room_id_by_hand() -> String {
    let mut redacted = v12_create();
    let object = redacted.as_object_mut().unwrap();
    for key in ["origin", "signatures", "unsigned"] {
        object.remove(key);
    }
    let hash = Sha256::digest(canonical(&redacted).as_bytes());
    format!("!{}", url_safe_unpadded_base64(&hash))
}

/// A version 12 room's events after its create event, each named by its reference hash.
fn v12_room() -> (String, Vec<String>) {
    v12_room_with(1)
}

/// [`v12_room`] with `messages` messages at its end.
fn v12_room_with(messages: usize) -> (String, Vec<String>) {
    let create = v12_create();
    let room_id = v12_room_id_by_hand();
    let create_id = format!("${}", &room_id[1..]);
    let rules = ruma_common::RoomVersionId::V12.rules().unwrap();
    let mut pdus = vec![create.to_string()];
    let mut ids = vec![create_id];
    let mut add = |ty: &str, key: Option<&str>, sender: &str, content: Value, auth: &[usize]| {
        let mut pdu = json!({
            "type": ty, "room_id": room_id, "sender": sender, "content": content,
            "prev_events": [ids.last().unwrap()],
            "auth_events": auth.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>(),
            "depth": ids.len() + 1, "origin_server_ts": 1_700_000_000_000_u64 + ids.len() as u64,
            "hashes": {"sha256": "AAAA"}, "signatures": {},
        });
        if let Some(key) = key {
            pdu["state_key"] = key.into();
        }
        let object = serde_json::from_value(pdu.clone()).unwrap();
        let hash = ruma_signatures::reference_hash(&object, &rules).unwrap();
        ids.push(format!("${hash}"));
        pdus.push(pdu.to_string());
    };
    let join = json!({"membership": "join"});
    // The create event is implied: no event lists it among its auth events.
    add(
        "m.room.member",
        Some("@alice:a.example"),
        "@alice:a.example",
        join.clone(),
        &[],
    );
    let levels = json!({"users": {"@carol:c.example": 50}, "state_default": 50});
    add(
        "m.room.power_levels",
        Some(""),
        "@alice:a.example",
        levels,
        &[1],
    );
    let rules_content = json!({"join_rule": "public"});
    add(
        "m.room.join_rules",
        Some(""),
        "@alice:a.example",
        rules_content,
        &[1, 2],
    );
    add(
        "m.room.member",
        Some("@bob:b.example"),
        "@bob:b.example",
        join.clone(),
        &[2, 3],
    );
    // Bob is an additional creator: his power is unlimited, though the power levels do not
    // name him.
    let name = json!({"name": "named by an additional creator"});
    add("m.room.name", Some(""), "@bob:b.example", name, &[2, 4]);
    for n in 0..messages {
        let body = json!({"body": format!("hi {n}")});
        add("m.room.message", None, "@bob:b.example", body, &[2, 4]);
    }
    (room_id, pdus)
}

#[test]
fn a_version_12_room_takes_its_id_from_its_create_events_hash() {
    let (room_id, pdus) = v12_room();
    let store = Store::in_memory().unwrap();
    let got = receive(&store, &pdus);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.outcome, InputOutcome::Accepted, "event {i}");
    }
    assert_eq!(
        got[0].event_id.as_deref(),
        Some(&*format!("${}", &room_id[1..]))
    );
    let rx = store.read().unwrap();
    let room = rx
        .room_nid(&room_id)
        .unwrap()
        .expect("the room ID is the create event's hash");
    let record = rx.room(room).unwrap().unwrap();
    assert_eq!(record.version, "12");
    let current = rx.flatten(record.current_state).unwrap();
    assert_eq!(
        current.len(),
        6,
        "create, two members, power levels, join rules, name"
    );
    let message = got[6].event.unwrap();
    assert_eq!(rx.state_before(message).unwrap(), current);
    for (g, pdu) in got.iter().zip(&pdus) {
        let nid = g.event.unwrap();
        assert_eq!(rx.event_id(nid).unwrap(), *g.event_id.as_ref().unwrap());
        assert_eq!(rx.event_json(nid).unwrap().as_deref(), Some(pdu.as_str()));
    }
    assert!(rx.check().unwrap().is_clean());
}

#[test]
fn json_lines_and_envelopes_take_events_named_by_their_hash_and_a_rerun_skips_them() {
    let (room_id, pdus) = v12_room();
    // The create event arrives as an outlier in an envelope; the rest as bare PDUs, the join
    // with the create event as the state before it.
    let create_id = format!("${}", &room_id[1..]);
    let mut lines = vec![
        json!({"kind": "outlier", "event": serde_json::from_str::<Value>(&pdus[0]).unwrap()})
            .to_string(),
    ];
    let join: Value = serde_json::from_str(&pdus[1]).unwrap();
    lines.push(json!({"kind": "new", "event": join, "state_before": [create_id]}).to_string());
    lines.extend(pdus[2..].iter().cloned());
    let input = lines.join("\n");
    let store = Store::in_memory().unwrap();
    let run = || {
        ingest(
            &store,
            input.as_bytes(),
            IngestOptions::default(),
            MatrixResolver::default(),
        )
        .unwrap()
    };
    let first = run();
    assert_eq!(
        (first.events, first.bad_lines, first.outliers),
        (7, 0, 1),
        "{first:?}"
    );
    let again = run();
    assert_eq!((again.events, again.duplicates), (0, 7), "{again:?}");
    let rx = store.read().unwrap();
    let room = rx.room_nid(&room_id).unwrap().unwrap();
    // The create event stays an outlier: it arrived only as the join's state.
    assert_eq!(rx.room_events(room).unwrap().len(), 6);
    assert_eq!(rx.outliers(room).unwrap().len(), 1);
}

#[test]
fn an_event_of_a_room_whose_create_event_is_missing_names_it() {
    let (room_id, pdus) = v12_room();
    let store = Store::in_memory().unwrap();
    let got = receive(&store, &pdus[1..2]);
    let create_id = format!("${}", &room_id[1..]);
    assert_eq!(
        got[0].outcome,
        InputOutcome::MissingAuthEvents(vec![create_id.clone()])
    );
    assert_eq!(got[0].event_id, None, "its hash needs the room version");
    let options = IngestOptions {
        on_bad_line: OnBadLine::Skip,
        ..IngestOptions::default()
    };
    let report = ingest(
        &store,
        pdus[1].as_bytes(),
        options,
        MatrixResolver::default(),
    )
    .unwrap();
    let bad = &report.listed_bad_lines[0];
    assert_eq!(bad.problem, Problem::UnknownAuthEvent(create_id));
}

fn refusal(store: &Store, pdu: &str) -> Problem {
    let mut tx = store.write().unwrap();
    match RoomServer::new().receive(&mut tx, &InputEvent::new(pdu.as_bytes())) {
        Err(Error::BadEvent { problem, .. }) => problem,
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_id_that_cannot_be_derived_says_why() {
    let store = Store::in_memory().unwrap();
    let mut v1 = serde_json::from_str::<Value>(JKI_RE_CREATE).unwrap();
    v1["content"]["room_version"] = "1".into();
    let Problem::EventIdNotDerived(why) = refusal(&store, &v1.to_string()) else {
        panic!()
    };
    assert!(why.contains("carry their own ID"), "{why}");
    let mut float = serde_json::from_str::<Value>(JKI_RE_CREATE).unwrap();
    float["content"]["weight"] = 1.5.into();
    let Problem::EventIdNotDerived(why) = refusal(&store, &float.to_string()) else {
        panic!()
    };
    assert!(why.contains("canonical"), "{why}");
    let mut unknown = serde_json::from_str::<Value>(JKI_RE_CREATE).unwrap();
    unknown["content"]["room_version"] = "org.example.99".into();
    assert!(matches!(
        refusal(&store, &unknown.to_string()),
        Problem::EventIdNotDerived(_)
    ));
    // A non-create event of a room with no record and no create event among its auth events.
    let orphan = r#"{"type":"m.room.message","room_id":"!r:x","sender":"@a:x","prev_events":["$p"],"auth_events":[],"content":{},"origin_server_ts":1}"#;
    assert_eq!(refusal(&store, orphan), Problem::NoCreateEvent);
}

#[test]
fn a_hash_named_event_whose_auth_events_are_not_stored_asks_for_them() {
    // Room version 5: the room ID names no event, so the create event can only be among the
    // auth events, and those not stored are what is missing.
    let store = Store::in_memory().unwrap();
    let create_id = "$RrGxF28UrHLmoASHndYb9Jb_1SFww2ptmtur9INS438";
    let member = json!({
        "type": "m.room.member", "state_key": "@erikj:jki.re", "sender": "@erikj:jki.re",
        "room_id": "!uXDCzlYgCTHtiWCkEx:jki.re", "content": {"membership": "join"},
        "prev_events": [create_id], "auth_events": [create_id], "depth": 2,
        "origin_server_ts": 1_560_284_621_138_u64, "hashes": {"sha256": "AAAA"}, "signatures": {},
    });
    let got = receive(&store, &[member.to_string()]);
    assert_eq!(
        got[0].outcome,
        InputOutcome::MissingAuthEvents(vec![create_id.to_owned()])
    );
    assert_eq!(got[0].event_id, None, "its hash needs the room version");
    assert_eq!(store.read().unwrap().event_nid(create_id).unwrap(), None);
    // Once the create event is stored, the same event is taken under its reference hash.
    let got = receive(&store, &[JKI_RE_CREATE.to_owned(), member.to_string()]);
    assert_eq!(got[1].outcome, InputOutcome::Accepted);
    assert!(got[1].event_id.as_deref().is_some_and(|id| id.len() == 44));
}

#[test]
fn a_hash_named_event_sent_again_with_other_signatures_is_already_stored() {
    let (_, pdus) = v12_room();
    let store = Store::in_memory().unwrap();
    let first = receive(&store, &pdus);
    let mut resent: Value = serde_json::from_str(&pdus[5]).unwrap();
    resent["unsigned"] = json!({"age": 1234});
    resent["signatures"] = json!({"b.example": {"ed25519:2": "BBBB"}});
    let again = receive(&store, &[resent.to_string()]);
    assert_eq!(again[0].outcome, InputOutcome::AlreadyStored);
    assert_eq!(again[0].event_id, first[5].event_id);
    // The copy stored first is kept.
    let rx = store.read().unwrap();
    let nid = first[5].event.unwrap();
    assert_eq!(rx.event_json(nid).unwrap().unwrap(), pdus[5]);
    // Other content is another event: another reference hash.
    let mut edited: Value = serde_json::from_str(&pdus[5]).unwrap();
    edited["content"]["body"] = "edited".into();
    edited["hashes"]["sha256"] = "BBBB".into();
    drop(rx);
    let other = receive(&store, &[edited.to_string()]);
    assert_eq!(other[0].outcome, InputOutcome::Accepted);
    assert_ne!(other[0].event_id, first[5].event_id);
}

/// Every event of a version 12 room received as a [`Preparer`] prepares it (IDs derived ahead,
/// on another thread in a real server) gets the ID and outcome it gets received plainly.
#[test]
fn ids_derived_ahead_are_the_ids_received_plainly() {
    let (_, pdus) = v12_room();
    let plain = Store::in_memory().unwrap();
    let want = receive(&plain, &pdus);
    let store = Store::in_memory().unwrap();
    let mut preparer = Preparer::new(&store, true);
    let prepared: Vec<_> = pdus
        .iter()
        .map(|pdu| preparer.prepare(&InputEvent::new(pdu.as_bytes())))
        .collect();
    let mut server = RoomServer::new();
    let mut tx = store.write().unwrap();
    let mut batch = server.batch(&mut tx);
    for (event, want) in prepared.into_iter().zip(&want) {
        let got = batch.receive_prepared(event).unwrap();
        assert_eq!(
            (&got.event_id, &got.outcome),
            (&want.event_id, &want.outcome)
        );
    }
}

/// A preparer that believes a room has another version than the store finds (a second create
/// event of the same room ID told it so) derives IDs the writer does not take: the writer
/// derives them again under the version it settles, as when nothing was prepared.
#[test]
fn an_id_derived_ahead_under_another_version_is_derived_again() {
    let event = |ty: &str, key: &str, content: Value, auth: Vec<String>| {
        json!({
            "type": ty, "state_key": key, "room_id": "!r:x", "sender": "@a:x",
            "content": content, "prev_events": [], "auth_events": auth, "depth": 1,
            // Kept by the redaction of version 10, dropped by that of version 11.
            "origin": "x", "origin_server_ts": 1,
        })
        .to_string()
    };
    let create = |version: &str| {
        let content = json!({"creator": "@a:x", "room_version": version});
        event("m.room.create", "", content, vec![])
    };
    let (create_10, create_11) = (create("10"), create("11"));
    let create_id = derive_event_id(create_10.as_bytes(), "10").unwrap();
    let join = |n: u64| {
        let content = json!({"membership": "join", "n": n});
        event("m.room.member", "@a:x", content, vec![create_id.clone()])
    };
    assert_ne!(
        derive_event_id(join(2).as_bytes(), "10").unwrap(),
        derive_event_id(join(2).as_bytes(), "11").unwrap(),
        "the two versions must name the event differently for this test to tell"
    );
    let store = Store::in_memory().unwrap();
    let mut preparer = Preparer::new(&store, true);
    let mut server = RoomServer::new();
    let mut received = |preparer: &mut Preparer, pdu: &str| {
        let prepared = preparer.prepare(&InputEvent::outlier(pdu.as_bytes()));
        let mut tx = store.write().unwrap();
        let got = server.batch(&mut tx).receive_prepared(prepared);
        tx.commit().unwrap();
        got
    };
    assert_eq!(
        received(&mut preparer, &create_10).unwrap().event_id,
        Some(create_id.clone())
    );
    let first = join(1);
    let want = derive_event_id(first.as_bytes(), "10").unwrap();
    assert_eq!(
        received(&mut preparer, &first).unwrap().event_id,
        Some(want)
    );
    // Whatever the store makes of the second create event, the preparer now takes the room
    // for a version 11 room.
    let _ = received(&mut preparer, &create_11);
    let second = join(2);
    let want = derive_event_id(second.as_bytes(), "10").unwrap();
    assert_eq!(
        received(&mut preparer, &second).unwrap().event_id,
        Some(want)
    );
}

/// JSON lines of events that declare no ID, in batches large enough to be prepared on a second
/// thread (IDs derived there), are stored under the IDs a plain receive gives them.
#[test]
fn json_lines_prepared_ahead_get_the_ids_received_plainly() {
    let (_, pdus) = v12_room_with(300);
    let plain = Store::in_memory().unwrap();
    let want = receive(&plain, &pdus);
    let store = Store::in_memory().unwrap();
    let text: String = pdus.iter().map(|p| format!("{p}\n")).collect();
    let options = IngestOptions {
        batch_size: 128,
        ..IngestOptions::default()
    };
    let report = ingest(&store, text.as_bytes(), options, MatrixResolver::default()).unwrap();
    assert_eq!(report.accepted(), pdus.len() as u64);
    let rx = store.read().unwrap();
    for got in &want {
        let id = got.event_id.as_deref().unwrap();
        assert_eq!(rx.event_nid(id).unwrap(), got.event, "{id}");
    }
}
