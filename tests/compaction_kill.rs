//! Compaction under `kill -9`: a real `entente serve` process compacts its bundle log
//! every second while an analyst publishes new items and new versions of old ones, and
//! a partner (another real process) pulls from it. The node is killed at random points
//! and restarted on its store, again and again. After every restart the store opens,
//! every acknowledged publish is there, at its latest acknowledged version, each id
//! once; at the end the partner holds exactly what the node holds, each item once: its
//! cursor stayed valid across every compaction.
//!
//! Trials come from `ENTENTE_COMPACT_KILL_TRIALS` (default 6) and the kill points from
//! a seeded RNG (`ENTENTE_KILL_SEED`, printed; 11 when not given).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Pki, client, write_config};
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire::{self, Tlp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEADLINE: Duration = Duration::from_secs(90);
/// Ids published; each round publishes a new version of some and a few new ones.
const IDS: usize = 3_000;

async fn connect(pki: &Pki, who: &str, addr: &str, node: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    let tls = pki.material(&who).client_config().unwrap();
    tokio::time::timeout(
        DEADLINE,
        NodeClient::connect(tls, &who, addr, &NodeId::new(node).unwrap()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Item `n`'s id: fixed, so later publishes are new versions of it.
fn id(n: usize) -> String {
    format!("indicator--{:08x}-0000-4000-8000-{:012x}", n, n)
}

/// Version `version` of item `n`, modified at `modified` (ms).
fn item(n: usize, version: u32, modified: i64) -> wire::Item {
    wire::Item {
        id: id(n),
        modified_unix_ms: modified,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: format!("v{version}.n{n}.compaction-kill.example"),
            ..Default::default()
        })),
    }
}

/// Every item `client` can see: id → value. A compaction between two pages makes
/// the page token stale: the query starts again, as a client is told to. On a node
/// that nothing writes to while it is read, each id is answered once; on one that is
/// still taking items (`settled` false), a new version stored between two pages is
/// listed again on a later page, and the later listing is kept.
async fn held_as(client: &NodeClient, settled: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut token = Vec::new();
    loop {
        let page = match client.query(ItemFilter::default(), 1000, token).await {
            Ok(page) => page,
            Err(e) if e.to_string().contains("node compacted its store") => {
                out.clear();
                token = Vec::new();
                continue;
            }
            Err(e) => panic!("query: {e}"),
        };
        for stored in &page.items {
            let item = stored.item.as_ref().unwrap();
            if let Some(wire::item::Kind::Indicator(i)) = &item.kind {
                let previous = out.insert(item.id.clone(), i.value.clone());
                assert!(
                    previous.is_none() || !settled,
                    "{} is answered twice",
                    item.id
                );
            }
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// [`held_as`] a node nothing writes to meanwhile.
async fn held(client: &NodeClient) -> BTreeMap<String, String> {
    held_as(client, true).await
}

/// A port free now, for a node that restarts on the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn with_listen(config: &Path, port: u16, extra: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let text = text.replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    std::fs::write(config, format!("{text}\n{extra}")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_killed_at_random_points_loses_nothing_and_partners_resume() {
    let seed: u64 = std::env::var("ENTENTE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let trials: usize = std::env::var("ENTENTE_COMPACT_KILL_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!("ENTENTE_KILL_SEED={seed} ENTENTE_COMPACT_KILL_TRIALS={trials}");
    let mut rng = StdRng::seed_from_u64(seed);

    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let policy = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";
    let hq_port = free_port();
    let hq_config = write_config(&pki, &hq, &[client("analyst.alice", "analyst")], &[]);
    with_listen(
        &hq_config,
        hq_port,
        &format!(
            "[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n{policy}\n\n[store]\ncompact_every = \"1s\"\n"
        ),
    );
    let berlin_config = write_config(&pki, &berlin, &[client("analyst.alice", "analyst")], &[]);
    with_listen(
        &berlin_config,
        0,
        &format!("[[peer]]\nid = \"redmond.hq\"\naddress = \"127.0.0.1:{hq_port}\"\n{policy}\n"),
    );
    let hq_data = pki.path().join("data-redmond.hq");

    // What hq acknowledged: the latest version of each id.
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut versions = vec![0u32; IDS];
    let mut next_new = 0usize;
    // Versions are dated by the test, one millisecond apart per publish, so that each
    // is strictly newer than the one before whatever the clock does.
    let mut modified = entente::engine::now_ms() - 600_000;
    let (mut berlin_process, berlin_addr) = common::serve(&berlin_config);
    let mut generations = Vec::new();
    let mut killed_compacting = 0;
    for trial in 0..trials {
        let (mut hq_process, hq_addr) = common::serve(&hq_config);
        let alice = connect(&pki, "analyst.alice", &hq_addr, "redmond.hq").await;
        // After a restart: everything acknowledged is there, at its latest version.
        let found = held(&alice).await;
        assert_eq!(
            found, acknowledged,
            "trial {trial}: hq's store after a kill differs from what it acknowledged"
        );
        // Publish until the kill: new versions of held ids and some new ids, in
        // bundles of 200, each acknowledged when its publish call returns.
        let kill_after = Duration::from_millis(rng.random_range(300..2_500));
        let started = Instant::now();
        while started.elapsed() < kill_after {
            let mut batch = Vec::new();
            let mut items = Vec::new();
            modified += 1;
            for _ in 0..200 {
                let n = if next_new < IDS && (next_new < 1_000 || rng.random_range(0..4) == 0) {
                    next_new += 1;
                    next_new - 1
                } else {
                    rng.random_range(0..next_new)
                };
                if batch.iter().any(|(m, _)| *m == n) {
                    continue;
                }
                versions[n] += 1;
                batch.push((n, versions[n]));
                items.push(item(n, versions[n], modified));
            }
            let request = PublishRequest {
                items,
                distribution: None,
                groups: vec![],
            };
            if let Ok(answer) = alice.publish(tokio_stream::iter([request])).await {
                assert_eq!(answer.items_accepted as usize, batch.len(), "{answer:?}");
                for (n, version) in batch {
                    let wire::item::Kind::Indicator(i) = item(n, version, 0).kind.unwrap() else {
                        unreachable!()
                    };
                    acknowledged.insert(id(n), i.value);
                }
            }
        }
        hq_process.kill().unwrap();
        hq_process.wait().unwrap();
        generations.push(entente::store::log_generation(&hq_data).unwrap());
        // A compaction's new log beside the old one: the kill landed in the middle of
        // one (the next open clears it).
        if hq_data.join("bundles.v4.log.compacting").exists() {
            killed_compacting += 1;
        }
    }

    // One last restart: hq holds what it acknowledged, and berlin, whose cursor in
    // hq's feed lived through every compaction, converges to exactly the same.
    let (mut hq_process, hq_addr) = common::serve(&hq_config);
    let alice = connect(&pki, "analyst.alice", &hq_addr, "redmond.hq").await;
    assert_eq!(held(&alice).await, acknowledged, "after the last kill");
    let at_berlin = connect(&pki, "analyst.alice", &berlin_addr, "berlin.office").await;
    let start = Instant::now();
    loop {
        // Berlin may still be pulling from hq while it is read.
        let found = held_as(&at_berlin, false).await;
        if found == acknowledged {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "berlin holds {} items, {} differ from hq's {}",
            found.len(),
            found
                .iter()
                .filter(|(k, v)| acknowledged.get(*k) != Some(*v))
                .count(),
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{trials} kills, {killed_compacting} in the middle of a compaction; log generations after each kill: {generations:?}"
    );
    assert!(
        generations.last().is_some_and(|&g| g > 0),
        "no compaction ran: {generations:?}"
    );
    hq_process.kill().unwrap();
    hq_process.wait().unwrap();
    berlin_process.kill().unwrap();
    berlin_process.wait().unwrap();
}
