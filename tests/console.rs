//! The admin listener end to end: `/metrics` scraped from live `entente serve` processes
//! and parsed by the reference Prometheus parsers (Python `prometheus_client`), with the
//! values checked after publishing, pulling and withholding; the read-only console
//! driven in headless Chromium against a live three-node federation; and hostile text
//! (a partner's value in a rejection, a crafted query) shown escaped.
//!
//! Needs `python3` with the packages in `tests/python/requirements.txt` (set
//! `ENTENTE_PYTHON` for another interpreter), and for the browser tests Debian's
//! `chromium` and `chromium-driver` (`.ci/run` installs them).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Pki;
use common::rogue::{Rogue, RogueServer, feed, sign};
use entente::NodeId;
use entente::client::NodeClient;
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind};
use entente::rpc::proto::PublishRequest;
use entente::wire::{self, Tlp};

const DEADLINE: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A running `entente serve` with an admin listener, killed when dropped.
struct Served {
    child: Child,
    id: NodeId,
    addr: String,
    admin: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `entente serve` on `config` (both listeners on port 0) and reads both
/// addresses from what it prints, within 30 s.
fn serve(id: &NodeId, config: &Path) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn entente serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut grpc = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, addr)) = line.split_once(" serving on ") {
                grpc = Some(addr.to_owned());
            }
            if let Some((_, url)) = line.split_once(" admin console on http://") {
                let admin = url.trim_end_matches('/').to_owned();
                let _ = tx.send((grpc.clone().unwrap_or_default(), admin));
            }
        }
    });
    let (addr, admin) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not start its admin listener");
    Served {
        child,
        id: id.clone(),
        addr,
        admin: admin.parse().expect("admin address"),
    }
}

/// A node's configuration: an analyst client, the given `[[peer]]` blocks and an
/// admin listener on 127.0.0.1:0.
fn config(pki: &Pki, id: &NodeId, peers: &[String]) -> PathBuf {
    let path = common::write_config(pki, id, &[common::client("analyst.alice", "analyst")], &[]);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for peer in peers {
        text.push_str(peer);
    }
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&path, text).unwrap();
    path
}

fn peer(id: &str, address: &str, policy: &str) -> String {
    format!("\n[[peer]]\nid = \"{id}\"\naddress = \"{address}\"\nrole = \"peer\"\n{policy}\n")
}

/// GREEN and below, every type.
const OPEN: &str = "max_tlp = \"GREEN\"\nallow_types = [\"*\"]";

/// An HTTP/1.0 request to the admin listener: (status, head, body).
fn http(addr: SocketAddr, method: &str, target: &str, host: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the admin listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {target} HTTP/1.0\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8(response).expect("UTF-8 answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_owned(), body.to_owned())
}

fn get(addr: SocketAddr, target: &str) -> (u16, String, String) {
    http(addr, "GET", target, &addr.to_string())
}

/// One sample as the Python parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    family: String,
    #[serde(rename = "type")]
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The exposition at `addr`'s `/metrics`, parsed by `prometheus_client`.
fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let mut child = Command::new(python())
        .arg(repo("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (see tests/python/requirements.txt)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser refused the exposition: {}\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a sample"))
        .collect()
}

/// The value of the sample `name` whose labels include `labels`, if any.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Scrapes `addr` until `ready` holds for the raw exposition's parse, within the deadline.
fn scrape_until(addr: SocketAddr, what: &str, ready: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    let start = Instant::now();
    loop {
        let samples = scrape(addr);
        if ready(&samples) {
            return samples;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what} within {DEADLINE:?}; last scrape: {samples:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn indicator(value: &str, tlp: Tlp) -> wire::Item {
    wire::Item {
        id: ItemId::new_random().to_string(),
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

/// Publishes `items` to `node` as analyst.alice, as one bundle.
async fn publish(pki: &Pki, node: &Served, items: Vec<wire::Item>) {
    let who = NodeId::new("analyst.alice").unwrap();
    let client = NodeClient::connect(
        pki.material(&who).client_config().unwrap(),
        &who,
        &node.addr,
        &node.id,
    )
    .await
    .expect("connect as the analyst");
    let request = PublishRequest {
        items,
        distribution: Some(wire::Distribution {
            max_hops: None,
            recipients: vec![],
        }),
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_parser_and_count_what_happened() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    pki.client("analyst.alice");
    let stranger = pki.client("stranger.example");

    // hq shares GREEN with berlin; berlin pulls from hq.
    let hq_config = config(&pki, &hq, &[peer("berlin.office", "127.0.0.1:1", OPEN)]);
    let hq_node = serve(&hq, &hq_config);
    let berlin_config = config(&pki, &berlin, &[peer("redmond.hq", &hq_node.addr, OPEN)]);
    let berlin_node = serve(&berlin, &berlin_config);

    // Two GREEN items cross; the AMBER one is withheld from berlin by hq's policy.
    publish(
        &pki,
        &hq_node,
        vec![
            indicator("metrics-one.example", Tlp::Green),
            indicator("metrics-two.example", Tlp::Green),
            indicator("metrics-amber.example", Tlp::Amber),
        ],
    )
    .await;

    // A certificate this federation issued but hq does not know is refused.
    let refused = common::hello(&pki.material(&stranger), hq_node.addr.parse().unwrap(), &hq).await;
    assert!(refused.is_err(), "an unknown client was let in");

    let berlin_samples = scrape_until(berlin_node.admin, "berlin caught up with hq", |s| {
        value(
            s,
            "entente_pulled_items_total",
            &[("peer", "redmond.hq"), ("outcome", "accepted")],
        ) == Some(2.0)
            && value(s, "entente_pull_caught_up", &[("peer", "redmond.hq")]) == Some(1.0)
            // The head is a gauge read apart from the counters: a scrape between the
            // count and the store's head moving sees the old head.
            && value(s, "entente_feed_head", &[]) == Some(1.0)
    });
    let hq_samples = scrape_until(hq_node.admin, "hq saw berlin's pull", |s| {
        value(s, "entente_served_cursor", &[("partner", "berlin.office")]) == Some(1.0)
            && value(
                s,
                "entente_handshakes_refused_total",
                &[("reason", "unknown_partner")],
            )
            .is_some_and(|v| v >= 1.0)
    });

    // berlin, the puller: its link to hq, caught up.
    let b = &berlin_samples;
    assert_eq!(
        value(b, "entente_pull_caught_up", &[("peer", "redmond.hq")]),
        Some(1.0)
    );
    assert_eq!(
        value(b, "entente_pull_connected", &[("peer", "redmond.hq")]),
        Some(1.0)
    );
    assert_eq!(
        value(b, "entente_pull_lag_seconds", &[("peer", "redmond.hq")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            b,
            "entente_pulled_bundles_total",
            &[("peer", "redmond.hq"), ("outcome", "accepted")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            b,
            "entente_pulled_items_total",
            &[("peer", "redmond.hq"), ("outcome", "rejected")]
        ),
        None,
        "nothing was rejected"
    );
    assert_eq!(value(b, "entente_feed_head", &[]), Some(1.0));

    // hq, the origin: berlin's position in its feed, the withheld AMBER item by rule.
    let h = &hq_samples;
    assert_eq!(value(h, "entente_feed_head", &[]), Some(1.0));
    assert_eq!(
        value(
            h,
            "entente_served_lag_entries",
            &[("partner", "berlin.office")]
        ),
        Some(0.0)
    );
    assert!(
        value(
            h,
            "entente_withheld_items_total",
            &[("partner", "berlin.office"), ("rule", "above_max_tlp")]
        )
        .is_some_and(|v| v >= 1.0),
        "the AMBER item is counted as withheld: {h:#?}"
    );
    assert_eq!(
        value(
            h,
            "entente_withheld_items_total",
            &[("partner", "berlin.office"), ("rule", "allowed")]
        ),
        None
    );
    // hq pulls from an address where nothing listens: its link says so.
    assert_eq!(
        value(h, "entente_pull_connected", &[("peer", "berlin.office")]),
        Some(0.0)
    );

    // RPC latency, a histogram per method.
    let publish_count = value(
        h,
        "entente_rpc_duration_seconds_count",
        &[("method", "/entente.v1.Intel/Publish")],
    );
    assert_eq!(publish_count, Some(1.0));
    assert_eq!(
        value(
            h,
            "entente_rpc_duration_seconds_bucket",
            &[("method", "/entente.v1.Intel/Publish"), ("le", "+Inf")]
        ),
        Some(1.0)
    );
    assert!(
        h.iter().any(|s| s.family == "entente_rpc_duration_seconds"
            && s.kind == "histogram"
            && s.labels.get("method").map(String::as_str) == Some("/entente.v1.Federation/Pull")),
        "hq answered berlin's pull"
    );

    // Store, ledger, certificates and limits.
    assert!(value(h, "entente_store_size_bytes", &[]).is_some_and(|v| v > 0.0));
    assert!(
        value(h, "entente_ledger_records", &[]).is_some_and(|v| v >= 1.0),
        "the pull to berlin is in the ledger"
    );
    let own = value(
        h,
        "entente_certificate_expiry_days",
        &[("certificate", "own")],
    )
    .expect("own certificate expiry");
    assert!(own > 1.0 && own < 40_000.0, "{own}");
    assert!(
        value(
            h,
            "entente_certificate_expiry_days",
            &[("certificate", "ca")]
        )
        .is_some()
    );
    // berlin is connected (it pulls), so its certificate's expiry is known.
    assert!(
        value(
            h,
            "entente_certificate_expiry_days",
            &[("certificate", "partner"), ("subject", "berlin.office")]
        )
        .is_some_and(|d| d > 1.0),
        "{h:#?}"
    );
    assert_eq!(
        value(
            h,
            "entente_limit_refused_total",
            &[("limit", "streams_per_partner")]
        ),
        Some(0.0)
    );
    for sample in h {
        assert!(sample.name.starts_with("entente_"), "{sample:?}");
    }

    // The listener only reads, and only for a loopback host.
    let admin = hq_node.admin;
    let (status, _, _) = http(admin, "POST", "/metrics", &admin.to_string());
    assert_eq!(status, 405);
    let (status, _, _) = http(admin, "GET", "/metrics", "evil.example:80");
    assert_eq!(status, 421);
    let (status, _, _) = get(admin, &format!("/ledger?value={}", "a".repeat(5000)));
    assert_eq!(status, 414);
    let (status, _, _) = get(admin, "/no-such-page");
    assert_eq!(status, 404);
    // A request head is bounded (16 KiB).
    let mut stream = TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let filler = "x".repeat(32 * 1024);
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {admin}\r\nX-Filler: {filler}\r\n\r\n"
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty()
            || answer.starts_with("HTTP/1.1 431")
            || answer.starts_with("HTTP/1.0 431"),
        "{answer}"
    );

    // A renewed certificate file waits for the restart that puts it in use: `own` stays
    // the certificate the listener presents, and the file is shown beside it.
    pki.certs
        .renew(&hq, false, entente::certs::Validity::days_from_now(3))
        .unwrap();
    let after = scrape(admin);
    let presented = value(
        &after,
        "entente_certificate_expiry_days",
        &[("certificate", "own")],
    )
    .expect("own certificate expiry");
    assert!((presented - own).abs() < 0.1, "{presented} {own}");
    let file = value(
        &after,
        "entente_certificate_expiry_days",
        &[("certificate", "own_file")],
    )
    .expect("the renewed file, beside the certificate presented");
    assert!(file > 1.0 && file < 4.0, "{file}");
}

/// An invalid domain value that is markup: a partner controls it, and the rejection
/// quotes it.
const HOSTILE: &str = "<script>window.__entente_xss=1;document.title='owned'</script><img src=x onerror=window.__entente_xss=1>";
/// What the rejection quotes of it (the value is cut short in the error's words).
const HOSTILE_SHOWN: &str =
    "<script>window.__entente_xss=1;document.title='owned'</script><img src=x onerror=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_markup_is_shown_escaped() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let rogue = pki.material(&pki.node("rogue.node"));
    pki.client("analyst.alice");
    let now = entente::engine::now_ms();
    let bundle = sign(
        &rogue,
        &[Item {
            id: ItemId::new_random(),
            modified_ms: now - 1000,
            tlp: entente::model::Tlp::Green,
            tags: vec![],
            kind: ItemKind::Indicator(Indicator {
                indicator_type: IndicatorType::Domain,
                value: HOSTILE.into(),
                description: String::new(),
                confidence: 50,
                kill_chain_phases: vec![],
                valid_from_ms: now - 1000,
                valid_until_ms: None,
                properties: Default::default(),
            }),
        }],
        Distribution::default(),
    );
    let service = Rogue {
        feed: vec![feed(1, bundle, 0)],
        certificates: Arc::new(Mutex::new(vec![rogue.certificate_der().to_vec()])),
    };
    let server = RogueServer::start(&rogue, &hq, service).await;

    let config_path = config(
        &pki,
        &hq,
        &[peer("rogue.node", &server.addr.to_string(), OPEN)],
    );
    let node = common::start(&config_path).await;
    let admin = node.admin_addr().expect("admin listener");

    // Wait for the rejection to show on the console.
    let start = Instant::now();
    let body = loop {
        let (status, _, body) = get(admin, "/");
        assert_eq!(status, 200);
        if body.contains("id=\"rejections\"") && body.contains("rogue.node") {
            break body;
        }
        assert!(start.elapsed() < DEADLINE, "no rejection shown: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body.contains(
            "&lt;script&gt;window.__entente_xss=1;document.title=&#39;owned&#39;&lt;/script&gt;"
        ),
        "{body}"
    );
    assert!(!body.contains("<script"), "{body}");
    assert!(!body.contains("<img"), "{body}");

    // Hostile query parameters come back escaped too.
    for target in [
        "/explain?partner=%3Cscript%3Ex%3C%2Fscript%3E&item=%3Cimg%20src%3Dx%3E",
        "/ledger?item=%3Cscript%3Ex%3C%2Fscript%3E",
        "/ledger?value=%3Cscript%3Ex%3C%2Fscript%3E%22%3E%3Cimg%20src%3Dx%3E",
    ] {
        let (_, head, body) = get(admin, target);
        assert!(!body.contains("<script"), "{target}: {body}");
        assert!(!body.contains("<img"), "{target}: {body}");
        assert!(
            body.contains("&lt;script&gt;") || body.contains("&lt;img"),
            "{target}: {body}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-security-policy: default-src 'none'"),
            "{head}"
        );
    }

    // And in a browser, nothing of it runs.
    let url = format!("http://{admin}/");
    let seen = tokio::task::spawn_blocking(move || browse(&["xss", &url]))
        .await
        .unwrap();
    assert_eq!(seen["scripts"], 0, "{seen}");
    assert_eq!(seen["images"], 0, "{seen}");
    assert_eq!(seen["flag"], serde_json::Value::Null, "{seen}");
    assert_eq!(seen["title"], "Overview", "{seen}");
    let details = seen["details"].as_array().expect("rejection details");
    assert!(
        details
            .iter()
            .any(|d| d.as_str().is_some_and(|d| d.contains(HOSTILE_SHOWN))),
        "the hostile value is shown as text: {seen}"
    );

    node.shutdown(Duration::from_secs(10)).await.unwrap();
    server.stop().await;
}

/// Runs `tests/python/console_browser.py ARGS` (Selenium and headless Chromium) and
/// returns the JSON it prints.
fn browse(args: &[&str]) -> serde_json::Value {
    assert!(
        Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists(),
        "the browser tests need Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
    );
    let output = Command::new(python())
        .arg(repo("tests/python/console_browser.py"))
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run python3 (see tests/python/requirements.txt)");
    assert!(
        output.status.success(),
        "the browser run failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("the browser run's JSON")
}

/// Where the screenshot of the console is kept: `target/console-screenshot.png` (beside
/// the test build's `tmp`).
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("console-screenshot.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_three_node_federation_in_a_browser() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let paris = pki.node("paris.office");
    pki.client("analyst.alice");

    // hq → berlin → paris: berlin passes hq's GREEN items on to paris.
    let hq_config = config(&pki, &hq, &[peer("berlin.office", "127.0.0.1:1", OPEN)]);
    let hq_node = serve(&hq, &hq_config);
    let berlin_config = config(
        &pki,
        &berlin,
        &[
            peer("redmond.hq", &hq_node.addr, OPEN),
            peer(
                "paris.office",
                "127.0.0.1:1",
                &format!("{OPEN}\nforward_third_party = true"),
            ),
        ],
    );
    let berlin_node = serve(&berlin, &berlin_config);
    let paris_config = config(
        &pki,
        &paris,
        &[peer("berlin.office", &berlin_node.addr, OPEN)],
    );
    let paris_node = serve(&paris, &paris_config);

    let green = indicator("console-green.example", Tlp::Green);
    let amber = indicator("console-amber.example", Tlp::Amber);
    let (green_id, amber_id) = (green.id.clone(), amber.id.clone());
    publish(&pki, &hq_node, vec![green, amber]).await;

    // The federation settles: paris holds the GREEN item through berlin.
    scrape_until(paris_node.admin, "paris caught up with berlin", |s| {
        value(
            s,
            "entente_pulled_items_total",
            &[("peer", "berlin.office"), ("outcome", "accepted")],
        ) == Some(1.0)
            && value(s, "entente_pull_caught_up", &[("peer", "berlin.office")]) == Some(1.0)
    });
    scrape_until(berlin_node.admin, "berlin saw paris pull", |s| {
        value(
            s,
            "entente_served_lag_entries",
            &[("partner", "paris.office")],
        ) == Some(0.0)
            && value(s, "entente_pull_caught_up", &[("peer", "redmond.hq")]) == Some(1.0)
    });

    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);
    let plan = serde_json::json!({
        "origin": format!("http://{}", hq_node.admin),
        "middle": format!("http://{}", berlin_node.admin),
        "explain_partner": "berlin.office",
        "explain": { "green": green_id, "amber": amber_id },
        "lookup_value": "console-green.example",
        "screenshot": screenshot,
    });
    let plan_path = pki.path().join("browser-plan.json");
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let plan_arg = plan_path.display().to_string();
    let seen = tokio::task::spawn_blocking(move || browse(&["federation", &plan_arg]))
        .await
        .unwrap();

    // berlin's overview: caught up with hq, paris caught up with it.
    assert_eq!(seen["middle_node"], "berlin.office", "{seen}");
    let pulled = &seen["middle_pulled"]["redmond.hq"];
    assert_eq!(pulled["lag"], "0.0 s", "{seen}");
    // A peer's positions are sealed: the puller shows none.
    assert!(pulled.get("cursor").is_none(), "{seen}");
    assert_eq!(pulled["state"], "caught up", "{seen}");
    assert_eq!(pulled["items"], "1 / 0", "{seen}");
    let served = &seen["middle_served"]["paris.office"];
    assert_eq!(served["behind"], "0", "{seen}");
    assert_eq!(served["cursor"], "1", "{seen}");
    let partners = seen["middle_partners"].as_object().expect("partners");
    assert!(
        partners.contains_key("redmond.hq") && partners.contains_key("paris.office"),
        "{seen}"
    );
    assert!(partners.contains_key("analyst.alice"), "{seen}");
    for which in ["own", "ca"] {
        let days: f64 = seen["middle_certificates"][which]["days"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{which} certificate days: {seen}"));
        assert!(days >= 1.0, "{seen}");
    }
    let ledger_records: u64 = seen["middle_ledger_records"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .expect("ledger records");
    assert!(ledger_records >= 1, "{seen}");

    // hq's explain form: GREEN reaches berlin, AMBER is withheld by max_tlp.
    let explain = &seen["explain"];
    assert_eq!(explain["green"]["class"], "allowed", "{seen}");
    assert_eq!(explain["green"]["value"], "console-green.example", "{seen}");
    assert_eq!(explain["amber"]["class"], "withheld", "{seen}");
    assert!(
        explain["amber"]["rule"]
            .as_str()
            .is_some_and(|r| r.contains("AMBER") && r.contains("GREEN")),
        "{seen}"
    );

    // Who received the GREEN value: berlin from hq, paris from berlin, both by pull.
    let deliveries = |at: &str| -> Vec<(String, String)> {
        seen["received"][at]["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .map(|d| {
                (
                    d["partner"].as_str().unwrap_or("").to_owned(),
                    d["path"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    assert!(
        deliveries("origin").contains(&("berlin.office".into(), "pull".into())),
        "{seen}"
    );
    assert!(
        deliveries("middle").contains(&("paris.office".into(), "pull".into())),
        "{seen}"
    );
    assert_eq!(seen["received"]["middle"]["value"], "console-green.example");
    assert_eq!(seen["hostile"]["scripts"], 0, "{seen}");

    let png = std::fs::read(&screenshot).expect("the screenshot was kept");
    assert!(
        png.starts_with(b"\x89PNG"),
        "a PNG at {}",
        screenshot.display()
    );
}
