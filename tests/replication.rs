//! Replication between real nodes over mTLS, each with its own store: pull with a
//! live tail, the delivery rule on the way out (TLP, max_hops, forward_third_party),
//! multi-hop forwarding with hop counts, and exact resume after a restart.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Pki;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);

fn item(value: &str, tlp: Tlp) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

/// A node config with an analyst client and the given `[[peer]]` blocks.
fn config(pki: &Pki, id: &NodeId, peers: &str) -> PathBuf {
    let path = common::write_config(pki, id, &[common::client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(peers);
    std::fs::write(&path, text).unwrap();
    path
}

fn peer(id: &str, addr: &str, policy: &str) -> String {
    format!("\n[[peer]]\nid = \"{id}\"\naddress = \"{addr}\"\nrole = \"peer\"\n{policy}\n")
}

/// An open policy: GREEN and below, every type.
const OPEN: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";

/// redmond.hq started (its policy for berlin.office is `hq_for_berlin`), and the
/// configuration of berlin.office pulling from it under an open policy, not started.
struct HqAndBerlin {
    pki: Pki,
    hq_config: PathBuf,
    hq_node: Node,
    berlin_config: PathBuf,
}

async fn hq_and_berlin(hq_for_berlin: &str) -> HqAndBerlin {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let hq_config = config(
        &pki,
        &hq,
        &peer("berlin.office", "127.0.0.1:1", hq_for_berlin),
    );
    let hq_node = common::start(&hq_config).await;
    let berlin_config = config(
        &pki,
        &berlin,
        &peer("redmond.hq", &hq_node.local_addr().to_string(), OPEN),
    );
    HqAndBerlin {
        pki,
        hq_config,
        hq_node,
        berlin_config,
    }
}

async fn analyst(pki: &Pki, node: &Node) -> NodeClient {
    let who = NodeId::new("analyst.alice").unwrap();
    NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.local_addr().to_string(),
        node.id(),
    )
    .await
    .unwrap()
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>, max_hops: Option<u32>) {
    let request = PublishRequest {
        items,
        distribution: Some(wire::Distribution {
            max_hops,
            recipients: vec![],
        }),
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .unwrap();
}

async fn held(client: &NodeClient) -> Vec<StoredItem> {
    client
        .query(ItemFilter::default(), 1000, vec![])
        .await
        .unwrap()
        .items
}

fn values(items: &[StoredItem]) -> BTreeSet<String> {
    items
        .iter()
        .map(|s| match s.item.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(wire::item::Kind::Indicator(i)) => i.value.clone(),
            _ => String::new(),
        })
        .collect()
}

/// Waits until `client` holds exactly `expected` (by value), failing after the deadline.
async fn converges(client: &NodeClient, expected: &[&str]) -> Vec<StoredItem> {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let items = held(client).await;
        if values(&items) == expected {
            return items;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "expected {expected:?}, holds {:?}",
            values(&items)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_nodes_converges_to_what_the_rule_allows() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let singapore = pki.node("singapore.office");
    pki.client("analyst.alice");

    // hq serves berlin up to AMBER; berlin passes third-party GREEN on to singapore.
    let hq_node = common::start(&config(
        &pki,
        &hq,
        &peer(
            "berlin.office",
            "127.0.0.1:1",
            "max_tlp = \"AMBER\"\nallow_types = [\"*\"]",
        ),
    ))
    .await;
    let berlin_config = config(
        &pki,
        &berlin,
        &(peer(
            "redmond.hq",
            &hq_node.local_addr().to_string(),
            "max_tlp = \"GREEN\"\nallow_types = [\"*\"]",
        ) + &peer(
            "singapore.office",
            "127.0.0.1:1",
            "max_tlp = \"AMBER\"\nallow_types = [\"*\"]\nforward_third_party = true",
        )),
    );
    let berlin_node = common::start(&berlin_config).await;
    let singapore_node = common::start(&config(
        &pki,
        &singapore,
        &peer(
            "berlin.office",
            &berlin_node.local_addr().to_string(),
            "max_tlp = \"GREEN\"\nallow_types = [\"*\"]",
        ),
    ))
    .await;

    let at_hq = analyst(&pki, &hq_node).await;
    publish(
        &at_hq,
        vec![
            item("green.example.com", Tlp::Green),
            item("amber.example.com", Tlp::Amber),
            item("red.example.com", Tlp::Red),
        ],
        None,
    )
    .await;
    publish(
        &at_hq,
        vec![item("one-hop.example.com", Tlp::Green)],
        Some(1),
    )
    .await;
    publish(
        &at_hq,
        vec![item("hq-only.example.com", Tlp::Green)],
        Some(0),
    )
    .await;

    let at_berlin = analyst(&pki, &berlin_node).await;
    let at_singapore = analyst(&pki, &singapore_node).await;
    let berlin_items = converges(
        &at_berlin,
        &[
            "green.example.com",
            "amber.example.com",
            "one-hop.example.com",
        ],
    )
    .await;
    for stored in &berlin_items {
        let p = stored.provenance.as_ref().unwrap();
        assert_eq!(
            (p.origin.as_str(), p.received_from.as_str(), p.hops),
            ("redmond.hq", "redmond.hq", 1)
        );
        assert!(p.signature_verified);
    }
    // AMBER stays with berlin; max_hops 1 stops at berlin; GREEN travels on at hop 2.
    let singapore_items = converges(&at_singapore, &["green.example.com"]).await;
    let p = singapore_items[0].provenance.as_ref().unwrap();
    assert_eq!(
        (p.origin.as_str(), p.received_from.as_str(), p.hops),
        ("redmond.hq", "berlin.office", 2)
    );

    // The operator sees berlin's link to hq: connected, caught up, bundles counted.
    let operator = {
        let who = NodeId::new("berlin.office").unwrap();
        NodeClient::connect(
            pki.material(&who).client_config().unwrap(),
            &who,
            &berlin_node.local_addr().to_string(),
            berlin_node.id(),
        )
        .await
        .unwrap()
    };
    let links = operator.links().await.unwrap().links;
    let to_hq = links
        .iter()
        .find(|l| l.peer == "redmond.hq")
        .expect("a link to hq");
    assert!(to_hq.connected, "{to_hq:?}");
    assert!(to_hq.bundles_received >= 2, "{to_hq:?}");
    assert_eq!(to_hq.bundles_rejected, 0, "{to_hq:?}");
    assert_eq!(to_hq.items_received, 3, "{to_hq:?}");
    assert_eq!(to_hq.items_rejected, 0, "{to_hq:?}");
    // The same through the CLI the operator uses.
    let out = {
        let config = berlin_config.clone();
        let target = format!("berlin.office@{}", berlin_node.local_addr());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
                .args(["status", "--node", &target, "--config"])
                .arg(&config)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("link redmond.hq") && text.contains("connected"),
        "{text}"
    );
    assert!(text.contains("items 3 received / 0 rejected"), "{text}");

    // Live tail: a later publish arrives without reconnecting.
    publish(&at_hq, vec![item("later.example.com", Tlp::Clear)], None).await;
    converges(&at_singapore, &["green.example.com", "later.example.com"]).await;

    // Resume: berlin stops, hq publishes, berlin restarts on the same store and catches
    // up with nothing lost or duplicated.
    berlin_node.shutdown(DEADLINE).await.unwrap();
    publish(
        &at_hq,
        vec![item("while-away.example.com", Tlp::Green)],
        None,
    )
    .await;
    let berlin_node = common::start(&berlin_config).await;
    // The operator waits for the restarted node's initial sync from the CLI. Its link
    // to hq catches up; the one to singapore (an address nothing listens on) cannot,
    // and is named when the wait gives up.
    let out = {
        let config = berlin_config.clone();
        let target = format!("berlin.office@{}", berlin_node.local_addr());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
                .args(["status", "--wait", "--timeout", "8", "--node", &target])
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        errors.contains("not caught up after 8s: singapore.office"),
        "{errors}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("redmond.hq: caught up;"))
        .unwrap_or_else(|| panic!("no caught-up line for hq:\n{text}"));
    assert!(line.contains("items received in"), "{line}");
    assert_eq!(
        common::opened_cursor(&pki, &hq_node, &berlin_node),
        hq_node.engine().store().feed_head(),
        "status --wait returned before berlin caught up with hq"
    );
    let at_berlin = analyst(&pki, &berlin_node).await;
    let items = converges(
        &at_berlin,
        &[
            "green.example.com",
            "amber.example.com",
            "one-hop.example.com",
            "later.example.com",
            "while-away.example.com",
        ],
    )
    .await;
    assert_eq!(items.len(), 5);

    singapore_node.shutdown(DEADLINE).await.unwrap();
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triangle_of_forwarding_peers_converges_and_goes_quiet() {
    let pki = Pki::new();
    let ids = ["alpha.node", "bravo.node", "charlie.node"].map(|i| pki.node(i));
    pki.client("analyst.alice");
    let policy = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true";
    // Bind order: each node needs the others' addresses, so start with placeholders and
    // reload once every address is known.
    let mut configs = Vec::new();
    let mut nodes = Vec::new();
    for id in &ids {
        let others: String = ids
            .iter()
            .filter(|o| *o != id)
            .map(|o| peer(o.as_str(), "127.0.0.1:1", policy))
            .collect();
        let path = config(&pki, id, &others);
        nodes.push(common::start(&path).await);
        configs.push(path);
    }
    // Rewrite every config with the real addresses and restart the nodes on them.
    let addrs: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    for node in nodes.drain(..) {
        node.shutdown(DEADLINE).await.unwrap();
    }
    for (i, id) in ids.iter().enumerate() {
        let others: String = ids
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(j, o)| peer(o.as_str(), &addrs[j], policy))
            .collect();
        let path = config(&pki, id, &others);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("127.0.0.1:0", &addrs[i]);
        std::fs::write(&path, text).unwrap();
        nodes.push(common::start(&path).await);
    }

    let clients = [
        analyst(&pki, &nodes[0]).await,
        analyst(&pki, &nodes[1]).await,
        analyst(&pki, &nodes[2]).await,
    ];
    publish(
        &clients[0],
        vec![item("from-alpha.example.com", Tlp::Green)],
        None,
    )
    .await;
    publish(
        &clients[1],
        vec![item("from-bravo.example.com", Tlp::Clear)],
        None,
    )
    .await;
    let all = ["from-alpha.example.com", "from-bravo.example.com"];
    for c in &clients {
        converges(c, &all).await;
    }
    // Quiet: the feeds stop moving. Duplicates merge without re-feeding, so once every
    // node holds every item at its shortest hop count, nothing changes any more.
    let heads = |nodes: &[Node]| {
        nodes
            .iter()
            .map(|n| n.engine().store().feed_head())
            .collect::<Vec<_>>()
    };
    let start = Instant::now();
    let mut last = heads(&nodes);
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(500) {
        assert!(
            start.elapsed() < DEADLINE,
            "the triangle did not go quiet: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = heads(&nodes);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    // Each node fed each bundle at most twice (once received, once at a shorter path).
    assert!(last.iter().all(|h| *h <= 4), "feeds kept growing: {last:?}");
    for c in &clients {
        for s in held(c).await {
            let p = s.provenance.unwrap();
            assert!(
                p.hops <= 1,
                "an item stayed at hop {} in a full triangle",
                p.hops
            );
        }
    }
    for node in nodes {
        node.shutdown(DEADLINE).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_policy_replays_the_feed_to_that_partner() {
    let HqAndBerlin {
        pki,
        hq_config,
        hq_node,
        berlin_config,
        ..
    } = hq_and_berlin("max_tlp = \"GREEN\"\nallow_types = [\"ipv4\"]").await;
    let berlin_node = common::start(&berlin_config).await;
    let at_hq = analyst(&pki, &hq_node).await;
    let ip = wire::Item {
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "ipv4".into(),
            value: "198.51.100.1".into(),
            ..Default::default()
        })),
        ..item("unused", Tlp::Green)
    };
    publish(
        &at_hq,
        vec![ip, item("widened.example.com", Tlp::Green)],
        None,
    )
    .await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    converges(&at_berlin, &["198.51.100.1"]).await;

    // hq widens berlin's policy and reloads: the open stream replays hq's feed, and the
    // domain withheld before now arrives, with no new publish.
    let text = std::fs::read_to_string(&hq_config)
        .unwrap()
        .replace("allow_types = [\"ipv4\"]", "allow_types = [\"*\"]");
    std::fs::write(&hq_config, text).unwrap();
    hq_node.reload_policy().unwrap();
    converges(&at_berlin, &["198.51.100.1", "widened.example.com"]).await;

    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_catch_up_pulls_only_the_new_entries() {
    let HqAndBerlin {
        pki,
        hq_node,
        berlin_config,
        ..
    } = hq_and_berlin(OPEN).await;
    let berlin_node = common::start(&berlin_config).await;
    let at_hq = analyst(&pki, &hq_node).await;
    let operator = {
        let who = NodeId::new("redmond.hq").unwrap();
        NodeClient::connect(
            pki.material(&who).client_config().unwrap(),
            &who,
            &hq_node.local_addr().to_string(),
            hq_node.id(),
        )
        .await
        .unwrap()
    };
    // Bundles served to berlin, counted from hq's disclosure ledger (one record per message).
    let served = |operator: &NodeClient| {
        let operator = operator.clone_channel();
        async move {
            let mut stream = operator
                .ledger_show(entente::rpc::proto::LedgerShowRequest {
                    partner: "berlin.office".into(),
                    since_unix_ms: 0,
                })
                .await
                .unwrap();
            let mut n = 0usize;
            while let Some(r) = stream.message().await.unwrap() {
                if r.path == "pull" {
                    n += 1;
                }
            }
            n
        }
    };

    publish(&at_hq, vec![item("before.example.com", Tlp::Green)], None).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    converges(&at_berlin, &["before.example.com"]).await;
    let served_before = served(&operator).await;
    assert_eq!(served_before, 1);

    // berlin goes offline; hq takes 10,000 items in 100 bundles.
    berlin_node.shutdown(DEADLINE).await.unwrap();
    let mut requests = Vec::new();
    for b in 0..100 {
        requests.push(PublishRequest {
            items: (0..100)
                .map(|i| item(&format!("b{b}-i{i}.example.com"), Tlp::Green))
                .collect(),
            distribution: None,
            groups: vec![],
        });
    }
    at_hq.publish(tokio_stream::iter(requests)).await.unwrap();

    let berlin_node = common::start(&berlin_config).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    let start = Instant::now();
    loop {
        let mut count = 0usize;
        let mut token = Vec::new();
        loop {
            let page = at_berlin
                .query(ItemFilter::default(), 1000, token)
                .await
                .unwrap();
            count += page.items.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if count == 10_001 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "berlin holds {count} of 10,001 items"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Exactly the 100 new bundles were served after the restart: the cursor resumed.
    assert_eq!(served(&operator).await - served_before, 100);
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embargo_delays_delivery_and_then_releases_it() {
    let HqAndBerlin {
        pki,
        hq_node,
        berlin_config,
        ..
    } = hq_and_berlin(&format!("{OPEN}\nembargo = \"2s\"")).await;
    let berlin_node = common::start(&berlin_config).await;
    let at_hq = analyst(&pki, &hq_node).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    let published = Instant::now();
    publish(
        &at_hq,
        vec![item("embargoed.example.com", Tlp::Green)],
        None,
    )
    .await;
    publish(
        &at_hq,
        vec![item("also-embargoed.example.com", Tlp::Green)],
        None,
    )
    .await;
    // Held back while the embargo runs, then delivered by the open stream, in order.
    converges(
        &at_berlin,
        &["embargoed.example.com", "also-embargoed.example.com"],
    )
    .await;
    assert!(
        published.elapsed() >= Duration::from_millis(1900),
        "delivered {:?} after publishing, before the 2 s embargo passed",
        published.elapsed()
    );
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

/// `entente status --wait` on a node whose initial sync spans several pages of its
/// peer's feed returns only once the whole feed is pulled, never on the first page
/// (whose bundles arrive before the peer's first checkpoint names its head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_wait_returns_only_after_a_multi_page_initial_sync() {
    const BUNDLES: usize = 700;
    let HqAndBerlin {
        pki,
        hq_node,
        berlin_config,
        ..
    } = hq_and_berlin(OPEN).await;
    let at_hq = analyst(&pki, &hq_node).await;
    let requests: Vec<PublishRequest> = (0..BUNDLES)
        .map(|n| PublishRequest {
            items: vec![item(&format!("page-{n}.example.com"), Tlp::Green)],
            distribution: Some(wire::Distribution::default()),
            groups: vec![],
        })
        .collect();
    at_hq.publish(tokio_stream::iter(requests)).await.unwrap();
    let head = hq_node.engine().store().feed_head();
    assert_eq!(head, BUNDLES as u64);

    let berlin_node = common::start(&berlin_config).await;
    let target = format!("berlin.office@{}", berlin_node.local_addr());
    let status_wait = move |json: bool| {
        let target = target.clone();
        let berlin_config = berlin_config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
                .args(["status", "--wait", "--timeout", "120", "--node", &target])
                .args(json.then_some("--json"))
                .arg("--config")
                .arg(&berlin_config)
                .output()
                .unwrap()
        })
    };
    let out = status_wait(false).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // When the command returned, berlin had pulled hq's whole feed.
    assert_eq!(
        common::opened_cursor(&pki, &hq_node, &berlin_node),
        head,
        "status --wait returned early:\n{text}"
    );
    assert!(text.contains("redmond.hq: caught up;"), "{text}");
    // The same wait with --json: one object once caught up, the link as it then stood.
    let out = status_wait(true).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(status["node"], "berlin.office", "{status}");
    let link = &status["links"][0];
    assert_eq!(link["peer"], "redmond.hq", "{status}");
    assert_eq!(link["caught_up"], true, "{status}");
    // A peer's positions are sealed: the link says caught up, and shows no position.
    assert!(link.get("cursor").is_none(), "{status}");
    assert_eq!(link["lag_ms"], 0, "{status}");
    assert_eq!(status["caught_up"][0]["peer"], "redmond.hq", "{status}");
    assert!(status["caught_up"][0].get("cursor").is_none(), "{status}");
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_whose_cursor_is_beyond_a_fresh_feed_is_served_from_the_start() {
    let HqAndBerlin {
        pki,
        hq_config,
        hq_node,
        berlin_config,
    } = hq_and_berlin(OPEN).await;
    let hq_addr = hq_node.local_addr();
    let berlin_node = common::start(&berlin_config).await;
    let at_hq = analyst(&pki, &hq_node).await;
    for n in 0..3 {
        publish(
            &at_hq,
            vec![item(&format!("old-{n}.example.com"), Tlp::Green)],
            None,
        )
        .await;
    }
    let at_berlin = analyst(&pki, &berlin_node).await;
    converges(
        &at_berlin,
        &[
            "old-0.example.com",
            "old-1.example.com",
            "old-2.example.com",
        ],
    )
    .await;
    assert_eq!(common::opened_cursor(&pki, &hq_node, &berlin_node), 3);

    // hq loses its data directory (or is restored from an old backup) and comes back
    // on the same address: its new feed starts again at 1, below berlin's cursor.
    hq_node.shutdown(DEADLINE).await.unwrap();
    std::fs::remove_dir_all(pki.path().join("data-redmond.hq")).unwrap();
    let listener = tokio::net::TcpListener::bind(hq_addr).await.unwrap();
    let hq_node = entente::Node::start_with_listener(
        entente::Config::load(&hq_config).unwrap(),
        Some(listener),
    )
    .await
    .unwrap();
    let at_hq = analyst(&pki, &hq_node).await;
    publish(&at_hq, vec![item("new.example.com", Tlp::Green)], None).await;
    assert_eq!(hq_node.engine().store().feed_head(), 1);
    // berlin still gets it: a cursor beyond the feed is served from the start.
    converges(
        &at_berlin,
        &[
            "old-0.example.com",
            "old-1.example.com",
            "old-2.example.com",
            "new.example.com",
        ],
    )
    .await;
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

/// A GREEN context object of STIX type `object_type` referencing `refs`.
fn context(object_type: &str, refs: &[&wire::Item]) -> wire::Item {
    let refs: Vec<String> = refs.iter().map(|r| r.id.clone()).collect();
    let properties = match object_type {
        "relationship" => serde_json::json!({"relationship_type": "indicates"}),
        _ => serde_json::json!({
            "name": "campaign notes",
            "published": "2026-01-01T00:00:00Z",
            "object_refs": refs,
        }),
    };
    wire::Item {
        id: format!("{object_type}--{}", uuid::Uuid::new_v4()),
        modified_unix_ms: 0,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Context(wire::ContextObject {
            object_type: object_type.into(),
            refs,
            stix_properties: properties.to_string(),
        })),
    }
}

/// Waits until `client` holds every item of `ids`, failing after the deadline.
async fn holds_ids(client: &NodeClient, ids: &[&str], node: &str) {
    let start = Instant::now();
    loop {
        let held: BTreeSet<String> = held(client)
            .await
            .iter()
            .filter_map(|s| s.item.as_ref().map(|i| i.id.clone()))
            .collect();
        let missing: Vec<&&str> = ids.iter().filter(|id| !held.contains(**id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{node} lacks {missing:?}; it holds {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relationship or a report that reaches a node before what it references is
/// withheld from that node's partners until all of it is held, and then reaches them,
/// over every hop, although their pulls went past it while it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_sent_ahead_of_what_it_references_follows_it_over_every_hop() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let singapore = pki.node("singapore.office");
    pki.client("analyst.alice");
    const FORWARD: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true";
    let hq_node = common::start(&config(
        &pki,
        &hq,
        &peer("berlin.office", "127.0.0.1:1", OPEN),
    ))
    .await;
    let berlin_node = common::start(&config(
        &pki,
        &berlin,
        &(peer("redmond.hq", &hq_node.local_addr().to_string(), OPEN)
            + &peer("singapore.office", "127.0.0.1:1", FORWARD)),
    ))
    .await;
    let singapore_node = common::start(&config(
        &pki,
        &singapore,
        &peer("berlin.office", &berlin_node.local_addr().to_string(), OPEN),
    ))
    .await;
    let at_hq = analyst(&pki, &hq_node).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    let at_singapore = analyst(&pki, &singapore_node).await;

    let (x, y, z) = (
        item("x.example.com", Tlp::Green),
        item("y.example.com", Tlp::Green),
        item("z.example.com", Tlp::Green),
    );
    let related = context("relationship", &[&x, &y]);
    let related_too = context("relationship", &[&x, &z]);
    let report = context("report", &[&related_too]);
    // The relationship and the report go first, each beside an indicator that shows
    // when both partners have read past them.
    let marker = item("marker.example.com", Tlp::Green);
    let marker_too = item("marker-too.example.com", Tlp::Green);
    publish(&at_hq, vec![related.clone(), marker.clone()], None).await;
    publish(&at_hq, vec![report.clone(), marker_too.clone()], None).await;
    for (client, node) in [(&at_berlin, "berlin"), (&at_singapore, "singapore")] {
        holds_ids(client, &[&marker.id, &marker_too.id], node).await;
    }
    // Their ends come later, one bundle each; the second relationship comes between.
    publish(&at_hq, vec![x.clone()], None).await;
    publish(&at_hq, vec![related_too.clone()], None).await;
    publish(&at_hq, vec![y.clone()], None).await;
    publish(&at_hq, vec![z.clone()], None).await;
    let all = [
        &x.id,
        &y.id,
        &z.id,
        &related.id,
        &related_too.id,
        &report.id,
        &marker.id,
        &marker_too.id,
    ]
    .map(String::as_str);
    holds_ids(&at_berlin, &all, "berlin").await;
    holds_ids(&at_singapore, &all, "singapore").await;
    for node in [singapore_node, berlin_node, hq_node] {
        node.shutdown(DEADLINE).await.unwrap();
    }
}

/// A link whose peer cannot be reached counts as behind, so its lag grows and an alert
/// on lag fires for a partner that is gone.
#[tokio::test]
async fn a_link_that_is_down_reports_a_growing_lag() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.node("berlin.office");
    let node = common::start(&config(
        &pki,
        &hq,
        &peer("berlin.office", "127.0.0.1:1", OPEN),
    ))
    .await;
    let own = common::connect(&pki, &node, "redmond.hq").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let links = own.links().await.unwrap().links;
        let link = links.iter().find(|l| l.peer == "berlin.office").unwrap();
        if !link.last_error.is_empty() && link.lag_ms > 0 {
            assert!(!link.connected);
            break;
        }
        assert!(Instant::now() < deadline, "no lag reported: {link:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A peer that goes silent without closing the connection (a hung host, a firewall that
/// forgets the connection) is noticed by the keepalive pings: the pull ends with an
/// error, the link connects again, and what the peer published meanwhile arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gone_silent_is_noticed_and_the_link_connects_again() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let berlin_node = common::start(&config(
        &pki,
        &berlin,
        &peer("redmond.hq", "127.0.0.1:1", OPEN),
    ))
    .await;
    let proxy = common::proxy::SilencingProxy::start(berlin_node.local_addr()).await;
    let hq_config = config(
        &pki,
        &hq,
        &peer("berlin.office", &proxy.addr.to_string(), OPEN),
    );
    let mut text = std::fs::read_to_string(&hq_config).unwrap();
    text.push_str("\n[limits]\nkeepalive_interval = \"1s\"\nkeepalive_timeout = \"1s\"\n");
    std::fs::write(&hq_config, text).unwrap();
    let hq_node = common::start(&hq_config).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    let at_hq = analyst(&pki, &hq_node).await;
    let arrives = |value: &'static str| {
        let at_hq = &at_hq;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !values(&held(at_hq).await).contains(value) {
                assert!(Instant::now() < deadline, "{value} never reached hq");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    publish(&at_berlin, vec![item("before.example", Tlp::Green)], None).await;
    arrives("before.example").await;

    proxy.silence();
    publish(&at_berlin, vec![item("after.example", Tlp::Green)], None).await;
    arrives("after.example").await;
    hq_node.shutdown(DEADLINE).await.unwrap();
    drop(proxy);
    berlin_node.shutdown(DEADLINE).await.unwrap();
}

/// A subscriber under an embargo gets each new item once its embargo lifts, on the same
/// stream: the item is held for it, not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_under_an_embargo_gets_the_item_when_it_lifts() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("siem.soc");
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str(
        "\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nembargo = \"1s\"\n",
    );
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let alice = common::connect(&pki, &node, "analyst.alice").await;
    let siem = common::connect(&pki, &node, "siem.soc").await;
    let mut stream = siem.subscribe(ItemFilter::default()).await.unwrap();
    let published = std::time::Instant::now();
    alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![item("embargoed.example", Tlp::Green)],
            distribution: None,
            groups: vec![],
        }]))
        .await
        .unwrap();
    let got = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the item within the deadline")
        .unwrap()
        .expect("an item, not the end of the stream");
    assert!(
        published.elapsed() >= Duration::from_millis(900),
        "not before the embargo lifts"
    );
    let value = match got.item.unwrap().kind.unwrap() {
        wire::item::Kind::Indicator(i) => i.value,
        other => panic!("{other:?}"),
    };
    assert_eq!(value, "embargoed.example");
    node.shutdown(DEADLINE).await.unwrap();
}

/// A reload that lengthens a subscriber's embargo while an item waits under the old
/// one holds the item until the new embargo lifts: it is not dropped from the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lengthened_embargo_holds_a_waiting_item_on_the_stream_until_it_lifts() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("siem.soc");
    let head = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    let with_embargo = |embargo: &str| {
        format!(
            "{head}\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n\
             \n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nembargo = \"{embargo}\"\n"
        )
    };
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, with_embargo("2s")).unwrap();
    let node = common::start(&path).await;
    let alice = common::connect(&pki, &node, "analyst.alice").await;
    let siem = common::connect(&pki, &node, "siem.soc").await;
    let mut stream = siem.subscribe(ItemFilter::default()).await.unwrap();
    let published = std::time::Instant::now();
    alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![item("held-longer.example", Tlp::Green)],
            distribution: None,
            groups: vec![],
        }]))
        .await
        .unwrap();
    std::fs::write(&path, with_embargo("4s")).unwrap();
    node.reload_policy().expect("reload");
    let got = tokio::time::timeout(DEADLINE, stream.message())
        .await
        .expect("the item within the deadline")
        .unwrap()
        .expect("an item, not the end of the stream");
    assert!(
        published.elapsed() >= Duration::from_millis(3900),
        "not before the lengthened embargo lifts"
    );
    let value = match got.item.unwrap().kind.unwrap() {
        wire::item::Kind::Indicator(i) => i.value,
        other => panic!("{other:?}"),
    };
    assert_eq!(value, "held-longer.example");
    node.shutdown(DEADLINE).await.unwrap();
}

/// A node is not sent back what it originated, but an object that names it (a
/// relationship to a partner's own indicator) does reach that partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_about_a_partners_own_indicator_reaches_it_and_its_own_items_do_not_come_back() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    const FORWARD: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true";
    // Berlin first, so that the HQ's link to it has its address from the start.
    let berlin_config = config(&pki, &berlin, &peer("redmond.hq", "127.0.0.1:1", FORWARD));
    let berlin_node = common::start(&berlin_config).await;
    let hq_node = common::start(&config(
        &pki,
        &hq,
        &peer(
            "berlin.office",
            &berlin_node.local_addr().to_string(),
            FORWARD,
        ),
    ))
    .await;
    // Berlin learns the HQ's address by a reload.
    let text = std::fs::read_to_string(&berlin_config)
        .unwrap()
        .replace("127.0.0.1:1", &hq_node.local_addr().to_string());
    std::fs::write(&berlin_config, text).unwrap();
    berlin_node.reload_policy().unwrap();
    let at_hq = analyst(&pki, &hq_node).await;
    let at_berlin = analyst(&pki, &berlin_node).await;
    let own = item("berlin-own.example.com", Tlp::Green);
    publish(&at_berlin, vec![own.clone()], None).await;
    holds_ids(&at_hq, &[&own.id], "the HQ").await;
    let about = context("relationship", &[&own, &own]);
    publish(&at_hq, vec![about.clone()], None).await;
    holds_ids(&at_berlin, &[&about.id], "berlin").await;
    // The HQ's ledger shows the relationship going to berlin, and never berlin's own.
    let own_bundle = at_berlin
        .get(&own.id)
        .await
        .unwrap()
        .and_then(|stored| stored.provenance)
        .unwrap()
        .bundle_id;
    let operator = common::connect(&pki, &hq_node, "redmond.hq").await;
    let mut records = operator
        .ledger_show(entente::rpc::proto::LedgerShowRequest {
            partner: "berlin.office".into(),
            since_unix_ms: 0,
        })
        .await
        .unwrap();
    let mut sent = Vec::new();
    while let Some(record) = records.message().await.unwrap() {
        sent.extend(record.deliveries.into_iter().map(|d| d.bundle_id));
    }
    assert!(!sent.is_empty(), "the relationship's delivery is recorded");
    assert!(
        !sent.contains(&own_bundle),
        "berlin was sent back its own bundle: {sent:?}"
    );
    for node in [berlin_node, hq_node] {
        node.shutdown(DEADLINE).await.unwrap();
    }
}
