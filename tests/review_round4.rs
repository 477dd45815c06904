//! Attacks on TAXII dates per caller and on STIX pattern opacity: a client that pages
//! with `next` across a reload that widens its policy, and a pattern that hides a
//! comparison in a comment.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use common::https::{get, indicator, objects_path, post, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

const RESEARCHER_GREEN: &str =
    "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"";
const RESEARCHER_AMBER: &str =
    "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"AMBER\"";

/// A node (redmond.hq) with an analyst that sees everything, a GREEN read-only
/// researcher and a read-only client limited to IPv4 addresses, with a TAXII listener,
/// as its own process. Returns the config path too.
fn start_taxii() -> (Pki, TaxiiNode, std::path::PathBuf) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    for who in ["analyst.soc", "researcher.uni-x", "addresses.uni-v"] {
        pki.client(who);
    }
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(&format!(
        "\n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\n{RESEARCHER_GREEN}\n\
         \n[[client]]\nid = \"addresses.uni-v\"\nrole = \"read_only\"\nallow_types = [\"ipv4\"]\nmax_tlp = \"GREEN\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = serve_taxii(&path);
    (pki, node, path)
}

/// Sends SIGHUP to the node process: a reload.
fn reload(node: &TaxiiNode) {
    let pid = i32::try_from(node.child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

fn indicator_id(n: u32) -> String {
    format!("indicator--c4c4c4c4-0000-4000-8000-{n:012}")
}

/// The indicator ids of an envelope or a manifest.
fn item_ids(page: &Value) -> Vec<String> {
    page["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .filter_map(|o| o["id"].as_str())
                .filter(|id| id.starts_with("indicator--"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The latest `date_added` of a manifest page.
fn latest_date(page: &Value, last: &mut String) {
    for entry in page["objects"].as_array().into_iter().flatten() {
        if let Some(at) = entry["date_added"].as_str() {
            if at > last.as_str() {
                *last = at.to_owned();
            }
        }
    }
}

async fn publish(
    analyst: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
    object: Value,
) {
    let envelope = json!({ "objects": [object] }).to_string();
    let posted = post(analyst, node.taxii, objects, &envelope).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
}

/// Follows a listing from `first` (a path with its query), a client's way: each page's
/// `next` in turn; a `next` the server refuses starts the listing again from `first`.
/// Adds the ids served to `seen` and keeps the latest date added in `last`.
async fn follow(
    client: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    first: &str,
    mut next: Option<String>,
    seen: &mut BTreeSet<String>,
    last: &mut String,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listing never ended"
        );
        let path = match &next {
            Some(token) => format!("{first}&next={token}"),
            None => first.to_owned(),
        };
        let reply = get(client, node.taxii, &path).await;
        if reply.status == 400 && next.is_some() {
            next = None;
            continue;
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        latest_date(&page, last);
        seen.extend(item_ids(&page));
        match page["next"].as_str() {
            Some(token) if page["more"] == json!(true) => next = Some(token.to_owned()),
            _ => return,
        }
    }
}

/// A client that lists its collection's manifest page by page and then polls with `added_after`
/// from the last date it was given. Its policy is widened to AMBER while it pages: the
/// `next` it holds went on from where it was, the pages after the change were dated from
/// the change, and its poll from that date passed over the AMBER indicator the node
/// accepted before the place it had reached. It never received it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_paging_across_a_widening_still_receives_what_it_may_now_see() {
    let (pki, node, config) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = objects_path(&analyst, &node).await;
    // Accepted in this order: the AMBER one first, then two GREEN ones.
    let amber = indicator_id(1);
    publish(
        &analyst,
        &node,
        &objects,
        indicator(&amber, "amber.example", AMBER),
    )
    .await;
    let greens = [indicator_id(2), indicator_id(3)];
    publish(
        &analyst,
        &node,
        &objects,
        indicator(&greens[0], "g1.example", GREEN),
    )
    .await;
    publish(
        &analyst,
        &node,
        &objects,
        indicator(&greens[1], "g2.example", GREEN),
    )
    .await;

    // The researcher pages its manifest one entry at a time until it has the first
    // GREEN one.
    let manifest = objects.replace("/objects/", "/manifest/");
    let first = format!("{manifest}?limit=1");
    let mut seen = BTreeSet::new();
    let mut last = String::new();
    let mut next: Option<String> = None;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !seen.contains(&greens[0]) {
        assert!(tokio::time::Instant::now() < deadline);
        let path = match &next {
            Some(token) => format!("{first}&next={token}"),
            None => first.clone(),
        };
        let reply = get(&researcher, node.taxii, &path).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let page = reply.json();
        latest_date(&page, &mut last);
        seen.extend(item_ids(&page));
        next = page["next"].as_str().map(str::to_owned);
        assert!(next.is_some(), "{page}");
    }
    assert!(!seen.contains(&amber));

    // The researcher is widened to AMBER; the object resource says when it applies.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(RESEARCHER_GREEN, RESEARCHER_AMBER);
    std::fs::write(&config, text).unwrap();
    reload(&node);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while get(&researcher, node.taxii, &format!("{objects}{amber}/"))
        .await
        .status
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // It goes on paging, then polls from the last date it was given.
    follow(&researcher, &node, &first, next, &mut seen, &mut last).await;
    let poll = format!("{manifest}?limit=1000&added_after={last}");
    let mut polled = BTreeSet::new();
    let mut newest = last.clone();
    follow(&researcher, &node, &poll, None, &mut polled, &mut newest).await;
    seen.extend(polled);
    assert!(
        seen.contains(&amber),
        "the AMBER indicator never reached the widened client: {seen:?}"
    );
}

/// A STIX pattern comment (`/* … */`, which STIX pattern parsers skip) holding a quote
/// hid the comparison after it: the domain it names was read as the inside of a string,
/// and the pattern was judged as about an IPv4 address only, so a client limited to IPv4
/// addresses received an indicator of a domain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comparison_hidden_in_a_pattern_comment_is_not_passed_over() {
    let (pki, node, _config) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let addresses = tls(&pki, "addresses.uni-v");
    let objects = objects_path(&analyst, &node).await;
    let plain = indicator_id(10);
    let mut address = indicator(&plain, "unused.example", GREEN);
    address["pattern"] = json!("[ipv4-addr:value = '198.51.100.7']");
    publish(&analyst, &node, &objects, address).await;
    let hidden = indicator_id(11);
    let mut smuggled = indicator(&hidden, "unused.example", GREEN);
    smuggled["pattern"] = json!(
        "[ipv4-addr:value = '198.51.100.8' /* ' */ OR domain-name:value = 'c2.evil.example' /* ' */]"
    );
    publish(&analyst, &node, &objects, smuggled).await;
    let also = indicator_id(12);
    let mut nested = indicator(&also, "unused.example", GREEN);
    nested["pattern"] =
        json!("([ipv4-addr:value = '198.51.100.9' AND 'x' OR domain-name:value = 'y.example'])");
    publish(&analyst, &node, &objects, nested).await;

    let listed = objects_path(&addresses, &node).await;
    let reply = get(&addresses, node.taxii, &format!("{listed}?limit=1000")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ids = item_ids(&reply.json());
    assert!(ids.contains(&plain), "{ids:?}");
    assert!(!ids.contains(&hidden), "{ids:?}");
    for id in [&hidden, &also] {
        let one = get(&addresses, node.taxii, &format!("{listed}{id}/")).await;
        assert_eq!(one.status, 404, "{}", one.text());
    }
}
