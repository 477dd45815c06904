//! Bundles cross a link in parts, and a hostile peer cannot use them: a pull message
//! too large to decode safely is refused before it is decoded; parts that do not match
//! the signed header, come out of order, belong to another bundle, bring more than they
//! announced or never finish are refused, and nothing of their bundle is stored.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use common::rogue::{Rogue, RogueServer, Scripted, checkpoint, crafted, feed, sign};
use entente::client::NodeClient;
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, Tlp};
use entente::rpc::proto::{FeedBundle, LinkStatus, PullResponse, pull_response};
use entente::transport::TlsMaterial;
use entente::{Node, NodeId};
use prost::Message;

const DEADLINE: Duration = Duration::from_secs(60);

/// `n` GREEN domains of about 550 bytes each, signed by `by` as one bundle.
fn bundle(by: &TlsMaterial, n: usize, tag: &str) -> entente::wire::SignedBundle {
    let now = entente::engine::now_ms();
    let items: Vec<Item> = (0..n)
        .map(|i| Item {
            id: ItemId::new_random(),
            modified_ms: now - 10_000,
            tlp: Tlp::Green,
            tags: vec![],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: format!("host-{tag}-{i}.example"),
                description: "d".repeat(500),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: now - 10_000,
                valid_until_ms: None,
                properties: Default::default(),
            }),
        })
        .collect();
    sign(by, &items, Distribution::default())
}

fn bundle_id(bundle: &entente::wire::SignedBundle) -> entente::model::BundleId {
    entente::crypto::parse_header(&bundle.header_bytes)
        .unwrap()
        .0
        .bundle_id
}

/// The part a `Pull` message carries.
fn part_of(message: &mut PullResponse) -> &mut entente::rpc::proto::BundlePart {
    match message.event.as_mut() {
        Some(pull_response::Event::Bundle(FeedBundle {
            part: Some(part), ..
        })) => part,
        _ => panic!("not a part"),
    }
}

/// A node that pulls from the rogue at `rogue_addr`, and its operator's connection.
struct Hq {
    node: Node,
    admin: NodeClient,
    rogue: NodeId,
}

impl Hq {
    async fn start(
        pki: &Pki,
        hq: &NodeId,
        rogue: &NodeId,
        rogue_addr: std::net::SocketAddr,
    ) -> Self {
        let config = common::write_config(pki, hq, &[common::client("ops.admin", "admin")], &[]);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{rogue}\"\naddress = \"{rogue_addr}\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
        ));
        std::fs::write(&config, text).unwrap();
        let node = common::start(&config).await;
        let admin = common::connect(pki, &node, "ops.admin").await;
        Self {
            node,
            admin,
            rogue: rogue.clone(),
        }
    }

    /// Waits until the link to the rogue satisfies `done`.
    async fn wait_link(&self, what: &str, done: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
        let start = Instant::now();
        loop {
            let links = self.admin.links().await.unwrap().links;
            let link = links
                .into_iter()
                .find(|l| l.peer == self.rogue.as_str())
                .unwrap_or_default();
            if done(&link) {
                return link;
            }
            assert!(start.elapsed() < DEADLINE, "{what}: {link:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The position stored for the rogue's feed (its tokens are positions in the clear).
    fn cursor(&self) -> u64 {
        common::rogue::plain(self.node.engine().store().cursor(&self.rogue).unwrap())
    }

    fn feed_head(&self) -> u64 {
        self.node.engine().store().feed_head()
    }

    fn holds(&self, bundle: &entente::wire::SignedBundle) -> bool {
        self.node
            .engine()
            .store()
            .held_bundle(&bundle_id(bundle))
            .unwrap()
            .is_some()
    }
}

struct Setup {
    pki: Pki,
    hq: NodeId,
    rogue: NodeId,
    material: TlsMaterial,
}

fn setup() -> Setup {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let rogue = pki.node("rogue.node");
    pki.client("ops.admin");
    let material = pki.material(&rogue);
    Setup {
        pki,
        hq,
        rogue,
        material,
    }
}

/// An item whose bytes do not match its leaf digest refuses its bundle, though the
/// parts before it were fine: none of the bundle's items is stored, and the link goes
/// on with the next bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_that_does_not_match_its_leaf_digest_refuses_its_whole_bundle() {
    let s = setup();
    let big = bundle(&s.material, 5000, "big");
    let small = bundle(&s.material, 3, "small");
    let mut messages = entente::rpc::bundle_responses(1, 0, big.clone());
    assert!(messages.len() >= 3, "{} parts", messages.len());
    // The first item of the second part, changed by one byte.
    let part = part_of(&mut messages[1]);
    let mut items: Vec<entente::wire::Disclosure> =
        entente::sync::parts::disclosures(&part.disclosures)
            .map(Result::unwrap)
            .collect();
    let last = items[0].item_bytes.len() - 1;
    items[0].item_bytes[last] ^= 1;
    part.disclosures = items
        .iter()
        .flat_map(|d| d.encode_length_delimited_to_vec())
        .collect();
    let rogue = Rogue {
        feed: vec![crafted(1, messages), feed(2, small.clone(), 0)],
        certificates: Arc::new(Mutex::new(vec![s.material.certificate_der().to_vec()])),
    };
    let server = RogueServer::start(&s.material, &s.hq, rogue).await;
    let hq = Hq::start(&s.pki, &s.hq, &s.rogue, server.addr).await;
    let link = hq
        .wait_link("the link did not pass the refused bundle", |l| {
            // The link's counts are read through the admin service, apart from the
            // cursor: wait for both bundles to be counted too.
            hq.cursor() >= 2 && l.bundles_received + l.bundles_rejected >= 2
        })
        .await;
    assert_eq!(link.bundles_rejected, 1, "{link:?}");
    assert_eq!(link.bundles_received, 1, "{link:?}");
    assert!(
        link.last_error.contains("does not match its digest"),
        "{link:?}"
    );
    assert!(!hq.holds(&big), "part of the refused bundle was stored");
    assert!(hq.holds(&small));
    assert_eq!(hq.feed_head(), 1);
    hq.node.shutdown(DEADLINE).await.unwrap();
    server.stop().await;
}

/// Transfers that break the protocol end the connection with a clear error, the link
/// keeps its cursor before them, and nothing of their bundle is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_that_break_the_transfer_are_refused_and_nothing_partial_is_stored() {
    let s = setup();
    let big = bundle(&s.material, 5000, "big");
    let other = bundle(&s.material, 5000, "other");
    let parts = entente::rpc::bundle_responses(1, 0, big.clone());
    let other_parts = entente::rpc::bundle_responses(1, 0, other);
    assert!(parts.len() >= 3 && other_parts.len() >= 3);

    let mut fewer_announced = parts.clone();
    part_of(&mut fewer_announced[0]).disclosed -= 1;
    let mut repeated_item = parts.clone();
    {
        let part = part_of(&mut repeated_item[1]);
        let first: Vec<u8> = entente::sync::parts::disclosures(&part.disclosures)
            .next()
            .unwrap()
            .unwrap()
            .encode_length_delimited_to_vec();
        part.disclosures.extend_from_slice(&first);
    }
    let whole = PullResponse {
        event: Some(pull_response::Event::Bundle(FeedBundle {
            whole_bundle: bundle(&s.material, 3, "whole").encode_to_vec(),
            hops: 0,
            part: None,
            after: Vec::new(),
        })),
    };
    let cases: Vec<(&str, Vec<PullResponse>, &str)> = vec![
        (
            "more items than announced",
            fewer_announced,
            "disclosures it announced",
        ),
        ("an item twice", repeated_item, "increasing order"),
        (
            "a part of another bundle",
            vec![parts[0].clone(), other_parts[1].clone()],
            "does not follow",
        ),
        (
            "parts out of order",
            vec![parts[0].clone(), parts[2].clone(), parts[1].clone()],
            "does not follow",
        ),
        (
            "a bundle that never finishes",
            parts[..parts.len() - 1].to_vec(),
            "checkpoint in the middle of a bundle transfer",
        ),
        ("a later part first", parts[1..].to_vec(), "does not follow"),
        ("a whole bundle (protocol 1)", vec![whole], "protocol 1"),
    ];
    for (case, messages, expected) in cases {
        let rogue = Rogue {
            feed: vec![crafted(1, messages)],
            certificates: Arc::new(Mutex::new(vec![s.material.certificate_der().to_vec()])),
        };
        let server = RogueServer::start(&s.material, &s.hq, rogue).await;
        let hq = Hq::start(&s.pki, &s.hq, &s.rogue, server.addr).await;
        let link = hq
            .wait_link(case, |l| l.last_error.contains(expected))
            .await;
        assert!(
            hq.node
                .engine()
                .store()
                .cursor(&hq.rogue)
                .unwrap()
                .is_empty(),
            "{case}: {link:?}"
        );
        assert!(!hq.holds(&big), "{case}: part of the bundle was stored");
        assert_eq!(hq.feed_head(), 0, "{case}");
        hq.node.shutdown(DEADLINE).await.unwrap();
        server.stop().await;
        // A fresh store for the next case.
        std::fs::remove_dir_all(s.pki.path().join(format!("data-{}", s.hq))).unwrap();
    }
}

/// A message larger than the puller decodes (here 31 MB of empty disclosures, which
/// would take gigabytes once decoded) is refused from its length alone; the link keeps
/// what came before it, tries again, and goes on once the peer sends what it may.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_message_too_large_to_decode_safely_is_refused_unread() {
    let s = setup();
    let first = bundle(&s.material, 3, "first");
    let second = bundle(&s.material, 3, "second");
    // A whole bundle of 15.5 million empty disclosures, each two bytes on the wire.
    let attack = PullResponse {
        event: Some(pull_response::Event::Bundle(FeedBundle {
            whole_bundle: [0x1a, 0x00].repeat(15_500_000),
            hops: 0,
            part: None,
            after: Vec::new(),
        })),
    };
    assert!(attack.encoded_len() > 31_000_000);
    let mut script = entente::rpc::bundle_responses(1, 0, first.clone());
    script.push(attack);
    let rogue = Scripted::new(script, vec![s.material.certificate_der().to_vec()]);
    let server = RogueServer::start(&s.material, &s.hq, rogue.clone()).await;
    let hq = Hq::start(&s.pki, &s.hq, &s.rogue, server.addr).await;
    let link = hq
        .wait_link("the oversized message was not refused", |l| {
            l.last_error.contains("message length too large")
        })
        .await;
    assert!(link.last_error.contains("2097152"), "{link:?}");
    assert!(hq.holds(&first));
    // It tries again, and is refused again.
    let start = Instant::now();
    while rogue.pulls() < 3 {
        assert!(start.elapsed() < DEADLINE, "the link stopped trying");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The peer mends its ways: the link goes on.
    let mut mended = entente::rpc::bundle_responses(2, 0, second.clone());
    mended.push(checkpoint(2, 2));
    rogue.scripts.lock().unwrap().push(mended);
    hq.wait_link("the link did not go on", |_| hq.cursor() >= 2)
        .await;
    assert!(hq.holds(&second));
    hq.node.shutdown(DEADLINE).await.unwrap();
    server.stop().await;
}

/// A puller of protocol 1 (which reads whole bundles, and would skip parts) is refused
/// with a clear error rather than served parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_of_protocol_1_is_refused_clearly() {
    let s = setup();
    let config = common::write_config(
        &s.pki,
        &s.hq,
        &[common::peer(s.rogue.as_str(), "127.0.0.1:1")],
        &[],
    );
    let node = common::start(&config).await;
    let channel = entente::transport::connect(
        s.material.client_config().unwrap(),
        &node.local_addr().to_string(),
        &s.hq,
    )
    .await
    .unwrap();
    let status = entente::rpc::proto::federation_client::FederationClient::new(channel)
        .pull(entente::rpc::proto::PullRequest {
            cursor: Vec::new(),
            follow: false,
            protocol_version: 0,
            resume: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("protocol 1") && status.message().contains("upgrade"),
        "{status:?}"
    );
    node.shutdown(DEADLINE).await.unwrap();
}
