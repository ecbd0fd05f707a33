//! Authorization on receipt (the spec's steps 4 to 6), rule by rule, in room versions 10 and 12:
//! histories written as JSON lines, ingested, and every event's outcome compared with what the
//! authorization rules say it must be. The room's current state must then equal the state the
//! accepted events alone make.

use roomstate::ingest::{IngestOptions, MatrixResolver, OnBadLine, ingest};
use roomstate::{AuthStep, EventOutcome, Store, StoreRead};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const ALICE: &str = "@alice:example.org";
const BOB: &str = "@bob:example.org";
const CAROL: &str = "@carol:example.org";
const DAVE: &str = "@dave:example.org";
const EVE: &str = "@eve:example.org";
const FRANK: &str = "@frank:example.org";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Accepted,
    Rejected(AuthStep),
    SoftFailed,
}
use Want::{Accepted, Rejected, SoftFailed};

type State = BTreeMap<(String, String), String>;

/// A point in the room's history to build on: its extremity and its state.
#[derive(Clone)]
struct Mark {
    tip: String,
    state: State,
}

/// A room written event by event. Each event's auth events are chosen from the state it builds
/// on, as the spec's selection algorithm does, unless the test gives them.
struct Room {
    version: &'static str,
    room_id: String,
    create_id: String,
    at: Mark,
    lines: Vec<String>,
    wants: Vec<(String, Want, String)>,
    counter: u64,
}

impl Room {
    /// Alice creates the room and joins; the power levels give Carol 50 (and Alice, in version
    /// 10, 100: in version 12 the creator's power is implied and may not be listed); the room is
    /// public; Bob, Carol and Dave join.
    fn new(version: &'static str, tag: &str) -> Room {
        let create_id = format!("${tag}-create");
        let room_id = if version == "12" {
            format!("!{tag}-create")
        } else {
            format!("!{tag}:example.org")
        };
        let mut room = Room {
            version,
            room_id,
            create_id,
            at: Mark {
                tip: String::new(),
                state: State::new(),
            },
            lines: Vec::new(),
            wants: Vec::new(),
            counter: 0,
        };
        let mut create = json!({"creator": ALICE, "room_version": version});
        if version == "12" {
            create.as_object_mut().map(|c| c.remove("creator"));
        }
        room.send(
            "create",
            room.state_event(ALICE, "m.room.create", "", create),
            Accepted,
        );
        room.join(ALICE, Accepted);
        room.send("power levels", room.power_levels(&[(CAROL, 50)]), Accepted);
        let public = room.state_event(
            ALICE,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
        );
        room.send("join rules", public, Accepted);
        for user in [BOB, CAROL, DAVE] {
            room.join(user, Accepted);
        }
        room
    }

    fn v12(&self) -> bool {
        self.version == "12"
    }

    fn power_levels(&self, users: &[(&str, i64)]) -> Value {
        let mut map = serde_json::Map::new();
        if !self.v12() {
            map.insert(ALICE.to_owned(), json!(100));
        }
        for (user, level) in users {
            map.insert((*user).to_owned(), json!(level));
        }
        let content = json!({
            "users": map, "users_default": 0, "events_default": 0, "state_default": 50,
            "ban": 50, "kick": 50, "invite": 0, "redact": 50,
            "events": {"m.room.power_levels": 50}
        });
        self.state_event(ALICE, "m.room.power_levels", "", content)
    }

    fn state_event(&self, sender: &str, ty: &str, key: &str, content: Value) -> Value {
        json!({"type": ty, "state_key": key, "sender": sender, "content": content})
    }

    fn message(&self, sender: &str) -> Value {
        json!({"type": "m.room.message", "sender": sender, "content": {"msgtype": "m.text", "body": "hi"}})
    }

    fn member(&self, sender: &str, target: &str, membership: &str) -> Value {
        self.state_event(
            sender,
            "m.room.member",
            target,
            json!({"membership": membership}),
        )
    }

    fn join(&mut self, user: &str, want: Want) -> String {
        let ev = self.member(user, user, "join");
        self.send(&format!("{user} joins"), ev, want)
    }

    fn mark(&self) -> Mark {
        self.at.clone()
    }

    /// The auth events the selection algorithm names for `ev` in `state`.
    fn auth_for(&self, ev: &Value, state: &State) -> Vec<String> {
        let ty = ev["type"].as_str().unwrap_or_default();
        let sender = ev["sender"].as_str().unwrap_or_default();
        if ty == "m.room.create" {
            return Vec::new();
        }
        let mut keys = vec![("m.room.power_levels", "".to_owned())];
        keys.push(("m.room.member", sender.to_owned()));
        if !self.v12() {
            keys.push(("m.room.create", "".to_owned()));
        }
        if ty == "m.room.member" {
            let target = ev["state_key"].as_str().unwrap_or_default().to_owned();
            keys.push(("m.room.member", target));
            let content = &ev["content"];
            let membership = content["membership"].as_str().unwrap_or_default();
            if ["join", "invite", "knock"].contains(&membership) {
                keys.push(("m.room.join_rules", "".to_owned()));
            }
            if let Some(token) = content["third_party_invite"]["signed"]["token"].as_str() {
                keys.push(("m.room.third_party_invite", token.to_owned()));
            }
            if let Some(via) = content["join_authorised_via_users_server"].as_str() {
                keys.push(("m.room.member", via.to_owned()));
            }
        }
        let mut ids: Vec<String> = Vec::new();
        for (t, k) in keys {
            if let Some(id) = state.get(&(t.to_owned(), k))
                && !ids.contains(id)
            {
                ids.push(id.clone());
            }
        }
        ids
    }

    /// Sends `ev` on the room's main line.
    fn send(&mut self, label: &str, ev: Value, want: Want) -> String {
        let at = self.mark();
        self.send_at(&at, label, ev, want, None)
    }

    /// Sends `ev` built on `at`, with the given auth events or those the selection names.
    /// An accepted event on the main line moves it.
    fn send_at(
        &mut self,
        at: &Mark,
        label: &str,
        mut ev: Value,
        want: Want,
        auth: Option<Vec<String>>,
    ) -> String {
        self.counter += 1;
        let is_create = ev["type"] == "m.room.create";
        let id = if is_create {
            self.create_id.clone()
        } else {
            format!(
                "${}-{}",
                self.room_id.trim_start_matches('!').replace(':', "_"),
                self.counter
            )
        };
        let auth = auth.unwrap_or_else(|| self.auth_for(&ev, &at.state));
        let fields = ev.as_object_mut().expect("events are objects");
        fields.insert("event_id".into(), json!(id));
        if !(is_create && self.v12()) {
            fields.insert("room_id".into(), json!(self.room_id));
        }
        let prevs: Vec<&str> = if at.tip.is_empty() {
            vec![]
        } else {
            vec![&at.tip]
        };
        fields.insert("prev_events".into(), json!(prevs));
        fields.insert("auth_events".into(), json!(auth));
        fields.insert("origin_server_ts".into(), json!(1_000 + self.counter));
        fields.insert("depth".into(), json!(self.counter));
        self.lines.push(ev.to_string());
        self.wants.push((id.clone(), want, label.to_owned()));
        if want == Accepted && at.tip == self.at.tip {
            if let Some(key) = ev["state_key"].as_str() {
                let ty = ev["type"].as_str().unwrap_or_default().to_owned();
                self.at.state.insert((ty, key.to_owned()), id.clone());
            }
            self.at.tip = id.clone();
        }
        id
    }

    /// Every event's outcome is the one wanted; a rejected one changes no state.
    fn assert_outcomes(&self, rx: &roomstate::ReadTxn) {
        for (id, want, label) in &self.wants {
            let nid = rx.event_nid(id).unwrap().expect("stored");
            let outcome = rx.event_outcome(nid).unwrap().expect("stored");
            let got = match &outcome {
                EventOutcome::Accepted => Accepted,
                EventOutcome::Rejected(r) => Rejected(r.step),
                EventOutcome::SoftFailed(_) => SoftFailed,
                other => panic!("unexpected outcome {other:?}"),
            };
            assert_eq!(
                got, *want,
                "room version {}: {label} ({id}): {outcome:?}",
                self.version
            );
            let record = rx.expect_event(nid).unwrap();
            if matches!(want, Rejected(_)) {
                // A rejected event changes no state.
                assert_eq!(
                    rx.state_after(nid).unwrap(),
                    rx.state_before(nid).unwrap(),
                    "{label}"
                );
                assert!(record.rejected, "{label}");
            }
        }
    }

    /// Ingests the room and checks every outcome and the final state.
    fn check(&self) {
        let store = Store::in_memory().unwrap();
        let options = IngestOptions {
            batch_size: 7,
            on_bad_line: OnBadLine::Stop,
            ..IngestOptions::default()
        };
        let text = self.lines.join("\n");
        let report = ingest(&store, text.as_bytes(), options, MatrixResolver::default())
            .unwrap_or_else(|e| panic!("room version {}: {e}", self.version));
        let rx = store.read().unwrap();
        self.assert_outcomes(&rx);
        let wanted =
            |w: fn(&Want) -> bool| self.wants.iter().filter(|(_, x, _)| w(x)).count() as u64;
        assert_eq!(report.rejected, wanted(|w| matches!(w, Rejected(_))));
        assert_eq!(report.soft_failed, wanted(|w| *w == SoftFailed));
        // The current state is what the accepted main line made, and its one extremity is the
        // main line's tip.
        let room = rx.room_nid(&self.room_id).unwrap().unwrap();
        let record = rx.room(room).unwrap().unwrap();
        let mut current = State::new();
        for e in rx.flatten(record.current_state).unwrap().iter() {
            let key = (
                rx.event_type(e.key.ty).unwrap(),
                rx.state_key(e.key.key).unwrap(),
            );
            current.insert(key, rx.event_id(e.event).unwrap());
        }
        assert_eq!(current, self.at.state, "room version {}", self.version);
        let tips: Vec<String> = record
            .latest_events
            .iter()
            .map(|e| rx.event_id(*e).unwrap())
            .collect();
        assert_eq!(
            tips,
            vec![self.at.tip.clone()],
            "room version {}",
            self.version
        );
        assert!(rx.check().unwrap().is_clean());
    }
}

fn each_version(test: impl Fn(&'static str)) {
    for version in ["10", "12"] {
        test(version);
    }
}

#[test]
fn create_events() {
    each_version(|v| {
        let room = Room::new(v, "good");
        room.check();
        // A second room in the same history whose create event breaks its rule.
        let mut bad = Room {
            lines: Vec::new(),
            wants: Vec::new(),
            ..Room::new(v, "bad")
        };
        bad.at = Mark {
            tip: String::new(),
            state: State::new(),
        };
        let content = if v == "12" {
            json!({"room_version": v, "additional_creators": ["not a user ID"]})
        } else {
            json!({"room_version": v, "creator": ALICE})
        };
        let create = bad.state_event(ALICE, "m.room.create", "", content);
        if v != "12" {
            // Versions before 12 want the room ID on the creator's server.
            bad.room_id = "!bad:elsewhere.org".to_owned();
        }
        bad.send(
            "create breaking its rule",
            create,
            Rejected(AuthStep::AuthEvents),
        );
        let store = Store::in_memory().unwrap();
        let report = ingest(
            &store,
            bad.lines.join("\n").as_bytes(),
            IngestOptions::default(),
            MatrixResolver::default(),
        )
        .unwrap();
        assert_eq!(report.rejected, 1, "room version {v}");
    });
}

#[test]
fn an_unknown_room_version_is_rejected_at_its_create_event() {
    let mut room = Room {
        lines: Vec::new(),
        wants: Vec::new(),
        ..Room::new("10", "odd")
    };
    let create = room.state_event(
        ALICE,
        "m.room.create",
        "",
        json!({"room_version": "999", "creator": ALICE}),
    );
    room.at = Mark {
        tip: String::new(),
        state: State::new(),
    };
    room.create_id = "$odd-999".to_owned();
    room.send(
        "create of version 999",
        create,
        Rejected(AuthStep::AuthEvents),
    );
    let store = Store::in_memory().unwrap();
    let report = ingest(
        &store,
        room.lines.join("\n").as_bytes(),
        IngestOptions::default(),
        MatrixResolver::default(),
    )
    .unwrap();
    assert_eq!(report.rejected, 1);
    let rx = store.read().unwrap();
    let nid = rx.event_nid("$odd-999").unwrap().unwrap();
    let outcome = rx.event_outcome(nid).unwrap().unwrap();
    assert!(
        outcome.rejection().unwrap().rule.contains("999"),
        "{outcome:?}"
    );
}

#[test]
fn joins_and_invites() {
    each_version(|v| {
        let mut room = Room::new(v, "join");
        room.join(EVE, Accepted);
        let invite_only = room.state_event(
            ALICE,
            "m.room.join_rules",
            "",
            json!({"join_rule": "invite"}),
        );
        room.send("join rules: invite", invite_only, Accepted);
        room.join(FRANK, Rejected(AuthStep::AuthEvents));
        let invite = room.member(BOB, FRANK, "invite");
        room.send("Bob invites Frank", invite, Accepted);
        room.join(FRANK, Accepted);
        // Someone who is not in the room cannot invite.
        let stranger = room.member("@gina:example.org", "@hank:example.org", "invite");
        room.send(
            "a stranger invites",
            stranger,
            Rejected(AuthStep::AuthEvents),
        );
        room.check();
    });
}

#[test]
fn leaves_kicks_and_bans() {
    each_version(|v| {
        let mut room = Room::new(v, "ban");
        let leave = room.member(BOB, BOB, "leave");
        room.send("Bob leaves", leave, Accepted);
        let kick = room.member(DAVE, CAROL, "leave");
        room.send(
            "Dave (0) kicks Carol (50)",
            kick,
            Rejected(AuthStep::AuthEvents),
        );
        let ban = room.member(CAROL, DAVE, "ban");
        room.send("Carol (50) bans Dave", ban, Accepted);
        room.join(DAVE, Rejected(AuthStep::AuthEvents));
        room.join(EVE, Accepted);
        let upward = room.member(EVE, CAROL, "ban");
        room.send(
            "Eve (0) bans Carol (50)",
            upward,
            Rejected(AuthStep::AuthEvents),
        );
        room.check();
    });
}

#[test]
fn knocks() {
    each_version(|v| {
        let mut room = Room::new(v, "knock");
        let knock = room.member(EVE, EVE, "knock");
        room.send(
            "Eve knocks on a public room",
            knock,
            Rejected(AuthStep::AuthEvents),
        );
        let rules = room.state_event(
            ALICE,
            "m.room.join_rules",
            "",
            json!({"join_rule": "knock"}),
        );
        room.send("join rules: knock", rules, Accepted);
        let knock = room.member(EVE, EVE, "knock");
        room.send("Eve knocks", knock, Accepted);
        room.check();
    });
}

#[test]
fn restricted_joins() {
    each_version(|v| {
        let mut room = Room::new(v, "restricted");
        let allow = json!({"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!space:example.org"}]});
        let rules = room.state_event(ALICE, "m.room.join_rules", "", allow);
        room.send("join rules: restricted", rules, Accepted);
        room.join(EVE, Rejected(AuthStep::AuthEvents));
        let vouched = room.state_event(
            EVE,
            "m.room.member",
            EVE,
            json!({"membership": "join", "join_authorised_via_users_server": BOB}),
        );
        room.send("Eve joins vouched for by Bob", vouched, Accepted);
        let stranger_vouch = room.state_event(
            FRANK,
            "m.room.member",
            FRANK,
            json!({"membership": "join", "join_authorised_via_users_server": "@gina:example.org"}),
        );
        room.send(
            "Frank joins vouched for by a non-member",
            stranger_vouch,
            Rejected(AuthStep::AuthEvents),
        );
        room.check();
    });
}

#[test]
fn third_party_invites() {
    each_version(|v| {
        let mut room = Room::new(v, "tpi");
        let content = json!({"display_name": "f...@example.org", "key_validity_url": "https://example.org/isvalid", "public_key": "AAAA"});
        let by_alice = room.state_event(
            ALICE,
            "m.room.third_party_invite",
            "token1",
            content.clone(),
        );
        room.send("Alice sends a third-party invite", by_alice, Accepted);

        let unknown = room.state_event(
            BOB,
            "m.room.member",
            FRANK,
            json!({"membership": "invite", "third_party_invite": {"display_name": "f", "signed": {"mxid": FRANK, "token": "nope", "signatures": {}}}}),
        );
        room.send(
            "an invite for a token nobody issued",
            unknown,
            Rejected(AuthStep::AuthEvents),
        );
        room.check();
    });
}

#[test]
fn a_signed_third_party_invite_is_accepted() {
    use ruma_common::CanonicalJsonValue;
    use ruma_common::serde::{Base64, base64::Standard};
    use ruma_signatures::{Ed25519KeyPair, sign_json};
    let der = Ed25519KeyPair::generate();
    let key = Ed25519KeyPair::from_der(&der, "0".to_owned()).unwrap();
    let public_key = Base64::<Standard>::new(key.public_key().to_vec()).encode();
    let signed = match CanonicalJsonValue::try_from(json!({"mxid": FRANK, "token": "tok"})) {
        Ok(CanonicalJsonValue::Object(mut object)) => {
            sign_json("identity.example.org", &key, &mut object).unwrap();
            serde_json::to_value(object).unwrap()
        }
        other => panic!("{other:?}"),
    };
    each_version(|v| {
        let mut room = Room::new(v, "signed");
        let invite = json!({"display_name": "f", "key_validity_url": "https://identity.example.org/isvalid", "public_key": public_key});
        let by_bob = room.state_event(BOB, "m.room.third_party_invite", "tok", invite);
        room.send("Bob sends a third-party invite", by_bob, Accepted);
        let member = json!({"membership": "invite", "third_party_invite": {"display_name": "f", "signed": signed.clone()}});
        let forged = {
            let mut m = member.clone();
            m["third_party_invite"]["signed"]["mxid"] = json!(EVE);
            m
        };
        let wrong = room.state_event(BOB, "m.room.member", EVE, forged);
        room.send(
            "an invite whose signature does not cover it",
            wrong,
            Rejected(AuthStep::AuthEvents),
        );
        let invite = room.state_event(BOB, "m.room.member", FRANK, member);
        room.send("Bob invites Frank through it", invite, Accepted);
        room.join(FRANK, Accepted);
        room.check();
    });
}

#[test]
fn power_levels() {
    each_version(|v| {
        let mut room = Room::new(v, "pl");
        let raise = room.power_levels(&[(CAROL, 50), (BOB, 50)]);
        room.send("Alice raises Bob to 50", raise, Accepted);
        let mut self_raise = room.power_levels(&[(CAROL, 100), (BOB, 50)]);
        self_raise["sender"] = json!(CAROL);
        room.send(
            "Carol raises herself to 100",
            self_raise,
            Rejected(AuthStep::AuthEvents),
        );
        let mut by_dave = room.power_levels(&[(CAROL, 50), (BOB, 50), (DAVE, 50)]);
        by_dave["sender"] = json!(DAVE);
        room.send(
            "Dave (0) sends power levels",
            by_dave,
            Rejected(AuthStep::AuthEvents),
        );
        let lower = room.power_levels(&[(BOB, 50)]);
        room.send("Alice lowers Carol to 0", lower, Accepted);
        let mut lower_equal = room.power_levels(&[]);
        lower_equal["sender"] = json!(BOB);
        // Bob (50) may not lower Bob's peer... only himself: here he removes his own entry.
        room.send("Bob lowers himself", lower_equal, Accepted);
        if v == "12" {
            // The creator's power is implied: listing her is refused, and she acts unlisted.
            let mut listing = room.power_levels(&[(BOB, 50)]);
            listing["content"]["users"][ALICE] = json!(100);
            room.send(
                "power levels listing the creator",
                listing,
                Rejected(AuthStep::AuthEvents),
            );
            let by_creator = room.power_levels(&[(CAROL, 50)]);
            room.send(
                "the unlisted creator sends power levels",
                by_creator,
                Accepted,
            );
        } else {
            let raise = room.power_levels(&[(CAROL, 50)]);
            room.send("Alice raises Carol to 50", raise, Accepted);
            let mut demote_admin = room.power_levels(&[(CAROL, 50)]);
            demote_admin["content"]["users"][ALICE] = json!(0);
            demote_admin["sender"] = json!(CAROL);
            room.send(
                "Carol (50) lowers Alice (100)",
                demote_admin,
                Rejected(AuthStep::AuthEvents),
            );
        }
        room.check();
    });
}

#[test]
fn redactions_and_event_levels() {
    each_version(|v| {
        let mut room = Room::new(v, "levels");
        let message = room.message(BOB);
        let target = room.send("Bob's message at events_default 0", message, Accepted);
        let mut redaction =
            json!({"type": "m.room.redaction", "sender": BOB, "content": {"redacts": target}});
        if v == "10" {
            redaction["redacts"] = json!(target);
        }
        room.send("Bob redacts his message", redaction.clone(), Accepted);
        redaction["sender"] = json!(EVE);
        room.send(
            "a non-member redacts",
            redaction,
            Rejected(AuthStep::AuthEvents),
        );
        let topic = room.state_event(BOB, "m.room.topic", "", json!({"topic": "bob"}));
        room.send(
            "Bob (0) sets the topic at state_default 50",
            topic,
            Rejected(AuthStep::AuthEvents),
        );
        let topic = room.state_event(CAROL, "m.room.topic", "", json!({"topic": "carol"}));
        room.send("Carol (50) sets the topic", topic, Accepted);
        let mut strict = room.power_levels(&[(CAROL, 50)]);
        strict["content"]["events_default"] = json!(50);
        room.send("events_default raised to 50", strict, Accepted);
        let message = room.message(BOB);
        room.send(
            "Bob (0) messages at events_default 50",
            message,
            Rejected(AuthStep::AuthEvents),
        );
        room.check();
    });
}

#[test]
fn the_three_steps_apart() {
    each_version(|v| {
        let mut room = Room::new(v, "steps");
        // Step 4: the auth events lack the sender's membership.
        let message = room.message(BOB);
        let without_member: Vec<String> = room
            .auth_for(&message, &room.at.state)
            .into_iter()
            .filter(|id| !id.ends_with("-5"))
            .collect();
        let at = room.mark();
        room.send_at(
            &at,
            "auth events without Bob's join",
            message,
            Rejected(AuthStep::AuthEvents),
            Some(without_member),
        );
        // An auth event the selection does not name.
        let message = room.message(BOB);
        let mut extra = room.auth_for(&message, &room.at.state);
        extra.push(room.at.state[&("m.room.join_rules".to_owned(), String::new())].clone());
        let at = room.mark();
        room.send_at(
            &at,
            "an unselected auth event",
            message,
            Rejected(AuthStep::AuthEvents),
            Some(extra),
        );
        // Step 5: auth events from before Dave left; the state before says he has.
        let before_leave = room.mark();
        let leave = room.member(DAVE, DAVE, "leave");
        room.send("Dave leaves", leave, Accepted);
        let message = room.message(DAVE);
        let stale = room.auth_for(&message, &before_leave.state);
        let at = room.mark();
        room.send_at(
            &at,
            "Dave's message after leaving",
            message,
            Rejected(AuthStep::StateBefore),
            Some(stale),
        );
        // Step 6: a fork from before Bob's ban, sent by Bob: soft-failed.
        let before_ban = room.mark();
        let ban = room.member(CAROL, BOB, "ban");
        room.send("Carol bans Bob", ban, Accepted);
        let message = room.message(BOB);
        room.send_at(
            &before_ban,
            "Bob's fork from before his ban",
            message,
            SoftFailed,
            None,
        );
        // An auth event that was itself rejected.
        room.join(FRANK, Accepted);
        let rules = room.state_event(
            ALICE,
            "m.room.join_rules",
            "",
            json!({"join_rule": "invite"}),
        );
        room.send("join rules: invite", rules, Accepted);
        let refused = room.join(EVE, Rejected(AuthStep::AuthEvents));
        let message = room.message(EVE);
        let mut auth = room.auth_for(&message, &room.at.state);
        auth.push(refused.clone());
        let at = room.mark();
        room.send_at(
            &at,
            "Eve's message naming her rejected join",
            message,
            Rejected(AuthStep::AuthEvents),
            Some(auth),
        );
        // A prev event that was rejected: judged from the state before it.
        let after_refused = Mark {
            tip: refused,
            state: room.at.state.clone(),
        };
        let message = room.message(CAROL);
        room.send_at(
            &after_refused,
            "Carol's message after a rejected event",
            message,
            Accepted,
            None,
        );
        room.check_with_fork();
    });
}

impl Room {
    /// Like `check`, for a history that ends in a fork off the main line (built on a rejected
    /// event): every outcome, and a clean store.
    fn check_with_fork(&self) {
        let store = Store::in_memory().unwrap();
        let text = self.lines.join("\n");
        ingest(
            &store,
            text.as_bytes(),
            IngestOptions::default(),
            MatrixResolver::default(),
        )
        .unwrap();
        let rx = store.read().unwrap();
        self.assert_outcomes(&rx);
        assert!(rx.check().unwrap().is_clean());
    }
}

#[test]
fn version_12_implies_the_create_event() {
    let mut room = Room::new("12", "implied");
    let message = room.message(BOB);
    let mut auth = room.auth_for(&message, &room.at.state);
    auth.push(room.create_id.clone());
    let at = room.mark();
    room.send_at(
        &at,
        "a version 12 message listing the create event",
        message,
        Rejected(AuthStep::AuthEvents),
        Some(auth),
    );
    room.check();
}

mod generated {
    use super::*;
    use roomstate::workload::{Expected, GenConfig, GenEvent, Generator, Workload};

    fn config(workload: Workload) -> GenConfig {
        GenConfig {
            members: if workload == Workload::Many { 30 } else { 300 },
            state_events: if workload == Workload::Many { 20 } else { 900 },
            messages_per_state: 2,
            ..GenConfig::new(workload)
        }
    }

    fn ingest_events(events: &[GenEvent]) -> (Store, roomstate::ingest::IngestReport) {
        let store = Store::in_memory().unwrap();
        let text: String = events.iter().map(|e| e.to_json_line() + "\n").collect();
        let options = IngestOptions {
            batch_size: 500,
            ..IngestOptions::default()
        };
        let report = ingest(&store, text.as_bytes(), options, MatrixResolver::default()).unwrap();
        (store, report)
    }

    /// The state before each accepted event, by event ID, and each room's current state.
    type States = (Vec<(String, Vec<String>)>, Vec<Vec<String>>);

    /// Every state before an event, by event ID, and every room's current state, as strings.
    fn states(store: &Store, events: &[GenEvent]) -> States {
        let rx = store.read().unwrap();
        let named = |state: roomstate::StateMap| -> Vec<String> {
            state
                .iter()
                .map(|e| rx.event_id(e.event).unwrap())
                .collect()
        };
        let before = events
            .iter()
            .filter(|e| e.expected == Expected::Accepted)
            .map(|e| {
                let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
                (e.event_id.clone(), named(rx.state_before(nid).unwrap()))
            })
            .collect();
        let mut rooms: Vec<&str> = events.iter().map(|e| e.room_id.as_str()).collect();
        rooms.dedup();
        let current = rooms
            .iter()
            .map(|r| {
                let room = rx.room(rx.room_nid(r).unwrap().unwrap()).unwrap().unwrap();
                named(rx.flatten(room.current_state).unwrap())
            })
            .collect();
        (before, current)
    }

    #[test]
    fn generated_histories_are_accepted_whole() {
        for workload in [Workload::Hq, Workload::Many, Workload::Forky] {
            let events: Vec<GenEvent> = Generator::new(config(workload)).collect();
            let (_, report) = ingest_events(&events);
            assert_eq!(report.events, events.len() as u64, "{workload:?}");
            assert_eq!(
                (report.rejected, report.soft_failed),
                (0, 0),
                "{workload:?}"
            );
        }
    }

    #[test]
    fn injected_events_fare_as_the_generator_says_and_change_no_state() {
        for (workload, percent) in [(Workload::Hq, 4), (Workload::Many, 5)] {
            let plain: Vec<GenEvent> = Generator::new(config(workload)).collect();
            let mixed: Vec<GenEvent> = Generator::new(config(workload))
                .with_unauthorized(percent)
                .unwrap()
                .collect();
            let injected: Vec<&GenEvent> = mixed
                .iter()
                .filter(|e| e.expected != Expected::Accepted)
                .collect();
            // The history without the injected events is the plain one, byte for byte.
            let kept: Vec<&GenEvent> = mixed
                .iter()
                .filter(|e| e.expected == Expected::Accepted)
                .collect();
            assert_eq!(kept, plain.iter().collect::<Vec<_>>(), "{workload:?}");
            let count = |x: Expected| injected.iter().filter(|e| e.expected == x).count() as u64;
            let (rejected, soft_failed) = (count(Expected::Rejected), count(Expected::SoftFailed));
            assert!(rejected >= 10, "{workload:?}: {rejected} rejected injected");
            if workload == Workload::Hq {
                assert!(soft_failed >= 1, "no soft failure injected");
            }
            let (store, report) = ingest_events(&mixed);
            assert_eq!(
                (report.rejected, report.soft_failed),
                (rejected, soft_failed)
            );
            let rx = store.read().unwrap();
            for e in &mixed {
                let nid = rx.event_nid(&e.event_id).unwrap().unwrap();
                let got = rx.event_outcome(nid).unwrap().unwrap();
                assert_eq!(
                    got.name(),
                    e.expected.name(),
                    "{workload:?} {}: {got:?}",
                    e.event_id
                );
            }
            drop(rx);
            let (plain_store, _) = ingest_events(&plain);
            assert_eq!(
                states(&store, &mixed),
                states(&plain_store, &plain),
                "{workload:?}: the injected events changed a state"
            );
            eprintln!(
                "{workload:?}: {rejected} rejected and {soft_failed} soft-failed injected events"
            );
        }
    }

    #[test]
    fn forky_refuses_injection() {
        assert!(
            Generator::new(config(Workload::Forky))
                .with_unauthorized(5)
                .is_err()
        );
    }
}
