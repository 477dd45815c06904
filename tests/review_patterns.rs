//! The types a STIX pattern is judged by, through a node's TAXII listener: a pattern that
//! carries more than the reader reads of it must not reach a client whose policy allows
//! only the types read.

mod common;

use std::sync::Arc;

use serde_json::{Value, json};

use common::https::{get, indicator, objects_path, post, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

/// A node (redmond.hq) with a TAXII listener, as its own process, with an analyst, a
/// read-only client limited to IPv4 addresses and one limited to e-mail addresses.
fn start_taxii() -> (Pki, TaxiiNode) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    for who in ["analyst.soc", "addresses.uni-v", "mail.uni-w"] {
        pki.client(who);
    }
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"addresses.uni-v\"\nrole = \"read_only\"\nallow_types = [\"ipv4\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"mail.uni-w\"\nrole = \"read_only\"\nallow_types = [\"email\"]\nmax_tlp = \"GREEN\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = serve_taxii(&path);
    (pki, node)
}

fn indicator_id(n: u32) -> String {
    format!("indicator--d5d5d5d5-0000-4000-8000-{n:012}")
}

/// Publishes one GREEN indicator with `pattern` over TAXII; the node must accept it (a
/// refused pattern would prove nothing about who receives it).
async fn publish(
    analyst: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
    id: &str,
    pattern: &str,
) {
    let mut object = indicator(id, "unused.example", GREEN);
    object["pattern"] = json!(pattern);
    let envelope = json!({ "objects": [object] }).to_string();
    let posted = post(analyst, node.taxii, objects, &envelope).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    let status = posted.json();
    assert_eq!(status["success_count"], 1, "{pattern}: {status}");
}

/// The indicator ids of an envelope.
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

/// What `client` lists, and whether it may fetch each of `withheld` (it must not).
async fn assert_sees_only(
    client: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    shown: &[&str],
    withheld: &[(&str, &str)],
) {
    let listed = objects_path(client, node).await;
    let reply = get(client, node.taxii, &format!("{listed}?limit=1000")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ids = item_ids(&reply.json());
    for id in shown {
        assert!(ids.iter().any(|i| i == id), "{id} not listed: {ids:?}");
    }
    for (id, pattern) in withheld {
        assert!(!ids.iter().any(|i| i == id), "listed: {pattern}");
        let one = get(client, node.taxii, &format!("{listed}{id}/")).await;
        assert_eq!(one.status, 404, "served: {pattern}: {}", one.text());
    }
}

fn borrowed<'a>(list: &'a [(String, &'static str)]) -> Vec<(&'a str, &'static str)> {
    list.iter().map(|(id, p)| (id.as_str(), *p)).collect()
}

/// Patterns whose reading left something out: a domain written between observations
/// (bare, or with look-alike brackets, colon and quotes), an IPv4-mapped address compared
/// as an `ipv6-addr` (a pattern of that comparison alone is written again as an
/// `ipv4-addr` one on import; this one is kept as written), and a string escape STIX does not define, after which a STIX lexer
/// pairs the quotes otherwise and reads a domain comparison where the reader read the
/// local part of an e-mail address. Each was judged by the one type read (IPv4 or
/// e-mail) and reached the client allowed that type only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_is_not_judged_by_less_than_it_carries() {
    let (pki, node) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let addresses = tls(&pki, "addresses.uni-v");
    let mail = tls(&pki, "mail.uni-w");
    let objects = objects_path(&analyst, &node).await;

    let address = indicator_id(1);
    let address_pattern = "[ipv4-addr:value = '198.51.100.7']";
    let email = indicator_id(2);
    let email_pattern = "[email-addr:value = 'b@a.example']";
    let to_addresses = [
        (
            indicator_id(3),
            "[ipv4-addr:value = '198.51.100.8'] OR \u{ff3b}domain-name\u{ff1a}value \u{ff1d} \
             \u{ff07}c2.evil.example\u{ff07}\u{ff3d}",
        ),
        (
            indicator_id(4),
            "[ipv4-addr:value = '198.51.100.9'] OR c2.evil.example",
        ),
        (
            indicator_id(5),
            "[ipv6-addr:value = '::ffff:198.51.100.10' OR ipv4-addr:value = '198.51.100.11']",
        ),
    ];
    let to_mail = [(
        indicator_id(6),
        "[email-addr:value = 'a\\q@x.example' OR email-addr:value = \
         ']OR[domain-name:value=\\'c2.evil.example\\'@a.example' OR \
         email-addr:value = 'b@a.example']",
    )];
    publish(&analyst, &node, &objects, &address, address_pattern).await;
    publish(&analyst, &node, &objects, &email, email_pattern).await;
    for (id, pattern) in to_addresses.iter().chain(&to_mail) {
        publish(&analyst, &node, &objects, id, pattern).await;
    }

    assert_sees_only(&addresses, &node, &[&address], &borrowed(&to_addresses)).await;
    assert_sees_only(&mail, &node, &[&email], &borrowed(&to_mail)).await;
}
