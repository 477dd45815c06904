//! Shared helpers for end-to-end tests: a federation PKI generated at test time in a
//! temporary directory, node configurations on port 0, and nodes started in-process.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use entente::certs::{CertDir, Usage, Validity};
use entente::client::NodeClient;
use entente::config::builder;
use entente::transport::{TlsMaterial, TlsPaths};
use entente::{Config, Node, NodeId};

pub mod feeds;
pub mod https;
pub mod proxy;
pub mod rogue;
pub mod served;
pub mod signed;

/// A federation CA and the certificates it issued, in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub certs: CertDir,
}

impl Pki {
    pub fn new() -> Self {
        Self::named("Test federation CA")
    }

    /// A PKI whose CA has its own name (another organisation's CA).
    pub fn named(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = CertDir::new(dir.path().join("certs"));
        certs
            .create_ca(name, Validity::days_from_now(30))
            .expect("create CA");
        Self { dir, certs }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.certs.ca_cert_path()
    }

    pub fn node(&self, id: &str) -> NodeId {
        let id = NodeId::new(id).unwrap();
        self.certs
            .issue(
                &id,
                &Usage::Node {
                    ips: vec!["127.0.0.1".parse().unwrap()],
                    dns: vec![],
                },
                Validity::days_from_now(30),
            )
            .expect("issue node certificate");
        id
    }

    pub fn client(&self, id: &str) -> NodeId {
        let id = NodeId::new(id).unwrap();
        self.certs
            .issue(&id, &Usage::Client, Validity::days_from_now(30))
            .expect("issue client certificate");
        id
    }

    /// TLS material of an issued identity, trusting this PKI's CA.
    pub fn material(&self, id: &NodeId) -> TlsMaterial {
        self.material_with_crls(id, vec![])
    }

    pub fn material_with_crls(&self, id: &NodeId, crls: Vec<PathBuf>) -> TlsMaterial {
        TlsMaterial::load(
            &TlsPaths {
                cert: self.certs.cert_path(id.as_str()),
                key: self.certs.key_path(id.as_str()),
                trust_anchors: vec![self.ca_cert()],
                crls,
            },
            id,
        )
        .expect("load TLS material")
    }
}

/// A `[[peer]]` or `[[client]]` entry for [`write_config`].
pub enum Entry {
    Peer {
        id: String,
        address: String,
        role: &'static str,
    },
    Client {
        id: String,
        role: &'static str,
    },
}

pub fn peer(id: &str, address: &str) -> Entry {
    Entry::Peer {
        id: id.to_owned(),
        address: address.to_owned(),
        role: "peer",
    }
}

pub fn client(id: &str, role: &'static str) -> Entry {
    Entry::Client {
        id: id.to_owned(),
        role,
    }
}

/// Writes `DIR/ID.toml` for node `id` of `pki`, listening on 127.0.0.1:0.
pub fn write_config(pki: &Pki, id: &NodeId, entries: &[Entry], crls: &[PathBuf]) -> PathBuf {
    let mut config = node_toml(pki, id, &pki.path().join(format!("data-{id}")));
    for crl in crls {
        config = config.crl(crl);
    }
    for entry in entries {
        config = config.entry(match entry {
            Entry::Peer { id, address, role } => builder::Entry::peer(id, address).role(role),
            // Read-only clients name every type, so their limit is the default max_tlp GREEN.
            Entry::Client { id, role } => {
                builder::Entry::client(id, role).policy(if *role == "read_only" {
                    builder::Policy::all_types()
                } else {
                    builder::Policy::default()
                })
            }
        });
    }
    let path = pki.path().join(format!("{id}.toml"));
    config.write(&path).expect("write config");
    path
}

/// The configuration of node `id` of `pki`, listening on 127.0.0.1:0 and keeping its
/// store in `data_dir`, with no partners yet.
pub fn node_toml(pki: &Pki, id: &NodeId, data_dir: &Path) -> builder::NodeToml {
    builder::NodeToml::new(
        id.as_str(),
        "127.0.0.1:0",
        data_dir,
        pki.certs.cert_path(id.as_str()),
        pki.certs.key_path(id.as_str()),
        pki.ca_cert(),
    )
}

/// A client connection to `node` as `who` (an identity issued by `pki`), within 30 s.
pub async fn connect(pki: &Pki, node: &Node, who: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    let tls = pki.material(&who).client_config().unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        NodeClient::connect(tls, &who, &node.local_addr().to_string(), node.id()),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Loads a config file and starts the node. A node started again in the same process
/// may find sled's lock still held for a moment by the store just shut down (its
/// background threads let go of it asynchronously), or its port taken for a moment:
/// those are waited out, up to a deadline.
pub async fn start(config: &Path) -> Node {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let loaded = Config::load(config).expect("valid config");
        match Node::start(loaded).await {
            Ok(node) => return node,
            // A node started again on the port it had may find another test's
            // short-lived socket on it: waited out too.
            Err(e)
                if (format!("{e:?}").contains("could not acquire lock")
                    || format!("{e:?}").contains("AddrInUse"))
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("node starts: {e:?}"),
        }
    }
}

/// Calls Hello on `node` at `addr` as the identity `material`; every failure
/// (connect, handshake, call) as one string.
pub async fn hello(
    material: &TlsMaterial,
    addr: std::net::SocketAddr,
    node: &NodeId,
) -> Result<entente::rpc::proto::HelloResponse, String> {
    let tls = material.client_config().map_err(|e| e.to_string())?;
    let client = tokio::time::timeout(
        Duration::from_secs(20),
        NodeClient::connect(tls, &material.id, &addr.to_string(), node),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(20), client.hello())
        .await
        .map_err(|_| "hello timed out".to_owned())?
        .map_err(|e| e.to_string())
}

/// The `[node]` section of a configuration for node `id` of `pki`, listening on
/// 127.0.0.1:0 and keeping its store in `data_dir`; `[[peer]]` and `[[client]]`
/// entries may follow.
pub fn node_section(pki: &Pki, id: &NodeId, data_dir: &Path) -> String {
    node_toml(pki, id, data_dir).render()
}

/// Sends the node's logs to the test output (shown for failing tests); `RUST_LOG`
/// filters, default `entente=info`.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("entente=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Opens a store, waiting (up to a deadline) while sled still holds the directory's
/// lock for a store just dropped; any other error is returned at once.
pub fn open_store(
    dir: &Path,
    owner: &NodeId,
    cache_bytes: u64,
) -> Result<entente::store::SledStore, entente::store::StoreError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut wait = Duration::from_millis(2);
    loop {
        match entente::store::SledStore::open(dir, owner, cache_bytes) {
            Err(entente::store::StoreError::Engine { .. })
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// Starts a real `entente serve` process on `config` (listening on port 0) and returns it
/// with the address it printed, within 30 s; for tests that kill it or read its memory.
pub fn serve(config: &Path) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not start");
    (child, addr)
}

/// A running `entente serve` process with a `[taxii]` listener, killed when dropped.
pub struct TaxiiNode {
    pub child: std::process::Child,
    /// The gRPC address.
    pub addr: String,
    /// The TAXII listener's address.
    pub taxii: std::net::SocketAddr,
}

/// A gRPC client of `node` (a `TaxiiNode`, whose id is `redmond.hq`) with `who`'s
/// certificate.
pub async fn taxii_node_client(
    pki: &Pki,
    node: &TaxiiNode,
    who: &str,
) -> entente::client::NodeClient {
    let who = NodeId::new(who).unwrap();
    let hq = NodeId::new("redmond.hq").unwrap();
    entente::client::NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.addr,
        &hq,
    )
    .await
    .unwrap()
}

/// Every disclosure-ledger record of `partner` that `node` (a `TaxiiNode`'s gRPC
/// address) holds, read by its operator `redmond.hq`.
pub async fn ledger_records(
    pki: &Pki,
    node: &TaxiiNode,
    partner: &str,
) -> Vec<entente::rpc::proto::LedgerRecord> {
    let operator = taxii_node_client(pki, node, "redmond.hq").await;
    let mut records = operator
        .ledger_show(entente::rpc::proto::LedgerShowRequest {
            partner: partner.into(),
            since_unix_ms: 0,
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(record) = records.message().await.unwrap() {
        out.push(record);
    }
    out
}

impl Drop for TaxiiNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a real `entente serve` process on `config` (with a `[taxii]` section, both
/// listeners on port 0) and returns it with both addresses it printed, within 30 s.
pub fn serve_taxii(config: &Path) -> TaxiiNode {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut grpc = None;
        for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                grpc = Some(addr.to_owned());
            }
            if let Some((_, url)) = line.split_once(" TAXII 2.1 on https://") {
                let taxii = url.trim_end_matches("/taxii2/").to_owned();
                let _ = tx.send((grpc.clone().unwrap_or_default(), taxii));
            }
        }
    });
    let (addr, taxii) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not start its TAXII listener");
    TaxiiNode {
        child,
        addr,
        taxii: taxii.parse().expect("TAXII address"),
    }
}

/// Hashes `password` with `entente taxii hash-password`, as an operator would.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["taxii", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn entente taxii hash-password");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "hash-password failed");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Deletes the store's sled metadata in `data` (its files and blobs), leaving the bundle
/// log and the ledger: what `entente store recover` rebuilds from.
pub fn remove_sled(data: &Path) {
    for entry in std::fs::read_dir(data).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "db" || name == "conf" || name.starts_with("snap.") {
            std::fs::remove_file(entry.path()).unwrap();
        } else if name == "blobs" {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
}

/// The position in `server`'s feed that the cursor `puller` keeps for it names, opened
/// with the position key in the server's data directory (`data-{server}` under `pki`,
/// as `write_config` places it) under the puller's policy in force at the server: a
/// test may look inside what only the server can read. 0 when there is no cursor or it
/// does not open.
pub fn opened_cursor(pki: &Pki, server: &Node, puller: &Node) -> u64 {
    let id = server.id();
    let token = puller.engine().store().cursor(id).unwrap();
    let tokens =
        entente::sync::PositionTokens::load_or_create(&pki.path().join(format!("data-{id}")))
            .unwrap();
    let policy = server.engine().policy().partner_fingerprint(puller.id());
    tokens.open(puller.id(), &policy, &token).unwrap_or(0)
}

/// Publishes each of `bundles` through `client` as a bundle of its own, in order, with
/// the default distribution; panics if the node refuses.
pub async fn publish_each(client: &NodeClient, bundles: Vec<Vec<entente::wire::Item>>) {
    let requests: Vec<entente::rpc::proto::PublishRequest> = bundles
        .into_iter()
        .map(|items| entente::rpc::proto::PublishRequest {
            items,
            distribution: Some(entente::wire::Distribution::default()),
            groups: vec![],
        })
        .collect();
    client.publish(tokio_stream::iter(requests)).await.unwrap();
}
