//! Review of the notes of indicators dropped as expired kept beside the log, distributions
//! kept by writers that name no recipients, CRLs handed over, TAXII statuses, paging and
//! the TAXII listener's connections without a certificate.
//!
//! - `dropped.notes` is appended to at each compaction. An append cut short (a crash, or
//!   a full disk, which is when an operator compacts) left part of a record at the end;
//!   the next compaction appended after it, and reading stopped at the cut record, so
//!   every note appended since was lost to `entente store recover`: an indicator its
//!   origin retired by letting it expire came back when a partner offered it.

mod common;

use std::io::Write;

use common::signed::{bundle, fixture, indicator};
use entente::engine::now_ms;
use entente::model::{IndicatorType, ItemId, ItemKind, Tlp};
use entente::store::compact::Compaction;
use entente::store::prelude::*;
use entente::store::{SledStore, Source};

const DAY: i64 = 24 * 3600 * 1000;

/// An indicator of `f.hq`'s, held from `berlin` first in a version that never expires,
/// then retired by a version that expired 40 days ago: a compaction drops it. Returns the
/// bundle of the first version (what a partner could offer again).
fn retire(
    f: &common::signed::Fixture,
    store: &SledStore,
    from: &Source,
    value: &str,
) -> (ItemId, entente::crypto::VerifiedBundle) {
    let id = ItemId::new_random();
    let now = now_ms();
    let first = indicator(
        &id,
        IndicatorType::Domain,
        value,
        now - 60 * DAY,
        Tlp::Green,
        &[],
    );
    let mut retired = first.clone();
    retired.modified_ms = now - 40 * DAY;
    if let ItemKind::Indicator(i) = &mut retired.kind {
        i.valid_until_ms = Some(now - 40 * DAY);
    }
    let old = bundle(f, &f.hq, &[first]);
    store.accept(&old, from, now).unwrap();
    store
        .accept(&bundle(f, &f.hq, &[retired]), from, now)
        .unwrap();
    store.flush().unwrap();
    (id, old)
}

/// An append to `dropped.notes` cut short (a crash, or a disk that filled while the
/// compaction wrote it) must not make the notes of later compactions unreadable.
#[test]
fn a_cut_append_to_the_dropped_notes_does_not_lose_later_notes() {
    let f = fixture();
    let dir = f.pki.path().join("cut-notes");
    let open = || common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
    let from_berlin = Source {
        received_from: f.berlin.id.clone(),
        hops: 1,
    };
    let store = open();
    let (first_id, first_old) = retire(&f, &store, &from_berlin, "first-retired.example");
    assert_eq!(
        store
            .compact(Compaction::default())
            .unwrap()
            .expired_dropped,
        1
    );
    // The start of a record, cut off where a crash or a full disk stopped the write.
    let notes = dir.join(entente::store::dropped::FILE);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&notes)
        .unwrap();
    file.write_all(&[0, 40, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let (second_id, second_old) = retire(&f, &store, &from_berlin, "second-retired.example");
    assert_eq!(
        store
            .compact(Compaction::default())
            .unwrap()
            .expired_dropped,
        1
    );
    drop(store);

    common::remove_sled(&dir);
    let recovery = entente::store::recover::recover(&dir, &f.hq.id, 16 << 20, false).unwrap();
    let store = open();
    for (id, old) in [(&first_id, &first_old), (&second_id, &second_old)] {
        let report = store.accept(old, &from_berlin, now_ms()).unwrap();
        assert!(
            report.stored.is_empty() && report.feed_seq.is_none(),
            "a version its origin retired was taken again after a recovery ({} notes read back, problem: {:?}): {report:?}",
            recovery.dropped_notes,
            recovery.notes_problem
        );
        assert!(store.get(id).unwrap().is_none());
    }
}
