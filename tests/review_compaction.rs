//! Review of the compaction of the bundle log, as a hostile partner, a hostile read-only
//! client or bad luck would try it.
//!
//! - A query holds the log for reading while it asks the policy what the caller may
//!   see, and the policy reads the items a relationship or a report references through
//!   the store: a second read of the log on the same thread. A compaction waiting to
//!   swap the log (a write) made that second read wait behind it, while it waited for
//!   the first: query and compaction hung, and with them every write (the compaction
//!   holds the writer and flush locks by then).
//! - A compaction drops an indicator whose `valid_until` passed long ago together with
//!   its superseded versions. An origin that retires an indicator by publishing a
//!   version that expires now saw, after the compaction, the older version, which does
//!   not expire, taken again when a partner offered it: the indicator came back to life
//!   and was passed on.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::signed::{bundle, fixture, indicator, local};
use entente::engine::now_ms;
use entente::model::{IndicatorType, ItemId, ItemKind, Tlp};
use entente::store::compact::Compaction;
use entente::store::prelude::*;
use entente::store::{ItemQuery, PageLimit, SledStore, Source};

const DAY: i64 = 24 * 3600 * 1000;

#[test]
fn a_query_whose_policy_reads_the_store_does_not_hang_a_compaction() {
    let f = fixture();
    let dir = f.pki.path().join("nested");
    let store = Arc::new(common::open_store(&dir, &f.hq.id, 16 << 20).unwrap());
    let items: Vec<_> = (0..4)
        .map(|n| {
            indicator(
                &ItemId::new_random(),
                IndicatorType::Domain,
                &format!("n{n}.nested.example"),
                now_ms(),
                Tlp::Green,
                &[],
            )
        })
        .collect();
    store
        .accept(&bundle(&f, &f.hq, &items), &local(&f.hq.id), now_ms())
        .unwrap();
    store.flush().unwrap();

    let (done, finished) = mpsc::channel();
    let compacting = dir.join("bundles.v4.log.compacting");
    {
        let store = store.clone();
        std::thread::spawn(move || {
            let started = AtomicBool::new(false);
            let compaction = Mutex::new(None);
            let page = store.query(
                &ItemQuery::default(),
                None,
                PageLimit::items(10),
                now_ms(),
                &|stored| {
                    if !started.swap(true, Ordering::SeqCst) {
                        let store = store.clone();
                        *compaction.lock().unwrap() = Some(std::thread::spawn(move || {
                            store.compact(Compaction::default())
                        }));
                        // The compaction copies this small log at once, then waits to
                        // swap it: give it the time to get there.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while !compacting.exists() && Instant::now() < deadline {
                            std::thread::yield_now();
                        }
                        std::thread::sleep(Duration::from_millis(300));
                    }
                    // What the policy does for an item that references others.
                    store.get(&stored.item.id).unwrap().is_some()
                },
            );
            let handle = compaction.lock().unwrap().take();
            let compacted = handle.map(|h| h.join().unwrap());
            let _ = done.send((page.map(|p| p.items.len()), compacted));
        });
    }
    let (page, compacted) = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a query and a compaction hung each other");
    assert_eq!(page.unwrap(), 4);
    assert_eq!(compacted.unwrap().unwrap().generation, 1);
    // Writes go on.
    store
        .accept(
            &bundle(
                &f,
                &f.hq,
                &[indicator(
                    &ItemId::new_random(),
                    IndicatorType::Domain,
                    "after.nested.example",
                    now_ms(),
                    Tlp::Green,
                    &[],
                )],
            ),
            &local(&f.hq.id),
            now_ms(),
        )
        .unwrap();
    store.flush().unwrap();
}

/// An indicator its origin published long ago with no end, then retired by a version
/// that ended 40 days ago, both received from berlin.office into `store` and flushed:
/// the first version's bundle (to offer again), where it came from, and the id.
fn retired_from_berlin(
    f: &common::signed::Fixture,
    store: &SledStore,
) -> (entente::crypto::VerifiedBundle, Source, ItemId) {
    let id = ItemId::new_random();
    let now = now_ms();
    let first = indicator(
        &id,
        IndicatorType::Domain,
        "retired.example",
        now - 60 * DAY,
        Tlp::Green,
        &[],
    );
    let mut retired = first.clone();
    retired.modified_ms = now - 40 * DAY;
    if let ItemKind::Indicator(i) = &mut retired.kind {
        i.valid_until_ms = Some(now - 40 * DAY);
    }
    let from_berlin = Source {
        received_from: f.berlin.id.clone(),
        hops: 1,
    };
    let old = bundle(f, &f.hq, &[first]);
    store.accept(&old, &from_berlin, now).unwrap();
    store
        .accept(&bundle(f, &f.hq, &[retired]), &from_berlin, now)
        .unwrap();
    store.flush().unwrap();
    (old, from_berlin, id)
}

#[test]
fn an_indicator_retired_by_expiry_does_not_come_back_after_a_compaction() {
    let f = fixture();
    let dir = f.pki.path().join("retired");
    let open = || common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
    let store = open();
    let (old, from_berlin, id) = retired_from_berlin(&f, &store);
    let done = store.compact(Compaction::default()).unwrap();
    assert_eq!(done.expired_dropped, 1);
    assert!(store.get(&id).unwrap().is_none());

    // A partner offers the old bundle again (it never saw the retirement, or replays).
    let offered = |store: &SledStore| {
        let report = store.accept(&old, &from_berlin, now_ms()).unwrap();
        assert!(
            report.stored.is_empty() && report.feed_seq.is_none(),
            "the version the origin retired was taken again: {report:?}"
        );
        assert!(store.get(&id).unwrap().is_none());
    };
    offered(&store);
    // So after a restart, and after another compaction.
    drop(store);
    let store = open();
    offered(&store);
    store.compact(Compaction::default()).unwrap();
    offered(&store);
    drop(store);
    offered(&open());
}

/// The same after the store's metadata was lost and rebuilt from its log (`entente
/// store recover`): the note that the indicator was dropped as expired outlives the
/// metadata, so the retired version is still refused, and a later compaction keeps the
/// note.
#[test]
fn an_indicator_retired_by_expiry_does_not_come_back_after_a_recovery() {
    let f = fixture();
    let dir = f.pki.path().join("retired");
    let open = || common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
    let store = open();
    let (old, from_berlin, id) = retired_from_berlin(&f, &store);
    assert_eq!(
        store
            .compact(Compaction::default())
            .unwrap()
            .expired_dropped,
        1
    );
    drop(store);
    // A store whose compaction came before the copy beside the log was kept copies its
    // notes there when it opens.
    std::fs::remove_file(dir.join(entente::store::dropped::FILE)).unwrap();
    drop(open());
    assert!(dir.join(entente::store::dropped::FILE).exists());

    common::remove_sled(&dir);
    entente::store::recover::recover(&dir, &f.hq.id, 16 << 20, false).unwrap();
    let offered = |store: &SledStore| {
        let report = store.accept(&old, &from_berlin, now_ms()).unwrap();
        assert!(
            report.stored.is_empty() && report.feed_seq.is_none(),
            "the version the origin retired was taken again after a recovery: {report:?}"
        );
        assert!(store.get(&id).unwrap().is_none());
    };
    let store = open();
    offered(&store);
    store.compact(Compaction::default()).unwrap();
    drop(store);
    common::remove_sled(&dir);
    entente::store::recover::recover(&dir, &f.hq.id, 16 << 20, false).unwrap();
    offered(&open());
}
