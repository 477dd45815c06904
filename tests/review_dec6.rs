//! TAXII over HTTPS against a real `entente serve` process: an envelope is refused
//! whole when a name is given twice anywhere in it, in an element of `objects` that is
//! not an object too; and a listing records in the disclosure ledger only the items it
//! serves.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use entente::NodeId;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Pki, TaxiiNode, node_section, serve_taxii};

const TAXII: &str = "application/taxii+json;version=2.1";
const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

/// An answer: status, body.
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn tls(pki: &Pki, who: &str) -> Arc<rustls::ClientConfig> {
    let id = NodeId::new(who).unwrap();
    let mut config = (*pki.material(&id).client_config().unwrap()).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 request on a new connection.
async fn send(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Reply {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut stream = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: {TAXII}\r\n"
    );
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: {TAXII}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    // `write_all` on a TLS stream may return with the last records still in the TLS
    // layer's buffer (when the socket was full as it took them): without a flush the
    // node waits for the rest of the body and the client for an answer.
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    Reply {
        status,
        body: raw[split + 4..].to_vec(),
    }
}

async fn get(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Reply {
    send(tls, addr, "GET", path, b"").await
}

async fn post(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str, body: &str) -> Reply {
    send(tls, addr, "POST", path, body.as_bytes()).await
}

fn indicator(id: &str, domain: &str, marking: &str) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": id,
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "pattern": format!("[domain-name:value = '{domain}']"),
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "object_marking_refs": [marking],
    })
}

/// A node (redmond.hq) with a peer, a GREEN researcher, an analyst and a TAXII listener;
/// A node (redmond.hq) with a peer, a GREEN researcher, an analyst and a TAXII listener;
/// `extra` is appended (feeds).
fn write_config(pki: &Pki, extra: &str) -> std::path::PathBuf {
    write_config_with_body(pki, extra, 65536)
}

/// [`write_config`] with another `taxii.max_body_bytes`.
fn write_config_with_body(pki: &Pki, extra: &str, max_body_bytes: usize) -> std::path::PathBuf {
    let hq = NodeId::new("redmond.hq").unwrap();
    let mut text = node_section(pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n\
         \n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n",
    );
    text.push_str(&format!(
        "\n[taxii]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = {max_body_bytes}\n"
    ));
    text.push_str(extra);
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn federation() -> Pki {
    let pki = Pki::new();
    pki.node("redmond.hq");
    pki.node("berlin.office");
    pki.client("researcher.uni-x");
    pki.client("analyst.soc");
    pki
}

/// The path of the collection's objects, as `tls` finds it.
async fn objects_path(tls: &Arc<rustls::ClientConfig>, node: &TaxiiNode) -> String {
    let listed = get(tls, node.taxii, "/api/collections/").await.json();
    let id = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    format!("/api/collections/{id}/objects/")
}

/// A name given twice is refused at every depth of a TAXII envelope: inside an element
/// of `objects` that is an array as well. Otherwise the same envelope, which parsers
/// read differently, is published in part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_given_twice_inside_an_array_element_refuses_the_envelope() {
    const ID: &str = "indicator--d6d6d6d6-0000-4000-8000-000000000001";
    let pki = federation();
    let config = write_config(&pki, "");
    let node = serve_taxii(&config);
    let analyst = tls(&pki, "analyst.soc");
    let objects = objects_path(&analyst, &node).await;
    let body = json!({"objects": [[{"a": 1}], indicator(ID, "twice-in-array.example", GREEN)]})
        .to_string()
        .replacen(r#"{"a":1}"#, r#"{"a":1,"a":2}"#, 1);
    assert!(body.contains(r#""a":1,"a":2"#), "{body}");
    let posted = post(&analyst, node.taxii, &objects, &body).await;
    assert_eq!(posted.status, 400, "{}", posted.text());
    assert!(posted.text().contains("given twice"), "{}", posted.text());
    assert_eq!(
        get(&analyst, node.taxii, &format!("{objects}{ID}/"))
            .await
            .status,
        404
    );
}

/// A listing filtered by `match[type]` serves only the objects of those types; the
/// disclosure ledger must record those, not every item the store read for the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_records_only_the_items_it_serves() {
    const INDICATOR: &str = "indicator--e7e7e7e7-0000-4000-8000-000000000001";
    const MALWARE: &str = "malware--e7e7e7e7-0000-4000-8000-000000000002";
    let pki = federation();
    let config = write_config(&pki, "");
    let node = serve_taxii(&config);
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = objects_path(&analyst, &node).await;
    let malware = json!({
        "type": "malware", "spec_version": "2.1", "id": MALWARE,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "dropper", "is_family": true,
        "object_marking_refs": [GREEN],
    });
    let body = json!({"objects": [indicator(INDICATOR, "served.example", GREEN), malware]});
    let posted = post(&analyst, node.taxii, &objects, &body.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(2),
        "{}",
        posted.text()
    );

    let listed = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[type]=malware"),
    )
    .await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<String> = listed.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![MALWARE.to_owned()], "{}", listed.text());

    let hq = NodeId::new("redmond.hq").unwrap();
    let operator = entente::client::NodeClient::connect(
        pki.material(&hq).client_config().unwrap(),
        &hq,
        &node.addr,
        &hq,
    )
    .await
    .unwrap();
    let mut records = operator
        .ledger_show(entente::rpc::proto::LedgerShowRequest {
            partner: "researcher.uni-x".into(),
            since_unix_ms: 0,
        })
        .await
        .unwrap();
    let mut delivered = BTreeSet::new();
    while let Some(record) = records.message().await.unwrap() {
        assert_eq!(record.path, "taxii-objects");
        for delivery in &record.deliveries {
            delivered.extend(delivery.indices.iter().copied());
        }
    }
    // The envelope's objects are the bundle's items 0 (the indicator) and 1 (the
    // malware); only the malware was served.
    assert_eq!(delivered, BTreeSet::from([1]));
}
