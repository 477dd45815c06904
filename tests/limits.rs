//! Limits that keep one partner, or one address, from starving the others: handshake
//! slots under a flood of connections that never send a TLS ClientHello, and the number
//! of streams one partner may hold open; and the memory a node gives replication, as
//! configured: the bytes of a pull page it serves, and the bytes it holds for one bundle
//! it pulls.

mod common;

use std::time::{Duration, Instant};

use common::{Pki, client, start, write_config};
use entente::NodeId;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_one_address_do_not_starve_other_callers() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let config = write_config(&pki, &hq, &[client(analyst.as_str(), "analyst")], &[]);
    let node = start(&config).await;
    let addr = node.local_addr();

    // 300 connections from 127.0.0.2 that never say a word: more than every handshake
    // slot the node has (256).
    let mut idle = Vec::new();
    for _ in 0..300 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }

    // A legitimate caller from another address is served at once, not after the idle
    // ones' 10 s handshake deadline.
    let material = pki.material(&analyst);
    for _ in 0..5 {
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(3),
            common::hello(&material, addr, &NodeId::new("redmond.hq").unwrap()),
        )
        .await
        .expect("hello answered while 300 idle connections are open");
        answer.expect("hello");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    drop(idle);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_partner_holds_at_most_32_streams() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let reader = pki.client("researcher.bob");
    let config = write_config(&pki, &hq, &[client(reader.as_str(), "read_only")], &[]);
    let node = start(&config).await;
    let bob = common::connect(&pki, &node, reader.as_str()).await;
    let filter = entente::rpc::proto::ItemFilter::default();
    let mut open = Vec::new();
    for _ in 0..entente::engine::MAX_STREAMS_PER_PARTNER {
        open.push(
            bob.subscribe(filter.clone())
                .await
                .expect("within the limit"),
        );
    }
    match bob.subscribe(filter.clone()).await {
        Err(entente::client::ClientError::Status { code, message, .. }) => {
            assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
            assert!(message.contains("streams open"), "{message}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a stream beyond the limit was opened"),
    }
    // Closing one frees its slot (the node notices the stream is gone).
    drop(open.pop());
    let started = Instant::now();
    loop {
        match bob.subscribe(filter.clone()).await {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(10),
                "the slot was never freed: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(open);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A pull page gathers at most `limits.pull_page_bytes` (set lower than its default
/// here), so a peer that reads slowly holds little of the node's memory back; the pages
/// together still carry the whole feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_page_holds_a_bounded_number_of_bytes() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    pki.node("berlin.office");
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str(
        r#"
[[client]]
id = "analyst.alice"
role = "analyst"

[[peer]]
id = "berlin.office"
address = "127.0.0.1:1"
max_tlp = "AMBER"
allow_types = ["*"]

[limits]
pull_page_bytes = 1048576
"#,
    );
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    // 60 bundles of 1,000 items with long descriptions: about 30 MB in all.
    let bundles = 60u64;
    let requests: Vec<entente::rpc::proto::PublishRequest> = (0..bundles)
        .map(|b| green_domains(&format!("host-{b}"), 1000, 400))
        .collect();
    alice.publish(tokio_stream::iter(requests)).await.unwrap();

    let engine = node.engine().clone();
    let berlin = entente::model::Partner {
        id: NodeId::new("berlin.office").unwrap(),
        kind: entente::model::PartnerKind::Node,
        role: entente::Role::Peer,
    };
    let pages = tokio::task::spawn_blocking(move || {
        let mut pages = Vec::new();
        let mut cursor = 0;
        loop {
            let page = engine.pull_page(&berlin, cursor, 256).unwrap();
            let bytes: usize = page
                .bundles
                .iter()
                .map(|b| prost::Message::encoded_len(&b.bundle))
                .sum();
            let largest = page
                .bundles
                .iter()
                .map(|b| prost::Message::encoded_len(&b.bundle))
                .max()
                .unwrap_or(0);
            pages.push((page.bundles.len(), bytes, largest));
            cursor = page.cursor;
            if cursor >= page.head {
                return pages;
            }
        }
    })
    .await
    .unwrap();
    let sent: usize = pages.iter().map(|p| p.0).sum();
    assert_eq!(
        sent as u64, bundles,
        "every bundle is served across the pages"
    );
    // About 2 bundles a page under 1 MiB, where the default 4 MiB would take 8.
    assert!(pages.len() >= 20, "pages larger than configured: {pages:?}");
    // A page stops before the entry that would take it past the budget, so it holds at
    // most the budget (or one entry, were an entry larger).
    for (_, bytes, largest) in &pages {
        assert!(
            *bytes <= (1 << 20).max(*largest),
            "a page of {bytes} bytes: {pages:?}"
        );
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A node that holds at most `limits.pull_transfer_bytes` for one pulled bundle refuses
/// a larger one with a refusal that says why and is counted (in the link's rejected
/// bundles and in `Admin.Limits`), and lets go of what it had received of it; the link
/// goes on and delivers the bundles after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_refuses_a_bundle_over_its_transfer_budget_and_the_link_goes_on() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    pki.client("ops.admin");
    let open = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";
    let hq_config = write_config(&pki, &hq, &[client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&hq_config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n{open}\n"
    ));
    std::fs::write(&hq_config, text).unwrap();
    let hq_node = start(&hq_config).await;

    // Berlin publishes little itself, so it may hold little per transfer: the least its
    // configuration allows with the smallest publish limit (about 4.1 MiB).
    let budget = entente::limits::publishable_item_bytes(64 * 1024);
    let berlin_config = write_config(&pki, &berlin, &[client("ops.admin", "admin")], &[]);
    let mut text = std::fs::read_to_string(&berlin_config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"redmond.hq\"\naddress = \"{}\"\n{open}\n\n[limits]\npublish_message_bytes = 65536\npull_transfer_bytes = {budget}\n",
        hq_node.local_addr()
    ));
    std::fs::write(&berlin_config, text).unwrap();
    let berlin_node = start(&berlin_config).await;
    let admin = common::connect(&pki, &berlin_node, "ops.admin").await;
    let link = || async {
        admin
            .links()
            .await
            .unwrap()
            .links
            .into_iter()
            .find(|l| l.peer == "redmond.hq")
            .unwrap_or_default()
    };
    let refused_before =
        entente::limits::counters().refused(entente::limits::Limit::PullTransferBytes);

    // A bundle of about 5.5 MB of items: within HQ's publish limit, over Berlin's budget.
    let alice = common::connect(&pki, &hq_node, "analyst.alice").await;
    let publish = |prefix: &'static str, n: usize| {
        let request = green_domains(prefix, n, 500);
        let alice = &alice;
        async move {
            let published = alice
                .publish(tokio_stream::iter(vec![request]))
                .await
                .unwrap();
            entente::model::BundleId::parse(&published.bundle_ids[0]).unwrap()
        }
    };
    let large = publish("large", 10_000).await;
    let held = hq_node
        .engine()
        .store()
        .held_bundle(&large)
        .unwrap()
        .unwrap();
    let item_bytes: usize = held
        .items
        .iter()
        .map(|i| i.item_bytes.len() + i.salt.len())
        .sum();
    assert!(item_bytes > budget, "{item_bytes} bytes of items");
    drop(held);

    let deadline = Instant::now() + Duration::from_secs(120);
    let refused = loop {
        let link = link().await;
        if link.bundles_rejected > 0 {
            break link;
        }
        assert!(Instant::now() < deadline, "never refused: {link:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused.bundles_rejected, 1, "{refused:?}");
    assert!(
        refused.last_error.contains("limits.pull_transfer_bytes"),
        "{refused:?}"
    );
    assert!(
        entente::limits::counters().refused(entente::limits::Limit::PullTransferBytes)
            > refused_before
    );
    let state = admin
        .limits()
        .await
        .unwrap()
        .limits
        .into_iter()
        .find(|l| l.name == "pull_transfer_bytes")
        .expect("listed by Admin.Limits");
    assert_eq!(state.value, budget.to_string());
    assert!(state.counted && state.refused >= 1, "{state:?}");
    assert!(
        berlin_node
            .engine()
            .store()
            .held_bundle(&large)
            .unwrap()
            .is_none()
    );

    // The link goes on: a bundle published afterwards arrives.
    let small = publish("small", 10).await;
    loop {
        if berlin_node
            .engine()
            .store()
            .held_bundle(&small)
            .unwrap()
            .is_some()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the next bundle never came: {:?}",
            link().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The link's counts follow the store by a moment.
    let after = loop {
        let after = link().await;
        if after.bundles_received >= 1 {
            break after;
        }
        assert!(Instant::now() < deadline, "{after:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(after.bundles_rejected, 1, "{after:?}");
    for node in [berlin_node, hq_node] {
        node.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

/// One bundle to publish: `n` GREEN domains `PREFIX-i.example`, each with a description
/// of `description` bytes.
fn green_domains(
    prefix: &str,
    n: usize,
    description: usize,
) -> entente::rpc::proto::PublishRequest {
    entente::rpc::proto::PublishRequest {
        items: (0..n)
            .map(|i| entente::wire::Item {
                id: String::new(),
                modified_unix_ms: 0,
                tlp: entente::wire::Tlp::Green as i32,
                tags: vec![],
                kind: Some(entente::wire::item::Kind::Indicator(
                    entente::wire::Indicator {
                        indicator_type: "domain".into(),
                        value: format!("{prefix}-{i}.example"),
                        description: "x".repeat(description),
                        ..Default::default()
                    },
                )),
            })
            .collect(),
        distribution: None,
        groups: vec![],
    }
}

/// The finding this limit answers: 2,000 `Subscribe` streams asked at once by one
/// read-only identity, over several connections, all used to be accepted (and each
/// wrote a ledger record per item it received). At most `streams_per_partner` are open
/// at once, however many connections ask; the others are refused with a reason, and
/// every open one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_subscriptions_from_one_identity_open_only_its_streams() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let reader = pki.client("researcher.bob");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(reader.as_str(), "read_only"),
        ],
        &[],
    );
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(std::sync::Arc::new(
            common::connect(&pki, &node, reader.as_str()).await,
        ));
    }
    let filter = entente::rpc::proto::ItemFilter::default();
    let mut asked = tokio::task::JoinSet::new();
    for n in 0..2000 {
        let bob = connections[n % connections.len()].clone();
        let filter = filter.clone();
        asked.spawn(async move { bob.subscribe(filter).await });
    }
    let mut open = Vec::new();
    let mut refused = 0;
    while let Some(answer) = asked.join_next().await {
        match answer.unwrap() {
            Ok(stream) => open.push(stream),
            Err(entente::client::ClientError::Status { code, message, .. }) => {
                assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
                assert!(message.contains("streams open"), "{message}");
                refused += 1;
            }
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(open.len(), entente::limits::DEFAULT_STREAMS_PER_PARTNER);
    assert_eq!(refused, 2000 - open.len());

    // Each open stream is served an item published now.
    let item = entente::wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: entente::wire::Tlp::Green as i32,
        tags: vec![],
        kind: Some(entente::wire::item::Kind::Indicator(
            entente::wire::Indicator {
                indicator_type: "domain".into(),
                value: "fanout.example".into(),
                ..Default::default()
            },
        )),
    };
    alice
        .publish(tokio_stream::iter(vec![
            entente::rpc::proto::PublishRequest {
                items: vec![item],
                ..Default::default()
            },
        ]))
        .await
        .unwrap();
    for stream in &mut open {
        let got = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("an item in time")
            .unwrap()
            .expect("an item");
        assert!(got.item.is_some());
    }
    drop(open);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
