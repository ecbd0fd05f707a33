//! Federation input in any order: events of a small fixed room, each sent as an envelope line of
//! any kind (outlier, new, backfill), with no state, its true state, or any set of event IDs as
//! its state, in any order and any number of times. Ingest with bad lines skipped must not fail,
//! every line must be an event, a duplicate or a bad line, the store must pass `check`, and
//! every stored event must read back: its state, or for an outlier, the outlier error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomstate::ingest::{IngestOptions, Ingester, MatrixResolver, OnBadLine};
use roomstate::{Error, Store, StoreRead};
use std::sync::OnceLock;

/// (event ID, PDU) of the room's history, in order.
fn history() -> &'static [(String, String)] {
    static HISTORY: OnceLock<Vec<(String, String)>> = OnceLock::new();
    HISTORY.get_or_init(|| {
        // (type, state key, sender, prev events, auth events, content)
        let events: [(&str, Option<&str>, &str, &[usize], &[usize], &str); 10] = [
            ("m.room.create", Some(""), "@a:x", &[], &[], r#"{"creator":"@a:x","room_version":"10"}"#),
            ("m.room.member", Some("@a:x"), "@a:x", &[0], &[0], r#"{"membership":"join"}"#),
            ("m.room.power_levels", Some(""), "@a:x", &[1], &[0, 1], r#"{"users":{"@a:x":100}}"#),
            ("m.room.join_rules", Some(""), "@a:x", &[2], &[0, 1, 2], r#"{"join_rule":"public"}"#),
            ("m.room.member", Some("@b:x"), "@b:x", &[3], &[0, 2, 3], r#"{"membership":"join"}"#),
            ("m.room.message", None, "@b:x", &[4], &[0, 2, 4], r#"{"body":"hi"}"#),
            ("m.room.member", Some("@c:y"), "@c:y", &[5], &[0, 2, 3], r#"{"membership":"join"}"#),
            ("m.room.name", Some(""), "@a:x", &[5], &[0, 1, 2], r#"{"name":"fork"}"#),
            ("m.room.message", None, "@c:y", &[6, 7], &[0, 2, 6], r#"{"body":"merged"}"#),
            ("m.room.member", Some("@b:x"), "@b:x", &[8], &[0, 2, 4], r#"{"membership":"leave"}"#),
        ];
        let id = |i: usize| format!("$e{i}");
        let ids = |list: &[usize]| list.iter().map(|&i| format!("\"{}\"", id(i))).collect::<Vec<_>>().join(",");
        events
            .iter()
            .enumerate()
            .map(|(i, (ty, key, sender, prevs, auth, content))| {
                let key = key.map(|k| format!(",\"state_key\":\"{k}\"")).unwrap_or_default();
                let pdu = format!(
                    r#"{{"event_id":"{}","room_id":"!r:x","type":"{ty}"{key},"sender":"{sender}","prev_events":[{}],"auth_events":[{}],"origin_server_ts":{i},"depth":{i},"content":{content}}}"#,
                    id(i),
                    ids(prevs),
                    ids(auth)
                );
                (id(i), pdu)
            })
            .collect()
    })
}

/// The true state before each event, as event IDs.
fn true_states() -> &'static [Vec<String>] {
    static STATES: OnceLock<Vec<Vec<String>>> = OnceLock::new();
    STATES.get_or_init(|| {
        let store = Store::in_memory().expect("an in-memory store opens");
        let text: String = history().iter().map(|(_, pdu)| format!("{pdu}\n")).collect();
        let options = IngestOptions::default();
        let report = roomstate::ingest::ingest(&store, text.as_bytes(), options, MatrixResolver::default())
            .expect("the fixed history ingests");
        assert_eq!(report.accepted(), history().len() as u64);
        let rx = store.read().expect("read");
        history()
            .iter()
            .map(|(id, _)| {
                let nid = rx.event_nid(id).expect("lookup").expect("stored");
                let state = rx.state_before(nid).expect("a state");
                state.iter().map(|e| rx.event_id(e.event).expect("an ID")).collect()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let (batch, ops) = match data.split_first() {
        Some((b, rest)) => ([1, 2, 3, 64][usize::from(b % 4)], rest),
        None => (1, data),
    };
    // Nothing here outlives the run, so commits need not be durable: a sixth more runs a second.
    let store = roomstate::StoreBuilder::default()
        .two_phase_commit(false)
        .in_memory()
        .expect("an in-memory store opens");
    let options = IngestOptions {
        durable_batches: false,
        batch_size: batch,
        on_bad_line: OnBadLine::Skip,
        max_listed_bad_lines: usize::MAX,
        ..IngestOptions::default()
    };
    let mut ingester = Ingester::new(&store, options, MatrixResolver::default());
    for op in ops.chunks_exact(3) {
        let index = usize::from(op[0]) % history().len();
        let kind = ["outlier", "new", "backfill"][usize::from(op[1] % 3)];
        let state = match (op[1] / 3) % 3 {
            0 => None,
            1 => Some(true_states()[index].clone()),
            // Any set of the room's event IDs (and one it never had).
            _ => Some(
                (0..=history().len())
                    .filter(|i| op[2] & (1 << (i % 8)) != 0 && (i / 8) == usize::from(op[1] & 1))
                    .map(|i| format!("$e{i}"))
                    .collect::<Vec<_>>(),
            ),
        };
        let state = state
            .map(|ids| format!(",\"state_before\":{}", serde_state(&ids)))
            .unwrap_or_default();
        let line = format!("{{\"kind\":\"{kind}\",\"event\":{}{state}}}", history()[index].1);
        ingester.push_line(line.as_bytes()).expect("bad lines are skipped");
    }
    let report = ingester.finish().expect("bad lines are skipped");
    assert_eq!(report.events + report.duplicates + report.bad_lines, report.lines);
    let rx = store.read().expect("read");
    let check = rx.check().expect("check runs");
    assert!(check.is_clean(), "{:?}", check.problems);
    for (id, _) in history() {
        let Some(nid) = rx.event_nid(id).expect("lookup") else {
            continue;
        };
        if rx.event(nid).expect("a record").is_none() {
            continue;
        }
        match rx.state_before(nid) {
            Ok(_) => assert!(!rx.is_outlier(nid).expect("outlier lookup")),
            Err(Error::Outlier(_)) => assert!(rx.is_outlier(nid).expect("outlier lookup")),
            Err(e) => panic!("{id}: {e}"),
        }
    }
});

fn serde_state(ids: &[String]) -> String {
    let quoted: Vec<String> = ids.iter().map(|id| format!("\"{id}\"")).collect();
    format!("[{}]", quoted.join(","))
}
