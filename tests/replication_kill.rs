//! Resume after SIGKILL: a real `entente serve` process pulling from another is killed
//! mid-stream, restarted on its store, and ends with exactly the items published:
//! nothing lost, nothing twice.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Pki;
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire::{self, Tlp};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");
const DEADLINE: Duration = Duration::from_secs(60);

fn serve(config: &Path) -> (Child, String) {
    let mut child = Command::new(ENTENTE)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    (
        child,
        rx.recv_timeout(Duration::from_secs(30))
            .expect("node did not start"),
    )
}

fn item(value: String) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value,
            ..Default::default()
        })),
    }
}

async fn connect(pki: &Pki, who: &str, addr: &str, node: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        addr,
        &NodeId::new(node).unwrap(),
    )
    .await
    .unwrap()
}

async fn values(client: &NodeClient) -> Vec<String> {
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let page = client
            .query(ItemFilter::default(), 1000, token)
            .await
            .unwrap();
        for s in &page.items {
            if let Some(wire::item::Kind::Indicator(i)) =
                s.item.as_ref().and_then(|i| i.kind.as_ref())
            {
                out.push(i.value.clone());
            }
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_killed_mid_stream_resumes_exactly() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let policy = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";
    let hq_config = common::write_config(
        &pki,
        &hq,
        &[common::client("analyst.alice", "analyst")],
        &[],
    );
    let mut text = std::fs::read_to_string(&hq_config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n{policy}\n"
    ));
    std::fs::write(&hq_config, text).unwrap();
    let (mut hq_process, hq_addr) = serve(&hq_config);

    // hq holds 200 bundles of 50 items before berlin first connects.
    let at_hq = connect(&pki, "analyst.alice", &hq_addr, "redmond.hq").await;
    let mut expected = BTreeSet::new();
    let mut requests = Vec::new();
    for b in 0..200 {
        let items: Vec<wire::Item> = (0..50)
            .map(|i| item(format!("b{b}-i{i}.example.com")))
            .collect();
        for i in 0..50 {
            expected.insert(format!("b{b}-i{i}.example.com"));
        }
        requests.push(PublishRequest {
            items,
            distribution: None,
            groups: vec![],
        });
    }
    at_hq.publish(tokio_stream::iter(requests)).await.unwrap();

    let berlin_config = common::write_config(
        &pki,
        &berlin,
        &[common::client("analyst.alice", "analyst")],
        &[],
    );
    let mut text = std::fs::read_to_string(&berlin_config).unwrap();
    text.push_str(&format!(
        "\n[[peer]]\nid = \"redmond.hq\"\naddress = \"{hq_addr}\"\n{policy}\n"
    ));
    std::fs::write(&berlin_config, text).unwrap();

    // Kill berlin as soon as it holds part of the feed.
    let (mut berlin_process, berlin_addr) = serve(&berlin_config);
    let at_berlin = connect(&pki, "analyst.alice", &berlin_addr, "berlin.office").await;
    let start = Instant::now();
    loop {
        let held = at_berlin
            .query(ItemFilter::default(), 1, vec![])
            .await
            .unwrap()
            .items
            .len();
        if held > 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "berlin received nothing");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    berlin_process.kill().unwrap();
    berlin_process.wait().unwrap();

    // Restart on the same store: it resumes from its cursor and converges exactly.
    let (mut berlin_process, berlin_addr) = serve(&berlin_config);
    let at_berlin = connect(&pki, "analyst.alice", &berlin_addr, "berlin.office").await;
    let start = Instant::now();
    loop {
        let held = values(&at_berlin).await;
        let unique: BTreeSet<String> = held.iter().cloned().collect();
        assert_eq!(unique.len(), held.len(), "an item is held twice");
        assert!(
            unique.is_subset(&expected),
            "berlin holds items never published"
        );
        if unique == expected {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "berlin holds {} of {}",
            unique.len(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    berlin_process.kill().unwrap();
    berlin_process.wait().unwrap();
    hq_process.kill().unwrap();
    hq_process.wait().unwrap();
}
