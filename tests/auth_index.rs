//! The auth-chain index against plain walks of `auth_events` kept in a `BTreeMap`, on random
//! DAGs written through the public API: forks of one state key, non-state events, auth events
//! stored late or never (which abandon the index, and the answers must not change), records
//! rewritten, and another room purged.

mod common;

use roomstate::ingest::{IngestOptions, OnBadLine, TrivialMerge, ingest};
use roomstate::matrix::query;
use roomstate::workload::{GenConfig, Generator, Workload};
use roomstate::{
    EventNid, EventRecord, SnapshotNid, StateEntry, StateKey, StateKeyNid, StateMap, Store,
    StoreRead, TypeNid,
};
use std::collections::{BTreeMap, BTreeSet};

/// xorshift64*: enough randomness for shapes.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// What the store should hold: each stored event's state key (or none) and auth events.
#[derive(Default)]
struct Model {
    records: BTreeMap<EventNid, (Option<u64>, Vec<EventNid>)>,
    /// Whether every stored event's auth events were stored state events before it.
    indexable: bool,
}

impl Model {
    /// The stored events reachable from `from` through auth events, `from` excluded unless
    /// reached from another.
    fn ancestors(&self, from: &[EventNid]) -> BTreeSet<EventNid> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<EventNid> = from
            .iter()
            .flat_map(|e| self.records[e].1.iter().copied())
            .collect();
        while let Some(e) = stack.pop() {
            if let Some((_, auth)) = self.records.get(&e)
                && out.insert(e)
            {
                stack.extend(auth.iter().copied());
            }
        }
        out
    }
}

/// A random history's size: events, state keys, and one auth event in how many not stored yet
/// (0: none, and no non-state auth events either).
struct Shape {
    events: u64,
    keys: u64,
    late_one_in: u64,
}

/// Writes a random history to `store`, one transaction per event, and returns the model.
fn random_history(store: &Store, rng: &mut Rng, shape: &Shape) -> roomstate::Result<Model> {
    let n = shape.events;
    let mut model = Model {
        indexable: true,
        ..Model::default()
    };
    let ids: Vec<EventNid> = {
        let mut tx = store.write()?;
        let names: Vec<String> = (0..n).map(|i| format!("$e{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = tx.get_or_create_events(&refs)?;
        tx.commit()?;
        ids
    };
    let mut latest: BTreeMap<u64, EventNid> = BTreeMap::new();
    for (i, &event) in ids.iter().enumerate() {
        let mut tx = store.write()?;
        let room = tx.get_or_create_room("!r:x")?;
        let key = (!rng.one_in(6)).then(|| 1 + rng.below(shape.keys));
        let state_key = match key {
            Some(k) => Some(tx.get_or_create_state_key(&format!("@u{k}:x"))?),
            None => None,
        };
        let mut auth = Vec::new();
        if let Some(prev) = key.and_then(|k| latest.get(&k))
            && !rng.one_in(4)
        {
            auth.push(*prev);
        }
        for _ in 0..rng.below(4) {
            if i > 0 {
                let a = ids[rng.below(i as u64) as usize];
                // Without strays, only state events are auth events, as in a valid room.
                if shape.late_one_in > 0 || model.records[&a].0.is_some() {
                    auth.push(a);
                }
            }
        }
        // Now and then an auth event not stored yet: stored later, or never.
        if shape.late_one_in > 0 && rng.one_in(shape.late_one_in) {
            auth.push(ids[rng.below(n) as usize]);
        }
        auth.sort_unstable();
        auth.dedup();
        auth.retain(|a| *a != event);
        let ty = if key.is_some() {
            TypeNid::MEMBER
        } else {
            TypeNid::REDACTION
        };
        let mut record = EventRecord::new(room, ty, state_key, SnapshotNid::EMPTY);
        record.auth_events = auth.clone();
        let fits = auth
            .iter()
            .all(|a| model.records.get(a).is_some_and(|(k, _)| k.is_some()));
        model.indexable &= fits;
        tx.put_event(event, &record)?;
        // Now and then the same record again, which changes nothing.
        if rng.one_in(20) {
            tx.put_event(event, &record)?;
        }
        tx.commit()?;
        model.records.insert(event, (key, auth));
        if let Some(k) = key {
            latest.insert(k, event);
        }
    }
    Ok(model)
}

fn agree(store: &Store, model: &Model, rng: &mut Rng) -> roomstate::Result<()> {
    let rx = store.read()?;
    assert_eq!(rx.auth_index_complete()?, model.indexable);
    let report = rx.check()?;
    assert!(report.is_clean(), "{:?}", report.problems);
    let stored: Vec<EventNid> = model.records.keys().copied().collect();
    for _ in 0..20 {
        let of = stored[rng.below(stored.len() as u64) as usize];
        let want = model.ancestors(&[of]);
        for &a in &stored {
            assert_eq!(
                rx.is_in_auth_chain(a, of)?,
                want.contains(&a),
                "{a} in the chain of {of}"
            );
        }
        let many: Vec<EventNid> = (0..1 + rng.below(5))
            .map(|_| stored[rng.below(stored.len() as u64) as usize])
            .collect();
        let got: BTreeSet<EventNid> = query::auth_chain(&rx, &many)?.into_iter().collect();
        assert_eq!(got, model.ancestors(&many), "the chain of {many:?}");
        let states: Vec<StateMap> = (0..2 + rng.below(3))
            .map(|_| random_state(&rx, model, rng))
            .collect::<roomstate::Result<_>>()?;
        let chains: Vec<BTreeSet<EventNid>> = states
            .iter()
            .map(|s| model.ancestors(&s.iter().map(|e| e.event).collect::<Vec<_>>()))
            .collect();
        let want: Vec<EventNid> = chains
            .iter()
            .flatten()
            .filter(|e| !chains.iter().all(|c| c.contains(e)))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(query::auth_chain_difference(&rx, &states)?, want);
    }
    Ok(())
}

/// A state of the model's events, each at its own key: per key, a random one of its events or
/// none.
fn random_state(rx: &impl StoreRead, model: &Model, rng: &mut Rng) -> roomstate::Result<StateMap> {
    let mut entries = Vec::new();
    for k in 1..=5u64 {
        let events: Vec<EventNid> = model
            .records
            .iter()
            .filter(|(_, (key, _))| *key == Some(k))
            .map(|(e, _)| *e)
            .collect();
        let Some(key) = rx.state_key_nid(&format!("@u{k}:x"))? else {
            continue;
        };
        if events.is_empty() || rng.one_in(4) {
            continue;
        }
        let event = events[rng.below(events.len() as u64) as usize];
        entries.push(StateEntry {
            key: StateKey::new(TypeNid::MEMBER, key),
            event,
        });
    }
    Ok(StateMap::from_entries(entries))
}

#[test]
fn the_index_answers_what_plain_walks_answer() -> roomstate::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut complete = 0;
    for _ in 0..150 {
        let store = Store::in_memory()?;
        let n = 2 + rng.below(50);
        let shape = Shape {
            events: n,
            keys: 5,
            late_one_in: 40,
        };
        let model = random_history(&store, &mut rng, &shape)?;
        complete += usize::from(model.indexable);
        agree(&store, &model, &mut rng)?;
    }
    // Both kinds of store are exercised.
    assert!((20..130).contains(&complete), "{complete} of 150 complete");
    Ok(())
}

/// A generated room beside the random history, ingested before or after it, then purged: the
/// purge takes the room's chains and links out of the index and leaves the history's answers,
/// and whether the index is complete, as they were.
#[test]
fn purging_another_room_leaves_the_answers_as_they_were() -> roomstate::Result<()> {
    let mut rng = Rng(0x6a09_e667_f3bc_c908);
    for seed in 0..24 {
        let store = Store::in_memory()?;
        let shape = Shape {
            events: 2 + rng.below(50),
            keys: 5,
            late_one_in: 40,
        };
        let room_first = rng.one_in(2);
        if room_first {
            ingest_generated_room(&store, seed)?;
        }
        let model = random_history(&store, &mut rng, &shape)?;
        if !room_first {
            ingest_generated_room(&store, seed)?;
        }
        agree(&store, &model, &mut rng)?;
        let mut tx = store.write()?;
        let room = tx
            .room_nid("!hq:server0.test")?
            .expect("the room was ingested");
        let purged = tx.purge_room(room)?;
        assert!(purged.events > 20);
        tx.commit()?;
        agree(&store, &model, &mut rng)?;
    }
    Ok(())
}

/// A small `hq` room, whose events' auth events are all stored before them.
fn ingest_generated_room(store: &Store, seed: u64) -> roomstate::Result<()> {
    let config = GenConfig {
        workload: Workload::Hq,
        seed,
        members: 8,
        state_events: 20,
        messages_per_state: 1,
        room_version: Default::default(),
    };
    let text: String = Generator::new(config)
        .map(|e| e.to_json_line() + "\n")
        .collect();
    let opts = IngestOptions {
        on_bad_line: OnBadLine::Skip,
        ..IngestOptions::default()
    };
    ingest(store, text.as_bytes(), opts, TrivialMerge)?;
    Ok(())
}

#[test]
fn a_record_rewritten_with_other_auth_events_abandons_the_index() -> roomstate::Result<()> {
    let store = Store::in_memory()?;
    let mut tx = store.write()?;
    let room = tx.get_or_create_room("!r:x")?;
    let [a, b, c] = [
        tx.get_or_create_event("$a")?,
        tx.get_or_create_event("$b")?,
        tx.get_or_create_event("$c")?,
    ];
    let key = Some(StateKeyNid::EMPTY);
    let state = |auth: Vec<EventNid>| {
        let mut r = EventRecord::new(room, TypeNid::CREATE, key, SnapshotNid::EMPTY);
        r.auth_events = auth;
        r
    };
    tx.put_event(a, &state(vec![]))?;
    tx.put_event(b, &state(vec![a]))?;
    tx.put_event(c, &state(vec![b]))?;
    assert!(tx.is_in_auth_chain(a, c)?);
    tx.put_event(c, &state(vec![]))?;
    assert!(!tx.auth_index_complete()?);
    assert!(!tx.is_in_auth_chain(a, c)?);
    assert!(tx.check()?.is_clean());
    tx.commit()?;
    Ok(())
}

/// The five events of [`an_auth_event_another_one_reaches_takes_no_link`]: create, alice's
/// join, power levels, join rules, bob's join, each naming every earlier one it may.
fn five_events(store: &Store) -> roomstate::Result<[EventNid; 5]> {
    let mut tx = store.write()?;
    let room = tx.get_or_create_room("!r:x")?;
    let ids = tx.get_or_create_events(&["$create", "$alice", "$power", "$rules", "$bob"])?;
    let [create, alice, power, rules, bob] = ids[..] else {
        unreachable!("five IDs give five NIDs")
    };
    let empty = Some(StateKeyNid::EMPTY);
    let record = |ty, key, auth: Vec<EventNid>| {
        let mut r = EventRecord::new(room, ty, key, SnapshotNid::EMPTY);
        r.auth_events = auth;
        r
    };
    let (a, b) = (
        Some(tx.get_or_create_state_key("@alice:x")?),
        Some(tx.get_or_create_state_key("@bob:x")?),
    );
    tx.put_event(create, &record(TypeNid::CREATE, empty, vec![]))?;
    tx.put_event(alice, &record(TypeNid::MEMBER, a, vec![create]))?;
    tx.put_event(
        power,
        &record(TypeNid::POWER_LEVELS, empty, vec![create, alice]),
    )?;
    tx.put_event(
        rules,
        &record(TypeNid::JOIN_RULES, empty, vec![create, alice, power]),
    )?;
    tx.put_event(bob, &record(TypeNid::MEMBER, b, vec![create, power, rules]))?;
    tx.commit()?;
    Ok([create, alice, power, rules, bob])
}

/// Each event links only to the auth events no other of its auth events reaches (by its chain
/// or one link): the join rules event names the create event, the creator's membership and the
/// power levels, and links to the power levels only. Every auth chain stays whole.
#[test]
fn an_auth_event_another_one_reaches_takes_no_link() -> roomstate::Result<()> {
    let store = Store::in_memory()?;
    let [create, alice, power, rules, bob] = five_events(&store)?;
    let rx = store.read()?;
    assert!(rx.auth_index_complete()?);
    // alice → create; power → alice (which reaches create); rules → power (which reaches
    // alice, not create in one step); bob → create and rules (which reaches power).
    // Without the rule: 1 + 2 + 3 + 3.
    assert_eq!(rx.stats()?.rows("auth_links"), 5);
    assert!(rx.check()?.is_clean());
    let chain: BTreeSet<EventNid> = query::auth_chain(&rx, &[bob])?.into_iter().collect();
    assert_eq!(chain, BTreeSet::from([create, alice, power, rules]));
    Ok(())
}

/// A store of schema 6 linked every auth event on another chain. Given the four links the rule
/// above leaves out, as such a store holds them, it opens as schema 7, passes `check`, answers
/// as before, and takes new events.
#[test]
fn a_schema_6_store_with_every_link_reads_the_same_once_upgraded() -> roomstate::Result<()> {
    use redb::{ReadableTable, TableDefinition};
    const META: TableDefinition<&[u8], u64> = TableDefinition::new("meta");
    const POSITIONS: TableDefinition<u64, u64> = TableDefinition::new("auth_positions");
    const LINKS: TableDefinition<(u64, u64), ()> = TableDefinition::new("auth_links");
    const LINKS_INTO: TableDefinition<(u64, u64), ()> = TableDefinition::new("auth_links_into");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("six.redb");
    let store = Store::open(&path)?;
    let [create, alice, power, rules, bob] = five_events(&store)?;
    drop(store);
    let db = redb::Database::open(&path).expect("the file opens in redb");
    let tx = db.begin_write().expect("a write transaction");
    {
        let positions = tx.open_table(POSITIONS).expect("positions");
        let at = |e: EventNid| {
            let row = positions.get(e.get()).expect("a read").expect("a position");
            row.value()
        };
        let left_out = [
            (power, create),
            (rules, create),
            (rules, alice),
            (bob, power),
        ];
        let pairs: Vec<(u64, u64)> = left_out.iter().map(|&(o, t)| (at(o), at(t))).collect();
        drop(positions);
        let mut links = tx.open_table(LINKS).expect("links");
        let mut into = tx.open_table(LINKS_INTO).expect("links into");
        for (origin, target) in pairs {
            links.insert((origin, target), ()).expect("a link");
            into.insert((target, origin), ()).expect("a link into");
        }
        tx.open_table(META)
            .expect("meta")
            .insert(b"schema_version".as_slice(), 6)
            .expect("the schema");
    }
    common::key_event_ids_by_string(&tx);
    tx.commit().expect("commit");
    drop(db);

    let store = Store::open(&path)?;
    let rx = store.read()?;
    assert_eq!(rx.stats()?.rows("auth_links"), 9);
    assert!(rx.check()?.is_clean());
    let chain: BTreeSet<EventNid> = query::auth_chain(&rx, &[bob])?.into_iter().collect();
    assert_eq!(chain, BTreeSet::from([create, alice, power, rules]));
    assert!(rx.is_in_auth_chain(alice, bob)? && !rx.is_in_auth_chain(bob, alice)?);
    drop(rx);
    let mut tx = store.write()?;
    let room = tx.get_or_create_room("!r:x")?;
    let carol = tx.get_or_create_event("$carol")?;
    let key = Some(tx.get_or_create_state_key("@carol:x")?);
    let mut record = EventRecord::new(room, TypeNid::MEMBER, key, SnapshotNid::EMPTY);
    record.auth_events = vec![create, power, rules];
    tx.put_event(carol, &record)?;
    tx.commit()?;
    let rx = store.read()?;
    assert!(rx.check()?.is_clean());
    let chain: BTreeSet<EventNid> = query::auth_chain(&rx, &[carol])?.into_iter().collect();
    assert_eq!(chain, BTreeSet::from([create, alice, power, rules]));
    drop(rx);
    drop(store);
    assert_eq!(common::schema_version(&path), Some(9));
    Ok(())
}

#[test]
fn asking_about_an_event_not_stored_is_an_error() -> roomstate::Result<()> {
    let store = Store::in_memory()?;
    let mut tx = store.write()?;
    let room = tx.get_or_create_room("!r:x")?;
    let [a, b] = [tx.get_or_create_event("$a")?, tx.get_or_create_event("$b")?];
    let create = EventRecord::new(
        room,
        TypeNid::CREATE,
        Some(StateKeyNid::EMPTY),
        SnapshotNid::EMPTY,
    );
    tx.put_event(a, &create)?;
    tx.commit()?;
    let rx = store.read()?;
    assert!(rx.auth_index_complete()?);
    assert!(matches!(rx.is_in_auth_chain(a, b), Err(roomstate::Error::UnknownEvent(e)) if e == b));
    assert!(!rx.is_in_auth_chain(b, a)?);
    Ok(())
}

#[test]
fn the_chain_of_a_large_state_is_read_in_one_scan_and_is_the_same() -> roomstate::Result<()> {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let store = Store::in_memory()?;
    let shape = Shape {
        events: 5000,
        keys: 2500,
        late_one_in: 0,
    };
    let model = random_history(&store, &mut rng, &shape)?;
    assert!(model.indexable);
    // The latest event of every key: a state of a couple of thousand entries, each on a chain of
    // its own, which the index reads span by span.
    let mut latest: BTreeMap<u64, EventNid> = BTreeMap::new();
    for (event, (key, _)) in &model.records {
        if let Some(k) = key {
            latest.insert(*k, *event);
        }
    }
    let state: Vec<EventNid> = latest.values().copied().collect();
    assert!(state.len() > 2000);
    let rx = store.read()?;
    let got: BTreeSet<EventNid> = query::auth_chain(&rx, &state)?.into_iter().collect();
    assert_eq!(got, model.ancestors(&state));
    assert!(rx.check()?.is_clean());
    Ok(())
}
