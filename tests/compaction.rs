//! Compaction of the bundle log, on random histories of real signed bundles: what a
//! compacted store answers is what it answered before, less exactly what compaction
//! drops (superseded versions, indicators expired past the retention, bundles left
//! with nothing); every kept bundle still verifies; feed positions do not move; a
//! store that compacted and one that did not take later bundles the same way; a crash
//! at each step of the swap leaves a store that opens with nothing lost; and writes go
//! on while a compaction runs.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use common::signed::{Fixture, Lcg, bundle, fixture, indicator, revocation};
use entente::crypto::{VerifiedBundle, verify};
use entente::engine::now_ms;
use entente::model::{IndicatorType, Item, ItemId, ItemKind, Tlp};
use entente::store::compact::{Compaction, Stop};
use entente::store::prelude::*;
use entente::store::{ItemQuery, PageLimit, SledStore, Source, StoreError};

const DAY: i64 = 24 * 3600 * 1000;

fn open(dir: &Path, f: &Fixture) -> SledStore {
    common::open_store(dir, &f.hq.id, 16 << 20).unwrap()
}

/// A bundle as held: signed header, signature, and each item passed on (index in the
/// bundle, salt, bytes).
type Held = (Vec<u8>, Vec<u8>, Vec<(u32, Vec<u8>, Vec<u8>)>);

/// What a store answers, without page cursors (a compaction numbers slots anew).
#[derive(Debug, PartialEq, Eq, Clone)]
struct View {
    /// By id: the item held and its provenance, as `get` gives them.
    gets: BTreeMap<String, String>,
    /// By value: the ids a value query finds.
    values: BTreeMap<String, BTreeSet<String>>,
    /// Every item a scan finds, page by page.
    scan: BTreeSet<String>,
    /// The change feed: position and bundle.
    feed: Vec<(u64, String)>,
    /// Per bundle in the feed: its signed header, signature and the items passed on.
    bundles: BTreeMap<String, Held>,
}

fn view(store: &SledStore, ids: &[ItemId], values: &[String]) -> View {
    let now = now_ms();
    let mut gets = BTreeMap::new();
    for id in ids {
        if let Some(stored) = store.get(id).unwrap() {
            gets.insert(id.to_string(), format!("{stored:?}"));
        }
    }
    let every_page = |query: &ItemQuery| {
        let mut found = BTreeSet::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store
                .query(query, after.as_deref(), PageLimit::items(2), now, &|_| true)
                .unwrap();
            found.extend(page.items.iter().map(|s| format!("{:?}", s.item)));
            match page.next {
                Some(next) => after = Some(next),
                None => return found,
            }
        }
    };
    let mut by_value = BTreeMap::new();
    for value in values {
        by_value.insert(
            value.clone(),
            every_page(&ItemQuery {
                value: Some(value.clone()),
                include_expired: true,
                ..Default::default()
            }),
        );
    }
    let scan = every_page(&ItemQuery {
        include_expired: true,
        ..Default::default()
    });
    let feed: Vec<(u64, String)> = store
        .feed(0, 1_000_000)
        .unwrap()
        .into_iter()
        .map(|(seq, id)| (seq, id.to_string()))
        .collect();
    let mut bundles = BTreeMap::new();
    for (_, id) in store.feed(0, 1_000_000).unwrap() {
        let held = store
            .held_bundle(&id)
            .unwrap()
            .expect("a bundle in the feed is held");
        bundles.insert(
            id.to_string(),
            (
                held.header_bytes,
                held.signature,
                held.items
                    .into_iter()
                    .map(|i| (i.index, i.salt, i.item_bytes))
                    .collect(),
            ),
        );
    }
    View {
        gets,
        values: by_value,
        scan,
        feed,
        bundles,
    }
}

/// What `before` should become once the items with ids in `dropped` are gone: bundles
/// left with nothing leave the feed.
fn without(before: &View, dropped: &HashSet<String>) -> View {
    let mut after = before.clone();
    let gone = |text: &String| dropped.iter().any(|id| text.contains(id.as_str()));
    after.gets.retain(|id, _| !dropped.contains(id));
    for found in after.values.values_mut() {
        found.retain(|item| !gone(item));
    }
    after.scan.retain(|item| !gone(item));
    for (_, _, items) in after.bundles.values_mut() {
        items.retain(|(_, _, bytes)| {
            let text = String::from_utf8_lossy(bytes);
            !dropped.iter().any(|id| text.contains(id.as_str()))
        });
    }
    after.bundles.retain(|_, (_, _, items)| !items.is_empty());
    let kept = after.bundles.clone();
    after.feed.retain(|(_, id)| kept.contains_key(id));
    after
}

/// A random history: versions, revocations, indicators expired long ago or lately,
/// bundles disclosed in part, and bundles seen before coming again by other paths.
struct History {
    ids: Vec<ItemId>,
    values: Vec<String>,
    bundles: Vec<(VerifiedBundle, Source)>,
    /// Ids whose latest version is an indicator expired more than 30 days ago.
    long_expired: HashSet<String>,
}

fn history(f: &Fixture, seed: u64, steps: i64, with_expired: bool) -> History {
    let mut rng = Lcg(seed);
    let now = now_ms();
    let ids: Vec<ItemId> = (0..10).map(|_| ItemId::new_random()).collect();
    let values: Vec<String> = (0..4).map(|v| format!("c{v}.compaction.example")).collect();
    let mut bundles: Vec<(VerifiedBundle, Source)> = Vec::new();
    let mut signed: Vec<VerifiedBundle> = Vec::new();
    for step in 0..steps {
        let full = if !signed.is_empty() && rng.below(4) == 0 {
            signed[rng.below(signed.len() as u64) as usize].clone()
        } else {
            let mut seen = HashSet::new();
            let items: Vec<Item> = (0..1 + rng.below(4))
                .map(|_| {
                    // hq writes ids 0..5, berlin 5..10: each id has one origin.
                    let at = rng.below(ids.len() as u64) as usize;
                    let id = ids[at].clone();
                    let modified = now - 10_000 + 100 * step + rng.below(90) as i64;
                    if rng.below(6) == 0 {
                        revocation(&id, modified)
                    } else {
                        let value = &values[rng.below(values.len() as u64) as usize];
                        let mut item =
                            indicator(&id, IndicatorType::Domain, value, modified, Tlp::Green, &[]);
                        if with_expired && let ItemKind::Indicator(i) = &mut item.kind {
                            i.valid_until_ms = match rng.below(5) {
                                0 => Some(now - 40 * DAY),
                                1 => Some(now - DAY),
                                _ => None,
                            };
                            i.valid_from_ms = modified - 90 * DAY;
                        }
                        item
                    }
                })
                .filter(|i| seen.insert(i.id.clone()))
                .collect();
            let by_hq: Vec<Item> = items
                .iter()
                .filter(|i| ids[..5].contains(&i.id))
                .cloned()
                .collect();
            let by_berlin: Vec<Item> = items
                .iter()
                .filter(|i| ids[5..].contains(&i.id))
                .cloned()
                .collect();
            let (by, items) = if by_hq.len() >= by_berlin.len() {
                (&f.hq, by_hq)
            } else {
                (&f.berlin, by_berlin)
            };
            let full = bundle(f, by, &items);
            signed.push(full.clone());
            full
        };
        // Sometimes only part of it is disclosed.
        let part = if rng.below(3) == 0 {
            let keep = rng.below(2) as u32;
            verify(
                &full.to_wire(|i| i.index % 2 == keep),
                &f.certs,
                &f.trust,
                now_ms(),
            )
            .unwrap()
        } else {
            full
        };
        let source = Source {
            received_from: f.berlin.id.clone(),
            hops: rng.below(4) as u32,
        };
        bundles.push((part, source));
    }
    History {
        ids,
        values,
        bundles,
        long_expired: HashSet::new(),
    }
}

/// Accepts `bundles` into `store`, each at its own fixed time (so two stores record
/// the same acceptance times); returns the accept reports.
fn play(store: &SledStore, bundles: &[(VerifiedBundle, Source)]) -> Vec<String> {
    play_at(store, bundles, now_ms() - 3_600_000)
}

fn play_at(store: &SledStore, bundles: &[(VerifiedBundle, Source)], start: i64) -> Vec<String> {
    bundles
        .iter()
        .enumerate()
        .map(|(n, (b, source))| format!("{:?}", store.accept(b, source, start + n as i64)))
        .collect()
}

/// The ids whose latest version held is an indicator expired before `before`.
fn expired_before(store: &SledStore, ids: &[ItemId], before: i64) -> HashSet<String> {
    ids.iter()
        .filter(|id| {
            store
                .get(id)
                .unwrap()
                .is_some_and(|stored| stored.item.is_expired(before))
        })
        .map(|id| id.to_string())
        .collect()
}

/// Every bundle in the feed verifies from what the store holds.
fn all_verify(f: &Fixture, store: &SledStore) {
    for (_, id) in store.feed(0, 1_000_000).unwrap() {
        let held = store.held_bundle(&id).unwrap().unwrap();
        verify(&held.signed(&held.items), &f.certs, &f.trust, now_ms())
            .unwrap_or_else(|e| panic!("bundle {id} no longer verifies: {e}"));
    }
}

#[test]
fn a_compacted_store_answers_as_before_less_what_compaction_drops() {
    let f = fixture();
    for seed in 1..=6u64 {
        let dir = f.pki.path().join(format!("drops-{seed}"));
        let mut h = history(&f, seed, 70, true);
        let store = open(&dir, &f);
        play(&store, &h.bundles);
        store.flush().unwrap();
        h.long_expired = expired_before(&store, &h.ids, now_ms() - 30 * DAY);
        let before = view(&store, &h.ids, &h.values);
        let size_before = std::fs::metadata(dir.join(entente::store::LOG_FILE))
            .unwrap()
            .len();

        let done = store.compact(Compaction::default()).unwrap();
        let expected = without(&before, &h.long_expired);
        let after = view(&store, &h.ids, &h.values);
        assert_eq!(after, expected, "seed {seed}: answers after compaction");
        assert_eq!(done.generation, 1);
        assert_eq!(done.bytes_before, size_before);
        assert!(
            done.bytes_after < done.bytes_before,
            "seed {seed}: {done:?}"
        );
        assert_eq!(done.bundles_kept as usize, expected.feed.len());
        assert_eq!(
            done.records_kept as usize,
            expected.bundles.values().map(|b| b.2.len()).sum::<usize>(),
            "seed {seed}: only the latest version of each id is kept"
        );
        all_verify(&f, &store);
        // The same after a restart, and a second compaction changes nothing more.
        drop(store);
        let store = open(&dir, &f);
        assert_eq!(
            view(&store, &h.ids, &h.values),
            expected,
            "seed {seed}: reopened"
        );
        let again = store.compact(Compaction::default()).unwrap();
        assert_eq!(again.generation, 2);
        assert_eq!(
            again.bytes_after, done.bytes_after,
            "seed {seed}: {again:?}"
        );
        assert_eq!(view(&store, &h.ids, &h.values), expected);
        assert!(!dir.join("bundles.v4.log.compacting").exists());
        // Feed positions handed out are never handed out again, even when the bundle
        // at the head was dropped.
        let head_before = before.feed.last().map_or(0, |(s, _)| *s);
        assert!(store.feed_limit() >= head_before);
        let fresh = indicator(
            &ItemId::new_random(),
            IndicatorType::Domain,
            "after.compaction.example",
            now_ms(),
            Tlp::Green,
            &[],
        );
        let report = store
            .accept(
                &bundle(&f, &f.hq, &[fresh]),
                &common::signed::local(&f.hq.id),
                now_ms(),
            )
            .unwrap();
        assert!(
            report.feed_seq.unwrap() > head_before,
            "seed {seed}: {report:?}"
        );
    }
}

#[test]
fn a_store_that_compacted_takes_later_bundles_as_one_that_did_not() {
    let f = fixture();
    for seed in 21..=26u64 {
        let h = history(&f, seed, 120, false);
        let (early, late) = h.bundles.split_at(60);
        let compacted = open(&f.pki.path().join(format!("compacted-{seed}")), &f);
        let twin = open(&f.pki.path().join(format!("twin-{seed}")), &f);
        let start = now_ms() - 3_600_000;
        play_at(&compacted, early, start);
        play_at(&twin, early, start);
        compacted.compact(Compaction::default()).unwrap();
        // Later bundles (a quarter of them seen before) are stored, refused and counted
        // as duplicates alike, and leave the same feed.
        assert_eq!(
            play_at(&compacted, late, start + 1000),
            play_at(&twin, late, start + 1000),
            "seed {seed}"
        );
        let live = |v: View| {
            let mut v = v;
            v.bundles.retain(|_, (_, _, items)| !items.is_empty());
            let kept = v.bundles.clone();
            v.feed.retain(|(_, id)| kept.contains_key(id));
            v
        };
        let (c, t) = (
            live(view(&compacted, &h.ids, &h.values)),
            live(view(&twin, &h.ids, &h.values)),
        );
        assert_eq!(c.gets, t.gets, "seed {seed}");
        assert_eq!(c.values, t.values, "seed {seed}");
        assert_eq!(c.scan, t.scan, "seed {seed}");
        assert_eq!(c.feed, t.feed, "seed {seed}");
        assert_eq!(c.bundles, t.bundles, "seed {seed}");
    }
}

#[test]
fn a_page_token_from_before_a_compaction_is_refused_as_stale() {
    let f = fixture();
    let h = history(&f, 3, 40, false);
    let store = open(&f.pki.path().join("stale"), &f);
    play(&store, &h.bundles);
    let scan = ItemQuery::default();
    let first = store
        .query(&scan, None, PageLimit::items(1), now_ms(), &|_| true)
        .unwrap();
    let cursor = first.next.expect("more than one item");
    store.compact(Compaction::default()).unwrap();
    match store.query(&scan, Some(&cursor), PageLimit::items(1), now_ms(), &|_| {
        true
    }) {
        Err(StoreError::StaleCursor) => {}
        other => panic!("a cursor from before the compaction gave {other:?}"),
    }
    // A cursor handed out after it works.
    let fresh = store
        .query(&scan, None, PageLimit::items(1), now_ms(), &|_| true)
        .unwrap();
    store
        .query(
            &scan,
            fresh.next.as_deref(),
            PageLimit::items(1),
            now_ms(),
            &|_| true,
        )
        .unwrap();
}

#[test]
fn a_crash_at_any_step_of_the_swap_leaves_a_store_that_opens_with_nothing_lost() {
    let f = fixture();
    for (n, stop) in [Stop::Written, Stop::Recorded, Stop::Renamed]
        .into_iter()
        .enumerate()
    {
        let dir = f.pki.path().join(format!("crash-{n}"));
        let h = history(&f, 40 + n as u64, 60, true);
        let store = open(&dir, &f);
        play(&store, &h.bundles);
        store.flush().unwrap();
        let dropped = expired_before(&store, &h.ids, now_ms() - 30 * DAY);
        let before = view(&store, &h.ids, &h.values);
        store.compact_until(Compaction::default(), stop).unwrap();
        // The crash: the store goes without another word to the disk.
        drop(store);

        let store = open(&dir, &f);
        let found = view(&store, &h.ids, &h.values);
        let generation = entente::store::log_generation(&dir).unwrap();
        match stop {
            // Before the rename, the old log is in force, whole.
            Stop::Written | Stop::Recorded => {
                assert_eq!(found, before, "{stop:?}");
                assert_eq!(generation, 0, "{stop:?}");
            }
            // After it, the new one, whole.
            _ => {
                assert_eq!(found, without(&before, &dropped), "{stop:?}");
                assert_eq!(generation, 1, "{stop:?}");
            }
        }
        assert!(
            !dir.join("bundles.v4.log.compacting").exists(),
            "{stop:?}: the interrupted compaction's file is cleared at open"
        );
        all_verify(&f, &store);
        // The store takes new bundles, compacts again and reopens with them.
        let extra = history(&f, 90 + n as u64, 10, false);
        play(&store, &extra.bundles);
        store.flush().unwrap();
        store.compact(Compaction::default()).unwrap();
        let settled = view(&store, &extra.ids, &extra.values);
        drop(store);
        let store = open(&dir, &f);
        assert_eq!(view(&store, &extra.ids, &extra.values), settled, "{stop:?}");
    }
}

#[test]
fn bundles_accepted_while_a_compaction_runs_are_all_kept() {
    let f = fixture();
    let dir = f.pki.path().join("concurrent");
    let store = std::sync::Arc::new(open(&dir, &f));
    // Enough to make the copy take a while.
    let values: Vec<String> = (0..4000).map(|i| format!("old{i}.example")).collect();
    for chunk in values.chunks(500) {
        let items: Vec<Item> = chunk
            .iter()
            .map(|v| {
                indicator(
                    &ItemId::new_random(),
                    IndicatorType::Domain,
                    v,
                    now_ms(),
                    Tlp::Green,
                    &[],
                )
            })
            .collect();
        store
            .accept(
                &bundle(&f, &f.hq, &items),
                &common::signed::local(&f.hq.id),
                now_ms(),
            )
            .unwrap();
    }
    let running = {
        let store = store.clone();
        std::thread::spawn(move || {
            let mut rounds = Vec::new();
            for _ in 0..3 {
                rounds.push(store.compact(Compaction::default()).unwrap());
            }
            rounds
        })
    };
    let mut published = Vec::new();
    let mut n = 0;
    while !running.is_finished() || n < 20 {
        let id = ItemId::new_random();
        let item = indicator(
            &id,
            IndicatorType::Domain,
            &format!("new{n}.example"),
            now_ms(),
            Tlp::Green,
            &[],
        );
        let report = store
            .accept(
                &bundle(&f, &f.hq, &[item]),
                &common::signed::local(&f.hq.id),
                now_ms(),
            )
            .unwrap();
        assert_eq!(report.stored.len(), 1);
        if n % 7 == 0 {
            store.flush().unwrap();
        }
        published.push(id);
        n += 1;
    }
    let rounds = running.join().unwrap();
    assert_eq!(rounds.last().unwrap().generation, 3);
    for id in &published {
        assert!(
            store.get(id).unwrap().is_some(),
            "{id} lost by a compaction"
        );
    }
    let feed: Vec<u64> = store
        .feed(0, 1_000_000)
        .unwrap()
        .iter()
        .map(|e| e.0)
        .collect();
    assert!(feed.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(feed.len(), 8 + published.len());
    store.flush().unwrap();
    drop(store);
    let store = open(&dir, &f);
    for id in &published {
        assert!(
            store.get(id).unwrap().is_some(),
            "{id} lost across a reopen"
        );
    }
    all_verify(&f, &store);
}

/// An item's versions, as the text says: every version held, oldest first, at most
/// the `limit` newest. The oracle follows the histories: a version is held when it is
/// newer than every version of its id before it. Superseded versions are listed until
/// a compaction drops them; then only the latest is.
#[test]
fn versions_list_every_version_held_oldest_first() {
    let f = fixture();
    for seed in 11..=16u64 {
        let dir = f.pki.path().join(format!("versions-{seed}"));
        let h = history(&f, seed, 80, false);
        let store = open(&dir, &f);
        play(&store, &h.bundles);
        store.flush().unwrap();
        let mut held: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        for (b, _) in &h.bundles {
            for v in b.items() {
                let versions = held.entry(v.item.id.to_string()).or_default();
                if versions
                    .last()
                    .is_none_or(|last| last.modified_ms < v.item.modified_ms)
                {
                    versions.push(v.item.clone());
                }
            }
        }
        let listed = |store: &SledStore, id: &ItemId, limit: usize| -> Vec<Item> {
            store
                .versions(id, limit)
                .unwrap()
                .into_iter()
                .map(|s| s.item)
                .collect()
        };
        let mut several = 0;
        for id in &h.ids {
            let expected = held.get(&id.to_string()).cloned().unwrap_or_default();
            several += usize::from(expected.len() > 1);
            for limit in [1, 2, 3, 1000] {
                let newest = &expected[expected.len().saturating_sub(limit)..];
                assert_eq!(
                    listed(&store, id, limit),
                    newest,
                    "seed {seed}: {id}, limit {limit}"
                );
            }
        }
        assert!(several >= 5, "seed {seed}: a history with few old versions");
        // The same from a store opened again (the index is rebuilt from the log).
        drop(store);
        let store = open(&dir, &f);
        for id in &h.ids {
            let expected = held.get(&id.to_string()).cloned().unwrap_or_default();
            assert_eq!(listed(&store, id, 1000), expected, "seed {seed}: reopened");
        }
        // An id under another type, with the same UUID, has no versions.
        let other = ItemId::parse(&h.ids[0].as_str().replace("indicator--", "malware--")).unwrap();
        assert!(listed(&store, &other, 1000).is_empty());
        store.compact(Compaction::default()).unwrap();
        for id in &h.ids {
            let latest: Vec<Item> = held
                .get(&id.to_string())
                .and_then(|v| v.last().cloned())
                .into_iter()
                .collect();
            assert_eq!(listed(&store, id, 1000), latest, "seed {seed}: compacted");
        }
    }
}
