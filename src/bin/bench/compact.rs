//! `compact`: the space a compaction of the bundle log reclaims and the time it takes,
//! measured through the operator's command. A node (its own process) takes N
//! indicators through `Intel.Publish`, then the same N again (the node gives a list's
//! items the same ids, so the second round is a new version of each); it stops, and
//! `entente store compact --json` runs on its data directory as a process of its own:
//! its wall time and peak memory are the whole-process figures, beside the log's size
//! before and after and the command's own timing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use entente::client::NodeClient;
use entente::config::ClientSettings;
use entente::rpc::proto::PublishRequest;

use super::{Args, client_toml, draft, machine, rss_mib, setup, spawn_node};

/// Publishes items `0..items` in bundles of `bundle_size`; returns the seconds taken.
async fn publish_all(client: &NodeClient, items: usize, bundle_size: usize) -> Result<f64> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(8);
    let feeder = tokio::spawn(async move {
        let mut next = 0;
        while next < items {
            let end = (next + bundle_size).min(items);
            let request = PublishRequest {
                items: (next..end).map(draft).collect(),
                distribution: None,
                groups: Vec::new(),
            };
            if tx.send(request).await.is_err() {
                return;
            }
            next = end;
        }
    });
    let started = Instant::now();
    let response = client
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    feeder.await?;
    if response.items_accepted as usize != items {
        bail!("node accepted {} of {items} items", response.items_accepted);
    }
    Ok(started.elapsed().as_secs_f64())
}

pub async fn compact(args: &Args) -> Result<()> {
    let entente = std::env::current_exe()?
        .parent()
        .context("the benchmark's directory")?
        .join("entente");
    if !entente.exists() {
        bail!(
            "{} is missing: build it beside the benchmark (cargo build --release --bins)",
            entente.display()
        );
    }
    let dir = tempfile::tempdir()?;
    let (node_config, client_config) = setup(dir.path())?;
    let (mut node, addr) = spawn_node(&node_config)?;
    std::fs::write(
        &client_config,
        client_toml("analyst.bench", &addr, "bench.hq"),
    )?;
    let client = Arc::new(NodeClient::connect_with(&ClientSettings::load(&client_config)?).await?);
    println!("entente-bench compact");
    println!("machine:     {}", machine());
    println!(
        "items:       {} in bundles of {}, each published twice (the second time a new version)",
        args.items, args.bundle_size
    );
    let first = publish_all(&client, args.items, args.bundle_size).await?;
    let second = publish_all(&client, args.items, args.bundle_size).await?;
    println!(
        "publish:     {:.0} items/s, then {:.0} items/s for the new versions",
        args.items as f64 / first,
        args.items as f64 / second
    );
    drop(client);
    drop(node.stdin.take());
    node.wait()?;

    let log = dir.path().join("data").join(entente::store::LOG_FILE);
    let before = std::fs::metadata(&log)?.len();
    let started = Instant::now();
    let child = std::process::Command::new(&entente)
        .args(["store", "compact", "--json", "--config"])
        .arg(&node_config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run entente store compact")?;
    // Its peak memory, read while it runs (the last reading before it exits).
    let pid = child.id().to_string();
    let peak = Arc::new(std::sync::Mutex::new(0.0f64));
    let watcher = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while std::path::Path::new(&format!("/proc/{pid}/status")).exists() {
                let now = rss_mib(&pid, "VmHWM");
                let mut held = peak.lock().unwrap();
                *held = held.max(now);
                drop(held);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let output = child.wait_with_output()?;
    let wall = started.elapsed().as_secs_f64();
    let _ = watcher.join();
    if !output.status.success() {
        bail!("entente store compact failed: {}", output.status);
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let after = std::fs::metadata(&log)?.len();
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "log:         {:.1} MiB before, {:.1} MiB after: {:.1} MiB reclaimed ({:.0} %)",
        mib(before),
        mib(after),
        mib(before.saturating_sub(after)),
        100.0 * before.saturating_sub(after) as f64 / before.max(1) as f64
    );
    println!(
        "records:     {} before, {} kept; bundles {} before, {} kept",
        report["records_before"],
        report["records_kept"],
        report["bundles_before"],
        report["bundles_kept"]
    );
    println!(
        "compaction:  {:.2} s in the store ({:.0} kept items/s); the command, as a process: {:.2} s wall (opening the store included), peak RSS {:.0} MiB",
        report["seconds"].as_f64().unwrap_or(0.0),
        report["records_kept"].as_f64().unwrap_or(0.0)
            / report["seconds"].as_f64().unwrap_or(1.0).max(1e-9),
        wall,
        *peak.lock().unwrap()
    );
    Ok(())
}
