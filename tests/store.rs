//! The store with real signed bundles: single writer, versions, merging of
//! disclosures, the change feed, queries, expiry and persistence.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use entente::crypto::{VerifiedBundle, verify};
use entente::engine::now_ms;
use entente::model::{IndicatorType, Item, ItemId, ItemKind, NodeId, Revocation, Tlp};
use entente::store::prelude::*;
use entente::store::{
    ItemQuery, ItemRejection, Page, PageLimit, SledStore, Source, StoreError, StoredItem,
};

use common::signed::{
    Fixture, Lcg, bundle, context, context_id, fixture, fresh_domain, indicator, local, revocation,
};

fn open(f: &Fixture, name: &str) -> SledStore {
    common::open_store(&f.pki.path().join(name), &f.hq.id, 16 << 20).unwrap()
}

/// Every page of `query`, following the cursors to the end.
fn pages(
    store: &SledStore,
    query: &ItemQuery,
    limit: usize,
    now: i64,
    visible: &dyn Fn(&StoredItem) -> bool,
) -> Vec<Page> {
    let mut out = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = store
            .query(
                query,
                cursor.as_deref(),
                PageLimit::items(limit),
                now,
                visible,
            )
            .unwrap();
        cursor = page.next.clone();
        out.push(page);
        if cursor.is_none() {
            return out;
        }
    }
}

/// `full` as a partner would send it with only the items at `keep` disclosed.
fn disclosing(f: &Fixture, full: &VerifiedBundle, keep: &[u32], now: i64) -> VerifiedBundle {
    verify(
        &full.to_wire(|v| keep.contains(&v.index)),
        &f.certs,
        &f.trust,
        now,
    )
    .unwrap()
}

fn all(store: &SledStore, query: &ItemQuery) -> Vec<String> {
    let mut out: Vec<String> = pages(store, query, 2, now_ms(), &|_| true)
        .iter()
        .flat_map(|p| &p.items)
        .map(|s| s.item.value().unwrap_or("<revocation>").to_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn accepted_items_are_found_by_id_and_value_with_provenance() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let a = ItemId::new_random();
    let b = bundle(
        &f,
        &f.hq,
        &[
            indicator(
                &a,
                IndicatorType::Domain,
                "c2.example.com",
                now,
                Tlp::Amber,
                &["apt"],
            ),
            indicator(
                &ItemId::new_random(),
                IndicatorType::Ipv4,
                "192.0.2.1",
                now,
                Tlp::Green,
                &[],
            ),
        ],
    );
    let report = store.accept(&b, &local(&f.hq.id), now).unwrap();
    assert_eq!(report.stored.len(), 2);
    assert_eq!(report.feed_seq, Some(1));
    let got = store.get(&a).unwrap().unwrap();
    assert_eq!(got.origin, f.hq.id);
    assert_eq!(got.bundle_id, b.header().bundle_id);
    assert_eq!(got.hops, 0);
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                value: Some("C2.example.com".into()),
                ..Default::default()
            }
        ),
        vec!["c2.example.com"]
    );
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                indicator_type: Some(IndicatorType::Ipv4),
                ..Default::default()
            }
        ),
        vec!["192.0.2.1"]
    );
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                tag: Some("apt".into()),
                ..Default::default()
            }
        ),
        vec!["c2.example.com"]
    );
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                origin: Some(f.berlin.id.clone()),
                ..Default::default()
            }
        ),
        Vec::<String>::new()
    );
    assert_eq!(all(&store, &ItemQuery::default()).len(), 2);
}

#[test]
fn only_the_origin_may_write_later_versions() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let id = ItemId::new_random();
    store
        .accept(
            &bundle(
                &f,
                &f.hq,
                &[indicator(
                    &id,
                    IndicatorType::Domain,
                    "a.example.com",
                    now - 10,
                    Tlp::Green,
                    &[],
                )],
            ),
            &local(&f.hq.id),
            now,
        )
        .unwrap();

    // berlin tries to publish a later version of hq's item: rejected.
    let hijack = bundle(
        &f,
        &f.berlin,
        &[indicator(
            &id,
            IndicatorType::Domain,
            "evil.example.com",
            now,
            Tlp::Green,
            &[],
        )],
    );
    let report = store.accept(&hijack, &local(&f.berlin.id), now).unwrap();
    assert_eq!(
        report.rejected,
        vec![(
            0,
            ItemRejection::NotOriginWriter {
                holder: f.hq.id.clone()
            }
        )]
    );
    assert!(report.stored.is_empty());
    assert_eq!(
        store.get(&id).unwrap().unwrap().item.value(),
        Some("a.example.com")
    );

    // An older version from the origin is a duplicate.
    let stale = bundle(
        &f,
        &f.hq,
        &[indicator(
            &id,
            IndicatorType::Domain,
            "old.example.com",
            now - 20,
            Tlp::Green,
            &[],
        )],
    );
    let report = store.accept(&stale, &local(&f.hq.id), now).unwrap();
    assert_eq!(report.duplicates, 1);
    assert_eq!(report.feed_seq, None);
    // So is the version held, as it is held; written otherwise it is refused.
    for (value, tlp, duplicate) in [
        ("a.example.com", Tlp::Green, true),
        ("a.example.com", Tlp::Red, false),
    ] {
        let again = bundle(
            &f,
            &f.hq,
            &[indicator(
                &id,
                IndicatorType::Domain,
                value,
                now - 10,
                tlp,
                &[],
            )],
        );
        let report = store.accept(&again, &local(&f.hq.id), now).unwrap();
        if duplicate {
            assert_eq!((report.duplicates, report.rejected.len()), (1, 0));
        } else {
            assert_eq!(
                report.rejected,
                vec![(0, ItemRejection::SameVersionDiffers { at_ms: now - 10 })]
            );
        }
        assert_eq!(report.feed_seq, None);
    }

    // A newer version from the origin supersedes, and the old value leaves the index.
    let newer = bundle(
        &f,
        &f.hq,
        &[indicator(
            &id,
            IndicatorType::Domain,
            "b.example.com",
            now,
            Tlp::Green,
            &[],
        )],
    );
    assert_eq!(
        store
            .accept(&newer, &local(&f.hq.id), now)
            .unwrap()
            .stored
            .len(),
        1
    );
    assert_eq!(
        store.get(&id).unwrap().unwrap().item.value(),
        Some("b.example.com")
    );
    assert!(
        all(
            &store,
            &ItemQuery {
                value: Some("a.example.com".into()),
                ..Default::default()
            }
        )
        .is_empty()
    );
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                value: Some("b.example.com".into()),
                ..Default::default()
            }
        ),
        vec!["b.example.com"]
    );

    // A revocation by the origin replaces the indicator; value queries no longer find it.
    let revoke = Item {
        id: id.clone(),
        modified_ms: now + 1,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Revocation(Revocation {
            indicator_type: IndicatorType::Domain,
            reason: "sinkholed".into(),
            indicator: None,
        }),
    };
    store
        .accept(&bundle(&f, &f.hq, &[revoke]), &local(&f.hq.id), now)
        .unwrap();
    assert!(matches!(
        store.get(&id).unwrap().unwrap().item.kind,
        ItemKind::Revocation(_)
    ));
    assert!(
        all(
            &store,
            &ItemQuery {
                value: Some("b.example.com".into()),
                ..Default::default()
            }
        )
        .is_empty()
    );
}

/// A context object withdrawn (`revoked: true`) by its origin must carry the marking and
/// tags of the version it replaces, as an indicator's revocation must: a peer's CLEAR
/// withdrawal of an AMBER report is rejected on arrival, and the AMBER version stays.
#[test]
fn a_withdrawn_context_object_with_a_lower_marking_is_rejected() {
    let f = fixture();
    let store = open(&f, "store");
    let now = now_ms();
    let target = fresh_domain("withdrawn-report.example", now - 3_000);
    let id = context_id("report");
    let amber = common::signed::context_with(&id, &[&target.id], Tlp::Amber, now - 2_000);
    store
        .accept(
            &bundle(&f, &f.berlin, &[target.clone(), amber]),
            &local(&f.berlin.id),
            now,
        )
        .unwrap();
    let mut withdrawn = common::signed::context_with(&id, &[&target.id], Tlp::Clear, now - 1_000);
    if let ItemKind::Context(context) = &mut withdrawn.kind {
        let mut map = context.properties.to_map();
        map.insert("revoked".into(), serde_json::Value::Bool(true));
        context.properties =
            entente::model::StixProperties::keep_for(entente::model::Holder::Context, &map)
                .unwrap();
    }
    assert!(withdrawn.withdraws());
    let report = store
        .accept(
            &bundle(&f, &f.berlin, &[withdrawn.clone()]),
            &local(&f.berlin.id),
            now,
        )
        .unwrap();
    assert!(
        matches!(
            report.rejected.as_slice(),
            [(0, ItemRejection::RevocationMismatch { .. })]
        ),
        "{report:?}"
    );
    assert_eq!(store.get(&id).unwrap().unwrap().item.tlp, Tlp::Amber);
    // With the report's own marking, the withdrawal is taken.
    withdrawn.tlp = Tlp::Amber;
    let report = store
        .accept(
            &bundle(&f, &f.berlin, &[withdrawn]),
            &local(&f.berlin.id),
            now,
        )
        .unwrap();
    assert_eq!(report.stored, [0], "{report:?}");
}

#[test]
fn disclosures_merge_and_the_bundle_is_re_fed() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let items: Vec<Item> = (0..4)
        .map(|i| {
            indicator(
                &ItemId::new_random(),
                IndicatorType::Domain,
                &format!("d{i}.example.com"),
                now,
                Tlp::Green,
                &[],
            )
        })
        .collect();
    let full = bundle(&f, &f.hq, &items);
    let part = |keep: &[u32]| disclosing(&f, &full, keep, now);
    let via = Source {
        received_from: f.berlin.id.clone(),
        hops: 2,
    };

    let r1 = store.accept(&part(&[0, 1]), &via, now).unwrap();
    assert_eq!((r1.stored.len(), r1.feed_seq), (2, Some(1)));
    // The same disclosures again change nothing.
    let again = store.accept(&part(&[0, 1]), &via, now).unwrap();
    assert_eq!(
        (again.stored.len(), again.duplicates, again.feed_seq),
        (0, 2, None)
    );
    assert_eq!(store.feed_head(), 1);
    // More disclosures grow the known set (union) and re-append the bundle.
    let r2 = store.accept(&part(&[1, 3]), &via, now).unwrap();
    assert_eq!(
        (r2.stored.len(), r2.duplicates, r2.feed_seq),
        (1, 1, Some(2))
    );
    assert_eq!(
        all(&store, &ItemQuery::default()),
        vec!["d0.example.com", "d1.example.com", "d3.example.com"]
    );
    // No disclosures at all: still nothing changes.
    assert_eq!(store.accept(&part(&[]), &via, now).unwrap().feed_seq, None);
}

#[test]
fn the_same_id_with_other_header_bytes_is_a_conflict() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let b = bundle(
        &f,
        &f.hq,
        &[indicator(
            &ItemId::new_random(),
            IndicatorType::Domain,
            "x.example.com",
            now,
            Tlp::Green,
            &[],
        )],
    );
    store.accept(&b, &local(&f.hq.id), now).unwrap();
    // Same bundle id, different header bytes: the origin signed two bundles under one
    // id (equivocation). Made here with hq's own key.
    use prost::Message;
    let mut header = entente::wire::BundleHeader::decode(b.header_bytes()).unwrap();
    header.created_unix_ms += 1;
    let header_bytes = header.encode_to_vec();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        f.hq.private_key_pkcs8().unwrap(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let signature = key
        .sign(
            &ring::rand::SystemRandom::new(),
            &entente::crypto::signed_message(&header_bytes),
        )
        .unwrap();
    let mut wire = b.to_wire(|_| true);
    wire.header_bytes = header_bytes;
    wire.signature = signature.as_ref().to_vec();
    let other = verify(&wire, &f.certs, &f.trust, now).unwrap();
    assert_eq!(other.header().bundle_id, b.header().bundle_id);
    assert!(matches!(
        store.accept(&other, &local(&f.hq.id), now),
        Err(StoreError::ConflictingBundle(_))
    ));
}

#[test]
fn expired_indicators_are_hidden_unless_asked_for() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let mut expired = indicator(
        &ItemId::new_random(),
        IndicatorType::Domain,
        "old.example.com",
        now - 10_000,
        Tlp::Green,
        &[],
    );
    if let ItemKind::Indicator(i) = &mut expired.kind {
        i.valid_until_ms = Some(now - 1000);
    }
    let live = indicator(
        &ItemId::new_random(),
        IndicatorType::Domain,
        "live.example.com",
        now,
        Tlp::Green,
        &[],
    );
    store
        .accept(&bundle(&f, &f.hq, &[expired, live]), &local(&f.hq.id), now)
        .unwrap();
    assert_eq!(all(&store, &ItemQuery::default()), vec!["live.example.com"]);
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                include_expired: true,
                ..Default::default()
            }
        ),
        vec!["live.example.com", "old.example.com"]
    );
}

#[test]
fn modified_since_and_paging_cover_everything_once() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let items: Vec<Item> = (0..25)
        .map(|i| {
            indicator(
                &ItemId::new_random(),
                IndicatorType::Domain,
                &format!("p{i:02}.example.com"),
                now - 100 + i,
                Tlp::Green,
                &[],
            )
        })
        .collect();
    store
        .accept(&bundle(&f, &f.hq, &items), &local(&f.hq.id), now)
        .unwrap();
    let everything = all(
        &store,
        &ItemQuery {
            indicator_type: Some(IndicatorType::Domain),
            ..Default::default()
        },
    );
    assert_eq!(everything.len(), 25);
    let since = all(
        &store,
        &ItemQuery {
            modified_since_ms: Some(now - 100 + 20),
            ..Default::default()
        },
    );
    assert_eq!(
        since,
        (20..25)
            .map(|i| format!("p{i:02}.example.com"))
            .collect::<Vec<_>>()
    );
    // A cursor the store did not hand out is refused, not guessed at.
    for garbage in [&b"Vgarbage\xff"[..], &[0u8; 3][..], &[0u8; 5][..]] {
        let refused = store.query(
            &ItemQuery::default(),
            Some(garbage),
            PageLimit::items(10),
            now,
            &|_| true,
        );
        assert!(
            matches!(refused, Err(entente::store::StoreError::BadCursor)),
            "{garbage:?}"
        );
    }
    // A cursor past the end is an empty last page (after the log's generation, 0).
    let page = store
        .query(
            &ItemQuery::default(),
            Some(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            PageLimit::items(10),
            now,
            &|_| true,
        )
        .unwrap();
    assert!(page.items.is_empty() && page.next.is_none());
}

#[test]
fn the_store_persists_and_refuses_another_owner() {
    let f = fixture();
    let dir = f.pki.path().join("persist");
    let now = now_ms();
    let id = ItemId::new_random();
    {
        let store = common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
        store
            .accept(
                &bundle(
                    &f,
                    &f.hq,
                    &[indicator(
                        &id,
                        IndicatorType::Md5,
                        "d41d8cd98f00b204e9800998ecf8427e",
                        now,
                        Tlp::Red,
                        &[],
                    )],
                ),
                &local(&f.hq.id),
                now,
            )
            .unwrap();
        store.flush().unwrap();
    }
    let store = Arc::new(common::open_store(&dir, &f.hq.id, 16 << 20).unwrap());
    assert_eq!(store.get(&id).unwrap().unwrap().item.tlp, Tlp::Red);
    assert_eq!(store.feed_head(), 1);
    drop(store);
    let err = common::open_store(&dir, &f.berlin.id, 16 << 20)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::WrongOwner { .. }), "{err}");
}

#[test]
fn several_items_with_one_value_are_all_found_and_paged_once() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let items: Vec<Item> = (0..5)
        .map(|i| {
            indicator(
                &ItemId::new_random(),
                IndicatorType::Ipv4,
                "203.0.113.9",
                now + i,
                Tlp::Green,
                &[],
            )
        })
        .collect();
    store
        .accept(&bundle(&f, &f.hq, &items), &local(&f.hq.id), now)
        .unwrap();
    // berlin reports the same address under its own id.
    let theirs = indicator(
        &ItemId::new_random(),
        IndicatorType::Ipv4,
        "203.0.113.9",
        now,
        Tlp::Green,
        &[],
    );
    store
        .accept(&bundle(&f, &f.berlin, &[theirs]), &local(&f.berlin.id), now)
        .unwrap();
    let query = ItemQuery {
        value: Some("203.0.113.9".into()),
        ..Default::default()
    };
    let seen: Vec<ItemId> = pages(&store, &query, 1, now, &|_| true)
        .iter()
        .flat_map(|p| &p.items)
        .map(|s| s.item.id.clone())
        .collect();
    let unique: std::collections::BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!((seen.len(), unique.len()), (6, 6));
    // Superseding one of them with another value removes only that one from the entry.
    let moved = indicator(
        &items[2].id,
        IndicatorType::Ipv4,
        "203.0.113.10",
        now + 100,
        Tlp::Green,
        &[],
    );
    store
        .accept(&bundle(&f, &f.hq, &[moved]), &local(&f.hq.id), now)
        .unwrap();
    assert_eq!(all(&store, &query).len(), 5);
    assert_eq!(
        all(
            &store,
            &ItemQuery {
                value: Some("203.0.113.10".into()),
                ..Default::default()
            }
        )
        .len(),
        1
    );
}

/// Everything the store answers about `ids`, `values` and `bundles`, for comparing
/// a store with itself after a reopen.
fn answers(
    store: &SledStore,
    ids: &[ItemId],
    values: &[String],
    bundles: &[entente::model::BundleId],
) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(format!("get {id}: {:?}", store.get(id).unwrap()));
    }
    for value in values {
        let query = ItemQuery {
            value: Some(value.clone()),
            include_expired: true,
            ..Default::default()
        };
        let page = store
            .query(&query, None, PageLimit::items(1000), now_ms(), &|_| true)
            .unwrap();
        out.push(format!("value {value}: {:?}", page.items));
    }
    // A scan, page by page: the cursors and pages must come out the same too.
    let scan = ItemQuery {
        include_expired: true,
        ..Default::default()
    };
    for page in pages(store, &scan, 3, now_ms(), &|_| true) {
        out.push(format!("scan page {:?}: {:?}", page.next, page.items));
    }
    out.push(format!(
        "feed head {}: {:?}",
        store.feed_head(),
        store.feed(0, 10_000).unwrap()
    ));
    for id in bundles {
        let held = store.held_bundle(id).unwrap();
        out.push(format!(
            "bundle {id}: {:?}",
            held.map(|h| (h.header_bytes, h.signature, h.items.len(), h.items))
        ));
        out.push(format!(
            "header {id}: {:?}",
            store.bundle_header(id).unwrap()
        ));
    }
    out
}

#[test]
fn a_reopened_store_answers_exactly_as_before() {
    let f = fixture();
    for seed in 1..=4u64 {
        let dir = f.pki.path().join(format!("reopen-{seed}"));
        let mut rng = Lcg(seed);
        let now = now_ms();
        let ids: Vec<ItemId> = (0..12).map(|_| ItemId::new_random()).collect();
        let values: Vec<String> = (0..5).map(|v| format!("v{v}.example.org")).collect();
        let mut bundles = Vec::new();
        let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        for round in 0..25i64 {
            let by = if rng.below(4) == 0 { &f.berlin } else { &f.hq };
            let items: Vec<Item> = (0..1 + rng.below(5))
                .map(|_| {
                    let id = &ids[rng.below(ids.len() as u64) as usize];
                    let modified = now - 1_000 + 10 * round + rng.below(30) as i64;
                    if rng.below(6) == 0 {
                        Item {
                            id: id.clone(),
                            modified_ms: modified,
                            tlp: Tlp::Green,
                            tags: vec![],
                            kind: ItemKind::Revocation(Revocation {
                                indicator_type: IndicatorType::Domain,
                                reason: "withdrawn".into(),
                                indicator: None,
                            }),
                        }
                    } else {
                        let value = &values[rng.below(values.len() as u64) as usize];
                        indicator(
                            id,
                            IndicatorType::Domain,
                            value,
                            modified,
                            Tlp::Green,
                            &["t"],
                        )
                    }
                })
                .collect();
            // An id twice in one bundle is not what an origin signs: keep the first.
            let mut seen = std::collections::HashSet::new();
            let items: Vec<Item> = items
                .into_iter()
                .filter(|i| seen.insert(i.id.clone()))
                .collect();
            let full = bundle(&f, by, &items);
            bundles.push(full.header().bundle_id.clone());
            let far = Source {
                received_from: f.berlin.id.clone(),
                hops: 3,
            };
            // Part of it from far away first, then the rest, then all of it closer.
            let part = verify(
                &full.to_wire(|i| i.index % 2 == 0),
                &f.certs,
                &f.trust,
                now_ms(),
            )
            .unwrap();
            store.accept(&part, &far, now).unwrap();
            if rng.below(2) == 0 {
                store.accept(&full, &far, now).unwrap();
            }
            let near = Source {
                received_from: f.hq.id.clone(),
                hops: rng.below(3) as u32,
            };
            store.accept(&full, &near, now).unwrap();
        }
        store.flush().unwrap();
        let before = answers(&store, &ids, &values, &bundles);
        drop(store);
        let reopened = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        let after = answers(&reopened, &ids, &values, &bundles);
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!(b, a, "seed {seed}");
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_torn_write_at_the_end_of_the_log_loses_only_what_was_never_flushed() {
    let f = fixture();
    let pristine = f.pki.path().join("torn");
    let now = now_ms();
    let first = ItemId::new_random();
    let second = ItemId::new_random();
    let store = common::open_store(&pristine, &f.hq.id, 8 << 20).unwrap();
    let one = bundle(
        &f,
        &f.hq,
        &[indicator(
            &first,
            IndicatorType::Domain,
            "one.example",
            now,
            Tlp::Green,
            &[],
        )],
    );
    store.accept(&one, &local(&f.hq.id), now).unwrap();
    store.flush().unwrap();
    let log = pristine.join(entente::store::LOG_FILE);
    let flushed_len = std::fs::metadata(&log).unwrap().len() as usize;
    // Accepted, written, never flushed: never acknowledged.
    let two = bundle(
        &f,
        &f.hq,
        &[indicator(
            &second,
            IndicatorType::Domain,
            "two.example",
            now,
            Tlp::Green,
            &[],
        )],
    );
    store.accept(&two, &local(&f.hq.id), now).unwrap();
    drop(store);
    let full = std::fs::read(&log).unwrap();
    assert!(full.len() > flushed_len);

    // A crash or power loss part-way through the second bundle: every cut, and a
    // damaged byte in it.
    let mut damaged = full.clone();
    damaged[flushed_len + 30] ^= 0x40;
    let cases = (flushed_len..full.len())
        .step_by(5)
        .map(|cut| full[..cut].to_vec())
        .chain([damaged]);
    for (case, bytes) in cases.enumerate() {
        let dir = f.pki.path().join(format!("torn-{case}"));
        copy_dir(&pristine, &dir);
        std::fs::write(dir.join(entente::store::LOG_FILE), &bytes).unwrap();
        let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        assert!(store.get(&first).unwrap().is_some(), "case {case}");
        assert!(store.get(&second).unwrap().is_none(), "case {case}");
        assert_eq!(store.feed_head(), 1);
        let log_len = std::fs::metadata(dir.join(entente::store::LOG_FILE))
            .unwrap()
            .len();
        assert_eq!(log_len as usize, flushed_len, "case {case}");
        // The store goes on from there: the lost bundle arrives again and is kept,
        // at a feed position above any the lost write may have handed out.
        store.accept(&two, &local(&f.hq.id), now).unwrap();
        store.flush().unwrap();
        drop(store);
        let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        assert!(store.get(&second).unwrap().is_some(), "case {case}");
        assert!(store.feed_head() > 2, "case {case}");
        assert_eq!(store.feed(0, 10).unwrap().len(), 2);
        drop(store);
    }

    // Damage to what was acknowledged is not a torn write: the store refuses to
    // open and says where, rather than dropping what follows.
    let mut damaged = full.clone();
    damaged[flushed_len - 60] ^= 0x40; // in the bundle (the commit mark after it is not acknowledged)
    let dir = f.pki.path().join("torn-acknowledged");
    copy_dir(&pristine, &dir);
    std::fs::write(dir.join(entente::store::LOG_FILE), &damaged).unwrap();
    let err = common::open_store(&dir, &f.hq.id, 8 << 20).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(entente::store::LOG_FILE), "{err}");
    // So does a log that lost acknowledged bytes, or went missing.
    std::fs::write(
        dir.join(entente::store::LOG_FILE),
        &full[..flushed_len - 40],
    )
    .unwrap();
    assert!(matches!(
        common::open_store(&dir, &f.hq.id, 8 << 20),
        Err(StoreError::Corrupt { .. })
    ));
    std::fs::remove_file(dir.join(entente::store::LOG_FILE)).unwrap();
    assert!(matches!(
        common::open_store(&dir, &f.hq.id, 8 << 20),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn cursors_are_kept_only_with_the_bundles_they_count() {
    let f = fixture();
    let dir = f.pki.path().join("cursors");
    let now = now_ms();
    let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
    // A cursor is the peer's position token, kept as received.
    store.set_cursor(&f.berlin.id, &[7; 36]).unwrap();
    assert_eq!(store.cursor(&f.berlin.id).unwrap(), vec![7; 36]);
    // Longer than any token: refused.
    assert!(store.set_cursor(&f.berlin.id, &[7; 65]).is_err());
    let pulled = bundle(
        &f,
        &f.berlin,
        &[indicator(
            &ItemId::new_random(),
            IndicatorType::Domain,
            "pulled.example",
            now,
            Tlp::Green,
            &[],
        )],
    );
    let from_berlin = Source {
        received_from: f.berlin.id.clone(),
        hops: 1,
    };
    store.accept(&pulled, &from_berlin, now).unwrap();
    store.set_cursor(&f.berlin.id, &[8; 36]).unwrap();
    // Not flushed: neither the bundle nor the cursor counts yet.
    drop(store);
    let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
    assert!(store.cursor(&f.berlin.id).unwrap().is_empty());
    store.accept(&pulled, &from_berlin, now).unwrap();
    store.set_cursor(&f.berlin.id, &[8; 36]).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
    assert_eq!(store.cursor(&f.berlin.id).unwrap(), vec![8; 36]);
    assert_eq!(store.feed(0, 10).unwrap().len(), 1);
}

#[test]
fn a_store_of_an_older_format_is_refused_not_overwritten() {
    let f = fixture();
    let dir = f.pki.path().join("old-format");
    {
        let db = sled::open(&dir).unwrap();
        db.open_tree("entente.v2")
            .unwrap()
            .insert(b"Mowner", f.hq.id.as_str().as_bytes())
            .unwrap();
        db.flush().unwrap();
    }
    let err = common::open_store(&dir, &f.hq.id, 8 << 20).err().unwrap();
    assert!(matches!(err, StoreError::OldFormat { .. }), "{err}");
    assert!(err.to_string().contains("entente.v2"), "{err}");
    assert!(!dir.join(entente::store::LOG_FILE).exists());
}

#[test]
fn a_value_held_by_very_many_items_is_paged_in_bounded_calls() {
    let f = fixture();
    let store = open(&f, "many");
    let now = now_ms();
    let items: Vec<Item> = (0..2_500)
        .map(|i| {
            indicator(
                &ItemId::new_random(),
                IndicatorType::Domain,
                "shared.example",
                now + i,
                Tlp::Green,
                &[],
            )
        })
        .collect();
    store
        .accept(&bundle(&f, &f.hq, &items), &local(&f.hq.id), now)
        .unwrap();
    let query = ItemQuery {
        value: Some("shared.example".into()),
        ..Default::default()
    };
    // A caller who may see none of them: each call stops after a bounded number of
    // reads and hands back a cursor, until the end.
    let calls = pages(&store, &query, 10, now, &|_| false);
    assert!(calls.iter().all(|p| p.items.is_empty()));
    assert!((3..=4).contains(&calls.len()), "{} calls", calls.len());
    // A caller who may see them all gets each once, newest first.
    let seen: Vec<i64> = pages(&store, &query, 1_000, now, &|_| true)
        .iter()
        .flat_map(|p| &p.items)
        .map(|s| s.item.modified_ms)
        .collect();
    assert_eq!(seen.len(), 2_500);
    assert!(seen.windows(2).all(|w| w[0] > w[1]));
    // A cursor naming the head of a chain is the start; one naming a slot of
    // another value, or a chain the query does not have, is refused. (A cursor starts
    // with the log's generation, 0 here.)
    let from_head = store
        .query(
            &query,
            Some(&[0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            PageLimit::items(5),
            now,
            &|_| true,
        )
        .unwrap();
    let first = store
        .query(&query, None, PageLimit::items(5), now, &|_| true)
        .unwrap();
    assert_eq!(from_head, first);
    for bad in [
        &[0, 0, 0, 0, 9u8, 0, 0, 0, 1][..],
        &[0, 0, 0, 0, 0, 0, 0, 0x30, 0][..],
    ] {
        let refused = store.query(&query, Some(bad), PageLimit::items(5), now, &|_| true);
        assert!(matches!(refused, Err(StoreError::BadCursor)), "{bad:?}");
    }
}

/// What the rules say an item's latest version is, written from the text
/// (single writer, strictly newer versions, hop counts lowered by a shorter path),
/// not from the store's code.
#[derive(Clone, Debug, PartialEq)]
struct Latest {
    origin: NodeId,
    modified: i64,
    value: Option<String>,
    bundle: entente::model::BundleId,
    index: u32,
    hops: u32,
}

#[test]
fn the_store_agrees_with_a_model_of_the_rules_on_random_histories() {
    let f = fixture();
    for seed in 11..=16u64 {
        let dir = f.pki.path().join(format!("model-{seed}"));
        let store = open(&f, &format!("model-{seed}"));
        let mut rng = Lcg(seed);
        let now = now_ms();
        let ids: Vec<ItemId> = (0..8).map(|_| ItemId::new_random()).collect();
        let values: Vec<String> = (0..4).map(|v| format!("m{v}.example.net")).collect();
        let mut model: HashMap<ItemId, Latest> = HashMap::new();
        let mut known: std::collections::HashSet<(entente::model::BundleId, u32)> =
            Default::default();
        let mut history: Vec<VerifiedBundle> = Vec::new();
        for step in 0..60i64 {
            // Now and then a bundle seen before comes again, by another path.
            let (bundle_in, hops) = if !history.is_empty() && rng.below(4) == 0 {
                let old = history[rng.below(history.len() as u64) as usize].clone();
                (old, rng.below(4) as u32)
            } else {
                let by = if rng.below(3) == 0 { &f.berlin } else { &f.hq };
                let mut seen = std::collections::HashSet::new();
                let items: Vec<Item> = (0..1 + rng.below(4))
                    .map(|_| {
                        let id = ids[rng.below(ids.len() as u64) as usize].clone();
                        let modified = now - 10_000 + 100 * step + rng.below(300) as i64;
                        if rng.below(5) == 0 {
                            revocation(&id, modified)
                        } else {
                            let value = &values[rng.below(values.len() as u64) as usize];
                            indicator(&id, IndicatorType::Domain, value, modified, Tlp::Green, &[])
                        }
                    })
                    .filter(|i| seen.insert(i.id.clone()))
                    .collect();
                let full = bundle(&f, by, &items);
                history.push(full.clone());
                (full, rng.below(4) as u32)
            };
            // Sometimes only part of it is disclosed.
            let bundle_in = if rng.below(3) == 0 {
                let keep = rng.below(2) as u32;
                verify(
                    &bundle_in.to_wire(|i| i.index % 2 == keep),
                    &f.certs,
                    &f.trust,
                    now_ms(),
                )
                .unwrap()
            } else {
                bundle_in
            };
            let source = Source {
                received_from: f.berlin.id.clone(),
                hops,
            };
            store.accept(&bundle_in, &source, now).unwrap();

            // The model.
            let header = bundle_in.header();
            for verified in bundle_in.items() {
                let item = &verified.item;
                let here = (header.bundle_id.clone(), verified.index);
                if known.contains(&here) {
                    if let Some(latest) = model.get_mut(&item.id) {
                        if (latest.bundle.clone(), latest.index) == here && hops < latest.hops {
                            latest.hops = hops;
                        }
                    }
                    continue;
                }
                if let Some(held) = model.get(&item.id) {
                    if held.origin != header.origin || item.modified_ms <= held.modified {
                        continue;
                    }
                }
                known.insert(here);
                model.insert(
                    item.id.clone(),
                    Latest {
                        origin: header.origin.clone(),
                        modified: item.modified_ms,
                        value: item.value().map(str::to_owned),
                        bundle: header.bundle_id.clone(),
                        index: verified.index,
                        hops,
                    },
                );
            }

            let check = |store: &SledStore, when: &str| {
                for id in &ids {
                    let got = store.get(id).unwrap().map(|s| Latest {
                        origin: s.origin,
                        modified: s.item.modified_ms,
                        value: s.item.value().map(str::to_owned),
                        bundle: s.bundle_id,
                        index: s.index,
                        hops: s.hops,
                    });
                    assert_eq!(
                        got.as_ref(),
                        model.get(id),
                        "seed {seed} step {step} {when}: {id}"
                    );
                }
                for value in &values {
                    let query = ItemQuery {
                        value: Some(value.clone()),
                        include_expired: true,
                        ..Default::default()
                    };
                    let page = store
                        .query(&query, None, PageLimit::items(100), now, &|_| true)
                        .unwrap();
                    let got: std::collections::BTreeSet<String> =
                        page.items.iter().map(|s| s.item.id.to_string()).collect();
                    let expected: std::collections::BTreeSet<String> = model
                        .iter()
                        .filter(|(_, l)| l.value.as_deref() == Some(value.as_str()))
                        .map(|(id, _)| id.to_string())
                        .collect();
                    assert_eq!(got, expected, "seed {seed} step {step} {when}: {value}");
                }
            };
            check(&store, "live");
        }
        store.flush().unwrap();
        drop(store);
        let reopened = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        for id in &ids {
            let got = reopened
                .get(id)
                .unwrap()
                .map(|s| (s.bundle_id, s.index, s.hops));
            let expected = model.get(id).map(|l| (l.bundle.clone(), l.index, l.hops));
            assert_eq!(got, expected, "seed {seed} after reopen: {id}");
        }
    }
}

/// The bundles of the change feed after `after`, in order.
fn feed_bundles(store: &SledStore, after: u64) -> Vec<(u64, entente::model::BundleId)> {
    store.feed(after, 1000).unwrap()
}

#[test]
fn an_object_that_waited_for_what_it_references_is_fed_again_once_all_of_it_arrives() {
    let f = fixture();
    let path = f.pki.path().join("s");
    let store = open(&f, "s");
    let now = now_ms();
    let domain = |name: &str| fresh_domain(name, now);
    let (x, y, z) = (
        domain("x.example"),
        domain("y.example"),
        domain("z.example"),
    );
    let related = context_id("relationship");
    let related_too = context_id("relationship");
    let report = context_id("report");
    let us = local(&f.hq.id);

    // A relationship before both its ends, beside an indicator of its own.
    let b1 = bundle(
        &f,
        &f.hq,
        &[context(&related, &[&x.id, &y.id], now), domain("w.example")],
    );
    assert_eq!(store.accept(&b1, &us, now).unwrap().feed_seq, Some(1));
    // One end: the relationship still waits for the other.
    let b2 = bundle(&f, &f.hq, std::slice::from_ref(&x));
    let r2 = store.accept(&b2, &us, now).unwrap();
    assert_eq!((r2.feed_seq, r2.offered_again), (Some(2), 0));
    // The other end: the relationship's bundle comes again, in the same write, just
    // before it (a partner reading it finds its ends held).
    let b3 = bundle(&f, &f.hq, std::slice::from_ref(&y));
    let r3 = store.accept(&b3, &us, now + 1_000).unwrap();
    assert_eq!((r3.feed_seq, r3.offered_again), (Some(4), 1));
    let b1_id = b1.header().bundle_id.clone();
    let b3_id = b3.header().bundle_id.clone();
    assert_eq!(
        feed_bundles(&store, 1),
        vec![
            (2, b2.header().bundle_id.clone()),
            (3, b1_id.clone()),
            (4, b3_id.clone())
        ]
    );
    // The relationship is recorded again in its bundle, as accepted when its last end
    // came, and is still one version.
    assert_eq!(
        store.get(&related).unwrap().unwrap().accepted_ms,
        now + 1_000
    );
    assert_eq!(store.versions(&related, 10).unwrap().len(), 1);
    // The same end again brings nothing new: nothing is offered again.
    let again = store.accept(&b3, &us, now).unwrap();
    assert_eq!((again.feed_seq, again.offered_again), (None, 0));

    // Two levels: a report of a relationship that waits for its end `z`.
    let b4 = bundle(&f, &f.hq, &[context(&report, &[&related_too], now)]);
    assert_eq!(store.accept(&b4, &us, now).unwrap().offered_again, 0);
    let b5 = bundle(&f, &f.hq, &[context(&related_too, &[&x.id, &z.id], now)]);
    // The relationship is held now, but not all it references: the report still waits.
    assert_eq!(store.accept(&b5, &us, now).unwrap().offered_again, 0);
    let b6 = bundle(&f, &f.hq, std::slice::from_ref(&z));
    let r6 = store.accept(&b6, &us, now).unwrap();
    assert_eq!(r6.offered_again, 2);
    let tail: Vec<entente::model::BundleId> = feed_bundles(&store, 6)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert_eq!(
        tail,
        vec![
            b5.header().bundle_id.clone(),
            b4.header().bundle_id.clone(),
            b6.header().bundle_id.clone()
        ]
    );
    let before = feed_bundles(&store, 0);

    // The feed reads the same after a restart and after a compaction.
    drop(store);
    let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
    assert_eq!(feed_bundles(&store, 0), before);
    store
        .compact(entente::store::compact::Compaction::default())
        .unwrap();
    assert_eq!(feed_bundles(&store, 0), before);
    drop(store);
    let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
    assert_eq!(feed_bundles(&store, 0), before);
    // And what waits is still known: a relationship sent ahead of a new end is fed
    // again when that end arrives.
    let late = domain("late.example");
    let related_late = context_id("relationship");
    let b7 = bundle(
        &f,
        &f.hq,
        &[context(&related_late, &[&x.id, &late.id], now)],
    );
    store.accept(&b7, &us, now).unwrap();
    let b8 = bundle(&f, &f.hq, std::slice::from_ref(&late));
    assert_eq!(store.accept(&b8, &us, now).unwrap().offered_again, 1);
    assert_eq!(feed_before_last(&store), b7.header().bundle_id.clone());
}

/// The bundle at the head of the feed.
fn feed_last(store: &SledStore) -> entente::model::BundleId {
    feed_bundles(store, 0).pop().unwrap().1
}

/// The bundle just before the head of the feed: where what waited for the last
/// bundle accepted is offered again.
fn feed_before_last(store: &SledStore) -> entente::model::BundleId {
    let mut feed = feed_bundles(store, 0);
    feed.pop();
    feed.pop().unwrap().1
}

/// A store of this node's, the time, its own source and a GREEN domain indicator `x`
/// (held by the store with [`held_x`], not yet with [`with_x`]).
struct Held {
    f: Fixture,
    store: SledStore,
    now: i64,
    us: Source,
    x: Item,
}

fn with_x() -> Held {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let us = local(&f.hq.id);
    let x = fresh_domain("x.example", now);
    Held {
        f,
        store,
        now,
        us,
        x,
    }
}

fn held_x() -> Held {
    let held = with_x();
    held.store
        .accept(
            &bundle(&held.f, &held.f.hq, std::slice::from_ref(&held.x)),
            &held.us,
            held.now,
        )
        .unwrap();
    held
}

#[test]
fn a_report_is_fed_again_when_a_new_version_of_its_relationship_completes_it() {
    let Held {
        f,
        store,
        now,
        us,
        x,
    } = with_x();
    let never = context_id("malware");
    let related = context_id("relationship");
    let report = context_id("report");
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&x)), &us, now)
        .unwrap();
    // The relationship names an end that never comes; the report of it waits.
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&related, &[&x.id, &never], now)]),
            &us,
            now,
        )
        .unwrap();
    let of_report = bundle(&f, &f.hq, &[context(&report, &[&related], now)]);
    store.accept(&of_report, &us, now).unwrap();
    // Its origin corrects the relationship: its new end comes with it. The report now
    // has everything it references, two levels deep.
    let y = fresh_domain("y.example", now);
    let corrected = bundle(&f, &f.hq, &[context(&related, &[&x.id, &y.id], now + 1), y]);
    let r = store.accept(&corrected, &us, now).unwrap();
    assert_eq!(r.stored.len(), 2);
    assert_eq!(
        feed_before_last(&store),
        of_report.header().bundle_id.clone(),
        "the report that waited was not offered again ({} offered)",
        r.offered_again
    );
}

#[test]
fn a_relationship_is_fed_again_when_its_end_returns_after_a_compaction_dropped_it() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let day = 24 * 3600 * 1000;
    let us = local(&f.hq.id);
    // An end that expired long ago: a compaction drops it.
    let mut x = fresh_domain("x.example", now - 40 * day);
    if let ItemKind::Indicator(i) = &mut x.kind {
        i.valid_from_ms = now - 60 * day;
        i.valid_until_ms = Some(now - 40 * day);
    }
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&x)), &us, now)
        .unwrap();
    let done = store
        .compact(entente::store::compact::Compaction::default())
        .unwrap();
    assert_eq!(done.expired_dropped, 1);
    // A relationship to it arrives: not held, so it waits.
    let related = context_id("relationship");
    let y = fresh_domain("y.example", now);
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&y)), &us, now)
        .unwrap();
    let rel = bundle(&f, &f.hq, &[context(&related, &[&x.id, &y.id], now)]);
    store.accept(&rel, &us, now).unwrap();
    // Its origin renews the end: it is held again, and the relationship has both ends.
    let mut renewed = x.clone();
    renewed.modified_ms = now;
    if let ItemKind::Indicator(i) = &mut renewed.kind {
        i.valid_until_ms = None;
    }
    let r = store
        .accept(&bundle(&f, &f.hq, &[renewed]), &us, now)
        .unwrap();
    assert_eq!(r.stored.len(), 1);
    assert!(store.get(&x.id).unwrap().is_some());
    assert_eq!(
        feed_before_last(&store),
        rel.header().bundle_id.clone(),
        "the relationship that waited for its end was not offered again"
    );
}

#[test]
fn an_object_complete_already_is_not_fed_again_for_ids_an_older_version_named() {
    let Held {
        f,
        store,
        now,
        us,
        x,
    } = held_x();
    // A report naming many objects not held, then a version naming only `x`: complete,
    // and at the head of the feed already (in a bundle as large as its origin likes).
    let report = context_id("report");
    let named: Vec<Item> = (0..20)
        .map(|n| fresh_domain(&format!("n{n}.example"), now))
        .collect();
    let mut refs: Vec<&ItemId> = named.iter().map(|i| &i.id).collect();
    refs.push(&x.id);
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&report, &refs, now)]),
            &us,
            now,
        )
        .unwrap();
    let complete = bundle(&f, &f.hq, &[context(&report, &[&x.id], now + 1)]);
    store.accept(&complete, &us, now).unwrap();
    assert_eq!(feed_last(&store), complete.header().bundle_id.clone());
    // Each object the old version named, arriving alone, moves nothing that waited.
    let mut offered = 0;
    let mut waited = 0;
    for item in &named {
        let r = store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(item)), &us, now)
            .unwrap();
        offered += r.offered_again;
        waited += r.waited.len();
    }
    assert_eq!(
        (offered, waited),
        (0, 0),
        "a report that waited for nothing was offered again {offered} times"
    );
}

/// Opening a store replays its log; how long that takes for `k` relationships to one
/// object, each in two versions, should grow about linearly with `k`. Run by hand
/// (`--ignored --nocapture`): it prints the times.
#[test]
#[ignore]
fn reopening_with_many_versioned_relationships_to_one_object_takes_linear_time() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let target = fresh_domain("popular.example", now);
    // With `SPREAD` set, each relationship names objects of its own (for comparison).
    let spread = std::env::var_os("SPREAD").is_some();
    let mut times = Vec::new();
    for k in [10_000usize, 20_000, 40_000] {
        let name = format!("k{k}-{spread}");
        let path = f.pki.path().join(&name);
        let store = open(&f, &name);
        store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(&target)), &us, now)
            .unwrap();
        let ids: Vec<ItemId> = (0..k).map(|_| context_id("relationship")).collect();
        let other = fresh_domain("other.example", now);
        store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(&other)), &us, now)
            .unwrap();
        let ends: Vec<Option<(ItemId, ItemId)>> = (0..k)
            .map(|_| spread.then(|| (context_id("malware"), context_id("tool"))))
            .collect();
        for version in 0..2 {
            let items: Vec<Item> = ids
                .iter()
                .zip(&ends)
                .map(|(id, end)| match end {
                    // Each relationship to objects of its own: no object referenced by many.
                    Some((one, two)) => context(id, &[one, two], now + version),
                    None => context(id, &[&target.id, &other.id], now + version),
                })
                .collect();
            for chunk in items.chunks(5_000) {
                store.accept(&bundle(&f, &f.hq, chunk), &us, now).unwrap();
            }
        }
        store.flush().unwrap();
        drop(store);
        let started = std::time::Instant::now();
        let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
        let took = started.elapsed();
        drop(store);
        eprintln!("{k} relationships, two versions each: reopened in {took:?}");
        times.push(took.as_secs_f64());
    }
    // Four times the relationships: well under sixteen times as long if linear.
    assert!(
        times[2] < times[0] * 8.0,
        "reopen times grow faster than linearly: {times:?}"
    );
}

#[test]
fn an_object_of_another_type_under_a_referenced_uuid_does_not_feed_the_referrer_again() {
    let Held {
        f,
        store,
        now,
        us,
        x,
    } = held_x();
    // A relationship to a malware object not held: it waits for `malware--U`.
    let malware = context_id("malware");
    let related = context_id("relationship");
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&related, &[&x.id, &malware], now)]),
            &us,
            now,
        )
        .unwrap();
    // Anyone may publish an indicator under the same UUID: it is not `malware--U`, the
    // relationship still waits (and now always will: the UUID is taken), so nothing
    // should be fed again.
    let same_uuid = ItemId::parse(&format!(
        "indicator--{}",
        malware.as_str().split_once("--").unwrap().1
    ))
    .unwrap();
    let squatter = indicator(
        &same_uuid,
        IndicatorType::Domain,
        "squat.example",
        now,
        Tlp::Green,
        &[],
    );
    let r = store
        .accept(&bundle(&f, &f.hq, &[squatter]), &us, now)
        .unwrap();
    assert_eq!(r.stored.len(), 1);
    assert_eq!(
        (r.offered_again, r.waited.len()),
        (0, 0),
        "an object still waiting was offered again"
    );
}

#[test]
fn a_store_recovered_from_its_log_keeps_the_places_objects_were_fed_again_at() {
    let f = fixture();
    let path = f.pki.path().join("s");
    let store = open(&f, "s");
    let now = now_ms();
    let us = local(&f.hq.id);
    let x = fresh_domain("x.example", now);
    let y = fresh_domain("y.example", now);
    let related = context_id("relationship");
    let report = context_id("report");
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&report, &[&related], now)]),
            &us,
            now,
        )
        .unwrap();
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&related, &[&x.id, &y.id], now)]),
            &us,
            now,
        )
        .unwrap();
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&x)), &us, now)
        .unwrap();
    let r = store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&y)), &us, now)
        .unwrap();
    assert_eq!(r.offered_again, 2);
    store.flush().unwrap();
    let before = feed_bundles(&store, 0);
    drop(store);
    common::remove_sled(&path);
    let recovered = entente::store::recover::recover(&path, &f.hq.id, 16 << 20, false).unwrap();
    assert_eq!(recovered.feed_head, before.last().unwrap().0);
    let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
    assert_eq!(feed_bundles(&store, 0), before);
    // Positions go on above every one handed out, and what waits is still known.
    let late = fresh_domain("late.example", now);
    let waits = bundle(
        &f,
        &f.hq,
        &[context(
            &context_id("relationship"),
            &[&x.id, &late.id],
            now,
        )],
    );
    store.accept(&waits, &us, now).unwrap();
    let r = store.accept(&bundle(&f, &f.hq, &[late]), &us, now).unwrap();
    assert_eq!(r.offered_again, 1);
    let after = feed_bundles(&store, 0);
    assert!(after.len() == before.len() + 2);
    assert!(after[before.len()].0 > before.last().unwrap().0);
    assert_eq!(after[after.len() - 2].1, waits.header().bundle_id.clone());
}

/// A store rebuilt from its log has lost what each client's TAXII listings last saw. A
/// client recorded before the loss, or never, then counts as seen under an unknown
/// policy, so the engine dates its listings again from its next request: a client whose
/// policy a reload widened just before the loss still receives what the widening let
/// through on its next `added_after` poll. A store never rebuilt says a client was
/// never seen (its first policy counts from the start).
#[test]
fn a_store_rebuilt_from_its_log_knows_of_no_client_listing_under_the_policy_in_force() {
    let f = fixture();
    let path = f.pki.path().join("s");
    let store = open(&f, "s");
    let now = now_ms();
    store
        .accept(
            &bundle(&f, &f.hq, &[fresh_domain("x.example", now)]),
            &local(&f.hq.id),
            now,
        )
        .unwrap();
    assert_eq!(store.listed_since(&f.berlin.id).unwrap(), None);
    store.set_listed_since(&f.berlin.id, &[7; 32], 5).unwrap();
    store.flush().unwrap();
    drop(store);
    common::remove_sled(&path);
    entente::store::recover::recover(&path, &f.hq.id, 16 << 20, false).unwrap();
    let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
    for client in [&f.berlin.id, &f.hq.id] {
        assert_eq!(
            store.listed_since(client).unwrap(),
            Some((entente::store::UNKNOWN_POLICY, 0)),
            "{client}"
        );
    }
    // What the engine records after the rebuild is read back as recorded.
    store.set_listed_since(&f.berlin.id, &[7; 32], 9).unwrap();
    assert_eq!(
        store.listed_since(&f.berlin.id).unwrap(),
        Some(([7; 32], 9))
    );
}

/// A relationship that came in a bundle whose other items were withheld waits for its
/// ends; when the same bundle comes again with them, the relationship is recorded
/// again in that bundle's frame, as accepted then.
#[test]
fn a_relationship_whose_ends_come_later_in_its_own_bundle_is_recorded_again_with_them() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let domain = |name: &str| fresh_domain(name, now);
    let (x, y) = (domain("x.example"), domain("y.example"));
    let related = context_id("relationship");
    let full = bundle(&f, &f.hq, &[context(&related, &[&x.id, &y.id], now), x, y]);
    let part = |keep: &[u32]| disclosing(&f, &full, keep, now);
    let via = Source {
        received_from: f.berlin.id.clone(),
        hops: 1,
    };
    let first = store.accept(&part(&[0]), &via, now).unwrap();
    assert_eq!((first.stored.len(), first.waited.len()), (1, 0));
    let whole = store.accept(&part(&[0, 1, 2]), &via, now + 1_000).unwrap();
    assert_eq!(whole.stored, vec![1, 2]);
    assert_eq!(whole.offered_again, 0);
    assert_eq!(
        whole
            .waited
            .iter()
            .map(|s| s.item.id.clone())
            .collect::<Vec<_>>(),
        vec![related.clone()]
    );
    assert_eq!(
        store.get(&related).unwrap().unwrap().accepted_ms,
        now + 1_000
    );
    assert_eq!(
        feed_bundles(&store, 0),
        vec![(2, full.header().bundle_id.clone())]
    );
}

/// An origin that flips one relationship between a complete and an incomplete pair
/// of ends, one small item a version, must not make the store write every report of
/// that relationship again at each flip: what a bundle makes the store write should
/// stay in proportion to what it brings.
#[test]
fn flipping_one_relationship_does_not_record_every_report_of_it_again_each_time() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let us = local(&f.hq.id);
    let (a, b) = (
        fresh_domain("a.example", now),
        fresh_domain("b.example", now),
    );
    store
        .accept(&bundle(&f, &f.hq, &[a.clone(), b.clone()]), &us, now)
        .unwrap();
    let related = context_id("relationship");
    store
        .accept(
            &bundle(&f, &f.hq, &[context(&related, &[&a.id, &b.id], now)]),
            &us,
            now,
        )
        .unwrap();
    // Reports of it, each in a bundle of its own (sent once).
    const REPORTS: usize = 40;
    for _ in 0..REPORTS {
        let report = context(&context_id("report"), &[&related], now);
        store
            .accept(&bundle(&f, &f.hq, &[report]), &us, now)
            .unwrap();
    }
    // Flip: an end never held, then the complete pair again.
    const FLIPS: i64 = 10;
    let never = context_id("malware");
    let (mut rerecorded, mut moved) = (0usize, 0usize);
    for flip in 0..FLIPS {
        let away = context(&related, &[&a.id, &never], now + 2 * flip + 1);
        let r = store.accept(&bundle(&f, &f.hq, &[away]), &us, now).unwrap();
        rerecorded += r.waited.len();
        moved += r.offered_again;
        let back = context(&related, &[&a.id, &b.id], now + 2 * flip + 2);
        let r = store.accept(&bundle(&f, &f.hq, &[back]), &us, now).unwrap();
        rerecorded += r.waited.len();
        moved += r.offered_again;
    }
    // 2 * FLIPS one-item bundles were sent.
    assert!(
        rerecorded <= REPORTS,
        "{} one-item bundles made the store record {rerecorded} reports again and move \
         {moved} bundles to the head of the feed",
        2 * FLIPS
    );
}

/// `referrers` keeps one entry per version that names an id again, and `waiting`
/// walks the referrers of each referrer without removing repeats: after many
/// versions that flip what they name, one small item must still be accepted quickly.
#[test]
fn versions_flipping_their_references_do_not_make_later_accepts_slow() {
    let f = fixture();
    let store = open(&f, "s");
    let now = now_ms();
    let us = local(&f.hq.id);
    let a = fresh_domain("a.example", now);
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&a)), &us, now)
        .unwrap();
    let (t, x, r) = (
        context_id("report"),
        context_id("relationship"),
        context_id("report"),
    );
    let (c, d, e) = (
        context_id("malware"),
        context_id("tool"),
        context_id("campaign"),
    );
    store
        .accept(&bundle(&f, &f.hq, &[context(&t, &[&a.id], now)]), &us, now)
        .unwrap();
    // Time of one flip of `t` now, while nothing repeats.
    let flip_t = |n: i64| {
        let refs: Vec<&ItemId> = if n % 2 == 0 {
            vec![&a.id]
        } else {
            vec![&a.id, &e]
        };
        let started = std::time::Instant::now();
        store
            .accept(&bundle(&f, &f.hq, &[context(&t, &refs, now + n)]), &us, now)
            .unwrap();
        started.elapsed()
    };
    let baseline = (1..4).map(flip_t).max().unwrap();
    // `x` flips between naming `t` and `c`; `r` between naming `x` and `d`: each
    // version names one id again, in bundles of a few thousand versions.
    const VERSIONS: i64 = 3_000;
    for (id, one, other) in [(&x, &t, &c), (&r, &x, &d)] {
        let items: Vec<Item> = (0..VERSIONS)
            .map(|v| {
                let named = if v % 2 == 0 { one } else { other };
                context(id, &[&a.id, named], now + 10 + v)
            })
            .collect();
        for chunk in items.chunks(1_000) {
            let rep = store.accept(&bundle(&f, &f.hq, chunk), &us, now).unwrap();
            assert_eq!(rep.stored.len(), chunk.len());
        }
    }
    let slow = (4..7).map(flip_t).max().unwrap();
    assert!(
        slow < baseline * 20 + std::time::Duration::from_millis(200),
        "one small item took {slow:?} to accept, against {baseline:?} before \
         {VERSIONS} versions each of two objects"
    );
}

/// The frames that record again what waited for a bundle and the bundle's own frame
/// are one write, but a crash may keep only the first of them. Whatever is kept, once
/// the bundle comes again (it was never acknowledged, so its sender sends it again), a
/// partner that had read the feed up to the last flush is served the relationship that
/// waited: it must never be left behind every partner's place in the feed for good.
#[test]
fn a_torn_write_never_keeps_an_end_without_offering_again_what_waited_for_it() {
    let f = fixture();
    let pristine = f.pki.path().join("torn");
    let now = now_ms();
    let us = local(&f.hq.id);
    let store = common::open_store(&pristine, &f.hq.id, 8 << 20).unwrap();
    let (a, b) = (
        fresh_domain("a.example", now),
        fresh_domain("b.example", now),
    );
    let related = context_id("relationship");
    let waits = bundle(&f, &f.hq, &[context(&related, &[&a.id, &b.id], now)]);
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&a)), &us, now)
        .unwrap();
    store.accept(&waits, &us, now).unwrap();
    store.flush().unwrap();
    let flushed_head = store.feed_head();
    let log = pristine.join(entente::store::LOG_FILE);
    let flushed_len = std::fs::metadata(&log).unwrap().len() as usize;
    // The end arrives: the relationship's bundle is offered again in the same write.
    let end = bundle(&f, &f.hq, std::slice::from_ref(&b));
    let r = store.accept(&end, &us, now).unwrap();
    assert_eq!(r.offered_again, 1);
    drop(store);
    let full = std::fs::read(&log).unwrap();
    assert!(full.len() > flushed_len);
    let mut kept_end_only = Vec::new();
    for cut in flushed_len..=full.len() {
        let dir = f.pki.path().join(format!("torn-{cut}"));
        copy_dir(&pristine, &dir);
        std::fs::write(dir.join(entente::store::LOG_FILE), &full[..cut]).unwrap();
        let store = common::open_store(&dir, &f.hq.id, 8 << 20).unwrap();
        if store.get(&b.id).unwrap().is_some() {
            // The peer that sent the end may send it again: that must be enough.
            store.accept(&end, &us, now).unwrap();
            let read_on = feed_bundles(&store, flushed_head);
            if !read_on.iter().any(|(_, b)| *b == waits.header().bundle_id) {
                kept_end_only.push(cut);
            }
        }
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    assert!(
        kept_end_only.is_empty(),
        "{} cuts of the log (of {} bytes written) keep the end but leave the relationship \
         behind a partner that had read up to the last flush, first at byte {:?}",
        kept_end_only.len(),
        full.len() - flushed_len,
        kept_end_only.first()
    );
}

/// The key that seals the feed positions given to partners lives in the store
/// directory beside the store, and neither a compaction nor a recovery of the store
/// touches it: tokens partners hold still open.
#[test]
fn the_feed_position_key_outlives_a_compaction_and_a_recovery() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let path = f.pki.path().join("position-key");
    let store = common::open_store(&path, &f.hq.id, 16 << 20).unwrap();
    let token = entente::sync::PositionTokens::load_or_create(&path)
        .unwrap()
        .seal(&f.berlin.id, &[7; 32], 1)
        .unwrap();
    let opens = || {
        entente::sync::PositionTokens::load_or_create(&path)
            .unwrap()
            .open(&f.berlin.id, &[7; 32], &token)
    };
    store
        .accept(
            &bundle(&f, &f.hq, &[fresh_domain("kept.example", now)]),
            &us,
            now,
        )
        .unwrap();
    store.flush().unwrap();
    store
        .compact(entente::store::compact::Compaction::default())
        .unwrap();
    assert_eq!(opens(), Some(1));
    drop(store);
    common::remove_sled(&path);
    entente::store::recover::recover(&path, &f.hq.id, 16 << 20, false).unwrap();
    assert_eq!(opens(), Some(1));
}
