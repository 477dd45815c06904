//! Leaks found from outside, each closed and kept closed: end to end over real mTLS,
//! as a GREEN researcher, an analyst, an admin with a narrowed policy and a hostile
//! peer with a valid certificate would try them.
//!
//! - page tokens that answer differently for held and absent values, or that work for
//!   another caller or another query;
//! - revocations that do not carry the revoked item's marking, type and tags, at publish
//!   and on arrival from a peer;
//! - `Admin.Explain` showing an item beyond the caller's own policy, unrecorded;
//! - the engine's subscription handing out unfiltered items;
//! - signer certificates cached before a bundle verified with them; transient
//!   verification failures passed over for good;
//! - `modified` times far in the future that pin an item;
//! - deliveries sent before their ledger record is written.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use common::rogue::{Rogue, RogueServer, feed};
use entente::client::{ClientError, NodeClient};
use entente::crypto::sha256;
use entente::engine::now_ms;
use entente::model::{
    Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, Partner, PartnerKind,
    Revocation, Role, Tlp as ModelTlp,
};
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::store::ItemQuery;
use entente::transport::TlsMaterial;
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.bob";
const NARROW_ADMIN: &str = "admin.narrow";

/// A node with an analyst, a GREEN researcher limited to domain and ipv4 and denied
/// `pii`, and an admin client whose own policy is narrowed to GREEN.
struct Hq {
    node: Node,
    pki: Pki,
}

impl Hq {
    async fn start() -> Self {
        common::init_logging();
        let pki = Pki::new();
        let id = pki.node(HQ);
        for who in [ANALYST, RESEARCHER, NARROW_ADMIN] {
            pki.client(who);
        }
        let mut text = common::node_section(&pki, &id, &pki.path().join("data-hq"));
        text.push_str(&format!(
            r#"
[[client]]
id = "{ANALYST}"
role = "analyst"

[[client]]
id = "{RESEARCHER}"
role = "read_only"
allow_types = ["domain", "ipv4"]
deny_tags = ["pii"]

[[client]]
id = "{NARROW_ADMIN}"
role = "admin"
max_tlp = "GREEN"
"#
        ));
        let path = pki.path().join("hq.toml");
        std::fs::write(&path, text).unwrap();
        let node = common::start(&path).await;
        Self { node, pki }
    }

    async fn connect(&self, who: &str) -> NodeClient {
        common::connect(&self.pki, &self.node, who).await
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn indicator(ty: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

fn revocation(of: &wire::Item, ty: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: of.id.clone(),
        modified_unix_ms: now_ms() + 1,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "false positive: the secret reason".into(),
            indicator_type: ty.to_owned(),
            indicator: None,
        })),
    }
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>) -> Result<(), ClientError> {
    let request = PublishRequest {
        items,
        distribution: None,
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .map(|_| ())
}

fn code_of(error: &ClientError) -> (tonic::Code, String) {
    match error {
        ClientError::Status { code, message, .. } => (*code, message.clone()),
        other => panic!("expected a status, got {other}"),
    }
}

fn item_id(stored: &StoredItem) -> String {
    stored.item.as_ref().unwrap().id.clone()
}

/// Every item a client can list, across pages.
async fn query_all(client: &NodeClient, filter: ItemFilter) -> Vec<StoredItem> {
    let mut items = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = client.query(filter.clone(), 1000, token).await.unwrap();
        items.extend(page.items);
        if page.next_page_token.is_empty() {
            return items;
        }
        token = page.next_page_token;
    }
}

/// Case 1: a page token says nothing about what the caller may not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_tokens_reveal_nothing_and_bind_to_caller_and_query() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;

    // A RED value among GREEN ones, with withheld AMBER items between visible items.
    let mut items = vec![indicator("domain", "secret-red.example", Tlp::Red, &[])];
    for i in 0..12 {
        items.push(indicator(
            "domain",
            &format!("green-{i}.example"),
            Tlp::Green,
            &[],
        ));
        for j in 0..(i % 4) {
            items.push(indicator(
                "domain",
                &format!("amber-{i}-{j}.example"),
                Tlp::Amber,
                &[],
            ));
        }
    }
    items.push(indicator("domain", "secret-red.example", Tlp::Red, &[]));
    publish(&alice, items).await.unwrap();

    // Probing with forged tokens: the answer for a held RED value and for an absent value
    // is the same, whatever the token names, and every forged token is refused.
    let mut forged: Vec<Vec<u8>> = Vec::new();
    for slot in 0u32..40 {
        forged.push(slot.to_be_bytes().to_vec());
        forged.push(slot.to_le_bytes().to_vec());
        let mut five = vec![0u8];
        five.extend_from_slice(&slot.to_be_bytes());
        forged.push(five);
        let mut eight = 0u32.to_be_bytes().to_vec();
        eight.extend_from_slice(&slot.to_be_bytes());
        forged.push(eight);
    }
    forged.push(vec![7u8; 60]);
    for token in &forged {
        let mut answers = Vec::new();
        for value in ["secret-red.example", "absent-red.example"] {
            let filter = ItemFilter {
                value: value.into(),
                ..Default::default()
            };
            answers.push(match bob.query(filter, 1, token.clone()).await {
                Ok(page) => (tonic::Code::Ok, format!("{} items", page.items.len())),
                Err(e) => code_of(&e),
            });
        }
        assert_eq!(
            answers[0], answers[1],
            "token {token:?} answers differently for a held RED value and an absent one"
        );
        assert_eq!(
            answers[0].0,
            tonic::Code::InvalidArgument,
            "token {token:?}"
        );
    }

    // Paging one item at a time: every visible item once, no empty page, and every
    // token of one length.
    let filter = ItemFilter {
        indicator_type: "domain".into(),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut tokens = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = bob.query(filter.clone(), 1, token).await.unwrap();
        assert!(
            page.items.len() == 1 || page.next_page_token.is_empty(),
            "an empty page in the middle tells that withheld items lie there"
        );
        seen.extend(page.items.iter().map(item_id));
        if page.next_page_token.is_empty() {
            break;
        }
        tokens.push(page.next_page_token.clone());
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 12);
    let lengths: BTreeSet<usize> = tokens.iter().map(Vec::len).collect();
    assert_eq!(lengths.len(), 1, "token lengths vary: {lengths:?}");

    // A token works only for the caller it was given to and for the query it came from.
    let token = tokens[2].clone();
    assert!(bob.query(filter.clone(), 1, token.clone()).await.is_ok());
    let other_caller = alice.query(filter.clone(), 1, token.clone()).await;
    assert_eq!(
        code_of(&other_caller.unwrap_err()).0,
        tonic::Code::InvalidArgument
    );
    let other_query = ItemFilter {
        indicator_type: "domain".into(),
        include_expired: true,
        ..Default::default()
    };
    let other = bob.query(other_query, 1, token.clone()).await;
    assert_eq!(code_of(&other.unwrap_err()).0, tonic::Code::InvalidArgument);
    let mut altered = token.clone();
    altered[20] ^= 1;
    let altered = bob.query(filter.clone(), 1, altered).await;
    assert_eq!(
        code_of(&altered.unwrap_err()).0,
        tonic::Code::InvalidArgument
    );

    hq.stop().await;
}

/// Case 2 at publish: a revocation must carry the revoked item's marking, type and
/// tags; one that does not is refused and never reaches anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_that_lowers_the_marking_is_refused_at_publish() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    let mut subscription = bob.subscribe(ItemFilter::default()).await.unwrap();

    let amber = indicator("domain", "amber-c2.example", Tlp::Amber, &[]);
    let pii = indicator("domain", "victim-home.example", Tlp::Green, &["pii"]);
    let url = indicator("url", "http://phish.example/login", Tlp::Green, &[]);
    publish(&alice, vec![amber.clone(), pii.clone(), url.clone()])
        .await
        .unwrap();

    let lowering = [
        (
            "GREEN revocation of an AMBER item",
            revocation(&amber, "domain", Tlp::Green, &[]),
        ),
        (
            "CLEAR revocation of an AMBER item",
            revocation(&amber, "domain", Tlp::Clear, &[]),
        ),
        (
            "untagged revocation of a pii item",
            revocation(&pii, "domain", Tlp::Green, &[]),
        ),
        (
            "revocation naming another type",
            revocation(&url, "domain", Tlp::Green, &[]),
        ),
        (
            "revocation of an unknown item",
            revocation(
                &indicator("domain", "x.example", Tlp::Green, &[]),
                "domain",
                Tlp::Green,
                &[],
            ),
        ),
    ];
    for (what, item) in lowering {
        let refused = publish(&alice, vec![item]).await;
        let (code, message) = code_of(&refused.expect_err(what));
        assert_eq!(code, tonic::Code::InvalidArgument, "{what}: {message}");
    }
    // A revocation that carries the item's marking, type and tags is published.
    publish(
        &alice,
        vec![revocation(&pii, "domain", Tlp::Green, &["pii"])],
    )
    .await
    .unwrap();
    publish(&alice, vec![revocation(&amber, "domain", Tlp::Amber, &[])])
        .await
        .unwrap();
    // A marker the researcher may see, to know the subscription has caught up.
    let marker = indicator("domain", "marker.example", Tlp::Green, &[]);
    publish(&alice, vec![marker.clone()]).await.unwrap();

    let secret = [amber.id.clone(), pii.id.clone(), url.id.clone()];
    // Subscribe: the marker arrives, nothing else did.
    let first = tokio::time::timeout(DEADLINE, subscription.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item_id(&first), marker.id);
    // Query, Get, Export.
    let listed: Vec<String> = query_all(
        &bob,
        ItemFilter {
            include_expired: true,
            ..Default::default()
        },
    )
    .await
    .iter()
    .map(item_id)
    .collect();
    assert_eq!(listed, vec![marker.id.clone()]);
    for id in &secret {
        assert!(bob.get(id).await.unwrap().is_none(), "{id} reached bob");
    }
    let mut export = bob.export(ItemFilter::default()).await.unwrap();
    let mut exported = String::new();
    while let Some(chunk) = export.message().await.unwrap() {
        exported.push_str(&chunk.stix_json);
    }
    for id in &secret {
        let uuid = id.trim_start_matches("indicator--");
        assert!(!exported.contains(uuid), "{id} exported to bob");
    }
    assert!(!exported.contains("secret reason"));

    // The analyst sees the AMBER item revoked with its own marking.
    let held = alice.get(&amber.id).await.unwrap().unwrap();
    let held = held.item.unwrap();
    assert_eq!(held.tlp, Tlp::Amber as i32);
    assert!(matches!(held.kind, Some(wire::item::Kind::Revocation(_))));
    hq.stop().await;
}

/// Case 4: Explain discloses an item only as the caller's own policy allows, and the
/// disclosure is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_answers_within_the_callers_own_policy_and_is_recorded() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let narrow = hq.connect(NARROW_ADMIN).await;
    let red = indicator("domain", "red-only.example", Tlp::Red, &[]);
    let green = indicator("domain", "green-ok.example", Tlp::Green, &[]);
    publish(&alice, vec![red.clone(), green.clone()])
        .await
        .unwrap();

    let absent = ItemId::new_random().to_string();
    let withheld = code_of(&narrow.explain(RESEARCHER, &red.id).await.unwrap_err());
    let missing = code_of(&narrow.explain(RESEARCHER, &absent).await.unwrap_err());
    assert_eq!(withheld.0, tonic::Code::NotFound);
    assert_eq!(withheld.0, missing.0);
    assert_eq!(
        withheld.1.replace(&red.id, "ID"),
        missing.1.replace(&absent, "ID"),
        "a withheld item must look exactly like an absent one"
    );

    let answer = narrow.explain(RESEARCHER, &green.id).await.unwrap();
    assert!(answer.allow);
    assert_eq!(answer.item.unwrap().item.unwrap().id, green.id);
    // Recorded, before the answer left.
    let narrow_id = NodeId::new(NARROW_ADMIN).unwrap();
    let records = hq
        .node
        .engine()
        .store()
        .ledger(0, 100, Some(&narrow_id), None)
        .unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].entry.path, "explain");
    // The node's own operator still explains everything.
    let own = hq.connect(HQ).await;
    assert!(!own.explain(RESEARCHER, &red.id).await.unwrap().allow);
    // The ledger and link state name bundles and partners beyond a narrowed policy: they
    // are refused to the narrowed admin, and served to the operator.
    let Err(refused) = narrow
        .ledger_show(entente::rpc::proto::LedgerShowRequest::default())
        .await
    else {
        panic!("the ledger was shown to a narrowed admin");
    };
    assert_eq!(code_of(&refused).0, tonic::Code::PermissionDenied);
    let refused = narrow.links().await.unwrap_err();
    assert_eq!(code_of(&refused).0, tonic::Code::PermissionDenied);
    assert!(own.links().await.is_ok());
    let mut records = own
        .ledger_show(entente::rpc::proto::LedgerShowRequest::default())
        .await
        .unwrap();
    assert!(records.message().await.unwrap().is_some());
    hq.stop().await;
}

/// Case 5: the engine's subscription decides; no caller can forget the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_subscription_yields_only_what_the_partner_may_see() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = Partner {
        id: NodeId::new(RESEARCHER).unwrap(),
        kind: PartnerKind::Client,
        role: Role::ReadOnly,
    };
    let mut subscription = hq
        .node
        .engine()
        .subscribe(bob.clone(), ItemQuery::default());
    let red = indicator("domain", "red.example", Tlp::Red, &[]);
    let pii = indicator("domain", "pii.example", Tlp::Green, &["pii"]);
    let url = indicator("url", "http://url.example/", Tlp::Green, &[]);
    let green = indicator("domain", "green.example", Tlp::Green, &[]);
    publish(&alice, vec![red, pii, url]).await.unwrap();
    publish(&alice, vec![green.clone()]).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.item.id.as_str(), green.id);
    // Handed out only once recorded.
    let records = hq
        .node
        .engine()
        .store()
        .ledger(0, 100, Some(&bob.id), None)
        .unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].entry.path, "subscribe");
    hq.stop().await;
}

/// Case 8 at publish: a version dated far ahead would pin the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modified_time_beyond_the_clock_skew_is_refused_at_publish() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let year_2999 = 32_503_680_000_000;
    for at in [year_2999, i64::MAX, now_ms() + 10 * 60_000] {
        let mut item = indicator("domain", "pinned.example", Tlp::Green, &[]);
        item.modified_unix_ms = at;
        let refused = publish(&alice, vec![item]).await;
        assert_eq!(
            code_of(&refused.expect_err("a future version is refused")).0,
            tonic::Code::InvalidArgument,
            "modified {at}"
        );
    }
    // Within the skew it is accepted, and can be updated later.
    let mut item = indicator("domain", "soon.example", Tlp::Green, &[]);
    item.modified_unix_ms = now_ms() + 1000;
    publish(&alice, vec![item.clone()]).await.unwrap();
    hq.stop().await;
}

/// Case 9: a delivery leaves only once its ledger record is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delivery_is_in_the_ledger_when_the_caller_receives_it() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    let bob_id = NodeId::new(RESEARCHER).unwrap();
    let green = indicator("domain", "recorded.example", Tlp::Green, &[]);
    publish(&alice, vec![green.clone()]).await.unwrap();
    let store = hq.node.engine().store().clone();
    for round in 1..=20usize {
        assert!(bob.get(&green.id).await.unwrap().is_some());
        let records = store.ledger(0, 1000, Some(&bob_id), None).unwrap();
        assert_eq!(records.len(), 2 * round - 1, "get {round} not yet recorded");
        let page = bob
            .query(
                ItemFilter {
                    value: "recorded.example".into(),
                    ..Default::default()
                },
                10,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1);
        let records = store.ledger(0, 1000, Some(&bob_id), None).unwrap();
        assert_eq!(records.len(), 2 * round, "query {round} not yet recorded");
    }
    hq.stop().await;
}

// ---------------------------------------------------------------------------------------
// A hostile peer with a valid certificate.

fn model_indicator(value: &str, tlp: ModelTlp, modified: i64) -> Item {
    Item {
        id: ItemId::new_random(),
        modified_ms: modified,
        tlp,
        tags: vec![],
        kind: ItemKind::Indicator(Indicator {
            indicator_type: IndicatorType::Domain,
            value: value.into(),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: modified.min(now_ms()),
            valid_until_ms: None,
            properties: Default::default(),
        }),
    }
}

fn sign(by: &TlsMaterial, items: &[Item]) -> wire::SignedBundle {
    common::rogue::sign(by, items, Distribution::default())
}

/// A bundle signed by `by` whose header names `fingerprint` as its signer certificate.
fn sign_naming(by: &TlsMaterial, items: &[Item], fingerprint: [u8; 32]) -> wire::SignedBundle {
    use prost::Message;
    let bundle = sign(by, items);
    let mut header = wire::BundleHeader::decode(bundle.header_bytes.as_slice()).unwrap();
    header.signer_cert_sha256 = fingerprint.to_vec();
    let header_bytes = header.encode_to_vec();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        by.private_key_pkcs8().unwrap(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let signature = key
        .sign(
            &ring::rand::SystemRandom::new(),
            &entente::crypto::signed_message(&header_bytes),
        )
        .unwrap();
    wire::SignedBundle {
        header_bytes,
        signature: signature.as_ref().to_vec(),
        disclosures: bundle.disclosures,
    }
}

fn values(items: &[StoredItem]) -> BTreeSet<String> {
    items
        .iter()
        .filter_map(|s| match s.item.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(wire::item::Kind::Indicator(i)) => Some(i.value.clone()),
            _ => None,
        })
        .collect()
}

/// Cases 2, 7 and 8 on arrival: a revocation that lowers the marking, blobs offered as
/// signer certificates, a signer certificate the peer supplies only later, a version
/// a little ahead of this clock and one far ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_peer_cannot_lower_markings_poison_the_certificate_cache_or_pin_items() {
    common::init_logging();
    let pki = Pki::new();
    let hq_id = pki.node(HQ);
    let rogue = pki.material(&pki.node("rogue.node"));
    let late = pki.material(&pki.node("late.office"));
    pki.client(ANALYST);
    pki.client(RESEARCHER);
    let now = now_ms();

    // 1, 2: the rogue's own AMBER item, then a GREEN revocation of it.
    let amber = model_indicator("rogue-amber.example", ModelTlp::Amber, now - 20_000);
    let lowered = Item {
        id: amber.id.clone(),
        modified_ms: now - 10_000,
        tlp: ModelTlp::Green,
        tags: vec![],
        kind: ItemKind::Revocation(Revocation {
            indicator_type: IndicatorType::Domain,
            reason: "the secret reason".into(),
            indicator: None,
        }),
    };
    // 3, 4: headers naming a blob (one too large for a certificate, one small) as their
    // signer certificate; the rogue serves the blobs under those fingerprints.
    let big_blob = vec![0x42u8; 20 * 1024];
    let small_blob = b"not a certificate at all".to_vec();
    let poisoned_big = sign_naming(
        &rogue,
        &[model_indicator("blob-big.example", ModelTlp::Green, now)],
        sha256(&big_blob),
    );
    let poisoned_small = sign_naming(
        &rogue,
        &[model_indicator("blob-small.example", ModelTlp::Green, now)],
        sha256(&small_blob),
    );
    // 5: late.office's bundle forwarded by the rogue, whose certificate it supplies only
    // later; 6: a bundle that must arrive meanwhile (the link does not stall).
    let late_bundle = sign(
        &late,
        &[model_indicator("late-signer.example", ModelTlp::Green, now)],
    );
    let meanwhile = sign(
        &rogue,
        &[model_indicator("meanwhile.example", ModelTlp::Green, now)],
    );
    // 7: a version 3 s ahead of this clock (hq allows 1 s of skew): accepted once the
    // time has come. 8: year 2999, refused for good.
    let soon = sign(
        &rogue,
        &[model_indicator(
            "soon.example",
            ModelTlp::Green,
            now + 3_000,
        )],
    );
    let year_2999 = sign(
        &rogue,
        &[model_indicator(
            "pinned.example",
            ModelTlp::Green,
            32_503_680_000_000,
        )],
    );
    // 9, 10: an indicator for hq alone, then its revocation signed for everyone: the
    // revocation would travel further than the item did, so it is rejected on arrival.
    let restricted = model_indicator("restricted.example", ModelTlp::Green, now - 20_000);
    let for_hq = Distribution {
        max_hops: Some(1),
        recipients: vec![hq_id.clone()],
    };
    let restricted_bundle = common::rogue::signer(&rogue)
        .sign(std::slice::from_ref(&restricted), &for_hq, now - 1000)
        .unwrap()
        .to_wire(|_| true);
    let widened = Item {
        id: restricted.id.clone(),
        modified_ms: now - 5_000,
        tlp: ModelTlp::Green,
        tags: vec![],
        kind: ItemKind::Revocation(Revocation {
            indicator_type: IndicatorType::Domain,
            reason: "the secret reason".into(),
            indicator: None,
        }),
    };
    let certificates = Arc::new(Mutex::new(vec![
        rogue.certificate_der().to_vec(),
        big_blob.clone(),
        small_blob.clone(),
    ]));
    let rogue_service = Rogue {
        feed: vec![
            feed(1, sign(&rogue, std::slice::from_ref(&amber)), 0),
            feed(2, sign(&rogue, &[lowered]), 0),
            feed(3, poisoned_big, 0),
            feed(4, poisoned_small, 0),
            feed(5, late_bundle, 1),
            feed(6, meanwhile, 0),
            feed(7, soon, 0),
            feed(8, year_2999, 0),
            feed(9, restricted_bundle, 0),
            feed(10, sign(&rogue, &[widened]), 0),
        ],
        certificates: certificates.clone(),
    };
    let rogue_server = RogueServer::start(&rogue, &hq_id, rogue_service).await;
    let rogue_addr = rogue_server.addr;

    let mut text = common::node_section(&pki, &hq_id, &pki.path().join("data-hq"));
    text = text.replace("crls = []\n", "crls = []\nmax_clock_skew = \"1s\"\n");
    text.push_str(&format!(
        r#"
[[peer]]
id = "rogue.node"
address = "{rogue_addr}"
max_tlp = "AMBER"
allow_types = ["*"]

[[client]]
id = "{ANALYST}"
role = "analyst"

[[client]]
id = "{RESEARCHER}"
role = "read_only"
allow_types = ["*"]
"#
    ));
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let alice = common::connect(&pki, &node, ANALYST).await;
    let bob = common::connect(&pki, &node, RESEARCHER).await;
    let all = ItemFilter {
        include_expired: true,
        ..Default::default()
    };

    // The bundle after the one refused for now arrives: the link does not stall.
    let start = Instant::now();
    loop {
        let held = values(&query_all(&alice, all.clone()).await);
        if held.contains("meanwhile.example") && held.contains("soon.example") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "hq holds only {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // late.office's bundle waits for its certificate; once the rogue supplies it, it
    // is pulled again and accepted.
    assert!(!values(&query_all(&alice, all.clone()).await).contains("late-signer.example"));
    assert!(
        common::rogue::plain(node.engine().store().cursor(&rogue.id).unwrap()) < 5,
        "the stored cursor passed a bundle to be pulled again"
    );
    // Meanwhile the link says so: a bundle held back, not caught up (it said "caught
    // up" while the bundle waited, and counted each attempt as a rejection).
    let operator = common::connect(&pki, &node, hq_id.as_str()).await;
    let link_to_rogue = || async {
        operator
            .links()
            .await
            .unwrap()
            .links
            .into_iter()
            .find(|l| l.peer == rogue.id.as_str())
    };
    let start = Instant::now();
    let held_back = loop {
        if let Some(link) = link_to_rogue().await.filter(|l| l.bundles_held_back > 0) {
            break link;
        }
        assert!(start.elapsed() < DEADLINE, "no bundle shown held back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!held_back.caught_up, "{held_back:?}");
    certificates
        .lock()
        .unwrap()
        .push(late.certificate_der().to_vec());
    let start = Instant::now();
    while !values(&query_all(&alice, all.clone()).await).contains("late-signer.example") {
        assert!(
            start.elapsed() < DEADLINE,
            "late.office's bundle never accepted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Instant::now();
    while common::rogue::plain(node.engine().store().cursor(&rogue.id).unwrap()) < 10
        || link_to_rogue()
            .await
            .is_none_or(|l| l.bundles_held_back != 0)
    {
        assert!(start.elapsed() < DEADLINE, "the link never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let held = values(&query_all(&alice, all.clone()).await);
    assert_eq!(
        held,
        [
            "late-signer.example",
            "meanwhile.example",
            "restricted.example",
            "rogue-amber.example",
            "soon.example"
        ]
        .map(String::from)
        .into(),
        "blob-signed and far-future items must not be stored"
    );
    // The AMBER item is not revoked by the lowered revocation, and the researcher never
    // sees the revocation.
    let amber_held = alice.get(amber.id.as_str()).await.unwrap().unwrap();
    assert!(matches!(
        amber_held.item.unwrap().kind,
        Some(wire::item::Kind::Indicator(_))
    ));
    assert!(bob.get(amber.id.as_str()).await.unwrap().is_none());
    // The revocation that would have travelled further than its item was rejected.
    let restricted_held = alice.get(restricted.id.as_str()).await.unwrap().unwrap();
    assert!(matches!(
        restricted_held.item.unwrap().kind,
        Some(wire::item::Kind::Indicator(_))
    ));
    let seen_by_bob: Vec<String> = query_all(&bob, all.clone())
        .await
        .iter()
        .map(item_id)
        .collect();
    assert!(!seen_by_bob.contains(&amber.id.to_string()));
    // No blob entered the certificate cache; late.office's certificate did, once its
    // bundle verified.
    let store = node.engine().store();
    assert!(store.certificate(&sha256(&big_blob)).unwrap().is_none());
    assert!(store.certificate(&sha256(&small_blob)).unwrap().is_none());
    assert!(
        store
            .certificate(&sha256(late.certificate_der()))
            .unwrap()
            .is_some()
    );

    node.shutdown(DEADLINE).await.unwrap();
    rogue_server.stop().await;
}

/// How many items a page holds depends only on what the caller may see: a long run of
/// withheld items (more than one store call looks at) between two visible ones does not
/// cut a page short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_withheld_items_does_not_cut_a_page_short() {
    const WITHHELD: usize = 205_000;
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    publish(
        &alice,
        vec![indicator("domain", "first.example", Tlp::Green, &[])],
    )
    .await
    .unwrap();
    let requests: Vec<PublishRequest> = (0..WITHHELD)
        .collect::<Vec<_>>()
        .chunks(20_000)
        .map(|chunk| PublishRequest {
            items: chunk
                .iter()
                .map(|n| indicator("domain", &format!("amber-{n}.example"), Tlp::Amber, &[]))
                .collect(),
            distribution: None,
            groups: vec![],
        })
        .collect();
    alice.publish(tokio_stream::iter(requests)).await.unwrap();
    let visible: Vec<wire::Item> = (0..150)
        .map(|n| indicator("domain", &format!("green-{n}.example"), Tlp::Green, &[]))
        .collect();
    publish(&alice, visible).await.unwrap();

    let mut sizes = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = bob
            .query(ItemFilter::default(), 100, token.clone())
            .await
            .unwrap();
        sizes.push(page.items.len());
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        sizes,
        [100, 51, 0],
        "page sizes as the researcher sees them"
    );
    hq.stop().await;
}
