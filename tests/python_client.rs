//! The Python read-only client (`clients/python`, `entente_client`) against a live node:
//! a researcher whose policy allows GREEN and CLEAR receives exactly those items through
//! query (with pagination and filters), get (with provenance) and subscribe, is refused
//! AMBER and RED items as if they did not exist, and cannot publish. The stubs are
//! generated from `proto/` into a temporary directory on every run.
//!
//! Needs `python3` with the packages in `tests/python/requirements.txt` (grpcio and
//! grpcio-tools); set `ENTENTE_PYTHON` to use another interpreter.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Pki, client, start, write_config};
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire::{self, Tlp};

const DEADLINE: Duration = Duration::from_secs(60);
const NODE: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.uni-x";

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A `python3` command with `entente_client` importable and its stubs in `stubs`. The
/// machine's default-roots variables are left as they are: the client must not use them.
fn python_command(stubs: &Path) -> Command {
    let mut command = Command::new(python());
    command
        .env("PYTHONPATH", repo("clients/python"))
        .env("ENTENTE_CLIENT_STUBS", stubs)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("ENTENTE_CLIENT_CONFIG")
        .stdin(Stdio::null());
    command
}

/// `python3 -m entente_client ARGS`, with a deadline.
fn entente_client(stubs: &Path, args: &[&str]) -> Output {
    let mut command = python_command(stubs);
    command.arg("-m").arg("entente_client").args(args);
    output_within(command, DEADLINE)
}

/// Runs `command` to completion, killing it if it outlives `deadline`.
fn output_within(mut command: Command, deadline: Duration) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (install the packages in tests/python/requirements.txt)");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(deadline) {
        Ok(output) => output.expect("wait for python3"),
        Err(_) => {
            // SAFETY: kill(2) on the id of the child this function spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{command:?} did not finish within {deadline:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn succeeded(output: &Output) -> String {
    assert!(
        output.status.success(),
        "python client failed ({}):\n{}\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The JSON lines of a `--json` output, by item id.
#[track_caller]
fn json_items(output: &Output) -> BTreeMap<String, serde_json::Value> {
    succeeded(output)
        .lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            (value["id"].as_str().expect("id").to_owned(), value)
        })
        .collect()
}

fn ids(items: &BTreeMap<String, serde_json::Value>) -> BTreeSet<String> {
    items.keys().cloned().collect()
}

fn item(ty: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: ty.to_owned(),
            value: value.to_owned(),
            description: format!("{value} seen in the test campaign"),
            confidence: 80,
            ..Default::default()
        })),
    }
}

/// Publishes `items` as one bundle; its bundle id.
async fn publish(analyst: &NodeClient, items: Vec<wire::Item>) -> String {
    let count = items.len() as u64;
    let request = PublishRequest {
        items,
        distribution: None,
        groups: vec![],
    };
    let response =
        tokio::time::timeout(DEADLINE, analyst.publish(tokio_stream::iter(vec![request])))
            .await
            .expect("publish in time")
            .expect("publish");
    assert_eq!(response.items_accepted, count);
    response.bundle_ids[0].clone()
}

/// Every item id the analyst (who may see everything) finds for `filter`, across pages
/// (a page with items always carries a token; the last page is empty).
async fn analyst_ids(analyst: &NodeClient, filter: ItemFilter) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut token = Vec::new();
    loop {
        let page = tokio::time::timeout(DEADLINE, analyst.query(filter.clone(), 1000, token))
            .await
            .expect("query in time")
            .expect("query");
        ids.extend(page.items.into_iter().map(|s| s.item.expect("item").id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

/// The node's configuration: an analyst, and a read-only researcher limited to GREEN.
fn node_config(pki: &Pki, id: &NodeId) -> PathBuf {
    let path = write_config(pki, id, &[client(ANALYST, "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[client]]\nid = \"{RESEARCHER}\"\nrole = \"read_only\"\nmax_tlp = \"GREEN\"\nallow_types = [\"*\"]\n"
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes the researcher's client configuration as `entente certs client` does, beside
/// its certificate; returns its path.
fn researcher_config(pki: &Pki, address: &str, node_id: &str, name: &str) -> PathBuf {
    client_config(pki, RESEARCHER, address, node_id, name)
}

/// Writes `id`'s client configuration as `entente certs client` does; returns its path.
fn client_config(pki: &Pki, id: &str, address: &str, node_id: &str, name: &str) -> PathBuf {
    let text = entente::config::starter_client_config(
        &NodeId::new(id).unwrap(),
        address,
        &NodeId::new(node_id).unwrap(),
    );
    let path = pki.ca_cert().parent().unwrap().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_read_only_client_sees_only_what_its_policy_allows() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(NODE);
    pki.client(ANALYST);
    pki.client(RESEARCHER);
    let node = start(&node_config(&pki, &hq)).await;
    let address = node.local_addr().to_string();
    let config = researcher_config(&pki, &address, NODE, "researcher.toml");
    let config_arg = config.to_str().unwrap().to_owned();

    // The stubs, generated from proto/ by the documented script.
    let stubs_dir = tempfile::tempdir().unwrap();
    let stubs = stubs_dir.path().join("stubs");
    {
        let mut command = Command::new(python());
        command
            .arg(repo("clients/python/generate_stubs.py"))
            .arg("--out")
            .arg(&stubs)
            .stdin(Stdio::null());
        let stubs = stubs.clone();
        let output = tokio::task::spawn_blocking(move || output_within(command, DEADLINE))
            .await
            .unwrap();
        succeeded(&output);
        assert!(stubs.join("entente/v1/intel_pb2_grpc.py").is_file());
    }

    let analyst = common::connect(&pki, &node, ANALYST).await;
    let campaign = vec![
        item("domain", "clear.example.org", Tlp::Clear, &["campaign:x"]),
        item("domain", "green.example.org", Tlp::Green, &["campaign:x"]),
        item("ipv4", "192.0.2.10", Tlp::Green, &["campaign:y"]),
        item(
            "sha256",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            Tlp::Green,
            &["campaign:x", "malware"],
        ),
        item("domain", "amber.example.org", Tlp::Amber, &["campaign:x"]),
        item(
            "url",
            "https://strict.example.org/login",
            Tlp::AmberStrict,
            &["campaign:x"],
        ),
        item("ipv4", "192.0.2.66", Tlp::Red, &["campaign:x"]),
    ];
    let by_value: BTreeMap<String, String> = campaign
        .iter()
        .map(|i| match &i.kind {
            Some(wire::item::Kind::Indicator(ind)) => (ind.value.clone(), i.id.clone()),
            _ => unreachable!(),
        })
        .collect();
    let id_of = |value: &str| by_value[value].clone();
    let campaign_bundle = publish(&analyst, campaign).await;
    // A second bundle, larger than one page, to make the client follow pagination.
    let bulk: Vec<wire::Item> = (0..12)
        .map(|n| {
            let tlp = if n % 3 == 0 { Tlp::Amber } else { Tlp::Green };
            item("ipv4", &format!("198.51.100.{n}"), tlp, &["bulk"])
        })
        .collect();
    let bulk_allowed: BTreeSet<String> = bulk
        .iter()
        .filter(|i| i.tlp == Tlp::Green as i32)
        .map(|i| i.id.clone())
        .collect();
    let bulk_bundle = publish(&analyst, bulk).await;

    let allowed: BTreeSet<String> = [
        "clear.example.org",
        "green.example.org",
        "192.0.2.10",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ]
    .iter()
    .map(|v| id_of(v))
    .chain(bulk_allowed.iter().cloned())
    .collect();
    let withheld: BTreeSet<String> = [
        "amber.example.org",
        "https://strict.example.org/login",
        "192.0.2.66",
    ]
    .iter()
    .map(|v| id_of(v))
    .collect();

    let run = {
        let stubs = stubs.clone();
        move |args: Vec<String>| {
            let stubs = stubs.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    entente_client(&stubs, &args)
                })
                .await
                .unwrap()
            }
        }
    };
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|s| (*s).to_owned()).collect() };
    let query = |extra: &[&str]| {
        let mut list = args(&[
            "query",
            "--config",
            &config_arg,
            "--json",
            "--page-size",
            "3",
        ]);
        list.extend(args(extra));
        list
    };

    // Query: exactly the GREEN and CLEAR items, over several pages, with provenance.
    let everything = json_items(&run(query(&[])).await);
    assert_eq!(
        ids(&everything),
        allowed,
        "query returns exactly the allowed items"
    );
    assert!(ids(&everything).is_disjoint(&withheld));
    for (id, value) in &everything {
        let tlp = value["tlp"].as_str().unwrap();
        assert!(tlp == "GREEN" || tlp == "CLEAR", "{id}: {tlp}");
        let p = &value["provenance"];
        assert_eq!(p["origin"], NODE, "{value}");
        assert_eq!(p["received_from"], NODE, "{value}");
        assert_eq!(p["hops"], 0, "{value}");
        assert_eq!(p["signature_verified"], true, "{value}");
        let bundle = if bulk_allowed.contains(id) {
            &bulk_bundle
        } else {
            &campaign_bundle
        };
        assert_eq!(p["bundle_id"].as_str().unwrap(), bundle, "{value}");
    }
    let green = &everything[&id_of("green.example.org")];
    assert_eq!(green["type"], "domain");
    assert_eq!(green["value"], "green.example.org");
    assert_eq!(green["tags"], serde_json::json!(["campaign:x"]));
    assert_eq!(green["confidence"], 80);

    // The filters, each against what the researcher may see.
    let cases: Vec<(Vec<&str>, BTreeSet<String>)> = vec![
        (
            vec!["--tag", "campaign:x"],
            [
                "clear.example.org",
                "green.example.org",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ]
            .iter()
            .map(|v| id_of(v))
            .collect(),
        ),
        (
            vec!["--type", "domain"],
            ["clear.example.org", "green.example.org"]
                .iter()
                .map(|v| id_of(v))
                .collect(),
        ),
        (
            vec!["--value", "green.example.org"],
            [id_of("green.example.org")].into(),
        ),
        (vec!["--value", "amber.example.org"], BTreeSet::new()),
        (vec!["--value", "192.0.2.66"], BTreeSet::new()),
        (vec!["--tag", "bulk"], bulk_allowed.clone()),
        (vec!["--origin", NODE], allowed.clone()),
        (vec!["--origin", "berlin.office"], BTreeSet::new()),
        (vec!["--since", "1h"], allowed.clone()),
        (vec!["--since", "2100-01-01T00:00:00Z"], BTreeSet::new()),
        (
            vec!["--tag", "campaign:x", "--type", "sha256"],
            [id_of(
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            )]
            .into(),
        ),
    ];
    for (filter, expected) in cases {
        let found = ids(&json_items(&run(query(&filter)).await));
        assert_eq!(found, expected, "query {filter:?}");
    }
    let limited = json_items(&run(query(&["--limit", "5"])).await);
    assert_eq!(limited.len(), 5);
    assert!(ids(&limited).is_subset(&allowed));

    // Get, with flags instead of the configuration file: the item and its provenance.
    let certs = pki.ca_cert().parent().unwrap().to_owned();
    let flags = |command: &str, id: &str, json: bool| -> Vec<String> {
        let mut list = args(&[
            command,
            id,
            "--address",
            &address,
            "--node-id",
            NODE,
            "--cert",
            certs.join(format!("{RESEARCHER}.crt")).to_str().unwrap(),
            "--key",
            certs.join(format!("{RESEARCHER}.key")).to_str().unwrap(),
            "--ca",
            pki.ca_cert().to_str().unwrap(),
        ]);
        if json {
            list.push("--json".into());
        }
        list
    };
    let green_id = id_of("green.example.org");
    let got = json_items(&run(flags("get", &green_id, true)).await);
    assert_eq!(got.len(), 1);
    assert_eq!(got[&green_id], everything[&green_id]);
    let shown = succeeded(&run(flags("get", &green_id, false)).await);
    for line in [
        format!("id:            {green_id}"),
        "value:         green.example.org".into(),
        "marking:       TLP:GREEN".into(),
        format!("origin:        {NODE}"),
        format!("bundle:        {campaign_bundle}"),
        format!("received from: {NODE} (0 hops)"),
        "signature:     origin signature verified".into(),
    ] {
        assert!(shown.contains(&line), "{line:?} missing from:\n{shown}");
    }
    // An AMBER, AMBER+STRICT or RED item is refused exactly as a missing one is.
    let missing = entente::model::ItemId::new_random().to_string();
    for id in withheld.iter().chain([&missing]) {
        let output = run(args(&["get", "--config", &config_arg, id])).await;
        assert_eq!(output.status.code(), Some(1), "get {id}: {output:?}");
        assert!(output.stdout.is_empty(), "get {id} printed {output:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains("get: NOT_FOUND: ") && stderr.contains("no such item"),
            "get {id}: {stderr}"
        );
        assert!(!stderr.contains("Traceback"), "{stderr}");
    }

    // Subscribe: a new GREEN item arrives, a new AMBER one (published before it) does not.
    let mut command = python_command(&stubs);
    command
        .args(["-m", "entente_client", "subscribe", "--config", &config_arg])
        .args(["--json", "--count", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("run python3");
    let pid = child.id();
    let kill = move || {
        // SAFETY: kill(2) on the id of the child this test spawned.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    };
    let (opened_tx, opened_rx) = mpsc::channel();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let stderr_reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.starts_with("subscribed to ") {
                let _ = opened_tx.send(());
            }
            all.push_str(&line);
            line.clear();
        }
        all
    });
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        let _ = done_tx.send((status, stdout));
    });
    if opened_rx.recv_timeout(DEADLINE).is_err() {
        kill();
        panic!(
            "the subscription did not open within {DEADLINE:?}: {}",
            stderr_reader.join().unwrap()
        );
    }
    let amber = item("domain", "late-amber.example.org", Tlp::Amber, &["late"]);
    let red = item("ipv4", "192.0.2.99", Tlp::Red, &["late"]);
    let late_green = item("domain", "late-green.example.org", Tlp::Green, &["late"]);
    let (amber_id, red_id, late_green_id) =
        (amber.id.clone(), red.id.clone(), late_green.id.clone());
    publish(&analyst, vec![amber]).await;
    publish(&analyst, vec![red]).await;
    let late_bundle = publish(&analyst, vec![late_green]).await;
    let (status, stdout) = match tokio::task::spawn_blocking(move || done_rx.recv_timeout(DEADLINE))
        .await
        .unwrap()
    {
        Ok(done) => done,
        Err(_) => {
            kill();
            panic!(
                "subscribe delivered nothing within {DEADLINE:?}: {}",
                stderr_reader.join().unwrap()
            );
        }
    };
    let stderr = stderr_reader.join().unwrap();
    assert!(status.success(), "subscribe failed: {status}\n{stderr}");
    // The stream is ordered: the AMBER and RED items were accepted first, so had they
    // been delivered they would be the (only) line printed before --count 1 stopped.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let received: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(received["id"], late_green_id.as_str(), "{stdout}");
    assert_ne!(received["id"], amber_id.as_str());
    assert_ne!(received["id"], red_id.as_str());
    assert_eq!(received["tlp"], "GREEN");
    assert_eq!(received["provenance"]["bundle_id"], late_bundle.as_str());
    assert_eq!(received["provenance"]["signature_verified"], true);
    // And a later query has the new GREEN item but neither late withheld one.
    let later = ids(&json_items(&run(query(&["--tag", "late"])).await));
    assert_eq!(later, [late_green_id].into());

    // Publishing through the Python client is refused, and nothing is written.
    let before = analyst_ids(&analyst, ItemFilter::default()).await;
    let attempted = "researcher-write.example.org";
    let mut command = python_command(&stubs);
    command
        .arg(repo("tests/python/publish_attempt.py"))
        .arg(&config)
        .arg(attempted);
    let output = tokio::task::spawn_blocking(move || output_within(command, DEADLINE))
        .await
        .unwrap();
    assert_eq!(succeeded(&output).trim(), "PERMISSION_DENIED", "{output:?}");
    let value_filter = ItemFilter {
        value: attempted.into(),
        ..Default::default()
    };
    assert!(analyst_ids(&analyst, value_filter).await.is_empty());
    assert_eq!(analyst_ids(&analyst, ItemFilter::default()).await, before);

    // Hello: the node answers with its id and classifies the client as read-only.
    let mut command = python_command(&stubs);
    command
        .arg("-c")
        .arg("import sys; from entente_client import Client; h = Client.from_config_file(sys.argv[1]).hello(); print(h['node_id'], h['caller_id'], h['caller_role'])")
        .arg(&config);
    let output = tokio::task::spawn_blocking(move || output_within(command, DEADLINE))
        .await
        .unwrap();
    assert_eq!(
        succeeded(&output).trim(),
        format!("{NODE} {RESEARCHER} read_only")
    );

    // The node must be the configured one: another node id fails the handshake.
    let wrong_node = researcher_config(&pki, &address, "berlin.office", "wrong-node.toml");
    let output = run(args(&[
        "query",
        "--config",
        wrong_node.to_str().unwrap(),
        "--timeout",
        "10",
    ]))
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("query: UNAVAILABLE: "),
        "{output:?}"
    );
    assert!(output.stdout.is_empty());
    // Only the CA it is given is trusted: another federation's CA fails, even with the
    // right CA in the machine's default-roots variable.
    let other = Pki::new();
    let mut list: Vec<String> = flags("get", &green_id, false);
    let ca_at = list.iter().position(|a| a == "--ca").unwrap();
    list[ca_at + 1] = other.ca_cert().to_str().unwrap().to_owned();
    let mut command = python_command(&stubs);
    command
        .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", pki.ca_cert())
        .env("SSL_CERT_FILE", pki.ca_cert())
        .args(["-m", "entente_client"])
        .args(&list)
        .args(["--timeout", "10"]);
    let output = tokio::task::spawn_blocking(move || output_within(command, DEADLINE))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(
        text(&output.stderr).contains("get: UNAVAILABLE: "),
        "{output:?}"
    );

    drop(other);

    // A private key others may read is refused, as the CLI refuses it.
    use std::os::unix::fs::PermissionsExt;
    let key = pki.certs.key_path(RESEARCHER);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = run(query(&[])).await;
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a configuration error: {refused:?}"
    );
    assert!(text(&refused.stderr).contains("chmod 600"), "{refused:?}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// `entente ARGS` (the Rust CLI), with a deadline.
fn entente_cli(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_entente"));
    command.args(args).stdin(Stdio::null());
    output_within(command, DEADLINE)
}

/// The lines of `output`, sorted (the two clients page differently).
fn sorted_lines(output: &Output) -> Vec<String> {
    let mut lines: Vec<String> = succeeded(output).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_cli_and_python_client_print_the_same_json() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(NODE);
    pki.client(ANALYST);
    pki.client(RESEARCHER);
    let node = start(&node_config(&pki, &hq)).await;
    let address = node.local_addr().to_string();
    let analyst_config = client_config(&pki, ANALYST, &address, NODE, "analyst.toml");
    let config = analyst_config.to_str().unwrap().to_owned();

    let stubs_dir = tempfile::tempdir().unwrap();
    let stubs = stubs_dir.path().join("stubs");
    {
        let mut command = Command::new(python());
        command
            .arg(repo("clients/python/generate_stubs.py"))
            .arg("--out")
            .arg(&stubs)
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || output_within(command, DEADLINE))
            .await
            .unwrap();
        succeeded(&output);
    }

    // Items of every kind and with every optional field: full indicators (a non-ASCII
    // description, kill-chain phases, validity), a bare one, a revocation, and context
    // objects (a malware and a relationship) from a STIX bundle.
    let analyst = common::connect(&pki, &node, ANALYST).await;
    let mut full = item(
        "domain",
        "c2.example.org",
        Tlp::Amber,
        &["campaign:x", "c2"],
    );
    if let Some(wire::item::Kind::Indicator(i)) = &mut full.kind {
        i.description = "Überwachung – command and control \"quoted\"".into();
        i.kill_chain_phases = vec!["mitre-attack:command-and-control".into()];
        i.valid_from_unix_ms = 1_767_225_600_123;
        i.valid_until_unix_ms = Some(4_102_444_800_456);
    }
    let bare = wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: Tlp::Clear as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "sha256".into(),
            value: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
            ..Default::default()
        })),
    };
    let to_revoke = item("ipv4", "192.0.2.77", Tlp::Green, &["sinkhole"]);
    let revoked_id = to_revoke.id.clone();
    let full_id = full.id.clone();
    publish(
        &analyst,
        vec![
            full,
            bare,
            to_revoke,
            item("url", "https://x.example.net/a?b=c", Tlp::Red, &[]),
        ],
    )
    .await;
    let malware = "malware--3b0c5e5d-0000-4000-8000-0000000000c1";
    let stix = serde_json::json!({
        "type": "bundle",
        "id": "bundle--3b0c5e5d-0000-4000-8000-0000000000c0",
        "objects": [
            {
                "type": "malware", "spec_version": "2.1", "id": malware,
                "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-02T03:04:05.678Z",
                "name": "Poison Ivy", "is_family": true,
                "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"],
            },
            {
                "type": "relationship", "spec_version": "2.1",
                "id": "relationship--3b0c5e5d-0000-4000-8000-0000000000c2",
                "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
                "relationship_type": "indicates", "source_ref": full_id, "target_ref": malware,
                "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"],
            },
        ],
    });
    let stix_path = stubs_dir.path().join("context.json");
    std::fs::write(&stix_path, stix.to_string()).unwrap();
    let rust = {
        let args = [
            "publish".to_owned(),
            "--config".into(),
            config.clone(),
            stix_path.to_str().unwrap().into(),
        ];
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            entente_cli(&args)
        })
        .await
        .unwrap()
    };
    succeeded(&rust);
    let rust = {
        let args = [
            "revoke".to_owned(),
            "--config".into(),
            config.clone(),
            "--reason".into(),
            "sinkholed".into(),
            revoked_id.clone(),
        ];
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            entente_cli(&args)
        })
        .await
        .unwrap()
    };
    succeeded(&rust);

    // Each command, from both clients.
    let both = |args: Vec<String>| {
        let stubs = stubs.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (entente_cli(&args), entente_client(&stubs, &args))
            })
            .await
            .unwrap()
        }
    };
    let args = |list: &[&str]| -> Vec<String> { list.iter().map(|s| (*s).to_owned()).collect() };

    let (rust, python) = both(args(&["query", "--config", &config, "--json"])).await;
    let (rust, python) = (sorted_lines(&rust), sorted_lines(&python));
    assert_eq!(rust.len(), 6, "{rust:#?}");
    assert_eq!(rust, python, "query --json differs");
    let items: Vec<serde_json::Value> = rust
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: BTreeSet<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["context", "indicator", "revocation"].into());
    let full = items.iter().find(|i| i["id"] == full_id.as_str()).unwrap();
    assert_eq!(full["valid_from"], "2026-01-01T00:00:00.123Z", "{full}");
    assert_eq!(full["valid_until"], "2100-01-01T00:00:00.456Z", "{full}");
    assert!(
        rust.iter().any(|l| l.contains("Überwachung")),
        "non-ASCII text is printed as UTF-8"
    );
    let relationship = items.iter().find(|i| i["type"] == "relationship").unwrap();
    assert_eq!(relationship["value"], "indicates", "{relationship}");
    assert_eq!(
        relationship["refs"],
        serde_json::json!([full_id, malware]),
        "{relationship}"
    );
    let revoked = items
        .iter()
        .find(|i| i["id"] == revoked_id.as_str())
        .unwrap();
    assert_eq!(revoked["revocation_reason"], "sinkholed", "{revoked}");

    for filter in [
        &["--tlp", "green"][..],
        &["--tlp", "amber", "--tlp", "RED"],
        &["--type", "domain"],
        &["--since", "yesterday"],
        &["--since", "2100-01-01"],
        &["--tag", "campaign:x", "--limit", "1"],
    ] {
        let mut list = args(&["query", "--config", &config, "--json"]);
        list.extend(args(filter));
        let (rust, python) = both(list).await;
        assert_eq!(
            sorted_lines(&rust),
            sorted_lines(&python),
            "query {filter:?} differs"
        );
    }
    for item in &items {
        let id = item["id"].as_str().unwrap();
        let (rust, python) = both(args(&["get", "--config", &config, "--json", id])).await;
        assert_eq!(succeeded(&rust), succeeded(&python), "get {id} differs");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&succeeded(&rust)).unwrap(),
            *item
        );
        // The details as text, too.
        let (rust, python) = both(args(&["get", "--config", &config, id])).await;
        assert_eq!(
            succeeded(&rust),
            succeeded(&python),
            "get {id} (text) differs"
        );
    }
    // The text forms agree on the count, and say "1 item".
    let (rust, python) = both(args(&["query", "--config", &config, "--type", "sha256"])).await;
    succeeded(&rust);
    succeeded(&python);
    assert_eq!(text(&rust.stderr).trim(), "1 item");
    assert_eq!(text(&python.stderr).trim(), "1 item");
    assert_eq!(succeeded(&rust), succeeded(&python), "the tables differ");
    // Both refuse a bad time, naming the accepted forms.
    let (rust, python) = both(args(&["query", "--config", &config, "--since", "yesterdy"])).await;
    assert!(!rust.status.success() && !python.status.success());
    for output in [&rust, &python] {
        let err = text(&output.stderr);
        assert!(
            err.contains("not a time; expected a span back from now"),
            "{err}"
        );
    }
}
