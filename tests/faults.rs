//! Faults that must never lose data silently.
//!
//! - The store's metadata (sled) lost or unreadable, with the bundle log intact, cut
//!   short or damaged in the middle: the node refuses to start with a plain message
//!   naming `entente store recover`; recovery rebuilds what the log holds, says what
//!   it could not tell, and starts a disclosure ledger whose first record says the
//!   history before it is lost. A damaged frame in the middle is never called "never
//!   acknowledged".
//! - A store of format 3 is upgraded at open without losing an item or a ledger record.
//! - A full disk (a real tmpfs, mounted by the test: it needs root, as CI has): writes
//!   fail with `RESOURCE_EXHAUSTED` and a plain reason, deliveries that cannot be
//!   recorded in the ledger are refused, health says `NOT_SERVING`, and once space is
//!   freed the node serves again without a restart, with nothing acknowledged lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Pki;
use entente::client::{ClientError, NodeClient};
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::store::prelude::*;
use entente::store::{LOG_FILE, StoreError};
use entente::wire;
use entente::{Config, Node, NodeId};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");

fn draft(value: &str) -> wire::Item {
    wire::Item {
        id: String::new(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::Green as i32,
        tags: vec!["faults".into()],
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

/// Every value the node returns for the tag `faults`, all pages.
async fn values(client: &NodeClient) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    let mut token = Vec::new();
    loop {
        let filter = ItemFilter {
            tag: "faults".into(),
            ..Default::default()
        };
        let page = client.query(filter, 1000, token).await?;
        for item in page.items {
            if let Some(wire::item::Kind::Indicator(i)) = item.item.and_then(|i| i.kind) {
                out.push(i.value);
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    out.sort();
    Ok(out)
}

fn status_of(error: &ClientError) -> (tonic::Code, String) {
    match error {
        ClientError::Status { code, message, .. } => (*code, message.clone()),
        other => panic!("not a status: {other}"),
    }
}

/// A node "redmond.hq" whose store is `data_dir`, with an admin client; its config.
fn node_config(pki: &Pki, data_dir: &Path) -> PathBuf {
    let hq = pki.node("redmond.hq");
    pki.client("admin.alice");
    let mut text = common::node_section(pki, &hq, data_dir);
    text.push_str("\n[[client]]\nid = \"admin.alice\"\nrole = \"admin\"\n");
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts the node of `config` and publishes `rounds` acknowledged bundles of 50
/// items each; returns every value published, then stops the node cleanly.
async fn populate(pki: &Pki, config: &Path, rounds: usize) -> Vec<String> {
    let node = common::start(config).await;
    let admin = common::connect(pki, &node, "admin.alice").await;
    let mut all = Vec::new();
    for round in 0..rounds {
        let batch: Vec<String> = (0..50)
            .map(|i| format!("r{round}-i{i}.faults.example"))
            .collect();
        publish(&admin, &batch).await.expect("publish");
        all.extend(batch);
    }
    // Deliveries, so the ledger holds records.
    assert_eq!(values(&admin).await.unwrap().len(), all.len());
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
    all.sort();
    all
}

fn start_error(config: &Path) -> String {
    let config = Config::load(config).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match runtime.block_on(Node::start(config)) {
        Ok(_) => panic!("the node started"),
        Err(e) => e.to_string(),
    }
}

fn recover(config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(ENTENTE)
        .args(["store", "recover", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run entente store recover")
}

/// The refusal every lost-metadata case gets: plain, naming the recovery command,
/// never claiming that anything was "never acknowledged".
fn assert_refused_for_lost_metadata(error: &str) {
    assert!(error.contains("cannot start"), "{error}");
    assert!(error.contains("entente store recover --config"), "{error}");
    assert!(!error.contains("never acknowledged"), "{error}");
    assert!(!error.contains("Read corrupted data"), "{error}");
}

async fn verify_ledger(pki: &Pki, config: &Path) -> entente::rpc::proto::LedgerVerifyResponse {
    let node = common::start(config).await;
    let admin = common::connect(pki, &node, "admin.alice").await;
    let answer = admin.ledger_verify().await.unwrap();
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_metadata_lost_and_the_log_intact_the_node_refuses_and_recovery_restarts_the_ledger()
 {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    let published = populate(&pki, &config, 4).await;
    let log_before = std::fs::read(data.join(LOG_FILE)).unwrap();
    common::remove_sled(&data);

    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert_refused_for_lost_metadata(&error);
    assert!(error.contains("missing"), "{error}");
    // Nothing was changed: no new ledger, no cut.
    assert_eq!(std::fs::read(data.join(LOG_FILE)).unwrap(), log_before);
    assert!(!data.join("db").exists());

    let out = recover(&config, &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("rebuilt the store from its bundle log"),
        "{report}"
    );
    assert!(
        report.contains("disclosure ledger starts again"),
        "{report}"
    );

    // Every acknowledged item is back, and the ledger says that it was restarted.
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    assert_eq!(values(&admin).await.unwrap(), published);
    let answer = admin.ledger_verify().await.unwrap();
    assert!(answer.intact, "{answer:?}");
    assert!(
        answer.restarted.contains("rebuilt from its bundle log"),
        "{answer:?}"
    );
    assert!(answer.restarted.contains("missing"), "{answer:?}");
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();

    // Recovering a store that opens is refused.
    let out = recover(&config, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to recover"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bit_flipped_in_the_middle_is_never_called_unacknowledged() {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    let published = populate(&pki, &config, 10).await;
    let log = data.join(LOG_FILE);
    let mut bytes = std::fs::read(&log).unwrap();
    let at = bytes.len() / 10;
    bytes[at] ^= 0x08;
    std::fs::write(&log, &bytes).unwrap();

    // With the metadata: refused, saying where and how much follows.
    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert!(error.contains("damaged frame at byte"), "{error}");
    assert!(error.contains("intact frames after it"), "{error}");
    assert!(error.contains("acknowledged data"), "{error}");
    assert!(!error.contains("never acknowledged"), "{error}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing is cut");

    // Without it: refused, naming the recovery command; nothing is cut.
    common::remove_sled(&data);
    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert_refused_for_lost_metadata(&error);
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing is cut");

    // Recovery stops at the damage, says what it found, and changes nothing.
    let out = recover(&config, &[]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("damaged frame at byte"), "{said}");
    assert!(said.contains("intact frames after it"), "{said}");
    assert!(said.contains("--cut-damaged"), "{said}");
    assert!(!said.contains("never acknowledged"), "{said}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "nothing is cut");

    // Asked to, it keeps what precedes the damage, copies the rest aside, and says so.
    let out = recover(&config, &["--cut-damaged"]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("damaged frame at byte"), "{report}");
    assert!(report.contains("copied to"), "{report}");
    assert!(!report.contains("never acknowledged"), "{report}");
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    let kept = values(&admin).await.unwrap();
    assert!(kept.len() < published.len() / 5, "{} kept", kept.len());
    assert!(kept.iter().all(|v| published.contains(v)));
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_cut_short_without_its_metadata_is_reported_as_it_is() {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    let published = populate(&pki, &config, 3).await;
    let log = data.join(LOG_FILE);
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..bytes.len() - 100]).unwrap();
    common::remove_sled(&data);

    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert_refused_for_lost_metadata(&error);
    assert_eq!(std::fs::read(&log).unwrap().len(), bytes.len() - 100);

    // Recovery cuts the torn end and says that nothing tells whether it was
    // acknowledged (the metadata that could is lost), rather than "never".
    let out = recover(&config, &[]);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("nothing tells whether it was acknowledged"),
        "{report}"
    );
    assert!(!report.contains("never acknowledged"), "{report}");
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    let kept = values(&admin).await.unwrap();
    assert_eq!(kept.len(), published.len() - 50, "the last bundle was cut");
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_only_sleds_db_file_lost_the_refusal_is_plain() {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    let published = populate(&pki, &config, 2).await;
    std::fs::remove_file(data.join("db")).unwrap();
    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert_refused_for_lost_metadata(&error);
    assert!(error.contains("sled's file"), "{error}");

    let out = recover(&config, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(report.contains("moved to"), "{report}");
    let answer = verify_ledger(&pki, &config).await;
    assert!(answer.intact && answer.records == 1, "{answer:?}");
    assert!(!answer.restarted.is_empty());
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    assert_eq!(values(&admin).await.unwrap(), published);
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_metadata_is_refused_with_the_recovery_command() {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    populate(&pki, &config, 1).await;
    // sled's file overwritten with garbage.
    let len = std::fs::metadata(data.join("db")).unwrap().len() as usize;
    std::fs::write(data.join("db"), vec![0x5au8; len]).unwrap();
    let error = tokio::task::spawn_blocking({
        let config = config.clone();
        move || start_error(&config)
    })
    .await
    .unwrap();
    assert!(error.contains("entente store recover --config"), "{error}");
    assert!(error.contains("cannot start"), "{error}");
}

/// A format-3 store made from a format-4 one: the log re-framed the old way (no
/// header, no marks), the format and store id taken out of sled, and the disclosure
/// ledger kept in sled as it was then (one entry per record in its canonical form).
fn downgrade_to_format_3(data: &Path) {
    let ledger: Vec<(Vec<u8>, Vec<u8>)> = {
        let store = common::open_store(data, &NodeId::new("redmond.hq").unwrap(), 1 << 20).unwrap();
        store
            .ledger(0, usize::MAX, None, None)
            .unwrap()
            .iter()
            .map(|r| {
                let mut key = vec![b'L'];
                key.extend_from_slice(&r.seq.to_be_bytes());
                (key, entente::fuzzing::ledger_canonical(r))
            })
            .collect()
    };
    std::fs::remove_dir_all(data.join("ledger")).unwrap();
    let v4 = std::fs::read(data.join(LOG_FILE)).unwrap();
    let mut v3 = b"ENTLOG\0\x03".to_vec();
    let mut at = 8;
    while at < v4.len() {
        let len = u32::from_le_bytes(v4[at + 4..at + 8].try_into().unwrap()) as usize;
        let body = &v4[at + 12..at + 12 + len];
        if body[0] == 1 {
            v3.extend_from_slice(&(len as u32).to_le_bytes());
            v3.extend_from_slice(&v4[at + 8..at + 12]);
            v3.extend_from_slice(body);
        }
        at += 12 + len;
    }
    std::fs::write(data.join("bundles.v3.log"), &v3).unwrap();
    std::fs::remove_file(data.join(LOG_FILE)).unwrap();
    // sled may hold the lock of the store just dropped for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let db = loop {
        match sled::open(data) {
            Ok(db) => break db,
            Err(e) if Instant::now() >= deadline => panic!("cannot open sled: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let tree = db.open_tree("entente.v3").unwrap();
    tree.remove(b"Mformat").unwrap();
    tree.remove(b"Mstore_id").unwrap();
    tree.insert(b"Mlog_synced", &(v3.len() as u64).to_be_bytes()[..])
        .unwrap();
    for (key, record) in ledger {
        tree.insert(key, record).unwrap();
    }
    db.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_format_3_is_upgraded_without_losing_anything() {
    let pki = Pki::new();
    let data = pki.path().join("data");
    let config = node_config(&pki, &data);
    let published = populate(&pki, &config, 3).await;
    let before = verify_ledger(&pki, &config).await;
    assert!(before.intact && before.records > 0, "{before:?}");
    downgrade_to_format_3(&data);

    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    assert_eq!(values(&admin).await.unwrap(), published);
    let after = admin.ledger_verify().await.unwrap();
    assert!(after.intact, "{after:?}");
    assert!(
        after.records > before.records,
        "the ledger goes on: {after:?}"
    );
    assert!(after.restarted.is_empty());
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(data.join("bundles.v3.log.upgraded").exists());
    assert!(!data.join("bundles.v3.log").exists());
    // And it opens again as format 4.
    let node = common::start(&config).await;
    let admin = common::connect(&pki, &node, "admin.alice").await;
    assert_eq!(values(&admin).await.unwrap(), published);
    drop(admin);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A small tmpfs mounted for the test, unmounted when dropped. Fails the test (never
/// skips it) when it cannot be mounted.
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
        loop {
            if file.write_all(&chunk).is_err() {
                break;
            }
        }
        // And the last few bytes.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_plainly_and_the_node_recovers_without_a_restart() {
    common::init_logging();
    let disk = SmallDisk::mount("4m");
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("admin.alice");
    let data = disk.path().join("data");
    let mut text = common::node_section(&pki, &hq, &data);
    text.push_str("\n[[client]]\nid = \"analyst.alice\"\nrole = \"analyst\"\n");
    text.push_str("\n[[client]]\nid = \"admin.alice\"\nrole = \"admin\"\n");
    let config = pki.path().join("hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::start(&config).await;
    let analyst = common::connect(&pki, &node, "analyst.alice").await;
    let admin = common::connect(&pki, &node, "admin.alice").await;

    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let batch: Vec<String> = (0..40)
            .map(|i| format!("before{round}-{i}.faults.example"))
            .collect();
        publish(&analyst, &batch).await.expect("publish before");
        acknowledged.extend(batch);
    }
    acknowledged.sort();
    assert_eq!(values(&analyst).await.unwrap(), acknowledged);
    wait_for_health(&analyst, tonic_health::ServingStatus::Serving).await;

    let filler = disk.fill();
    // Writes fail plainly.
    let refused: Vec<String> = (0..400)
        .map(|i| format!("during-{i}.faults.example"))
        .collect();
    let error = publish(&analyst, &refused)
        .await
        .expect_err("the disk is full");
    let (code, message) = status_of(&error);
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("disk is full"), "{message}");
    // Health says so.
    wait_for_health(&analyst, tonic_health::ServingStatus::NotServing).await;
    // Deliveries that cannot be recorded in the ledger are refused, plainly.
    let error = values(&analyst)
        .await
        .expect_err("not recorded, not delivered");
    let (code, message) = status_of(&error);
    assert_eq!(code, tonic::Code::ResourceExhausted, "{message}");
    assert!(message.contains("disk is full"), "{message}");
    assert!(message.contains("disclosure ledger"), "{message}");
    // A read that discloses nothing goes on.
    let page = analyst
        .query(
            ItemFilter {
                tag: "no-such-tag".into(),
                ..Default::default()
            },
            10,
            Vec::new(),
        )
        .await
        .expect("a read that discloses nothing");
    assert!(page.items.is_empty());
    // Still full a little later: still refused (nothing flaps back on its own).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        health(&analyst).await,
        tonic_health::ServingStatus::NotServing as i32
    );

    // Space returns: the node serves again, no restart.
    std::fs::remove_file(&filler).unwrap();
    wait_for_health(&analyst, tonic_health::ServingStatus::Serving).await;
    assert_eq!(values(&analyst).await.unwrap(), acknowledged);
    let after: Vec<String> = (0..40)
        .map(|i| format!("after-{i}.faults.example"))
        .collect();
    publish(&analyst, &after).await.expect("publish after");
    let mut all = acknowledged.clone();
    all.extend(after);
    all.sort();
    assert_eq!(values(&analyst).await.unwrap(), all);
    let check = admin.ledger_verify().await.unwrap();
    assert!(check.intact, "{check:?}");
    drop((analyst, admin));
    node.shutdown(Duration::from_secs(10)).await.unwrap();

    // Nothing acknowledged was lost, and the ledger is intact after a restart.
    let answer = verify_ledger(&pki, &config).await;
    assert!(answer.intact, "{answer:?}");
    let node = common::start(&config).await;
    let analyst = common::connect(&pki, &node, "analyst.alice").await;
    assert_eq!(values(&analyst).await.unwrap(), all);
    drop(analyst);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

#[test]
fn sled_failing_on_a_full_disk_is_reopened_and_no_ledger_record_is_lost() {
    common::init_logging();
    let disk = SmallDisk::mount("4m");
    let dir = disk.path().join("store");
    let owner = NodeId::new("redmond.hq").unwrap();
    let store = common::open_store(&dir, &owner, 1 << 20).unwrap();
    let entry = |i: u64| entente::store::LedgerEntry {
        time_ms: 1_700_000_000_000 + i as i64,
        partner: NodeId::new("berlin.office").unwrap(),
        path: "query".into(),
        deliveries: vec![(entente::model::BundleId::new_random(), vec![i as u32])],
        policy_hash: [7u8; 32],
        note: String::new(),
    };
    for i in 0..10 {
        store.append_ledger(&entry(i)).unwrap();
    }
    store.flush().unwrap();
    let filler = disk.fill();
    // Records written to sled (in memory) while the disk is full: the flush fails,
    // and then sled refuses everything, so the store is unwritable.
    let mut written = 10;
    let mut failed = false;
    for i in 10..2000 {
        match store.append_ledger(&entry(i)) {
            Ok(_) => written += 1,
            Err(_) => {
                failed = true;
                break;
            }
        }
        if i % 50 == 0 && store.flush().is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed || store.flush().is_err(), "the disk is full");
    let error = store.writable().expect_err("unwritable");
    assert!(error.is_disk_full(), "{error}");
    assert!(matches!(
        store.append_ledger(&entry(9999)),
        Err(StoreError::Unwritable { .. })
    ));
    std::fs::remove_file(&filler).unwrap();
    store.flush().expect("writes again once there is room");
    store.writable().unwrap();
    store.append_ledger(&entry(5000)).unwrap();
    written += 1;
    store.flush().unwrap();
    assert!(matches!(
        store.verify_ledger().unwrap(),
        entente::store::LedgerCheck::Intact { records, .. } if records == written
    ));
    drop(store);
    let store = common::open_store(&dir, &owner, 1 << 20).unwrap();
    assert!(matches!(
        store.verify_ledger().unwrap(),
        entente::store::LedgerCheck::Intact { records, .. } if records == written
    ));
}
