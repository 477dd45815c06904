//! Whole federations against an oracle written from the delivery rule (README): for
//! every node, the set of items it ends up holding, and the hop count at which it holds
//! each, computed as the fixed point of "N discloses item i to P iff rules 1-6 hold"
//! over the links where N serves P (P is configured on N) and P pulls from N (N is
//! configured on P with role `peer`). Real nodes over mTLS must converge to exactly that.
//!
//! No embargo, no expiry and no superseded versions here, so rules 5 and 6 always hold,
//! and a correct sender never sends what the receiver's inbound rules refuse.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Pki;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

const DEADLINE: Duration = Duration::from_secs(30);
/// How long every feed must stay unchanged before a federation counts as settled.
const QUIET: Duration = Duration::from_millis(600);

const TLPS: [Tlp; 5] = [
    Tlp::Clear,
    Tlp::Green,
    Tlp::Amber,
    Tlp::AmberStrict,
    Tlp::Red,
];
const TYPES: [&str; 5] = ["ipv4", "domain", "url", "sha256", "email"];

fn tlp_name(tlp: Tlp) -> &'static str {
    match tlp {
        Tlp::Clear => "CLEAR",
        Tlp::Green => "GREEN",
        Tlp::Amber => "AMBER",
        Tlp::AmberStrict => "AMBER+STRICT",
        Tlp::Red => "RED",
        Tlp::Unspecified => "UNSPECIFIED",
    }
}

/// TLP order, least restricted first.
fn rank(tlp: Tlp) -> usize {
    TLPS.iter()
        .position(|t| *t == tlp)
        .expect("a known marking")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Peer,
    ReadOnly,
}

/// What node `n` says about partner `p` in its `[[peer]]` block for `p`.
#[derive(Clone, Debug)]
struct Link {
    role: Role,
    /// `None`: not named (peer: nothing; read_only: GREEN).
    max_tlp: Option<Tlp>,
    /// `None`: not named (nothing); `Some(["*"])`: every type.
    allow_types: Option<Vec<&'static str>>,
    forward_third_party: bool,
}

impl Link {
    fn peer(max_tlp: Tlp, allow_types: &[&'static str], forward_third_party: bool) -> Self {
        Self {
            role: Role::Peer,
            max_tlp: Some(max_tlp),
            allow_types: Some(allow_types.to_vec()),
            forward_third_party,
        }
    }

    /// A peer whose partner pulls from it but which shares nothing with it.
    fn silent_peer() -> Self {
        Self {
            role: Role::Peer,
            max_tlp: None,
            allow_types: None,
            forward_third_party: false,
        }
    }

    fn toml(&self, id: &str, address: &str) -> String {
        let mut text = format!(
            "\n[[peer]]\nid = \"{id}\"\naddress = \"{address}\"\nrole = \"{}\"\n",
            match self.role {
                Role::Peer => "peer",
                Role::ReadOnly => "read_only",
            }
        );
        if let Some(t) = self.max_tlp {
            writeln!(text, "max_tlp = \"{}\"", tlp_name(t)).unwrap();
        }
        if let Some(types) = &self.allow_types {
            let list: Vec<String> = types.iter().map(|t| format!("\"{t}\"")).collect();
            writeln!(text, "allow_types = [{}]", list.join(", ")).unwrap();
        }
        if self.forward_third_party {
            text.push_str("forward_third_party = true\n");
        }
        text
    }

    /// The marking limit after the role default (README, policy module docs).
    fn effective_max_tlp(&self) -> Option<Tlp> {
        match (self.max_tlp, self.role) {
            (Some(t), _) => Some(t),
            (None, Role::ReadOnly) => Some(Tlp::Green),
            (None, Role::Peer) => None,
        }
    }

    /// Rule 2 (no tags in these tests).
    fn allows(&self, item: &ItemSpec) -> bool {
        let Some(max) = self.effective_max_tlp() else {
            return false;
        };
        let Some(types) = &self.allow_types else {
            return false;
        };
        rank(item.tlp) <= rank(max) && (types.contains(&"*") || types.contains(&item.ty))
    }
}

#[derive(Clone, Debug)]
struct ItemSpec {
    id: String,
    label: String,
    tlp: Tlp,
    ty: &'static str,
    value: String,
    bundle: usize,
    /// For a relationship: its source and target (indices of items of its bundle).
    ends: Option<(usize, usize)>,
}

/// The context type the random federations relate their indicators with.
const RELATIONSHIP: &str = "relationship";

#[derive(Clone, Debug)]
struct BundleSpec {
    origin: usize,
    max_hops: Option<u32>,
    recipients: Vec<usize>,
    /// Published before every bundle that is not: it holds a relationship whose ends
    /// come later.
    ahead: bool,
}

/// A federation: node names, the `[[peer]]` blocks of every node, and what is published where.
#[derive(Clone, Debug, Default)]
struct Federation {
    names: Vec<String>,
    /// `(n, p)`: node `n` configures `p`.
    links: BTreeMap<(usize, usize), Link>,
    bundles: Vec<BundleSpec>,
    items: Vec<ItemSpec>,
}

impl Federation {
    fn node(&mut self, name: &str) -> usize {
        self.names.push(name.to_owned());
        self.names.len() - 1
    }

    fn link(&mut self, n: usize, p: usize, link: Link) {
        self.links.insert((n, p), link);
    }

    fn bundle(&mut self, origin: usize, max_hops: Option<u32>, recipients: &[usize]) -> usize {
        self.bundles.push(BundleSpec {
            origin,
            max_hops,
            recipients: recipients.to_vec(),
            ahead: false,
        });
        self.bundles.len() - 1
    }

    /// A bundle published before the others (see [`BundleSpec::ahead`]).
    fn bundle_ahead(&mut self, origin: usize, max_hops: Option<u32>) -> usize {
        let b = self.bundle(origin, max_hops, &[]);
        self.bundles[b].ahead = true;
        b
    }

    fn item(&mut self, bundle: usize, tlp: Tlp, ty: &'static str) {
        let k = self.items.len();
        let value = match ty {
            "ipv4" => format!("10.{}.{}.{}", bundle % 250, k / 250, k % 250 + 1),
            "domain" => format!("item{k}.example.com"),
            "url" => format!("https://item{k}.example.com/path"),
            "sha256" => format!("{:064x}", k + 1),
            "email" => format!("item{k}@example.com"),
            other => panic!("no value for type {other}"),
        };
        let b = &self.bundles[bundle];
        let label = format!(
            "#{k}:{}/{}/b{bundle}@{} hops={:?} to={:?}",
            tlp_name(tlp),
            ty,
            self.names[b.origin],
            b.max_hops,
            b.recipients
                .iter()
                .map(|r| self.names[*r].as_str())
                .collect::<Vec<_>>()
        );
        self.items.push(ItemSpec {
            id: entente::model::ItemId::new_random().to_string(),
            label,
            tlp,
            ty,
            value,
            bundle,
            ends: None,
        });
    }

    /// A relationship from item `source` to item `target` (of `bundle`, or of a later
    /// one when `bundle` is published ahead).
    fn relationship(&mut self, bundle: usize, tlp: Tlp, source: usize, target: usize) {
        let k = self.items.len();
        let b = &self.bundles[bundle];
        let label = format!(
            "#{k}:{}/relationship #{source} -> #{target} in b{bundle}@{}{} hops={:?}",
            tlp_name(tlp),
            self.names[b.origin],
            if b.ahead { " (ahead)" } else { "" },
            b.max_hops
        );
        self.items.push(ItemSpec {
            id: format!("relationship--{}", uuid::Uuid::new_v4()),
            label,
            tlp,
            ty: RELATIONSHIP,
            value: String::new(),
            bundle,
            ends: Some((source, target)),
        });
    }

    /// Whether `n`, holding `held` (item index -> hop), discloses item `k` to `p` (rules
    /// 1-4 and 7).
    fn discloses(&self, n: usize, p: usize, k: usize, held: &BTreeMap<usize, u32>) -> bool {
        let Some(&hop) = held.get(&k) else {
            return false;
        };
        if !self.discloses_item(n, p, &self.items[k], hop) {
            return false;
        }
        // Rule 7: a relationship only where n holds both its ends and may disclose each.
        match self.items[k].ends {
            None => true,
            Some((source, target)) => [source, target]
                .iter()
                .all(|end| self.discloses(n, p, *end, held)),
        }
    }

    /// Whether `p` accepts item `k` (README, Replication): data from a partner `p`
    /// configures as `read_only` is never accepted, whoever forwards it.
    fn accepts(&self, p: usize, k: usize) -> bool {
        let origin = self.bundles[self.items[k].bundle].origin;
        !matches!(self.links.get(&(p, origin)), Some(l) if l.role == Role::ReadOnly)
    }

    /// Whether `n` discloses `item` to `p` when it holds it at hop `hop` (rules 1-4).
    fn discloses_item(&self, n: usize, p: usize, item: &ItemSpec, hop: u32) -> bool {
        // Rule 1: p is configured on n with a policy; p pulls from n only if n is its `peer`.
        let Some(link) = self.links.get(&(n, p)) else {
            return false;
        };
        if !matches!(self.links.get(&(p, n)), Some(l) if l.role == Role::Peer) {
            return false;
        }
        // Rule 2.
        if !link.allows(item) {
            return false;
        }
        let bundle = &self.bundles[item.bundle];
        // Rule 3: p is a node; third-party items only with forward_third_party, GREEN or CLEAR.
        if n != bundle.origin && !(link.forward_third_party && rank(item.tlp) <= rank(Tlp::Green)) {
            return false;
        }
        // Rule 4: hops and recipients.
        if let Some(max) = bundle.max_hops {
            if u64::from(hop) + 1 > u64::from(max) {
                return false;
            }
        }
        bundle.recipients.is_empty() || bundle.recipients.contains(&p)
    }

    /// The fixed point: for every node, item id -> hop(N, i), of the items its analyst
    /// is shown.
    fn oracle(&self) -> Vec<BTreeMap<String, u32>> {
        let mut hops: Vec<BTreeMap<usize, u32>> = vec![BTreeMap::new(); self.names.len()];
        for (k, item) in self.items.iter().enumerate() {
            hops[self.bundles[item.bundle].origin].insert(k, 0);
        }
        loop {
            let mut changed = false;
            for &(n, p) in self.links.keys() {
                let held = hops[n].clone();
                for (&k, &h) in &held {
                    if self.discloses(n, p, k, &held) && self.accepts(p, k) {
                        let entry = hops[p].entry(k).or_insert(u32::MAX);
                        if h + 1 < *entry {
                            *entry = h + 1;
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // What each node's analyst is shown: a node may hold a relationship whose ends
        // never reach it (one published ahead of them), which it withholds from every
        // client as from every partner.
        hops.into_iter()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| match self.items[**k].ends {
                        None => true,
                        Some((source, target)) => {
                            m.contains_key(&source) && m.contains_key(&target)
                        }
                    })
                    .map(|(k, h)| (self.items[*k].id.clone(), *h))
                    .collect()
            })
            .collect()
    }

    fn label(&self, id: &str) -> String {
        self.items
            .iter()
            .find(|i| i.id == id)
            .map(|i| i.label.clone())
            .unwrap_or_else(|| format!("unknown item {id}"))
    }

    fn describe(&self) -> String {
        let mut text = String::from("federation:\n");
        for ((n, p), l) in &self.links {
            writeln!(
                text,
                "  {} configures {}: role {:?}, max_tlp {:?}, allow_types {:?}, forward_third_party {}",
                self.names[*n],
                self.names[*p],
                l.role,
                l.max_tlp.map(tlp_name),
                l.allow_types,
                l.forward_third_party
            )
            .unwrap();
        }
        text.push_str("items:\n");
        for i in &self.items {
            writeln!(text, "  {}", i.label).unwrap();
        }
        text
    }
}

/// A started federation: its nodes (same order as the names) and an analyst on each.
struct Running {
    nodes: Vec<Node>,
    clients: Vec<NodeClient>,
}

fn config(pki: &Pki, fed: &Federation, n: usize, addrs: &[String]) -> PathBuf {
    let id = NodeId::new(&fed.names[n]).unwrap();
    let path = common::write_config(pki, &id, &[common::client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    if let Some(own) = addrs.get(n) {
        text = text.replace("127.0.0.1:0", own);
    }
    for ((from, to), link) in &fed.links {
        if *from == n {
            let address = addrs.get(*to).map(String::as_str).unwrap_or("127.0.0.1:1");
            text.push_str(&link.toml(&fed.names[*to], address));
        }
    }
    std::fs::write(&path, text).unwrap();
    path
}

async fn analyst(pki: &Pki, node: &Node) -> NodeClient {
    let who = NodeId::new("analyst.alice").unwrap();
    NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.local_addr().to_string(),
        node.id(),
    )
    .await
    .unwrap()
}

/// Starts every node on its own port with every partner's real address: bind first with
/// placeholder addresses, then restart each node on its port with the full configuration.
async fn start(pki: &Pki, fed: &Federation) -> Running {
    for name in &fed.names {
        pki.node(name);
    }
    pki.client("analyst.alice");
    let mut nodes = Vec::new();
    for n in 0..fed.names.len() {
        nodes.push(common::start(&config(pki, fed, n, &[])).await);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    for node in nodes.drain(..) {
        node.shutdown(DEADLINE).await.unwrap();
    }
    for n in 0..fed.names.len() {
        nodes.push(common::start(&config(pki, fed, n, &addrs)).await);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(analyst(pki, node).await);
    }
    Running { nodes, clients }
}

impl Federation {
    /// The Publish message of bundle `b`, if it holds any item.
    fn request(&self, b: usize) -> Option<PublishRequest> {
        let bundle = &self.bundles[b];
        let items: Vec<wire::Item> = self
            .items
            .iter()
            .filter(|i| i.bundle == b)
            .map(|i| wire::Item {
                id: i.id.clone(),
                modified_unix_ms: 0,
                tlp: i.tlp as i32,
                tags: vec![],
                kind: Some(match i.ends {
                    None => wire::item::Kind::Indicator(wire::Indicator {
                        indicator_type: i.ty.into(),
                        value: i.value.clone(),
                        ..Default::default()
                    }),
                    Some((source, target)) => wire::item::Kind::Context(wire::ContextObject {
                        object_type: RELATIONSHIP.into(),
                        refs: vec![self.items[source].id.clone(), self.items[target].id.clone()],
                        stix_properties: r#"{"relationship_type":"related-to"}"#.into(),
                    }),
                }),
            })
            .collect();
        if items.is_empty() {
            return None;
        }
        Some(PublishRequest {
            items,
            distribution: Some(wire::Distribution {
                max_hops: bundle.max_hops,
                recipients: bundle
                    .recipients
                    .iter()
                    .map(|r| self.names[*r].clone())
                    .collect(),
            }),
            groups: vec![],
        })
    }
}

async fn publish_all(fed: &Federation, running: &Running) {
    let ahead = fed.bundles.iter().enumerate().filter(|(_, b)| b.ahead);
    let after = fed.bundles.iter().enumerate().filter(|(_, b)| !b.ahead);
    for (b, bundle) in ahead.chain(after) {
        if let Some(request) = fed.request(b) {
            running.clients[bundle.origin]
                .publish(tokio_stream::iter(vec![request]))
                .await
                .unwrap();
        }
    }
}

/// What a node holds: item id -> (hops, origin, received_from).
type Held = BTreeMap<String, (u32, String, String)>;

async fn snapshot(running: &Running) -> Vec<Held> {
    let mut all = Vec::new();
    for c in &running.clients {
        let items = c
            .query(ItemFilter::default(), 1000, vec![])
            .await
            .unwrap()
            .items;
        all.push(
            items
                .into_iter()
                .map(|s| {
                    let p = s.provenance.unwrap_or_default();
                    (
                        s.item.map(|i| i.id).unwrap_or_default(),
                        (p.hops, p.origin, p.received_from),
                    )
                })
                .collect(),
        );
    }
    all
}

fn sets_of(held: &[Held]) -> Vec<BTreeSet<String>> {
    held.iter().map(|h| h.keys().cloned().collect()).collect()
}

fn differences(fed: &Federation, expected: &[BTreeMap<String, u32>], held: &[Held]) -> String {
    let mut text = String::new();
    for (n, name) in fed.names.iter().enumerate() {
        let want: BTreeSet<&String> = expected[n].keys().collect();
        let have: BTreeSet<&String> = held[n].keys().collect();
        for id in want.difference(&have) {
            writeln!(text, "  {name} is missing {}", fed.label(id)).unwrap();
        }
        for id in have.difference(&want) {
            writeln!(
                text,
                "  {name} holds {} (hop {}, from {}) which the rule forbids",
                fed.label(id),
                held[n][*id].0,
                held[n][*id].2
            )
            .unwrap();
        }
        for id in want.intersection(&have) {
            if expected[n][*id] != held[n][*id].0 {
                writeln!(
                    text,
                    "  {name} holds {} at hop {} (from {}), the rule gives hop {}",
                    fed.label(id),
                    held[n][*id].0,
                    held[n][*id].2,
                    expected[n][*id]
                )
                .unwrap();
            }
        }
    }
    text
}

/// Waits until every node holds exactly the oracle's set, then until every feed is quiet,
/// and checks sets and hop counts once more; returns the final holdings.
async fn matches_oracle(fed: &Federation, running: &Running) -> Vec<Held> {
    let expected = fed.oracle();
    let want: Vec<BTreeSet<String>> = expected
        .iter()
        .map(|m| m.keys().cloned().collect())
        .collect();
    let start = Instant::now();
    loop {
        let held = snapshot(running).await;
        if sets_of(&held) == want {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no convergence to the delivery rule's fixed point after {DEADLINE:?}\n{}differences:\n{}",
            fed.describe(),
            differences(fed, &expected, &held)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: no feed has moved for QUIET, so nothing more is on its way.
    let heads = || {
        running
            .nodes
            .iter()
            .map(|n| n.engine().store().feed_head())
            .collect::<Vec<_>>()
    };
    let mut last = heads();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < QUIET {
        assert!(
            start.elapsed() < DEADLINE * 2,
            "the federation did not go quiet: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = heads();
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    let held = snapshot(running).await;
    let diff = differences(fed, &expected, &held);
    assert!(
        diff.is_empty(),
        "after settling, the federation differs from the delivery rule\n{}differences:\n{diff}",
        fed.describe()
    );
    held
}

async fn stop(running: Running) {
    for node in running.nodes {
        node.shutdown(DEADLINE).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_federation_matches_the_oracle() {
    let mut fed = Federation::default();
    let hq = fed.node("redmond.hq");
    let berlin = fed.node("berlin.office");
    let singapore = fed.node("singapore.office");
    let lea = fed.node("lea.partner");
    let uni = fed.node("uni.research");
    let all = ["*"];

    // hq: the satellites see everything they may, and forward; the LEA partner sees
    // network indicators up to AMBER; the university reads GREEN (role default).
    fed.link(hq, berlin, Link::peer(Tlp::Red, &all, true));
    // singapore gets only GREEN network indicators from hq directly: hq's AMBER must not
    // reach it through berlin (rule 3), hq's GREEN hashes do, at hop 2.
    fed.link(
        hq,
        singapore,
        Link::peer(Tlp::Green, &["ipv4", "domain", "url"], true),
    );
    fed.link(hq, lea, Link::peer(Tlp::Amber, &["ipv4", "domain"], false));
    fed.link(
        hq,
        uni,
        Link {
            role: Role::ReadOnly,
            max_tlp: None,
            allow_types: Some(all.to_vec()),
            forward_third_party: true,
        },
    );
    // The satellites share with hq and with each other, forwarding third-party data.
    fed.link(berlin, hq, Link::peer(Tlp::Amber, &all, true));
    fed.link(berlin, singapore, Link::peer(Tlp::AmberStrict, &all, true));
    fed.link(
        berlin,
        lea,
        Link::peer(Tlp::Red, &["ipv4", "domain"], false),
    );
    fed.link(singapore, hq, Link::peer(Tlp::Green, &all, true));
    fed.link(singapore, berlin, Link::peer(Tlp::Amber, &all, true));
    // The partner and the university pull but share nothing back.
    fed.link(lea, hq, Link::silent_peer());
    fed.link(lea, berlin, Link::silent_peer());
    fed.link(uni, hq, Link::silent_peer());

    // At hq: every marking and several types, unlimited.
    let b = fed.bundle(hq, None, &[]);
    fed.item(b, Tlp::Clear, "domain");
    fed.item(b, Tlp::Green, "ipv4");
    fed.item(b, Tlp::Green, "sha256");
    fed.item(b, Tlp::Amber, "domain");
    fed.item(b, Tlp::AmberStrict, "url");
    fed.item(b, Tlp::Red, "ipv4");
    // Relationships (rule 7). Between the GREEN ipv4 and the GREEN hash: singapore may
    // not have the hash from hq (types), so it gets neither from hq, and both at hop 2
    // from berlin. Between the GREEN ipv4 and the AMBER domain: berlin only (the AMBER
    // end stays with hq's direct partners, and the LEA partner takes no relationships).
    fed.relationship(b, Tlp::Green, 1, 2);
    fed.relationship(b, Tlp::Green, 1, 3);
    // A sharing group: berlin and the LEA partner only.
    let b = fed.bundle(hq, None, &[berlin, lea]);
    fed.item(b, Tlp::Green, "domain");
    fed.item(b, Tlp::Amber, "ipv4");
    fed.item(b, Tlp::Red, "domain");
    let b = fed.bundle(hq, Some(1), &[]);
    fed.item(b, Tlp::Green, "domain");
    fed.item(b, Tlp::Clear, "ipv4");
    let b = fed.bundle(hq, Some(2), &[]);
    fed.item(b, Tlp::Green, "domain");
    fed.item(b, Tlp::Green, "url");
    let b = fed.bundle(hq, Some(0), &[]);
    fed.item(b, Tlp::Green, "domain");
    // At berlin.
    let b = fed.bundle(berlin, None, &[]);
    fed.item(b, Tlp::Green, "domain");
    fed.item(b, Tlp::Amber, "ipv4");
    fed.item(b, Tlp::Red, "domain");
    fed.item(b, Tlp::Clear, "url");
    let b = fed.bundle(berlin, Some(1), &[]);
    fed.item(b, Tlp::Green, "ipv4");
    let b = fed.bundle(berlin, Some(2), &[hq, singapore, uni]);
    fed.item(b, Tlp::Green, "domain");
    fed.item(b, Tlp::Clear, "email");

    let expected = fed.oracle();
    // The oracle itself is not vacuous: every node but the origins receives something,
    // and the university gets berlin's GREEN at hop 2 by way of hq.
    for n in [berlin, singapore, lea, uni] {
        assert!(
            expected[n].values().any(|h| *h > 0),
            "{} receives nothing",
            fed.names[n]
        );
    }
    assert!(expected[uni].values().any(|h| *h == 2));
    assert!(expected[singapore].values().any(|h| *h == 2));

    let pki = Pki::new();
    let running = start(&pki, &fed).await;
    publish_all(&fed, &running).await;
    let held = matches_oracle(&fed, &running).await;

    // The issue's statement, on what the nodes actually hold: AMBER, AMBER+STRICT and RED
    // items never leave the origin's direct, allowed recipients.
    for (n, items) in held.iter().enumerate() {
        for (id, (hops, origin, from)) in items {
            let item = fed.items.iter().find(|i| &i.id == id).unwrap();
            if rank(item.tlp) <= rank(Tlp::Green) {
                continue;
            }
            let o = fed.bundles[item.bundle].origin;
            if n == o {
                continue;
            }
            let allowed = fed.discloses_item(o, n, item, 0);
            assert!(
                allowed && *hops == 1 && origin == &fed.names[o] && from == &fed.names[o],
                "{} holds {} at hop {hops} from {from}: not a direct, allowed recipient",
                fed.names[n],
                item.label
            );
        }
    }
    stop(running).await;
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn random_federation(seed: u64) -> Federation {
    random_federation_with(seed, false)
}

/// [`random_federation`]; with `ahead`, about half of the relationships are published
/// by a random node, in a bundle of their own, before any indicator.
fn random_federation_with(seed: u64, ahead: bool) -> Federation {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut fed = Federation::default();
    let size = 3 + rng.below(3);
    for n in 0..size {
        fed.node(&format!("node{n}.fed{seed}"));
    }
    for n in 0..size {
        for p in 0..size {
            if n == p || !rng.chance(60) {
                continue;
            }
            let role = if rng.chance(15) {
                Role::ReadOnly
            } else {
                Role::Peer
            };
            let max_tlp = if rng.chance(10) {
                None
            } else if role == Role::ReadOnly {
                // Left at or below the role default: the rule says no more for read_only.
                Some(TLPS[rng.below(2)])
            } else {
                Some(TLPS[rng.below(TLPS.len())])
            };
            let allow_types = if rng.chance(10) {
                None
            } else if rng.chance(45) {
                Some(vec!["*"])
            } else {
                let subset: Vec<&'static str> = TYPES
                    .iter()
                    .copied()
                    .chain([RELATIONSHIP])
                    .filter(|_| rng.chance(50))
                    .collect();
                Some(if subset.is_empty() {
                    vec![TYPES[rng.below(TYPES.len())]]
                } else {
                    subset
                })
            };
            let forward_third_party = rng.chance(60);
            fed.link(
                n,
                p,
                Link {
                    role,
                    max_tlp,
                    allow_types,
                    forward_third_party,
                },
            );
        }
    }
    let target = 8 + rng.below(8);
    while fed.items.len() < target {
        let origin = rng.below(size);
        let max_hops = [None, None, Some(0), Some(1), Some(2), Some(2)][rng.below(6)];
        let recipients: Vec<usize> = if rng.chance(30) {
            (0..size)
                .filter(|r| *r != origin && rng.chance(50))
                .collect()
        } else {
            vec![]
        };
        let b = fed.bundle(origin, max_hops, &recipients);
        for _ in 0..1 + rng.below(3) {
            if fed.items.len() == target {
                break;
            }
            // Weighted towards what may travel further than one hop.
            let tlp = [
                Tlp::Clear,
                Tlp::Green,
                Tlp::Green,
                Tlp::Amber,
                Tlp::AmberStrict,
                Tlp::Red,
            ][rng.below(6)];
            let ty = TYPES[rng.below(TYPES.len())];
            fed.item(b, tlp, ty);
        }
        // A relationship between two indicators of the bundle, sometimes: it travels
        // with its ends, or (with `ahead`) before them, from any node.
        let in_bundle: Vec<usize> = (0..fed.items.len())
            .filter(|k| fed.items[*k].bundle == b)
            .collect();
        if in_bundle.len() >= 2 && rng.chance(60) {
            let source = in_bundle[rng.below(in_bundle.len())];
            let target = in_bundle[rng.below(in_bundle.len())];
            let tlp = [Tlp::Clear, Tlp::Green, Tlp::Green, Tlp::Amber][rng.below(4)];
            if ahead && rng.chance(50) {
                let origin = rng.below(size);
                let max_hops = [None, Some(1), Some(2)][rng.below(3)];
                let sent_ahead = fed.bundle_ahead(origin, max_hops);
                fed.relationship(sent_ahead, tlp, source, target);
            } else {
                fed.relationship(b, tlp, source, target);
            }
        }
    }
    fed
}

/// Deliveries of a federation's oracle: at hop 2 or more, and of AMBER or RED at hop 1.
fn richness(fed: &Federation) -> (usize, usize) {
    let expected = fed.oracle();
    let forwarded = expected
        .iter()
        .flat_map(|m| m.values())
        .filter(|h| **h >= 2)
        .count();
    let restricted = expected
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(id, h)| {
            **h == 1
                && fed
                    .items
                    .iter()
                    .any(|i| &i.id == *id && rank(i.tlp) > rank(Tlp::Green))
        })
        .count();
    (forwarded, restricted)
}

/// Relationships of a federation's oracle: delivered beyond their origin, and held back
/// by rule 7 alone somewhere (a node holds the relationship and may disclose it to a
/// partner by rules 1-4, but not both its ends).
fn relationship_richness(fed: &Federation) -> (usize, usize) {
    let expected = fed.oracle();
    let index: BTreeMap<&str, usize> = fed
        .items
        .iter()
        .enumerate()
        .map(|(k, i)| (i.id.as_str(), k))
        .collect();
    let mut delivered = 0;
    let mut held_back = 0;
    for (n, holds) in expected.iter().enumerate() {
        let held: BTreeMap<usize, u32> = holds
            .iter()
            .map(|(id, h)| (index[id.as_str()], *h))
            .collect();
        for (&k, &hop) in &held {
            if fed.items[k].ends.is_none() {
                continue;
            }
            if hop > 0 {
                delivered += 1;
            }
            for p in 0..fed.names.len() {
                if p != n
                    && fed.discloses_item(n, p, &fed.items[k], hop)
                    && !fed.discloses(n, p, k, &held)
                {
                    held_back += 1;
                }
            }
        }
    }
    (delivered, held_back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_federations_match_the_oracle() {
    common::init_logging();
    // The first three seeds whose federations forward (hop 2 or more), deliver AMBER or
    // RED to a direct partner, deliver a relationship and hold one back by rule 7 alone,
    // so that no run is decided at the origin alone.
    // `ENTENTE_ORACLE_SEEDS=7,47` runs those seeds instead.
    let seeds = seeds("ENTENTE_ORACLE_SEEDS", 3, |seed| {
        let fed = random_federation(seed);
        let (forwarded, restricted) = richness(&fed);
        let (related, held_back) = relationship_richness(&fed);
        forwarded > 0 && restricted > 0 && related > 0 && held_back > 0
    });
    for seed in seeds {
        runs_to_the_oracle(&format!("seed {seed}"), &random_federation(seed)).await;
    }
}

/// The seeds listed in the environment variable `var` (comma-separated), or else the
/// first `count` seeds for which `wanted` holds.
fn seeds(var: &str, count: usize, wanted: impl Fn(u64) -> bool) -> Vec<u64> {
    match std::env::var(var) {
        Ok(list) => list
            .split(',')
            .map(|s| s.trim().parse().expect("a seed"))
            .collect(),
        Err(_) => (1..).filter(|seed| wanted(*seed)).take(count).collect(),
    }
}

/// Starts `fed`, publishes everything, checks it against the oracle and stops it.
async fn runs_to_the_oracle(name: &str, fed: &Federation) {
    eprintln!(
        "{name}: {} nodes, {} links, {} items, oracle sizes {:?}",
        fed.names.len(),
        fed.links.len(),
        fed.items.len(),
        fed.oracle().iter().map(BTreeMap::len).collect::<Vec<_>>()
    );
    let pki = Pki::new();
    let running = start(&pki, fed).await;
    publish_all(fed, &running).await;
    matches_oracle(fed, &running).await;
    stop(running).await;
}

/// Relationships published ahead of their ends (by their ends' origin or any other
/// node) reach every node the oracle says, however the pulls interleave: a node that
/// holds one before its ends offers it again once they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relationships_sent_ahead_of_their_ends_match_the_oracle() {
    common::init_logging();
    // The first three seeds where a relationship sent ahead is delivered beyond the node
    // that published it. `ENTENTE_AHEAD_SEEDS=7,47` runs those seeds instead.
    let seeds = seeds("ENTENTE_AHEAD_SEEDS", 3, |seed| {
        let fed = random_federation_with(seed, true);
        let expected = fed.oracle();
        fed.items.iter().any(|item| {
            item.ends.is_some()
                && fed.bundles[item.bundle].ahead
                && expected
                    .iter()
                    .any(|held| held.get(&item.id).is_some_and(|hop| *hop > 0))
        })
    });
    for seed in seeds {
        let fed = random_federation_with(seed, true);
        runs_to_the_oracle(&format!("seed {seed} (ahead)"), &fed).await;
    }
}

/// Whether the proxies between nodes inject faults now.
#[derive(Clone)]
struct Faults {
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections cut so far.
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Faults {
    fn new(seed: u64) -> Self {
        Self {
            on: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            seed: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(seed)),
            cuts: std::sync::Arc::default(),
        }
    }

    /// A fresh random source per connection, drawn from the shared seed.
    fn rng(&self) -> Rng {
        use std::sync::atomic::Ordering;
        let seed = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        Rng(seed | 1)
    }

    fn active(&self) -> bool {
        self.on.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Copies `from` to `to`; while faults are on, waits up to 30 ms before each chunk and
/// stops after `budget` bytes (mid-message, as a cut link does). Returns when either side
/// closes or the budget is spent.
async fn faulty_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: Faults,
    mut rng: Rng,
    mut budget: usize,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    // A link that carries little is cut by time instead, while the faults last.
    let lifetime =
        tokio::time::Instant::now() + Duration::from_millis(100 + rng.below(1500) as u64);
    loop {
        let read = tokio::time::timeout_at(lifetime, from.read(&mut buf));
        let n = match read.await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) if faults.active() => {
                faults
                    .cuts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            Err(_) => match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let mut n = n;
        if faults.active() {
            if rng.chance(30) {
                tokio::time::sleep(Duration::from_millis(rng.below(30) as u64)).await;
            }
            if n >= budget {
                // Half a message goes through, then the link is gone.
                n = budget;
                let _ = to.write_all(&buf[..n]).await;
                faults
                    .cuts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            budget -= n;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP proxy in front of `upstream` that cuts, delays and drops while `faults` is on.
async fn proxy(upstream: String, faults: Faults) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let mut rng = faults.rng();
            if faults.active() && rng.chance(20) {
                // Dropped: the connection is refused outright.
                drop(client);
                continue;
            }
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            // Cut somewhere in each direction, unless healed first: half the connections
            // within the first 8 KiB (in the handshake or the first messages), the others
            // within 64 KiB.
            let budget = |rng: &mut Rng| {
                1 + if rng.chance(50) {
                    rng.below(8 * 1024)
                } else {
                    rng.below(64 * 1024)
                }
            };
            let up_budget = budget(&mut rng);
            let down_budget = budget(&mut rng);
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up_rng = Rng(rng.next() | 1);
            tokio::spawn(faulty_copy(
                client_read,
                server_write,
                faults.clone(),
                up_rng,
                up_budget,
            ));
            tokio::spawn(faulty_copy(
                server_read,
                client_write,
                faults.clone(),
                rng,
                down_budget,
            ));
        }
    });
    addr
}

/// Like [`start`], but every link reaches its peer through a faulty proxy.
async fn start_behind_proxies(pki: &Pki, fed: &Federation, faults: &Faults) -> Running {
    for name in &fed.names {
        pki.node(name);
    }
    pki.client("analyst.alice");
    let mut nodes = Vec::new();
    for n in 0..fed.names.len() {
        nodes.push(common::start(&config(pki, fed, n, &[])).await);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.local_addr().to_string()).collect();
    // One proxy per node, in front of its listener, for the links that pull from it;
    // bound while the nodes still hold their ports, so no proxy takes one of them.
    let mut proxied = Vec::new();
    for addr in &addrs {
        proxied.push(proxy(addr.clone(), faults.clone()).await);
    }
    for node in nodes.drain(..) {
        node.shutdown(DEADLINE).await.unwrap();
    }
    for n in 0..fed.names.len() {
        let path = config(pki, fed, n, &proxied);
        // The node itself listens on its own address, not the proxy's.
        let text = std::fs::read_to_string(&path).unwrap().replacen(
            &format!("listen = \"{}\"", proxied[n]),
            &format!("listen = \"{}\"", addrs[n]),
            1,
        );
        std::fs::write(&path, text).unwrap();
        nodes.push(common::start(&path).await);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(analyst(pki, node).await);
    }
    Running { nodes, clients }
}

/// A five-node random federation whose links are cut mid-message, delayed and dropped
/// while every origin publishes at once; after the links heal, every node holds exactly
/// what the delivery rule says, at the hop count it says.
async fn converges_after_faults(seed: u64) {
    // The generator makes 3 to 5 nodes; the harness wants five, so it takes the first
    // five-node federation from this seed on.
    let fed = (seed * 1000..)
        .map(random_federation)
        .find(|fed| fed.names.len() == 5)
        .expect("a five-node federation");
    let faults = Faults::new(seed);
    let pki = Pki::new();
    let running = start_behind_proxies(&pki, &fed, &faults).await;
    // Every origin publishes its bundles at once, while the links fail.
    let mut publishing = Vec::new();
    for origin in 0..fed.names.len() {
        let mut only = fed.clone();
        only.bundles = fed
            .bundles
            .iter()
            .map(|b| {
                let mut b = b.clone();
                if b.origin != origin {
                    b.origin = usize::MAX;
                }
                b
            })
            .collect();
        let client = running.clients[origin].clone_channel();
        publishing.push(tokio::spawn(async move {
            for (b, bundle) in only.bundles.iter().enumerate() {
                if bundle.origin == usize::MAX {
                    continue;
                }
                let request = only.request(b);
                if let Some(request) = request {
                    client
                        .publish(tokio_stream::iter(vec![request]))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for task in publishing {
        task.await.unwrap();
    }
    // Faults go on for a while after the last publish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cuts = faults.cuts.load(std::sync::atomic::Ordering::Relaxed);
    faults.on.store(false, std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "seed {seed}: {} nodes, {} links, {} items, {cuts} connections cut mid-stream",
        fed.names.len(),
        fed.links.len(),
        fed.items.len()
    );
    matches_oracle(&fed, &running).await;
    stop(running).await;
}

/// Fixed seeds, run in every test run. More: `ENTENTE_PARTITION_SEEDS=100 cargo test
/// --release --test federation_oracle partitions -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_heal_to_the_delivery_rule() {
    for seed in [11, 12] {
        converges_after_faults(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long harness: ENTENTE_PARTITION_SEEDS=N"]
async fn partitions_heal_to_the_delivery_rule_many_seeds() {
    let seeds: u64 = std::env::var("ENTENTE_PARTITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let started = Instant::now();
    for seed in 1000..1000 + seeds {
        converges_after_faults(seed).await;
    }
    eprintln!(
        "{seeds} seeds converged in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
