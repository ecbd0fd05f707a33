//! The event-ID index keys an ID by 64 bits: IDs that share a key must keep their own NIDs
//! through interning, look-ups, a purge of the key's owner, and the upgrade of an older store.
//!
//! Keys are a seeded hash, which no one can aim at; a store created with
//! `StoreBuilder::event_key_bits(0)` puts every ID on one key, so the collision paths run.

mod common;

use roomstate::ingest::{IngestOptions, Refuse, ingest};
use roomstate::{Store, StoreBuilder, StoreRead};

/// A room version 4+ shaped ID ending in 32 of `tail`.
fn colliding(tail: char) -> String {
    format!("$AAAAAAAAAAA{}", tail.to_string().repeat(32))
}

/// A store whose event IDs all share one key.
fn one_key() -> StoreBuilder {
    StoreBuilder::default().event_key_bits(0)
}

#[test]
fn ids_that_share_a_key_keep_their_own_nids() {
    let store = one_key().in_memory().unwrap();
    let ids: Vec<String> = ['a', 'b', 'c', 'd'].into_iter().map(colliding).collect();
    let mut tx = store.write().unwrap();
    let nids: Vec<_> = ids
        .iter()
        .map(|id| tx.get_or_create_event(id).unwrap())
        .collect();
    let again = tx.get_or_create_event(&ids[1]).unwrap();
    assert_eq!(again, nids[1], "a repeat in the same transaction");
    tx.commit().unwrap();

    let rx = store.read().unwrap();
    for (id, nid) in ids.iter().zip(&nids) {
        assert_eq!(rx.event_nid(id).unwrap(), Some(*nid), "{id}");
        assert_eq!(&rx.event_id(*nid).unwrap(), id);
    }
    assert_eq!(rx.event_nid(&colliding('e')).unwrap(), None);
    assert_eq!(rx.stats().unwrap().rows("event_key_collisions"), 3);
    assert_eq!(rx.stats().unwrap().rows("event_keys"), 1);
    assert!(rx.check().unwrap().is_clean());
    drop(rx);

    // A later transaction finds them too, and does not intern them again.
    let mut tx = store.write().unwrap();
    for (id, nid) in ids.iter().zip(&nids) {
        assert_eq!(tx.get_or_create_event(id).unwrap(), *nid);
    }
    tx.commit().unwrap();
    assert_eq!(
        store.read().unwrap().stats().unwrap().rows("event_ids_rev"),
        4
    );
}

/// With the default 64-bit keys, the same IDs (which agree on their first 11 characters) do
/// not collide: the key is a hash of the whole ID.
#[test]
fn ids_that_agree_on_their_first_characters_get_their_own_keys() {
    let store = Store::in_memory().unwrap();
    let mut tx = store.write().unwrap();
    for t in ['a', 'b', 'c', 'd'] {
        tx.get_or_create_event(&colliding(t)).unwrap();
    }
    tx.commit().unwrap();
    let stats = store.read().unwrap().stats().unwrap();
    assert_eq!(stats.rows("event_keys"), 4);
    assert_eq!(stats.rows("event_key_collisions"), 0);
}

/// Two rooms, each a create event and its creator's join, every event ID with the same key.
fn two_rooms() -> String {
    let room = |name: &str, create: char, join: char| {
        format!(
            concat!(
                r#"{{"event_id":"{c}","room_id":"!{n}:x","type":"m.room.create","state_key":"","sender":"@a:x","prev_events":[],"auth_events":[],"origin_server_ts":1,"content":{{"creator":"@a:x","room_version":"10"}}}}"#,
                "\n",
                r#"{{"event_id":"{j}","room_id":"!{n}:x","type":"m.room.member","state_key":"@a:x","sender":"@a:x","prev_events":["{c}"],"auth_events":["{c}"],"origin_server_ts":2,"content":{{"membership":"join"}}}}"#,
                "\n",
            ),
            c = colliding(create),
            j = colliding(join),
            n = name,
        )
    };
    room("first", 'a', 'b') + &room("second", 'c', 'd')
}

#[test]
fn purging_a_keys_owner_hands_the_key_to_a_collision() {
    let store = one_key().in_memory().unwrap();
    let options = IngestOptions::default();
    ingest(&store, two_rooms().as_bytes(), options, Refuse).unwrap();
    let rx = store.read().unwrap();
    assert_eq!(rx.stats().unwrap().rows("event_key_collisions"), 3);
    let first = rx.room_nid("!first:x").unwrap().unwrap();
    let survivors: Vec<_> = ['c', 'd']
        .map(|t| rx.event_nid(&colliding(t)).unwrap().unwrap())
        .to_vec();
    assert!(rx.check().unwrap().is_clean());
    drop(rx);

    let mut tx = store.write().unwrap();
    tx.purge_room(first).unwrap();
    tx.commit().unwrap();

    let rx = store.read().unwrap();
    assert_eq!(rx.event_nid(&colliding('a')).unwrap(), None);
    assert_eq!(rx.event_nid(&colliding('b')).unwrap(), None);
    for (t, nid) in ['c', 'd'].into_iter().zip(&survivors) {
        assert_eq!(rx.event_nid(&colliding(t)).unwrap(), Some(*nid));
    }
    assert_eq!(rx.stats().unwrap().rows("event_keys"), 1);
    assert_eq!(rx.stats().unwrap().rows("event_key_collisions"), 1);
    let report = rx.check().unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

/// A store of schema 7 finds event IDs through `event_ids`, keyed by the whole ID; opening it
/// draws a seed, builds the keys and deletes `event_ids`.
#[test]
fn a_store_keyed_by_whole_ids_is_rekeyed_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let store = one_key().open(&path).unwrap();
    ingest(
        &store,
        two_rooms().as_bytes(),
        IngestOptions::default(),
        Refuse,
    )
    .unwrap();
    let before: Vec<_> = ['a', 'b', 'c', 'd']
        .map(|t| store.read().unwrap().event_nid(&colliding(t)).unwrap())
        .to_vec();
    drop(store);
    {
        let db = redb::Database::open(&path).unwrap();
        let tx = db.begin_write().unwrap();
        common::key_event_ids_by_string(&tx);
        common::set_schema_version(&tx, 7);
        tx.commit().unwrap();
    }

    let store = Store::open(&path).unwrap();
    let rx = store.read().unwrap();
    for (t, nid) in ['a', 'b', 'c', 'd'].into_iter().zip(&before) {
        assert_eq!(rx.event_nid(&colliding(t)).unwrap(), *nid);
    }
    // Rekeyed at 64 bits: the one-key width of the store it came from is gone with its index.
    assert_eq!(rx.stats().unwrap().rows("event_keys"), 4);
    assert_eq!(rx.stats().unwrap().rows("event_key_collisions"), 0);
    assert!(rx.check().unwrap().is_clean());
    drop(rx);
    drop(store);
    assert_eq!(common::schema_version(&path), Some(9));
    let tables = common::table_names(&path);
    assert!(!tables.contains(&"event_ids".to_owned()), "{tables:?}");
}

/// `check` reports a key moved to its own collision (the owner's ID no longer maps back), and a
/// key whose ID is gone.
#[test]
fn check_reports_a_damaged_event_id_index() {
    use redb::ReadableTable;
    const KEYS: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("event_keys");
    const IDS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("event_ids_rev");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = one_key().open(&path).unwrap();
    let mut tx = store.write().unwrap();
    let owner = tx.get_or_create_event(&colliding('a')).unwrap();
    let collision = tx.get_or_create_event(&colliding('b')).unwrap();
    tx.commit().unwrap();
    drop(store);
    let damage = |f: &dyn Fn(&redb::WriteTransaction)| {
        let copy = dir.path().join("damaged.redb");
        std::fs::copy(&path, &copy).unwrap();
        let db = redb::Database::open(&copy).unwrap();
        let tx = db.begin_write().unwrap();
        f(&tx);
        tx.commit().unwrap();
        drop(db);
        Store::open(&copy).unwrap().read().unwrap().check().unwrap()
    };
    // Keys of no bits: every ID's key is 0.
    let report = damage(&|tx| {
        let mut keys = tx.open_table(KEYS).unwrap();
        assert_eq!(keys.get(0).unwrap().unwrap().value(), owner.get());
        keys.insert(0, collision.get()).unwrap();
    });
    let said = |table: &str, key: &str, what: &str| {
        report
            .problems
            .iter()
            .any(|p| p.table == table && p.key == key && p.what.contains(what))
    };
    let owner_nid = owner.get().to_string();
    assert!(
        said("event_ids_rev", &owner_nid, "does not map back"),
        "{:?}",
        report.problems
    );
    assert!(
        said("event_key_collisions", "0", "lists the key's owner"),
        "{:?}",
        report.problems
    );

    let report = damage(&|tx| {
        tx.open_table(IDS).unwrap().remove(owner.get()).unwrap();
    });
    let found = report
        .problems
        .iter()
        .any(|p| p.table == "event_keys" && p.key == "0" && p.what.contains("has no event ID"));
    assert!(found, "{:?}", report.problems);
}
