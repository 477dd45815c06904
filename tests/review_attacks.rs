//! Attacks from outside that got past a defence, each kept as a test: a read-only
//! researcher counting what it may not see, and callers holding more of the node's
//! memory and threads than the per-partner limits allow. End to end over real mTLS,
//! in-process or against an `entente serve` process where memory is measured.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use common::{Pki, client, write_config};
use entente::client::{ClientError, NodeClient};
use entente::rpc::proto::{ItemFilter, LedgerShowRequest, PublishRequest};
use entente::wire::{self, Tlp};

const DEADLINE: Duration = Duration::from_secs(30);

fn with_limits(config: &Path, limits: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("\n[limits]\n");
    text.push_str(limits);
    std::fs::write(config, text).unwrap();
}

/// A domain indicator of about `description` bytes and more.
fn indicator(value: &str, tlp: Tlp, description: usize) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.into(),
            description: "x".repeat(description),
            ..Default::default()
        })),
    }
}

/// An indicator near the largest a node accepts (about 10 KB encoded).
fn large_indicator(value: &str) -> wire::Item {
    let mut item = indicator(value, Tlp::Green, 4000);
    item.tags = (0..32)
        .map(|t| format!("tag-{t:02}-{}", "t".repeat(52)))
        .collect();
    if let Some(wire::item::Kind::Indicator(indicator)) = item.kind.as_mut() {
        indicator.kill_chain_phases = (0..32)
            .map(|p| format!("phase-{p:02}-{}", "p".repeat(110)))
            .collect();
    }
    item
}

async fn publish(client: &NodeClient, bundles: Vec<Vec<wire::Item>>) {
    let requests: Vec<PublishRequest> = bundles
        .into_iter()
        .map(|items| PublishRequest {
            items,
            ..Default::default()
        })
        .collect();
    client
        .publish(tokio_stream::iter(requests))
        .await
        .expect("publish");
}

fn code(error: &ClientError) -> tonic::Code {
    match error {
        ClientError::Status { code, .. } => *code,
        other => panic!("not a status: {other}"),
    }
}

/// A resident-memory figure of process `pid` in MiB (`VmRSS`, `VmHWM`).
fn status_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib / 1024
}

/// Waits for every one of `futures`, polled together.
async fn join_all<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut done: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, slot) in futures.iter_mut().zip(done.iter_mut()) {
            if slot.is_none() {
                match Pin::new(future).poll(cx) {
                    Poll::Ready(output) => *slot = Some(output),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Polls `future` once, so that a call is sent, and gives it back unfinished.
async fn poll_once<F: Future + Unpin>(future: &mut F) {
    std::future::poll_fn(|cx| {
        let _ = Pin::new(&mut *future).poll(cx);
        Poll::Ready(())
    })
    .await;
}

/// A subscriber that stops reading used to be ended once the node's buffer of new items
/// ran over, a buffer that every item the node accepted took a place in. Its last
/// message said by how many items it fell behind, withheld items included, and even
/// without the count, being ended told a GREEN researcher that many AMBER or RED items
/// were published while it did not read. Only the items a subscriber may see are
/// queued for it now: withheld items never make it fall behind, and the end of a
/// lagging subscription names no count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_subscription_does_not_count_withheld_items() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let researcher = pki.client("researcher.bob");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(researcher.as_str(), "read_only"),
        ],
        &[],
    );
    let node = common::start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let bob = common::connect(&pki, &node, researcher.as_str()).await;

    let mut subscription = bob.subscribe(ItemFilter::default()).await.unwrap();
    // More GREEN items than the HTTP/2 windows between node and researcher hold, so
    // the subscription's task waits for the researcher, who does not read.
    let visible: Vec<wire::Item> = (0..1500)
        .map(|i| indicator(&format!("seen-{i}.example"), Tlp::Green, 4000))
        .collect();
    publish(&alice, vec![visible]).await;
    // Then more RED items than the node once buffered for a subscriber that is behind,
    // and one GREEN item more.
    let red: Vec<Vec<wire::Item>> = (0..20_000)
        .collect::<Vec<_>>()
        .chunks(5000)
        .map(|chunk| {
            chunk
                .iter()
                .map(|i| indicator(&format!("secret-{i}.example"), Tlp::Red, 0))
                .collect()
        })
        .collect();
    publish(&alice, red).await;
    publish(
        &alice,
        vec![vec![indicator("seen-last.example", Tlp::Green, 0)]],
    )
    .await;

    // The researcher reads now: every GREEN item, in order, and the stream goes on.
    for expected in (0..1500)
        .map(|i| format!("seen-{i}.example"))
        .chain(["seen-last.example".to_owned()])
    {
        let stored = tokio::time::timeout(DEADLINE, subscription.message())
            .await
            .expect("the next item in time")
            .unwrap_or_else(|status| panic!("the subscription ended: {status:?}"))
            .expect("the subscription ended without an error");
        let value = match stored.item.and_then(|i| i.kind) {
            Some(wire::item::Kind::Indicator(indicator)) => indicator.value,
            other => panic!("not an indicator: {other:?}"),
        };
        assert_eq!(value, expected);
    }
    node.shutdown(DEADLINE).await.unwrap();
}

/// `Admin.LedgerShow` streams used to be outside `limits.streams_per_partner` and
/// `limits.slow_reader_timeout`: each unread one held a thread of the node's blocking
/// pool for as long as its connection lived, so one admin certificate could take every
/// blocking thread (which queries, publishing and pulls need). They now take a stream
/// slot and are let go when not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_streams_are_bounded_and_let_go_when_not_read() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let admin = pki.client("ops.admin");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(admin.as_str(), "admin"),
        ],
        &[],
    );
    with_limits(
        &config,
        "streams_per_partner = 2\nslow_reader_timeout = \"1s\"\n",
    );
    let node = common::start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let ops = common::connect(&pki, &node, admin.as_str()).await;

    // A ledger larger than the HTTP/2 windows: records that each name 1,000 bundles.
    let bundles: Vec<Vec<wire::Item>> = (0..1000)
        .map(|b| vec![indicator(&format!("host-{b}.example"), Tlp::Green, 0)])
        .collect();
    publish(&alice, bundles).await;
    for _ in 0..120 {
        let page = alice
            .query(ItemFilter::default(), 1000, Vec::new())
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1000);
    }

    let all = || LedgerShowRequest {
        partner: String::new(),
        since_unix_ms: 0,
    };
    let first = ops.ledger_show(all()).await.unwrap();
    let second = ops.ledger_show(all()).await.unwrap();
    match ops.ledger_show(all()).await {
        Err(error) => assert_eq!(code(&error), tonic::Code::ResourceExhausted, "{error}"),
        Ok(_) => panic!("a third unread ledger stream was opened past streams_per_partner = 2"),
    }
    // The node gives up on the unread streams and frees their slots.
    let deadline = Instant::now() + DEADLINE;
    let mut read = loop {
        match ops.ledger_show(all()).await {
            Ok(stream) => break stream,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the unread ledger streams still hold their slots: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop((first, second));
    // A stream that is read goes to the end.
    let mut records = 0u64;
    while let Some(_record) = tokio::time::timeout(DEADLINE, read.message())
        .await
        .expect("ledger record in time")
        .unwrap()
    {
        records += 1;
    }
    assert!(records >= 120, "{records} records");
    node.shutdown(DEADLINE).await.unwrap();
}

/// Answers to unary calls used to be outside every per-partner limit: a read-only
/// researcher that sent `Query` calls for full pages and never read the answers had the
/// node hold each answer (up to 1,000 items, about 10 MB of large indicators) for as
/// long as the connection lived, up to `limits::MAX_STREAMS_PER_CONNECTION` (100) on
/// each of its 16 connections. 24 unread answers raised the node's memory by 289 MiB.
/// A page now stops gathering at `limits.query_page_bytes` (4 MiB), and a partner's
/// answers not yet sent are held to `limits.unsent_answer_bytes` (16 MiB): past it, its
/// calls are refused with `RESOURCE_EXHAUSTED` until it reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_query_answers_do_not_hold_unbounded_memory() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let researcher = pki.client("researcher.bob");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(researcher.as_str(), "read_only"),
        ],
        &[],
    );
    let (mut child, addr) = common::serve(&config);
    let pid = child.id();
    let connect = |who: &entente::NodeId| {
        let tls = pki.material(who).client_config().unwrap();
        let who = who.clone();
        let addr = addr.clone();
        let hq = hq.clone();
        async move {
            tokio::time::timeout(DEADLINE, NodeClient::connect(tls, &who, &addr, &hq))
                .await
                .expect("connect in time")
                .expect("connect")
        }
    };
    let alice = connect(&analyst).await;
    let bob = connect(&researcher).await;

    let items: Vec<wire::Item> = (0..1000)
        .map(|i| large_indicator(&format!("big-{i}.example")))
        .collect();
    publish(&alice, vec![items]).await;
    // Every page read to the end: none is much larger than the page budget (one item
    // may pass it), and together they hold every item once.
    let page_budget = 4 << 20;
    let mut token = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = 0;
    loop {
        let page = bob
            .query(ItemFilter::default(), 1000, token.clone())
            .await
            .unwrap();
        let encoded = prost::Message::encoded_len(&page);
        assert!(
            encoded <= page_budget + (64 << 10),
            "a page of {encoded} bytes"
        );
        for item in &page.items {
            assert!(seen.insert(item.item.as_ref().unwrap().id.clone()));
        }
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 1000);
    assert!(pages >= 3, "{pages} pages");
    let before = status_mib(pid, "VmRSS");

    // 24 calls for the same full page, sent and never read.
    let mut unread = Vec::new();
    for _ in 0..24 {
        let mut call = Box::pin(bob.query(ItemFilter::default(), 1000, Vec::new()));
        poll_once(&mut call).await;
        unread.push(call);
    }
    let budget = 64;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut grown = 0;
    while Instant::now() < deadline {
        grown = status_mib(pid, "VmRSS").saturating_sub(before);
        if grown > budget {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        grown <= budget,
        "24 unread answers to one researcher raised the node's memory by {grown} MiB (from {before} MiB)"
    );
    // Read now (all at once: their data shares the connection's flow-control window):
    // the first answers came whole, the calls past the budget were refused with a
    // reason.
    let results = tokio::time::timeout(DEADLINE, join_all(unread))
        .await
        .expect("answers in time");
    let mut answered = 0;
    let mut refused = 0;
    for result in results {
        match result {
            Ok(page) => {
                assert!(!page.items.is_empty());
                answered += 1;
            }
            Err(e) => {
                assert_eq!(code(&e), tonic::Code::ResourceExhausted, "{e}");
                assert!(e.to_string().contains("unsent_answer_bytes"), "{e}");
                refused += 1;
            }
        }
    }
    assert!(
        answered >= 1 && refused >= 1,
        "{answered} answered, {refused} refused"
    );
    // Once read, the budget is given back: a further call is answered.
    let page = bob
        .query(ItemFilter::default(), 1000, Vec::new())
        .await
        .unwrap();
    assert!(!page.items.is_empty());
    let _ = child.kill();
    let _ = child.wait();
}

/// A request body that announces one gRPC message of `announced` bytes, sends all of it
/// but the last byte, and then waits forever.
fn unfinished_message(announced: usize) -> tonic::body::Body {
    use http_body::Frame;
    use prost::bytes::Bytes;
    let mut head = vec![0u8];
    head.extend_from_slice(&(announced as u32).to_be_bytes());
    let mut chunks = vec![Bytes::from(head)];
    let mut left = announced - 1;
    while left > 0 {
        let n = left.min(1 << 20);
        chunks.push(Bytes::from(vec![0x42u8; n]));
        left -= n;
    }
    let frames = tokio_stream::StreamExt::chain(
        tokio_stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
        ),
        tokio_stream::pending(),
    );
    tonic::body::Body::new(http_body_util::StreamBody::new(frames))
}

/// Every `Intel` request was read whole, up to `limits.publish_message_bytes` (16 MiB),
/// before the codec refused one over 64 KiB: the service's size limit is the one
/// `Publish` needs. A read-only researcher that sends `Query` calls whose one message
/// never ends had the node hold 16 MiB for each, without a time limit and outside every
/// per-partner limit. Requests other than `Publish` are now cut off past 64 KiB as they
/// arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_request_is_not_buffered_to_the_publish_limit() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let researcher = pki.client("researcher.bob");
    let config = write_config(&pki, &hq, &[client(researcher.as_str(), "read_only")], &[]);
    let (mut child, addr) = common::serve(&config);
    let pid = child.id();
    let tls = pki.material(&researcher).client_config().unwrap();
    let bob = tokio::time::timeout(DEADLINE, NodeClient::connect(tls, &researcher, &addr, &hq))
        .await
        .expect("connect in time")
        .expect("connect");
    bob.hello().await.unwrap();
    let before = status_mib(pid, "VmRSS");

    // Twelve queries of 15 MiB each, never finished.
    let mut calls = Vec::new();
    for _ in 0..12 {
        let mut channel = bob.channel();
        let request = http::Request::builder()
            .method("POST")
            .uri("/entente.v1.Intel/Query")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(unfinished_message(15 << 20))
            .unwrap();
        calls.push(tokio::spawn(async move {
            use tower::ServiceExt;
            channel.ready().await?;
            tower::Service::call(&mut channel, request).await
        }));
    }
    let budget = 64;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut grown = 0;
    let mut refused = 0;
    while Instant::now() < deadline {
        grown = status_mib(pid, "VmRSS").saturating_sub(before);
        refused = calls.iter().filter(|c| c.is_finished()).count();
        if grown > budget || refused == calls.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        grown <= budget,
        "12 unfinished queries raised the node's memory by {grown} MiB (from {before} MiB)"
    );
    assert_eq!(refused, calls.len(), "every oversized query is answered");
    for call in calls {
        let response = call.await.unwrap().expect("an answer");
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    }
}

/// HTTP/2 streams one connection may hold open at once: tonic's server sets no limit
/// unless told, so a partner could open `Health.Watch` streams (which never end and are
/// no `Subscribe`, `Export` or `Pull`) without bound on one connection, each holding
/// the node's memory, and leave any number of unary answers unread. The node now
/// announces a limit, and a client waits for a free stream beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_a_bounded_number_of_streams() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let researcher = pki.client("researcher.bob");
    let config = write_config(&pki, &hq, &[client(researcher.as_str(), "read_only")], &[]);
    let node = common::start(&config).await;
    let bob = common::connect(&pki, &node, researcher.as_str()).await;
    let limit = entente::limits::MAX_STREAMS_PER_CONNECTION as usize;

    let (opened_tx, mut opened) = tokio::sync::mpsc::unbounded_channel();
    let mut watches = Vec::new();
    for _ in 0..limit + 50 {
        let mut health = HealthClient::new(bob.channel());
        let opened_tx = opened_tx.clone();
        watches.push(tokio::spawn(async move {
            let stream = health
                .watch(HealthCheckRequest {
                    service: String::new(),
                })
                .await;
            let _ = opened_tx.send(stream.is_ok());
            // Held open until the test ends.
            std::future::pending::<()>().await;
            drop(stream);
        }));
    }
    // The first `limit` streams open ...
    for n in 0..limit {
        let ok = tokio::time::timeout(DEADLINE, opened.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} watch streams opened in time"))
            .unwrap();
        assert!(ok, "watch stream {n} refused");
    }
    // ... and no more while they are held.
    let more = tokio::time::timeout(Duration::from_secs(2), opened.recv()).await;
    assert!(
        more.is_err(),
        "one connection opened more than {limit} streams at once"
    );
    for watch in watches {
        watch.abort();
    }
    node.shutdown(DEADLINE).await.unwrap();
}

/// With several trust anchors, every peer and client is pinned to the anchor its
/// certificate must chain to, but the node's own id (which connects as its operator,
/// with every right and every item) was accepted from any anchor: a partner
/// organisation whose CA the node trusts for that partner's certificates could issue
/// a certificate in the node's name and read everything, the RED items and the ledger
/// included. The node's own id is now held to the anchor its own certificate chains to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_anchor_cannot_issue_the_operators_identity() {
    use entente::certs::{CertDir, Usage, Validity};
    use entente::transport::{TlsMaterial, TlsPaths};
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    // The partner organisation's own CA, trusted for its analyst.
    let partner_ca = CertDir::new(pki.path().join("partner-ca"));
    partner_ca
        .create_ca("Partner CA", Validity::days_from_now(30))
        .unwrap();
    let guest = entente::NodeId::new("analyst.partner").unwrap();
    partner_ca
        .issue(&guest, &Usage::Client, Validity::days_from_now(30))
        .unwrap();
    let ours = pki.ca_cert();
    let theirs = partner_ca.ca_cert_path();
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq")).replace(
        &format!("trust_anchors = [\"{}\"]", ours.display()),
        &format!(
            "trust_anchors = [\"{}\", \"{}\"]",
            ours.display(),
            theirs.display()
        ),
    );
    text.push_str(&format!(
        "\n[[client]]\nid = \"{analyst}\"\nrole = \"analyst\"\ntrust_anchor = \"{}\"\n\n[[client]]\nid = \"{guest}\"\nrole = \"read_only\"\nallow_types = [\"*\"]\ntrust_anchor = \"{}\"\n",
        ours.display(),
        theirs.display()
    ));
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    publish(
        &alice,
        vec![vec![indicator("red-secret.example", Tlp::Red, 0)]],
    )
    .await;

    // The operator, with the node's own certificate, is served.
    let operator = common::connect(&pki, &node, hq.as_str()).await;
    operator.ledger_verify().await.unwrap();

    // The partner's CA issues a certificate in the node's name.
    partner_ca
        .issue(
            &hq,
            &Usage::Node {
                ips: vec!["127.0.0.1".parse().unwrap()],
                dns: vec![],
            },
            Validity::days_from_now(30),
        )
        .unwrap();
    let forged = TlsMaterial::load(
        &TlsPaths {
            cert: partner_ca.cert_path(hq.as_str()),
            key: partner_ca.key_path(hq.as_str()),
            trust_anchors: vec![ours.clone()],
            crls: vec![],
        },
        &hq,
    )
    .unwrap();
    let tls = forged.client_config().unwrap();
    let impostor = tokio::time::timeout(
        DEADLINE,
        NodeClient::connect(tls, &hq, &node.local_addr().to_string(), &hq),
    )
    .await
    .expect("connect in time");
    let read = match impostor {
        Err(_) => None,
        Ok(impostor) => match impostor.query(ItemFilter::default(), 100, Vec::new()).await {
            Err(_) => None,
            Ok(page) => Some(page.items.len()),
        },
    };
    assert_eq!(
        read, None,
        "a certificate in the node's name from the partner's CA read the node's items"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

/// Loads `id`'s certificate and key from `certs`, trusting `anchors`.
fn material_from(
    certs: &entente::certs::CertDir,
    id: &entente::NodeId,
    anchors: Vec<std::path::PathBuf>,
) -> entente::transport::TlsMaterial {
    entente::transport::TlsMaterial::load(
        &entente::transport::TlsPaths {
            cert: certs.cert_path(id.as_str()),
            key: certs.key_path(id.as_str()),
            trust_anchors: anchors,
            crls: vec![],
        },
        id,
    )
    .unwrap()
}

/// With several trust anchors, a partner's connection is pinned to its anchor, but a
/// bundle's signer certificate was taken from any anchor as long as it named the origin:
/// a hostile peer whose own CA the node trusts (for that peer's certificate) could
/// issue a certificate in another node's name, sign bundles as that node, and have them
/// stored and passed on as that node's (a forged origin, ids squatted in its name). A
/// signer certificate naming a configured partner must now chain to that partner's
/// anchor. The same CA could sign in the name of an origin no entry names and relay
/// the bundle as a third party's; such a signer must now chain to this node's own
/// anchor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_ca_cannot_sign_bundles_in_another_nodes_name() {
    use common::rogue::{Rogue, RogueServer, feed, sign};
    use entente::certs::{CertDir, Usage, Validity};
    use entente::model::{Distribution, Item, ItemId};
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let analyst = pki.client("analyst.alice");
    // The partner organisation's CA, trusted for its own node.
    let partner_ca = CertDir::new(pki.path().join("partner-ca"));
    partner_ca
        .create_ca("Partner CA", Validity::days_from_now(30))
        .unwrap();
    let node_usage = || Usage::Node {
        ips: vec!["127.0.0.1".parse().unwrap()],
        dns: vec![],
    };
    let rogue_id = entente::NodeId::new("rogue.partner").unwrap();
    partner_ca
        .issue(&rogue_id, &node_usage(), Validity::days_from_now(30))
        .unwrap();
    // ... which issues a certificate in berlin's name too.
    let forged_dir = CertDir::new(pki.path().join("partner-ca-forged"));
    std::fs::create_dir_all(pki.path().join("partner-ca-forged")).unwrap();
    partner_ca
        .issue(&berlin, &node_usage(), Validity::days_from_now(30))
        .unwrap();
    for ext in ["crt", "key"] {
        let from = pki.path().join(format!("partner-ca/{berlin}.{ext}"));
        let to = forged_dir.cert_path(berlin.as_str()).with_extension(ext);
        std::fs::rename(from, to).unwrap();
    }
    let ours = pki.ca_cert();
    let theirs = partner_ca.ca_cert_path();
    let forged_berlin = material_from(&forged_dir, &berlin, vec![theirs.clone()]);
    let rogue = material_from(&partner_ca, &rogue_id, vec![ours.clone()]);

    let now = entente::engine::now_ms();
    // Built from its wire form, as a bundle carries it.
    let item = Item::try_from(wire::Item {
        id: ItemId::new_random().to_string(),
        modified_unix_ms: now - 10_000,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: "planted-by-rogue.example".into(),
            confidence: 50,
            valid_from_unix_ms: now - 10_000,
            ..Default::default()
        })),
    })
    .unwrap();
    let forged = sign(&forged_berlin, &[item], Distribution::default());
    let indicator = |value: &str| {
        Item::try_from(wire::Item {
            id: ItemId::new_random().to_string(),
            modified_unix_ms: now - 10_000,
            tlp: Tlp::Green as i32,
            tags: vec![],
            kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                indicator_type: "domain".into(),
                value: value.into(),
                confidence: 50,
                valid_from_unix_ms: now - 10_000,
                ..Default::default()
            })),
        })
        .unwrap()
    };
    // The partner's CA also issues a certificate for an origin this node has no entry
    // for, and signs in its name.
    let ghost_id = entente::NodeId::new("ghost.member").unwrap();
    partner_ca
        .issue(&ghost_id, &node_usage(), Validity::days_from_now(30))
        .unwrap();
    let ghost = material_from(&partner_ca, &ghost_id, vec![theirs.clone()]);
    let by_ghost = sign(
        &ghost,
        &[indicator("planted-by-ghost.example")],
        Distribution::default(),
    );
    // Controls: a member of this node's own federation it has no entry for, and the
    // partner itself, whose bundles are taken.
    let lisbon = pki.node("lisbon.office");
    let by_lisbon = sign(
        &pki.material(&lisbon),
        &[indicator("from-lisbon.example")],
        Distribution::default(),
    );
    let by_rogue = sign(
        &rogue,
        &[indicator("from-the-partner.example")],
        Distribution::default(),
    );
    let service = Rogue {
        feed: vec![
            feed(1, forged, 1),
            feed(2, by_ghost, 1),
            feed(3, by_lisbon, 1),
            feed(4, by_rogue, 0),
        ],
        certificates: Arc::new(Mutex::new(vec![
            forged_berlin.certificate_der().to_vec(),
            rogue.certificate_der().to_vec(),
            ghost.certificate_der().to_vec(),
            pki.material(&lisbon).certificate_der().to_vec(),
        ])),
    };
    let server = RogueServer::start(&rogue, &hq, service).await;

    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq")).replace(
        &format!("trust_anchors = [\"{}\"]", ours.display()),
        &format!(
            "trust_anchors = [\"{}\", \"{}\"]",
            ours.display(),
            theirs.display()
        ),
    );
    text.push_str(&format!(
        "\n[[client]]\nid = \"{analyst}\"\nrole = \"analyst\"\ntrust_anchor = \"{ours}\"\n\n[[peer]]\nid = \"{berlin}\"\naddress = \"127.0.0.1:9\"\nrole = \"peer\"\ntrust_anchor = \"{ours}\"\n\n[[peer]]\nid = \"{rogue_id}\"\naddress = \"{addr}\"\nrole = \"peer\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\nforward_third_party = true\ntrust_anchor = \"{theirs}\"\n",
        ours = ours.display(),
        theirs = theirs.display(),
        addr = server.addr,
    ));
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;

    // hq reads the rogue's whole feed (its cursor reaches the rogue's head) ...
    let deadline = Instant::now() + DEADLINE;
    while common::rogue::plain(node.engine().store().cursor(&rogue_id).unwrap()) < 4 {
        assert!(
            Instant::now() < deadline,
            "hq did not read the rogue's feed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ... and holds nothing in berlin's name.
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let held = alice
        .query(ItemFilter::default(), 100, Vec::new())
        .await
        .unwrap()
        .items;
    let origins: std::collections::BTreeSet<String> = held
        .iter()
        .filter_map(|s| s.provenance.as_ref().map(|p| p.origin.clone()))
        .collect();
    assert!(
        !origins.contains(berlin.as_str()),
        "hq stored a bundle signed in berlin's name by the partner's CA: origins {origins:?}"
    );
    // ... nor in the name of an origin it has no entry for, which the partner's CA
    // cannot speak for; its own federation's members and the partner itself pass.
    assert!(
        !origins.contains("ghost.member"),
        "hq stored a bundle signed by the partner's CA for an unconfigured origin: {origins:?}"
    );
    let expected: std::collections::BTreeSet<String> = ["lisbon.office", "rogue.partner"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(origins, expected);
    node.shutdown(DEADLINE).await.unwrap();
    server.stop().await;
}

/// With several trust anchors, the node's pull links checked a peer's server
/// certificate against every anchor: whoever could answer at a peer's address (a
/// network attacker) with a certificate in that peer's name from another trusted CA
/// (a partner organisation's) was pulled from as that peer. A link now holds the peer
/// to the anchor its entry names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_link_holds_its_peer_to_the_peers_anchor() {
    use common::rogue::{RogueServer, Scripted, checkpoint};
    use entente::certs::{CertDir, Usage, Validity};
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = entente::NodeId::new("berlin.office").unwrap();
    let partner_ca = CertDir::new(pki.path().join("partner-ca"));
    partner_ca
        .create_ca("Partner CA", Validity::days_from_now(30))
        .unwrap();
    let ours = pki.ca_cert();
    let theirs = partner_ca.ca_cert_path();
    // The partner's CA issues a certificate in berlin's name, and its holder answers at
    // berlin's address.
    partner_ca
        .issue(
            &berlin,
            &Usage::Node {
                ips: vec!["127.0.0.1".parse().unwrap()],
                dns: vec![],
            },
            Validity::days_from_now(30),
        )
        .unwrap();
    let impostor = material_from(&partner_ca, &berlin, vec![ours.clone()]);
    let rogue = Scripted::new(vec![checkpoint(0, 0)], vec![]);
    let server = RogueServer::start(&impostor, &hq, rogue.clone()).await;

    let partner_node = entente::NodeId::new("node.partner").unwrap();
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq")).replace(
        &format!("trust_anchors = [\"{}\"]", ours.display()),
        &format!(
            "trust_anchors = [\"{}\", \"{}\"]",
            ours.display(),
            theirs.display()
        ),
    );
    text.push_str(&format!(
        "\n[[peer]]\nid = \"{berlin}\"\naddress = \"{addr}\"\nrole = \"peer\"\ntrust_anchor = \"{ours}\"\n\n[[peer]]\nid = \"{partner_node}\"\naddress = \"127.0.0.1:9\"\nrole = \"peer\"\ntrust_anchor = \"{theirs}\"\n",
        ours = ours.display(),
        theirs = theirs.display(),
        addr = server.addr,
    ));
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let operator = common::connect(&pki, &node, hq.as_str()).await;

    // The link to berlin fails at the handshake, and the impostor is never pulled from.
    let deadline = Instant::now() + DEADLINE;
    let error = loop {
        assert_eq!(rogue.pulls(), 0, "hq pulled from an impostor of berlin");
        let links = operator.links().await.unwrap().links;
        let link = links.iter().find(|l| l.peer == berlin.as_str()).unwrap();
        if !link.last_error.is_empty() {
            break link.last_error.clone();
        }
        assert!(Instant::now() < deadline, "the link to berlin did not fail");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        rogue.pulls(),
        0,
        "hq pulled from an impostor of berlin: {error}"
    );
    node.shutdown(DEADLINE).await.unwrap();
    server.stop().await;
}

/// An admin whose own policy is narrowed is answered a reload with the policy hash only,
/// never the description that names every partner's policy. A reload that failed
/// answered with the reason, which quotes the configuration: a partner's entry, its
/// marking, the offending text. A narrowed admin now learns only that it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_does_not_quote_the_configuration_to_a_narrowed_admin() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let narrow = pki.client("admin.narrow");
    let config = write_config(&pki, &hq, &[client(narrow.as_str(), "admin")], &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("max_tlp = \"GREEN\"\n");
    std::fs::write(&config, &text).unwrap();
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, narrow.as_str()).await;
    let operator = common::connect(&pki, &node, hq.as_str()).await;
    assert!(admin.reload_policy().await.unwrap().description.is_empty());

    // The operator is editing the configuration: a partner's entry is not valid yet.
    text.push_str(
        "\n[[client]]\nid = \"secret.partner\"\nrole = \"read_only\"\nmax_tlp = \"PURPLE\"\n",
    );
    std::fs::write(&config, &text).unwrap();
    let refused = admin.reload_policy().await.unwrap_err();
    assert_eq!(code(&refused), tonic::Code::FailedPrecondition, "{refused}");
    let message = refused.to_string();
    for secret in ["secret.partner", "PURPLE", "client[1]"] {
        assert!(
            !message.contains(secret),
            "a narrowed admin was told {secret:?}: {message}"
        );
    }
    // The operator is told why.
    let told = operator.reload_policy().await.unwrap_err().to_string();
    assert!(
        told.contains("PURPLE") || told.contains("client[1]"),
        "{told}"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

/// What `Subscribe` streams held for a reader that is behind was bounded in items, not
/// bytes: the node kept the last 16,384 new items for its slowest subscriber, whatever
/// their size, so a read-only researcher that opened subscriptions and never read them
/// had the node hold every large item published meanwhile (about 10 KB each: 160 MB
/// and more). A subscription's unsent items now count against its partner's
/// `limits.unsent_answer_bytes` with every other answer; one that would pass it is ended
/// with `RESOURCE_EXHAUSTED` naming the limit (never continued with items missing), and
/// the others go on being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_subscriptions_hold_no_more_than_the_answer_budget() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let researcher = pki.client("researcher.bob");
    let admin = pki.client("ops.admin");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(researcher.as_str(), "read_only"),
            client(admin.as_str(), "admin"),
        ],
        &[],
    );
    // Long enough that no unread stream is let go for its slowness during the test.
    with_limits(&config, "slow_reader_timeout = \"600s\"\n");
    let (mut child, addr) = common::serve(&config);
    let pid = child.id();
    let connect = |who: &entente::NodeId| {
        let tls = pki.material(who).client_config().unwrap();
        let who = who.clone();
        let addr = addr.clone();
        let hq = hq.clone();
        async move {
            tokio::time::timeout(DEADLINE, NodeClient::connect(tls, &who, &addr, &hq))
                .await
                .expect("connect in time")
                .expect("connect")
        }
    };
    let alice = connect(&analyst).await;
    let bob = connect(&researcher).await;
    let ops = connect(&admin).await;
    let refused_before = unsent_answer_refusals(&ops).await;

    // Warm up the paths the attack takes, so that what grows after is what is held.
    publish(
        &alice,
        vec![
            (0..1000)
                .map(|i| large_indicator(&format!("warm-{i}.example")))
                .collect(),
        ],
    )
    .await;
    let before = status_mib(pid, "VmRSS");

    // Eight subscriptions that are never read, then 12,000 large items (about 120 MB).
    let mut unread = Vec::new();
    for _ in 0..8 {
        unread.push(bob.subscribe(ItemFilter::default()).await.unwrap());
    }
    for round in 0..12 {
        publish(
            &alice,
            vec![
                (0..1000)
                    .map(|i| large_indicator(&format!("big-{round}-{i}.example")))
                    .collect(),
            ],
        )
        .await;
    }
    let budget = 64;
    let grown = status_mib(pid, "VmRSS").saturating_sub(before);
    eprintln!("8 unread subscriptions, 12,000 large items: the node's memory grew by {grown} MiB");
    assert!(
        grown <= budget,
        "8 unread subscriptions of one researcher raised the node's memory by {grown} MiB (from {before} MiB)"
    );

    // Everyone else is still served: a query, and a subscription that reads.
    let page = alice
        .query(ItemFilter::default(), 10, Vec::new())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 10);
    let mut reading = alice.subscribe(ItemFilter::default()).await.unwrap();
    publish(
        &alice,
        vec![vec![indicator("after.example", Tlp::Green, 10)]],
    )
    .await;
    let got = tokio::time::timeout(DEADLINE, reading.message())
        .await
        .expect("the reading subscriber is served in time")
        .unwrap()
        .expect("an item");
    match got.item.and_then(|i| i.kind) {
        Some(wire::item::Kind::Indicator(indicator)) => {
            assert_eq!(indicator.value, "after.example")
        }
        other => panic!("not the new indicator: {other:?}"),
    }

    // The researcher reads one of its subscriptions now: the items it was sent before
    // it fell behind, then an end that says which limit it reached.
    let mut first = unread.swap_remove(0);
    let end = tokio::time::timeout(DEADLINE, async {
        loop {
            match first.message().await {
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended without an error"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the subscription that fell behind ends in time");
    assert_eq!(end.code(), tonic::Code::ResourceExhausted, "{end:?}");
    assert!(end.message().contains("unsent_answer_bytes"), "{end:?}");
    assert!(
        !end.message().chars().any(|c| c.is_ascii_digit()),
        "the end of the subscription counts items: {:?}",
        end.message()
    );
    // Counted where the operator looks.
    assert!(unsent_answer_refusals(&ops).await > refused_before);
    let _ = child.kill();
    let _ = child.wait();
}

/// Refusals under `limits.unsent_answer_bytes` so far, as `entente status` shows them.
async fn unsent_answer_refusals(ops: &NodeClient) -> u64 {
    ops.limits()
        .await
        .unwrap()
        .limits
        .into_iter()
        .find(|l| l.name == "unsent_answer_bytes")
        .expect("unsent_answer_bytes is listed")
        .refused
}

/// A channel to `node` at `addr` as `who`, whose streams accept a single byte of
/// data at a time: a caller that keeps its calls open and reads next to nothing.
async fn tiny_window_channel(
    pki: &Pki,
    who: &entente::NodeId,
    addr: &str,
    node: &entente::NodeId,
) -> tonic::transport::Channel {
    let tls = pki.material(who).client_config().unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls);
    let (addr, name) = (addr.to_owned(), node.to_string());
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(1)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let (connector, addr, name) = (connector.clone(), addr.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .unwrap()
}

/// An answer handed to the HTTP/2 connection whole left the partner's
/// `limits.unsent_answer_bytes` as soon as the stream could send one byte, while all
/// of it waited in the connection's send queue: a caller whose streams accept one byte
/// at a time had the node hold 4 MiB per unread call, past any budget (1.6 GiB after
/// 400 calls). Answers now go to the connection in small chunks, so what has not gone
/// out stays counted, and calls past the budget are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_waiting_for_a_tiny_window_stay_counted_against_the_budget() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let researcher = pki.client("researcher.bob");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(researcher.as_str(), "read_only"),
        ],
        &[],
    );
    let (mut child, addr) = common::serve(&config);
    let tls = pki.material(&analyst).client_config().unwrap();
    let alice = tokio::time::timeout(DEADLINE, NodeClient::connect(tls, &analyst, &addr, &hq))
        .await
        .expect("connect in time")
        .expect("connect");
    let items: Vec<wire::Item> = (0..1000)
        .map(|i| large_indicator(&format!("big-{i}.example")))
        .collect();
    publish(&alice, vec![items]).await;

    // 12 calls for a full page (4 MiB), one after another, on one connection that
    // reads a byte at a time: the budget (16 MiB) holds about four answers, and the
    // calls after them are refused at once.
    let channel = tiny_window_channel(&pki, &researcher, &addr, &hq).await;
    let mut calls = tokio::task::JoinSet::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut intel = entente::rpc::proto::intel_client::IntelClient::new(channel.clone())
            .max_decoding_message_size(64 << 20);
        calls.spawn(async move {
            intel
                .query(entente::rpc::proto::QueryRequest {
                    filter: Some(ItemFilter::default()),
                    page_size: 1000,
                    page_token: Vec::new(),
                })
                .await
                .map(|_| ())
        });
        // Refused calls end at once; an answered one waits on its reader.
        match tokio::time::timeout(Duration::from_secs(1), calls.join_next()).await {
            Ok(Some(Ok(Err(status)))) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                assert!(status.message().contains("unsent_answer_bytes"), "{status}");
                refused += 1;
            }
            Ok(Some(Ok(Ok(())))) => panic!("a 4 MiB answer read through a one-byte window"),
            Ok(Some(Err(e))) => panic!("{e}"),
            Ok(None) | Err(_) => {}
        }
    }
    assert!(
        refused >= 6,
        "{refused} of 12 unread calls refused: answers left the budget unsent"
    );
    calls.abort_all();
    let _ = child.kill();
    let _ = child.wait();
}
