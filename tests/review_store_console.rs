//! Full disks, ledger archives and who received an item:
//!
//! - once the store cannot write (a full disk), a later publish, by gRPC or by a TAXII
//!   POST, that the node answers as refused was appended and indexed anyway, and was
//!   served once space came back: a refused write must leave nothing behind;
//! - a ledger `archive_dir` the node cannot write failed every flush once retention
//!   first moved a segment, so every delivery was refused for good;
//! - the console's "who received this item" page matched the ledger only on the latest
//!   version of the item, so after an update or a revocation it left out who received
//!   the earlier versions (and by value, a revoked item was not found at all).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pki;
use common::https::{get, indicator, post, tls};
use entente::client::{ClientError, NodeClient};
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire;
use serde_json::json;

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

fn draft(value: &str) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Green as i32,
        tags: vec!["full-disk".into()],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish(client: &NodeClient, values: &[String]) -> Result<(), ClientError> {
    let request = PublishRequest {
        items: values.iter().map(|v| draft(v)).collect(),
        distribution: None,
        groups: Vec::new(),
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        client.publish(tokio_stream::iter(vec![request])),
    )
    .await
    .expect("publish answers in time")
    .map(|_| ())
}

fn status_of(error: &ClientError) -> (tonic::Code, String) {
    match error {
        ClientError::Status { code, message, .. } => (*code, message.clone()),
        other => panic!("not a status: {other}"),
    }
}

/// How many items the node holds with `value` (any tag), as `client` sees them.
async fn held(client: &NodeClient, value: &str) -> usize {
    let filter = ItemFilter {
        value: value.into(),
        ..Default::default()
    };
    client
        .query(filter, 100, Vec::new())
        .await
        .expect("query")
        .items
        .len()
}

/// A small tmpfs, mounted by the test (it needs root, as CI has), unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Self { dir },
            Ok(out) => panic!(
                "this test mounts a small tmpfs to fill it and must run as root (CI does): mount said {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "this test mounts a small tmpfs to fill it and must run as root (CI does): cannot run mount: {e}"
            ),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&[1u8]).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn health(client: &NodeClient) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(client.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status
}

async fn wait_for_health(client: &NodeClient, want: tonic_health::ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = health(client).await;
        if now == want as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health is {now}, not {want:?}, after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// F1 and F2: the store cannot write (its disk filled up under a large publish); room
/// is then made for a small write but not for the store's probe, so the store stays
/// unwritable. A small publish by gRPC and a TAXII POST are both answered as refused,
/// and neither may be held once space is back, nor after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_while_the_store_cannot_write_leaves_nothing_behind() {
    common::init_logging();
    let disk = SmallDisk::mount("4m");
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    let data = disk.path().join("data");
    let mut text = common::node_section(&pki, &hq, &data);
    text.push_str("\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n");
    text.push_str("\n[taxii]\nlisten = \"127.0.0.1:0\"\n");
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let taxii = node.taxii_addr().expect("a TAXII listener");
    let analyst = common::connect(&pki, &node, "analyst.alice").await;
    let writer = tls(&pki, "analyst.alice");
    let listed = get(&writer, taxii, "/api/collections/").await.json();
    let collection = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    let objects = format!("/api/collections/{collection}/objects/");

    let before: Vec<String> = (0..40)
        .map(|i| format!("before-{i}.disk.example"))
        .collect();
    publish(&analyst, &before).await.expect("publish before");
    wait_for_health(&analyst, tonic_health::ServingStatus::Serving).await;

    // The disk fills up under a large publish: refused, and the store cannot write.
    let filler = disk.fill();
    let large: Vec<String> = (0..400)
        .map(|i| format!("large-{i}.disk.example"))
        .collect();
    let error = publish(&analyst, &large)
        .await
        .expect_err("the disk is full");
    assert_eq!(status_of(&error).0, tonic::Code::ResourceExhausted);
    wait_for_health(&analyst, tonic_health::ServingStatus::NotServing).await;
    // Room for a small write, not for the store's probe: it still cannot write.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(256 * 1024)).unwrap();
    drop(file);

    // A small publish is refused...
    let error = publish(&analyst, &["refused-grpc.disk.example".to_owned()])
        .await
        .expect_err("refused while the store cannot write");
    let (code, message) = status_of(&error);
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("disk is full"), "{message}");
    // ...and so is a TAXII POST, plainly (not a bare 500), saying nothing was stored.
    let posted = post(
        &writer,
        taxii,
        &objects,
        &json!({ "objects": [indicator(
            "indicator--f1f1f1f1-0000-4000-8000-000000000001",
            "refused-taxii.disk.example",
            GREEN,
        )] })
        .to_string(),
    )
    .await;
    assert_eq!(posted.status, 503, "{}", posted.text());
    assert!(
        posted.text().contains("nothing was stored"),
        "{}",
        posted.text()
    );

    // Space returns: neither refused write is held.
    std::fs::remove_file(&filler).unwrap();
    wait_for_health(&analyst, tonic_health::ServingStatus::Serving).await;
    assert_eq!(held(&analyst, "before-0.disk.example").await, 1);
    assert_eq!(held(&analyst, "refused-grpc.disk.example").await, 0);
    assert_eq!(held(&analyst, "refused-taxii.disk.example").await, 0);
    drop(analyst);
    node.shutdown(Duration::from_secs(10)).await.unwrap();

    // Nor after a restart.
    let node = common::start(&config).await;
    let analyst = common::connect(&pki, &node, "analyst.alice").await;
    assert_eq!(held(&analyst, "before-0.disk.example").await, 1);
    assert_eq!(held(&analyst, "refused-grpc.disk.example").await, 0);
    assert_eq!(held(&analyst, "refused-taxii.disk.example").await, 0);
    drop(analyst);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A GET of `target` on the console at `addr` (plain HTTP on loopback): (status, body).
fn console_get(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the console");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

fn version(id: &str, value: &str, modified_ms: i64) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: modified_ms,
        tlp: wire::Tlp::Amber as i32,
        tags: vec!["pii".into()],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish_items(client: &NodeClient, items: Vec<wire::Item>) {
    let request = PublishRequest {
        items,
        distribution: None,
        groups: Vec::new(),
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("publish");
}

/// W5: an indicator is read by a partner, corrected (its value changed), read again,
/// then revoked. Who received it? Every version's deliveries, by id; and by the first
/// value, the delivery of the first version, although no version held now has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_received_an_item_lists_the_deliveries_of_every_version_held() {
    common::init_logging();
    const ID: &str = "indicator--0e0e0e0e-0000-4000-8000-000000000005";
    let pki = Pki::new();
    let hq = pki.node("hq.a");
    pki.client("analyst.alice");
    pki.client("analyst.bob");
    let path = common::write_config(
        &pki,
        &hq,
        &[
            common::client("analyst.alice", "analyst"),
            common::client("analyst.bob", "analyst"),
        ],
        &[],
    );
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let console = node.admin_addr().expect("a console");
    let alice = common::connect(&pki, &node, "analyst.alice").await;
    let bob = common::connect(&pki, &node, "analyst.bob").await;
    let now = entente::engine::now_ms();

    publish_items(
        &alice,
        vec![version(ID, "first.victim.example", now - 60_000)],
    )
    .await;
    assert_eq!(held(&bob, "first.victim.example").await, 1);
    publish_items(
        &alice,
        vec![version(ID, "second.victim.example", now - 30_000)],
    )
    .await;
    assert_eq!(held(&bob, "second.victim.example").await, 1);
    let revocation = wire::Item {
        id: ID.to_owned(),
        modified_unix_ms: now - 1_000,
        tlp: wire::Tlp::Amber as i32,
        tags: vec!["pii".into()],
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "published by mistake: personal data".into(),
            indicator_type: "domain".into(),
            indicator: None,
        })),
    };
    publish_items(&alice, vec![revocation]).await;
    assert_eq!(held(&bob, "second.victim.example").await, 0);

    let bob_rows = |body: &str| body.matches("<tr data-partner=\"analyst.bob\">").count();
    let (status, body) = console_get(console, &format!("/ledger?item={ID}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob_rows(&body), 2, "both versions bob received: {body}");
    assert!(body.contains("id=\"versions-searched\""), "{body}");
    assert!(body.contains("compaction"), "{body}");
    assert_eq!(body.matches("<tr class=\"version\"").count(), 3, "{body}");

    let (status, body) = console_get(console, "/ledger?value=first.victim.example");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bob_rows(&body),
        1,
        "the first version, since replaced: {body}"
    );
    assert_eq!(body.matches("<tr class=\"version\"").count(), 1, "{body}");
    let (status, body) = console_get(console, "/ledger?value=second.victim.example");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        bob_rows(&body),
        1,
        "the second version, since revoked: {body}"
    );
    // The second version, and the revocation, which carries it.
    assert_eq!(body.matches("<tr class=\"version\"").count(), 2, "{body}");
    assert!(body.contains("revocation"), "{body}");

    drop((alice, bob));
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A node with a small ledger (4 KiB segments, 8 KiB kept) whose dropped segments go to
/// `archive`, an analyst and a console (`certificates` issues theirs); its config.
fn node_with_archive(pki: &Pki, archive: &Path, certificates: bool) -> PathBuf {
    if certificates {
        pki.node("hq.a");
        pki.client("analyst.alice");
    }
    let hq = entente::NodeId::new("hq.a").unwrap();
    let path = common::write_config(pki, &hq, &[common::client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[ledger]\nsegment_bytes = 4096\nretain_bytes = 8192\narchive_dir = \"{}\"\n",
        archive.display()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn segments_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .count()
    })
}

/// Queries `value` as `client` (each answer is a delivery, recorded in the ledger)
/// until `done` holds, within 60 s; every query must be answered.
async fn query_until(client: &NodeClient, value: &str, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut answered = 0;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not after {answered} queries in 60 s"
        );
        assert_eq!(held(client, value).await, 1, "query {answered} answered");
        answered += 1;
    }
}

/// W9: the archive directory stops being writable (a read-only mount, a full disk, a
/// wrong owner: here a file stands where the directory was). Retention then fails on
/// its own: deliveries go on, the failure shows in `status` (Admin.StoreState), the
/// metrics and the console, and once the directory is back the segments are moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_archive_the_node_cannot_write_does_not_stop_deliveries() {
    common::init_logging();
    let pki = Pki::new();
    let archive = pki.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    let config = node_with_archive(&pki, &archive, true);
    let node = common::start(&config).await;
    let console = node.admin_addr().expect("a console");
    let analyst = common::connect(&pki, &node, "analyst.alice").await;
    let operator = common::connect(&pki, &node, "hq.a").await;
    publish(&analyst, &["q.archive.example".to_owned()])
        .await
        .expect("publish");

    // Retention works: segments are moved to the archive.
    query_until(&analyst, "q.archive.example", "a segment archived", || {
        segments_in(&archive) > 0
    })
    .await;

    // The archive cannot be written any more.
    let moved = pki.path().join("archive.moved");
    std::fs::rename(&archive, &moved).unwrap();
    std::fs::write(&archive, b"not a directory").unwrap();
    let mut failing = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !failing {
        assert!(
            Instant::now() < deadline,
            "retention never reported failing"
        );
        for _ in 0..20 {
            assert_eq!(held(&analyst, "q.archive.example").await, 1);
        }
        failing = !operator
            .store_state()
            .await
            .expect("store state")
            .retention_error
            .is_empty();
    }
    // Deliveries go on, and so do writes.
    for _ in 0..200 {
        assert_eq!(held(&analyst, "q.archive.example").await, 1);
    }
    publish(&analyst, &["after.archive.example".to_owned()])
        .await
        .expect("a write while retention fails");
    let state = operator.store_state().await.unwrap();
    assert!(state.unwritable.is_empty(), "{state:?}");
    assert!(state.retention_error.contains("archive"), "{state:?}");
    assert!(state.retention_failing_since_unix_ms > 0, "{state:?}");
    assert!(state.retention_failures >= 1, "{state:?}");
    let (status, metrics) = console_get(console, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("entente_ledger_retention_failing 1"),
        "{metrics}"
    );
    let (_, overview) = console_get(console, "/");
    assert!(overview.contains("id=\"retention-failing\""), "{overview}");
    let check = operator.ledger_verify().await.unwrap();
    assert!(check.intact, "{check:?}");

    // The directory is back: the segments kept are moved, and retention works again.
    std::fs::remove_file(&archive).unwrap();
    std::fs::rename(&moved, &archive).unwrap();
    let archived = segments_in(&archive);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "retention never recovered");
        assert_eq!(held(&analyst, "q.archive.example").await, 1);
        let state = operator.store_state().await.unwrap();
        if state.retention_error.is_empty() && segments_in(&archive) > archived {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = console_get(console, "/metrics");
    assert!(
        metrics.contains("entente_ledger_retention_failing 0"),
        "{metrics}"
    );
    let check = operator.ledger_verify().await.unwrap();
    assert!(check.intact, "{check:?}");
    drop((analyst, operator));
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// W9: an archive directory that is missing, or is not a directory, is refused by
/// `entente policy check` and when the node starts, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_dir_the_node_cannot_use_is_refused_at_load() {
    let pki = Pki::new();
    let file = pki.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for (n, archive) in [pki.path().join("missing"), file.clone(), file.join("below")]
        .into_iter()
        .enumerate()
    {
        let config = node_with_archive(&pki, &archive, n == 0);
        let loaded = entente::Config::load(&config).expect("the config itself is valid");
        let error = match entente::Node::start(loaded).await {
            Ok(node) => {
                node.shutdown(Duration::from_secs(10)).await.unwrap();
                panic!("the node started with archive_dir {}", archive.display());
            }
            Err(e) => e.to_string(),
        };
        assert!(error.contains("ledger.archive_dir"), "{error}");
        let out = Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(["policy", "check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success(), "policy check passed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("ledger.archive_dir"), "{stderr}");
    }
}
