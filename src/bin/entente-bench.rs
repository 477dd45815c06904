//! The project's benchmark program. Prints its figures and the machine it ran on.
//!
//! ```text
//! cargo run --release --bin entente-bench -- ingest [--items 1000000] [--bundle-size 1000]
//! ```
//!
//! `compact [--items N]` publishes N indicators twice (the second time as new versions)
//! and measures `entente store compact` on the node's store: space reclaimed, time,
//! peak memory.
//!
//! `attacks [--items N]` loads a node with N indicators and measures its memory and a
//! legitimate caller's query latency under each resource-exhaustion attack in turn.
//!
//! `fanout [--items N]` publishes N indicators to a node serving 100 `Subscribe`
//! streams that all read, and measures what their disclosure-ledger records cost on
//! disk, the time until every stream had every item, and the node's memory.
//!
//! `ingest` starts a fresh node as its own process (own PKI, own store in a temporary
//! directory, real mTLS on loopback) and measures: publishing through `Intel.Publish`;
//! the node's peak RSS and disk bytes per indicator after the flush; the raw sled
//! insert rate of same-sized records in the same run (the floor); exact-value
//! queries, and what their disclosure-ledger records add to the disk per query (the
//! ledger's segment files, and the whole data directory, before the queries and after
//! the node stopped); peak RSS again; then, with the node stopped, the time to reopen
//! its store (rebuilding the indexes) and exact-value lookups on the store alone.
//!
//! The comparison with other TAXII 2.1 servers (OpenTAXII, medallion) is a script beside
//! this program, `bench/taxii/compare.py`: it installs them in a virtual environment and
//! measures all three through TAXII 2.1 only (see `bench/taxii/README.md`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use entente::certs::{CertDir, Usage, Validity};
use entente::client::NodeClient;
use entente::config::builder::{Entry, NodeToml, Policy};
use entente::config::{ClientSettings, Config};
use entente::model::NodeId;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire;

#[path = "bench/attacks.rs"]
mod attacks;
#[path = "bench/compact.rs"]
mod compact;
#[path = "bench/fanout.rs"]
mod fanout;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator's settings (`entente::allocator`), applied before `main` and before the
/// first allocation: mimalloc reserves its first arena with the settings in force then.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static SETTLE_ALLOCATOR: extern "C" fn() = settle_allocator;

#[cfg(target_os = "linux")]
extern "C" fn settle_allocator() {
    entente::allocator::settle();
}

struct Args {
    command: String,
    config: Option<std::path::PathBuf>,
    items: usize,
    bundle_size: usize,
    queries: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        command: String::new(),
        config: None,
        items: 1_000_000,
        bundle_size: 1000,
        queries: 20_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} must be a number"))
        };
        match arg.as_str() {
            "--items" => args.items = value("--items")?,
            "--bundle-size" => args.bundle_size = value("--bundle-size")?,
            "--queries" => args.queries = value("--queries")?,
            "ingest" | "sync" | "latency" | "attacks" | "compact" | "fanout"
                if args.command.is_empty() =>
            {
                args.command = arg
            }
            // Internal: the node under test, run as its own process.
            "node" if args.command.is_empty() => {
                args.command = arg;
                args.config = Some(it.next().context("node needs a config path")?.into());
            }
            other => bail!(
                "unknown argument {other:?}; usage: entente-bench ingest|sync|latency|attacks|compact|fanout [--items N] [--bundle-size N] [--queries N] (TAXII servers side by side: bench/taxii/compare.py)"
            ),
        }
    }
    if args.command.is_empty() {
        bail!(
            "usage: entente-bench ingest|sync|latency|attacks|compact|fanout [--items N] [--bundle-size N] [--queries N] (TAXII servers side by side: bench/taxii/compare.py)"
        );
    }
    Ok(args)
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!(
        "{cores} cores, {cpu}, {mem} RAM, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// A memory figure (`VmHWM` = peak, `VmRSS` = current) of a process, in MiB.
fn rss_mib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat (11 and 12 after the name).
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// Bytes of all files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Runs the node under test until its standard input closes.
async fn run_node(config: &Path) -> Result<()> {
    let node = entente::Node::start(Config::load(config)?).await?;
    println!("listening {}", node.local_addr());
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    node.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}

fn value_of(i: usize) -> String {
    format!("c2-{i:08}.bench.example.com")
}

fn draft(i: usize) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Green as i32,
        tags: vec!["source:bench".into()],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value_of(i),
            description: "command-and-control host".into(),
            confidence: 70,
            kill_chain_phases: vec![],
            valid_from_unix_ms: 0,
            valid_until_unix_ms: None,
            stix_properties: String::new(),
        })),
    }
}

/// A throwaway federation CA in `dir`, a certificate for each of `nodes` and one for
/// the client `analyst.bench`.
fn bench_pki(dir: &Path, nodes: &[&str]) -> Result<()> {
    let certs = CertDir::new(dir);
    certs.create_ca("Bench CA", Validity::days_from_now(2))?;
    for id in nodes {
        certs.issue(
            &NodeId::new(id)?,
            &Usage::Node {
                ips: vec![],
                dns: vec![],
            },
            Validity::days_from_now(2),
        )?;
    }
    certs.issue(
        &NodeId::new("analyst.bench")?,
        &Usage::Client,
        Validity::days_from_now(2),
    )?;
    Ok(())
}

/// Writes a PKI, a node configuration and an analyst client configuration.
fn setup(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    bench_pki(&dir.join("certs"), &["bench.hq"])?;
    let node_config = dir.join("node.toml");
    bench_node("bench.hq", "127.0.0.1:0", "data").write(&node_config)?;
    Ok((node_config, dir.join("analyst.toml")))
}

/// Inserts `n` records of `value_len` bytes straight into sled; returns the rate and
/// the disk bytes per record after flush.
fn raw_sled_floor(dir: &Path, n: usize, value_len: usize) -> Result<(f64, f64)> {
    let db = sled::Config::new()
        .path(dir.join("raw-sled"))
        .cache_capacity(64 << 20)
        .open()?;
    let tree = db.open_tree("raw")?;
    let value = vec![0x5au8; value_len];
    let started = Instant::now();
    for i in 0..n {
        let key = format!("indicator--{:036}", i);
        tree.insert(key.as_bytes(), value.as_slice())?;
    }
    db.flush()?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Ok((rate, db.size_on_disk()? as f64 / n as f64))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn ingest(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (node_config, client_config) = setup(dir.path())?;
    // The node runs as its own process, so its memory is measured apart from the
    // load generator's.
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("node")
        .arg(&node_config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the node process")?;
    let pid = child.id().to_string();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("node stdout")?),
        &mut line,
    )?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("node did not start: {line:?}"))?
        .to_owned();
    std::fs::write(
        &client_config,
        client_toml("analyst.bench", &addr, "bench.hq"),
    )?;
    let settings = ClientSettings::load(&client_config)?;
    let client = Arc::new(NodeClient::connect_with(&settings).await?);

    println!("entente-bench ingest");
    println!("machine:     {}", machine());
    println!(
        "items:       {} in bundles of {}",
        args.items, args.bundle_size
    );

    // Publish through Intel.Publish over mTLS, one stream, one message per bundle.
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(8);
    let (items, bundle_size) = (args.items, args.bundle_size);
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
    let ingest_secs = started.elapsed().as_secs_f64();
    feeder.await?;
    if response.items_accepted as usize != args.items {
        bail!(
            "node accepted {} of {} items",
            response.items_accepted,
            args.items
        );
    }
    let ingest_rate = args.items as f64 / ingest_secs;
    let node_peak_after_ingest = rss_mib(&pid, "VmHWM");

    let encoded_item = {
        use prost::Message;
        let item =
            entente::model::Item::from_draft(draft(0), "hq.bench", entente::engine::now_ms())?;
        wire::Item::from(&item).encoded_len()
    };
    let disk = dir_bytes(&dir.path().join("data"));

    // The store is the floor: the same number of same-sized records, straight into sled.
    // On the blocking pool: the client's connection to the node must go on answering
    // the node's keepalive pings meanwhile (at ten million records this takes minutes).
    let (floor, floor_disk) = {
        let path = dir.path().to_path_buf();
        let items = args.items;
        tokio::task::spawn_blocking(move || raw_sled_floor(&path, items, encoded_item)).await??
    };

    println!();
    println!(
        "ingest via Publish over mTLS: {ingest_rate:>10.0} items/s ({ingest_secs:.1} s; target >= 50,000)"
    );
    println!(
        "raw sled insert, same size:   {floor:>10.0} records/s ({encoded_item} B values; pipeline at {:.0}% of the floor)",
        100.0 * ingest_rate / floor
    );
    println!(
        "node peak RSS after ingest:   {node_peak_after_ingest:>10.0} MiB (the node process alone; target < 300)"
    );
    println!(
        "disk after flush:             {:>10.0} B per indicator ({:.2}x the {encoded_item} B encoded item; target <= 2.5x)",
        disk as f64 / args.items as f64,
        disk as f64 / args.items as f64 / encoded_item as f64
    );
    println!(
        "raw sled disk, same size:     {floor_disk:>10.0} B per record ({:.2}x the value: sled's own amplification)",
        floor_disk / encoded_item as f64
    );

    // Exact-value queries: sequential (latency) and with 8 in flight (throughput).
    // Each answer is recorded in the disclosure ledger first: what that costs on disk
    // is measured from here to after the node stops.
    let ledger_dir = dir.path().join("data").join("ledger");
    let ledger_before = dir_bytes(&ledger_dir);
    let data_before = dir_bytes(&dir.path().join("data"));
    let mut latencies = Vec::with_capacity(args.queries);
    let mut rng_state = 0x9E3779B97F4A7C15u64;
    let mut next_value = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        value_of((rng_state % items as u64) as usize)
    };
    let started = Instant::now();
    for _ in 0..args.queries {
        let filter = ItemFilter {
            value: next_value(),
            ..Default::default()
        };
        let t = Instant::now();
        let page = client.query(filter, 10, vec![]).await?;
        latencies.push(t.elapsed());
        if page.items.len() != 1 {
            bail!("an exact-value query returned {} items", page.items.len());
        }
    }
    let sequential_rate = args.queries as f64 / started.elapsed().as_secs_f64();
    latencies.sort();

    let in_flight = 8;
    let node_cpu_before = cpu_seconds(&pid);
    let client_cpu_before = cpu_seconds("self");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..in_flight {
        let client = client.clone();
        let per = args.queries / in_flight;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for q in 0..per {
                let i = (worker * 7919 + q * 104_729) % items;
                let filter = ItemFilter {
                    value: value_of(i),
                    ..Default::default()
                };
                let t = Instant::now();
                client.query(filter, 10, vec![]).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut concurrent = Vec::new();
    for t in tasks {
        concurrent.extend(t.await??);
    }
    let concurrent_rate = concurrent.len() as f64 / started.elapsed().as_secs_f64();
    let node_cpu_per_query = (cpu_seconds(&pid) - node_cpu_before) / concurrent.len().max(1) as f64;
    let client_cpu_per_query =
        (cpu_seconds("self") - client_cpu_before) / concurrent.len().max(1) as f64;
    concurrent.sort();

    println!(
        "exact-value query, 1 in flight: {sequential_rate:>8.0} lookups/s, p50 {:.2} ms, p99 {:.2} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "exact-value query, {in_flight} in flight: {concurrent_rate:>8.0} lookups/s, p50 {:.2} ms, p99 {:.2} ms (target >= 20,000/s, p99 < 2 ms)",
        percentile(&concurrent, 0.50).as_secs_f64() * 1e3,
        percentile(&concurrent, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "node CPU per query (8 in flight): {:>5.0} µs (user + system, node process only)",
        node_cpu_per_query * 1e6
    );
    println!(
        "load generator CPU per query:     {:>5.0} µs (the client process, same two cores)",
        client_cpu_per_query * 1e6
    );
    println!(
        "node peak RSS overall:        {:>10.0} MiB (current {:.0} MiB)",
        rss_mib(&pid, "VmHWM"),
        rss_mib(&pid, "VmRSS")
    );
    drop(client);
    drop(child.stdin.take());
    // Waited for off the runtime's thread, so the client connection's task can run
    // and close the connection the node is draining.
    tokio::task::spawn_blocking(move || child.wait()).await??;
    let answered = (args.queries + concurrent.len()) as f64;
    let ledger_after = dir_bytes(&ledger_dir);
    let data_after = dir_bytes(&dir.path().join("data"));
    println!(
        "disclosure ledger on disk:    {:>10.1} B per query answered ({} queries, {} B of segments; target <= 64)",
        (ledger_after.saturating_sub(ledger_before)) as f64 / answered,
        answered,
        ledger_after.saturating_sub(ledger_before)
    );
    println!(
        "data directory growth:        {:>10.1} B per query answered (ledger, sled and log together)",
        (data_after as f64 - data_before as f64) / answered
    );

    // The store alone: opening it (which reads the whole bundle log to rebuild the
    // indexes), then the same exact-value lookups without gRPC or TLS.
    let opening = Instant::now();
    let store = entente::store::SledStore::open(
        &dir.path().join("data"),
        &NodeId::new("bench.hq")?,
        32 << 20,
    )?;
    println!(
        "store open (index rebuilt):   {:>10.2} s for {items} items ({:.0} items/s)",
        opening.elapsed().as_secs_f64(),
        items as f64 / opening.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    for q in 0..args.queries {
        let query = entente::store::ItemQuery {
            value: Some(value_of((q * 104_729) % items)),
            ..Default::default()
        };
        let page = entente::store::ItemStore::query(
            &store,
            &query,
            None,
            entente::store::PageLimit::items(10),
            entente::engine::now_ms(),
            &|_| true,
        )?;
        if page.items.len() != 1 {
            bail!("an exact-value lookup returned {} items", page.items.len());
        }
    }
    let store_rate = args.queries as f64 / started.elapsed().as_secs_f64();
    println!("exact-value lookup, store only: {store_rate:>7.0} lookups/s (no gRPC, no TLS)");
    Ok(())
}

/// A client of the benchmark's node `bench.hq` at `addr`, with `id`'s certificate from
/// `dir` (its settings written there first).
pub(crate) async fn bench_client(dir: &Path, id: &str, addr: &str) -> Result<NodeClient> {
    let path = dir.join(format!("{id}.toml"));
    std::fs::write(&path, client_toml(id, addr, "bench.hq"))?;
    let settings = ClientSettings::load(&path)?;
    Ok(NodeClient::connect_with(&settings).await?)
}

/// A client configuration for `id` (certificates in `certs/`) reaching `node_id` at `addr`.
fn client_toml(id: &str, addr: &str, node_id: &str) -> String {
    format!(
        "[client]\nid = \"{id}\"\ncert = \"certs/{id}.crt\"\nkey = \"certs/{id}.key\"\ntrust_anchors = [\"certs/ca.crt\"]\nnode = \"{addr}\"\nnode_id = \"{node_id}\"\n"
    )
}

/// Starts a node process from `config`; returns it with its address.
fn spawn_node(config: &Path) -> Result<(std::process::Child, String)> {
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("node")
        .arg(config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start a node process")?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("node stdout")?),
        &mut line,
    )?;
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .with_context(|| format!("node did not start: {line:?}"))?
        .to_owned();
    Ok((child, addr))
}

/// A node of the benchmark's PKI (under `certs/`) with the analyst client, its store in
/// `data_dir` (relative to the configuration's directory).
pub(crate) fn bench_node(id: &str, listen: &str, data_dir: impl AsRef<Path>) -> NodeToml {
    NodeToml::new(
        id,
        listen,
        data_dir,
        format!("certs/{id}.crt"),
        format!("certs/{id}.key"),
        "certs/ca.crt",
    )
    .cache_mb(32)
    .entry(Entry::client("analyst.bench", "analyst"))
}

/// `sync`: cold sync of N indicators from one node to a fresh peer, then catch-up of
/// 10,000 new ones; both nodes are separate processes on loopback with real mTLS.
async fn sync(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    bench_pki(&dir.path().join("certs"), &["bench.hq", "bench.office"])?;
    let policy = || Policy::all_types().max_tlp("GREEN");
    // hq serves the office; the office is started later, once hq holds everything.
    let hq_config = dir.path().join("hq.toml");
    bench_node("bench.hq", "127.0.0.1:0", "data-bench.hq")
        .entry(
            Entry::peer("bench.office", "127.0.0.1:1")
                .role("read_only")
                .policy(policy()),
        )
        .write(&hq_config)?;
    let (mut hq, hq_addr) = spawn_node(&hq_config)?;
    let client_config = dir.path().join("analyst.toml");
    std::fs::write(
        &client_config,
        client_toml("analyst.bench", &hq_addr, "bench.hq"),
    )?;
    let client = NodeClient::connect_with(&ClientSettings::load(&client_config)?).await?;
    println!("entente-bench sync");
    println!("machine:     {}", machine());
    println!(
        "items:       {} in bundles of {}",
        args.items, args.bundle_size
    );
    publish_range(&client, 0, args.items, args.bundle_size).await?;

    // Bytes on the wire: pull the whole feed once as the office would, and compare the
    // gRPC payload with the encoded size of the items it discloses.
    {
        use prost::Message;
        let office_material = entente::transport::TlsMaterial::load(
            &entente::transport::TlsPaths {
                cert: dir.path().join("certs/bench.office.crt"),
                key: dir.path().join("certs/bench.office.key"),
                trust_anchors: vec![dir.path().join("certs/ca.crt")],
                crls: vec![],
            },
            &NodeId::new("bench.office")?,
        )?;
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let channel = entente::transport::connect::connect_counting(
            office_material.client_config()?,
            &hq_addr,
            &NodeId::new("bench.hq")?,
            Some(received.clone()),
            entente::transport::connect::Keepalive::default(),
        )
        .await?;
        let mut federation = entente::rpc::proto::federation_client::FederationClient::new(channel)
            .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
            .max_decoding_message_size(entente::node::MAX_MESSAGE_BYTES);
        let mut stream = federation
            .pull(entente::rpc::proto::PullRequest {
                cursor: Vec::new(),
                follow: false,
                protocol_version: entente::rpc::PROTOCOL_VERSION,
                resume: None,
            })
            .await?
            .into_inner();
        let (mut payload, mut item_bytes, mut items) = (0usize, 0usize, 0usize);
        while let Some(message) = stream.message().await? {
            // 5 bytes of gRPC framing per message, plus the protobuf payload.
            payload += message.encoded_len() + 5;
            let part = match &message.event {
                Some(entente::rpc::proto::pull_response::Event::Bundle(feed)) => feed.part.as_ref(),
                _ => None,
            };
            if let Some(part) = part {
                for d in entente::sync::parts::disclosures(&part.disclosures) {
                    item_bytes += d.map_err(anyhow::Error::msg)?.item_bytes.len();
                    items += 1;
                }
            }
        }
        let wire = received.load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "bytes on the wire for a full pull: {wire} B received (HTTP/2, zstd-compressed gRPC) for {items} items of {item_bytes} B encoded ({:.2}x; target <= 1.3x); uncompressed gRPC payload would be {payload} B ({:.2}x)",
            wire as f64 / item_bytes.max(1) as f64,
            payload as f64 / item_bytes.max(1) as f64
        );
    }
    // That pull was served as the office and recorded; the office's own pull below
    // starts from scratch on a fresh store.

    let office_config = dir.path().join("office.toml");
    bench_node("bench.office", "127.0.0.1:0", "data-bench.office")
        .entry(Entry::peer("bench.hq", &hq_addr).policy(policy()))
        .write(&office_config)?;
    // The office's operator identity watches its link to hq.
    let started = Instant::now();
    let (mut office, office_addr) = spawn_node(&office_config)?;
    let operator_config = dir.path().join("operator.toml");
    std::fs::write(
        &operator_config,
        client_toml("bench.office", &office_addr, "bench.office"),
    )?;
    let operator = NodeClient::connect_with(&ClientSettings::load(&operator_config)?).await?;
    let received = wait_caught_up(&operator, 0).await?;
    let cold = started.elapsed().as_secs_f64();
    println!();
    println!(
        "cold sync of {} items over mTLS: {:>10.0} items/s ({cold:.1} s, {received} bundles; target >= 50,000)",
        args.items,
        args.items as f64 / cold
    );

    // Offline catch-up: the office stops, hq takes 10,000 new items, the office
    // restarts on its store and pulls only the new entries.
    let office_peak = rss_mib(&office.id().to_string(), "VmHWM");
    drop(office.stdin.take());
    office.wait()?;
    let catch_up = 10_000.min(args.items);
    publish_range(&client, args.items, args.items + catch_up, args.bundle_size).await?;
    let started = Instant::now();
    let (restarted, office_addr) = spawn_node(&office_config)?;
    office = restarted;
    std::fs::write(
        &operator_config,
        client_toml("bench.office", &office_addr, "bench.office"),
    )?;
    let operator = NodeClient::connect_with(&ClientSettings::load(&operator_config)?).await?;
    let pulled = wait_caught_up(&operator, 0).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "offline catch-up of {catch_up} new items on a peer holding {}: {secs:.2} s including the restart ({pulled} bundles pulled; target < 1 s, proportional to the new items)",
        args.items
    );
    println!(
        "node peak RSS: hq {:.0} MiB, office {:.0} MiB",
        rss_mib(&hq.id().to_string(), "VmHWM"),
        rss_mib(&office.id().to_string(), "VmHWM").max(office_peak)
    );
    drop(hq.stdin.take());
    drop(office.stdin.take());
    hq.wait()?;
    office.wait()?;
    Ok(())
}

async fn publish_range(
    client: &NodeClient,
    from: usize,
    to: usize,
    bundle_size: usize,
) -> Result<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(8);
    let feeder = tokio::spawn(async move {
        let mut next = from;
        while next < to {
            let end = (next + bundle_size).min(to);
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
    client
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    feeder.await?;
    Ok(())
}

/// Waits until the office's link to hq is caught up past `before` received bundles;
/// returns the bundles received.
async fn wait_caught_up(operator: &NodeClient, before: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let links = operator.links().await?.links;
        if let Some(link) = links.first() {
            if link.caught_up && link.bundles_received > before {
                return Ok(link.bundles_received);
            }
        }
        if Instant::now() > deadline {
            bail!("the office did not catch up: {links:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `latency`: publish-to-visible time across a chain of three hops
/// (hq → one → two → three), every link a follow stream over mTLS, all four nodes in
/// this process with their own stores; one single-item bundle at a time.
async fn latency(args: &Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ids = ["bench.hq", "hop.one", "hop.two", "hop.three"];
    bench_pki(&dir.path().join("certs"), &ids)?;
    let policy = || {
        Policy::all_types()
            .max_tlp("GREEN")
            .forward_third_party(true)
    };
    // Start from the far end so each node knows its upstream's address.
    let mut nodes: Vec<entente::Node> = Vec::new();
    let mut upstream_addr = String::new();
    for (i, id) in ids.iter().enumerate() {
        let mut config = bench_node(id, "127.0.0.1:0", format!("data-{id}"));
        if i + 1 < ids.len() {
            // The next node downstream pulls from this one.
            config = config.entry(
                Entry::peer(ids[i + 1], "127.0.0.1:1")
                    .role("read_only")
                    .policy(policy()),
            );
        }
        if i > 0 {
            config = config.entry(Entry::peer(ids[i - 1], &upstream_addr).policy(policy()));
        }
        let path = dir.path().join(format!("{id}.toml"));
        config.write(&path)?;
        let node = entente::Node::start(Config::load(&path)?).await?;
        upstream_addr = node.local_addr().to_string();
        nodes.push(node);
    }
    let client_for = |node: &entente::Node| -> Result<std::path::PathBuf> {
        let path = dir.path().join(format!("analyst-{}.toml", node.id()));
        std::fs::write(
            &path,
            client_toml(
                "analyst.bench",
                &node.local_addr().to_string(),
                node.id().as_str(),
            ),
        )?;
        Ok(path)
    };
    let publisher =
        NodeClient::connect_with(&ClientSettings::load(&client_for(&nodes[0])?)?).await?;
    let watcher = NodeClient::connect_with(&ClientSettings::load(&client_for(&nodes[3])?)?).await?;
    let mut stream = watcher.subscribe(ItemFilter::default()).await?;

    println!("entente-bench latency");
    println!("machine:     {}", machine());
    let rounds = args.queries.min(1000);
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds + 20 {
        let started = Instant::now();
        let request = PublishRequest {
            items: vec![draft(round)],
            distribution: None,
            groups: Vec::new(),
        };
        publisher.publish(tokio_stream::iter(vec![request])).await?;
        let arrived = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .context("an item did not arrive three hops away within 10 s")??
            .context("subscription ended")?;
        let hops = arrived.provenance.map(|p| p.hops).unwrap_or(0);
        if hops != 3 {
            bail!("item arrived at hop {hops}, expected 3");
        }
        // The first 20 warm the connections.
        if round >= 20 {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    println!(
        "publish-to-visible across 3 hops ({rounds} bundles, follow streams, loopback): p50 {:.1} ms, p99 {:.1} ms (target p99 < 50 ms)",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("(each publish includes the origin's flush to disk before Publish answers)");
    for node in nodes {
        node.shutdown(Duration::from_secs(10)).await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    // The node under test gets the runtime `entente serve` uses. The ingest load
    // generator runs on one thread: it shares the two cores with the node, and a
    // single thread spends less of them on waking its own workers.
    let runtime = if args.command == "ingest" && args.config.is_none() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    match (args.command.as_str(), &args.config) {
        ("node", Some(config)) => runtime.block_on(run_node(config)),
        ("sync", _) => runtime.block_on(sync(&args)),
        ("latency", _) => runtime.block_on(latency(&args)),
        ("attacks", _) => runtime.block_on(attacks::attacks(&args)),
        ("compact", _) => runtime.block_on(compact::compact(&args)),
        ("fanout", _) => runtime.block_on(fanout::fanout(&args)),
        _ => runtime.block_on(ingest(&args)),
    }
}
