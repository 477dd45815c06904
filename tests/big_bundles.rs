//! A bundle of 100,000 items (about 60 MB, more than any single pull message may hold)
//! crosses a link end to end over mutual TLS, whole and verified: once over a direct
//! link, and once through a connection cut every 8 MiB, where it can arrive only if the
//! link continues the transfer where each connection broke.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::Pki;
use common::proxy::CuttingProxy;
use entente::rpc::proto::PublishRequest;
use entente::wire;
use entente::{Node, NodeId};
use prost::Message;

const DEADLINE: Duration = Duration::from_secs(600);
const ITEMS: usize = 100_000;
const OPEN: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";

fn config(pki: &Pki, id: &NodeId, peers: &[(&str, String)]) -> std::path::PathBuf {
    let path = common::write_config(pki, id, &[common::client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    // The largest publish message a node may be configured to take.
    text.push_str(&format!(
        "\n[limits]\npublish_message_bytes = {}\n",
        entente::limits::MAX_PUBLISH_MESSAGE_BYTES
    ));
    for (peer, address) in peers {
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{peer}\"\naddress = \"{address}\"\nrole = \"peer\"\n{OPEN}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// 100,000 GREEN domains with descriptions of random hex (so that compression does
/// not shrink the transfer much): about 600 bytes each.
fn items() -> Vec<wire::Item> {
    (0..ITEMS)
        .map(|i| {
            let noise: String = (0..36)
                .map(|_| format!("{:016x}", rand::random::<u64>()))
                .collect();
            wire::Item {
                id: String::new(),
                modified_unix_ms: 0,
                tlp: wire::Tlp::Green as i32,
                tags: vec![],
                kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                    indicator_type: "domain".into(),
                    value: format!("host-{i}.example"),
                    description: noise,
                    ..Default::default()
                })),
            }
        })
        .collect()
}

/// Waits until `node` holds `id` and returns it as verified again from its store.
async fn arrives(node: &Node, id: &entente::model::BundleId) -> entente::crypto::VerifiedBundle {
    let start = Instant::now();
    loop {
        if let Some(verified) = node.engine().verify_held(id).unwrap() {
            return verified;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} did not receive the bundle",
            node.id()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_of_100000_items_crosses_a_link_whole_even_when_cut_every_8_mib() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let paris = pki.node("paris.office");
    pki.client("analyst.alice");
    let hq_node = common::start(&config(
        &pki,
        &hq,
        &[
            ("berlin.office", "127.0.0.1:1".into()),
            ("paris.office", "127.0.0.1:1".into()),
        ],
    ))
    .await;
    let alice = common::connect(&pki, &hq_node, "analyst.alice").await;
    let request = PublishRequest {
        items: items(),
        distribution: None,
        groups: vec![],
    };
    let size = request.encoded_len();
    assert!(
        size > 56 << 20 && size < entente::limits::MAX_PUBLISH_MESSAGE_BYTES,
        "{size} bytes"
    );
    let published = alice
        .publish(tokio_stream::iter(vec![request]))
        .await
        .unwrap();
    let id = entente::model::BundleId::parse(&published.bundle_ids[0]).unwrap();
    let held = hq_node.engine().store().held_bundle(&id).unwrap().unwrap();
    let bundle_bytes = held.signed(&held.items).encoded_len();
    assert!(
        bundle_bytes > 16 * entente::sync::MAX_PULL_MESSAGE_BYTES,
        "{bundle_bytes} bytes"
    );
    drop(held);

    let proxy = CuttingProxy::start(hq_node.local_addr(), 8 << 20).await;
    let berlin_node = common::start(&config(
        &pki,
        &berlin,
        &[("redmond.hq", hq_node.local_addr().to_string())],
    ))
    .await;
    let paris_node = common::start(&config(
        &pki,
        &paris,
        &[("redmond.hq", proxy.addr.to_string())],
    ))
    .await;

    for node in [&berlin_node, &paris_node] {
        let verified = arrives(node, &id).await;
        assert_eq!(verified.items().len(), ITEMS, "{}", node.id());
        assert_eq!(verified.header().origin, hq);
    }
    let cuts = proxy.cuts.load(Ordering::Relaxed);
    let carried = proxy.carried.load(Ordering::Relaxed);
    eprintln!(
        "bundle of {bundle_bytes} bytes; through the proxy: {carried} bytes in {} connections ({cuts} cut)",
        cuts + 1
    );
    // Cut several times in the middle of the transfer, the link still made progress:
    // each connection carried on from where the last broke instead of starting over.
    assert!(cuts >= 2, "{cuts} cuts");
    assert!(
        (carried as usize) < 2 * bundle_bytes,
        "{carried} bytes carried for a bundle of {bundle_bytes}"
    );
    for node in [paris_node, berlin_node, hq_node] {
        node.shutdown(Duration::from_secs(30)).await.unwrap();
    }
}

/// A transfer continued on a new connection used to be recorded in the disclosure
/// ledger again each time: the serving node read the bundle again for the page the
/// continuation starts with, and recorded all of it, so a bundle that crossed in four
/// connections was listed four times as delivered to its puller. A continued transfer
/// is recorded once, when it was first sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_continued_after_a_cut_is_recorded_once() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let paris = pki.node("paris.office");
    pki.client("analyst.alice");
    let hq_node = common::start(&config(
        &pki,
        &hq,
        &[("paris.office", "127.0.0.1:1".into())],
    ))
    .await;
    let alice = common::connect(&pki, &hq_node, "analyst.alice").await;
    let mut items = items();
    items.truncate(16_000);
    let published = alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items,
            distribution: None,
            groups: vec![],
        }]))
        .await
        .unwrap();
    let id = entente::model::BundleId::parse(&published.bundle_ids[0]).unwrap();

    let proxy = CuttingProxy::start(hq_node.local_addr(), 3 << 20).await;
    let paris_node = common::start(&config(
        &pki,
        &paris,
        &[("redmond.hq", proxy.addr.to_string())],
    ))
    .await;
    let verified = arrives(&paris_node, &id).await;
    assert_eq!(verified.items().len(), 16_000);
    let cuts = proxy.cuts.load(Ordering::Relaxed);
    assert!(cuts >= 2, "the transfer was cut {cuts} times");

    // Every item of the bundle is recorded as delivered to Paris exactly once.
    let mut times = std::collections::BTreeMap::<u32, usize>::new();
    let mut records = 0;
    let mut after = 0;
    loop {
        let page = hq_node
            .engine()
            .store()
            .ledger(after, 1000, Some(&paris), None)
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for record in &page {
            for (bundle, indices) in &record.entry.deliveries {
                if bundle == &id {
                    records += 1;
                    for index in indices {
                        *times.entry(*index).or_default() += 1;
                    }
                }
            }
        }
    }
    assert_eq!(times.len(), 16_000);
    let most = times.values().copied().max().unwrap_or(0);
    assert_eq!(
        most, 1,
        "a transfer cut {cuts} times was recorded in {records} records"
    );
    for node in [paris_node, hq_node] {
        node.shutdown(Duration::from_secs(30)).await.unwrap();
    }
}
