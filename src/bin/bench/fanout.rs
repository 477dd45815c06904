//! `fanout`: what many `Subscribe` streams cost the disclosure ledger. A node (its own
//! process) serves 100 subscriptions, ten from each of ten read-only clients, all
//! reading, while `--items` indicators are published in bundles of `--bundle-size`;
//! every item each stream receives is one ledger record. Prints the time until every
//! stream had every item, the ledger's bytes on disk per record and in all, and the
//! node's memory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use entente::certs::{CertDir, Usage, Validity};
use entente::model::NodeId;
use entente::rpc::proto::{ItemFilter, PublishRequest};

use entente::config::builder::{Entry, Policy};

use super::{Args, bench_client as client, dir_bytes, draft, machine, rss_mib, spawn_node};

const READERS: usize = 10;
const STREAMS_PER_READER: usize = 10;

fn reader_id(r: usize) -> String {
    format!("reader-{r:02}.bench")
}

fn config(dir: &Path) -> String {
    let mut config = super::bench_node("bench.hq", "127.0.0.1:0", dir.join("data"));
    for r in 0..READERS {
        config =
            config.entry(Entry::client(&reader_id(r), "read_only").policy(Policy::all_types()));
    }
    config.render()
}

pub async fn fanout(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = CertDir::new(dir.path().join("certs"));
    certs.create_ca("Bench CA", Validity::days_from_now(2))?;
    certs.issue(
        &NodeId::new("bench.hq")?,
        &Usage::Node {
            ips: vec![],
            dns: vec![],
        },
        Validity::days_from_now(2),
    )?;
    let mut clients = vec!["analyst.bench".to_owned()];
    clients.extend((0..READERS).map(reader_id));
    for id in &clients {
        certs.issue(
            &NodeId::new(id)?,
            &Usage::Client,
            Validity::days_from_now(2),
        )?;
    }
    let node_config = dir.path().join("node.toml");
    std::fs::write(&node_config, config(dir.path()))?;
    let (mut child, addr) = spawn_node(&node_config)?;
    let pid = child.id().to_string();
    let analyst = client(dir.path(), "analyst.bench", &addr).await?;

    let streams = READERS * STREAMS_PER_READER;
    let items = args.items;
    println!("entente-bench fanout");
    println!("machine:     {}", machine());
    println!(
        "streams:     {streams} Subscribe streams ({READERS} read-only clients x {STREAMS_PER_READER}), all reading"
    );
    println!(
        "published:   {items} synthetic domain indicators in bundles of {}",
        args.bundle_size
    );

    let mut readers = Vec::new();
    for r in 0..READERS {
        readers.push(client(dir.path(), &reader_id(r), &addr).await?);
    }
    let mut tasks = Vec::new();
    for reader in &readers {
        for _ in 0..STREAMS_PER_READER {
            let mut stream = reader
                .subscribe(ItemFilter::default())
                .await
                .context("subscribe")?;
            tasks.push(tokio::spawn(async move {
                let mut received = 0usize;
                while received < items {
                    match tokio::time::timeout(Duration::from_secs(120), stream.message()).await {
                        Ok(Ok(Some(_))) => received += 1,
                        Ok(Ok(None)) => return Ok(received),
                        Ok(Err(status)) => {
                            return Err(format!("{:?}: {}", status.code(), status.message()));
                        }
                        Err(_) => return Err(format!("nothing for 120 s after {received} items")),
                    }
                }
                Ok(received)
            }));
        }
    }
    let ledger_dir = dir.path().join("data").join("ledger");
    let ledger_before = dir_bytes(&ledger_dir);
    let rss_before = rss_mib(&pid, "VmRSS");

    let started = Instant::now();
    let requests: Vec<PublishRequest> = (0..items)
        .collect::<Vec<_>>()
        .chunks(args.bundle_size.max(1))
        .map(|chunk| PublishRequest {
            items: chunk.iter().map(|i| draft(*i)).collect(),
            ..Default::default()
        })
        .collect();
    analyst.publish(tokio_stream::iter(requests)).await?;
    let published = started.elapsed();
    let mut delivered = 0usize;
    let mut ended = Vec::new();
    for task in tasks {
        match task.await? {
            Ok(received) => delivered += received,
            Err(why) => ended.push(why),
        }
    }
    let elapsed = started.elapsed();
    let ledger_after = dir_bytes(&ledger_dir);
    let peak = rss_mib(&pid, "VmHWM");
    let now = rss_mib(&pid, "VmRSS");
    drop(child.stdin.take());
    let _ = child.wait();
    let ledger_closed = dir_bytes(&ledger_dir);

    let written = ledger_closed.saturating_sub(ledger_before);
    println!(
        "published in {:.2} s; every stream had every item after {:.2} s",
        published.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "delivered:   {delivered} items ({:.0} a second), one ledger record each",
        delivered as f64 / elapsed.as_secs_f64()
    );
    println!(
        "ledger:      {:.1} MB written ({:.1} MB when the last stream finished), {:.1} bytes per record",
        written as f64 / 1e6,
        ledger_after.saturating_sub(ledger_before) as f64 / 1e6,
        written as f64 / delivered.max(1) as f64
    );
    println!("node RSS:    {rss_before:.0} MiB before, peak {peak:.0} MiB, {now:.0} MiB after");
    if !ended.is_empty() {
        bail!("{} streams ended early: {}", ended.len(), ended[0]);
    }
    Ok(())
}
