//! `entente demo`: a whole federation on loopback in one command.
//!
//! Four real nodes (each with its own store, certificate and mTLS listener) and two
//! clients, all under a throwaway federation CA in a temporary directory: headquarters
//! publishes a campaign across every TLP level, one sharing group and one revocation;
//! a satellite office publishes a find of its own; the demo waits for the federation to
//! converge, prints who holds what and why (each decision comes from the sending node's
//! `Admin.Explain`, the code behind `entente policy explain`), verifies every held
//! bundle's origin signature again from the stored bytes on every node, and lets a
//! rogue peer try a forgery and a tampered copy. Every claim printed is checked: any
//! inconsistency ends the demo with an error.

mod rogue;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::certs::{CertDir, Usage, Validity};
use crate::client::NodeClient;
use crate::config::Config;
use crate::config::builder::{Entry, NodeToml, Policy};
use crate::crypto::BundleSigner;
use crate::engine::now_ms;
use crate::model::{BundleId, Distribution, ItemId, NodeId, Tlp};
use crate::node::Node;
use crate::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use crate::transport::{TlsMaterial, TlsPaths};
use crate::wire;

/// How long the demo waits for anything (convergence, a rejection) before it fails.
const DEADLINE: Duration = Duration::from_secs(30);
/// How long node feeds must stay still before the federation counts as converged.
const QUIET: Duration = Duration::from_millis(300);

const HQ: &str = "redmond.hq";
const BERLIN: &str = "berlin.office";
const SINGAPORE: &str = "singapore.office";
const POLICE: &str = "cyberunit.police";
const RESEARCHER: &str = "researcher.uni-x";
const ALICE: &str = "analyst.alice";
const JONAS: &str = "analyst.jonas";
const ROGUE: &str = "rogue.node";
const CAMPAIGN: &str = "campaign:cracked-c2";

/// The nodes, in table order.
const NODES: [&str; 4] = [HQ, BERLIN, SINGAPORE, POLICE];

/// Options of `entente demo`.
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    /// Leave the federation running until interrupted, and print how to query it.
    pub keep_running: bool,
}

/// One indicator of the sample campaign.
struct Sample {
    tlp: Tlp,
    indicator_type: &'static str,
    value: &'static str,
    description: &'static str,
}

const fn sample(
    tlp: Tlp,
    indicator_type: &'static str,
    value: &'static str,
    description: &'static str,
) -> Sample {
    Sample {
        tlp,
        indicator_type,
        value,
        description,
    }
}

/// Headquarters' first bundle: open distribution, every marking from CLEAR to AMBER+STRICT.
const CAMPAIGN_OPEN: &[Sample] = &[
    sample(
        Tlp::Clear,
        "domain",
        "update-cdn.example.net",
        "Staging domain of a cracked red-team framework, named in public reporting",
    ),
    sample(
        Tlp::Clear,
        "ipv4",
        "203.0.113.45",
        "Payload host named in public reporting",
    ),
    sample(
        Tlp::Green,
        "domain",
        "cdn-telemetry.example.org",
        "Beacon command-and-control domain",
    ),
    sample(
        Tlp::Green,
        "url",
        "https://cdn-telemetry.example.org/jquery.min.js",
        "Beacon check-in URI (malleable profile imitating jQuery)",
    ),
    sample(
        Tlp::Green,
        "ipv4",
        "198.51.100.77",
        "Redirector in front of the team server",
    ),
    sample(
        Tlp::Green,
        "sha256",
        "5f2b7c1d9e8a4b3c6d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
        "Beacon payload (stageless, x64)",
    ),
    sample(
        Tlp::Amber,
        "ipv4",
        "192.0.2.150",
        "Team server behind the redirectors",
    ),
    sample(
        Tlp::Amber,
        "domain",
        "ops-sync.example.com",
        "Second-stage command-and-control domain",
    ),
    sample(
        Tlp::Amber,
        "md5",
        "9e107d9d372bb6826bd81d3542a419d6",
        "Loader dropped by the phishing document",
    ),
    sample(
        Tlp::AmberStrict,
        "domain",
        "vpn-portal.example.com",
        "Lure imitating this organisation's VPN portal",
    ),
];

/// Headquarters' second bundle: AMBER, only for the sharing group `satellites`.
const CAMPAIGN_GROUP: &[Sample] = &[
    sample(
        Tlp::Amber,
        "ipv6",
        "2001:db8:bad:c2::10",
        "Fallback command-and-control address seen from the offices",
    ),
    sample(
        Tlp::Amber,
        "url",
        "https://ops-sync.example.com/submit.php",
        "Exfiltration endpoint",
    ),
];

/// Headquarters' third bundle: RED, for berlin.office only, one transfer.
const CAMPAIGN_RED: &[Sample] = &[sample(
    Tlp::Red,
    "sha1",
    "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",
    "Implant recovered during the incident response in Berlin",
)];

/// What berlin.office publishes itself.
const BERLIN_FIND: &[Sample] = &[sample(
    Tlp::Green,
    "domain",
    "login-berlin-office.example.net",
    "Phishing domain imitating the Berlin office's sign-in page",
)];

/// The redirector turns out to be a shared CDN address: headquarters revokes it.
const REVOKED_VALUE: &str = "198.51.100.77";

/// A legitimate site the rogue tries to get blocklisted.
const TAMPERED_VALUE: &str = "login.example.com";
const FORGED_VALUE: &str = "intranet-sso.example.com";

/// One item the demo published, as the table shows it.
struct Published {
    id: String,
    tlp: Tlp,
    label: String,
    origin: &'static str,
}

/// The running federation.
struct Federation {
    dir: tempfile::TempDir,
    certs: CertDir,
    nodes: Vec<Node>,
    /// Each node's own operator connection (role admin: sees everything it holds).
    admins: Vec<NodeClient>,
    researcher: NodeClient,
    rogue: rogue::Rogue,
}

impl Federation {
    fn index(&self, id: &str) -> usize {
        NODES.iter().position(|n| *n == id).unwrap_or(0)
    }

    fn config_path(&self, id: &str) -> PathBuf {
        self.dir.path().join(id).join("entente.toml")
    }

    fn client_config_path(&self, id: &str) -> PathBuf {
        self.dir.path().join("clients").join(format!("{id}.toml"))
    }
}

/// Runs the demo; `Ok` only if every check held. SIGINT or SIGTERM before the report is
/// complete stops the federation and removes its directory (with the CA's key) before
/// exiting with an error; with `--keep-running`, they end the demo normally.
pub async fn run(options: DemoOptions) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let serving = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let demo = run_demo(options, serving.clone());
    tokio::pin!(demo);
    tokio::select! {
        result = &mut demo => return result,
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    if serving.load(std::sync::atomic::Ordering::SeqCst) {
        // The report is done and the federation is serving: it heard the signal too,
        // and stops in order.
        return demo.await;
    }
    // Dropping the demo drops the nodes and the temporary directory.
    bail!("interrupted: the demo federation was stopped and its temporary directory removed")
}

async fn run_demo(
    options: DemoOptions,
    serving: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    let started = Instant::now();
    println!("Entente demo: a federation of four nodes and two clients on loopback, each node");
    println!("with its own store, certificate and mutually authenticated gRPC listener.");
    println!();

    let fed = start_federation().await?;
    println!();

    let published = publish_campaign(&fed).await?;
    println!();

    let converged = wait_for_convergence(&fed).await?;
    println!(
        "[4/6] converged in {:.2} s: every link has pulled its peer's whole change feed (then {} ms with no feed moving)",
        converged.as_secs_f64(),
        QUIET.as_millis()
    );
    println!();

    let holdings = holdings(&fed, &published).await?;
    print_table(&fed, &published, &holdings).await?;
    println!();

    let (bundles, items) = verify_signatures(&fed, &holdings).await?;
    println!();

    let rejections = rogue_attempts(&fed, &published).await?;
    println!();

    let counts: Vec<String> = NODES
        .iter()
        .enumerate()
        .map(|(n, id)| format!("{id} {}", holdings.nodes[n].len()))
        .collect();
    println!(
        "Summary: demo passed in {:.1} s.",
        started.elapsed().as_secs_f64()
    );
    let summary = format!(
        "{HQ} published {} indicators in three signed bundles (one for the sharing group \
         `satellites`, one RED for {BERLIN} alone) and revoked one; {BERLIN} published one of \
         its own. The federation converged to exactly what each agreement allows (items held: \
         {}; {RESEARCHER}, a read-only client of {HQ}, may see {}). Every held copy was \
         verified again from the stored bytes: {bundles} bundle copies, {items} items, each \
         signed by its origin and matching its digest, also where items were withheld from \
         the receiver and travelled as digests only. The rogue peer's {} attempts (a bundle it signed in {HQ}'s name and a \
         tampered copy of a real one) were rejected by {SINGAPORE} and went no further.",
        published.len() - BERLIN_FIND.len(),
        counts.join(", "),
        holdings.researcher.len(),
        rejections,
    );
    println!("{}", wrap(&summary, 92));

    if options.keep_running {
        let example = published
            .iter()
            .find(|p| p.label.starts_with("md5"))
            .map_or("ID", |p| p.id.as_str());
        keep_running(&fed, example, &serving).await?;
    }
    stop(fed).await;
    Ok(())
}

fn node_toml(dir: &Path, certs: &CertDir, id: &str, listen: &str) -> NodeToml {
    NodeToml::new(
        id,
        listen,
        dir.join(id).join("data"),
        certs.cert_path(id),
        certs.key_path(id),
        certs.ca_cert_path(),
    )
    .comment("Written by `entente demo`.")
    .cache_mb(16)
}

/// The policy of a satellite office and its headquarters towards each other.
fn satellite_policy() -> Policy {
    Policy::all_types().max_tlp("RED").forward_third_party(true)
}

async fn start_federation() -> Result<Federation> {
    let dir = tempfile::Builder::new()
        .prefix("entente-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let certs = CertDir::new(dir.path().join("pki"));
    let validity = Validity::days_from_now(2);
    certs.create_ca("Entente demo federation CA", validity)?;
    let loopback = Usage::Node {
        ips: vec!["127.0.0.1".parse()?],
        dns: vec![],
    };
    for id in NODES.iter().chain([&ROGUE]) {
        certs.issue(&NodeId::new(id)?, &loopback, validity)?;
    }
    for id in [ALICE, JONAS, RESEARCHER] {
        certs.issue(&NodeId::new(id)?, &Usage::Client, validity)?;
    }
    println!(
        "[1/6] federation CA and ECDSA P-256 certificates for {} nodes, a rogue node and 3 clients in {}",
        NODES.len(),
        dir.path().display()
    );

    // Ports first, bound and kept, so every configuration can name its peers' addresses.
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    for _ in NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(listener.local_addr()?.to_string());
        listeners.push(listener);
    }
    let rogue_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let rogue_addr = rogue_listener.local_addr()?.to_string();
    let [hq, berlin, singapore, police] = [0, 1, 2, 3].map(|n| addresses[n].as_str());

    let configs = [
        node_toml(dir.path(), &certs, HQ, hq)
            .entry(Entry::peer(BERLIN, berlin).policy(satellite_policy()))
            .entry(Entry::peer(SINGAPORE, singapore).policy(satellite_policy()))
            .entry(
                Entry::peer(POLICE, police).policy(
                    Policy::default()
                        .max_tlp("AMBER")
                        .allow_types(["ipv4", "ipv6", "domain", "url"])
                        .forward_third_party(false),
                ),
            )
            .entry(Entry::client(ALICE, "analyst"))
            .entry(
                Entry::client(RESEARCHER, "read_only").policy(Policy::all_types().max_tlp("GREEN")),
            )
            .section(&format!(
                "[groups]\nsatellites = [\"{BERLIN}\", \"{SINGAPORE}\"]"
            )),
        node_toml(dir.path(), &certs, BERLIN, berlin)
            .entry(Entry::peer(HQ, hq).policy(satellite_policy()))
            .entry(Entry::client(JONAS, "analyst")),
        node_toml(dir.path(), &certs, SINGAPORE, singapore)
            .entry(Entry::peer(HQ, hq).policy(satellite_policy()))
            .entry(
                Entry::peer(ROGUE, &rogue_addr).policy(
                    Policy::all_types()
                        .max_tlp("GREEN")
                        .forward_third_party(false),
                ),
            ),
        node_toml(dir.path(), &certs, POLICE, police).entry(
            Entry::peer(HQ, hq).policy(
                Policy::all_types()
                    .max_tlp("AMBER")
                    .forward_third_party(false),
            ),
        ),
    ];

    let mut nodes = Vec::new();
    for ((id, text), listener) in NODES.iter().zip(configs).zip(listeners) {
        let path = dir.path().join(id).join("entente.toml");
        std::fs::create_dir_all(dir.path().join(id))?;
        text.write(&path)?;
        let config = Config::load(&path)?;
        nodes.push(
            Node::start_with_listener(config, Some(listener))
                .await
                .with_context(|| format!("cannot start {id}"))?,
        );
    }

    let material = |id: &str| -> Result<TlsMaterial> {
        let node = NodeId::new(id)?;
        Ok(TlsMaterial::load(
            &TlsPaths {
                cert: certs.cert_path(id),
                key: certs.key_path(id),
                trust_anchors: vec![certs.ca_cert_path()],
                crls: vec![],
            },
            &node,
        )?)
    };
    let connect = async |who: &str, node: &Node| -> Result<NodeClient> {
        let tls = material(who)?.client_config()?;
        Ok(NodeClient::connect(
            tls,
            &NodeId::new(who)?,
            &node.local_addr().to_string(),
            node.id(),
        )
        .await?)
    };
    let mut admins = Vec::new();
    for node in &nodes {
        admins.push(connect(node.id().as_str(), node).await?);
    }
    let researcher = connect(RESEARCHER, &nodes[0]).await?;
    let rogue = rogue::Rogue::start(&material(ROGUE)?, rogue_listener, &NodeId::new(SINGAPORE)?)?;

    // Client configurations, for `--keep-running` and for the reader's own commands.
    std::fs::create_dir_all(dir.path().join("clients"))?;
    for (who, node) in [(ALICE, 0), (JONAS, 1), (RESEARCHER, 0)] {
        let text = format!(
            "[client]\nid = \"{who}\"\ncert = \"{}\"\nkey = \"{}\"\ntrust_anchors = [\"{}\"]\nnode = \"{}\"\nnode_id = \"{}\"\n",
            certs.cert_path(who).display(),
            certs.key_path(who).display(),
            certs.ca_cert_path().display(),
            nodes[node].local_addr(),
            nodes[node].id(),
        );
        std::fs::write(dir.path().join("clients").join(format!("{who}.toml")), text)?;
    }

    println!("[2/6] nodes started (real stores on disk, TLS 1.3 with client certificates):");
    let roles = [
        "headquarters: origin of the campaign; passes the offices' GREEN finds on",
        "satellite office: everything up to RED from hq",
        "satellite office: everything up to RED from hq; also peers with rogue.node, a partner turned hostile",
        "law-enforcement partner: up to AMBER; ipv4, ipv6, domain and url only",
    ];
    for (node, role) in nodes.iter().zip(roles) {
        println!(
            "      {:<18} {:<17} {role}",
            node.id().as_str(),
            node.local_addr().to_string()
        );
    }
    println!(
        "      {RESEARCHER:<18} {:<17} read-only client of {HQ}, up to GREEN",
        "(client)"
    );
    Ok(Federation {
        dir,
        certs,
        nodes,
        admins,
        researcher,
        rogue,
    })
}

fn to_wire(
    samples: &'static [Sample],
    published: &mut Vec<(String, &'static Sample)>,
) -> Vec<wire::Item> {
    samples
        .iter()
        .map(|s| {
            let id = ItemId::new_random().to_string();
            published.push((id.clone(), s));
            wire::Item {
                id,
                modified_unix_ms: 0,
                tlp: wire::Tlp::from(s.tlp) as i32,
                tags: vec![CAMPAIGN.to_owned()],
                kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                    indicator_type: s.indicator_type.to_owned(),
                    value: s.value.to_owned(),
                    description: s.description.to_owned(),
                    confidence: 80,
                    ..Default::default()
                })),
            }
        })
        .collect()
}

/// Publishes `items` as one bundle with `distribution`, expanded for `groups`.
async fn publish_one(
    client: &NodeClient,
    items: Vec<wire::Item>,
    distribution: wire::Distribution,
    groups: &[&str],
) -> Result<()> {
    let request = PublishRequest {
        items,
        distribution: Some(distribution),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .with_context(|| format!("publishing at {}", client.node()))?;
    Ok(())
}

async fn publish_campaign(fed: &Federation) -> Result<Vec<Published>> {
    let connect = async |who: &str| -> Result<NodeClient> {
        let settings = crate::config::ClientSettings::load(&fed.client_config_path(who))?;
        Ok(NodeClient::connect_with(&settings).await?)
    };
    let alice = connect(ALICE).await?;
    let jonas = connect(JONAS).await?;
    let mut hq_items = Vec::new();
    let mut berlin_items = Vec::new();
    let open = to_wire(CAMPAIGN_OPEN, &mut hq_items);
    let group = to_wire(CAMPAIGN_GROUP, &mut hq_items);
    let red = to_wire(CAMPAIGN_RED, &mut hq_items);
    let find = to_wire(BERLIN_FIND, &mut berlin_items);
    let anywhere = wire::Distribution::default;
    publish_one(&alice, open, anywhere(), &[]).await?;
    publish_one(&alice, group, anywhere(), &["satellites"]).await?;
    let berlin_only = wire::Distribution {
        max_hops: Some(1),
        recipients: vec![BERLIN.into()],
    };
    publish_one(&alice, red, berlin_only, &[]).await?;
    publish_one(&jonas, find, anywhere(), &[]).await?;
    // The redirector is a shared CDN address: revoke it (same id, newer version; the
    // revocation carries the indicator's marking, type and tags, and is judged on them).
    let (revoked_id, revoked) = hq_items
        .iter()
        .find(|(_, s)| s.value == REVOKED_VALUE)
        .context("the sample campaign lost its revoked indicator")?;
    let revocation = wire::Item {
        id: revoked_id.clone(),
        modified_unix_ms: 0,
        tlp: wire::Tlp::from(revoked.tlp) as i32,
        tags: vec![CAMPAIGN.to_owned()],
        kind: Some(wire::item::Kind::Revocation(wire::Revocation {
            reason: "shared CDN address: false positive".into(),
            indicator_type: revoked.indicator_type.into(),
            indicator: None,
        })),
    };
    publish_one(&alice, vec![revocation], anywhere(), &[]).await?;

    let count = |tlp: Tlp| hq_items.iter().filter(|(_, s)| s.tlp == tlp).count();
    println!(
        "[3/6] {ALICE} published campaign `{CAMPAIGN}` at {HQ}: {} indicators in 3 signed bundles",
        hq_items.len()
    );
    println!(
        "      ({} CLEAR, {} GREEN, {} AMBER, {} AMBER+STRICT, {} RED; the second bundle only for the",
        count(Tlp::Clear),
        count(Tlp::Green),
        count(Tlp::Amber),
        count(Tlp::AmberStrict),
        count(Tlp::Red)
    );
    println!("      group `satellites`, the third RED for {BERLIN} alone, at most one transfer);");
    println!(
        "      {JONAS} published 1 indicator at {BERLIN}; then {ALICE} revoked {REVOKED_VALUE}"
    );

    let label = |s: &Sample, revoked: bool| {
        let mut value = s.value.to_owned();
        let length = value.chars().count();
        if length > 41 {
            value = value
                .chars()
                .take(20)
                .chain(['…'])
                .chain(value.chars().skip(length - 20))
                .collect();
        }
        format!(
            "{:<7}{}{}",
            s.indicator_type,
            value,
            if revoked { " (revoked)" } else { "" }
        )
    };
    let mut published = Vec::new();
    for (origin, items) in [(HQ, &hq_items), (BERLIN, &berlin_items)] {
        for (id, s) in items.iter() {
            published.push(Published {
                id: id.clone(),
                tlp: s.tlp,
                label: label(s, s.value == REVOKED_VALUE),
                origin,
            });
        }
    }
    Ok(published)
}

/// Waits until every link has pulled its peer's whole change feed and no feed has moved
/// for a while.
async fn wait_for_convergence(fed: &Federation) -> Result<Duration> {
    let started = Instant::now();
    let links: Vec<(usize, usize)> = [
        (HQ, BERLIN),
        (HQ, SINGAPORE),
        (HQ, POLICE),
        (BERLIN, HQ),
        (SINGAPORE, HQ),
        (POLICE, HQ),
    ]
    .iter()
    .map(|(a, b)| (fed.index(a), fed.index(b)))
    .collect();
    let heads = || -> Vec<u64> {
        fed.nodes
            .iter()
            .map(|n| n.engine().store().feed_head())
            .collect()
    };
    let mut last = heads();
    let mut still_since = Instant::now();
    // When every link was last seen at its peer's head, with no feed moving since.
    let mut caught_up_at: Option<Instant> = None;
    loop {
        ensure!(
            started.elapsed() < DEADLINE,
            "the federation did not converge within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
        let now = heads();
        if now != last {
            last = now;
            still_since = Instant::now();
            caught_up_at = None;
            continue;
        }
        // A peer's positions are sealed: each link says whether its peer's last
        // checkpoint found it caught up.
        let mut caught_up = true;
        for (puller, server) in &links {
            let peer = fed.nodes[*server].id().as_str();
            let status = fed.admins[*puller].links().await?;
            caught_up &= status.links.iter().any(|l| l.peer == peer && l.caught_up);
        }
        if !caught_up {
            caught_up_at = None;
            continue;
        }
        let at = *caught_up_at.get_or_insert_with(Instant::now);
        if still_since.elapsed() >= QUIET {
            return Ok(at - started);
        }
    }
}

/// What every node (and the researcher) holds, by item id.
struct Holdings {
    nodes: Vec<BTreeMap<String, StoredItem>>,
    researcher: BTreeMap<String, StoredItem>,
}

async fn holdings(fed: &Federation, published: &[Published]) -> Result<Holdings> {
    let mut nodes = Vec::new();
    for admin in &fed.admins {
        let mut held = BTreeMap::new();
        for p in published {
            if let Some(stored) = admin.get(&p.id).await? {
                held.insert(p.id.clone(), stored);
            }
        }
        nodes.push(held);
    }
    let mut researcher = BTreeMap::new();
    for p in published {
        if let Some(stored) = fed.researcher.get(&p.id).await? {
            researcher.insert(p.id.clone(), stored);
        }
    }
    Ok(Holdings { nodes, researcher })
}

/// The nodes `n` pulls from (the rogue aside).
fn upstream(id: &str) -> &'static [&'static str] {
    match id {
        HQ => &[BERLIN, SINGAPORE, POLICE],
        BERLIN => &[HQ],
        SINGAPORE => &[HQ],
        POLICE => &[HQ],
        _ => &[HQ],
    }
}

async fn print_table(fed: &Federation, published: &[Published], holdings: &Holdings) -> Result<()> {
    println!(
        "[5/6] who holds what (hop = transfers from the origin; a letter = withheld, see below):"
    );
    let columns = ["hq", "berlin", "singapore", "police", "researcher"];
    let mut header = format!("      {:<48} {:<13}", "item", "TLP");
    for c in columns {
        header.push_str(&format!("{c:<11}"));
    }
    println!("{}", header.trim_end());
    let mut reasons: Vec<String> = Vec::new();
    let mut allowed_example = None;
    for p in published {
        let mut line = format!("      {:<48} {:<13}", p.label, p.tlp.as_str());
        for (column, who) in NODES.iter().chain([&RESEARCHER]).enumerate() {
            let held = if column < NODES.len() {
                holdings.nodes[column].get(&p.id)
            } else {
                holdings.researcher.get(&p.id)
            };
            // The decisions of the nodes this one would receive the item from.
            let mut decisions = Vec::new();
            if *who != p.origin {
                for from in upstream(who) {
                    let n = fed.index(from);
                    if holdings.nodes[n].contains_key(&p.id) {
                        let answer = fed.admins[n].explain(who, &p.id).await?;
                        decisions.push((*from, answer.allow, answer.rule));
                    }
                }
            }
            let cell = match held {
                Some(_) if *who == p.origin => "origin".to_owned(),
                Some(stored) => {
                    let from = stored
                        .provenance
                        .as_ref()
                        .map(|p| p.received_from.clone())
                        .unwrap_or_default();
                    // The node that sent it (a client's items come from its node).
                    let sender = if column < NODES.len() {
                        from.as_str()
                    } else {
                        HQ
                    };
                    let Some((from, _, rule)) = decisions
                        .iter()
                        .find(|(f, allow, _)| *f == sender && *allow)
                    else {
                        bail!(
                            "{who} holds {} from {sender}, which is not a node it pulls from or does not allow it",
                            p.label
                        );
                    };
                    if allowed_example.is_none() && p.tlp == Tlp::Amber {
                        allowed_example = Some(format!("{from} → {who}: {rule}"));
                    }
                    match stored.provenance.as_ref().map(|p| p.hops) {
                        Some(hops) if column < NODES.len() => format!("hop {hops}"),
                        _ => "yes".to_owned(),
                    }
                }
                None => {
                    if let Some((from, _, rule)) = decisions.iter().find(|d| d.1) {
                        bail!("{who} lacks {} although {from} allows it: {rule}", p.label);
                    }
                    let Some((from, _, rule)) = decisions
                        .iter()
                        .find(|d| d.0 == p.origin)
                        .or_else(|| decisions.first())
                    else {
                        bail!("no node near {who} holds {}", p.label);
                    };
                    let reason = format!("{from} → {who}: {rule}");
                    let k = match reasons.iter().position(|r| *r == reason) {
                        Some(k) => k,
                        None => {
                            reasons.push(reason);
                            reasons.len() - 1
                        }
                    };
                    format!("-  ({})", footnote(k))
                }
            };
            line.push_str(&format!("{cell:<11}"));
        }
        println!("{}", line.trim_end());
    }
    println!(
        "      why (each decision by the node that would send the item, as `entente policy explain` shows it):"
    );
    for (k, reason) in reasons.iter().enumerate() {
        println!("      ({}) {reason}", footnote(k));
    }
    if let Some(example) = allowed_example {
        println!("      held cells were allowed in the same way, e.g. {example}");
    }
    Ok(())
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let length = word.chars().count();
        if line > 0 && line + 1 + length > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += length;
    }
    out
}

fn footnote(k: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    let mut text = String::new();
    let mut k = k;
    loop {
        text.insert(0, char::from(letters[k % 26]));
        if k < 26 {
            return text;
        }
        k = k / 26 - 1;
    }
}

/// Verifies again, on every node, every bundle behind the items it holds.
async fn verify_signatures(fed: &Federation, holdings: &Holdings) -> Result<(usize, usize)> {
    println!("[6/6] origin signatures, verified again from the bytes each node stored:");
    let mut bundles_total = 0;
    let mut items_total = 0;
    for (n, node) in fed.nodes.iter().enumerate() {
        let mut bundles: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, stored) in &holdings.nodes[n] {
            let provenance = stored.provenance.clone().unwrap_or_default();
            ensure!(
                provenance.signature_verified,
                "{} holds {id} without a verified signature",
                node.id()
            );
            bundles
                .entry(provenance.bundle_id)
                .or_default()
                .insert(id.clone());
        }
        let mut digests_only = 0;
        for (bundle, ids) in &bundles {
            let verified = node
                .engine()
                .verify_held(&BundleId::parse(bundle)?)
                .with_context(|| format!("{}: bundle {bundle} does not verify", node.id()))?
                .with_context(|| format!("{}: bundle {bundle} is missing", node.id()))?;
            let got: BTreeSet<String> = verified
                .items()
                .iter()
                .map(|v| v.item.id.to_string())
                .collect();
            ensure!(
                ids.is_subset(&got),
                "{}: bundle {bundle} verified without all of its items",
                node.id()
            );
            digests_only += verified.header().item_count as usize - verified.items().len();
            items_total += verified.items().len();
        }
        bundles_total += bundles.len();
        println!(
            "      {:<18} {} bundles, {} items (+{} as digests only: withheld or superseded): signed by the origin, chain to the CA, digests match",
            node.id().as_str(),
            bundles.len(),
            holdings.nodes[n].len(),
            digests_only,
        );
    }
    Ok((bundles_total, items_total))
}

/// The rogue peer tries a forgery and a tampered copy against singapore.office.
async fn rogue_attempts(fed: &Federation, published: &[Published]) -> Result<usize> {
    println!("      a rogue peer ({ROGUE}, valid federation certificate) serves {SINGAPORE}:");
    let hq = &fed.nodes[0];
    let singapore = fed.index(SINGAPORE);
    let rogue_material = TlsMaterial::load(
        &TlsPaths {
            cert: fed.certs.cert_path(ROGUE),
            key: fed.certs.key_path(ROGUE),
            trust_anchors: vec![fed.certs.ca_cert_path()],
            crls: vec![],
        },
        &NodeId::new(ROGUE)?,
    )?;

    // 1. A bundle signed with the rogue's own key that names redmond.hq as its origin.
    let forger = BundleSigner::new(
        NodeId::new(HQ)?,
        rogue_material
            .private_key_pkcs8()
            .context("the rogue's key")?,
        rogue_material.certificate_der(),
    )?;
    let forged_item = crate::model::Item::from_draft(
        wire::Item {
            id: ItemId::new_random().to_string(),
            modified_unix_ms: now_ms(),
            tlp: wire::Tlp::Green as i32,
            tags: vec![CAMPAIGN.into()],
            kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                indicator_type: "domain".into(),
                value: FORGED_VALUE.into(),
                ..Default::default()
            })),
        },
        HQ,
        now_ms(),
    )?;
    let forged = forger
        .sign(&[forged_item], &Distribution::default(), now_ms())?
        .to_wire(|_| true);

    // 2. A real bundle of redmond.hq with one disclosed item altered.
    let target = published
        .iter()
        .find(|p| p.origin == HQ && p.tlp == Tlp::Green && p.label.contains("cdn-telemetry"))
        .context("no GREEN item to tamper with")?;
    let stored = hq
        .engine()
        .store()
        .get(&ItemId::parse(&target.id)?)?
        .context("hq lost an item")?;
    let held = hq
        .engine()
        .store()
        .held_bundle(&stored.bundle_id)?
        .context("hq lost a bundle")?;
    let mut tampered = held.signed(
        held.items
            .iter()
            .filter(|item| item.stored.item.id.as_str() == target.id),
    );
    for disclosure in &mut tampered.disclosures {
        use prost::Message;
        let mut changed = wire::Item::decode(disclosure.item_bytes.as_slice())?;
        if let Some(wire::item::Kind::Indicator(indicator)) = &mut changed.kind {
            indicator.value = TAMPERED_VALUE.into();
        }
        disclosure.item_bytes = changed.encode_to_vec();
    }

    let attempts = [
        (
            forged,
            format!(
                "a bundle it signed itself, claiming origin {HQ} (GREEN domain {FORGED_VALUE})"
            ),
        ),
        (
            tampered,
            format!(
                "{HQ}'s real bundle with one item changed to {TAMPERED_VALUE}, a legitimate site"
            ),
        ),
    ];
    let count = attempts.len();
    let singapore_admin = &fed.admins[singapore];
    let feed_before = fed.nodes[singapore].engine().store().feed_head();
    for (k, (bundle, what)) in attempts.into_iter().enumerate() {
        fed.rogue.offer(bundle, 1);
        let started = Instant::now();
        let link = loop {
            let links = singapore_admin.links().await?;
            if let Some(link) = links.links.into_iter().find(|l| l.peer == ROGUE) {
                if link.bundles_rejected > k as u64 {
                    break link;
                }
                ensure!(
                    link.bundles_received == 0,
                    "{SINGAPORE} accepted a bundle from the rogue peer"
                );
            }
            ensure!(
                started.elapsed() < DEADLINE,
                "{SINGAPORE} did not process the rogue's bundle within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        println!("        offered {what}");
        println!("          rejected by {SINGAPORE}: {}", link.last_error);
    }
    // Nothing of either reached the store or its change feed, so nothing can travel on.
    ensure!(
        fed.nodes[singapore].engine().store().feed_head() == feed_before,
        "a rogue bundle entered {SINGAPORE}'s change feed"
    );
    for value in [FORGED_VALUE, TAMPERED_VALUE] {
        for (n, admin) in fed.admins.iter().enumerate() {
            let found = admin
                .query(
                    ItemFilter {
                        value: value.into(),
                        include_expired: true,
                        ..Default::default()
                    },
                    10,
                    vec![],
                )
                .await?
                .items;
            ensure!(found.is_empty(), "{} holds the rogue's {value}", NODES[n]);
        }
    }
    println!("        neither reached a store: no node holds {FORGED_VALUE} or {TAMPERED_VALUE}");
    Ok(count)
}

async fn keep_running(
    fed: &Federation,
    example_item: &str,
    serving: &std::sync::atomic::AtomicBool,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    serving.store(true, std::sync::atomic::Ordering::SeqCst);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "entente".into());
    println!();
    println!(
        "The federation keeps running; Ctrl-C stops it and deletes {}.",
        fed.dir.path().display()
    );
    println!("Try, in another terminal:");
    println!(
        "  {exe} query --config {} --tag {CAMPAIGN}",
        fed.client_config_path(ALICE).display()
    );
    println!(
        "  {exe} query --config {} --tag {CAMPAIGN}    # the researcher: GREEN and CLEAR only",
        fed.client_config_path(RESEARCHER).display()
    );
    println!("  {exe} status --config {}", fed.config_path(HQ).display());
    println!(
        "  {exe} status --wait --config {}    # follows berlin's links until caught up",
        fed.config_path(BERLIN).display()
    );
    println!(
        "  {exe} ledger show --config {}",
        fed.config_path(HQ).display()
    );
    println!(
        "  {exe} policy explain --config {} --partner {POLICE} --item {example_item}",
        fed.config_path(HQ).display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    println!("stopping the federation");
    Ok(())
}

async fn stop(fed: Federation) {
    drop(fed.admins);
    drop(fed.researcher);
    for node in fed.nodes {
        let _ = node.shutdown(Duration::from_secs(5)).await;
    }
    fed.rogue.stop().await;
    drop(fed.dir);
}
