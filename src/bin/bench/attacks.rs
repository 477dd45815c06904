//! `attacks`: the node's memory and its service to a legitimate caller while one
//! certificate holder (or an address without one) tries to exhaust it. The node is
//! its own process holding `--items` indicators; each attack runs in turn, and the
//! node's peak and current RSS and the latency of a legitimate query are printed
//! after each.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use entente::certs::{CertDir, Usage, Validity};
use entente::client::NodeClient;
use entente::model::NodeId;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::{ItemFilter, PublishRequest, PullRequest};
use prost::bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use entente::config::builder::{Entry, Policy};

use super::{Args, bench_client as client, draft, machine, rss_mib, spawn_node, value_of};

/// Messages as raw bytes, for what no well-behaved client would build.
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

struct Target {
    pid: String,
    analyst: Arc<NodeClient>,
}

impl Target {
    /// Median latency of 20 exact-value queries by the legitimate analyst.
    async fn query_latency(&self, items: usize) -> Result<Duration> {
        let mut times = Vec::new();
        for i in 0..20 {
            let filter = ItemFilter {
                value: value_of((i * 7919) % items.max(1)),
                ..Default::default()
            };
            let started = Instant::now();
            tokio::time::timeout(
                Duration::from_secs(30),
                self.analyst.query(filter, 10, Vec::new()),
            )
            .await
            .context("a legitimate query timed out")??;
            times.push(started.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    }

    async fn report(&self, attack: &str, items: usize, outcome: &str) -> Result<()> {
        let latency = self.query_latency(items).await?;
        println!(
            "{attack:<44} peak {:>7.0} MiB  now {:>7.0} MiB  query p50 {:>7.2} ms  {outcome}",
            rss_mib(&self.pid, "VmHWM"),
            rss_mib(&self.pid, "VmRSS"),
            latency.as_secs_f64() * 1000.0
        );
        Ok(())
    }
}

fn config(dir: &Path) -> String {
    super::bench_node("bench.hq", "127.0.0.1:0", dir.join("data"))
        .limit("slow_reader_timeout", "10s")
        .entry(Entry::client("attacker.bench", "analyst"))
        .entry(Entry::client("reader.bench", "read_only").policy(Policy::all_types()))
        .entry(
            Entry::peer("peer.bench", "127.0.0.1:1").policy(Policy::all_types().max_tlp("GREEN")),
        )
        .render()
}

pub async fn attacks(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = CertDir::new(dir.path().join("certs"));
    certs.create_ca("Bench CA", Validity::days_from_now(2))?;
    for id in ["bench.hq", "peer.bench"] {
        certs.issue(
            &NodeId::new(id)?,
            &Usage::Node {
                ips: vec![],
                dns: vec![],
            },
            Validity::days_from_now(2),
        )?;
    }
    for id in ["analyst.bench", "attacker.bench", "reader.bench"] {
        certs.issue(
            &NodeId::new(id)?,
            &Usage::Client,
            Validity::days_from_now(2),
        )?;
    }
    let node_config = dir.path().join("node.toml");
    std::fs::write(&node_config, config(dir.path()))?;
    // Relative paths in the client configurations are resolved from their directory.
    let (mut child, addr) = spawn_node(&node_config)?;
    let pid = child.id().to_string();
    let analyst = Arc::new(client(dir.path(), "analyst.bench", &addr).await?);

    println!("entente-bench attacks");
    println!("machine:     {}", machine());
    println!("items held:  {} (synthetic domain indicators)", args.items);
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(8);
    let (items, bundle_size) = (args.items, args.bundle_size);
    let feeder = tokio::spawn(async move {
        let mut next = 0;
        while next < items {
            let end = (next + bundle_size).min(items);
            let request = PublishRequest {
                items: (next..end).map(draft).collect(),
                ..Default::default()
            };
            if tx.send(request).await.is_err() {
                return;
            }
            next = end;
        }
    });
    analyst
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    feeder.await?;
    let target = Target {
        pid: pid.clone(),
        analyst: analyst.clone(),
    };
    target.report("baseline (after loading)", items, "").await?;

    // 1. Publish messages of empty items (8 MB each: four million items on the wire).
    let attacker = client(dir.path(), "attacker.bench", &addr).await?;
    let empty: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 4_000_000)
        .flatten()
        .collect();
    let mut refused = Vec::new();
    for _ in 0..4 {
        let mut grpc = tonic::client::Grpc::new(attacker.channel());
        grpc.ready().await?;
        let status = grpc
            .client_streaming(
                tonic::Request::new(tokio_stream::iter(vec![empty.clone(), empty.clone()])),
                tonic::codegen::http::uri::PathAndQuery::from_static("/entente.v1.Intel/Publish"),
                Raw,
            )
            .await
            .err()
            .map(|s| format!("{:?}", s.code()))
            .unwrap_or_else(|| "accepted".into());
        refused.push(status);
    }
    target
        .report(
            "publish: 4 calls of 2 x 8 MB empty items",
            items,
            &format!("answers: {}", refused.join(", ")),
        )
        .await?;

    // 2. Pull follow streams from a peer that never reads, and exports by a reader
    // that never reads: as many as the per-partner limit lets through.
    let peer_tls = entente::transport::tls::TlsMaterial::load(
        &entente::transport::tls::TlsPaths {
            cert: dir.path().join("certs/peer.bench.crt"),
            key: dir.path().join("certs/peer.bench.key"),
            trust_anchors: vec![dir.path().join("certs/ca.crt")],
            crls: vec![],
        },
        &NodeId::new("peer.bench")?,
    )?
    .client_config()?;
    let peer = NodeClient::connect(
        peer_tls,
        &NodeId::new("peer.bench")?,
        &addr,
        &NodeId::new("bench.hq")?,
    )
    .await?;
    let mut held = Vec::new();
    let mut opened = 0;
    let mut refusals = 0;
    for _ in 0..100 {
        let mut federation =
            FederationClient::new(peer.channel()).max_decoding_message_size(64 << 20);
        match federation
            .pull(PullRequest {
                cursor: Vec::new(),
                follow: true,
                protocol_version: entente::rpc::PROTOCOL_VERSION,
                resume: None,
            })
            .await
        {
            Ok(stream) => {
                opened += 1;
                held.push(stream.into_inner());
            }
            Err(_) => refusals += 1,
        }
    }
    let reader = client(dir.path(), "reader.bench", &addr).await?;
    let mut exports = Vec::new();
    for _ in 0..100 {
        match reader.export(ItemFilter::default()).await {
            Ok(stream) => exports.push(stream),
            Err(_) => refusals += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    target
        .report(
            "unread pull follow and export streams",
            items,
            &format!(
                "{opened} pulls + {} exports open, {refusals} refused",
                exports.len()
            ),
        )
        .await?;
    // The node lets them go after limits.slow_reader_timeout (10 s here).
    tokio::time::sleep(Duration::from_secs(12)).await;
    target
        .report(
            "  ... after the slow-reader timeout",
            items,
            "unread streams let go",
        )
        .await?;
    drop(held);
    drop(exports);

    // 3. Subscribe fan-out: 2,000 subscriptions from one read-only identity while
    // 5,000 items are published.
    let mut subscriptions = Vec::new();
    let mut refused = 0;
    for _ in 0..2000 {
        match reader.subscribe(ItemFilter::default()).await {
            Ok(stream) => subscriptions.push(stream),
            Err(_) => refused += 1,
        }
    }
    let fresh: Vec<PublishRequest> = (0..5)
        .map(|b| PublishRequest {
            items: (0..1000)
                .map(|i| draft(items + 1_000_000 + b * 1000 + i))
                .collect(),
            ..Default::default()
        })
        .collect();
    analyst.publish(tokio_stream::iter(fresh)).await?;
    let mut delivered = 0usize;
    for stream in subscriptions.iter_mut() {
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        {
            delivered += 1;
            if delivered % 5000 == 0 {
                break;
            }
        }
    }
    target
        .report(
            "subscribe fan-out: 2,000 asked, 5,000 items",
            items,
            &format!(
                "{} open, {refused} refused, {delivered} items delivered",
                subscriptions.len()
            ),
        )
        .await?;
    drop(subscriptions);

    // 4. 400 TCP connections that never send a ClientHello, from 40 addresses.
    let socket_addr: std::net::SocketAddr = addr.parse()?;
    let mut silent = Vec::new();
    for source in 0..40u8 {
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::from(([127, 0, 2, 10 + source], 0)))?;
            silent.push(socket.connect(socket_addr).await?);
        }
    }
    let mut worst = Duration::ZERO;
    for _ in 0..9 {
        let started = Instant::now();
        let fresh = client(dir.path(), "analyst.bench", &addr).await?;
        tokio::time::timeout(Duration::from_secs(30), fresh.hello()).await??;
        worst = worst.max(started.elapsed());
    }
    target
        .report(
            "400 silent connections from 40 addresses",
            items,
            &format!(
                "9 new callers connected, slowest in {:.0} ms",
                worst.as_secs_f64() * 1000.0
            ),
        )
        .await?;
    drop(silent);

    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
