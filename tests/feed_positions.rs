//! What partners are handed when objects that waited for what they reference are
//! offered again: the feed positions that record it, and what a subscriber receives.
//! The engine's positions count every entry, withheld or not; they stay inside the
//! node. That a pulling peer cannot tell from the wire whether a withheld object here
//! references an id it watched arrive is tested where the peer observes it, in
//! `tests/sealed_positions.rs`.

mod common;

use std::sync::Arc;

use common::signed::{
    Fixture, bundle, context, context_id, context_with, fixture, fresh_domain, local,
};
use entente::engine::{Engine, now_ms};
use entente::model::{IndicatorType, Item, ItemId, Partner, PartnerKind, Tlp};
use entente::policy::{Policy, PolicySettings, PolicySpec};

fn berlin(f: &Fixture) -> Partner {
    Partner {
        id: f.berlin.id.clone(),
        kind: PartnerKind::Node,
        role: entente::Role::Peer,
    }
}

fn engine(f: &Fixture, dir: &std::path::Path) -> Engine {
    engine_allowing(f, dir, Tlp::Amber)
}

/// hq's engine, with Berlin allowed every type up to `max_tlp`.
fn engine_allowing(f: &Fixture, dir: &std::path::Path, max_tlp: Tlp) -> Engine {
    let spec = PolicySpec::new(f.hq.id.clone()).with(
        berlin(f),
        PolicySettings {
            max_tlp: Some(max_tlp),
            allow_types: Some(IndicatorType::ALL.to_vec()),
            ..PolicySettings::default()
        },
    );
    let store = common::open_store(dir, &f.hq.id, 16 << 20).unwrap();
    let signer = entente::crypto::BundleSigner::new(
        f.hq.id.clone(),
        f.hq.private_key_pkcs8().unwrap(),
        f.hq.certificate_der(),
    )
    .unwrap();
    Engine::new(
        Arc::new(store),
        Policy::compile(&spec),
        signer,
        f.hq.certificate_der(),
        Box::new(f.hq.signer_trust().unwrap()),
    )
    .unwrap()
}

fn relationship(ends: &[&ItemId], tlp: Tlp, modified: i64) -> Item {
    context_with(&context_id("relationship"), ends, tlp, modified)
}

fn alice() -> Partner {
    Partner {
        id: entente::model::NodeId::new("analyst.alice").unwrap(),
        kind: PartnerKind::Client,
        role: entente::Role::Analyst,
    }
}

/// A report complete since its latest version is handed to a subscriber once, however
/// many of the objects an older version named arrive later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_a_complete_report_once_whatever_an_older_version_named() {
    let f = fixture();
    let now = now_ms();
    let dir = f.pki.path().join("node");
    let spec = PolicySpec::new(f.hq.id.clone()).with(
        alice(),
        PolicySettings {
            max_tlp: Some(Tlp::Amber),
            allow_types: Some(IndicatorType::ALL.to_vec()),
            ..PolicySettings::default()
        },
    );
    let store = common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
    let new_signer = || {
        entente::crypto::BundleSigner::new(
            f.hq.id.clone(),
            f.hq.private_key_pkcs8().unwrap(),
            f.hq.certificate_der(),
        )
        .unwrap()
    };
    let signer = new_signer();
    let engine = Arc::new(
        Engine::new(
            Arc::new(store),
            Policy::compile(&spec),
            new_signer(),
            f.hq.certificate_der(),
            Box::new(f.hq.signer_trust().unwrap()),
        )
        .unwrap(),
    );
    let mut subscription = engine.subscribe(alice(), entente::store::ItemQuery::default());
    let us = local(&f.hq.id);
    let publish = |items: &[Item]| {
        let wire = signer
            .sign(items, &entente::model::Distribution::default(), now_ms())
            .unwrap()
            .to_wire(|_| true);
        engine.accept(&wire, &us, now).unwrap();
    };
    let x = fresh_domain("x.example", now);
    publish(std::slice::from_ref(&x));
    let named: Vec<Item> = (0..5)
        .map(|n| fresh_domain(&format!("n{n}.example"), now))
        .collect();
    let id = ItemId::parse(&format!("report--{}", uuid::Uuid::new_v4())).unwrap();
    let mut refs: Vec<&ItemId> = named.iter().map(|i| &i.id).collect();
    refs.push(&x.id);
    publish(&[context(&id, &refs, now)]);
    publish(&[context(&id, &[&x.id], now + 1)]);
    for item in &named {
        publish(std::slice::from_ref(item));
    }
    let last = fresh_domain("last.example", now);
    publish(std::slice::from_ref(&last));
    let mut reports = 0;
    loop {
        let stored = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription delivers what was published")
            .unwrap();
        if stored.item.id == id {
            reports += 1;
        }
        if stored.item.id == last.id {
            break;
        }
    }
    assert_eq!(
        reports, 1,
        "the report was handed to the subscriber {reports} times"
    );
}

/// The ids of the items Berlin is served after `after`, and the cursor reached.
fn pulled_ids(engine: &Engine, f: &Fixture, after: u64) -> (Vec<String>, u64) {
    let page = engine.pull_page(&berlin(f), after, 256).unwrap();
    let verified: Vec<String> = page
        .bundles
        .iter()
        .flat_map(|b| {
            entente::crypto::verify(&b.bundle, &f.certs, &f.trust, now_ms())
                .unwrap()
                .items()
                .iter()
                .map(|i| i.item.id.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    (verified, page.cursor)
}

/// A report waits while its relationship names an end not held; the relationship's
/// origin corrects it (a new version, with its new end). Berlin, which pulled past the
/// report while it waited, must receive it once it may.
#[test]
fn a_partner_receives_a_report_once_a_new_version_of_its_relationship_completes_it() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let engine = engine(&f, &f.pki.path().join("node"));
    let store = engine.store().clone();
    let x = fresh_domain("x.example", now);
    let never = ItemId::parse(&format!("malware--{}", uuid::Uuid::new_v4())).unwrap();
    let rel = ItemId::parse(&format!("relationship--{}", uuid::Uuid::new_v4())).unwrap();
    let with_ends = |ends: &[&ItemId], modified: i64| {
        let mut item = relationship(ends, Tlp::Green, modified);
        item.id = rel.clone();
        item
    };
    let id = ItemId::parse(&format!("report--{}", uuid::Uuid::new_v4())).unwrap();
    store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&x)), &us, now)
        .unwrap();
    store
        .accept(
            &bundle(&f, &f.hq, &[with_ends(&[&x.id, &never], now)]),
            &us,
            now,
        )
        .unwrap();
    store
        .accept(&bundle(&f, &f.hq, &[context(&id, &[&rel], now)]), &us, now)
        .unwrap();
    let (first, cursor) = pulled_ids(&engine, &f, 0);
    assert!(!first.contains(&id.to_string()), "the report waits");
    let y = fresh_domain("y.example", now);
    store
        .accept(
            &bundle(&f, &f.hq, &[with_ends(&[&x.id, &y.id], now + 1), y.clone()]),
            &us,
            now,
        )
        .unwrap();
    let (then, _) = pulled_ids(&engine, &f, cursor);
    assert!(
        then.contains(&rel.to_string()),
        "the corrected relationship goes out"
    );
    // Berlin may see the report now: its feed replayed from the start carries it.
    let (replayed, _) = pulled_ids(&engine, &f, 0);
    assert!(
        replayed.contains(&id.to_string()),
        "the report is allowed now"
    );
    assert!(
        then.contains(&id.to_string()),
        "the report Berlin may now see never reaches it: served {then:?}"
    );
}

/// The node's own operator sees every object it holds, waiting or not: a relationship
/// handed to its subscription when it arrived must not be handed over a second time
/// when the end it waited for arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_own_operator_subscriber_gets_a_relationship_once_when_its_end_arrives() {
    let f = fixture();
    let now = now_ms();
    let engine = Arc::new(engine(&f, &f.pki.path().join("node")));
    let operator = Partner {
        id: f.hq.id.clone(),
        kind: PartnerKind::Client,
        role: entente::Role::Analyst,
    };
    let mut subscription = engine.subscribe(operator, entente::store::ItemQuery::default());
    let us = local(&f.hq.id);
    let signer = entente::crypto::BundleSigner::new(
        f.hq.id.clone(),
        f.hq.private_key_pkcs8().unwrap(),
        f.hq.certificate_der(),
    )
    .unwrap();
    let publish = |items: &[Item]| {
        let wire = signer
            .sign(items, &entente::model::Distribution::default(), now_ms())
            .unwrap()
            .to_wire(|_| true);
        engine.accept(&wire, &us, now).unwrap()
    };
    let x = fresh_domain("x.example", now);
    let y = fresh_domain("y.example", now);
    let rel = relationship(&[&x.id, &y.id], Tlp::Green, now);
    publish(std::slice::from_ref(&x));
    publish(std::slice::from_ref(&rel));
    let report = publish(std::slice::from_ref(&y));
    assert_eq!(report.offered_again, 1, "the relationship waited for y");
    let last = fresh_domain("last.example", now);
    publish(std::slice::from_ref(&last));
    let mut seen = 0;
    loop {
        let stored = tokio::time::timeout(std::time::Duration::from_secs(10), subscription.next())
            .await
            .expect("the subscription delivers what was accepted")
            .unwrap();
        if stored.item.id == rel.id {
            seen += 1;
        }
        if stored.item.id == last.id {
            break;
        }
    }
    assert_eq!(seen, 1, "the relationship was handed over {seen} times");
}

/// The positions an accept that offers a bundle again hands out survive a reopen: the
/// bundle that completed it last, the head unchanged, and the next accept above both.
#[test]
fn positions_written_with_an_offer_again_read_back_in_order_after_a_reopen() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let dir = f.pki.path().join("node");
    let x = fresh_domain("x.example", now);
    let y = fresh_domain("y.example", now);
    let rel = relationship(&[&x.id, &y.id], Tlp::Green, now);
    let (head, ids) = {
        let engine = engine(&f, &dir);
        let store = engine.store().clone();
        store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(&x)), &us, now)
            .unwrap();
        store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(&rel)), &us, now)
            .unwrap();
        let report = store
            .accept(&bundle(&f, &f.hq, std::slice::from_ref(&y)), &us, now)
            .unwrap();
        assert_eq!(report.offered_again, 1);
        store.flush().unwrap();
        (report.feed_seq.unwrap(), pulled_ids(&engine, &f, 0).0)
    };
    let engine = engine(&f, &dir);
    let store = engine.store().clone();
    assert_eq!(store.feed_head(), head);
    assert_eq!(pulled_ids(&engine, &f, 0).0, ids);
    let z = fresh_domain("z.example", now);
    let report = store
        .accept(&bundle(&f, &f.hq, std::slice::from_ref(&z)), &us, now)
        .unwrap();
    assert!(report.feed_seq.unwrap() > head);
    let (after, _) = pulled_ids(&engine, &f, head);
    assert_eq!(after, vec![z.id.to_string()]);
}

/// The engine of [`engine`], with Berlin allowed GREEN at most.
fn green_engine(f: &Fixture, dir: &std::path::Path) -> Engine {
    engine_allowing(f, dir, Tlp::Green)
}

/// A GREEN relationship between a GREEN indicator and an AMBER one, and a GREEN report
/// naming the relationship, are withheld from Berlin (GREEN at most) for the AMBER end.
/// The end's origin lowers it to GREEN in a new version: Berlin, which pulled past the
/// relationship and the report, must now receive both, once, however often the end's
/// marking goes up and down again.
#[test]
fn a_relationship_released_by_a_new_version_of_its_end_is_offered_again() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let engine = green_engine(&f, &f.pki.path().join("node"));
    let store = engine.store().clone();
    let accept = |items: &[Item]| {
        store.accept(&bundle(&f, &f.hq, items), &us, now).unwrap();
    };
    let green_end = fresh_domain("green.example", now);
    let mut amber_end = fresh_domain("amber.example", now);
    amber_end.tlp = Tlp::Amber;
    let rel = relationship(&[&green_end.id, &amber_end.id], Tlp::Green, now);
    let report_id = context_id("report");
    let report = context(&report_id, &[&rel.id], now);
    accept(&[green_end.clone(), amber_end.clone()]);
    accept(std::slice::from_ref(&rel));
    accept(std::slice::from_ref(&report));
    let (first, cursor) = pulled_ids(&engine, &f, 0);
    assert!(first.contains(&green_end.id.to_string()), "{first:?}");
    for withheld in [&amber_end.id, &rel.id, &report_id] {
        assert!(
            !first.contains(&withheld.to_string()),
            "{withheld} went out"
        );
    }

    let mut lowered = amber_end.clone();
    lowered.modified_ms = now + 1;
    lowered.tlp = Tlp::Green;
    accept(std::slice::from_ref(&lowered));
    let (then, cursor) = pulled_ids(&engine, &f, cursor);
    assert!(then.contains(&amber_end.id.to_string()), "{then:?}");
    assert!(
        then.contains(&rel.id.to_string()),
        "the relationship Berlin may now see never reaches it: served {then:?}"
    );
    assert!(
        then.contains(&report_id.to_string()),
        "the report Berlin may now see never reaches it: served {then:?}"
    );

    // Raised and lowered again and again: the relationship is not sent out each time
    // (a few times at most, per version of it).
    let mut cursor = cursor;
    let mut sent = 0;
    let mut end = lowered.clone();
    for round in 0..10 {
        end.modified_ms = now + 2 + 2 * round;
        end.tlp = Tlp::Amber;
        accept(std::slice::from_ref(&end));
        end.modified_ms += 1;
        end.tlp = Tlp::Green;
        accept(std::slice::from_ref(&end));
        let (later, reached) = pulled_ids(&engine, &f, cursor);
        cursor = reached;
        assert!(later.contains(&amber_end.id.to_string()), "{later:?}");
        sent += later.iter().filter(|id| **id == rel.id.to_string()).count();
    }
    assert!(sent <= 4, "sent {sent} times again for 10 lowerings");

    // A new version of the end that changes nothing sharing reads offers nothing again.
    let unrelated = fresh_domain("other.example", now);
    let mut relationship_two = relationship(&[&green_end.id, &unrelated.id], Tlp::Green, now);
    relationship_two.tlp = Tlp::Green;
    accept(&[unrelated.clone(), relationship_two.clone()]);
    let (_, cursor) = pulled_ids(&engine, &f, 0);
    let mut renamed = green_end.clone();
    renamed.modified_ms = now + 100;
    accept(std::slice::from_ref(&renamed));
    let (after, _) = pulled_ids(&engine, &f, cursor);
    assert!(after.contains(&green_end.id.to_string()), "{after:?}");
    assert!(
        !after.contains(&relationship_two.id.to_string()),
        "offered again for nothing: {after:?}"
    );
}

/// A bundle of `items` signed by hq for `distribution`.
fn signed_to(
    f: &Fixture,
    items: &[Item],
    distribution: &entente::model::Distribution,
) -> entente::crypto::VerifiedBundle {
    let signer = entente::crypto::BundleSigner::new(
        f.hq.id.clone(),
        f.hq.private_key_pkcs8().unwrap(),
        f.hq.certificate_der(),
    )
    .unwrap();
    let wire = signer
        .sign(items, distribution, now_ms())
        .unwrap()
        .to_wire(|_| true);
    entente::crypto::verify(&wire, &f.certs, &f.trust, now_ms()).unwrap()
}

/// Releases that a first re-offer must not use up (found by a review): two AMBER ends
/// lowered one at a time; a tag change on the AMBER end before it is lowered; an end
/// an older version of the relationship named changing; and an end signed again for
/// more recipients (Berlin among them) at the same marking. In each, Berlin, which
/// pulled past the relationship, must receive it once it may see it.
#[test]
fn every_release_of_an_end_offers_the_relationship_again() {
    let f = fixture();
    let now = now_ms();
    let us = local(&f.hq.id);
    let engine = green_engine(&f, &f.pki.path().join("node"));
    let store = engine.store().clone();
    let accept = |items: &[Item]| {
        store.accept(&bundle(&f, &f.hq, items), &us, now).unwrap();
    };
    let amber = |name: &str| {
        let mut item = fresh_domain(name, now);
        item.tlp = Tlp::Amber;
        item
    };
    let version = |item: &Item, modified: i64, tlp: Tlp| {
        let mut next = item.clone();
        next.modified_ms = modified;
        next.tlp = tlp;
        next
    };

    // Two AMBER ends, lowered one at a time.
    let (a, b) = (amber("a.example"), amber("b.example"));
    let both = relationship(&[&a.id, &b.id], Tlp::Green, now);
    accept(&[a.clone(), b.clone()]);
    accept(std::slice::from_ref(&both));
    // A tag added to an AMBER end, then the end lowered.
    let green = fresh_domain("g.example", now);
    let tagged = amber("t.example");
    let after_tag = relationship(&[&green.id, &tagged.id], Tlp::Green, now);
    accept(&[green.clone(), tagged.clone()]);
    accept(std::slice::from_ref(&after_tag));
    // A relationship whose older version named x; its latest names y (AMBER).
    let (x, y) = (fresh_domain("x.example", now), amber("y.example"));
    let moved = relationship(&[&green.id, &x.id], Tlp::Green, now);
    let mut moved_on = relationship(&[&green.id, &y.id], Tlp::Green, now + 1);
    moved_on.id = moved.id.clone();
    accept(&[x.clone(), y.clone()]);
    accept(std::slice::from_ref(&moved));
    accept(std::slice::from_ref(&moved_on));
    // An end signed for another partner only.
    let madrid = entente::model::NodeId::new("madrid.partner").unwrap();
    let narrow = fresh_domain("n.example", now);
    let to_madrid = entente::model::Distribution {
        max_hops: None,
        recipients: vec![madrid.clone()],
    };
    store
        .accept(
            &signed_to(&f, std::slice::from_ref(&narrow), &to_madrid),
            &us,
            now,
        )
        .unwrap();
    let widened = relationship(&[&green.id, &narrow.id], Tlp::Green, now);
    accept(std::slice::from_ref(&widened));

    let (first, mut cursor) = pulled_ids(&engine, &f, 0);
    for withheld in [&both.id, &after_tag.id, &moved.id, &widened.id] {
        assert!(
            !first.contains(&withheld.to_string()),
            "{withheld} went out"
        );
    }
    let mut pull = || {
        let (ids, reached) = pulled_ids(&engine, &f, cursor);
        cursor = reached;
        ids
    };

    accept(&[version(&a, now + 1, Tlp::Green)]);
    assert!(
        !pull().contains(&both.id.to_string()),
        "b still withholds it"
    );
    accept(&[version(&b, now + 1, Tlp::Green)]);
    assert!(pull().contains(&both.id.to_string()), "both ends lowered");

    let mut with_tag = version(&tagged, now + 1, Tlp::Amber);
    with_tag.tags.push("campaign-x".into());
    accept(std::slice::from_ref(&with_tag));
    assert!(!pull().contains(&after_tag.id.to_string()));
    accept(&[version(&with_tag, now + 2, Tlp::Green)]);
    assert!(
        pull().contains(&after_tag.id.to_string()),
        "lowered after a tag change"
    );

    let mut x_tagged = version(&x, now + 1, Tlp::Green);
    x_tagged.tags.push("t".into());
    accept(std::slice::from_ref(&x_tagged));
    assert!(
        !pull().contains(&moved.id.to_string()),
        "y still withholds it"
    );
    accept(&[version(&y, now + 1, Tlp::Green)]);
    assert!(pull().contains(&moved.id.to_string()), "its end y lowered");

    let wider = entente::model::Distribution {
        max_hops: None,
        recipients: vec![madrid, f.berlin.id.clone()],
    };
    store
        .accept(
            &signed_to(&f, &[version(&narrow, now + 1, Tlp::Green)], &wider),
            &us,
            now,
        )
        .unwrap();
    let served = pull();
    assert!(served.contains(&narrow.id.to_string()), "{served:?}");
    assert!(
        served.contains(&widened.id.to_string()),
        "end signed for Berlin too: {served:?}"
    );
}
