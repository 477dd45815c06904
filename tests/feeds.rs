//! Feeds in: a node polls a TAXII 2.1 collection served by medallion (the OASIS
//! reference server) and MISP feeds served by a small HTTP server in the test, and
//! publishes what they hold as its own signed items. Needs `python3` with the packages
//! in `tests/python/requirements.txt` for the TAXII test (set `ENTENTE_PYTHON` to use
//! another interpreter).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use entente::NodeId;
use entente::client::NodeClient;
use entente::rpc::proto::StoredItem;
use entente::wire::{Tlp as WireTlp, item};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Pki;
use common::feeds::{feed_status, items_tagged, wait_within};

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("ENTENTE_PYTHON").unwrap_or_else(|_| "python3".into())
}

// ---------------------------------------------------------------------------------
// A small HTTP/1.1 server: one answer per connection, from a table the test changes.

#[derive(Clone)]
struct Reply {
    content_type: &'static str,
    body: Vec<u8>,
    /// Without Content-Length the body runs until the connection closes.
    content_length: bool,
}

fn json(body: &serde_json::Value) -> Reply {
    Reply {
        content_type: "application/json",
        body: body.to_string().into_bytes(),
        content_length: true,
    }
}

#[derive(Clone, Default)]
struct Files {
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    requests: Arc<Mutex<HashMap<String, usize>>>,
    /// Paths answered `302 Found` with this `Location`.
    redirects: Arc<Mutex<HashMap<String, String>>>,
    /// When set, the `Authorization` value every request must carry (else 401).
    authorization: Arc<Mutex<Option<String>>>,
    /// The `Authorization` value each path was last asked with.
    authorizations: Arc<Mutex<HashMap<String, String>>>,
    /// The `Content-Encoding` each path is answered with, when one is set.
    encodings: Arc<Mutex<HashMap<String, &'static str>>>,
    /// The `Accept-Encoding` value each path was last asked with.
    accepted_encodings: Arc<Mutex<HashMap<String, String>>>,
}

impl Files {
    fn set(&self, path: &str, reply: Reply) {
        self.replies.lock().unwrap().insert(path.to_owned(), reply);
    }

    fn redirect(&self, path: &str, location: &str) {
        self.redirects
            .lock()
            .unwrap()
            .insert(path.to_owned(), location.to_owned());
    }

    fn requests(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

/// Serves `files` on a loopback port; returns `http://127.0.0.1:PORT`.
async fn serve_files(files: Files) -> String {
    serve_files_with(files, None).await
}

/// Serves `files` on a loopback port, over TLS when `tls` is given; returns
/// `http[s]://127.0.0.1:PORT`.
async fn serve_files_with(files: Files, tls: Option<tokio_rustls::TlsAcceptor>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => answer(stream, files).await,
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            answer(stream, files).await;
                        }
                    }
                }
            });
        }
    });
    format!("{scheme}://{addr}")
}

async fn answer<S>(mut stream: S, files: Files)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let target = head.split_whitespace().nth(1).unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/").to_owned();
    *files
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default() += 1;
    let authorization = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("authorization")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    files
        .authorizations
        .lock()
        .unwrap()
        .insert(path.clone(), authorization.clone());
    let accept_encoding = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("accept-encoding")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    files
        .accepted_encodings
        .lock()
        .unwrap()
        .insert(path.clone(), accept_encoding);
    let encoding = files.encodings.lock().unwrap().get(&path).copied();
    let required = files.authorization.lock().unwrap().clone();
    let redirect = files.redirects.lock().unwrap().get(&path).cloned();
    let reply = files.replies.lock().unwrap().get(&path).cloned();
    let response = match reply {
        _ if required.is_some_and(|r| r != authorization) => {
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        _ if redirect.is_some() => format!(
            "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            redirect.unwrap_or_default()
        )
        .into_bytes(),
        None => {
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        }
        Some(reply) => {
            let mut out = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nConnection: close\r\n",
                reply.content_type
            );
            if reply.content_length {
                out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
            }
            if let Some(encoding) = encoding {
                out.push_str(&format!("Content-Encoding: {encoding}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(&reply.body);
            bytes
        }
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

/// A feed configured `share_with_peers` and then taken out of the configuration keeps
/// being shared as it was: a revocation of one of its AMBER items, which a partner
/// holds, still reaches that partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_feed_taken_out_of_the_configuration_stays_shared() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/licensed/manifest.json",
        json(&manifest(&[(EVENT_1, "Amber", t1)])),
    );
    files.set(
        &format!("/licensed/{EVENT_1}.json"),
        json(&event(
            EVENT_1,
            "Amber",
            t1,
            &["tlp:amber"],
            vec![attribute(60, "domain", "amber.licensed.example", true, t1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let open = "max_tlp = \"AMBER\"\nallow_types = [\"*\"]\nforward_third_party = true";
    let berlin_peer = format!(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\n{open}\n"
    );
    let hq_data = pki.path().join("data-hq");
    let hq_config = node_config(
        &pki,
        &hq,
        &hq_data,
        &format!(
            "{berlin_peer}\n[[feed]]\nname = \"licensed\"\nkind = \"misp\"\nurl = \"{base}/licensed/\"\ninterval = \"1s\"\nshare_with_peers = true\n"
        ),
    );
    let hq_node = common::start(&hq_config).await;
    let hq_client = common::connect(&pki, &hq_node, "redmond.hq").await;
    let berlin_node = common::start(&node_config(
        &pki,
        &berlin,
        &pki.path().join("data-berlin"),
        &format!(
            "\n[[peer]]\nid = \"redmond.hq\"\naddress = \"{}\"\nrole = \"peer\"\n{open}\n",
            hq_node.local_addr()
        ),
    ))
    .await;
    let berlin_client = common::connect(&pki, &berlin_node, "berlin.office").await;
    let held = wait_until("the shared AMBER item at berlin", || {
        let client = &berlin_client;
        async move {
            let held = items_tagged(client, "source:licensed").await;
            (held.len() == 1).then_some(held)
        }
    })
    .await;
    let (id, _) = held.into_iter().next().unwrap();

    // The feed leaves the configuration; the node reloads and revokes the item.
    std::fs::write(
        &hq_config,
        format!("{}{berlin_peer}", common::node_section(&pki, &hq, &hq_data)),
    )
    .unwrap();
    hq_node.reload_policy().expect("reload");
    hq_client
        .publish(tokio_stream::iter(vec![
            entente::rpc::proto::PublishRequest {
                items: vec![entente::wire::Item {
                    id: id.clone(),
                    modified_unix_ms: 0,
                    tlp: 0,
                    tags: vec![],
                    kind: Some(item::Kind::Revocation(entente::wire::Revocation {
                        reason: "withdrawn by the vendor".into(),
                        indicator_type: String::new(),
                        indicator: None,
                    })),
                }],
                distribution: None,
                groups: vec![],
            },
        ]))
        .await
        .unwrap();
    wait_until("the revocation at berlin", || {
        let client = &berlin_client;
        let id = id.clone();
        async move {
            let held = client.get(&id).await.ok()?;
            // Revoked: no longer a live indicator there.
            match held.and_then(|s| s.item).and_then(|i| i.kind) {
                Some(item::Kind::Revocation(_)) | None => Some(()),
                _ => None,
            }
        }
    })
    .await;
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

/// A feed taken out of the configuration does not release what it brought in: its
/// AMBER items stay with the node after a reload and after a restart, as they did
/// while the feed was configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_taken_out_of_the_configuration_does_not_release_its_items() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/vendor/manifest.json",
        json(&manifest(&[(EVENT_1, "Amber", t1), (EVENT_2, "Green", t1)])),
    );
    for (event_id, label, tag, value, tail) in [
        (EVENT_1, "Amber", "tlp:amber", "amber.vendor.example", 40),
        (EVENT_2, "Green", "tlp:green", "green.vendor.example", 41),
    ] {
        files.set(
            &format!("/vendor/{event_id}.json"),
            json(&event(
                event_id,
                label,
                t1,
                &[tag],
                vec![attribute(tail, "domain", value, true, t1)],
                vec![],
            )),
        );
    }
    let base = serve_files(files.clone()).await;

    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let open = "max_tlp = \"AMBER\"\nallow_types = [\"*\"]\nforward_third_party = true";
    let berlin_peer = format!(
        "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\n{open}\n"
    );
    let hq_data = pki.path().join("data-hq");
    let hq_config = node_config(
        &pki,
        &hq,
        &hq_data,
        &format!(
            "{berlin_peer}\n[[feed]]\nname = \"vendor\"\nkind = \"misp\"\nurl = \"{base}/vendor/\"\ninterval = \"1s\"\n"
        ),
    );
    let mut hq_node = common::start(&hq_config).await;
    let mut hq_client = common::connect(&pki, &hq_node, "redmond.hq").await;
    let berlin_data = pki.path().join("data-berlin");
    let berlin_config = |hq_addr: String| {
        node_config(
            &pki,
            &berlin,
            &berlin_data,
            &format!(
                "\n[[peer]]\nid = \"redmond.hq\"\naddress = \"{hq_addr}\"\nrole = \"peer\"\n{open}\n"
            ),
        )
    };
    let berlin_node = common::start(&berlin_config(hq_node.local_addr().to_string())).await;
    let berlin_client = common::connect(&pki, &berlin_node, "berlin.office").await;
    wait_until("the feed's items at the node", || {
        let client = &hq_client;
        async move { (items_tagged(client, "source:vendor").await.len() == 2).then_some(()) }
    })
    .await;

    assert_eq!(
        vendor_after("start", &hq_client, &berlin_client).await,
        ["green.vendor.example"]
    );

    // The feed leaves the configuration; the node reloads.
    std::fs::write(
        &hq_config,
        format!("{}{berlin_peer}", common::node_section(&pki, &hq, &hq_data)),
    )
    .unwrap();
    hq_node.reload_policy().expect("reload");
    assert_eq!(
        vendor_after("reload", &hq_client, &berlin_client).await,
        ["green.vendor.example"],
        "a reload without the feed released its AMBER item"
    );

    // And restarts, without the feed, and with the record of its feeds deleted: the
    // store's copy of the names brings it back.
    drop(hq_client);
    hq_node.shutdown(DEADLINE).await.unwrap();
    std::fs::remove_file(hq_data.join("feeds.known")).unwrap();
    hq_node = common::start(&hq_config).await;
    hq_client = common::connect(&pki, &hq_node, "redmond.hq").await;
    berlin_config(hq_node.local_addr().to_string());
    berlin_node.reload_policy().expect("reload berlin");
    assert_eq!(
        vendor_after("restart", &hq_client, &berlin_client).await,
        ["green.vendor.example"],
        "a restart without the feed released its AMBER item"
    );
    assert!(hq_data.join("feeds.known").exists(), "written again");
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}

// ---------------------------------------------------------------------------------
// Nodes and what they hold.

/// What `berlin` holds of the `vendor` feed once it has caught up with a marker the
/// node published after `step`.
async fn vendor_after(
    step: &str,
    hq_client: &NodeClient,
    berlin_client: &NodeClient,
) -> Vec<String> {
    let tag = format!("marker-{step}");
    hq_client
        .publish(tokio_stream::iter(vec![
            entente::rpc::proto::PublishRequest {
                items: vec![entente::wire::Item {
                    id: String::new(),
                    modified_unix_ms: 0,
                    tlp: WireTlp::Green as i32,
                    tags: vec![tag.clone()],
                    kind: Some(item::Kind::Indicator(entente::wire::Indicator {
                        indicator_type: "domain".into(),
                        value: format!("{tag}.example"),
                        ..Default::default()
                    })),
                }],
                distribution: None,
                groups: vec![],
            },
        ]))
        .await
        .unwrap();
    wait_until(&format!("berlin holds the marker after {step}"), || {
        let tag = tag.clone();
        async move {
            let links = berlin_client.links().await.ok()?.links;
            (items_tagged(berlin_client, &tag).await.len() == 1
                && links.iter().all(|link| link.caught_up))
            .then_some(())
        }
    })
    .await;
    let mut values: Vec<String> = items_tagged(berlin_client, "source:vendor")
        .await
        .values()
        .map(|s| indicator(s).1)
        .collect();
    values.sort();
    values
}

fn node_config(pki: &Pki, id: &NodeId, data: &Path, feeds: &str) -> PathBuf {
    let text = format!("{}{feeds}", common::node_section(pki, id, data));
    let path = pki.path().join(format!(
        "{id}-{}.toml",
        data.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

async fn own_client(pki: &Pki, id: &NodeId, addr: &str) -> NodeClient {
    let tls = pki.material(id).client_config().unwrap();
    tokio::time::timeout(DEADLINE, NodeClient::connect(tls, id, addr, id))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Waits until `check` holds, polling every 100 ms, failing after [`DEADLINE`].
async fn wait_until<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_within(what, DEADLINE, check).await
}

fn indicator(stored: &StoredItem) -> (String, String, i32, Vec<String>) {
    let item = stored.item.as_ref().unwrap();
    match item.kind.as_ref().unwrap() {
        item::Kind::Indicator(i) => (
            i.indicator_type.clone(),
            i.value.clone(),
            item.tlp,
            item.tags.clone(),
        ),
        other => panic!("not an indicator: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// MISP.

const EVENT_1: &str = "5d1c0a3e-1111-4e11-8a11-000000000001";
const EVENT_2: &str = "5d1c0a3e-2222-4e22-8a22-000000000002";
const EVENT_3: &str = "5d1c0a3e-3333-4e33-8a33-000000000003";

fn attribute(uuid_tail: u32, ty: &str, value: &str, to_ids: bool, ts: i64) -> serde_json::Value {
    serde_json::json!({
        "uuid": format!("6e2d1b4f-0000-4000-8000-{uuid_tail:012}"),
        "type": ty,
        "category": "Network activity",
        "value": value,
        "to_ids": to_ids,
        "timestamp": ts.to_string(),
        "comment": "",
    })
}

fn event(
    uuid: &str,
    info: &str,
    ts: i64,
    tags: &[&str],
    attributes: Vec<serde_json::Value>,
    objects: Vec<serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "Event": {
            "uuid": uuid,
            "info": info,
            "timestamp": ts.to_string(),
            "date": "2026-12-01",
            "Tag": tags.iter().map(|t| serde_json::json!({"name": t, "colour": "#ffffff"})).collect::<Vec<_>>(),
            "Attribute": attributes,
            "Object": objects,
        }
    })
}

fn manifest(events: &[(&str, &str, i64)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (uuid, info, ts) in events {
        map.insert(
            (*uuid).to_owned(),
            serde_json::json!({"info": info, "timestamp": ts.to_string(), "analysis": 2, "threat_level_id": 3, "Orgc": {"name": "CIRCL", "uuid": "55f6ea5e-2c60-40e5-964f-47a8950d210f"}, "Tag": []}),
        );
    }
    serde_json::Value::Object(map)
}

fn event_1(ts: i64, domain: &str) -> serde_json::Value {
    event(
        EVENT_1,
        "Phishing wave",
        ts,
        &["tlp:green", "osint:source-type=\"blog-post\""],
        vec![
            attribute(1, "ip-dst", "198.51.100.7", true, ts),
            attribute(2, "domain", domain, true, ts),
            attribute(3, "url", "http://login.evil.example/a", true, 1_764_000_000),
            attribute(
                4,
                "md5",
                "D41D8CD98F00B204E9800998ECF8427E",
                true,
                1_764_000_000,
            ),
            attribute(
                5,
                "sha1",
                "da39a3ee5e6b4b0d3255bfef95601890afd80709",
                true,
                1_764_000_000,
            ),
            attribute(
                6,
                "sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                true,
                1_764_000_000,
            ),
            attribute(7, "email-src", "Phisher@Evil.Example", true, 1_764_000_000),
            attribute(8, "ip-dst|port", "203.0.113.5|443", true, 1_764_000_000),
            attribute(9, "comment", "not an indicator", true, 1_764_000_000),
            attribute(10, "ip-dst", "192.0.2.99", false, 1_764_000_000),
        ],
        vec![serde_json::json!({
            "name": "file",
            "Attribute": [attribute(11, "filename|sha1", "a.exe|a9993e364706816aba3e25717850c26c9cd0d89d", true, 1_764_000_000)],
        })],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_feed_maps_attributes_takes_markings_and_updates_without_duplicates() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[
            (EVENT_1, "Phishing wave", t1),
            (EVENT_2, "Scanner", t1),
            (EVENT_3, "Public list", t1),
        ])),
    );
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        json(&event_1(t1, "evil.example")),
    );
    // No tlp: tag: the feed's default marking.
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        json(&event(
            EVENT_2,
            "Scanner",
            t1,
            &[],
            vec![attribute(20, "ip-src", "192.0.2.20", true, t1)],
            vec![],
        )),
    );
    // TLP 1.0 WHITE is CLEAR.
    files.set(
        &format!("/misp/{EVENT_3}.json"),
        json(&event(
            EVENT_3,
            "Public list",
            t1,
            &["tlp:white"],
            vec![attribute(30, "hostname", "cdn.bad.example", true, t1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;

    let pki = Pki::new();
    let id = pki.node("misp.node");
    let data = pki.path().join("data-misp");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"misp-test\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ntlp = \"amber\"\ntags = [\"osint\"]\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "misp.node").await;

    // Ten attributes map: ten from event 1 (the comment and the one not for detection
    // do not), one from each of the others.
    let held = wait_until("the MISP indicators", || {
        let client = &client;
        async move {
            let held = items_tagged(client, "source:misp-test").await;
            (held.len() >= 11).then_some(held)
        }
    })
    .await;
    assert_eq!(held.len(), 11, "{held:#?}");
    let mut by_value: BTreeMap<String, (String, i32, Vec<String>)> = BTreeMap::new();
    for stored in held.values() {
        let (ty, value, tlp, tags) = indicator(stored);
        by_value.insert(value, (ty, tlp, tags));
        assert_eq!(stored.provenance.as_ref().unwrap().origin, "misp.node");
    }
    let expect = [
        ("198.51.100.7", "ipv4", WireTlp::Green),
        ("evil.example", "domain", WireTlp::Green),
        ("http://login.evil.example/a", "url", WireTlp::Green),
        ("d41d8cd98f00b204e9800998ecf8427e", "md5", WireTlp::Green),
        (
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "sha1",
            WireTlp::Green,
        ),
        (
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256",
            WireTlp::Green,
        ),
        ("phisher@evil.example", "email", WireTlp::Green),
        ("203.0.113.5", "ipv4", WireTlp::Green),
        (
            "a9993e364706816aba3e25717850c26c9cd0d89d",
            "sha1",
            WireTlp::Green,
        ),
        ("192.0.2.20", "ipv4", WireTlp::Amber),
        ("cdn.bad.example", "domain", WireTlp::Clear),
    ];
    for (value, ty, tlp) in expect {
        let (held_ty, held_tlp, tags) = by_value
            .get(value)
            .unwrap_or_else(|| panic!("{value} is held: {by_value:#?}"));
        assert_eq!(held_ty, ty, "{value}");
        assert_eq!(*held_tlp, tlp as i32, "{value}");
        // The event's tags other than tlp: come first (event 1's items are the GREEN
        // ones), then the feed's.
        let mut expected: Vec<String> = Vec::new();
        if tlp == WireTlp::Green {
            expected.push("osint:source-type=\"blog-post\"".to_owned());
        }
        expected.extend(["source:misp-test".to_owned(), "osint".to_owned()]);
        assert_eq!(tags, &expected, "{value}");
    }
    assert!(
        !by_value.contains_key("192.0.2.99"),
        "to_ids false is not taken"
    );

    let status = wait_until("a second poll", || {
        let client = &client;
        async move {
            let s = feed_status(client, "misp-test").await;
            (s.polls >= 2).then_some(s)
        }
    })
    .await;
    assert_eq!(status.kind, "misp");
    assert_eq!(status.items_ingested, 11, "{status:?}");
    assert!(status.last_error.is_empty(), "{status:?}");
    // Unchanged events are not fetched again.
    assert_eq!(files.requests(&format!("/misp/{EVENT_2}.json")), 1);

    // Event 1 changes: its domain attribute has a new value under the same uuid.
    let t2 = t1 + 500;
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        json(&event_1(t2, "evil-two.example")),
    );
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[
            (EVENT_1, "Phishing wave", t2),
            (EVENT_2, "Scanner", t1),
            (EVENT_3, "Public list", t1),
        ])),
    );
    let held = wait_until("the updated domain", || {
        let client = &client;
        async move {
            let held = items_tagged(client, "source:misp-test").await;
            held.values()
                .any(|s| indicator(s).1 == "evil-two.example")
                .then_some(held)
        }
    })
    .await;
    assert_eq!(held.len(), 11, "an update replaces its item: {held:#?}");
    assert!(!held.values().any(|s| indicator(s).1 == "evil.example"));
    let updated = held
        .values()
        .find(|s| indicator(s).1 == "evil-two.example")
        .unwrap();
    assert_eq!(updated.item.as_ref().unwrap().modified_unix_ms, t2 * 1000);
    assert_eq!(files.requests(&format!("/misp/{EVENT_2}.json")), 1);
    assert_eq!(files.requests(&format!("/misp/{EVENT_1}.json")), 2);
    // The poll that brought the update has recorded its checkpoint (a node stopped
    // before that fetches the event again, which is the safe side).
    wait_until("the checkpoint of the update", || {
        let client = &client;
        async move {
            let s = feed_status(client, "misp-test").await;
            s.checkpoint
                .contains(&format!("newest timestamp {t2}"))
                .then_some(())
        }
    })
    .await;

    node.shutdown(Duration::from_secs(5)).await.unwrap();

    // Restarted, the node keeps its checkpoint: no event is fetched again.
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "misp.node").await;
    let status = wait_until("a poll after the restart", || {
        let client = &client;
        async move {
            let s = feed_status(client, "misp-test").await;
            (s.last_success_unix_ms > 0).then_some(s)
        }
    })
    .await;
    assert_eq!(status.objects_fetched, 0, "{status:?}");
    assert!(status.checkpoint.contains(" events held"), "{status:?}");
    assert_eq!(files.requests(&format!("/misp/{EVENT_1}.json")), 2);
    assert_eq!(items_tagged(&client, "source:misp-test").await.len(), 11);
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_feeds_are_reported_in_status_and_the_node_keeps_serving() {
    common::init_logging();
    let files = Files::default();
    let big = vec![b' '; 64 * 1024];
    // Oversized, announced by Content-Length.
    files.set(
        "/big/manifest.json",
        Reply {
            content_type: "application/json",
            body: big.clone(),
            content_length: true,
        },
    );
    // Oversized, without a length: cut off while reading.
    files.set(
        "/endless/manifest.json",
        Reply {
            content_type: "application/json",
            body: big,
            content_length: false,
        },
    );
    files.set(
        "/broken/manifest.json",
        Reply {
            content_type: "application/json",
            body: b"{\"5d1c0a3e-1111-4e11-8a11-0000".to_vec(),
            content_length: true,
        },
    );
    files.set(
        "/html/manifest.json",
        Reply {
            content_type: "text/html",
            body: b"<html><body>Login</body></html>".to_vec(),
            content_length: true,
        },
    );
    files.set("/shape/manifest.json", json(&serde_json::json!([1, 2, 3])));
    files.set(
        "/taxii/collections/c1/objects/",
        Reply {
            content_type: "text/html",
            body: b"<html></html>".to_vec(),
            content_length: true,
        },
    );
    files.set(
        "/taxii-bad/collections/c1/objects/",
        Reply {
            content_type: "application/taxii+json;version=2.1",
            body: b"{\"objects\": 5}".to_vec(),
            content_length: true,
        },
    );
    // A good feed beside them.
    files.set(
        "/good/manifest.json",
        json(&manifest(&[(EVENT_3, "Public list", 1_764_000_100)])),
    );
    files.set(
        &format!("/good/{EVENT_3}.json"),
        json(&event(
            EVENT_3,
            "Public list",
            1_764_000_100,
            &["tlp:clear"],
            vec![attribute(30, "domain", "good.example", true, 1_764_000_100)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    // A server that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });

    let pki = Pki::new();
    let id = pki.node("bad.node");
    let data = pki.path().join("data-bad");
    let mut feeds = String::new();
    for (name, kind, path) in [
        ("big", "misp", "/big/"),
        ("endless", "misp", "/endless/"),
        ("broken", "misp", "/broken/"),
        ("html", "misp", "/html/"),
        ("shape", "misp", "/shape/"),
        ("missing", "misp", "/missing/"),
        ("taxii-html", "taxii", "/taxii/collections/c1/objects/"),
        ("taxii-bad", "taxii", "/taxii-bad/collections/c1/objects/"),
        ("good", "misp", "/good/"),
    ] {
        feeds.push_str(&format!(
            "\n[[feed]]\nname = \"{name}\"\nkind = \"{kind}\"\nurl = \"{base}{path}\"\ntlp = \"green\"\ninterval = \"1s\"\nmax_response_bytes = 4096\n"
        ));
    }
    feeds.push_str(&format!(
        "\n[[feed]]\nname = \"silent\"\nkind = \"misp\"\nurl = \"http://{silent_addr}/\"\ntlp = \"green\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
    ));
    let config = node_config(&pki, &id, &data, &feeds);
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "bad.node").await;

    let expected = [
        (
            "big",
            "is 65536 bytes, over max_response_bytes (4096); refused before reading it",
        ),
        (
            "endless",
            "passed max_response_bytes (4096) while it was read",
        ),
        ("broken", "manifest.json is not JSON"),
        ("html", "manifest.json is not JSON"),
        ("shape", "not an object of event uuids"),
        ("missing", "404"),
        ("taxii-html", "not application/taxii+json"),
        ("taxii-bad", "not a TAXII envelope"),
        ("silent", "within 1s (timeout)"),
    ];
    for (name, words) in expected {
        let status = wait_until(&format!("the error of {name}"), || {
            let client = &client;
            async move {
                let s = feed_status(client, name).await;
                (!s.last_error.is_empty()).then_some(s)
            }
        })
        .await;
        assert!(
            status.last_error.contains(words),
            "{name}: {:?} should say {words:?}",
            status.last_error
        );
        assert_eq!(status.items_ingested, 0);
    }
    // The failing feeds are tried again (with a growing delay), and the good one works.
    let good = wait_until("the good feed", || {
        let client = &client;
        async move {
            let s = feed_status(client, "good").await;
            (s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(good.last_error.is_empty(), "{good:?}");
    wait_until("a retry of a failing feed", || {
        let client = &client;
        async move { (feed_status(client, "broken").await.failures >= 2).then_some(()) }
    })
    .await;
    assert!(client.hello().await.is_ok(), "the node still answers");
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn feed_settings_are_checked_and_each_error_names_its_field() {
    let pki = Pki::new();
    let id = pki.node("cfg.node");
    let data = pki.path().join("data-cfg");
    let cases = [
        (
            "name = \"Bad Name\"\nkind = \"misp\"\nurl = \"http://127.0.0.1:1/x/\"",
            "feed[0].name",
        ),
        (
            "name = \"a\"\nkind = \"rss\"\nurl = \"http://127.0.0.1:1/x/\"",
            "feed[0].kind",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"http://feeds.example.org/x/\"",
            "feed[0].url",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"ftp://127.0.0.1/x/\"",
            "feed[0].url",
        ),
        (
            "name = \"a\"\nkind = \"taxii\"\nurl = \"https://taxii.example.org/api1/\"",
            "feed[0].url",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://u:p@feeds.example.org/x/\"",
            "feed[0].url",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\ntlp = \"purple\"",
            "feed[0].tlp",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\ninterval = \"0\"",
            "feed[0].interval",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\nmax_response_bytes = 10",
            "feed[0].max_response_bytes",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\nmax_objects_per_poll = 0",
            "feed[0].max_objects_per_poll",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\npassword_env = \"P\"",
            "feed[0].username",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\nusername = \"u\"",
            "feed[0].password_file",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"http://feeds.example.org/x/\"\nallow_http = true\nusername = \"u\"\npassword_env = \"P\"",
            "feed[0].username",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\ntags = [\"two words\"]",
            "feed[0].tags",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\nproxy = \"socks5://127.0.0.1:1080\"",
            "feed[0].proxy",
        ),
        (
            "name = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\nproxy = \"http://u:p@proxy.example:3128\"",
            "feed[0].proxy",
        ),
    ];
    for (feed, field) in cases {
        let text = format!(
            "{}\n[[feed]]\n{feed}\n",
            common::node_section(&pki, &id, &data)
        );
        let error = entente::Config::check(&text, Path::new("node.toml"), pki.path())
            .expect_err(feed)
            .to_string();
        assert!(error.contains(field), "{feed}: {error}");
    }
    // Two feeds with one name.
    let one = "[[feed]]\nname = \"a\"\nkind = \"misp\"\nurl = \"https://feeds.example.org/x/\"\n";
    let text = format!("{}\n{one}\n{one}", common::node_section(&pki, &id, &data));
    let error = entente::Config::check(&text, Path::new("node.toml"), pki.path())
        .unwrap_err()
        .to_string();
    assert!(error.contains("feed[1].name"), "{error}");
    // Plain http to a remote host with allow_http, and https with credentials, pass.
    let text = format!(
        "{}\n[[feed]]\nname = \"a\"\nkind = \"misp\"\nurl = \"http://feeds.example.org/x/\"\nallow_http = true\n[[feed]]\nname = \"b\"\nkind = \"taxii\"\nurl = \"https://taxii.example.org/api1/collections/91a7b528-80eb-42ed-a74d-c6fbd5a26116/objects/\"\nusername = \"u\"\npassword_file = \"pw\"\n",
        common::node_section(&pki, &id, &data)
    );
    let settings = entente::Config::check(&text, Path::new("node.toml"), pki.path()).unwrap();
    assert_eq!(settings.feeds.len(), 2);
    assert_eq!(settings.feeds[1].tags, vec!["source:b".to_owned()]);
}

// ---------------------------------------------------------------------------------
// TAXII 2.1 against medallion.

const COLLECTION: &str = "91a7b528-80eb-42ed-a74d-c6fbd5a26116";
const TAXII_USER: &str = "feeder";
const TAXII_PASSWORD: &str = "correct horse battery staple";
const TLP_GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";

struct Medallion {
    child: Child,
    port: u16,
}

impl Drop for Medallion {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Medallion {
    fn start(dir: &Path) -> Self {
        // A port picked by binding; medallion binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = format!("http://127.0.0.1:{port}/api1/");
        let data = serde_json::json!({
            "/discovery": {
                "title": "test TAXII server",
                "description": "medallion for the feeds test",
                "default": root,
                "api_roots": [root],
            },
            "api1": {
                "information": {
                    "title": "api1",
                    "description": "api root",
                    "versions": ["application/taxii+json;version=2.1"],
                    "max_content_length": 10_485_760,
                },
                "status": [],
                "collections": [{
                    "id": COLLECTION,
                    "title": "indicators",
                    "description": "indicators for the feeds test",
                    "can_read": true,
                    "can_write": true,
                    "media_types": ["application/stix+json;version=2.1"],
                    "objects": [],
                    "manifest": [],
                }],
            },
        });
        let data_path = dir.join("medallion-data.json");
        std::fs::write(&data_path, data.to_string()).unwrap();
        let config = serde_json::json!({
            "backend": {
                "module": "medallion.backends.memory_backend",
                "module_class": "MemoryBackend",
                "filename": data_path,
            },
            "users": { TAXII_USER: TAXII_PASSWORD },
            // Small pages, so a poll follows `next`.
            "taxii": { "max_page_size": 2 },
        });
        let config_path = dir.join("medallion.json");
        std::fs::write(&config_path, config.to_string()).unwrap();
        let child = Command::new(python())
            .args([
                "-m",
                "medallion.scripts.run",
                "--host",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run medallion (install tests/python/requirements.txt)");
        let mut medallion = Self { child, port };
        let until = Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = medallion.child.try_wait() {
                panic!(
                    "medallion exited ({status}); install the packages in tests/python/requirements.txt"
                );
            }
            if medallion
                .request("GET", "/taxii2/", None)
                .is_ok_and(|(status, _)| status == 200)
            {
                return medallion;
            }
            assert!(Instant::now() < until, "medallion did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn objects_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/api1/collections/{COLLECTION}/objects/",
            self.port
        )
    }

    /// One request with HTTP Basic credentials; the status and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{TAXII_USER}:{TAXII_PASSWORD}"));
        let body = body.unwrap_or("");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {token}\r\nAccept: application/taxii+json;version=2.1\r\nContent-Type: application/taxii+json;version=2.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    fn add(&self, objects: &[serde_json::Value]) {
        let envelope = serde_json::json!({ "objects": objects }).to_string();
        let path = format!("/api1/collections/{COLLECTION}/objects/");
        let (status, body) = self
            .request("POST", &path, Some(&envelope))
            .expect("POST objects");
        assert_eq!(status, 202, "{body}");
        assert!(
            body.contains("\"failure_count\": 0") || body.contains("\"failure_count\":0"),
            "{body}"
        );
    }
}

fn stix_indicator(n: u32, pattern: &str, green: bool) -> serde_json::Value {
    let mut object = serde_json::json!({
        "type": "indicator",
        "spec_version": "2.1",
        "id": format!("indicator--8e2e2d2b-17d4-4cbf-938f-{n:012}"),
        "created": "2026-11-01T10:00:00.000Z",
        "modified": "2026-11-01T10:00:00.000Z",
        "name": format!("indicator {n}"),
        "pattern": pattern,
        "pattern_type": "stix",
        "valid_from": "2026-11-01T10:00:00Z",
    });
    if green {
        object["object_marking_refs"] = serde_json::json!([TLP_GREEN]);
    }
    object
}

/// Starts `entente serve` on `config` and connects as the node itself; the address too.
async fn serve(pki: &Pki, id: &NodeId, config: &Path) -> (Child, NodeClient, String) {
    let config = config.to_owned();
    let (child, addr) = tokio::task::spawn_blocking(move || common::serve(&config))
        .await
        .unwrap();
    let client = own_client(pki, id, &addr).await;
    (child, client, addr)
}

/// What `entente status` prints for the node at `addr`, as its operator.
async fn status_output(config: &Path, id: &NodeId, addr: &str) -> String {
    let child = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["status", "--config"])
        .arg(config)
        .arg("--node")
        .arg(format!("{id}@{addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run entente status");
    let output = tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("entente status in time")
    .unwrap()
    .expect("entente status output");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_feed_from_medallion_resumes_from_its_checkpoint() {
    common::init_logging();
    let pki = Pki::new();
    let medallion = Medallion::start(pki.path());
    medallion.add(&[
        stix_indicator(1, "[ipv4-addr:value = '198.51.100.1']", true),
        stix_indicator(2, "[domain-name:value = 'taxii-one.example']", true),
        // No marking: the feed's default.
        stix_indicator(3, "[url:value = 'http://taxii-one.example/x']", false),
        serde_json::json!({
            "type": "identity",
            "spec_version": "2.1",
            "id": "identity--2d1c6ab3-5e4e-48ac-a32b-f0c01c2836a8",
            "created": "2026-11-01T10:00:00.000Z",
            "modified": "2026-11-01T10:00:00.000Z",
            "name": "Example CERT",
            "identity_class": "organization",
        }),
    ]);

    let id = pki.node("taxii.node");
    let data = pki.path().join("data-taxii");
    let password = pki.path().join("taxii-password");
    std::fs::write(&password, format!("{TAXII_PASSWORD}\n")).unwrap();
    let wrong = pki.path().join("taxii-wrong-password");
    std::fs::write(&wrong, "not-the-password-7f3a\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [&password, &wrong] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"taxii-test\"\nkind = \"taxii\"\nurl = \"{}\"\ntlp = \"amber\"\ninterval = \"1s\"\npage_size = 2\nmax_objects_per_poll = 2\nusername = \"{TAXII_USER}\"\npassword_file = \"{}\"\n\n[[feed]]\nname = \"taxii-wrong\"\nkind = \"taxii\"\nurl = \"{}\"\ntlp = \"amber\"\ninterval = \"1s\"\nusername = \"{TAXII_USER}\"\npassword_file = \"{}\"\n",
            medallion.objects_url(),
            password.display(),
            medallion.objects_url(),
            wrong.display()
        ),
    );
    let (node, client, addr) = serve(&pki, &id, &config).await;
    let held = wait_until("the TAXII indicators", || {
        let client = &client;
        async move {
            let held = items_tagged(client, "source:taxii-test").await;
            (held.len() >= 4).then_some(held)
        }
    })
    .await;
    // The three indicators and the identity (context, at the feed's default marking).
    assert_eq!(held.len(), 4);
    assert_eq!(
        held["identity--2d1c6ab3-5e4e-48ac-a32b-f0c01c2836a8"]
            .item
            .as_ref()
            .unwrap()
            .tlp,
        WireTlp::Amber as i32
    );
    let one = &held["indicator--8e2e2d2b-17d4-4cbf-938f-000000000001"];
    assert_eq!(
        indicator(one),
        (
            "ipv4".into(),
            "198.51.100.1".into(),
            WireTlp::Green as i32,
            vec!["source:taxii-test".into()]
        )
    );
    let three = &held["indicator--8e2e2d2b-17d4-4cbf-938f-000000000003"];
    assert_eq!(indicator(three).2, WireTlp::Amber as i32);
    // The STIX properties are kept.
    let properties = &one.item.as_ref().unwrap();
    let item::Kind::Indicator(i) = properties.kind.as_ref().unwrap() else {
        panic!()
    };
    assert!(
        i.stix_properties.contains("indicator 1"),
        "{}",
        i.stix_properties
    );
    let status = wait_until("polls after the first", || {
        let client = &client;
        async move {
            let s = feed_status(client, "taxii-test").await;
            (s.polls >= 3 && s.last_error.is_empty()).then_some(s)
        }
    })
    .await;
    // Four objects, each fetched once whatever the number of polls.
    assert_eq!(status.objects_fetched, 4, "{status:?}");
    assert_eq!(status.items_ingested, 4, "{status:?}");
    assert!(status.checkpoint.starts_with("added_after "), "{status:?}");
    // Wrong credentials: refused, said in plain words, the password not repeated.
    let refused = feed_status(&client, "taxii-wrong").await;
    assert!(refused.last_error.contains("401"), "{refused:?}");
    assert!(
        refused.last_error.contains("check username and password"),
        "{refused:?}"
    );
    assert!(
        !format!("{refused:?}").contains("not-the-password"),
        "{refused:?}"
    );
    assert_eq!(refused.items_ingested, 0);
    // The operator reads the same in `entente status`.
    let printed = status_output(&config, &id, &addr).await;
    let line = |name: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(&format!("feed {name} ")))
            .unwrap_or_else(|| panic!("no line for {name} in {printed}"))
            .to_owned()
    };
    assert!(line("taxii-test").contains("items 4 ingested"), "{printed}");
    assert!(
        line("taxii-test").contains("objects 4 fetched"),
        "{printed}"
    );
    assert!(line("taxii-wrong").contains("last error:"), "{printed}");
    assert!(line("taxii-wrong").contains("401"), "{printed}");
    assert!(!printed.contains("not-the-password"), "{printed}");

    // New objects: only they arrive.
    medallion.add(&[
        stix_indicator(4, "[ipv4-addr:value = '198.51.100.4']", true),
        stix_indicator(5, "[file:hashes.'SHA-256' = 'aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f']", true),
    ]);
    wait_until("the new indicators", || {
        let client = &client;
        async move { (items_tagged(client, "source:taxii-test").await.len() == 6).then_some(()) }
    })
    .await;
    let status = wait_until("a poll after the new ones", || {
        let client = &client;
        async move {
            let s = feed_status(client, "taxii-test").await;
            (s.items_ingested == 6).then_some(s)
        }
    })
    .await;
    assert_eq!(status.objects_fetched, 6, "{status:?}");

    // The source revokes an indicator: its new version revokes the item. The revoked
    // version says nothing of its marking and carries another label; the revocation is
    // still the item's own, with the marking and tags it was shared under, as
    // `entente revoke` would make it.
    let mut revoked = stix_indicator(2, "[domain-name:value = 'taxii-one.example']", false);
    revoked["modified"] = serde_json::json!("2026-11-02T10:00:00.000Z");
    revoked["revoked"] = serde_json::json!(true);
    revoked["labels"] = serde_json::json!(["withdrawn"]);
    medallion.add(&[revoked]);
    let revocation = wait_until("the revocation", || {
        let client = &client;
        async move {
            let held = items_tagged(client, "source:taxii-test").await;
            let two = held
                .get("indicator--8e2e2d2b-17d4-4cbf-938f-000000000002")?
                .clone();
            matches!(two.item.as_ref()?.kind.as_ref()?, item::Kind::Revocation(_)).then_some(two)
        }
    })
    .await;
    assert_eq!(revocation.item.as_ref().unwrap().tlp, WireTlp::Green as i32);
    assert_eq!(
        revocation.item.as_ref().unwrap().tags,
        vec!["source:taxii-test".to_owned()]
    );
    let item::Kind::Revocation(r) = revocation.item.as_ref().unwrap().kind.as_ref().unwrap() else {
        panic!()
    };
    assert_eq!(r.indicator_type, "domain");
    assert_eq!(
        r.indicator.as_ref().map(|i| i.value.as_str()),
        Some("taxii-one.example")
    );
    let status = wait_until("the revocation counted", || {
        let client = &client;
        async move {
            let s = feed_status(client, "taxii-test").await;
            (s.items_ingested == 7).then_some(s)
        }
    })
    .await;
    assert_eq!(status.objects_fetched, 7, "{status:?}");
    stop(node);

    // Restarted, the node resumes from its checkpoint: nothing is fetched again.
    let (node, client, _) = serve(&pki, &id, &config).await;
    let status = wait_until("polls after the restart", || {
        let client = &client;
        async move {
            let s = feed_status(client, "taxii-test").await;
            (s.polls >= 2 && s.last_success_unix_ms > 0).then_some(s)
        }
    })
    .await;
    assert_eq!(status.objects_fetched, 0, "{status:?}");
    assert_eq!(status.items_ingested, 0, "{status:?}");
    // The checkpoint it resumed from is shown, though no poll since moved it.
    assert!(status.checkpoint.starts_with("added_after "), "{status:?}");
    assert_eq!(items_tagged(&client, "source:taxii-test").await.len(), 6);
    stop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_feeds_trust_the_public_roots_and_their_ca_file_only() {
    common::init_logging();
    let pki = Pki::new();
    // The server's certificate comes from the test's own CA (its SAN is 127.0.0.1).
    let server = pki.node("files.server");
    let certs = entente::transport::files::read_certificates(&pki.certs.cert_path(server.as_str()))
        .unwrap();
    let key =
        entente::transport::files::read_private_key(&pki.certs.key_path(server.as_str())).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let files = Files::default();
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[(EVENT_3, "Public list", 1_764_000_100)])),
    );
    files.set(
        &format!("/misp/{EVENT_3}.json"),
        json(&event(
            EVENT_3,
            "Public list",
            1_764_000_100,
            &["tlp:green"],
            vec![attribute(
                30,
                "domain",
                "private.example",
                true,
                1_764_000_100,
            )],
            vec![],
        )),
    );
    let base = serve_files_with(files, Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))).await;
    assert!(base.starts_with("https://"));

    let id = pki.node("tls.node");
    let data = pki.path().join("data-tls");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"private\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\nca_file = \"{ca}\"\ninterval = \"1s\"\n\n[[feed]]\nname = \"unknown-ca\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n",
            ca = pki.ca_cert().display()
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "tls.node").await;
    let trusted = wait_until("the feed with its CA file", || {
        let client = &client;
        async move {
            let s = feed_status(client, "private").await;
            (s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(trusted.last_error.is_empty(), "{trusted:?}");
    let untrusted = wait_until("the feed without it", || {
        let client = &client;
        async move {
            let s = feed_status(client, "unknown-ca").await;
            (!s.last_error.is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        untrusted.last_error.contains("TLS") && untrusted.last_error.contains("UnknownIssuer"),
        "{untrusted:?}"
    );
    assert_eq!(untrusted.items_ingested, 0);
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// What a MISP feed withdraws, reloads, bounds and settings.

/// The kind of each item tagged `tag`, by value (a revocation by the value it revokes).
async fn kinds_by_value(client: &NodeClient, tag: &str) -> BTreeMap<String, StoredItem> {
    let mut out = BTreeMap::new();
    for stored in items_tagged(client, tag).await.into_values() {
        let item = stored.item.as_ref().unwrap();
        let value = match item.kind.as_ref().unwrap() {
            item::Kind::Indicator(i) => i.value.clone(),
            item::Kind::Revocation(r) => r
                .indicator
                .as_ref()
                .map(|i| i.value.clone())
                .unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        };
        out.insert(value, stored);
    }
    out
}

fn is_revocation(stored: &StoredItem) -> bool {
    matches!(
        stored.item.as_ref().unwrap().kind.as_ref().unwrap(),
        item::Kind::Revocation(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misp_withdrawals_revoke_what_the_node_made_of_them() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    let event_a = |ts: i64, attributes: Vec<serde_json::Value>| {
        event(
            EVENT_1,
            "Phishing wave",
            ts,
            &["tlp:green"],
            attributes,
            vec![],
        )
    };
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[
            (EVENT_1, "Phishing wave", t1),
            (EVENT_2, "Scanner", t1),
        ])),
    );
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        json(&event_a(
            t1,
            vec![
                attribute(1, "ip-dst", "198.51.100.1", true, t1),
                attribute(2, "ip-dst", "198.51.100.2", true, t1),
                attribute(3, "ip-dst", "198.51.100.3", true, t1),
                attribute(4, "ip-dst", "198.51.100.4", true, t1),
            ],
        )),
    );
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        json(&event(
            EVENT_2,
            "Scanner",
            t1,
            &["tlp:amber"],
            vec![attribute(20, "domain", "scanner.example", true, t1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let id = pki.node("withdraw.node");
    let data = pki.path().join("data-withdraw");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"misp-w\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ntags = [\"osint\"]\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "withdraw.node").await;
    wait_until("the five indicators", || {
        let client = &client;
        async move { (items_tagged(client, "source:misp-w").await.len() == 5).then_some(()) }
    })
    .await;

    // Event 1 changes: one attribute is deleted, one is no longer for detection, one is
    // gone from the file; event 2 leaves the manifest.
    let t2 = t1 + 100;
    let mut deleted = attribute(1, "ip-dst", "198.51.100.1", true, t2);
    deleted["deleted"] = serde_json::json!(true);
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        json(&event_a(
            t2,
            vec![
                deleted,
                attribute(2, "ip-dst", "198.51.100.2", false, t2),
                attribute(4, "ip-dst", "198.51.100.4", true, t1),
            ],
        )),
    );
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[(EVENT_1, "Phishing wave", t2)])),
    );
    let held = wait_until("the revocations", || {
        let client = &client;
        async move {
            let held = kinds_by_value(client, "source:misp-w").await;
            (held.values().filter(|s| is_revocation(s)).count() == 4).then_some(held)
        }
    })
    .await;
    assert_eq!(held.len(), 5, "{held:#?}");
    assert!(!is_revocation(&held["198.51.100.4"]), "still listed");
    for (value, tlp) in [
        ("198.51.100.1", WireTlp::Green),
        ("198.51.100.2", WireTlp::Green),
        ("198.51.100.3", WireTlp::Green),
        ("scanner.example", WireTlp::Amber),
    ] {
        let item = held[value].item.as_ref().unwrap();
        assert!(is_revocation(&held[value]), "{value}");
        // As `entente revoke` makes it: the marking and tags it was shared under.
        assert_eq!(item.tlp, tlp as i32, "{value}");
        assert_eq!(
            item.tags,
            vec!["source:misp-w".to_owned(), "osint".to_owned()],
            "{value}"
        );
    }
    // The checkpoint keeps only what the manifest lists.
    wait_until("the checkpoint without event 2", || {
        let client = &client;
        async move {
            let s = feed_status(client, "misp-w").await;
            s.checkpoint.starts_with("1 events held").then_some(())
        }
    })
    .await;

    // A manifest that suddenly lists nothing revokes nothing: more likely a fault.
    files.set("/misp/manifest.json", json(&serde_json::json!({})));
    let status = wait_until("the empty manifest refused", || {
        let client = &client;
        async move {
            let s = feed_status(client, "misp-w").await;
            s.last_error.contains("lists no event").then_some(s)
        }
    })
    .await;
    assert!(status.last_error.contains("kept"), "{status:?}");
    assert!(!is_revocation(
        &kinds_by_value(&client, "source:misp-w").await["198.51.100.4"]
    ));
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_starts_added_feeds_and_stops_removed_ones() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    for (n, dir, event_uuid, domain) in [
        (1, "one", EVENT_1, "one.example"),
        (2, "two", EVENT_2, "two.example"),
        (3, "three", EVENT_3, "three.example"),
    ] {
        files.set(
            &format!("/{dir}/manifest.json"),
            json(&manifest(&[(event_uuid, "list", t1)])),
        );
        files.set(
            &format!("/{dir}/{event_uuid}.json"),
            json(&event(
                event_uuid,
                "list",
                t1,
                &["tlp:green"],
                vec![attribute(n, "domain", domain, true, t1)],
                vec![],
            )),
        );
    }
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let id = pki.node("reload.node");
    let data = pki.path().join("data-reload");
    let feed = |name: &str, dir: &str| {
        format!(
            "\n[[feed]]\nname = \"{name}\"\nkind = \"misp\"\nurl = \"{base}/{dir}/\"\ninterval = \"1s\"\n"
        )
    };
    let config = node_config(&pki, &id, &data, &feed("first", "one"));
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "reload.node").await;
    wait_until("the first feed", || {
        let client = &client;
        async move { (feed_status(client, "first").await.items_ingested == 1).then_some(()) }
    })
    .await;

    // The first feed is removed and a second added, without a restart.
    std::fs::write(
        &config,
        format!(
            "{}{}",
            common::node_section(&pki, &id, &data),
            feed("second", "two")
        ),
    )
    .unwrap();
    node.reload_policy().expect("reload");
    wait_until("the second feed", || {
        let client = &client;
        async move { (feed_status(client, "second").await.items_ingested == 1).then_some(()) }
    })
    .await;
    let feeds = client.feeds().await.unwrap().feeds;
    assert_eq!(
        feeds.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["second"],
        "a removed feed leaves the status"
    );
    // The removed feed polls no more: while the second polls three times more, the first
    // is asked nothing (one poll may have been under way at the reload).
    let first_polls = files.requests("/one/manifest.json");
    let second_polls = files.requests("/two/manifest.json");
    wait_until("three more polls of the second feed", || {
        let files = &files;
        async move { (files.requests("/two/manifest.json") >= second_polls + 3).then_some(()) }
    })
    .await;
    assert!(
        files.requests("/one/manifest.json") <= first_polls + 1,
        "the removed feed still polls"
    );

    // A changed feed runs with its new settings: the second now points elsewhere.
    std::fs::write(
        &config,
        format!(
            "{}{}",
            common::node_section(&pki, &id, &data),
            feed("second", "three")
        ),
    )
    .unwrap();
    node.reload_policy().expect("reload");
    // Its checkpoint is its name's: the event the old URL gave is not in the new
    // manifest, so its item is revoked, and the new event's item is published.
    let held = wait_until("the changed feed", || {
        let client = &client;
        async move {
            let held = kinds_by_value(client, "source:second").await;
            (held.len() == 2 && is_revocation(&held["two.example"])).then_some(held)
        }
    })
    .await;
    assert!(!is_revocation(&held["three.example"]), "{held:#?}");
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_event_of_tiny_values_is_refused_before_it_is_built() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[
            (EVENT_1, "many", t1),
            (EVENT_2, "fine", t1 + 1),
        ])),
    );
    // Three megabytes of empty lists: a million values and more, far within
    // max_response_bytes, and well over a hundred megabytes once built.
    let mut body = format!(
        "{{\"Event\": {{\"uuid\": \"{EVENT_1}\", \"timestamp\": \"{t1}\", \"Attribute\": ["
    );
    body.push_str(&"[],".repeat(1_000_001));
    body.push_str("[]]}}");
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        Reply {
            content_type: "application/json",
            body: body.into_bytes(),
            content_length: true,
        },
    );
    files.set(
        &format!("/misp/{EVENT_2}.json"),
        json(&event(
            EVENT_2,
            "fine",
            t1 + 1,
            &["tlp:green"],
            vec![attribute(20, "domain", "fine.example", true, t1 + 1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let id = pki.node("values.node");
    let data = pki.path().join("data-values");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"many\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "values.node").await;
    let status = wait_until("the refusal", || {
        let client = &client;
        async move {
            let s = feed_status(client, "many").await;
            (!s.last_error.is_empty() && s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(
        status
            .last_error
            .contains("more JSON values than this node reads"),
        "{status:?}"
    );
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_env_is_read_and_max_events_per_poll_paces_the_events() {
    common::init_logging();
    let files = Files::default();
    let variable = format!("ENTENTE_TEST_FEED_PASSWORD_{}", std::process::id());
    let password = "s3cret pass-phrase";
    // SAFETY: set once, before the node (the only reader) starts; no other test in this
    // binary reads or writes this variable.
    unsafe { std::env::set_var(&variable, password) };
    *files.authorization.lock().unwrap() = Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("reader:{password}"))
    ));
    let events = [(EVENT_1, 100), (EVENT_2, 300), (EVENT_3, 200)];
    let listed: Vec<(&str, &str, i64)> = events
        .iter()
        .map(|(uuid, offset)| (*uuid, "list", 1_764_000_000 + offset))
        .collect();
    files.set("/misp/manifest.json", json(&manifest(&listed)));
    for (n, (uuid, offset)) in events.iter().enumerate() {
        let ts = 1_764_000_000 + offset;
        files.set(
            &format!("/misp/{uuid}.json"),
            json(&event(
                uuid,
                "list",
                ts,
                &["tlp:green"],
                vec![attribute(
                    n as u32,
                    "domain",
                    &format!("event{n}.example"),
                    true,
                    ts,
                )],
                vec![],
            )),
        );
    }
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let id = pki.node("paced.node");
    let data = pki.path().join("data-paced");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"paced\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\nmax_events_per_poll = 1\nusername = \"reader\"\npassword_env = \"{variable}\"\n\n[[feed]]\nname = \"unset\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\nusername = \"reader\"\npassword_env = \"{variable}_UNSET\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "paced.node").await;
    // One event per poll, oldest first: after the first poll, only event 1.
    let first = wait_until("the first poll", || {
        let client = &client;
        async move {
            let s = feed_status(client, "paced").await;
            (s.polls >= 1).then_some(s)
        }
    })
    .await;
    assert!(first.last_error.is_empty(), "{first:?}");
    if first.polls == 1 {
        assert_eq!(first.items_ingested, 1, "{first:?}");
        assert_eq!(files.requests(&format!("/misp/{EVENT_1}.json")), 1);
        assert_eq!(files.requests(&format!("/misp/{EVENT_2}.json")), 0);
    }
    // Then the others, one at a time, each fetched once, in timestamp order.
    let status = wait_until("every event", || {
        let client = &client;
        async move {
            let s = feed_status(client, "paced").await;
            (s.items_ingested == 3).then_some(s)
        }
    })
    .await;
    assert!(status.polls >= 3, "one event per poll: {status:?}");
    for uuid in [EVENT_1, EVENT_2, EVENT_3] {
        assert_eq!(files.requests(&format!("/misp/{uuid}.json")), 1, "{uuid}");
    }
    // The credentials came from the environment.
    assert_eq!(
        files.authorizations.lock().unwrap()[&format!("/misp/{EVENT_2}.json")],
        files.authorization.lock().unwrap().clone().unwrap()
    );
    // A variable that is not set: said in plain words, nothing fetched.
    let unset = wait_until("the unset variable", || {
        let client = &client;
        async move {
            let s = feed_status(client, "unset").await;
            (!s.last_error.is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        unset.last_error.contains("password_env")
            && unset.last_error.contains(&format!("{variable}_UNSET"))
            && unset.last_error.contains("not set"),
        "{unset:?}"
    );
    assert!(!format!("{unset:?}").contains(password));
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_within_their_scheme_and_a_bound() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[(EVENT_3, "list", t1)])),
    );
    files.set(
        &format!("/misp/{EVENT_3}.json"),
        json(&event(
            EVENT_3,
            "list",
            t1,
            &["tlp:green"],
            vec![attribute(30, "domain", "moved.example", true, t1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    // Moved: an absolute path, then a relative one.
    files.redirect("/moved/manifest.json", "/misp/manifest.json");
    files.redirect(
        &format!("/moved/{EVENT_3}.json"),
        &format!("{EVENT_3}.json.current"),
    );
    files.set(
        &format!("/moved/{EVENT_3}.json.current"),
        json(&event(
            EVENT_3,
            "list",
            t1,
            &["tlp:green"],
            vec![attribute(30, "domain", "moved.example", true, t1)],
            vec![],
        )),
    );
    // To https: refused.
    let https = base.replace("http://", "https://");
    files.redirect(
        "/secure/manifest.json",
        &format!("{https}/misp/manifest.json"),
    );
    // To another port over plain http: refused.
    files.redirect(
        "/away/manifest.json",
        "http://127.0.0.1:9/misp/manifest.json",
    );
    // A loop.
    files.redirect("/loop/manifest.json", "/loop/manifest.json");
    let pki = Pki::new();
    let id = pki.node("redirect.node");
    let data = pki.path().join("data-redirect");
    let mut feeds = String::new();
    for name in ["moved", "secure", "away", "loop"] {
        feeds.push_str(&format!(
            "\n[[feed]]\nname = \"{name}\"\nkind = \"misp\"\nurl = \"{base}/{name}/\"\ninterval = \"1s\"\n"
        ));
    }
    let config = node_config(&pki, &id, &data, &feeds);
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "redirect.node").await;
    let moved = wait_until("the moved feed", || {
        let client = &client;
        async move {
            let s = feed_status(client, "moved").await;
            (s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(moved.last_error.is_empty(), "{moved:?}");
    for (name, words) in [
        ("secure", "another scheme"),
        ("away", "only redirects to the same host and port"),
        ("loop", "redirects more than 5 times"),
    ] {
        let status = wait_until(&format!("the error of {name}"), || {
            let client = &client;
            async move {
                let s = feed_status(client, name).await;
                (!s.last_error.is_empty()).then_some(s)
            }
        })
        .await;
        assert!(status.last_error.contains(words), "{name}: {status:?}");
        assert_eq!(status.items_ingested, 0);
    }
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A CONNECT proxy on a loopback port: tunnels to what it is asked for, and records the
/// targets and the first line each tunnel was asked with.
async fn connect_proxy() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                record.lock().unwrap().push(head.clone());
                let mut words = head.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_with_a_proxy_reaches_its_source_only_through_it() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    files.set(
        "/misp/manifest.json",
        json(&manifest(&[(EVENT_3, "list", t1)])),
    );
    files.set(
        &format!("/misp/{EVENT_3}.json"),
        json(&event(
            EVENT_3,
            "list",
            t1,
            &["tlp:green"],
            vec![attribute(30, "domain", "proxied.example", true, t1)],
            vec![],
        )),
    );
    let base = serve_files(files.clone()).await;
    let (proxy, seen) = connect_proxy().await;
    // A proxy that answers nothing useful.
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing_addr = refusing.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = refusing.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let pki = Pki::new();
    let id = pki.node("proxy.node");
    let data = pki.path().join("data-proxy");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"proxied\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\nproxy = \"http://{proxy}\"\n\n[[feed]]\nname = \"refused\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\nproxy = \"http://{refusing_addr}\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "proxy.node").await;
    let status = wait_until("the feed through the proxy", || {
        let client = &client;
        async move {
            let s = feed_status(client, "proxied").await;
            (s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(status.last_error.is_empty(), "{status:?}");
    let target = base.trim_start_matches("http://").to_owned();
    let asked = seen.lock().unwrap().clone();
    assert!(asked.len() >= 2, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|head| head.starts_with(&format!("CONNECT {target} HTTP/1.1\r\n"))),
        "{asked:?}"
    );
    let refused = wait_until("the refusing proxy", || {
        let client = &client;
        async move {
            let s = feed_status(client, "refused").await;
            (!s.last_error.is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        refused
            .last_error
            .contains(&format!("proxy {refusing_addr}"))
            && refused.last_error.contains("403"),
        "{refused:?}"
    );
    assert_eq!(refused.items_ingested, 0);
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Feed servers often answer gzip-encoded. The node asks for it, reads it, and holds a
/// compressed answer to `max_response_bytes` decompressed as well: a small answer that
/// expands past it is refused as it expands, while the feed's other events go on. An
/// encoding the node did not ask for is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_answers_are_read_within_the_same_bounds() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    let zipped = |path: &str, body: Vec<u8>| {
        files.set(
            path,
            Reply {
                content_type: "application/json",
                body: gzip(&body),
                content_length: true,
            },
        );
        files
            .encodings
            .lock()
            .unwrap()
            .insert(path.to_owned(), "gzip");
    };
    zipped(
        "/misp/manifest.json",
        manifest(&[(EVENT_1, "bomb", t1), (EVENT_2, "fine", t1 + 1)])
            .to_string()
            .into_bytes(),
    );
    // 64 MiB of spaces inside valid JSON: about 64 KiB compressed, far within
    // max_response_bytes on the wire, far over it decompressed.
    let mut bomb = format!("{{\"Event\": {{\"uuid\": \"{EVENT_1}\", \"info\": \"").into_bytes();
    bomb.extend(std::iter::repeat_n(b' ', 64 << 20));
    bomb.extend_from_slice(b"\"}}");
    zipped(&format!("/misp/{EVENT_1}.json"), bomb);
    zipped(
        &format!("/misp/{EVENT_2}.json"),
        event(
            EVENT_2,
            "fine",
            t1 + 1,
            &["tlp:green"],
            vec![attribute(20, "domain", "zipped.example", true, t1 + 1)],
            vec![],
        )
        .to_string()
        .into_bytes(),
    );
    files.set("/other/manifest.json", json(&manifest(&[])));
    files
        .encodings
        .lock()
        .unwrap()
        .insert("/other/manifest.json".into(), "br");
    let base = serve_files(files.clone()).await;
    let pki = Pki::new();
    let id = pki.node("zipped.node");
    let data = pki.path().join("data-zipped");
    let config = node_config(
        &pki,
        &id,
        &data,
        &format!(
            "\n[[feed]]\nname = \"zipped\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\nmax_response_bytes = 1048576\n\n[[feed]]\nname = \"brotli\"\nkind = \"misp\"\nurl = \"{base}/other/\"\ninterval = \"1s\"\n"
        ),
    );
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "zipped.node").await;
    let status = wait_until("the zipped event and the refused bomb", || {
        let client = &client;
        async move {
            let s = feed_status(client, "zipped").await;
            (!s.last_error.is_empty() && s.items_ingested == 1).then_some(s)
        }
    })
    .await;
    assert!(
        status.last_error.contains("once decompressed"),
        "{status:?}"
    );
    let held = items_tagged(&client, "source:zipped").await;
    let values: Vec<String> = held.values().map(|s| indicator(s).1).collect();
    assert_eq!(values, ["zipped.example"]);
    let other = wait_until("the refused encoding", || {
        let client = &client;
        async move {
            let s = feed_status(client, "brotli").await;
            (!s.last_error.is_empty()).then_some(s)
        }
    })
    .await;
    assert!(
        other.last_error.contains("Content-Encoding \"br\""),
        "{other:?}"
    );
    assert_eq!(
        files
            .accepted_encodings
            .lock()
            .unwrap()
            .get("/misp/manifest.json")
            .map(String::as_str),
        Some("gzip")
    );
    node.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// What a node takes from a feed, it did not write: partner nodes get it as they get
/// what another node sent (rule 3), so its AMBER and above stays with this node and its
/// clients, unless the feed's configuration says `share_with_peers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feeds_amber_items_stay_with_the_node_unless_the_feed_may_be_shared() {
    common::init_logging();
    let files = Files::default();
    let t1 = 1_764_000_100;
    for (feed, tail) in [("vendor", 40), ("licensed", 50)] {
        files.set(
            &format!("/{feed}/manifest.json"),
            json(&manifest(&[(EVENT_1, "Amber", t1), (EVENT_2, "Green", t1)])),
        );
        files.set(
            &format!("/{feed}/{EVENT_1}.json"),
            json(&event(
                EVENT_1,
                "Amber",
                t1,
                &["tlp:amber"],
                vec![attribute(
                    tail,
                    "domain",
                    &format!("amber.{feed}.example"),
                    true,
                    t1,
                )],
                vec![],
            )),
        );
        files.set(
            &format!("/{feed}/{EVENT_2}.json"),
            json(&event(
                EVENT_2,
                "Green",
                t1,
                &["tlp:green"],
                vec![attribute(
                    tail + 1,
                    "domain",
                    &format!("green.{feed}.example"),
                    true,
                    t1,
                )],
                vec![],
            )),
        );
    }
    let base = serve_files(files.clone()).await;

    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let open = "max_tlp = \"AMBER\"\nallow_types = [\"*\"]\nforward_third_party = true";
    let hq_config = node_config(
        &pki,
        &hq,
        &pki.path().join("data-hq"),
        &format!(
            "\n[[peer]]\nid = \"berlin.office\"\naddress = \"127.0.0.1:1\"\nrole = \"peer\"\n{open}\n\
             \n[[feed]]\nname = \"vendor\"\nkind = \"misp\"\nurl = \"{base}/vendor/\"\ninterval = \"1s\"\n\
             \n[[feed]]\nname = \"licensed\"\nkind = \"misp\"\nurl = \"{base}/licensed/\"\ninterval = \"1s\"\nshare_with_peers = true\n"
        ),
    );
    let hq_node = common::start(&hq_config).await;
    let hq_client = common::connect(&pki, &hq_node, "redmond.hq").await;
    let berlin_config = node_config(
        &pki,
        &berlin,
        &pki.path().join("data-berlin"),
        &format!(
            "\n[[peer]]\nid = \"redmond.hq\"\naddress = \"{}\"\nrole = \"peer\"\n{open}\n",
            hq_node.local_addr()
        ),
    );
    let berlin_node = common::start(&berlin_config).await;
    let berlin_client = common::connect(&pki, &berlin_node, "berlin.office").await;

    // The node holds all four; berlin gets both of the shared feed and the GREEN one of
    // the other.
    let values = |held: BTreeMap<String, StoredItem>| -> Vec<String> {
        let mut values: Vec<String> = held.values().map(|s| indicator(s).1).collect();
        values.sort();
        values
    };
    for feed in ["vendor", "licensed"] {
        let tag = format!("source:{feed}");
        wait_until("the feed's items at the node", || {
            let client = &hq_client;
            let tag = tag.clone();
            async move { (items_tagged(client, &tag).await.len() == 2).then_some(()) }
        })
        .await;
    }
    let at_berlin = wait_until("the shared items at berlin", || {
        let client = &berlin_client;
        async move {
            let mut held = items_tagged(client, "source:licensed").await;
            held.extend(items_tagged(client, "source:vendor").await);
            let values = values(held);
            (values.len() >= 3).then_some(values)
        }
    })
    .await;
    // The pull that brought the last of them judged the vendor's AMBER one too: wait
    // until berlin has caught up with the node, then look again.
    wait_until("berlin caught up with the node", || {
        let client = &berlin_client;
        async move {
            let links = client.links().await.ok()?.links;
            links.iter().all(|link| link.caught_up).then_some(())
        }
    })
    .await;
    let mut held = items_tagged(&berlin_client, "source:licensed").await;
    held.extend(items_tagged(&berlin_client, "source:vendor").await);
    assert_eq!(
        values(held),
        [
            "amber.licensed.example",
            "green.licensed.example",
            "green.vendor.example"
        ],
        "first seen: {at_berlin:?}"
    );
    // A correction of the vendor's AMBER item written at the node stays the vendor's:
    // without the feed's source tag it is refused, with it it is written.
    let vendor = items_tagged(&hq_client, "source:vendor").await;
    let (amber_id, _) = vendor
        .iter()
        .find(|(_, stored)| indicator(stored).1 == "amber.vendor.example")
        .unwrap();
    let correction = |tags: Vec<String>| entente::rpc::proto::PublishRequest {
        items: vec![entente::wire::Item {
            id: amber_id.clone(),
            modified_unix_ms: 0,
            tlp: WireTlp::Amber as i32,
            tags,
            kind: Some(item::Kind::Indicator(entente::wire::Indicator {
                indicator_type: "domain".into(),
                value: "amber.vendor.example".into(),
                description: "confirmed".into(),
                ..Default::default()
            })),
        }],
        distribution: None,
        groups: vec![],
    };
    let refused = hq_client
        .publish(tokio_stream::iter(vec![correction(vec![])]))
        .await;
    assert!(
        format!("{refused:?}").contains("was taken from a feed"),
        "{refused:?}"
    );
    hq_client
        .publish(tokio_stream::iter(vec![correction(vec![
            "source:vendor".into(),
        ])]))
        .await
        .unwrap();
    berlin_node.shutdown(DEADLINE).await.unwrap();
    hq_node.shutdown(DEADLINE).await.unwrap();
}
