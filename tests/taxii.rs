//! The TAXII 2.1 listener of a real `entente serve` process, over HTTPS with client
//! certificates (and HTTP Basic for a read-only client): each caller sees exactly what
//! its policy gives it, a withheld object is answered as an absent one, paging follows
//! `next`, writes need the analyst role, bad input gets TAXII errors, and a reload
//! takes Basic credentials away at once.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use entente::NodeId;
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Pki, TaxiiNode, hash_password, node_section, serve_taxii};

const TAXII: &str = "application/taxii+json;version=2.1";
const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const CLEAR: &str = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";
const SIEM_PASSWORD: &str = "siem basic password 1";

/// An answer: status, headers (names in lower case), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the request's body was all written before the answer was read (a node
    /// that closes without reading it makes the write fail).
    sent_whole: bool,
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

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A TLS client for the TAXII listener: with `who`'s certificate, or without one.
fn tls(pki: &Pki, who: Option<&str>) -> Arc<rustls::ClientConfig> {
    let mut config = match who {
        Some(who) => {
            let id = NodeId::new(who).unwrap();
            (*pki.material(&id).client_config().unwrap()).clone()
        }
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in entente::transport::files::read_certificates(&pki.ca_cert()).unwrap() {
                roots.add(cert).unwrap();
            }
            rustls::ClientConfig::builder_with_provider(entente::transport::crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One HTTP/1.1 request on a new connection; `Err` when the connection or handshake
/// fails.
async fn send(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut stream = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST"
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    // What the TLS layer still holds of the body goes out before the answer is awaited.
    // A node that refuses a body as too large answers and closes before taking all of
    // it, so the write may fail: the answer is read all the same.
    let written = match stream.write_all(body).await {
        Ok(()) => stream.flush().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let mut raw = Vec::new();
    // The server closes after the answer; a reset after it is fine.
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| "no answer in time".to_owned())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            format!(
                "no HTTP answer ({} bytes; body written: {written:?})",
                raw.len()
            )
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
        sent_whole: written.is_ok(),
    })
}

async fn get(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Reply {
    send(tls, addr, "GET", path, &[("Accept", TAXII)], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn indicator(n: usize, marking: &str) -> Value {
    json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--{n:08x}-0000-4000-8000-{n:012x}"),
        "created": "2025-01-01T00:00:00.000Z",
        "modified": "2025-01-02T00:00:00.000Z",
        "pattern": format!("[domain-name:value = 'host-{n}.example.org']"),
        "pattern_type": "stix",
        "valid_from": "2025-01-01T00:00:00Z",
        "object_marking_refs": [marking],
    })
}

fn id_of(n: usize) -> String {
    format!("indicator--{n:08x}-0000-4000-8000-{n:012x}")
}

/// The node's configuration: a researcher (read-only, GREEN), an analyst (writes), a
/// SIEM connector without a certificate (read-only, CLEAR, HTTP Basic) and a peer node.
fn write_config(pki: &Pki, with_basic: bool) -> std::path::PathBuf {
    let hq = NodeId::new("redmond.hq").unwrap();
    let mut text = node_section(pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\n\
         \n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"CLEAR\"\n\
         \n[[client]]\nid = \"nothing.uni-z\"\nrole = \"read_only\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n",
    );
    if with_basic {
        let hash = pki.path().join("siem.hash");
        let hash = match std::fs::read_to_string(&hash) {
            Ok(h) => h,
            Err(_) => {
                let h = hash_password(SIEM_PASSWORD);
                std::fs::write(&hash, &h).unwrap();
                h
            }
        };
        text.push_str(&format!(
            "\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{hash}\"\n"
        ));
    }
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
    pki.client("siem.soc");
    pki.client("nothing.uni-z");
    pki
}

/// A node started on `write_config(.., false)`, with the researcher's and the analyst's
/// TLS clients and its collection's path (`/api/collections/{id}/`).
struct Started {
    pki: Pki,
    config: std::path::PathBuf,
    node: TaxiiNode,
    researcher: Arc<rustls::ClientConfig>,
    analyst: Arc<rustls::ClientConfig>,
    collection: String,
}

async fn start() -> Started {
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let analyst = tls(&pki, Some("analyst.soc"));
    let listed = get(&analyst, node.taxii, "/api/collections/").await.json();
    let cid = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    Started {
        pki,
        config,
        node,
        researcher,
        analyst,
        collection: format!("/api/collections/{cid}/"),
    }
}

/// POSTs an envelope of `sent` to `objects` as `writer`; the answer.
async fn post_envelope(
    writer: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    objects: &str,
    sent: Vec<Value>,
) -> Reply {
    let body = json!({ "objects": sent }).to_string();
    let headers = [("Accept", TAXII), ("Content-Type", TAXII)];
    send(writer, addr, "POST", objects, &headers, body.as_bytes())
        .await
        .unwrap()
}

/// Adds `sent` through `objects` (POST) as `analyst`; every object must be taken.
async fn publish_as(
    analyst: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    objects: &str,
    sent: Vec<Value>,
) {
    let reply = post_envelope(analyst, addr, objects, sent).await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        reply.json()["failure_count"],
        json!(0),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// Types of the objects served beside the items: what the items refer to.
const SUPPORTING: [&str; 3] = ["marking-definition", "identity", "extension-definition"];

/// A listing followed to its end: the item ids, the number of items per page, and the
/// marking definitions, identities and extension definitions served with them.
struct Listing {
    ids: Vec<String>,
    pages: Vec<usize>,
    supporting: Vec<Value>,
}

/// Every object of the collection as `tls` sees it, following `next` with `limit`.
async fn listing(
    tls: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
    limit: usize,
) -> Listing {
    let mut ids = Vec::new();
    let mut pages = Vec::new();
    let mut supporting: Vec<Value> = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            None => format!("{objects}?limit={limit}"),
            Some(n) => format!("{objects}?limit={limit}&next={n}"),
        };
        let reply = get(tls, node.taxii, &path).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("content-type"), Some(TAXII));
        let body = reply.json();
        let objects = body["objects"].as_array().unwrap();
        // `limit` bounds every object of a page, the definitions with the items.
        assert!(objects.len() <= limit, "{} objects: {body}", objects.len());
        let mut items = 0;
        for o in objects {
            if SUPPORTING.contains(&o["type"].as_str().unwrap()) {
                // Each is served once per listing.
                assert!(
                    !supporting.iter().any(|s| s["id"] == o["id"]),
                    "served twice: {o}"
                );
                supporting.push(o.clone());
            } else {
                items += 1;
                ids.push(o["id"].as_str().unwrap().to_owned());
            }
        }
        pages.push(items);
        assert!(items <= limit);
        if items > 0 {
            assert!(reply.header("x-taxii-date-added-first").is_some());
            assert!(reply.header("x-taxii-date-added-last").is_some());
        }
        if body["more"] == json!(true) {
            next = Some(body["next"].as_str().unwrap().to_owned());
        } else {
            assert!(body.get("next").is_none());
            break;
        }
        assert!(pages.len() < 100, "paging does not end");
    }
    Listing {
        ids,
        pages,
        supporting,
    }
}

/// Every item id of the collection as `tls` sees it, or `None` when a `next` is refused
/// part way (a reload changed the caller's policy between two pages).
async fn ids_under_one_policy(
    tls: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..100 {
        let path = match &next {
            None => format!("{objects}?limit=100"),
            Some(n) => format!("{objects}?limit=100&next={n}"),
        };
        let reply = get(tls, node.taxii, &path).await;
        if reply.status == 400 && next.is_some() {
            return None;
        }
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        ids.extend(item_ids(&body));
        match body["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => return Some(ids),
        }
    }
    panic!("paging does not end");
}

/// The ids of the items (not the objects they refer to) in an objects or manifest
/// answer.
fn item_ids(body: &Value) -> Vec<String> {
    body["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .filter(|id| !SUPPORTING.contains(&id.split("--").next().unwrap()))
        .collect()
}

/// Every item id of the collection as `tls` sees it, following `next` with `limit`;
/// also the number of items per page.
async fn all_ids(
    tls: &Arc<rustls::ClientConfig>,
    node: &TaxiiNode,
    objects: &str,
    limit: usize,
) -> (Vec<String>, Vec<usize>) {
    let Listing { ids, pages, .. } = listing(tls, node, objects, limit).await;
    (ids, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_serves_each_caller_its_view_and_refuses_what_it_may_not_do() {
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let analyst = tls(&pki, Some("analyst.soc"));
    let peer = tls(&pki, Some("berlin.office"));
    let anonymous = tls(&pki, None);

    // Discovery, API root, collections.
    let discovery = get(&researcher, node.taxii, "/taxii2/").await;
    assert_eq!(discovery.status, 200);
    assert_eq!(discovery.header("content-type"), Some(TAXII));
    let root = discovery.json()["api_roots"][0]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(root, format!("https://{}/api/", node.taxii));
    let api = get(&researcher, node.taxii, "/api/").await.json();
    assert_eq!(api["versions"], json!([TAXII]));
    assert_eq!(api["max_content_length"], json!(65536));
    let collections = get(&researcher, node.taxii, "/api/collections/")
        .await
        .json();
    let collection = &collections["collections"][0];
    assert_eq!(collection["can_read"], json!(true));
    assert_eq!(collection["can_write"], json!(false));
    let cid = collection["id"].as_str().unwrap().to_owned();
    let analyst_view = get(&analyst, node.taxii, &format!("/api/collections/{cid}/"))
        .await
        .json();
    assert_eq!(analyst_view["can_write"], json!(true));
    let objects = format!("/api/collections/{cid}/objects/");

    // The analyst writes: 5 GREEN, 1 AMBER, 2 CLEAR indicators, and a malware object
    // the node does not hold.
    let mut sent: Vec<Value> = (1..=5).map(|n| indicator(n, GREEN)).collect();
    sent.push(indicator(6, AMBER));
    sent.push(indicator(7, CLEAR));
    sent.push(indicator(8, CLEAR));
    sent.push(json!({"type": "malware", "spec_version": "2.1", "id": "malware--0b2e6a5b-0000-4000-8000-000000000001", "name": "x", "is_family": false, "created": "2025-01-01T00:00:00Z", "modified": "2025-01-01T00:00:00Z"}));
    let mut unmarked = indicator(9, GREEN);
    unmarked
        .as_object_mut()
        .unwrap()
        .remove("object_marking_refs");
    sent.push(unmarked);
    let envelope = json!({ "objects": sent }).to_string();
    let posted = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &[("Accept", TAXII), ("Content-Type", TAXII)],
        envelope.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(
        posted.status,
        202,
        "{}",
        String::from_utf8_lossy(&posted.body)
    );
    let status = posted.json();
    assert_eq!(status["status"], json!("complete"));
    assert_eq!(status["total_count"], json!(10));
    assert_eq!(status["success_count"], json!(8));
    assert_eq!(status["failure_count"], json!(2));
    let failed: BTreeSet<&str> = status["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(failed.contains(id_of(9).as_str()), "{status}");
    let status_path = format!("/api/status/{}/", status["id"].as_str().unwrap());
    assert_eq!(get(&analyst, node.taxii, &status_path).await.json(), status);
    // Someone else's status is not found.
    assert_eq!(get(&researcher, node.taxii, &status_path).await.status, 404);

    // A read-only client may not write, with a certificate or with Basic credentials.
    let one = json!({ "objects": [indicator(20, GREEN)] }).to_string();
    let refused = send(
        &researcher,
        node.taxii,
        "POST",
        &objects,
        &[("Accept", TAXII), ("Content-Type", TAXII)],
        one.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["http_status"], json!("403"));
    let siem = basic("siem.soc", SIEM_PASSWORD);
    let refused = send(
        &anonymous,
        node.taxii,
        "POST",
        &objects,
        &[
            ("Accept", TAXII),
            ("Content-Type", TAXII),
            ("Authorization", &siem),
        ],
        one.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 403);
    // Nothing was written.
    assert_eq!(
        get(&analyst, node.taxii, &format!("{objects}{}/", id_of(20)))
            .await
            .status,
        404
    );

    // Each caller sees exactly its view, paged.
    let green: BTreeSet<String> = [1, 2, 3, 4, 5, 7, 8].iter().map(|n| id_of(*n)).collect();
    let clear: BTreeSet<String> = [7, 8].iter().map(|n| id_of(*n)).collect();
    let everything: BTreeSet<String> = (1..=8).chain(30..36).map(id_of).collect();
    let (ids, pages) = all_ids(&researcher, &node, &objects, 2).await;
    assert_eq!(ids.len(), green.len(), "no duplicates: {ids:?}");
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), green);
    // Pages are filled past the withheld AMBER item, and the last page is empty. A
    // page holds at most `limit` objects in all: the first holds the GREEN marking's
    // definition and this node's identity, a later one the CLEAR marking's with an
    // item.
    assert_eq!(pages, [0, 2, 2, 1, 1, 1, 0]);
    // Withheld items added later change nothing of the researcher's paging.
    let withheld: Vec<Value> = (30..36).map(|n| indicator(n, AMBER)).collect();
    let posted = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &[("Accept", TAXII), ("Content-Type", TAXII)],
        json!({ "objects": withheld }).to_string().as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(posted.json()["success_count"], json!(6));
    let (again, pages_again) = all_ids(&researcher, &node, &objects, 2).await;
    assert_eq!(again, ids);
    assert_eq!(pages_again, pages);
    let (ids, _) = all_ids(&analyst, &node, &objects, 3).await;
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), everything);
    let siem_tls = anonymous.clone();
    let siem_objects = send(
        &siem_tls,
        node.taxii,
        "GET",
        &objects,
        &[("Accept", TAXII), ("Authorization", &siem)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(siem_objects.status, 200);
    let seen: BTreeSet<String> = item_ids(&siem_objects.json()).into_iter().collect();
    assert_eq!(seen, clear);

    // The manifest lists the same view.
    let manifest = get(
        &researcher,
        node.taxii,
        &format!("/api/collections/{cid}/manifest/?limit=1000"),
    )
    .await
    .json();
    let listed: BTreeSet<String> = item_ids(&manifest).into_iter().collect();
    assert_eq!(listed, green);
    assert_eq!(
        manifest["objects"][0]["media_type"],
        json!("application/stix+json;version=2.1")
    );

    // A withheld object is answered exactly as an absent one, on every path.
    let amber = id_of(6);
    let absent = "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f";
    for suffix in ["", "versions/"] {
        let withheld = get(
            &researcher,
            node.taxii,
            &format!("{objects}{amber}/{suffix}"),
        )
        .await;
        let missing = get(
            &researcher,
            node.taxii,
            &format!("{objects}{absent}/{suffix}"),
        )
        .await;
        assert_eq!(withheld.status, 404);
        assert_eq!(withheld.body, missing.body);
        assert_eq!(
            withheld.header("content-type"),
            missing.header("content-type")
        );
        assert_eq!(withheld.headers.len(), missing.headers.len());
        // The analyst may see it.
        assert_eq!(
            get(&analyst, node.taxii, &format!("{objects}{amber}/{suffix}"))
                .await
                .status,
            200
        );
    }
    let by_ids = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[id]={amber},{},{absent}", id_of(1)),
    )
    .await
    .json();
    assert_eq!(by_ids["objects"].as_array().unwrap().len(), 1);
    assert_eq!(by_ids["objects"][0]["id"], json!(id_of(1)));

    // One object, its versions, and the filters.
    let one = get(&researcher, node.taxii, &format!("{objects}{}/", id_of(1))).await;
    assert_eq!(one.status, 200);
    assert!(one.header("x-taxii-date-added-first").is_some());
    let object = &one.json()["objects"][0];
    assert_eq!(object["type"], json!("indicator"));
    assert_eq!(object["object_marking_refs"], json!([GREEN]));
    let version = object["modified"].as_str().unwrap().to_owned();
    let versions = get(
        &researcher,
        node.taxii,
        &format!("{objects}{}/versions/", id_of(1)),
    )
    .await
    .json();
    assert_eq!(versions["versions"], json!([version]));
    let filtered = |query: &str| {
        let researcher = researcher.clone();
        let path = format!("{objects}?{query}");
        let addr = node.taxii;
        async move {
            let reply = get(&researcher, addr, &path).await;
            assert_eq!(reply.status, 200);
            item_ids(&reply.json()).len()
        }
    };
    assert_eq!(filtered("match[type]=malware").await, 0);
    assert_eq!(filtered("match[type]=indicator,malware").await, 7);
    assert_eq!(filtered("match[spec_version]=2.0").await, 0);
    assert_eq!(filtered("match[version]=last").await, 7);
    // Other versions than the latest are listed only for the ids of `match[id]`.
    for query in [
        "match[version]=all".to_owned(),
        format!("match[version]={version}"),
        "match[version]=2020-01-01T00:00:00Z".to_owned(),
    ] {
        let reply = get(&researcher, node.taxii, &format!("{objects}?{query}")).await;
        assert_eq!(reply.status, 400, "{query}");
    }
    let ids: Vec<String> = (1..=8).map(id_of).collect();
    let by_id = |query: &str| format!("match[id]={}&{query}", ids.join(","));
    assert_eq!(filtered(&by_id("match[version]=all")).await, 7);
    assert_eq!(
        filtered(&by_id(&format!("match[version]={version}"))).await,
        7
    );
    assert_eq!(
        filtered(&by_id("match[version]=2020-01-01T00:00:00Z")).await,
        0
    );
    assert_eq!(filtered("added_after=2999-01-01T00:00:00Z").await, 0);
    assert_eq!(filtered("added_after=2000-01-01T00:00:00Z").await, 7);

    // Errors: TAXII error messages with the right status.
    let error = |reply: &Reply, status: u16| {
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("content-type"), Some(TAXII));
        assert_eq!(reply.json()["http_status"], json!(status.to_string()));
    };
    let not_acceptable = send(
        &researcher,
        node.taxii,
        "GET",
        &objects,
        &[("Accept", "application/json")],
        b"",
    )
    .await
    .unwrap();
    error(&not_acceptable, 406);
    error(
        &get(&researcher, node.taxii, &format!("{objects}?limit=0")).await,
        400,
    );
    error(
        &get(&researcher, node.taxii, &format!("{objects}?limit=x")).await,
        400,
    );
    error(
        &get(&researcher, node.taxii, &format!("{objects}?next=AAAA")).await,
        400,
    );
    error(
        &get(
            &researcher,
            node.taxii,
            &format!("{objects}?added_after={}", "9".repeat(5000)),
        )
        .await,
        400,
    );
    error(
        &get(&researcher, node.taxii, "/api/collections/nope/objects/").await,
        404,
    );
    error(&get(&researcher, node.taxii, "/elsewhere/").await, 404);
    // A `next` given to another caller does not open for this one.
    let first = get(&analyst, node.taxii, &format!("{objects}?limit=1"))
        .await
        .json();
    let foreign = first["next"].as_str().unwrap();
    error(
        &get(
            &researcher,
            node.taxii,
            &format!("{objects}?limit=1&next={foreign}"),
        )
        .await,
        400,
    );
    // Bodies: wrong media type, declared too large, sent too large, not JSON.
    let post = |headers: Vec<(&'static str, String)>, body: Vec<u8>| {
        let analyst = analyst.clone();
        let objects = objects.clone();
        let addr = node.taxii;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send(&analyst, addr, "POST", &objects, &headers, &body)
                .await
                .unwrap()
        }
    };
    let accept = ("Accept", TAXII.to_owned());
    let taxii_type = ("Content-Type", TAXII.to_owned());
    error(
        &post(
            vec![accept.clone(), ("Content-Type", "application/json".into())],
            envelope.clone().into_bytes(),
        )
        .await,
        415,
    );
    error(
        &post(
            vec![
                accept.clone(),
                taxii_type.clone(),
                ("Content-Length", "10000000".into()),
            ],
            Vec::new(),
        )
        .await,
        413,
    );
    let big = json!({ "objects": [{ "type": "note", "content": "x".repeat(70_000) }] }).to_string();
    error(
        &post(vec![accept.clone(), taxii_type.clone()], big.into_bytes()).await,
        413,
    );
    error(
        &post(
            vec![accept.clone(), taxii_type.clone()],
            b"{not json".to_vec(),
        )
        .await,
        400,
    );
    error(
        &post(
            vec![accept.clone(), taxii_type.clone()],
            b"{\"objects\": 3}".to_vec(),
        )
        .await,
        400,
    );

    // Unknown callers and bad credentials: one 401, nothing that helps a guess.
    let unauthorized = |reply: &Reply| {
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.json(),
            json!({"title": "Unauthorized", "http_status": "401"})
        );
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Basic")
        );
    };
    let no_credentials = send(
        &anonymous,
        node.taxii,
        "GET",
        "/taxii2/",
        &[("Accept", TAXII)],
        b"",
    )
    .await
    .unwrap();
    unauthorized(&no_credentials);
    for (user, password) in [
        ("siem.soc", "wrong password here"),
        ("nobody.example", SIEM_PASSWORD),
        ("researcher.uni-x", SIEM_PASSWORD),
    ] {
        let reply = send(
            &anonymous,
            node.taxii,
            "GET",
            "/taxii2/",
            &[("Accept", TAXII), ("Authorization", &basic(user, password))],
            b"",
        )
        .await
        .unwrap();
        unauthorized(&reply);
    }
    // A client whose policy gives it nothing (no allow_types) has no collection.
    let nothing = tls(&pki, Some("nothing.uni-z"));
    let none = get(&nothing, node.taxii, "/api/collections/").await;
    assert_eq!(none.status, 200);
    assert_eq!(none.json(), json!({}));
    let elsewhere = get(&researcher, node.taxii, "/api/collections/nope/").await;
    for path in [format!("/api/collections/{cid}/"), objects.clone()] {
        let reply = get(&nothing, node.taxii, &path).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, elsewhere.body);
    }
    // A peer node's certificate is authenticated but TAXII is for clients.
    error(&get(&peer, node.taxii, "/api/collections/").await, 403);
    // A certificate of an unconfigured id does not complete the handshake.
    pki.client("stranger.uni-y");
    let stranger = tls(&pki, Some("stranger.uni-y"));
    let refused = send(
        &stranger,
        node.taxii,
        "GET",
        "/taxii2/",
        &[("Accept", TAXII)],
        b"",
    )
    .await;
    assert!(refused.is_err() || refused.unwrap().status == 0);

    // Every TAXII read was recorded in the disclosure ledger, as on gRPC: the
    // researcher's records hold its GREEN and CLEAR items and never the AMBER one
    // (index 5 of the analyst's bundle).
    let mut paths = BTreeSet::new();
    let mut delivered = BTreeSet::new();
    for record in common::ledger_records(&pki, &node, "researcher.uni-x").await {
        paths.insert(record.path.clone());
        for delivery in &record.deliveries {
            delivered.extend(delivery.indices.iter().copied());
        }
    }
    assert!(paths.contains("taxii-objects"), "{paths:?}");
    assert!(paths.contains("taxii-manifest"), "{paths:?}");
    assert!(paths.contains("get"), "{paths:?}");
    assert_eq!(delivered, BTreeSet::from([0, 1, 2, 3, 4, 6, 7]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_authority_follows_a_reload() {
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    let anonymous = tls(&pki, None);
    let siem = basic("siem.soc", SIEM_PASSWORD);
    let ask = || {
        let anonymous = anonymous.clone();
        let siem = siem.clone();
        let addr = node.taxii;
        async move {
            send(
                &anonymous,
                addr,
                "GET",
                "/api/collections/",
                &[("Accept", TAXII), ("Authorization", &siem)],
                b"",
            )
            .await
            // No answer: the connection was closed after its handshake.
            .map_or(0, |reply| reply.status)
        }
    };
    assert_eq!(ask().await, 200);
    // The operator removes the credentials and reloads: they stop working (without
    // Basic credentials in force, a connection without a certificate gets no answer).
    write_config(&pki, false);
    reload(&node);
    wait_for(|| async { ask().await == 0 }).await;
    // A certificate still works.
    let researcher = tls(&pki, Some("researcher.uni-x"));
    assert_eq!(
        get(&researcher, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
    // The analyst may write until it is made read-only; then its writes are refused.
    let analyst = tls(&pki, Some("analyst.soc"));
    let collections = get(&analyst, node.taxii, "/api/collections/").await.json();
    assert_eq!(collections["collections"][0]["can_write"], json!(true));
    let objects = format!(
        "/api/collections/{}/objects/",
        collections["collections"][0]["id"].as_str().unwrap()
    );
    let write = || {
        let analyst = analyst.clone();
        let objects = objects.clone();
        let addr = node.taxii;
        async move {
            let body = json!({ "objects": [indicator(40, GREEN)] }).to_string();
            send(
                &analyst,
                addr,
                "POST",
                &objects,
                &[("Accept", TAXII), ("Content-Type", TAXII)],
                body.as_bytes(),
            )
            .await
            .unwrap()
            .status
        }
    };
    assert_eq!(write().await, 202);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "id = \"analyst.soc\"\nrole = \"analyst\"",
        "id = \"analyst.soc\"\nrole = \"read_only\"\nallow_types = [\"*\"]",
    );
    std::fs::write(&config, text).unwrap();
    reload(&node);
    wait_for(|| async { write().await == 403 }).await;
    let collections = get(&analyst, node.taxii, "/api/collections/").await.json();
    assert_eq!(collections["collections"][0]["can_write"], json!(false));
    // The researcher is removed from the configuration: its certificate stops working.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("id = \"researcher.uni-x\"", "id = \"researcher.uni-z\"");
    std::fs::write(&config, text).unwrap();
    reload(&node);
    wait_for(|| async {
        send(
            &researcher,
            node.taxii,
            "GET",
            "/api/collections/",
            &[("Accept", TAXII)],
            b"",
        )
        .await
        .is_err()
    })
    .await;
}

/// Sends SIGHUP to the node process.
fn reload(node: &TaxiiNode) {
    let pid = i32::try_from(node.child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Waits up to 20 s for `check` to hold.
async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut wait = Duration::from_millis(20);
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met in time");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

#[test]
fn taxii_configuration_is_checked() {
    let pki = federation();
    let hq = NodeId::new("redmond.hq").unwrap();
    let hash = hash_password(SIEM_PASSWORD);
    let base = format!(
        "{}\n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\n\n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n",
        node_section(&pki, &hq, &pki.path().join("data"))
    );
    let check = |taxii: &str| {
        entente::Config::check(
            &format!("{base}\n{taxii}"),
            Path::new("test.toml"),
            pki.path(),
        )
        .map(|settings| settings.taxii)
        .map_err(|e| e.to_string())
    };
    let good = check(&format!(
        "[taxii]\nlisten = \"127.0.0.1:0\"\n\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{hash}\"\n"
    ))
    .unwrap()
    .unwrap();
    assert_eq!(good.basic.len(), 1);
    assert_eq!(good.max_body_bytes, 8 * 1024 * 1024);
    // The hash is never printed with the configuration.
    assert!(!format!("{good:?}").contains(&hash));
    assert_eq!(check("").unwrap(), None);
    for (taxii, field) in [
        (
            format!("[taxii]\nlisten = \"127.0.0.1:0\"\n\n[[taxii.basic]]\nclient = \"analyst.soc\"\npassword_hash = \"{hash}\"\n"),
            "taxii.basic[0].client",
        ),
        (
            format!("[taxii]\nlisten = \"127.0.0.1:0\"\n\n[[taxii.basic]]\nclient = \"nobody.soc\"\npassword_hash = \"{hash}\"\n"),
            "taxii.basic[0].client",
        ),
        (
            "[taxii]\nlisten = \"127.0.0.1:0\"\n\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"hunter2\"\n".to_owned(),
            "taxii.basic[0].password_hash",
        ),
        (
            format!("[taxii]\nlisten = \"127.0.0.1:0\"\n\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{hash}\"\n\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{hash}\"\n"),
            "taxii.basic[1].client",
        ),
        (
            "[taxii]\nlisten = \"localhost\"\n".to_owned(),
            "taxii.listen",
        ),
        (
            "[taxii]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 10\n".to_owned(),
            "taxii.max_body_bytes",
        ),
    ] {
        let refused = check(&taxii).unwrap_err();
        assert!(refused.contains(field), "{refused}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_paging_is_stable_while_an_analyst_publishes() {
    let Started {
        pki: _pki,
        config: _config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let publish = |sent: Vec<Value>| publish_as(&analyst, node.taxii, &objects, sent);
    // 12 GREEN indicators with an AMBER one between each two.
    let mut first = Vec::new();
    for n in 1..=12 {
        first.push(indicator(n, GREEN));
        first.push(indicator(100 + n, AMBER));
    }
    publish(first).await;
    let before: BTreeSet<String> = (1..=12).map(id_of).collect();

    // The researcher pages 3 at a time; between its pages the analyst publishes a GREEN
    // and an AMBER indicator, and after the first page it updates the last GREEN one,
    // which the researcher has not reached yet.
    let mut seen = Vec::new();
    let mut published = BTreeSet::new();
    let mut next: Option<String> = None;
    let mut round = 0;
    loop {
        let path = match &next {
            None => format!("{objects}?limit=3"),
            Some(n) => format!("{objects}?limit=3&next={n}"),
        };
        let page = get(&researcher, node.taxii, &path).await;
        assert_eq!(page.status, 200);
        let body = page.json();
        seen.extend(item_ids(&body));
        round += 1;
        publish(vec![
            indicator(200 + round, GREEN),
            indicator(300 + round, AMBER),
        ])
        .await;
        published.insert(id_of(200 + round));
        match body["next"].as_str() {
            Some(n) if body["more"] == json!(true) => next = Some(n.to_owned()),
            _ => break,
        }
        assert!(round < 100, "paging does not end");
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "served twice: {seen:?}");
    assert!(
        before.is_subset(&unique),
        "skipped: {:?}",
        before.difference(&unique)
    );
    let allowed: BTreeSet<String> = before.union(&published).cloned().collect();
    assert!(
        unique.is_subset(&allowed),
        "not the researcher's: {:?}",
        unique.difference(&allowed)
    );
    assert!(round >= 5, "{round} pages");
}

/// An object stored after a listing's last page with objects, before the caller asks for
/// the page after it, is on that page: the listing goes on from where its scan ended,
/// not from a final token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_an_object_added_before_the_last_page_is_asked_for_is_on_it() {
    let Started {
        pki: _pki,
        config: _config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    // The first page brings the marking definition and the origin's identity beside
    // one indicator; then three a page: 1, 3, and the last one alone.
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        (1..=5).map(|n| indicator(n, GREEN)).collect(),
    )
    .await;
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = Vec::new();
    let mut added = false;
    loop {
        let path = match &next {
            None => format!("{objects}?limit=3"),
            Some(n) => format!("{objects}?limit=3&next={n}"),
        };
        let page = get(&researcher, node.taxii, &path).await;
        assert_eq!(page.status, 200);
        let body = page.json();
        let ids = item_ids(&body);
        pages.push(ids.len());
        seen.extend(ids);
        // After the page that served the last object held, one more is added. That page
        // is not full: its scan reached the end of what is held.
        let full = body["objects"].as_array().map_or(0, Vec::len) == 3;
        if seen.len() == 5 && !added {
            assert!(
                !full,
                "the test needs the page with the last object to end the scan"
            );
            publish_as(&analyst, node.taxii, &objects, vec![indicator(6, GREEN)]).await;
            added = true;
        }
        match body["next"].as_str() {
            Some(n) if body["more"] == json!(true) => next = Some(n.to_owned()),
            _ => break,
        }
        assert!(pages.len() < 10, "paging does not end");
    }
    let expected: Vec<String> = (1..=6).map(id_of).collect();
    assert_eq!(seen, expected, "pages {pages:?}");
    assert_eq!(pages.last(), Some(&0), "{pages:?}");

    // A marking definition asked for by id is dated by its own version, not 1970.
    let manifest = get(
        &researcher,
        node.taxii,
        &format!("{collection}manifest/?match[id]={GREEN}"),
    )
    .await;
    assert_eq!(manifest.status, 200);
    let body = manifest.json();
    assert_eq!(body["objects"][0]["id"], json!(GREEN), "{body}");
    assert_eq!(
        body["objects"][0]["date_added"], body["objects"][0]["version"],
        "{body}"
    );

    // The revocation extension's definition and the identity that defines it, served
    // beside revocations in listings, are served by id too.
    for id in [
        "extension-definition--f49b347c-4b7e-43d8-a2cb-a756b594e83e",
        "identity--d468fad8-6c8c-46cc-894e-a84f94ec07f2",
    ] {
        let reply = get(&researcher, node.taxii, &format!("{objects}{id}/")).await;
        assert_eq!(reply.status, 200, "{id}");
        assert_eq!(reply.json()["objects"][0]["id"], json!(id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_do_not_keep_taxii_callers_out() {
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    // 300 TCP connections that never send a ClientHello, from 30 addresses: more than
    // the listener's handshake slots (256 by default).
    let mut idle = Vec::new();
    for source in 0..30u8 {
        for _ in 0..10 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(SocketAddr::from(([127, 0, 2, 10 + source], 0)))
                .unwrap();
            idle.push(socket.connect(node.taxii).await.unwrap());
        }
    }
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let anonymous = tls(&pki, None);
    let siem = basic("siem.soc", SIEM_PASSWORD);
    for _ in 0..5 {
        let started = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            send(
                &researcher,
                node.taxii,
                "GET",
                "/taxii2/",
                &[("Accept", TAXII)],
                b"",
            ),
        )
        .await
        .expect("answered while 300 silent connections are open")
        .expect("a TAXII answer");
        assert_eq!(reply.status, 200);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let reply = send(
        &anonymous,
        node.taxii,
        "GET",
        "/taxii2/",
        &[("Accept", TAXII), ("Authorization", &siem)],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    drop(idle);
}

/// A TLS connection without a certificate from `source`, kept open across requests;
/// `None` when the TCP connection or the handshake fails.
async fn open_from(
    tls: &Arc<rustls::ClientConfig>,
    source: [u8; 4],
    addr: SocketAddr,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let tcp = socket.connect(addr).await.ok()?;
    tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .ok()
}

/// Sends `GET /taxii2/` without credentials on a kept connection (keep-alive asked
/// for) and reads one answer: its status and, if `watch`, whether the node closed the
/// connection after it (end of stream within 2 s). `None` when the connection ends
/// without an answer.
async fn unauthenticated_get(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: SocketAddr,
    watch: bool,
) -> Option<(u16, bool)> {
    let head = format!("GET /taxii2/ HTTP/1.1\r\nHost: {addr}\r\nAccept: {TAXII}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.flush().await.ok()?;
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    let (split, length) = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            break (at, length);
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&chunk[..n]),
            Ok(_) => return None,
            Err(_) => panic!("no answer, and the connection is not closed, within 10 s"),
        }
    };
    while read.len() < split + 4 + length {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    let status = String::from_utf8_lossy(&read[..split])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    if !watch {
        return Some((status, false));
    }
    // Whatever follows the answer: the end of the stream (closed), or nothing for a
    // while (kept open).
    let closed = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    };
    Some((status, closed))
}

/// Connections without a certificate and without credentials once took every one of the
/// listener's 256 places, kept open between their 401s, and no certificate holder got an
/// answer. Now a refused request closes its connection, and connections not yet
/// authenticated hold at most 32 places (4 per address), the oldest idle one giving way
/// to a newer: a certificate holder and a Basic client are answered through it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_do_not_keep_taxii_callers_out() {
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    let anonymous = tls(&pki, None);
    let sources = |n: usize| [127, 0, 3, 10 + (n % 16) as u8];
    // 272 connections from 16 addresses, each refused with 401, then asked again: more
    // than the listener's 256 connections.
    let mut refused = Vec::new();
    for n in 0..272 {
        let Some(mut stream) = open_from(&anonymous, sources(n), node.taxii).await else {
            continue;
        };
        if let Some((status, _)) = unauthenticated_get(&mut stream, node.taxii, false).await {
            assert_eq!(status, 401);
            refused.push(stream);
        }
    }
    assert!(!refused.is_empty());
    // Each asks again, all at once; those the node kept open answer 401 and stay open.
    let mut again = tokio::task::JoinSet::new();
    let addr = node.taxii;
    for mut stream in refused {
        again.spawn(async move {
            let answer = unauthenticated_get(&mut stream, addr, true).await;
            (answer, stream)
        });
    }
    let mut kept_open = 0;
    let mut refused = Vec::new();
    while let Some(joined) = again.join_next().await {
        let (answer, stream) = joined.unwrap();
        if let Some((status, closed)) = answer {
            assert_eq!(status, 401);
            if !closed {
                kept_open += 1;
            }
        }
        refused.push(stream);
    }
    // And 64 more that finish their handshake and send nothing, 4 from each address:
    // more than the 32 places such connections may hold.
    let mut silent = Vec::new();
    for n in 0..64 {
        if let Some(stream) = open_from(&anonymous, sources(n), node.taxii).await {
            silent.push(stream);
        }
    }
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let siem = basic("siem.soc", SIEM_PASSWORD);
    let started = Instant::now();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            &researcher,
            node.taxii,
            "GET",
            "/taxii2/",
            &[("Accept", TAXII)],
            b"",
        ),
    )
    .await
    .expect("the certificate holder is answered in time")
    .expect("the certificate holder gets a TAXII answer");
    assert_eq!(reply.status, 200);
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            &anonymous,
            node.taxii,
            "GET",
            "/taxii2/",
            &[("Accept", TAXII), ("Authorization", &siem)],
            b"",
        ),
    )
    .await
    .expect("the Basic client is answered in time")
    .expect("the Basic client gets a TAXII answer");
    assert_eq!(reply.status, 200);
    assert!(started.elapsed() < Duration::from_secs(10));
    // No connection refused with 401 was kept open.
    assert_eq!(kept_open, 0, "connections kept open after a 401");
    drop((refused, silent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_carries_context_objects_under_the_same_rules() {
    const MALWARE: &str = "malware--5c5c5c5c-0000-4000-8000-000000000001";
    const GREEN_REL: &str = "relationship--5c5c5c5c-0000-4000-8000-000000000002";
    const AMBER_REL: &str = "relationship--5c5c5c5c-0000-4000-8000-000000000003";
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let analyst = tls(&pki, Some("analyst.soc"));
    let cid = get(&analyst, node.taxii, "/api/collections/").await.json()["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/api/collections/{cid}/objects/");
    let green = indicator(1, GREEN);
    let amber = indicator(2, AMBER);
    let relationship = |id: &str, source: &Value| {
        json!({
            "type": "relationship", "spec_version": "2.1", "id": id,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "relationship_type": "indicates", "source_ref": source["id"],
            "target_ref": MALWARE, "object_marking_refs": [GREEN],
        })
    };
    let body = json!({ "objects": [
        green.clone(),
        amber.clone(),
        {
            "type": "malware", "spec_version": "2.1", "id": MALWARE,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Poison Ivy", "is_family": true, "object_marking_refs": [GREEN],
        },
        relationship(GREEN_REL, &green),
        relationship(AMBER_REL, &amber),
    ]})
    .to_string();
    let reply = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &[("Accept", TAXII), ("Content-Type", TAXII)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202);
    assert_eq!(
        reply.json()["success_count"],
        json!(5),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    // The GREEN researcher gets the malware and the relationship from the GREEN
    // indicator, not the one from the AMBER indicator; match[type] selects by type.
    let (ids, _) = all_ids(&researcher, &node, &objects, 10).await;
    let ids: std::collections::BTreeSet<String> = ids.into_iter().collect();
    let expected: std::collections::BTreeSet<String> =
        [green["id"].as_str().unwrap(), MALWARE, GREEN_REL]
            .map(str::to_owned)
            .into();
    assert_eq!(ids, expected);
    let only = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[type]=relationship"),
    )
    .await
    .json();
    let listed: Vec<&str> = only["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [GREEN_REL]);
    // The withheld relationship is answered as an absent one.
    let withheld = get(&researcher, node.taxii, &format!("{objects}{AMBER_REL}/")).await;
    let absent = get(
        &researcher,
        node.taxii,
        &format!("{objects}relationship--5c5c5c5c-0000-4000-8000-0000000000ff/"),
    )
    .await;
    assert_eq!(withheld.status, 404);
    assert_eq!(
        (withheld.status, withheld.body),
        (absent.status, absent.body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_serves_the_markings_and_origins_its_objects_refer_to_and_no_other() {
    let Started {
        pki: _pki,
        config: _config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let manifest = format!("{collection}manifest/");
    let publish = |sent: Vec<Value>| publish_as(&analyst, node.taxii, &objects, sent);
    let hq_identity = entente::interop::identity_id("redmond.hq");
    let berlin_identity = entente::interop::identity_id("berlin.office");
    let absent_identity = "identity--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f";
    let absent_object = "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f";

    // Only AMBER items from this node: the GREEN researcher sees none of them, so
    // nothing says that this node published anything.
    publish(vec![indicator(1, AMBER), indicator(2, AMBER)]).await;
    let seen = listing(&researcher, &node, &objects, 1).await;
    assert!(seen.ids.is_empty() && seen.supporting.is_empty());
    let absent = get(
        &researcher,
        node.taxii,
        &format!("{objects}{absent_object}/"),
    )
    .await;
    assert_eq!(absent.status, 404);
    for id in [
        hq_identity.as_str(),
        berlin_identity.as_str(),
        absent_identity,
        AMBER,
    ] {
        for suffix in ["", "versions/"] {
            let reply = get(&researcher, node.taxii, &format!("{objects}{id}/{suffix}")).await;
            assert_eq!((reply.status, &reply.body), (404, &absent.body), "{id}");
        }
    }
    // The definitions of the markings its policy lets through are not about any item.
    let green = get(&researcher, node.taxii, &format!("{objects}{GREEN}/")).await;
    assert_eq!(green.status, 200);
    assert_eq!(
        green.json()["objects"][0],
        entente::interop::tlp_marking_definition(entente::model::Tlp::Green)
    );
    let by_ids = get(
        &researcher,
        node.taxii,
        &format!(
            "{objects}?match[id]={hq_identity},{GREEN},{AMBER},{}",
            id_of(1)
        ),
    )
    .await
    .json();
    assert_eq!(by_ids["objects"].as_array().unwrap().len(), 1, "{by_ids}");
    assert_eq!(by_ids["objects"][0]["id"], json!(GREEN));
    // The analyst sees the AMBER items, so this node's identity and the AMBER marking
    // come with them, once; a peer that published nothing has no identity.
    let seen = listing(&analyst, &node, &objects, 1).await;
    assert_eq!(seen.ids.len(), 2);
    let kinds: BTreeSet<String> = seen
        .supporting
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([AMBER.to_owned(), hq_identity.clone()])
    );
    assert_eq!(
        get(
            &analyst,
            node.taxii,
            &format!("{objects}{berlin_identity}/")
        )
        .await
        .status,
        404
    );

    // A GREEN, a CLEAR and a revoked GREEN indicator: now the researcher sees items of
    // this node, with the definitions of their markings and of the revocation's
    // properties.
    let mut revoked = indicator(5, GREEN);
    publish(vec![
        indicator(3, GREEN),
        indicator(4, CLEAR),
        revoked.clone(),
    ])
    .await;
    revoked["modified"] = json!("2025-01-03T00:00:00.000Z");
    revoked["revoked"] = json!(true);
    publish(vec![revoked]).await;
    let seen = listing(&researcher, &node, &objects, 1).await;
    assert_eq!(
        seen.ids.iter().cloned().collect::<BTreeSet<_>>(),
        [3, 4, 5].map(id_of).into_iter().collect()
    );
    let supporting: BTreeSet<String> = seen
        .supporting
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(supporting.contains(GREEN) && supporting.contains(CLEAR));
    assert!(supporting.contains(&hq_identity));
    assert!(!supporting.contains(AMBER));
    assert!(supporting.contains("extension-definition--f49b347c-4b7e-43d8-a2cb-a756b594e83e"));
    assert_eq!(supporting.len(), 5, "{supporting:?}");
    // Every reference the served objects make is to an object served with them.
    for object in &seen.supporting {
        if let Some(creator) = object.get("created_by_ref") {
            assert!(supporting.contains(creator.as_str().unwrap()), "{object}");
        }
    }
    let identity = get(&researcher, node.taxii, &format!("{objects}{hq_identity}/")).await;
    assert_eq!(identity.status, 200);
    assert_eq!(
        identity.json()["objects"][0],
        entente::interop::identity("redmond.hq")
    );
    // The manifest lists them too, and match[type] selects them.
    let listed = get(&researcher, node.taxii, &format!("{manifest}?limit=100"))
        .await
        .json();
    let listed: BTreeSet<String> = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(supporting.is_subset(&listed), "{listed:?}");
    let only = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[type]=marking-definition"),
    )
    .await
    .json();
    let only: BTreeSet<String> = only["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(only, BTreeSet::from([GREEN.to_owned(), CLEAR.to_owned()]));
    // Whatever the limit, a listing serves the same items and the same definitions,
    // each once, with no page over its limit (`listing` checks both): a page cut short
    // for the definitions goes on where it stopped.
    let whole = listing(&researcher, &node, &objects, 100).await;
    let ids_of = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    for limit in 1..=4 {
        let paged = listing(&researcher, &node, &objects, limit).await;
        assert_eq!(paged.ids, whole.ids, "limit {limit}");
        assert_eq!(
            ids_of(&paged.supporting),
            ids_of(&whole.supporting),
            "limit {limit}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_pages_match_id_with_next_while_an_analyst_publishes() {
    let Started {
        pki: _pki,
        config: _config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let publish = |sent: Vec<Value>| publish_as(&analyst, node.taxii, &objects, sent);
    let mut first: Vec<Value> = (1..=6).map(|n| indicator(n, GREEN)).collect();
    first.push(indicator(7, AMBER));
    first.push(indicator(8, AMBER));
    publish(first).await;
    // Visible, withheld and absent ids mixed; more than one page of them.
    let asked = [
        id_of(1),
        id_of(7),
        id_of(2),
        "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f".to_owned(),
        id_of(3),
        id_of(8),
        id_of(4),
        id_of(5),
        id_of(6),
    ]
    .join(",");
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut next: Option<String> = None;
    let mut round = 0;
    loop {
        let path = match &next {
            None => format!("{objects}?match[id]={asked}&limit=2"),
            Some(n) => format!("{objects}?match[id]={asked}&limit=2&next={n}"),
        };
        let reply = get(&researcher, node.taxii, &path).await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let body = reply.json();
        let ids = item_ids(&body);
        assert!(ids.len() <= 2);
        pages.push(ids.len());
        seen.extend(ids);
        // Between pages the analyst updates an indicator not reached yet and adds others.
        round += 1;
        let mut update = indicator(6, GREEN);
        update["modified"] = json!(format!("2025-02-{:02}T00:00:00.000Z", round));
        publish(vec![update, indicator(100 + round, GREEN)]).await;
        match body["next"].as_str() {
            Some(n) if body["more"] == json!(true) => next = Some(n.to_owned()),
            _ => break,
        }
        assert!(round < 20, "paging does not end");
    }
    assert_eq!(seen, [1, 2, 3, 4, 5, 6].map(id_of));
    assert_eq!(pages, [2, 2, 2]);
    // The `next` of one list does not open for another.
    let first = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[id]={asked}&limit=2"),
    )
    .await
    .json();
    let foreign = first["next"].as_str().unwrap();
    let other = get(
        &researcher,
        node.taxii,
        &format!("{objects}?match[id]={}&limit=2&next={foreign}", id_of(1)),
    )
    .await;
    assert_eq!(other.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_basic_credentials_are_turned_on_changed_and_off_by_a_reload() {
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let anonymous = tls(&pki, None);
    let ask = |password: &'static str| {
        let anonymous = anonymous.clone();
        let addr = node.taxii;
        async move {
            let credentials = basic("siem.soc", password);
            match send(
                &anonymous,
                addr,
                "GET",
                "/api/collections/",
                &[("Accept", TAXII), ("Authorization", &credentials)],
                b"",
            )
            .await
            {
                Ok(reply) => reply.status,
                // No answer: the connection was closed after its handshake.
                Err(_) => 0,
            }
        }
    };
    // Started without Basic: a connection without a certificate gets no answer.
    assert_eq!(ask(SIEM_PASSWORD).await, 0);
    // Turned on by a reload, without a restart.
    write_config(&pki, true);
    reload(&node);
    wait_for(|| async { ask(SIEM_PASSWORD).await == 200 }).await;
    assert_eq!(ask("another password 22").await, 401);
    // The password is changed: the old one stops working, the new one works.
    let new_hash = hash_password("another password 22");
    let text = std::fs::read_to_string(&config).unwrap();
    let old_hash = std::fs::read_to_string(pki.path().join("siem.hash")).unwrap();
    std::fs::write(&config, text.replace(&old_hash, &new_hash)).unwrap();
    reload(&node);
    wait_for(|| async { ask("another password 22").await == 200 }).await;
    assert_eq!(ask(SIEM_PASSWORD).await, 401);
    // Turned off again: no answer without a certificate; certificates still work.
    write_config(&pki, false);
    reload(&node);
    wait_for(|| async { ask("another password 22").await == 0 }).await;
    let researcher = tls(&pki, Some("researcher.uni-x"));
    assert_eq!(
        get(&researcher, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_statuses_outlive_a_restart_for_their_writer_only() {
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let analyst = tls(&pki, Some("analyst.soc"));
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let cid = get(&analyst, node.taxii, "/api/collections/").await.json()["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/api/collections/{cid}/objects/");
    let mut statuses = Vec::new();
    for n in 1..=3 {
        let body = json!({ "objects": [indicator(n, GREEN)] }).to_string();
        let reply = send(
            &analyst,
            node.taxii,
            "POST",
            &objects,
            &[("Accept", TAXII), ("Content-Type", TAXII)],
            body.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(reply.status, 202);
        statuses.push(reply.json());
    }
    // The node is killed (no shutdown) and started again on the same data.
    drop(node);
    let node = serve_taxii(&config);
    let absent = get(
        &analyst,
        node.taxii,
        "/api/status/0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f/",
    )
    .await;
    assert_eq!(absent.status, 404);
    for status in &statuses {
        let path = format!("/api/status/{}/", status["id"].as_str().unwrap());
        let kept = get(&analyst, node.taxii, &path).await;
        assert_eq!(kept.status, 200);
        assert_eq!(&kept.json(), status);
        // Another client's status looks exactly like one that does not exist.
        let other = get(&researcher, node.taxii, &path).await;
        assert_eq!((other.status, &other.body), (404, &absent.body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_writers_many_writes_leave_anothers_status_readable() {
    let pki = federation();
    pki.client("hunter.soc");
    let config = write_config(&pki, false);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[[client]]\nid = \"hunter.soc\"\nrole = \"analyst\"\n");
    std::fs::write(&config, text).unwrap();
    let node = serve_taxii(&config);
    let analyst = tls(&pki, Some("analyst.soc"));
    let hunter = tls(&pki, Some("hunter.soc"));
    let cid = get(&analyst, node.taxii, "/api/collections/").await.json()["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/api/collections/{cid}/objects/");
    let post = |who: Arc<rustls::ClientConfig>, n: usize| {
        let objects = objects.clone();
        let addr = node.taxii;
        async move {
            let body = json!({ "objects": [indicator(n, GREEN)] }).to_string();
            let reply = send(
                &who,
                addr,
                "POST",
                &objects,
                &[("Accept", TAXII), ("Content-Type", TAXII)],
                body.as_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(reply.status, 202);
            reply.json()
        }
    };
    let written = post(hunter.clone(), 1).await;
    let path = format!("/api/status/{}/", written["id"].as_str().unwrap());
    // The analyst writes more envelopes than the node kept statuses of in all.
    for n in 2..=72 {
        post(analyst.clone(), n).await;
    }
    let kept = get(&hunter, node.taxii, &path).await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json(), written);
    assert_eq!(get(&analyst, node.taxii, &path).await.status, 404);
    // And after a restart on the same data.
    drop(node);
    let node = serve_taxii(&config);
    let kept = get(&hunter, node.taxii, &path).await;
    assert_eq!(kept.status, 200);
    assert_eq!(kept.json(), written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_delete_is_refused_with_the_way_to_revoke() {
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let analyst = tls(&pki, Some("analyst.soc"));
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let cid = get(&analyst, node.taxii, "/api/collections/").await.json()["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/api/collections/{cid}/objects/");
    let body = json!({ "objects": [indicator(1, GREEN), indicator(2, AMBER)] }).to_string();
    let reply = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &[("Accept", TAXII), ("Content-Type", TAXII)],
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202);
    let delete = |who: Arc<rustls::ClientConfig>, id: String| {
        let path = format!("{objects}{id}/");
        let addr = node.taxii;
        async move {
            send(&who, addr, "DELETE", &path, &[("Accept", TAXII)], b"")
                .await
                .unwrap()
        }
    };
    let refused = delete(analyst.clone(), id_of(1)).await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    assert!(
        refused.json()["description"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
    // The object is still there.
    assert_eq!(
        get(&analyst, node.taxii, &format!("{objects}{}/", id_of(1)))
            .await
            .status,
        200
    );
    // Held, withheld and absent ids get the same answer.
    let withheld = delete(researcher.clone(), id_of(2)).await;
    let absent = delete(
        researcher.clone(),
        "indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f".into(),
    )
    .await;
    assert_eq!((withheld.status, &withheld.body), (405, &refused.body));
    assert_eq!((absent.status, &absent.body), (405, &refused.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_serves_the_old_versions_held_that_the_caller_may_see() {
    let Started {
        pki: _pki,
        config: _config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let publish = |sent: Value| publish_as(&analyst, node.taxii, &objects, vec![sent]);
    let version = |n: usize, marking: &str, day: u32| {
        let mut object = indicator(n, marking);
        object["modified"] = json!(format!("2025-01-{day:02}T00:00:00.000Z"));
        object
    };
    let day = |d: u32| format!("2025-01-{d:02}T00:00:00.000Z");
    // Indicator 1: two GREEN versions. Indicator 2: AMBER, then lowered to GREEN.
    publish(version(1, GREEN, 2)).await;
    publish(version(1, GREEN, 3)).await;
    publish(version(2, AMBER, 2)).await;
    publish(version(2, GREEN, 3)).await;
    let versions = |who: &Arc<rustls::ClientConfig>, n: usize, query: &str| {
        let who = who.clone();
        let path = format!("{objects}{}/versions/{query}", id_of(n));
        let addr = node.taxii;
        async move { get(&who, addr, &path).await }
    };
    let object_versions = |who: &Arc<rustls::ClientConfig>, n: usize, query: &str| {
        let who = who.clone();
        let path = format!("{objects}{}/{query}", id_of(n));
        let addr = node.taxii;
        async move {
            let reply = get(&who, addr, &path).await;
            if reply.status != 200 {
                return (reply.status, Vec::new());
            }
            let listed: Vec<String> = reply.json()["objects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["modified"].as_str().unwrap().to_owned())
                .collect();
            (200, listed)
        }
    };
    assert_eq!(
        versions(&researcher, 1, "").await.json()["versions"],
        json!([day(2), day(3)])
    );
    assert_eq!(
        object_versions(&researcher, 1, "?match[version]=all").await,
        (200, vec![day(2), day(3)])
    );
    assert_eq!(
        object_versions(&researcher, 1, "?match[version]=first").await,
        (200, vec![day(2)])
    );
    assert_eq!(
        object_versions(&researcher, 1, "").await,
        (200, vec![day(3)])
    );
    assert_eq!(
        object_versions(&researcher, 1, &format!("?match[version]={}", day(2))).await,
        (200, vec![day(2)])
    );
    assert_eq!(
        object_versions(&researcher, 1, "?match[version]=first,last").await,
        (200, vec![day(2), day(3)])
    );
    // The AMBER version of indicator 2 is not the researcher's: it looks absent.
    assert_eq!(
        versions(&researcher, 2, "").await.json()["versions"],
        json!([day(3)])
    );
    assert_eq!(
        object_versions(&researcher, 2, "?match[version]=first").await,
        (200, vec![day(3)])
    );
    assert_eq!(
        object_versions(&researcher, 2, &format!("?match[version]={}", day(2))).await,
        (404, vec![])
    );
    assert_eq!(
        versions(&analyst, 2, "").await.json()["versions"],
        json!([day(2), day(3)])
    );
    // Indicator 1 raised to AMBER: none of its versions is the researcher's now, and
    // nothing tells it the id is held.
    publish(version(1, AMBER, 4)).await;
    let absent = get(
        &researcher,
        node.taxii,
        &format!("{objects}indicator--0f0f0f0f-0000-4000-8000-0f0f0f0f0f0f/versions/"),
    )
    .await;
    let withheld = versions(&researcher, 1, "").await;
    assert_eq!((withheld.status, &withheld.body), (404, &absent.body));
    assert_eq!(
        object_versions(&researcher, 1, "?match[version]=all").await,
        (404, vec![])
    );
    // The analyst sees the three, paged.
    let first = versions(&analyst, 1, "?limit=2").await.json();
    assert_eq!(first["versions"], json!([day(2), day(3)]));
    assert_eq!(first["more"], json!(true));
    let next = first["next"].as_str().unwrap();
    let rest = versions(&analyst, 1, &format!("?limit=2&next={next}"))
        .await
        .json();
    assert_eq!(rest["versions"], json!([day(4)]));
    assert_eq!(rest["more"], json!(false));
    // The same `next` does not open for the researcher.
    assert_eq!(
        versions(&researcher, 1, &format!("?limit=2&next={next}"))
            .await
            .status,
        400
    );
}

/// One client connection kept open across requests (HTTP/1.1 keep-alive), as a client
/// paging through a listing holds it: the node makes the next page on it ahead.
struct KeptConnection {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: SocketAddr,
    read: Vec<u8>,
}

impl KeptConnection {
    async fn open(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Self {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        Self {
            stream,
            addr,
            read: Vec::new(),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {TAXII}\r\n\r\n",
            self.addr
        );
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
        let split = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.read[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("a kept connection's answer has a length");
        while self.read.len() < split + 4 + length {
            self.fill().await;
        }
        let body = self.read[split + 4..split + 4 + length].to_vec();
        self.read.drain(..split + 4 + length);
        Reply {
            status,
            headers,
            body,
            sent_whole: true,
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "the node closed a kept connection");
        self.read.extend_from_slice(&chunk[..n]);
    }
}

/// Records of `partner`'s ledger on the objects listing, and the items they disclose.
async fn listing_records(pki: &Pki, node: &TaxiiNode, partner: &str) -> (usize, usize) {
    let records: Vec<_> = common::ledger_records(pki, node, partner)
        .await
        .into_iter()
        .filter(|r| r.path == "taxii-objects")
        .collect();
    let items = records
        .iter()
        .flat_map(|r| &r.deliveries)
        .map(|d| d.indices.len())
        .sum();
    (records.len(), items)
}

/// On a kept connection the node makes a listing's next page while the client reads
/// the page before it. That page is served as it would be made when asked for, or not
/// at all: recorded in the ledger once, when served; made again when a bundle was
/// accepted since (the new item is not skipped), and when a reload changed the policy
/// (what the new policy withholds is not served, whatever the page made before said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_pages_made_ahead_are_served_only_as_they_stand_when_asked_for() {
    let Started {
        pki,
        config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let publish = |sent: Vec<Value>| publish_as(&analyst, node.taxii, &objects, sent);
    // Eight indicators, GREEN and CLEAR in turn.
    let marking = |n: usize| if n % 2 == 1 { GREEN } else { CLEAR };
    publish((1..=8).map(|n| indicator(n, marking(n))).collect()).await;

    // Paged on one connection: the same items as on a new connection per page, and one
    // ledger record per page served, with each item once.
    let mut kept = KeptConnection::open(&researcher, node.taxii).await;
    let mut ids = Vec::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &next {
            None => format!("{objects}?limit=2"),
            Some(n) => format!("{objects}?limit=2&next={n}"),
        };
        let body = kept.get(&path).await.json();
        let served = item_ids(&body);
        pages += usize::from(!served.is_empty());
        ids.extend(served);
        match body["next"].as_str() {
            Some(n) => next = Some(n.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (1..=8).map(id_of).collect();
    assert_eq!(ids, expected);
    let (fresh, fresh_pages) = all_ids(&researcher, &node, &objects, 2).await;
    assert_eq!(fresh, expected);
    let fresh_pages = fresh_pages.iter().filter(|&&n| n > 0).count();
    assert_eq!(
        listing_records(&pki, &node, "researcher.uni-x").await,
        (pages + fresh_pages, 16),
        "one record per page served, none for a page made ahead"
    );

    // A bundle accepted after the first page: the rest of the listing holds it. (With
    // `limit=6` the first page holds three items and the definitions they bring, and
    // the page made ahead of it was the last.)
    let first = kept.get(&format!("{objects}?limit=6")).await.json();
    let mut ids = item_ids(&first);
    assert_eq!(ids, expected[..3]);
    let mut next = first["next"].as_str().map(str::to_owned);
    publish(vec![indicator(9, GREEN)]).await;
    while let Some(n) = next.take() {
        let body = kept
            .get(&format!("{objects}?limit=6&next={n}"))
            .await
            .json();
        ids.extend(item_ids(&body));
        next = body["next"].as_str().map(str::to_owned);
    }
    let all: Vec<String> = (1..=9).map(id_of).collect();
    assert_eq!(ids, all, "the item published between pages is listed");

    // A reload between pages that lowers the researcher to CLEAR: the pages after it
    // serve no GREEN item (or refuse the `next` of the old policy), whatever the page
    // made ahead under GREEN held.
    let first = kept.get(&format!("{objects}?limit=4")).await.json();
    assert_eq!(item_ids(&first), expected[..1]);
    let mut next = first["next"].as_str().map(str::to_owned);
    let text = std::fs::read_to_string(&config).unwrap();
    let lowered = text.replace(
        "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"",
        "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"CLEAR\"",
    );
    assert_ne!(lowered, text);
    std::fs::write(&config, lowered).unwrap();
    reload(&node);
    let clear: Vec<String> = (1..=9)
        .filter(|&n| marking(n) == CLEAR)
        .map(id_of)
        .collect();
    // A listing that starts before the reload is seen and goes on after it has its
    // `next` refused (it was given under the policy no longer in force): asked again.
    wait_for(|| async {
        ids_under_one_policy(&researcher, &node, &objects).await == Some(clear.clone())
    })
    .await;
    let mut served = Vec::new();
    while let Some(n) = next.take() {
        let reply = kept.get(&format!("{objects}?limit=4&next={n}")).await;
        if reply.status != 200 {
            assert_eq!(
                reply.status,
                400,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            break;
        }
        let body = reply.json();
        served.extend(item_ids(&body));
        next = body["next"].as_str().map(str::to_owned);
    }
    assert!(
        served.iter().all(|id| clear.contains(id)),
        "GREEN items served after the reload: {served:?}"
    );
}

/// A client that sends a body over the limit whole, as most HTTP clients do without
/// waiting for an interim answer, reads the 413 that refuses it: the node reads and drops
/// what is sent (up to a bound) before it answers. It used to answer at once and close
/// with the rest unread, so the client's write met a reset and it never saw why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_a_body_refused_as_too_large_is_answered_not_reset() {
    let Started {
        node,
        analyst,
        collection,
        ..
    } = start().await;
    let objects = format!("{collection}objects/");
    // Far more than the node's limit (64 KiB here) and than what the sockets buffer.
    let note = "x".repeat(4 * 1024 * 1024);
    let body = json!({ "objects": [{ "type": "note", "content": note }] }).to_string();
    let headers = [("Accept", TAXII), ("Content-Type", TAXII)];
    for _ in 0..3 {
        let reply = send(
            &analyst,
            node.taxii,
            "POST",
            &objects,
            &headers,
            body.as_bytes(),
        )
        .await
        .expect("an answer");
        assert_eq!(
            reply.status,
            413,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        // A client that stops at a failed write (most do) would not have read it.
        assert!(reply.sent_whole, "the node closed before the body was sent");
        assert!(
            String::from_utf8_lossy(&reply.body).contains("taxii.max_body_bytes"),
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    // A body declared beyond what is ever read is refused at once.
    let reply = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &[
            ("Accept", TAXII),
            ("Content-Type", TAXII),
            ("Content-Length", "1000000000"),
        ],
        b"",
    )
    .await
    .expect("an answer");
    assert_eq!(reply.status, 413);
}

/// A compaction numbers the store's items anew, and the `next` of a page from before
/// it is refused as stale. On a kept connection too: the page made ahead before the
/// compaction is not served in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_pages_made_ahead_are_not_served_after_a_compaction() {
    let pki = federation();
    let config = write_config(&pki, false);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[store]\ncompact_every = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    let node = serve_taxii(&config);
    let researcher = tls(&pki, Some("researcher.uni-x"));
    let analyst = tls(&pki, Some("analyst.soc"));
    let cid = get(&researcher, node.taxii, "/api/collections/")
        .await
        .json()["collections"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let objects = format!("/api/collections/{cid}/objects/");
    let sent: Vec<Value> = (1..=8).map(|n| indicator(n, GREEN)).collect();
    let body = json!({ "objects": sent }).to_string();
    let headers = [("Accept", TAXII), ("Content-Type", TAXII)];
    let reply = send(
        &analyst,
        node.taxii,
        "POST",
        &objects,
        &headers,
        body.as_bytes(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 202);
    assert_eq!(reply.json()["failure_count"], json!(0));

    let mut kept = KeptConnection::open(&researcher, node.taxii).await;
    // Items and the definitions they bring: the `next` goes on after the last item.
    let first = kept.get(&format!("{objects}?limit=6")).await;
    assert_eq!(first.status, 200);
    let first = first.json();
    assert_eq!(item_ids(&first), (1..=4).map(id_of).collect::<Vec<_>>());
    let next = first["next"].as_str().unwrap().to_owned();
    let second = format!("{objects}?limit=6&next={next}");
    // Asked on a new connection, which has no page made ahead, the `next` is refused
    // once a compaction has run since the first page.
    wait_for(|| async { get(&researcher, node.taxii, &second).await.status == 400 }).await;
    let reply = kept.get(&second).await;
    assert_eq!(
        reply.status,
        400,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// A relationship posted before its ends is listed once they arrive, as added then: a
/// client that polls with `added_after` (the last `X-TAXII-Date-Added-Last` it saw)
/// receives it with its ends, though it polled while the relationship waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_lists_a_relationship_as_added_once_its_ends_arrive() {
    const MALWARE: &str = "malware--6d6d6d6d-0000-4000-8000-000000000001";
    const RELATED: &str = "relationship--6d6d6d6d-0000-4000-8000-000000000002";
    let Started {
        pki: _pki,
        node,
        researcher,
        analyst,
        collection,
        ..
    } = start().await;
    let objects = format!("{collection}objects/");
    let end = indicator(1, GREEN);
    let marker = indicator(2, GREEN);
    let relationship = json!({
        "type": "relationship", "spec_version": "2.1", "id": RELATED,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "relationship_type": "indicates", "source_ref": end["id"],
        "target_ref": MALWARE, "object_marking_refs": [GREEN],
    });
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        vec![relationship, marker.clone()],
    )
    .await;
    // The poll before the ends: the marker, not the relationship that waits for them.
    let first = get(&researcher, node.taxii, &objects).await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert_eq!(item_ids(&first.json()), [marker["id"].as_str().unwrap()]);
    let last = first.header("x-taxii-date-added-last").unwrap().to_owned();
    // The ends come in a later millisecond than any the poll saw.
    let polled = entente::engine::now_ms();
    wait_for(|| async move { entente::engine::now_ms() > polled }).await;
    let malware = json!({
        "type": "malware", "spec_version": "2.1", "id": MALWARE,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "Poison Ivy", "is_family": true, "object_marking_refs": [GREEN],
    });
    publish_as(&analyst, node.taxii, &objects, vec![end.clone(), malware]).await;
    let next = get(
        &researcher,
        node.taxii,
        &format!("{objects}?added_after={last}"),
    )
    .await;
    let mut ids = item_ids(&next.json());
    ids.sort();
    let mut expected = vec![
        end["id"].as_str().unwrap().to_owned(),
        MALWARE.to_owned(),
        RELATED.to_owned(),
    ];
    expected.sort();
    assert_eq!(ids, expected);
}

/// A GREEN relationship to an AMBER malware is withheld from the GREEN researcher; the
/// malware's writer lowers it to GREEN in a new version. The researcher, polling with
/// `added_after` from before, receives the malware and the relationship it released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_lists_a_relationship_again_when_a_new_version_of_its_end_releases_it() {
    const MALWARE: &str = "malware--6e6e6e6e-0000-4000-8000-000000000001";
    const RELATED: &str = "relationship--6e6e6e6e-0000-4000-8000-000000000002";
    let Started {
        pki: _pki,
        node,
        researcher,
        analyst,
        collection,
        ..
    } = start().await;
    let objects = format!("{collection}objects/");
    let end = indicator(71, GREEN);
    let malware = |modified: &str, marking: &str| {
        json!({
            "type": "malware", "spec_version": "2.1", "id": MALWARE,
            "created": "2025-04-01T00:00:00.000Z", "modified": modified,
            "name": "Poison Ivy", "is_family": true, "object_marking_refs": [marking],
        })
    };
    let relationship = json!({
        "type": "relationship", "spec_version": "2.1", "id": RELATED,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "relationship_type": "indicates", "source_ref": end["id"],
        "target_ref": MALWARE, "object_marking_refs": [GREEN],
    });
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        vec![
            end.clone(),
            malware("2025-04-01T00:00:00.000Z", AMBER),
            relationship,
        ],
    )
    .await;
    let first = get(&researcher, node.taxii, &objects).await;
    assert_eq!(item_ids(&first.json()), [end["id"].as_str().unwrap()]);
    let last = first.header("x-taxii-date-added-last").unwrap().to_owned();
    let polled = entente::engine::now_ms();
    wait_for(|| async move { entente::engine::now_ms() > polled }).await;
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        vec![malware("2025-04-02T00:00:00.000Z", GREEN)],
    )
    .await;
    let next = get(
        &researcher,
        node.taxii,
        &format!("{objects}?added_after={last}"),
    )
    .await;
    let mut ids = item_ids(&next.json());
    ids.sort();
    assert_eq!(
        ids,
        [MALWARE, RELATED],
        "{}",
        String::from_utf8_lossy(&next.body)
    );
}

/// A reload that widens a client's policy changes its collection: its next poll with
/// `added_after` (the last `X-TAXII-Date-Added-Last` it saw) gives it what it may now
/// see, though the node accepted those objects before that poll. Without a change, the
/// dates stay put: the poll after gives nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_policy_is_widened_receives_what_it_may_now_see_on_its_next_poll() {
    let Started {
        pki: _pki,
        config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let manifest = format!("{collection}manifest/");
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        vec![indicator(61, GREEN), indicator(62, AMBER)],
    )
    .await;
    let first = get(&researcher, node.taxii, &objects).await;
    assert_eq!(item_ids(&first.json()), [id_of(61)]);
    let last = first.header("x-taxii-date-added-last").unwrap().to_owned();
    let poll = |after: String| {
        let researcher = researcher.clone();
        let objects = objects.clone();
        let addr = node.taxii;
        async move { get(&researcher, addr, &format!("{objects}?added_after={after}")).await }
    };
    assert_eq!(
        item_ids(&poll(last.clone()).await.json()),
        Vec::<String>::new()
    );
    // The researcher is widened to AMBER.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"",
        "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"AMBER\"",
    );
    std::fs::write(&config, text).unwrap();
    reload(&node);
    wait_for(|| async {
        let reply = get(&researcher, node.taxii, &manifest).await;
        reply.status == 200 && item_ids(&reply.json()).contains(&id_of(62))
    })
    .await;
    // Its poll from the last date it saw gives the AMBER indicator, dated after it.
    let widened = poll(last.clone()).await;
    assert_eq!(
        widened.status,
        200,
        "{}",
        String::from_utf8_lossy(&widened.body)
    );
    let ids = item_ids(&widened.json());
    assert!(ids.contains(&id_of(62)), "{ids:?}");
    let newest = widened
        .header("x-taxii-date-added-last")
        .unwrap()
        .to_owned();
    assert!(newest > last, "{newest} after {last}");
    let listed = get(&researcher, node.taxii, &manifest).await.json();
    let entry = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == json!(id_of(62)))
        .unwrap()
        .clone();
    assert!(
        entry["date_added"].as_str().unwrap() > last.as_str(),
        "{entry}"
    );
    // Nothing changed since: polling on from there gives nothing.
    assert_eq!(item_ids(&poll(newest).await.json()), Vec::<String>::new());
    // The analyst, whose policy did not change, still sees the dates it saw.
    let analyst_view = get(
        &analyst,
        node.taxii,
        &format!("{objects}?added_after={last}"),
    )
    .await;
    assert_eq!(item_ids(&analyst_view.json()), Vec::<String>::new());
}

/// An object is dated in a client's collection when its embargo lifts for the client.
/// Dated when the node accepted it, one still under the embargo at the client's first
/// request after a reload (any change of its policy) was dated at that request, which
/// the client's `X-TAXII-Date-Added-Last` had already reached: its `added_after` polls
/// never gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_under_an_embargo_across_a_reload_reaches_added_after_polls() {
    let Started {
        pki: _pki,
        config,
        node,
        researcher,
        analyst,
        collection,
    } = start().await;
    let objects = format!("{collection}objects/");
    let manifest = format!("{collection}manifest/");
    let researcher_entry = "id = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"";
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains(researcher_entry));
    std::fs::write(
        &config,
        text.replace(
            researcher_entry,
            &format!("{researcher_entry}\nembargo = \"5s\""),
        ),
    )
    .unwrap();
    reload(&node);
    let mut private = indicator(73, GREEN);
    private["labels"] = json!(["pii"]);
    publish_as(
        &analyst,
        node.taxii,
        &objects,
        vec![indicator(71, GREEN), private],
    )
    .await;
    let listed = |n: usize| {
        let researcher = researcher.clone();
        let manifest = manifest.clone();
        let addr = node.taxii;
        async move {
            let reply = get(&researcher, addr, &manifest).await;
            reply.status == 200 && item_ids(&reply.json()).contains(&id_of(n))
        }
    };
    wait_for(|| listed(71)).await;
    wait_for(|| listed(73)).await;
    let first = get(&researcher, node.taxii, &objects).await;
    let last = first.header("x-taxii-date-added-last").unwrap().to_owned();

    // A new object, then a reload that changes the researcher's policy (it no longer
    // receives what is tagged pii) while the object is under its embargo.
    publish_as(&analyst, node.taxii, &objects, vec![indicator(72, GREEN)]).await;
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "embargo = \"5s\"",
            "embargo = \"5s\"\ndeny_tags = [\"pii\"]",
        ),
    )
    .unwrap();
    reload(&node);
    // Its poll once the reload is in force, under the embargo: what it may still see is
    // dated from the change and given again; it moves on from there.
    let poll = |after: String| {
        let researcher = researcher.clone();
        let objects = objects.clone();
        let addr = node.taxii;
        async move { get(&researcher, addr, &format!("{objects}?added_after={after}")).await }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let after_reload = loop {
        let reply = poll(last.clone()).await;
        if item_ids(&reply.json()) == [id_of(71)] {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never came into force"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = after_reload
        .header("x-taxii-date-added-last")
        .unwrap()
        .to_owned();
    // Once the embargo has lifted, its poll from there gives the new object.
    wait_for(|| listed(72)).await;
    let ids = item_ids(&poll(last).await.json());
    assert!(ids.contains(&id_of(72)), "{ids:?}");
}

/// A writer over its publishing rate waits, then has its objects stored with a complete
/// status like any other write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_write_over_the_publishing_rate_waits_then_is_stored() {
    let pki = federation();
    let config = write_config(&pki, false);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[limits]\npublish_items_per_second = 10\n");
    std::fs::write(&config, text).unwrap();
    let node = serve_taxii(&config);
    let analyst = tls(&pki, Some("analyst.soc"));
    let listed = get(&analyst, node.taxii, "/api/collections/").await.json();
    let objects = format!(
        "/api/collections/{}/objects/",
        listed["collections"][0]["id"].as_str().unwrap()
    );
    // The first ten use up the second's allowance; the next ten wait about a second.
    let first: Vec<Value> = (70..80).map(|n| indicator(n, GREEN)).collect();
    publish_as(&analyst, node.taxii, &objects, first).await;
    let started = Instant::now();
    let second: Vec<Value> = (80..90).map(|n| indicator(n, GREEN)).collect();
    publish_as(&analyst, node.taxii, &objects, second).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let (ids, _) = all_ids(&analyst, &node, &objects, 100).await;
    let expected: BTreeSet<String> = (70..90).map(id_of).collect();
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
}

/// An object the publishing rules refuse (here a revocation of an indicator the node
/// does not hold) fails alone in the status: the envelope's other objects are stored,
/// a revocation after its own indicator in the same envelope included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_object_the_publishing_rules_refuse_does_not_hold_back_the_others() {
    let Started {
        pki: _pki,
        node,
        analyst,
        collection,
        ..
    } = start().await;
    let objects = format!("{collection}objects/");
    let mut unknown = indicator(91, GREEN);
    unknown["revoked"] = json!(true);
    let kept = indicator(92, GREEN);
    let revoked_later = indicator(93, GREEN);
    let mut revocation = revoked_later.clone();
    revocation["revoked"] = json!(true);
    revocation["modified"] = json!("2025-01-03T00:00:00.000Z");
    let sent = vec![kept, unknown, revoked_later, revocation];
    let reply = post_envelope(&analyst, node.taxii, &objects, sent).await;
    assert_eq!(
        reply.status,
        202,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let status = reply.json();
    assert_eq!(status["status"], json!("complete"), "{status}");
    assert_eq!(status["success_count"], json!(3), "{status}");
    assert_eq!(status["failure_count"], json!(1), "{status}");
    assert_eq!(status["failures"][0]["id"], json!(id_of(91)), "{status}");
    let message = status["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("nothing to revoke"), "{message}");
    assert!(!message.starts_with("item "), "{message}");
    let listed = get(
        &analyst,
        node.taxii,
        &format!(
            "{objects}?match[id]={},{},{}&match[version]=all",
            id_of(91),
            id_of(92),
            id_of(93)
        ),
    )
    .await;
    let versions: Vec<(String, bool)> = listed.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == json!("indicator"))
        .map(|o| {
            (
                o["id"].as_str().unwrap().to_owned(),
                o["revoked"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert!(versions.contains(&(id_of(92), false)), "{versions:?}");
    assert!(versions.contains(&(id_of(93), true)), "{versions:?}");
    assert!(versions.contains(&(id_of(93), false)), "{versions:?}");
    assert!(
        !versions.iter().any(|(id, _)| *id == id_of(91)),
        "{versions:?}"
    );
}

/// A client with both a certificate and `[[taxii.basic]]` credentials is cut off by
/// revoking its certificate: its password stops working too, on a kept connection
/// and on new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_clients_certificate_ends_its_basic_access_too() {
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    let anonymous = tls(&pki, None);
    let siem = basic("siem.soc", SIEM_PASSWORD);
    let with_password = || {
        let anonymous = anonymous.clone();
        let siem = siem.clone();
        let addr = node.taxii;
        async move {
            send(
                &anonymous,
                addr,
                "GET",
                "/api/collections/",
                &[("Accept", TAXII), ("Authorization", &siem)],
                b"",
            )
            .await
            .map_or(0, |reply| reply.status)
        }
    };
    assert_eq!(with_password().await, 200);
    // The client once connects with its certificate, so the node knows it.
    let certificate = tls(&pki, Some("siem.soc"));
    assert_eq!(
        get(&certificate, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
    // The CA revokes it; the node reloads with the CRL.
    let crl = pki.certs.revoke(&NodeId::new("siem.soc").unwrap()).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(text.matches("crls = []").count(), 1, "{text}");
    std::fs::write(
        &config,
        text.replace(
            "crls = []",
            &format!("crls = [{:?}]", crl.display().to_string()),
        ),
    )
    .unwrap();
    reload(&node);
    wait_for(|| async {
        send(
            &certificate,
            node.taxii,
            "GET",
            "/api/collections/",
            &[("Accept", TAXII)],
            b"",
        )
        .await
        .is_err()
    })
    .await;
    assert_eq!(
        with_password().await,
        401,
        "the password of a revoked client"
    );
    // Another Basic client is not affected: the researcher has none, so the check is
    // that a certificate not revoked still works.
    let researcher = tls(&pki, Some("researcher.uni-x"));
    assert_eq!(
        get(&researcher, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
}

/// Taking `[taxii]` out of the configuration and reloading closes the listener: the
/// operator turning TAXII off does not have to remember a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_taxii_section_and_reloading_closes_the_listener() {
    let pki = federation();
    let config = write_config(&pki, false);
    let node = serve_taxii(&config);
    let researcher = tls(&pki, Some("researcher.uni-x"));
    assert_eq!(
        get(&researcher, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let section = "\n[taxii]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 65536\n";
    assert_eq!(text.matches(section).count(), 1, "{text}");
    std::fs::write(&config, text.replace(section, "\n")).unwrap();
    reload(&node);
    wait_for(|| async { tokio::net::TcpStream::connect(node.taxii).await.is_err() }).await;
    // The gRPC side is still up: the node reloaded, it did not stop.
    let client = common::taxii_node_client(&pki, &node, "researcher.uni-x").await;
    assert!(client.hello().await.is_ok());
}

/// A POST refused before its body is read (a read-only client, a wrong media type) is
/// answered after the body is read and dropped: the client reads the refusal, not a
/// connection reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_a_post_refused_before_its_body_is_answered_not_reset() {
    let Started {
        node,
        researcher,
        analyst,
        collection,
        ..
    } = start().await;
    let objects = format!("{collection}objects/");
    // Far more than what the sockets buffer, within the node's limit for a drain.
    let note = "x".repeat(4 * 1024 * 1024);
    let body = json!({ "objects": [{ "type": "note", "content": note }] }).to_string();
    for (who, content_type, status) in [
        (&researcher, TAXII, 403),
        (&analyst, "application/json", 415),
    ] {
        let reply = send(
            who,
            node.taxii,
            "POST",
            &objects,
            &[("Accept", TAXII), ("Content-Type", content_type)],
            body.as_bytes(),
        )
        .await
        .expect("an answer");
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        assert!(reply.sent_whole, "the node closed before the body was sent");
    }
}

/// Once revoked, a client's certificate keeps its Basic credentials refused after it
/// expires: the revocation is judged as of when the certificate was presented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_clients_password_stays_refused_after_its_certificate_expires() {
    use std::os::unix::fs::PermissionsExt;
    let pki = federation();
    let config = write_config(&pki, true);
    let node = serve_taxii(&config);
    let siem_id = NodeId::new("siem.soc").unwrap();
    // A certificate of the client valid for a few seconds more, kept by the CA as an
    // earlier certificate of the id (as a renewal keeps one).
    let expires = time::OffsetDateTime::now_utc() + time::Duration::seconds(4);
    let issued = pki
        .certs
        .load_ca()
        .unwrap()
        .issue(
            &siem_id,
            &entente::certs::Usage::Client,
            entente::certs::Validity {
                not_before: time::OffsetDateTime::now_utc() - time::Duration::hours(1),
                not_after: expires,
            },
        )
        .unwrap();
    let short = pki.path().join("short");
    std::fs::create_dir_all(&short).unwrap();
    let (cert, key) = (short.join("siem.crt"), short.join("siem.key"));
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let serial = entente::util::hex(&entente::certs::certificate_serial(&cert).unwrap());
    std::fs::copy(
        &cert,
        pki.ca_cert()
            .parent()
            .unwrap()
            .join(format!("siem.soc.{serial}.crt")),
    )
    .unwrap();
    let mut short_tls = (*entente::transport::TlsMaterial::load(
        &entente::transport::TlsPaths {
            cert,
            key,
            trust_anchors: vec![pki.ca_cert()],
            crls: vec![],
        },
        &siem_id,
    )
    .unwrap()
    .client_config()
    .unwrap())
    .clone();
    short_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let short_tls = Arc::new(short_tls);
    assert_eq!(
        get(&short_tls, node.taxii, "/api/collections/")
            .await
            .status,
        200
    );
    let anonymous = tls(&pki, None);
    let siem = basic("siem.soc", SIEM_PASSWORD);
    let with_password = || {
        let anonymous = anonymous.clone();
        let siem = siem.clone();
        let addr = node.taxii;
        async move {
            send(
                &anonymous,
                addr,
                "GET",
                "/api/collections/",
                &[("Accept", TAXII), ("Authorization", &siem)],
                b"",
            )
            .await
            .map_or(0, |reply| reply.status)
        }
    };
    let crl = pki.certs.revoke(&siem_id).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "crls = []",
            &format!("crls = [{:?}]", crl.display().to_string()),
        ),
    )
    .unwrap();
    reload(&node);
    wait_for(|| async { with_password().await == 401 }).await;
    // The revoked certificate expires; the revocation stands.
    wait_for(|| async { time::OffsetDateTime::now_utc() > expires + time::Duration::seconds(1) })
        .await;
    assert_eq!(with_password().await, 401, "after the certificate expired");
}
