//! The disclosure ledger end to end: every client path appends a record of what it
//! delivered, the operator reads and verifies the chain over the Admin service and the
//! CLI, and an edit of a stored record behind the node's back is found and located.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Pki, client, write_config};
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, LedgerShowRequest, PublishRequest};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

fn item(value: &str, tlp: Tlp) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

async fn connect(pki: &Pki, node: &Node, who: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    let tls = pki.material(&who).client_config().unwrap();
    within(
        "connect",
        NodeClient::connect(tls, &who, &node.local_addr().to_string(), node.id()),
    )
    .await
    .unwrap()
}

async fn records(operator: &NodeClient, partner: &str) -> Vec<entente::rpc::proto::LedgerRecord> {
    let mut stream = within(
        "ledger show",
        operator.ledger_show(LedgerShowRequest {
            partner: partner.into(),
            since_unix_ms: 0,
        }),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    while let Some(r) = within("ledger record", stream.message()).await.unwrap() {
        out.push(r);
    }
    out
}

/// Flips one byte of the link of the first ledger record after record 1 that was
/// written in a frame of its own, in the store at `dir` (the node is stopped); returns
/// that record's number. The record still decodes (`ledger show` lists it), but its
/// frame no longer matches its checksum.
fn alter_record(dir: &Path) -> u64 {
    let span = entente::store::frame_spans(dir)
        .unwrap()
        .into_iter()
        .find(|f| f.records == 1 && f.first >= 2)
        .expect("a record written alone");
    let mut file = std::fs::read(&span.path).unwrap();
    // Length (1 byte for a small frame), kind, sequence number (1 byte up to 127),
    // then the 8 bytes of the link.
    assert!(span.len < 128 && span.first < 128);
    file[span.offset as usize + 4] ^= 0x01;
    std::fs::write(&span.path, file).unwrap();
    span.first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_is_recorded_and_tampering_is_located() {
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
    let node = common::start(&config).await;
    let analyst = connect(&pki, &node, "analyst.alice").await;
    let reader = connect(&pki, &node, "researcher.uni-x").await;
    let operator = connect(&pki, &node, "redmond.hq").await;

    let mut subscription = within("subscribe", reader.subscribe(ItemFilter::default()))
        .await
        .unwrap();
    let marker = item("marker.example.com", Tlp::Green);
    let secret = item("secret.example.com", Tlp::Red);
    let open = item("open.example.com", Tlp::Clear);
    let open_id = open.id.clone();
    let request = PublishRequest {
        items: vec![marker, secret, open],
        distribution: None,
        groups: vec![],
    };
    let published = within(
        "publish",
        analyst.publish(tokio_stream::iter(vec![request])),
    )
    .await
    .unwrap();
    let bundle = published.bundle_ids[0].clone();
    // The subscriber gets the two it may see (GREEN, CLEAR), never the RED one.
    for _ in 0..2 {
        within("subscription", subscription.message())
            .await
            .unwrap()
            .unwrap();
    }
    within("query", reader.query(ItemFilter::default(), 10, vec![]))
        .await
        .unwrap();
    within("get", reader.get(&open_id)).await.unwrap().unwrap();
    let mut export = within("export", reader.export(ItemFilter::default()))
        .await
        .unwrap();
    while within("export chunk", export.message())
        .await
        .unwrap()
        .is_some()
    {}

    let recorded = records(&operator, "researcher.uni-x").await;
    let paths: BTreeSet<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["export", "get", "query", "subscribe"].into());
    for r in &recorded {
        assert_eq!(r.partner, "researcher.uni-x");
        assert_eq!(r.policy_hash.len(), 32);
        for d in &r.deliveries {
            assert_eq!(d.bundle_id, bundle);
            // Index 1 is the RED item: never disclosed to the read-only client.
            assert!(
                !d.indices.contains(&1),
                "record {} discloses the RED item",
                r.seq
            );
        }
    }
    // The query record lists exactly what the query delivered.
    let query = recorded.iter().find(|r| r.path == "query").unwrap();
    assert_eq!(query.deliveries[0].indices, vec![0, 2]);
    let verified = within("verify", operator.ledger_verify()).await.unwrap();
    assert!(verified.intact, "{}", verified.problem);
    let total = verified.records;
    assert!(total >= recorded.len() as u64);

    // The analyst's and the reader's records are kept apart by the partner filter.
    assert!(
        records(&operator, "analyst.alice")
            .await
            .iter()
            .all(|r| r.partner == "analyst.alice")
    );

    // Alter a record behind the node's back; verification finds it and says where.
    node.shutdown(DEADLINE).await.unwrap();
    let altered = alter_record(&pki.path().join("data-redmond.hq"));
    let node = common::start(&config).await;
    let operator = connect(&pki, &node, "redmond.hq").await;
    let broken = within("verify", operator.ledger_verify()).await.unwrap();
    assert!(!broken.intact);
    assert_eq!(broken.broken_at, altered, "{}", broken.problem);
    assert!(
        broken
            .problem
            .contains(&format!("record {altered} was altered")),
        "{}",
        broken.problem
    );

    // The CLI says the same and exits non-zero (as the operator, with the node's own
    // certificate, at the running node's address).
    let operator_config = pki.path().join("operator.toml");
    std::fs::write(
        &operator_config,
        format!(
            "[client]\nid = \"redmond.hq\"\ncert = \"{}\"\nkey = \"{}\"\ntrust_anchors = [\"{}\"]\nnode = \"{}\"\nnode_id = \"redmond.hq\"\n",
            pki.certs.cert_path("redmond.hq").display(),
            pki.certs.key_path("redmond.hq").display(),
            pki.ca_cert().display(),
            node.local_addr()
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let config = operator_config.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
                .args(args)
                .arg("--config")
                .arg(&config)
                .output()
                .unwrap()
        })
    };
    let out = within("ledger verify", run(&["ledger", "verify"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ledger broken at record {altered}: record {altered} was altered"
        )),
        "{stderr}"
    );
    // With --json, the object first, then the same failure.
    let out = within("ledger verify --json", run(&["ledger", "verify", "--json"]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(verdict["intact"], false, "{verdict}");
    assert_eq!(verdict["broken_at"], altered, "{verdict}");
    assert!(
        verdict["problem"]
            .as_str()
            .is_some_and(|p| p.contains(&format!("record {altered} was altered"))),
        "{verdict}"
    );
    let out = within("ledger show", run(&["ledger", "show"]))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count() as u64,
        total
    );
    node.shutdown(DEADLINE).await.unwrap();
}
