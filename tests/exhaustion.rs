//! A certificate holder, or anyone who can open a TCP connection, tries to exhaust the
//! node: messages that cost far more decoded than on the wire, publish calls and streams
//! held open without reading or writing, connections that never finish a handshake
//! from many addresses, and more connections than a partner needs. Each is refused
//! with `RESOURCE_EXHAUSTED` (or let go) under a configurable limit, counted, and the
//! node goes on serving others.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Pki, client, start, write_config};
use entente::NodeId;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;

/// Sends and receives messages as the bytes given, so a test can put on the wire what
/// no well-behaved client would build.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let bytes = src.chunk().to_vec();
        src.advance(bytes.len());
        Ok(Some(bytes))
    }
}

/// Publishes `messages` as raw bytes; the node's answer.
async fn publish_raw(
    channel: tonic::transport::Channel,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.client_streaming(
        tonic::Request::new(tokio_stream::iter(messages)),
        PathAndQuery::from_static("/entente.v1.Intel/Publish"),
        Raw,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The peak resident memory of process `pid` so far, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib / 1024
}

fn item(value: &str) -> entente::wire::Item {
    entente::wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: entente::wire::Tlp::Green as i32,
        tags: vec![],
        kind: Some(entente::wire::item::Kind::Indicator(
            entente::wire::Indicator {
                indicator_type: "domain".into(),
                value: value.into(),
                description: "x".repeat(400),
                ..Default::default()
            },
        )),
    }
}

fn with_limits(config: &Path, limits: &str) {
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str("\n[limits]\n");
    text.push_str(limits);
    std::fs::write(config, text).unwrap();
}

/// Eight megabytes of two-byte empty items once took the node past 1.5 GB: prost
/// decoded four million items before the item count was looked at. The count is now
/// checked on the encoded bytes, and the node's peak memory stays small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_made_of_empty_items_is_refused_before_it_is_decoded() {
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
    let (mut child, addr) = common::serve(&config);
    let connect = |who: &NodeId| {
        let tls = pki.material(who).client_config().unwrap();
        let addr = addr.clone();
        let who = who.clone();
        let hq = hq.clone();
        async move {
            entente::client::NodeClient::connect(tls, &who, &addr, &hq)
                .await
                .unwrap()
        }
    };
    let alice = connect(&analyst).await;
    let before = peak_rss_mib(child.id());

    let empty_items: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 4_000_000)
        .flatten()
        .collect();
    // Sixteen megabytes: two of them, so the node would have to hold both at once.
    let status = publish_raw(alice.channel(), vec![empty_items.clone(), empty_items])
        .await
        .expect_err("refused");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("more than 100000 elements"),
        "{}",
        status.message()
    );

    // A message over limits.publish_message_bytes (16 MiB) is refused unread, with
    // the limit named.
    let mut oversized = PublishRequest {
        items: vec![item("big.example")],
        ..Default::default()
    };
    if let Some(entente::wire::item::Kind::Indicator(indicator)) = &mut oversized.items[0].kind {
        indicator.description = "y".repeat(17 * 1024 * 1024);
    }
    let status = publish_raw(
        alice.channel(),
        vec![prost::Message::encode_to_vec(&oversized)],
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("limits.publish_message_bytes"),
        "{}",
        status.message()
    );

    // The node is still serving, and a legitimate publish goes through.
    alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![item("after.example")],
            ..Default::default()
        }]))
        .await
        .expect("a legitimate publish after the attack");
    let after = peak_rss_mib(child.id());
    // Before the fix the peak rose by more than 1,300 MiB. What remains is the
    // message buffers (16 MiB each) and the decoded legitimate items.
    assert!(
        after < before + 160,
        "peak RSS rose from {before} MiB to {after} MiB"
    );

    // The operator sees the refusals counted.
    let ops = connect(&admin).await;
    let limits = ops.limits().await.unwrap().limits;
    let refused = |name: &str| {
        limits
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("{name} in {limits:?}"))
            .refused
    };
    assert!(refused("decode_budget") >= 1, "{limits:?}");
    assert!(refused("publish_message_bytes") >= 1, "{limits:?}");

    let _ = child.kill();
    let _ = child.wait();
}

/// Publish calls per partner are bounded, and a call that holds its slot without
/// sending anything is ended after `limits.slow_reader_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_publish_calls_are_bounded_and_let_go() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let config = write_config(&pki, &hq, &[client(analyst.as_str(), "analyst")], &[]);
    with_limits(
        &config,
        "publishes_per_partner = 2\nslow_reader_timeout = \"2s\"\n",
    );
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;

    // Two calls that send one bundle and then nothing, each on its own connection:
    // each holds a slot.
    let mut idle = Vec::new();
    for n in 0..2 {
        let client = common::connect(&pki, &node, analyst.as_str()).await;
        let value = format!("idle-{n}.example");
        idle.push(tokio::spawn(async move {
            // One bundle, then nothing: the call stays open.
            let first = tokio_stream::iter(vec![PublishRequest {
                items: vec![item(&value)],
                ..Default::default()
            }]);
            client
                .publish(tokio_stream::StreamExt::chain(
                    first,
                    tokio_stream::pending::<PublishRequest>(),
                ))
                .await
        }));
    }
    // Both calls are open once their first bundles are stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0..2 {
        let filter = ItemFilter {
            value: format!("idle-{n}.example"),
            ..Default::default()
        };
        while alice
            .query(filter.clone(), 10, Vec::new())
            .await
            .unwrap()
            .items
            .is_empty()
        {
            assert!(Instant::now() < deadline, "idle call {n} never published");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A third is refused while both are open.
    let one = tokio_stream::iter(vec![PublishRequest {
        items: vec![item("third.example")],
        ..Default::default()
    }]);
    let refused = match alice.publish(one).await {
        Err(entente::client::ClientError::Status { code, message, .. }) => (code, message),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a third publish call was served while two were open"),
    };
    assert_eq!(refused.0, tonic::Code::ResourceExhausted, "{}", refused.1);
    assert!(refused.1.contains("publish calls open"), "{}", refused.1);

    // The idle calls are ended by the node, which frees their slots.
    for call in idle {
        match tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the node ends an idle publish call")
            .unwrap()
        {
            Err(entente::client::ClientError::Status { code, message, .. }) => {
                assert_eq!(code, tonic::Code::DeadlineExceeded, "{message}");
                assert!(message.contains("slow_reader_timeout"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![item("fourth.example")],
            ..Default::default()
        }]))
        .await
        .expect("the slots are free again");
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// An export that is never read holds only what its stream had queued, until the node
/// gives up on it after `limits.slow_reader_timeout`; its stream slot is then free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_never_read_is_let_go() {
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
    with_limits(
        &config,
        "streams_per_partner = 1\nslow_reader_timeout = \"1s\"\n",
    );
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let bob = common::connect(&pki, &node, reader.as_str()).await;
    // More than the HTTP/2 windows hold: 20 bundles of 1,000 items of about 450 bytes.
    let requests: Vec<PublishRequest> = (0..20)
        .map(|b| PublishRequest {
            items: (0..1000)
                .map(|i| item(&format!("host-{b}-{i}.example")))
                .collect(),
            ..Default::default()
        })
        .collect();
    alice.publish(tokio_stream::iter(requests)).await.unwrap();
    let before = entente::limits::counters().refused(entente::limits::Limit::SlowReaderTimeout);

    // The one stream bob may hold, never read.
    let unread = bob.export(ItemFilter::default()).await.unwrap();
    match bob.export(ItemFilter::default()).await {
        Err(entente::client::ClientError::Status { code, .. }) => {
            assert_eq!(code, tonic::Code::ResourceExhausted)
        }
        other => panic!("a second stream was opened: {:?}", other.is_ok()),
    }

    // The node gives up on the unread stream and frees the slot.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match bob.export(ItemFilter::default()).await {
            Ok(_) => break,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the unread stream still holds its slot: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        entente::limits::counters().refused(entente::limits::Limit::SlowReaderTimeout) > before
    );
    drop(unread);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// 400 connections that never send a ClientHello, from 40 addresses (each under the
/// per-address limit): every handshake slot is taken, yet legitimate callers are
/// served at once, because the oldest handshake in progress gives way to a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_many_addresses_do_not_starve_callers() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let config = write_config(&pki, &hq, &[client(analyst.as_str(), "analyst")], &[]);
    let node = start(&config).await;
    let addr = node.local_addr();

    let mut idle = Vec::new();
    for source in 0..40u8 {
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(std::net::SocketAddr::from(([127, 0, 1, 10 + source], 0)))
                .unwrap();
            idle.push(socket.connect(addr).await.unwrap());
        }
    }
    let material = pki.material(&analyst);
    for _ in 0..9 {
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(3),
            common::hello(&material, addr, &NodeId::new("redmond.hq").unwrap()),
        )
        .await
        .expect("hello answered while 400 silent connections are open")
        .expect("hello");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
    assert!(entente::limits::counters().refused(entente::limits::Limit::Handshakes) > 0);
    drop(idle);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// One identity may hold `limits.connections_per_partner` connections; another is
/// closed after its handshake, and one is free again when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_partner_are_bounded() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let config = write_config(&pki, &hq, &[client(analyst.as_str(), "analyst")], &[]);
    with_limits(&config, "connections_per_partner = 2\n");
    let node = start(&config).await;
    let addr = node.local_addr();
    let hq_id = NodeId::new("redmond.hq").unwrap();
    let material = pki.material(&analyst);

    let first = common::connect(&pki, &node, analyst.as_str()).await;
    first.hello().await.unwrap();
    let second = common::connect(&pki, &node, analyst.as_str()).await;
    second.hello().await.unwrap();
    let third = common::hello(&material, addr, &hq_id).await;
    assert!(third.is_err(), "a third connection was served");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::hello(&material, addr, &hq_id).await.is_err() {
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A peer's pull follow stream that is never read holds one page and two parts, until
/// the node gives up on it after `limits.slow_reader_timeout`; its slot is then free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_stream_that_is_never_read_is_let_go() {
    use entente::rpc::proto::PullRequest;
    use entente::rpc::proto::federation_client::FederationClient;
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let berlin = pki.node("berlin.office");
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str(
        "\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n\n[limits]\nstreams_per_partner = 1\nslow_reader_timeout = \"1s\"\n",
    );
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = start(&config).await;
    let alice = common::connect(&pki, &node, analyst.as_str()).await;
    let requests: Vec<PublishRequest> = (0..20)
        .map(|b| PublishRequest {
            items: (0..1000)
                .map(|i| item(&format!("host-{b}-{i}.example")))
                .collect(),
            ..Default::default()
        })
        .collect();
    alice.publish(tokio_stream::iter(requests)).await.unwrap();

    let peer = common::connect(&pki, &node, berlin.as_str()).await;
    let pull = || {
        let mut federation = FederationClient::new(peer.channel());
        async move {
            federation
                .pull(PullRequest {
                    cursor: Vec::new(),
                    follow: true,
                    protocol_version: entente::rpc::PROTOCOL_VERSION,
                    resume: None,
                })
                .await
        }
    };
    let unread = pull().await.expect("the first pull stream");
    let refused = pull().await.expect_err("a second stream over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let deadline = Instant::now() + Duration::from_secs(30);
    while pull().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the unread pull stream still holds its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(unread);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A connection with no call in progress is closed by the node after
/// `limits.idle_connection_timeout`, which gives back its place under
/// `limits.connections_per_partner`; a stream is a call in progress, so a subscription
/// open on another connection outlives the timeout and still delivers. Against a real
/// `entente serve` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_gives_back_its_slot_while_streams_stay_open() {
    use entente::client::NodeClient;
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let analyst = pki.client("analyst.alice");
    let reader = pki.client("researcher.bob");
    let admin = pki.client("ops.admin");
    let config = write_config(
        &pki,
        &hq,
        &[
            client(analyst.as_str(), "analyst"),
            client(reader.as_str(), "read_only"),
            client(admin.as_str(), "admin"),
        ],
        &[],
    );
    let idle_timeout = Duration::from_secs(2);
    with_limits(
        &config,
        "connections_per_partner = 2\nidle_connection_timeout = \"2s\"\n",
    );
    let (process, addr) = common::serve(&config);
    let _process = KillOnDrop(process);
    let connect = |who: &NodeId| {
        let tls = pki.material(who).client_config().unwrap();
        let (who, addr, hq) = (who.clone(), addr.clone(), hq.clone());
        async move {
            let client = NodeClient::connect(tls, &who, &addr, &hq)
                .await
                .map_err(|e| e.to_string())?;
            client.hello().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(client)
        }
    };

    // Bob's two connections: one follows a subscription throughout, the other holds a
    // stream while the cap is checked, then stays open with no call in progress.
    let following = connect(&reader).await.unwrap();
    let mut followed = following.subscribe(ItemFilter::default()).await.unwrap();
    let second = connect(&reader).await.unwrap();
    let busy = second.subscribe(ItemFilter::default()).await.unwrap();
    assert!(
        connect(&reader).await.is_err(),
        "a third connection was served"
    );
    drop(busy);
    let idle_since = Instant::now();

    // The node closes the idle connection, so a third one is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let third = loop {
        match connect(&reader).await {
            Ok(client) => break client,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the idle connection still holds its slot: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        idle_since.elapsed() >= idle_timeout,
        "the slot was free before the idle timeout"
    );
    third.hello().await.expect("the new connection is served");

    // The subscription, open longer than the timeout with nothing to deliver, is still
    // there: it receives what is published now.
    let alice = connect(&analyst).await.unwrap();
    alice
        .publish(tokio_stream::iter(vec![PublishRequest {
            items: vec![item("after-idle.example")],
            ..Default::default()
        }]))
        .await
        .unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(20), followed.message())
        .await
        .expect("the subscription delivers in time")
        .expect("the subscription is still open")
        .expect("an item");
    match delivered.item.and_then(|i| i.kind) {
        Some(entente::wire::item::Kind::Indicator(indicator)) => {
            assert_eq!(indicator.value, "after-idle.example")
        }
        other => panic!("{other:?}"),
    }

    // Counted, and shown by `entente status` (Admin.Limits).
    let operator = connect(&admin).await.unwrap();
    let limits = operator.limits().await.unwrap().limits;
    let idle = limits
        .iter()
        .find(|l| l.name == "idle_connection_timeout")
        .expect("the limit is listed");
    assert_eq!(idle.value, "2s");
    assert!(idle.counted && idle.refused >= 1, "{idle:?}");
}

/// A node process, killed when the test ends (passed or not).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
