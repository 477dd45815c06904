//! The disclosure ledger under `kill -9`: a real `entente serve` process with small
//! ledger segments and a byte budget (so segments are closed, started and dropped under
//! retention all the time) answers a reader's queries (four in flight, each stream of
//! queries one after another) and is killed at a random point, several times on one
//! store. After every restart the ledger
//! verifies (from the checkpoint retention left), and every query the reader got an
//! answer to is recorded, unless retention dropped it: nothing acknowledged is missing.
//!
//! The kill points come from a seeded RNG (`ENTENTE_KILL_SEED`, printed; 7 when not
//! given); the machine decides what exactly is running when the signal lands.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pki, client, write_config};
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, LedgerShowRequest, PublishRequest};
use entente::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEADLINE: Duration = Duration::from_secs(60);
/// Items published, one bundle each `PER_BUNDLE`; every query asks for another one.
const ITEMS: usize = 24_000;
const PER_BUNDLE: usize = 3_000;
const ROUNDS: usize = 6;
/// Query streams in flight; stream `t` asks for the items `i` with `i % STREAMS == t`.
const STREAMS: usize = 4;

fn value(i: usize) -> String {
    format!("k{i}.ledger-kill.example")
}

async fn connect(pki: &Pki, who: &str, addr: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    let tls = pki.material(&who).client_config().unwrap();
    let node = NodeId::new("redmond.hq").unwrap();
    tokio::time::timeout(DEADLINE, NodeClient::connect(tls, &who, addr, &node))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The reader's acknowledged queries: item numbers whose answer arrived.
type Acked = Arc<Mutex<Vec<usize>>>;

/// Queries items `from, from + STREAMS, ..` one at a time until the node goes away
/// (or the items run out); each answer that arrives is acknowledged.
async fn query_until_killed(reader: NodeClient, from: usize, acked: Acked) {
    for i in (from..ITEMS).step_by(STREAMS) {
        let filter = ItemFilter {
            value: value(i),
            ..Default::default()
        };
        match reader.query(filter, 10, vec![]).await {
            Ok(page) => {
                assert_eq!(page.items.len(), 1, "item {i}");
                acked.lock().unwrap().push(i);
            }
            Err(_) => return,
        }
    }
}

/// The item numbers recorded as delivered by `query` to the reader, and the
/// verification's answer.
async fn recorded(
    operator: &NodeClient,
    bundles: &[String],
) -> (BTreeSet<usize>, entente::rpc::proto::LedgerVerifyResponse) {
    let verified = operator.ledger_verify().await.unwrap();
    let mut stream = operator
        .ledger_show(LedgerShowRequest {
            partner: "researcher.uni-x".into(),
            since_unix_ms: 0,
        })
        .await
        .unwrap();
    let mut items = BTreeSet::new();
    let mut last_seq = 0;
    while let Some(record) = stream.message().await.unwrap() {
        assert!(record.seq > last_seq);
        last_seq = record.seq;
        assert_eq!(record.path, "query");
        for d in &record.deliveries {
            let b = bundles.iter().position(|id| id == &d.bundle_id).unwrap();
            for index in &d.indices {
                items.insert(b * PER_BUNDLE + *index as usize);
            }
        }
    }
    (items, verified)
}

fn start(config: &Path) -> (std::process::Child, String) {
    common::serve(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_deliveries_survive_kill_9_through_rotation_and_retention() {
    let seed: u64 = std::env::var("ENTENTE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    println!("ENTENTE_KILL_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);

    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("researcher.uni-x");
    let config = write_config(
        &pki,
        &hq,
        &[
            client("analyst.alice", "analyst"),
            client("researcher.uni-x", "read_only"),
        ],
        &[],
    );
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[ledger]\nsegment_bytes = 8192\nretain_bytes = 16384\n");
    std::fs::write(&config, text).unwrap();

    // The items, published once.
    let (mut child, addr) = start(&config);
    let analyst = connect(&pki, "analyst.alice", &addr).await;
    let mut bundles = Vec::new();
    for b in 0..ITEMS / PER_BUNDLE {
        let items = (b * PER_BUNDLE..(b + 1) * PER_BUNDLE)
            .map(|i| wire::Item {
                id: String::new(),
                modified_unix_ms: 0,
                tlp: wire::Tlp::Green as i32,
                tags: vec![],
                kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                    indicator_type: "domain".into(),
                    value: value(i),
                    ..Default::default()
                })),
            })
            .collect();
        let request = PublishRequest {
            items,
            distribution: None,
            groups: vec![],
        };
        let published = analyst
            .publish(tokio_stream::iter(vec![request]))
            .await
            .unwrap();
        assert_eq!(published.bundle_ids.len(), 1);
        bundles.push(published.bundle_ids[0].clone());
    }
    drop(analyst);
    child.kill().unwrap();
    child.wait().unwrap();

    let acked: Vec<Acked> = (0..STREAMS).map(|_| Acked::default()).collect();
    let mut next: Vec<usize> = (0..STREAMS).collect();
    let mut dropped_once = false;
    for round in 0..ROUNDS {
        let (mut child, addr) = start(&config);
        let mut tasks = Vec::new();
        for t in 0..STREAMS {
            let reader = connect(&pki, "researcher.uni-x", &addr).await;
            tasks.push(tokio::spawn(query_until_killed(
                reader,
                next[t],
                acked[t].clone(),
            )));
        }
        let kill_after = Duration::from_millis(rng.random_range(300..2500));
        let deadline = Instant::now() + kill_after;
        while Instant::now() < deadline && !tasks.iter().all(|t| t.is_finished()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        for task in tasks {
            tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
        }
        let per_stream: Vec<Vec<usize>> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();
        for t in 0..STREAMS {
            // The query in flight at the kill is passed over (it may be recorded or not).
            next[t] = per_stream[t].last().map_or(t, |i| i + STREAMS) + STREAMS;
        }
        let acked_now: Vec<usize> = per_stream.iter().flatten().copied().collect();

        // Restarted on the same store: the ledger verifies, and in every stream each
        // acknowledged query from the first one still recorded on is recorded.
        let (mut child, addr) = start(&config);
        let operator = connect(&pki, "redmond.hq", &addr).await;
        let (items, verified) = recorded(&operator, &bundles).await;
        assert!(
            verified.intact,
            "round {round} (seed {seed}): {}",
            verified.problem
        );
        assert!(verified.records >= acked_now.len() as u64);
        dropped_once |= verified.verified_from > 0;
        let mut missing = Vec::new();
        for (t, stream) in per_stream.iter().enumerate() {
            let first_kept = items
                .iter()
                .copied()
                .find(|i| i % STREAMS == t)
                .unwrap_or(usize::MAX);
            missing.extend(
                stream
                    .iter()
                    .copied()
                    .filter(|i| *i >= first_kept && !items.contains(i)),
            );
        }
        assert!(
            missing.is_empty(),
            "round {round} (seed {seed}): acknowledged queries missing from the ledger: {missing:?}"
        );
        if verified.verified_from == 0 {
            // Nothing dropped yet: every acknowledged query is there.
            assert!(acked_now.iter().all(|i| items.contains(i)));
        }
        let ledger_dir = pki.path().join("data-redmond.hq").join("ledger");
        let (segments, bytes) = std::fs::read_dir(&ledger_dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .fold((0, 0), |(n, b), len| (n + 1, b + len));
        println!(
            "round {round}: {} acknowledged, {} records, verified from {}, {segments} segments of {bytes} bytes",
            acked_now.len(),
            verified.records,
            verified.verified_from
        );
        drop(operator);
        child.kill().unwrap();
        child.wait().unwrap();
        if next.iter().all(|n| *n >= ITEMS) {
            break;
        }
    }
    assert!(
        dropped_once,
        "retention never dropped a segment (seed {seed})"
    );

    // The operator's command says where the proof starts.
    let (mut child, addr) = start(&config);
    let operator_config = pki.path().join("operator.toml");
    std::fs::write(
        &operator_config,
        format!(
            "[client]\nid = \"redmond.hq\"\ncert = \"{}\"\nkey = \"{}\"\ntrust_anchors = [\"{}\"]\nnode = \"{addr}\"\nnode_id = \"redmond.hq\"\n",
            pki.certs.cert_path("redmond.hq").display(),
            pki.certs.key_path("redmond.hq").display(),
            pki.ca_cert().display(),
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(["ledger", "verify", "--config"])
            .arg(&operator_config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("(history before it dropped under retention)")
            && stdout.contains("verified from checkpoint ")
            && stdout.contains("ledger intact: "),
        "{stdout}"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Where the child of `store_ledger_writes_survive_kill_9` keeps its store.
const CHILD_DIR: &str = "ENTENTE_LEDGER_CHILD_DIR";

fn tiny_segments() -> entente::store::LedgerSettings {
    entente::store::LedgerSettings {
        segment_bytes: 4096,
        retain_bytes: Some(16_384),
        ..Default::default()
    }
}

/// Not a test on its own: the process `store_ledger_writes_survive_kill_9` starts and
/// kills. With `ENTENTE_LEDGER_CHILD_DIR` set it appends records to the store there
/// for ever (tiny segments, a byte budget, a flush every 64 records, so segments are
/// closed, started and dropped all the time), printing each record's number once the
/// append returned; without it, it returns at once.
#[test]
fn ledger_writer_child() {
    use std::io::Write;
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let owner = NodeId::new("redmond.hq").unwrap();
    let store =
        entente::store::SledStore::open_with(Path::new(&dir), &owner, 1 << 20, tiny_segments())
            .unwrap();
    let bundle = entente::model::BundleId::new_random();
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let record = entente::store::DisclosureLedger::append_ledger(
            &store,
            &entente::store::LedgerEntry {
                time_ms: 1_700_000_000_000 + i as i64,
                partner: NodeId::new("berlin.office").unwrap(),
                path: "query".into(),
                deliveries: vec![(bundle.clone(), vec![(i % 1000) as u32])],
                policy_hash: [7; 32],
                note: String::new(),
            },
        )
        .unwrap();
        writeln!(out, "acked {}", record.seq).unwrap();
        out.flush().unwrap();
        if i % 64 == 0 {
            entente::store::ItemStore::flush(&store).unwrap();
        }
    }
}

/// The store alone under `kill -9`: a child process appends records (the writes,
/// segment rotation and retention of the ledger) and is killed after a random number of
/// them; the store then opens, its ledger verifies from its retention checkpoint, and
/// every record the child saw acknowledged is there (or before that checkpoint).
#[test]
fn store_ledger_writes_survive_kill_9() {
    use std::io::BufRead;
    let seed: u64 = std::env::var("ENTENTE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let owner = NodeId::new("redmond.hq").unwrap();
    let mut acked = 0u64;
    let mut dropped = false;
    for trial in 0..12 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "ledger_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(seq) = line
                    .strip_prefix("acked ")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    if tx.send(seq).is_err() {
                        return;
                    }
                }
            }
        });
        let target = acked + rng.random_range(1..1500u64);
        let deadline = Instant::now() + DEADLINE;
        while acked < target {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(seq) => acked = acked.max(seq),
                Err(e) => panic!("trial {trial}: the child stopped acknowledging: {e}"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever it printed before it died was acknowledged too.
        while let Ok(seq) = rx.recv_timeout(Duration::from_millis(200)) {
            acked = acked.max(seq);
        }

        let store = common::open_store(dir.path(), &owner, 1 << 20).unwrap();
        let check = entente::store::DisclosureLedger::verify_ledger(&store).unwrap();
        let entente::store::LedgerCheck::Intact { records, from, .. } = check else {
            panic!("trial {trial} (seed {seed}): {check:?}");
        };
        assert!(
            records >= acked,
            "trial {trial}: {records} records, {acked} acknowledged"
        );
        if acked > from {
            let found =
                entente::store::DisclosureLedger::ledger(&store, acked - 1, 1, None, None).unwrap();
            assert_eq!(found.first().map(|r| r.seq), Some(acked), "trial {trial}");
        }
        dropped |= from > 0;
        acked = records;
    }
    assert!(dropped, "retention never dropped a segment (seed {seed})");
}
