//! Every file in `examples/` is checked the way it is used, so the examples cannot rot.
//!
//! The directory is enumerated: each node configuration (`[node]`) is loaded by
//! `Config::load` and its policy compiled, each client configuration (`[client]`) by
//! `ClientSettings::load`, and the systemd unit's command lines are run against the
//! built binary. A file of any other kind fails the test until this file learns to check
//! it. The examples name real paths (`/etc/entente`, `/var/lib/entente`): every absolute
//! path is moved under a temporary directory that holds a test PKI at the same places.
//! Then the example federation is started as it is written (only the listen and peer
//! addresses are changed to loopback ports) and the policies do what their comments say.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use entente::certs::{CertificateAuthority, Usage, Validity};
use entente::client::{ClientError, NodeClient};
use entente::config::ClientSettings;
use entente::policy::Policy;
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};
use entente::{Config, Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);

/// What a file in `examples/` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Node,
    Client,
    SystemdUnit,
    Documentation,
}

/// Every file in `examples/`, sorted, with its kind; panics on a file of unknown kind.
fn examples() -> Vec<(PathBuf, Kind)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/ exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let kind = if name.ends_with(".toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let has = |section: &str| text.lines().any(|l| l.trim() == section);
            match (has("[node]"), has("[client]")) {
                (true, false) => Kind::Node,
                (false, true) => Kind::Client,
                _ => panic!(
                    "examples/{name}: neither a node ([node]) nor a client ([client]) configuration"
                ),
            }
        } else if name.ends_with(".service") {
            Kind::SystemdUnit
        } else if name == "README.md" {
            Kind::Documentation
        } else {
            panic!("examples/{name}: a kind of example tests/examples.rs does not check; teach it");
        };
        found.push((path, kind));
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn of_kind(kind: Kind) -> Vec<PathBuf> {
    examples()
        .into_iter()
        .filter(|(_, k)| *k == kind)
        .map(|(p, _)| p)
        .collect()
}

/// Moves every absolute path in a TOML file's strings under `root`.
fn reroot(text: &str, root: &Path) -> String {
    text.replace("\"/", &format!("\"{}/", root.display()))
}

/// Replaces the one string value `from` with `to` (both without quotes).
fn replace_value(text: &str, from: &str, to: &str) -> String {
    let quoted = format!("\"{from}\"");
    assert_eq!(
        text.matches(&quoted).count(),
        1,
        "{quoted} must occur exactly once"
    );
    text.replace(&quoted, &format!("\"{to}\""))
}

fn table(text: &str) -> toml::Table {
    text.parse().expect("valid TOML")
}

fn string(value: &toml::Value, key: &str) -> String {
    value
        .get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{key} is missing"))
        .to_owned()
}

fn strings(value: &toml::Value, key: &str) -> Vec<String> {
    value
        .get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn entries<'a>(t: &'a toml::Table, key: &str) -> Vec<&'a toml::Value> {
    t.get(key)
        .and_then(|v| v.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// A federation CA for the test, writing certificates wherever a configuration wants them.
struct TestPki {
    ca: CertificateAuthority,
}

impl TestPki {
    fn new() -> Self {
        Self {
            ca: CertificateAuthority::generate("Example federation CA", Validity::days_from_now(2))
                .unwrap(),
        }
    }

    /// Writes what the `[node]` or `[client]` section `section` of the file at `config`
    /// names: the certificate and key of its id, the CA as every trust anchor, and an
    /// empty CRL as every CRL.
    fn provide(&self, config: &Path, section: &str, usage: &Usage) {
        let t = table(&std::fs::read_to_string(config).unwrap());
        let s = &t[section];
        let base = config.parent().unwrap();
        let at = |p: String| {
            let path = base.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            path
        };
        let id = NodeId::new(&string(s, "id")).unwrap();
        let issued = self
            .ca
            .issue(&id, usage, Validity::days_from_now(1))
            .unwrap();
        std::fs::write(at(string(s, "cert")), &issued.cert_pem).unwrap();
        entente::transport::files::write_private(&at(string(s, "key")), issued.key_pem.as_bytes())
            .unwrap();
        for anchor in strings(s, "trust_anchors") {
            std::fs::write(at(anchor), self.ca.cert_pem()).unwrap();
        }
        for crl in strings(s, "crls") {
            std::fs::write(at(crl), self.ca.crl(&[], 1, 1).unwrap()).unwrap();
        }
    }
}

fn node_usage() -> Usage {
    Usage::Node {
        ips: vec!["127.0.0.1".parse().unwrap()],
        dns: vec![],
    }
}

/// A node example moved under `root`, listening on `listen`, with the addresses of its
/// peers replaced as `addresses` says (peer id to `host:port`).
fn install_node(
    example: &Path,
    root: &Path,
    listen: &str,
    addresses: &BTreeMap<String, String>,
    pki: &TestPki,
) -> PathBuf {
    let original = std::fs::read_to_string(example).unwrap();
    let t = table(&original);
    let mut text = reroot(&original, root);
    text = replace_value(&text, &string(&t["node"], "listen"), listen);
    for peer in entries(&t, "peer") {
        if let Some(address) = addresses.get(&string(peer, "id")) {
            text = replace_value(&text, &string(peer, "address"), address);
        }
    }
    let path = root.join("etc/entente/entente.toml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    pki.provide(&path, "node", &node_usage());
    path
}

/// A client example moved into `dir` (its own directory, as `entente certs client`
/// leaves it), pointed at `node_address`.
fn install_client(example: &Path, dir: &Path, node_address: &str, pki: &TestPki) -> PathBuf {
    let original = std::fs::read_to_string(example).unwrap();
    let t = table(&original);
    let mut text = reroot(&original, dir);
    text = replace_value(&text, &string(&t["client"], "node"), node_address);
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(example.file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    pki.provide(&path, "client", &Usage::Client);
    path
}

fn port(address: &str) -> &str {
    address.rsplit_once(':').unwrap().1
}

#[test]
fn examples_cover_every_role_and_nothing_unchecked() {
    let all = examples();
    let count = |kind| all.iter().filter(|(_, k)| *k == kind).count();
    assert!(
        count(Kind::Node) >= 3,
        "HQ, office and partner node examples"
    );
    assert!(
        count(Kind::Client) >= 2,
        "analyst and researcher client examples"
    );
    assert_eq!(count(Kind::SystemdUnit), 1, "one systemd unit");
}

/// The examples describe one federation: every link is configured at both ends, on the
/// port the other end listens on, and every client example names a node example that
/// has a `[[client]]` for it.
#[test]
fn the_examples_describe_each_other_consistently() {
    let nodes: BTreeMap<String, toml::Table> = of_kind(Kind::Node)
        .iter()
        .map(|p| {
            let t = table(&std::fs::read_to_string(p).unwrap());
            (string(&t["node"], "id"), t)
        })
        .collect();
    for (id, t) in &nodes {
        for peer in entries(t, "peer") {
            let other = string(peer, "id");
            let Some(o) = nodes.get(&other) else {
                panic!("{id}: [[peer]] {other} has no node example");
            };
            assert!(
                entries(o, "peer").iter().any(|p| string(p, "id") == *id),
                "{id} has a [[peer]] {other}, but {other} has no [[peer]] {id}"
            );
            assert_eq!(
                port(&string(peer, "address")),
                port(&string(&o["node"], "listen")),
                "{id}: the address of {other} is not on the port {other} listens on"
            );
        }
        for (group, members) in t
            .get("groups")
            .and_then(|g| g.as_table())
            .iter()
            .flat_map(|g| g.iter())
        {
            for member in members.as_array().unwrap() {
                let member = member.as_str().unwrap();
                assert!(
                    nodes.contains_key(member),
                    "{id}: group {group} names {member}, which has no node example"
                );
            }
        }
    }
    for path in of_kind(Kind::Client) {
        let t = table(&std::fs::read_to_string(&path).unwrap());
        let id = string(&t["client"], "id");
        let node_id = string(&t["client"], "node_id");
        let Some(node) = nodes.get(&node_id) else {
            panic!("{}: node_id {node_id} has no node example", path.display());
        };
        assert!(
            entries(node, "client")
                .iter()
                .any(|c| string(c, "id") == id),
            "{}: {node_id} has no [[client]] {id}",
            path.display()
        );
        assert_eq!(
            port(&string(&t["client"], "node")),
            port(&string(&node["node"], "listen")),
            "{}: not the port {node_id} listens on",
            path.display()
        );
    }
}

/// Every node example loads and validates as written (paths moved), and no partner it
/// names is left receiving nothing; every client example loads.
#[test]
fn every_example_config_loads() {
    let pki = TestPki::new();
    let temp = tempfile::tempdir().unwrap();
    let nodes = of_kind(Kind::Node);
    for (i, example) in nodes.iter().enumerate() {
        let root = temp.path().join(format!("host{i}"));
        let path = install_node(example, &root, "127.0.0.1:0", &BTreeMap::new(), &pki);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
        assert!(config.node.data_dir.starts_with(&root));
        let policy = Policy::compile(&config.policy_spec());
        for partner in config.partners() {
            let compiled = policy.partner(&partner.id).unwrap();
            assert!(
                compiled.receives_anything(),
                "{}: {} receives nothing under its policy",
                example.display(),
                partner.id
            );
        }
        // Clients may also use a node configuration (the node's operator).
        ClientSettings::load(&path).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    }
    for (i, example) in of_kind(Kind::Client).iter().enumerate() {
        let dir = temp.path().join(format!("client{i}"));
        let path = install_client(example, &dir, "hq.example.org:7443", &pki);
        ClientSettings::load(&path).unwrap_or_else(|e| panic!("{}: {e}", example.display()));
    }
}

fn item(indicator_type: &str, value: &str, tlp: Tlp, tags: &[&str]) -> wire::Item {
    wire::Item {
        id: entente::model::ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: tlp as i32,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: indicator_type.into(),
            value: value.into(),
            ..Default::default()
        })),
    }
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>) -> Result<(), ClientError> {
    let request = PublishRequest {
        items,
        distribution: Some(wire::Distribution::default()),
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .map(|_| ())
}

fn values(items: &[StoredItem]) -> BTreeSet<String> {
    items
        .iter()
        .map(|s| match s.item.as_ref().and_then(|i| i.kind.as_ref()) {
            Some(wire::item::Kind::Indicator(i)) => i.value.clone(),
            _ => String::new(),
        })
        .collect()
}

/// Waits until `client` sees exactly `expected`, failing after the deadline.
async fn sees_exactly(client: &NodeClient, who: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
    let start = Instant::now();
    loop {
        let page = client
            .query(ItemFilter::default(), 1000, vec![])
            .await
            .unwrap();
        let seen = values(&page.items);
        if seen == expected {
            assert!(
                page.items
                    .iter()
                    .all(|s| s.provenance.as_ref().unwrap().signature_verified),
                "{who}: an item without a verified origin signature"
            );
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{who}: expected {expected:?}, sees {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connect(config: &Path) -> NodeClient {
    let settings = ClientSettings::load(config).unwrap();
    NodeClient::connect_with(&settings).await.unwrap()
}

/// The example federation, started as written, delivers what the comments in the
/// examples say: the office gets everything up to AMBER+STRICT and the partner's GREEN;
/// the partner gets AMBER network indicators without `pii`; the researcher gets GREEN
/// network indicators and cannot publish; RED stays at the HQ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_federation_delivers_what_its_policies_say() {
    common::init_logging();
    let pki = TestPki::new();
    let temp = tempfile::tempdir().unwrap();

    // Reserve a loopback port per node, so that each can be told where the others are.
    let examples = of_kind(Kind::Node);
    let mut reserved = Vec::new();
    let mut addresses = BTreeMap::new();
    for example in &examples {
        let t = table(&std::fs::read_to_string(example).unwrap());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        addresses.insert(
            string(&t["node"], "id"),
            listener.local_addr().unwrap().to_string(),
        );
        reserved.push(listener);
    }
    let mut configs = BTreeMap::new();
    for example in &examples {
        let t = table(&std::fs::read_to_string(example).unwrap());
        let id = string(&t["node"], "id");
        let root = temp.path().join(&id);
        let path = install_node(example, &root, &addresses[&id], &addresses, &pki);
        configs.insert(id, path);
    }
    drop(reserved);
    let mut nodes: Vec<Node> = Vec::new();
    for path in configs.values() {
        nodes.push(common::start(path).await);
    }

    let examples_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let analyst = connect(&install_client(
        &examples_dir.join("client-analyst.alice.toml"),
        &temp.path().join("alice"),
        &addresses["redmond.hq"],
        &pki,
    ))
    .await;
    let researcher = connect(&install_client(
        &examples_dir.join("client-researcher.uni-x.toml"),
        &temp.path().join("uni-x"),
        &addresses["redmond.hq"],
        &pki,
    ))
    .await;
    let berlin = connect(&configs["berlin.office"]).await;
    let lea = connect(&configs["lea.partner"]).await;

    publish(
        &analyst,
        vec![
            item("domain", "update-check.example.com", Tlp::Green, &[]),
            item("ipv4", "198.51.100.23", Tlp::Amber, &[]),
            item("email", "billing@example.org", Tlp::Amber, &[]),
            item("domain", "victim-portal.example.net", Tlp::Green, &["pii"]),
            item(
                "sha256",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                Tlp::AmberStrict,
                &[],
            ),
            item("url", "https://203.0.113.7/gate.php", Tlp::Red, &[]),
        ],
    )
    .await
    .unwrap();
    // The partner publishes back: AMBER stays at the HQ, GREEN travels on to the office,
    // and what the partner tags `case:sealed` never leaves it.
    publish(
        &lea,
        vec![
            item("ipv4", "192.0.2.44", Tlp::Amber, &[]),
            item("domain", "dropzone.example.com", Tlp::Green, &[]),
            item(
                "domain",
                "suspect-home.example.com",
                Tlp::Green,
                &["case:sealed"],
            ),
        ],
    )
    .await
    .unwrap();

    sees_exactly(
        &analyst,
        "analyst.alice at redmond.hq",
        &[
            "update-check.example.com",
            "198.51.100.23",
            "billing@example.org",
            "victim-portal.example.net",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "https://203.0.113.7/gate.php",
            "192.0.2.44",
            "dropzone.example.com",
        ],
    )
    .await;
    sees_exactly(
        &berlin,
        "berlin.office",
        &[
            "update-check.example.com",
            "198.51.100.23",
            "billing@example.org",
            "victim-portal.example.net",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "dropzone.example.com",
        ],
    )
    .await;
    sees_exactly(
        &lea,
        "lea.partner",
        &[
            "update-check.example.com",
            "198.51.100.23",
            "192.0.2.44",
            "dropzone.example.com",
            "suspect-home.example.com",
        ],
    )
    .await;
    sees_exactly(
        &researcher,
        "researcher.uni-x",
        &["update-check.example.com", "dropzone.example.com"],
    )
    .await;

    let refused = publish(
        &researcher,
        vec![item("domain", "research.example.edu", Tlp::Green, &[])],
    )
    .await
    .expect_err("a read-only client cannot publish");
    assert!(
        matches!(
            refused,
            ClientError::Status {
                code: tonic::Code::PermissionDenied,
                ..
            }
        ),
        "{refused}"
    );

    for node in nodes {
        node.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// The value of every `Key=` line of a unit file, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// Runs a unit command line with the binary and the configuration replaced by the test's.
fn unit_command(line: &str, binary: &Path, root: &Path) -> Command {
    let mut words = line.split_whitespace();
    let program = words.next().unwrap();
    let mut command = if program.ends_with("/entente") {
        Command::new(binary)
    } else {
        Command::new(program)
    };
    for word in words {
        if word.starts_with('/') {
            command.arg(format!("{}{word}", root.display()));
        } else {
            command.arg(word);
        }
    }
    command
}

/// Reads a child's output line by line into a channel.
fn lines(output: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
}

/// The systemd unit's ExecStartPre and ExecStart run the real binary with real flags on
/// the HQ example, ExecReload (SIGHUP) reloads the policy without stopping the node, and
/// SIGTERM (systemctl stop) ends it cleanly.
#[test]
fn the_systemd_unit_runs_the_node() {
    let units = of_kind(Kind::SystemdUnit);
    let unit = std::fs::read_to_string(&units[0]).unwrap();
    for hardening in [
        "User=entente",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=entente",
        "CapabilityBoundingSet=",
    ] {
        assert!(
            unit.lines().any(|l| l == hardening),
            "{hardening} is missing"
        );
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_entente"));
    let temp = tempfile::tempdir().unwrap();
    let root = temp.path();
    let pki = TestPki::new();
    let hq = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node-redmond.hq.toml");
    let config = install_node(&hq, root, "127.0.0.1:0", &BTreeMap::new(), &pki);
    // The unit names /etc/entente/entente.toml, which install_node wrote under root.
    let [start] = unit_values(&unit, "ExecStart")
        .try_into()
        .expect("one ExecStart");
    assert!(start.contains("serve --config /etc/entente/entente.toml"));
    assert!(config.ends_with("etc/entente/entente.toml"));
    // StateDirectory=entente is /var/lib/entente, which the example's data_dir names.
    assert_eq!(
        Config::load(&config).unwrap().node.data_dir,
        root.join("var/lib/entente")
    );

    for pre in unit_values(&unit, "ExecStartPre") {
        let output = unit_command(&pre, binary, root).output().unwrap();
        assert!(
            output.status.success(),
            "ExecStartPre={pre}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut child = unit_command(&start, binary, root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    wait_for_line(&stdout, "redmond.hq serving on");

    let [reload] = unit_values(&unit, "ExecReload")
        .try_into()
        .expect("one ExecReload");
    let reload = reload.replace("$MAINPID", &child.id().to_string());
    assert!(
        unit_command(&reload, binary, root)
            .status()
            .unwrap()
            .success()
    );
    let line = wait_for_line(&stderr, "policy reloaded");
    assert!(line.starts_with('{'), "--log-format json: {line}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the node stopped on SIGHUP"
    );

    let stop = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
