//! A malicious peer: a configured, correctly certified node that serves forged,
//! tampered, replayed-older, over-hop, wrong-recipient and wrongly forwarded bundles.
//! The puller rejects them all: none is stored, none reaches its change feed, so none
//! is ever forwarded.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use common::rogue::{Rogue, RogueServer, feed, sign};
use entente::client::NodeClient;
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, NodeId, Tlp};
use entente::rpc::proto::ItemFilter;
use entente::wire;

const DEADLINE: Duration = Duration::from_secs(30);

fn indicator(id: &ItemId, value: &str, tlp: Tlp, modified: i64) -> Item {
    Item {
        id: id.clone(),
        modified_ms: modified,
        tlp,
        tags: vec![],
        kind: ItemKind::Indicator(Indicator {
            indicator_type: IndicatorType::Domain,
            value: value.into(),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: modified,
            valid_until_ms: None,
            properties: Default::default(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malicious_bundle_is_rejected_and_never_forwarded() {
    common::init_logging();
    let pki = Pki::new();
    let hq_id = pki.node("redmond.hq");
    let berlin = pki.material(&pki.node("berlin.office"));
    let rogue = pki.material(&pki.node("rogue.node"));
    pki.client("analyst.alice");
    let now = entente::engine::now_ms();

    // The one legitimate bundle the rogue also forwards: berlin's GREEN item, version 2.
    let shared = ItemId::new_random();
    let legit: wire::SignedBundle = sign(
        &berlin,
        &[indicator(
            &shared,
            "v2.example.com",
            Tlp::Green,
            now - 10_000,
        )],
        Distribution::default(),
    );
    let legit_header = legit.header_bytes.clone();
    let legit_disclosures = legit.disclosures.clone();
    // A replay of an older version of the same item.
    let older = sign(
        &berlin,
        &[indicator(
            &shared,
            "v1.example.com",
            Tlp::Green,
            now - 20_000,
        )],
        Distribution::default(),
    );
    // Forged: the rogue signs a bundle that claims berlin as origin.
    let mut forged = sign(
        &rogue,
        &[indicator(
            &ItemId::new_random(),
            "forged.example.com",
            Tlp::Green,
            now,
        )],
        Distribution::default(),
    );
    {
        use prost::Message;
        let mut header = wire::BundleHeader::decode(forged.header_bytes.as_slice()).unwrap();
        header.origin = "berlin.office".into();
        forged.header_bytes = header.encode_to_vec();
    }
    // Tampered: a valid berlin bundle with one item byte changed.
    let mut tampered = sign(
        &berlin,
        &[indicator(
            &ItemId::new_random(),
            "tampered.example.com",
            Tlp::Green,
            now,
        )],
        Distribution::default(),
    );
    let last = tampered.disclosures[0].item_bytes.len() - 1;
    tampered.disclosures[0].item_bytes[last] ^= 1;
    // Over hop: berlin allows one transfer; via the rogue it would be the second.
    let over_hop = sign(
        &berlin,
        &[indicator(
            &ItemId::new_random(),
            "over-hop.example.com",
            Tlp::Green,
            now,
        )],
        Distribution {
            max_hops: Some(1),
            recipients: vec![],
        },
    );
    // Wrong recipient: only singapore may hold it.
    let wrong_recipient = sign(
        &berlin,
        &[indicator(
            &ItemId::new_random(),
            "not-for-hq.example.com",
            Tlp::Green,
            now,
        )],
        Distribution {
            max_hops: None,
            recipients: vec![NodeId::new("singapore.office").unwrap()],
        },
    );
    // AMBER passed on by a node that is not its origin.
    let amber = sign(
        &berlin,
        &[indicator(
            &ItemId::new_random(),
            "amber.example.com",
            Tlp::Amber,
            now,
        )],
        Distribution::default(),
    );

    // Equivocation: berlin's own key signs a second header under the id of the
    // legitimate bundle; then one more legitimate bundle follows, which must still arrive
    // (a conflict is rejected per bundle, it does not stall the link).
    let conflicting = {
        use prost::Message;
        let mut header = wire::BundleHeader::decode(legit_header.as_slice()).unwrap();
        header.created_unix_ms -= 1;
        let header_bytes = header.encode_to_vec();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            berlin.private_key_pkcs8().unwrap(),
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
            disclosures: legit_disclosures,
        }
    };
    let after = sign(
        &berlin,
        &[indicator(
            &ItemId::new_random(),
            "after.example.com",
            Tlp::Green,
            now,
        )],
        Distribution::default(),
    );
    let rogue_service = Rogue {
        feed: vec![
            feed(1, legit, 1),
            feed(2, older, 1),
            feed(3, forged, 1),
            feed(4, tampered, 1),
            feed(5, over_hop.clone(), 1),
            feed(6, wrong_recipient, 1),
            feed(7, amber, 1),
            // Claiming to be the origin of berlin's bundle.
            feed(8, over_hop, 0),
            feed(9, conflicting, 1),
            feed(10, after, 1),
        ],
        certificates: Arc::new(Mutex::new(vec![
            berlin.certificate_der().to_vec(),
            rogue.certificate_der().to_vec(),
        ])),
    };

    // Serve the rogue over real mTLS, accepting hq.
    let rogue_server = RogueServer::start(&rogue, &hq_id, rogue_service).await;
    let rogue_addr = rogue_server.addr;

    // hq pulls from the rogue.
    let config = common::write_config(
        &pki,
        &hq_id,
        &[common::client("analyst.alice", "analyst")],
        &[],
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"rogue.node\"\naddress = \"{rogue_addr}\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true\n"
    ));
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let who = NodeId::new("analyst.alice").unwrap();
    let analyst = NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.local_addr().to_string(),
        node.id(),
    )
    .await
    .unwrap();

    // Wait until the rogue's whole feed was consumed (the cursor reaches its head).
    let start = Instant::now();
    while common::rogue::plain(node.engine().store().cursor(&rogue.id).unwrap()) < 10 {
        assert!(
            start.elapsed() < DEADLINE,
            "hq did not consume the rogue's feed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let held = analyst
        .query(
            ItemFilter {
                include_expired: true,
                ..Default::default()
            },
            100,
            vec![],
        )
        .await
        .unwrap()
        .items;
    let values: Vec<String> = held
        .iter()
        .map(|s| match s.item.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(wire::item::Kind::Indicator(i)) => i.value.clone(),
            _ => String::new(),
        })
        .collect();
    // Only the legitimate items, at their newest version; nothing else was stored.
    let values: std::collections::BTreeSet<String> = values.into_iter().collect();
    assert_eq!(
        values,
        ["after.example.com", "v2.example.com"]
            .map(String::from)
            .into()
    );
    // Only those two bundles entered hq's change feed, so nothing else can be forwarded.
    assert_eq!(node.engine().store().feed_head(), 2);

    node.shutdown(DEADLINE).await.unwrap();
    rogue_server.stop().await;
}
