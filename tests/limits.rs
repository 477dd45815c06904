//! Limits that keep one partner, or one address, from starving the others: handshake
//! slots under a flood of connections that never send a TLS ClientHello, and the number
//! of streams one partner may hold open.

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

/// A pull page gathers a bounded number of bytes, so a peer that reads slowly holds
/// little of the node's memory back; the pages together still carry the whole feed.
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
"#,
    );
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    // 60 bundles of 1,000 items with long descriptions: about 30 MB in all.
    let bundles = 60u64;
    let requests: Vec<entente::rpc::proto::PublishRequest> = (0..bundles)
        .map(|b| entente::rpc::proto::PublishRequest {
            items: (0..1000)
                .map(|i| entente::wire::Item {
                    id: String::new(),
                    modified_unix_ms: 0,
                    tlp: entente::wire::Tlp::Green as i32,
                    tags: vec![],
                    kind: Some(entente::wire::item::Kind::Indicator(
                        entente::wire::Indicator {
                            indicator_type: "domain".into(),
                            value: format!("host-{b}-{i}.example"),
                            description: "x".repeat(400),
                            ..Default::default()
                        },
                    )),
                })
                .collect(),
            distribution: None,
            groups: vec![],
        })
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
    assert!(pages.len() > 1, "one page held the whole feed: {pages:?}");
    // A page stops before the entry that would take it past the budget, so it holds at
    // most the budget (or one entry, were an entry larger).
    for (_, bytes, largest) in &pages {
        assert!(
            *bytes <= entente::engine::PULL_PAGE_BYTES.max(*largest),
            "a page of {bytes} bytes: {pages:?}"
        );
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
