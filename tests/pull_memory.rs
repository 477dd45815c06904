//! What a hostile peer's pull messages cost the pulling node in memory, measured on a
//! node running as its own process (`entente serve`), from its peak resident set size
//! (`VmHWM` in /proc): a 31 MB message of empty disclosures (which a decoder that reads
//! whole messages would turn into gigabytes), and messages just under the 2 MiB limit
//! packed with empty disclosures, are refused within a few megabytes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Pki;
use common::rogue::{RogueServer, Scripted, checkpoint, sign};
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, Tlp};
use entente::rpc::proto::{FeedBundle, PullResponse, pull_response};

const DEADLINE: Duration = Duration::from_secs(60);

/// The largest growth of the pulling node's peak memory this test accepts over the
/// attacks: two messages at the decode limit (the received buffer and its decoded
/// copy) and the allocator's slack, far below the hundreds of megabytes one decoded
/// oversized message would take.
const BOUND_MIB: f64 = 64.0;

/// `field` of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024.0
}

/// Starts `entente serve` with its logs in `log`: this build's binary, or the one named
/// by `ENTENTE_PULLER_BINARY` (to measure another version under the same attacks).
fn serve(config: &std::path::Path, log: &std::path::Path) -> Child {
    let binary = std::env::var_os("ENTENTE_PULLER_BINARY")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_entente").into());
    let mut child = Command::new(binary)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "entente=info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(" serving on ") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("node did not start");
    child
}

/// Waits until the rogue has answered `n` pulls in all.
async fn pulls(rogue: &Scripted, n: usize) {
    let start = Instant::now();
    while rogue.pulls() < n {
        assert!(start.elapsed() < DEADLINE, "only {} pulls", rogue.pulls());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn whole_bundle(bytes: Vec<u8>) -> PullResponse {
    PullResponse {
        event: Some(pull_response::Event::Bundle(FeedBundle {
            whole_bundle: bytes,
            hops: 0,
            part: None,
            after: Vec::new(),
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_pull_messages_cost_the_puller_a_bounded_amount_of_memory() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let rogue_id = pki.node("rogue.node");
    let material = pki.material(&rogue_id);
    let rogue = Scripted::new(
        vec![checkpoint(0, 0)],
        vec![material.certificate_der().to_vec()],
    );
    let server = RogueServer::start(&material, &hq, rogue.clone()).await;
    let config = common::write_config(&pki, &hq, &[], &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"rogue.node\"\naddress = \"{}\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n",
        server.addr
    ));
    std::fs::write(&config, text).unwrap();
    let log = pki.path().join("hq.log");
    let mut node = serve(&config, &log);
    let pid = node.id();

    // At rest, having pulled (harmlessly) twice.
    pulls(&rogue, 2).await;
    let rest_hwm = status_mib(pid, "VmHWM");
    let rest_rss = status_mib(pid, "VmRSS");

    // 1. 31 MB of empty disclosures in one message, as a whole bundle.
    rogue
        .scripts
        .lock()
        .unwrap()
        .push(vec![whole_bundle([0x1a, 0x00].repeat(15_500_000))]);
    let n = rogue.pulls();
    pulls(&rogue, n + 3).await;
    // 2. Just under the limit, the same: refused without being decoded.
    rogue
        .scripts
        .lock()
        .unwrap()
        .push(vec![whole_bundle([0x1a, 0x00].repeat(1_048_000))]);
    let n = rogue.pulls();
    pulls(&rogue, n + 3).await;
    // 3. Just under the limit, a part of a correctly signed bundle whose disclosures are
    //    a million empty ones: decoded one at a time, the first refuses the bundle.
    let now = entente::engine::now_ms();
    let item = Item {
        id: ItemId::new_random(),
        modified_ms: now,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Indicator(Indicator {
            indicator_type: IndicatorType::Domain,
            value: "one.example".into(),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: now,
            valid_until_ms: None,
            properties: Default::default(),
        }),
    };
    let mut part =
        entente::rpc::bundle_responses(1, 0, sign(&material, &[item], Distribution::default()));
    assert_eq!(part.len(), 1);
    if let Some(pull_response::Event::Bundle(FeedBundle {
        part: Some(part), ..
    })) = part[0].event.as_mut()
    {
        part.disclosures = vec![0; 2_000_000];
    }
    rogue.scripts.lock().unwrap().push(part);
    let n = rogue.pulls();
    pulls(&rogue, n + 3).await;

    let after_hwm = status_mib(pid, "VmHWM");
    let after_rss = status_mib(pid, "VmRSS");
    node.kill().unwrap();
    node.wait().unwrap();
    server.stop().await;
    let log = std::fs::read_to_string(&log).unwrap();
    eprintln!(
        "pulling node: peak {rest_hwm:.1} MiB at rest, {after_hwm:.1} MiB after the attacks (+{:.1} MiB); resident {rest_rss:.1} -> {after_rss:.1} MiB",
        after_hwm - rest_hwm
    );
    assert!(
        log.contains("message length too large"),
        "the 31 MB message was not refused by its length"
    );
    assert!(
        log.contains("protocol 1"),
        "the whole bundle was not refused as protocol 1"
    );
    assert!(
        log.contains("salt must be 16 bytes"),
        "the empty disclosures were not refused"
    );
    assert!(
        after_hwm - rest_hwm < BOUND_MIB,
        "peak memory grew by {:.1} MiB",
        after_hwm - rest_hwm
    );
}
