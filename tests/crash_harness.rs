//! Crash consistency under `kill -9`, through the public surface only: real `entente serve`
//! processes, gRPC calls as an analyst makes them, and the store left to the node.
//!
//! Each run starts a fresh federation of two nodes: `redmond.hq` (the origin, where an
//! analyst publishes) and `berlin.office` (a peer pulling hq's feed). A run is a sequence of
//! trials; each trial SIGKILLs one node at a point drawn from a seeded RNG:
//!
//! - `publish`: hq is killed while the analyst publishes streams of several bundles (and
//!   berlin pulls them live);
//! - `puller`: berlin is killed while it pulls a backlog of bundles from hq;
//! - `origin`: hq is killed while berlin pulls a backlog from it.
//!
//! After every kill the node is restarted on its store, and the harness checks that:
//! the store opens (the node serves again); every acknowledged item is held, with the
//! bundle id it was acknowledged in; no item is held twice; a bundle of an unacknowledged
//! stream is held whole or not at all; nothing is held that was never sent; re-sending an
//! unacknowledged stream with the same ids stores each item once; the node's disclosure
//! ledger (`Admin.LedgerVerify`) is an intact hash chain. A killed puller is first
//! restarted with its peer unreachable, so what it held at the kill can be inspected (a
//! subset of hq's items, each once); then it is restarted for real, and each trial ends only
//! when berlin holds exactly hq's items (same ids, values and bundle ids, none twice).
//!
//! The smoke test runs a few trials in the normal test run. The full harness is ignored by
//! default and takes its parameters from the environment:
//!
//! ```text
//! ENTENTE_KILL_TRIALS=100 ENTENTE_KILL_SEED=7 \
//!     cargo test --release --test crash_harness -- --ignored --nocapture
//! ```
//!
//! The seed (printed at the start; random when not given) fixes the kinds of the trials,
//! every batch size, item id and kill point: a delay after publishing starts (0 to 400 ms),
//! or, for replication, how many bundles of the backlog berlin must hold (from none to
//! all) before the kill. The interleaving of the processes around a kill point is the
//! machine's, so a seed reproduces the schedule, not the exact instruction killed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ENTENTE: &str = env!("CARGO_BIN_EXE_entente");
/// Upper bound for a node to start, a call, or a convergence.
const DEADLINE: Duration = Duration::from_secs(90);
/// Trials on one federation before a fresh one is started (keeps the stores small).
const TRIALS_PER_RUN: usize = 8;
const HQ: &str = "redmond.hq";
const BERLIN: &str = "berlin.office";
const ANALYST: &str = "analyst.alice";
/// An admin client, to walk each node's disclosure ledger after a restart.
const AUDITOR: &str = "admin.ops";
/// Both nodes share GREEN indicators of every type with each other.
const PEER_POLICY: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Publish,
    Puller,
    Origin,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Publish => "publish",
            Kind::Puller => "puller",
            Kind::Origin => "origin",
        }
    }
}

/// What a node holds: item id → (value, bundle id); panics on an item held twice.
type Holding = BTreeMap<String, (String, String)>;

/// One item as sent: id and value.
#[derive(Clone, Debug)]
struct Sent {
    id: String,
    value: String,
}

/// One Publish call: its messages (one bundle each).
#[derive(Clone, Debug)]
struct Stream {
    messages: Vec<Vec<Sent>>,
}

/// A child process killed when dropped, so a failing trial leaves nothing running.
struct Process {
    child: Child,
    stderr: PathBuf,
}

impl Process {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_tail(&self) -> String {
        stderr_tail(&self.stderr)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Starts `entente serve` and waits until it serves; fails with the node's stderr if it
/// exits or does not report its address in time (the store did not open).
fn serve(config: &Path, log: &Path) -> (Process, String) {
    let stderr = File::create(log).expect("create log");
    let mut child = Command::new(ENTENTE)
        .args(["serve", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("ENTENTE_HARNESS_LOG").unwrap_or("entente=warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let process = Process {
        child,
        stderr: log.to_owned(),
    };
    match rx.recv_timeout(DEADLINE) {
        Ok(addr) => (process, addr),
        Err(_) => panic!(
            "{} did not start (the store did not open?):\n{}",
            config.display(),
            process.stderr_tail()
        ),
    }
}

async fn connect(pki: &Pki, addr: &str, node: &str) -> NodeClient {
    connect_as(pki, ANALYST, addr, node).await
}

async fn connect_as(pki: &Pki, who: &str, addr: &str, node: &str) -> NodeClient {
    let who = NodeId::new(who).unwrap();
    tokio::time::timeout(
        DEADLINE,
        NodeClient::connect(
            pki.material(&who).client_config().unwrap(),
            &who,
            addr,
            &NodeId::new(node).unwrap(),
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// Everything `client` may see, as a holding; an item id twice fails the trial.
async fn holding(client: &NodeClient, who: &str) -> Holding {
    let mut out = Holding::new();
    let mut token = Vec::new();
    loop {
        let page = tokio::time::timeout(DEADLINE, client.query(ItemFilter::default(), 1000, token))
            .await
            .expect("query in time")
            .expect("query");
        for stored in &page.items {
            let (id, value, bundle) = describe(stored);
            if let Some(before) = out.insert(id.clone(), (value, bundle)) {
                panic!("{who} holds {id} twice (first {before:?})");
            }
        }
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn describe(stored: &StoredItem) -> (String, String, String) {
    let item = stored.item.as_ref().expect("item");
    let value = match &item.kind {
        Some(wire::item::Kind::Indicator(i)) => i.value.clone(),
        _ => String::new(),
    };
    let bundle = stored
        .provenance
        .as_ref()
        .map(|p| p.bundle_id.clone())
        .unwrap_or_default();
    (item.id.clone(), value, bundle)
}

fn draft(sent: &Sent, modified_ms: i64) -> wire::Item {
    wire::Item {
        id: sent.id.clone(),
        modified_unix_ms: modified_ms,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".into(),
            value: sent.value.clone(),
            ..Default::default()
        })),
    }
}

fn requests(stream: &Stream, modified_ms: i64) -> Vec<PublishRequest> {
    stream
        .messages
        .iter()
        .map(|items| PublishRequest {
            items: items.iter().map(|s| draft(s, modified_ms)).collect(),
            distribution: None,
            groups: vec![],
        })
        .collect()
}

fn random_id(rng: &mut StdRng) -> String {
    let uuid = uuid::Builder::from_random_bytes(rng.random()).into_uuid();
    format!("indicator--{uuid}")
}

/// A stream of `messages` bundles of `size` items, with ids drawn from `rng`.
fn new_stream(rng: &mut StdRng, label: &str, messages: usize, size: usize) -> Stream {
    Stream {
        messages: (0..messages)
            .map(|m| {
                (0..size)
                    .map(|i| Sent {
                        id: random_id(rng),
                        value: format!("{label}-m{m}-i{i}.example"),
                    })
                    .collect()
            })
            .collect(),
    }
}

/// What the harness knows hq was asked to hold, and what it acknowledged.
#[derive(Default)]
struct Ledger {
    /// Acknowledged items: id → (value, bundle id).
    acked: Holding,
    /// Streams whose Publish call did not return: their items may or may not be held.
    pending: Vec<Stream>,
}

impl Ledger {
    fn acknowledge(&mut self, stream: &Stream, bundle_ids: &[String]) {
        assert_eq!(bundle_ids.len(), stream.messages.len());
        for (items, bundle) in stream.messages.iter().zip(bundle_ids) {
            for sent in items {
                self.acked
                    .entry(sent.id.clone())
                    .or_insert_with(|| (sent.value.clone(), bundle.clone()));
            }
        }
    }
}

/// Figures gathered over all trials.
#[derive(Default)]
struct Figures {
    trials: BTreeMap<Kind, usize>,
    /// Kill delays (ms after the work started), per kind.
    delays: BTreeMap<Kind, Vec<u64>>,
    /// Publish trials: Publish calls acknowledged before the kill, and whether one was in
    /// flight when the node died.
    acked_calls_before_kill: Vec<usize>,
    in_flight_at_kill: usize,
    /// Bundles of unacknowledged streams found whole / absent after the restart.
    unacked_bundles_whole: usize,
    unacked_bundles_absent: usize,
    /// Puller trials: the share of the backlog berlin held at the kill, in tenths (0..=10).
    puller_share: BTreeMap<usize, usize>,
    /// Replication trials: the seeded kill point, as the share of the backlog's bundles
    /// berlin must hold first, in tenths (0..=10), per kind.
    targets: BTreeMap<Kind, BTreeMap<usize, usize>>,
    /// Items acknowledged by hq (counting re-sent ones once).
    items_acked: usize,
    /// Item checks made (an item found where it must be, with its bundle, counted once per
    /// check).
    items_checked: usize,
    restarts: usize,
    /// Disclosure-ledger walks after a restart, and the records they covered.
    ledger_checks: usize,
    ledger_records: usize,
}

struct Federation {
    pki: Pki,
    dir: PathBuf,
    hq_config: PathBuf,
    berlin_config: PathBuf,
    hq: Option<Process>,
    hq_addr: String,
    berlin: Option<Process>,
    berlin_addr: String,
    logs: usize,
    ledger: Ledger,
}

impl Federation {
    fn start() -> Self {
        let pki = Pki::new();
        let dir = pki.path().to_owned();
        let hq = pki.node(HQ);
        let berlin = pki.node(BERLIN);
        pki.client(ANALYST);
        pki.client(AUDITOR);
        let clients = [
            common::client(ANALYST, "analyst"),
            common::client(AUDITOR, "admin"),
        ];
        let hq_config = common::write_config(&pki, &hq, &clients, &[]);
        // hq does not pull from berlin: its address for berlin leads nowhere.
        append(
            &hq_config,
            &format!("\n[[peer]]\nid = \"{BERLIN}\"\naddress = \"127.0.0.1:1\"\n{PEER_POLICY}\n"),
        );
        let berlin_config = common::write_config(&pki, &berlin, &clients, &[]);
        let mut federation = Federation {
            pki,
            dir,
            hq_config,
            berlin_config,
            hq: None,
            hq_addr: String::new(),
            berlin: None,
            berlin_addr: String::new(),
            logs: 0,
            ledger: Ledger::default(),
        };
        federation.start_hq();
        // From now on hq listens on the port it was given, so berlin finds it after a
        // restart.
        let text = std::fs::read_to_string(&federation.hq_config).unwrap();
        let text = text.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", federation.hq_addr),
            1,
        );
        std::fs::write(&federation.hq_config, text).unwrap();
        append(
            &federation.berlin_config,
            &format!(
                "\n[[peer]]\nid = \"{HQ}\"\naddress = \"{}\"\n{PEER_POLICY}\n",
                federation.hq_addr
            ),
        );
        federation
    }

    fn log(&mut self, name: &str) -> PathBuf {
        self.logs += 1;
        self.dir.join(format!("{name}-{}.log", self.logs))
    }

    fn start_hq(&mut self) {
        let log = self.log("hq");
        let (process, addr) = serve(&self.hq_config, &log);
        self.hq = Some(process);
        self.hq_addr = addr;
    }

    fn start_berlin(&mut self) {
        let log = self.log("berlin");
        let (process, addr) = serve(&self.berlin_config, &log);
        self.berlin = Some(process);
        self.berlin_addr = addr;
    }

    /// Starts berlin with its peer unreachable, so that nothing changes what it holds.
    fn start_berlin_isolated(&mut self) {
        let text = std::fs::read_to_string(&self.berlin_config).unwrap();
        let isolated = self.dir.join("berlin-isolated.toml");
        std::fs::write(
            &isolated,
            text.replace(
                &format!("address = \"{}\"", self.hq_addr),
                "address = \"127.0.0.1:1\"",
            ),
        )
        .unwrap();
        let log = self.log("berlin-isolated");
        let (process, addr) = serve(&isolated, &log);
        self.berlin = Some(process);
        self.berlin_addr = addr;
    }

    fn kill_hq(&mut self) {
        if let Some(p) = self.hq.take() {
            p.kill();
        }
    }

    fn kill_berlin(&mut self) {
        if let Some(p) = self.berlin.take() {
            p.kill();
        }
    }

    async fn hq_client(&self) -> NodeClient {
        connect(&self.pki, &self.hq_addr, HQ).await
    }

    async fn berlin_client(&self) -> NodeClient {
        connect(&self.pki, &self.berlin_addr, BERLIN).await
    }

    fn hq_log(&self) -> String {
        self.hq
            .as_ref()
            .map(Process::stderr_tail)
            .unwrap_or_default()
    }

    /// Checks hq against the ledger after a restart; returns the holding.
    async fn check_hq(&mut self, figures: &mut Figures) -> Holding {
        check_disclosure_ledger(&self.pki, &self.hq_addr, HQ, figures).await;
        let client = self.hq_client().await;
        let held = holding(&client, HQ).await;
        for (id, (value, bundle)) in &self.ledger.acked {
            match held.get(id) {
                Some((v, b)) if v == value && b == bundle => {}
                other => panic!(
                    "hq lost or changed acknowledged item {id} ({value} in {bundle}): holds {other:?}\n{}",
                    self.hq_log()
                ),
            }
        }
        figures.items_checked += self.ledger.acked.len();
        let mut known: BTreeSet<&str> = self.ledger.acked.keys().map(String::as_str).collect();
        for stream in &self.ledger.pending {
            for items in &stream.messages {
                let found: Vec<&(String, String)> =
                    items.iter().filter_map(|s| held.get(&s.id)).collect();
                let bundles: BTreeSet<&str> = found.iter().map(|(_, b)| b.as_str()).collect();
                let fresh = items.iter().any(|s| !self.ledger.acked.contains_key(&s.id));
                if fresh && !found.is_empty() && found.len() != items.len() {
                    panic!(
                        "hq holds {} of the {} items of an unacknowledged bundle: a bundle was cut\n{}",
                        found.len(),
                        items.len(),
                        self.hq_log()
                    );
                }
                if fresh && bundles.len() > 1 {
                    panic!("the items of one unacknowledged message are held in {bundles:?}");
                }
                for (sent, (value, _)) in items.iter().zip(&found) {
                    assert_eq!(&sent.value, value, "{} changed value", sent.id);
                }
                if fresh {
                    if found.is_empty() {
                        figures.unacked_bundles_absent += 1;
                    } else {
                        figures.unacked_bundles_whole += 1;
                    }
                }
                known.extend(items.iter().map(|s| s.id.as_str()));
            }
        }
        if let Some(stranger) = held.keys().find(|id| !known.contains(id.as_str())) {
            panic!("hq holds {stranger}, which was never sent");
        }
        held
    }

    /// Re-sends every unacknowledged stream (same ids and versions) until acknowledged.
    /// Items `held` before (a bundle of the first attempt that was stored) keep the bundle
    /// they were stored in: the re-sent copies are duplicates.
    async fn resend_pending(&mut self, held: &Holding, figures: &mut Figures, modified_ms: i64) {
        let client = self.hq_client().await;
        for stream in std::mem::take(&mut self.ledger.pending) {
            let total: usize = stream.messages.iter().map(Vec::len).sum();
            let response = tokio::time::timeout(
                DEADLINE,
                client.publish(tokio_stream::iter(requests(&stream, modified_ms))),
            )
            .await
            .expect("re-send in time")
            .expect("re-send");
            assert_eq!(
                (response.items_accepted + response.items_duplicate) as usize,
                total,
                "re-sent stream: {response:?}"
            );
            assert_eq!(response.bundle_ids.len(), stream.messages.len());
            for (items, bundle) in stream.messages.iter().zip(&response.bundle_ids) {
                for sent in items {
                    let bundle = held.get(&sent.id).map_or(bundle, |(_, first)| first);
                    self.ledger
                        .acked
                        .insert(sent.id.clone(), (sent.value.clone(), bundle.clone()));
                    figures.items_acked += 1;
                }
            }
        }
    }

    /// Waits until berlin holds exactly what hq holds.
    async fn converge(&self, hq_holding: &Holding, figures: &mut Figures) {
        let client = self.berlin_client().await;
        let start = Instant::now();
        loop {
            let held = holding(&client, BERLIN).await;
            check_subset(&held, hq_holding);
            if &held == hq_holding {
                figures.items_checked += held.len();
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "berlin holds {} of hq's {} items after {:?}\n{}",
                held.len(),
                hq_holding.len(),
                DEADLINE,
                self.berlin
                    .as_ref()
                    .map(Process::stderr_tail)
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The node's disclosure ledger is an intact hash chain.
async fn check_disclosure_ledger(pki: &Pki, addr: &str, node: &str, figures: &mut Figures) {
    let auditor = connect_as(pki, AUDITOR, addr, node).await;
    let answer = tokio::time::timeout(DEADLINE, auditor.ledger_verify())
        .await
        .expect("ledger verify in time")
        .expect("ledger verify");
    assert!(
        answer.intact,
        "{node}'s disclosure ledger is broken at record {}: {}",
        answer.broken_at, answer.problem
    );
    figures.ledger_checks += 1;
    figures.ledger_records += answer.records as usize;
}

fn append(path: &Path, text: &str) {
    let mut all = std::fs::read_to_string(path).unwrap();
    all.push_str(text);
    std::fs::write(path, all).unwrap();
}

/// Berlin holds nothing hq does not, and each item as hq holds it.
fn check_subset(berlin: &Holding, hq: &Holding) {
    for (id, held) in berlin {
        match hq.get(id) {
            Some(at_hq) if at_hq == held => {}
            other => panic!("berlin holds {id} as {held:?}, hq as {other:?}"),
        }
    }
}

/// Publishes streams until a call fails; returns how many calls were acknowledged and
/// whether the failed one was under way.
async fn publish_until_killed(
    client: NodeClient,
    streams: Vec<Stream>,
    modified_ms: i64,
    results: Arc<Mutex<Vec<Option<Vec<String>>>>>,
) {
    for stream in streams {
        let outcome = client
            .publish(tokio_stream::iter(requests(&stream, modified_ms)))
            .await;
        let ok = outcome.is_ok();
        results
            .lock()
            .unwrap()
            .push(outcome.ok().map(|r| r.bundle_ids));
        if !ok {
            return;
        }
    }
}

async fn publish_trial(
    fed: &mut Federation,
    rng: &mut StdRng,
    label: &str,
    figures: &mut Figures,
    modified_ms: i64,
) {
    // Enough streams that the publisher is still busy at the latest kill point.
    let streams: Vec<Stream> = (0..400)
        .map(|s| {
            let messages = rng.random_range(1..=4);
            let size = rng.random_range(1..=120);
            new_stream(rng, &format!("{label}-s{s}"), messages, size)
        })
        .collect();
    let delay = rng.random_range(0..400u64);
    let client = fed.hq_client().await;
    let results = Arc::new(Mutex::new(Vec::new()));
    let task = tokio::spawn(publish_until_killed(
        client,
        streams.clone(),
        modified_ms,
        results.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(delay)).await;
    fed.kill_hq();
    tokio::time::timeout(DEADLINE, task)
        .await
        .expect("publisher stops after the kill")
        .unwrap();
    let results = std::mem::take(&mut *results.lock().unwrap());
    let acked_calls = results.iter().filter(|r| r.is_some()).count();
    figures.acked_calls_before_kill.push(acked_calls);
    figures.delays.entry(Kind::Publish).or_default().push(delay);
    for (stream, result) in streams.iter().zip(&results) {
        match result {
            Some(bundle_ids) => {
                let before = fed.ledger.acked.len();
                fed.ledger.acknowledge(stream, bundle_ids);
                figures.items_acked += fed.ledger.acked.len() - before;
            }
            None => {
                figures.in_flight_at_kill += 1;
                fed.ledger.pending.push(stream.clone());
            }
        }
    }
    assert!(
        results.len() <= streams.len() && results.last().is_none_or(Option::is_none),
        "the publisher ran out of work before the kill ({delay} ms): give it more"
    );

    fed.start_hq();
    figures.restarts += 1;
    let held = fed.check_hq(figures).await;
    fed.resend_pending(&held, figures, modified_ms).await;
    fed.check_hq(figures).await;
}

/// Publishes a backlog to hq (acknowledged) for a replication trial; returns it.
async fn publish_backlog(
    fed: &mut Federation,
    rng: &mut StdRng,
    label: &str,
    figures: &mut Figures,
    modified_ms: i64,
) -> Stream {
    let bundles = rng.random_range(20..=120);
    let stream = new_stream(rng, label, bundles, 50);
    let client = fed.hq_client().await;
    let response = tokio::time::timeout(
        DEADLINE,
        client.publish(tokio_stream::iter(requests(&stream, modified_ms))),
    )
    .await
    .expect("publish in time")
    .expect("publish backlog");
    let before = fed.ledger.acked.len();
    fed.ledger.acknowledge(&stream, &response.bundle_ids);
    figures.items_acked += fed.ledger.acked.len() - before;
    stream
}

/// Starts berlin and returns once it holds the first `target` bundles of `backlog` (which
/// hq's feed serves in order): the kill point of a replication trial, a seeded share of
/// the stream. Berlin keeps pulling while this looks, so the kill lands at or just after
/// the target. Returns the time from berlin's start.
async fn start_berlin_and_wait_for(fed: &mut Federation, backlog: &Stream, target: usize) -> u64 {
    fed.start_berlin();
    let started = Instant::now();
    if target == 0 {
        return 0;
    }
    let probe = &backlog.messages[target - 1][0].value;
    let client = fed.berlin_client().await;
    loop {
        let filter = ItemFilter {
            value: probe.clone(),
            ..Default::default()
        };
        let page = tokio::time::timeout(DEADLINE, client.query(filter, 1, vec![]))
            .await
            .expect("query in time")
            .expect("query");
        if !page.items.is_empty() {
            return started.elapsed().as_millis() as u64;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "berlin did not reach bundle {target} of the backlog"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A seeded kill point: how many bundles of the backlog berlin holds first (0 to all).
fn kill_target(rng: &mut StdRng, backlog: &Stream, kind: Kind, figures: &mut Figures) -> usize {
    let bundles = backlog.messages.len();
    let target = rng.random_range(0..=bundles);
    *figures
        .targets
        .entry(kind)
        .or_default()
        .entry(target * 10 / bundles)
        .or_default() += 1;
    target
}

async fn puller_trial(
    fed: &mut Federation,
    rng: &mut StdRng,
    label: &str,
    figures: &mut Figures,
    modified_ms: i64,
) {
    // Berlin is down while the backlog is published, then pulls it all at once.
    fed.kill_berlin();
    let hq_before = holding(&fed.hq_client().await, HQ).await;
    let backlog = publish_backlog(fed, rng, label, figures, modified_ms).await;
    let target = kill_target(rng, &backlog, Kind::Puller, figures);
    let delay = start_berlin_and_wait_for(fed, &backlog, target).await;
    fed.kill_berlin();
    figures.delays.entry(Kind::Puller).or_default().push(delay);

    // What berlin held at the kill: a subset of hq's items, each once.
    let hq_holding = fed.check_hq(figures).await;
    fed.start_berlin_isolated();
    figures.restarts += 1;
    check_disclosure_ledger(&fed.pki, &fed.berlin_addr, BERLIN, figures).await;
    let held = holding(&fed.berlin_client().await, BERLIN).await;
    check_subset(&held, &hq_holding);
    figures.items_checked += held.len();
    let items: usize = backlog.messages.iter().map(Vec::len).sum();
    let new_held = held
        .keys()
        .filter(|id| !hq_before.contains_key(*id))
        .count();
    *figures
        .puller_share
        .entry(new_held * 10 / items)
        .or_default() += 1;
    fed.kill_berlin();
    fed.start_berlin();
    fed.converge(&hq_holding, figures).await;
}

async fn origin_trial(
    fed: &mut Federation,
    rng: &mut StdRng,
    label: &str,
    figures: &mut Figures,
    modified_ms: i64,
) {
    fed.kill_berlin();
    let backlog = publish_backlog(fed, rng, label, figures, modified_ms).await;
    let target = kill_target(rng, &backlog, Kind::Origin, figures);
    let delay = start_berlin_and_wait_for(fed, &backlog, target).await;
    fed.kill_hq();
    figures.delays.entry(Kind::Origin).or_default().push(delay);
    fed.start_hq();
    figures.restarts += 1;
    let hq_holding = fed.check_hq(figures).await;
    fed.converge(&hq_holding, figures).await;
}

/// Runs `trials` trials from `seed`; `kinds` fixes the kinds (smoke test) or lets the
/// RNG draw them.
async fn run_trials(trials: usize, seed: u64, kinds: Option<&[Kind]>) -> Figures {
    println!("crash harness: {trials} trials, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut figures = Figures::default();
    let started = Instant::now();
    let mut fed: Option<Federation> = None;
    // Every version is this run's start time: re-sent items are the same versions.
    let modified_ms = entente::engine::now_ms();
    for trial in 0..trials {
        if trial % TRIALS_PER_RUN == 0 {
            let mut new = Federation::start();
            if let Some(mut old) = fed.take() {
                old.kill_hq();
                old.kill_berlin();
            }
            new.start_berlin();
            fed = Some(new);
        }
        let fed = fed.as_mut().expect("federation");
        if fed.berlin.is_none() {
            fed.start_berlin();
        }
        let kind = match kinds {
            Some(kinds) => kinds[trial % kinds.len()],
            None => [Kind::Publish, Kind::Puller, Kind::Origin][rng.random_range(0..3)],
        };
        let label = format!("t{trial}");
        let t0 = Instant::now();
        match kind {
            Kind::Publish => publish_trial(fed, &mut rng, &label, &mut figures, modified_ms).await,
            Kind::Puller => puller_trial(fed, &mut rng, &label, &mut figures, modified_ms).await,
            Kind::Origin => origin_trial(fed, &mut rng, &label, &mut figures, modified_ms).await,
        }
        if kind == Kind::Publish {
            // Berlin pulled live while hq was killed; it must end with exactly hq's items.
            let hq_holding = fed.check_hq(&mut figures).await;
            fed.converge(&hq_holding, &mut figures).await;
        }
        *figures.trials.entry(kind).or_default() += 1;
        println!(
            "trial {trial} {}: ok in {:.1} s (hq holds {} acknowledged items)",
            kind.name(),
            t0.elapsed().as_secs_f64(),
            fed.ledger.acked.len()
        );
    }
    if let Some(mut fed) = fed {
        fed.kill_hq();
        fed.kill_berlin();
    }
    report(&figures, seed, started.elapsed());
    figures
}

fn report(f: &Figures, seed: u64, elapsed: Duration) {
    println!(
        "crash harness summary (seed {seed}, {:.0} s)",
        elapsed.as_secs_f64()
    );
    for (kind, n) in &f.trials {
        let mut delays = f.delays.get(kind).cloned().unwrap_or_default();
        delays.sort_unstable();
        let q = |p: usize| {
            delays
                .get(delays.len().saturating_sub(1) * p / 4)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "  {:8} {n:4} trials; kill delay ms min/q1/median/q3/max {}/{}/{}/{}/{}",
            kind.name(),
            q(0),
            q(1),
            q(2),
            q(3),
            q(4)
        );
    }
    let mut calls = f.acked_calls_before_kill.clone();
    calls.sort_unstable();
    let q = |p: usize| {
        calls
            .get(calls.len().saturating_sub(1) * p / 4)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "  publish: acknowledged calls before the kill min/q1/median/q3/max {}/{}/{}/{}/{}; a call under way at {} kills",
        q(0),
        q(1),
        q(2),
        q(3),
        q(4),
        f.in_flight_at_kill
    );
    println!(
        "  unacknowledged bundles after restart: {} held whole, {} absent, 0 cut",
        f.unacked_bundles_whole, f.unacked_bundles_absent
    );
    for (kind, targets) in &f.targets {
        println!(
            "  {}: kill point (share of the backlog's bundles held first): {}",
            kind.name(),
            tenths(targets)
        );
    }
    println!(
        "  puller: share of the backlog's items held at the kill: {}",
        tenths(&f.puller_share)
    );
    println!(
        "  items acknowledged {}, item checks {}, restarts after kill {}",
        f.items_acked, f.items_checked, f.restarts
    );
    println!(
        "  disclosure ledgers walked {} times, {} records in all, all intact",
        f.ledger_checks, f.ledger_records
    );
}

/// A histogram in tenths, as text.
fn tenths(histogram: &BTreeMap<usize, usize>) -> String {
    histogram
        .iter()
        .map(|(tenth, n)| match tenth {
            10 => format!("all: {n}"),
            t => format!("{}-{}%: {n}", t * 10, t * 10 + 10),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// A few trials of each kind, in the normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_smoke() {
    let seed = env_number("ENTENTE_KILL_SEED").unwrap_or(20_261_206);
    let figures = run_trials(3, seed, Some(&[Kind::Publish, Kind::Puller, Kind::Origin])).await;
    assert_eq!(figures.trials.values().sum::<usize>(), 3);
}

/// The full harness: `ENTENTE_KILL_TRIALS` trials (default 100) from `ENTENTE_KILL_SEED`
/// (default: drawn at random and printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with ENTENTE_KILL_TRIALS=100 cargo test --release --test crash_harness -- --ignored"]
async fn crash_trials() {
    let trials = env_number("ENTENTE_KILL_TRIALS").unwrap_or(100) as usize;
    let seed = env_number("ENTENTE_KILL_SEED").unwrap_or_else(rand::random);
    run_trials(trials, seed, None).await;
}
