//! Review of the notes of indicators dropped as expired kept beside the log, distributions
//! kept by writers that name no recipients, CRLs handed over, TAXII statuses, paging and
//! the TAXII listener's connections without a certificate.
//!
//! - `dropped.notes` is appended to at each compaction. An append cut short (a crash, or
//!   a full disk, which is when an operator compacts) left part of a record at the end;
//!   the next compaction appended after it, and reading stopped at the cut record, so
//!   every note appended since was lost to `entente store recover`: an indicator its
//!   origin retired by letting it expire came back when a partner offered it.
//! - A MISP feed publishes again, dated after the revocation, an indicator held revoked
//!   whose attribute an event gives that the feed's checkpoint does not hold it for (an
//!   event listed again after it left the manifest). A checkpoint lost with the metadata
//!   (`entente store recover`) holds nothing: every event was taken for listed again,
//!   and every indicator the operator had revoked with `entente revoke` whose attribute
//!   the feed still lists, unchanged, was live again and offered to the partners.
//! - A TAXII connection authenticated by Basic credentials now holds a place under
//!   `limits.connections_per_partner`, but was never closed for idleness as a
//!   certificate connection is (`limits.idle_connection_timeout`): connections a client
//!   left open (a pool, a NAT that forgot them) kept it out for up to five minutes.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use entente::client::NodeClient;
use entente::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::Pki;
use common::feeds::{feed_status, items_tagged, wait_within};

use common::signed::{bundle, fixture, indicator};
use entente::engine::now_ms;
use entente::model::{IndicatorType, ItemId, ItemKind, Tlp};
use entente::store::compact::Compaction;
use entente::store::prelude::*;
use entente::store::{SledStore, Source};

const DAY: i64 = 24 * 3600 * 1000;

/// An indicator of `f.hq`'s, held from `berlin` first in a version that never expires,
/// then retired by a version that expired 40 days ago: a compaction drops it. Returns the
/// bundle of the first version (what a partner could offer again).
fn retire(
    f: &common::signed::Fixture,
    store: &SledStore,
    from: &Source,
    value: &str,
) -> (ItemId, entente::crypto::VerifiedBundle) {
    let id = ItemId::new_random();
    let now = now_ms();
    let first = indicator(
        &id,
        IndicatorType::Domain,
        value,
        now - 60 * DAY,
        Tlp::Green,
        &[],
    );
    let mut retired = first.clone();
    retired.modified_ms = now - 40 * DAY;
    if let ItemKind::Indicator(i) = &mut retired.kind {
        i.valid_until_ms = Some(now - 40 * DAY);
    }
    let old = bundle(f, &f.hq, &[first]);
    store.accept(&old, from, now).unwrap();
    store
        .accept(&bundle(f, &f.hq, &[retired]), from, now)
        .unwrap();
    store.flush().unwrap();
    (id, old)
}

/// An append to `dropped.notes` cut short (a crash, or a disk that filled while the
/// compaction wrote it) must not make the notes of later compactions unreadable.
#[test]
fn a_cut_append_to_the_dropped_notes_does_not_lose_later_notes() {
    let f = fixture();
    let dir = f.pki.path().join("cut-notes");
    let open = || common::open_store(&dir, &f.hq.id, 16 << 20).unwrap();
    let from_berlin = Source {
        received_from: f.berlin.id.clone(),
        hops: 1,
    };
    let store = open();
    let (first_id, first_old) = retire(&f, &store, &from_berlin, "first-retired.example");
    assert_eq!(
        store
            .compact(Compaction::default())
            .unwrap()
            .expired_dropped,
        1
    );
    // The start of a record, cut off where a crash or a full disk stopped the write.
    let notes = dir.join(entente::store::dropped::FILE);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&notes)
        .unwrap();
    file.write_all(&[0, 40, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let (second_id, second_old) = retire(&f, &store, &from_berlin, "second-retired.example");
    assert_eq!(
        store
            .compact(Compaction::default())
            .unwrap()
            .expired_dropped,
        1
    );
    drop(store);

    common::remove_sled(&dir);
    let recovery = entente::store::recover::recover(&dir, &f.hq.id, 16 << 20, false).unwrap();
    let store = open();
    for (id, old) in [(&first_id, &first_old), (&second_id, &second_old)] {
        let report = store.accept(old, &from_berlin, now_ms()).unwrap();
        assert!(
            report.stored.is_empty() && report.feed_seq.is_none(),
            "a version its origin retired was taken again after a recovery ({} notes read back, problem: {:?}): {report:?}",
            recovery.dropped_notes,
            recovery.notes_problem
        );
        assert!(store.get(id).unwrap().is_none());
    }
}

// ---------------------------------------------------------------------------------
// A MISP feed served from loopback, as the test sets its files.

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

const EVENT_1: &str = "5d1c0a3e-1111-4e11-8a11-000000000001";

#[derive(Clone, Default)]
struct MispFiles {
    files: Arc<Mutex<BTreeMap<String, serde_json::Value>>>,
}

impl MispFiles {
    fn set(&self, path: &str, body: serde_json::Value) {
        self.files.lock().unwrap().insert(path.to_owned(), body);
    }

    /// Serves the files on a loopback port, one answer per connection; returns
    /// `http://127.0.0.1:PORT`.
    async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = self.files.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let files = files.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/");
                    let path = target.split('?').next().unwrap_or("/").to_owned();
                    let body = files.lock().unwrap().get(&path).cloned();
                    let (status, body) = match body {
                        Some(body) => (200, body.to_string().into_bytes()),
                        None => (404, Vec::new()),
                    };
                    let mut bytes = format!(
                        "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    bytes.extend_from_slice(&body);
                    let _ = stream.write_all(&bytes).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        format!("http://{addr}")
    }
}

fn attribute(uuid_tail: u32, value: &str, ts: i64) -> serde_json::Value {
    serde_json::json!({
        "uuid": format!("6e2d1b4f-0000-4000-8000-{uuid_tail:012}"),
        "type": "ip-dst",
        "category": "Network activity",
        "value": value,
        "to_ids": true,
        "timestamp": ts.to_string(),
        "comment": "",
    })
}

fn event(uuid: &str, ts: i64, attributes: Vec<serde_json::Value>) -> serde_json::Value {
    serde_json::json!({
        "Event": {
            "uuid": uuid,
            "info": "an event",
            "timestamp": ts.to_string(),
            "date": "2026-12-01",
            "Tag": [{"name": "tlp:green"}],
            "Attribute": attributes,
            "Object": [],
        }
    })
}

fn manifest(events: &[(&str, i64)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (uuid, ts) in events {
        map.insert(
            (*uuid).to_owned(),
            serde_json::json!({"info": "an event", "timestamp": ts.to_string()}),
        );
    }
    serde_json::Value::Object(map)
}

/// The items tagged `tag` by value (a revocation by the value it revokes), with their
/// id and whether each is a revocation.
async fn by_value(client: &NodeClient, tag: &str) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    for stored in items_tagged(client, tag).await.into_values() {
        let item = stored.item.as_ref().unwrap();
        let (value, revoked) = match item.kind.as_ref().unwrap() {
            wire::item::Kind::Indicator(i) => (i.value.clone(), false),
            wire::item::Kind::Revocation(r) => (
                r.indicator
                    .as_ref()
                    .map(|i| i.value.clone())
                    .unwrap_or_default(),
                true,
            ),
            other => panic!("unexpected {other:?}"),
        };
        out.insert(value, (item.id.clone(), revoked));
    }
    out
}

/// Waits until the feed has ended `n` more polls than `from`.
async fn wait_polls(client: &NodeClient, feed: &str, from: u64, n: u64) {
    wait_within("more polls", DEADLINE, || async move {
        (feed_status(client, feed).await.polls >= from + n).then_some(())
    })
    .await;
}

/// What `entente revoke ID --reason TEXT` publishes.
fn revocation(id: &str, reason: &str) -> entente::rpc::proto::PublishRequest {
    entente::rpc::proto::PublishRequest {
        items: vec![wire::Item {
            id: id.to_owned(),
            modified_unix_ms: 0,
            tlp: wire::Tlp::Unspecified as i32,
            tags: Vec::new(),
            kind: Some(wire::item::Kind::Revocation(wire::Revocation {
                reason: reason.to_owned(),
                indicator_type: String::new(),
                indicator: None,
            })),
        }],
        distribution: Some(wire::Distribution::default()),
        groups: Vec::new(),
    }
}

/// The operator revokes an indicator a MISP feed made, whose event the source still
/// lists, unchanged. The store's metadata is lost and `entente store recover` rebuilds
/// it from the log: the feed's checkpoint is gone with it. The feed then reads every
/// event as new; the revoked indicator must not be published again as live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revocation_is_not_undone_by_a_feed_after_a_store_recovery() {
    common::init_logging();
    let t1 = 1_764_000_100;
    let files = MispFiles::default();
    files.set("/misp/manifest.json", manifest(&[(EVENT_1, t1)]));
    files.set(
        &format!("/misp/{EVENT_1}.json"),
        event(
            EVENT_1,
            t1,
            vec![
                attribute(1, "198.51.100.21", t1),
                attribute(2, "198.51.100.22", t1),
            ],
        ),
    );
    let base = files.serve().await;
    let pki = Pki::new();
    let id = pki.node("recovered.node");
    let data = pki.path().join("data-recovered");
    let config = pki.path().join("recovered.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[feed]]\nname = \"m-rec\"\nkind = \"misp\"\nurl = \"{base}/misp/\"\ninterval = \"1s\"\n",
            common::node_section(&pki, &id, &data)
        ),
    )
    .unwrap();
    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "recovered.node").await;
    let held = wait_within("the two indicators", DEADLINE, || {
        let client = &client;
        async move {
            let held = by_value(client, "source:m-rec").await;
            (held.len() == 2).then_some(held)
        }
    })
    .await;
    // The operator revokes one of them (`entente revoke`).
    let (revoked_id, _) = held["198.51.100.21"].clone();
    let response = client
        .publish(tokio_stream::iter([revocation(
            &revoked_id,
            "a sinkhole, not the actor's",
        )]))
        .await
        .unwrap();
    assert_eq!(response.items_accepted, 1, "{response:?}");
    let polls = feed_status(&client, "m-rec").await.polls;
    wait_polls(&client, "m-rec", polls, 2).await;
    assert!(
        by_value(&client, "source:m-rec").await["198.51.100.21"].1,
        "the operator's revocation was undone while the event stayed listed"
    );
    drop(client);
    node.shutdown(Duration::from_secs(10)).await.unwrap();

    // The metadata is lost; `entente store recover` rebuilds it from the log.
    common::remove_sled(&data);
    entente::store::recover::recover(&data, &id, 16 << 20, false).unwrap();

    let node = common::start(&config).await;
    let client = common::connect(&pki, &node, "recovered.node").await;
    wait_polls(&client, "m-rec", 0, 2).await;
    let held = by_value(&client, "source:m-rec").await;
    assert_eq!(
        held.get("198.51.100.21").map(|(_, revoked)| *revoked),
        Some(true),
        "the indicator the operator revoked is live again after a recovery: {held:?}"
    );
    assert_eq!(
        held.get("198.51.100.22").map(|(_, revoked)| *revoked),
        Some(false)
    );
    drop(client);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

// ---------------------------------------------------------------------------------
// The TAXII listener's Basic connections.

const TAXII: &str = "application/taxii+json;version=2.1";
const SIEM_PASSWORD: &str = "siem basic password 2";

/// A TLS connection without a client certificate to the TAXII listener at `addr`.
async fn open_anonymous(
    pki: &Pki,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in entente::transport::files::read_certificates(&pki.ca_cert()).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(entente::transport::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

/// `GET /taxii2/` with Basic credentials on a kept connection: the answer's status,
/// `None` when the connection ends without one.
async fn basic_get(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: std::net::SocketAddr,
    authorization: &str,
) -> Option<u16> {
    let head = format!(
        "GET /taxii2/ HTTP/1.1\r\nHost: {addr}\r\nAccept: {TAXII}\r\nAuthorization: {authorization}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.flush().await.ok()?;
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if read.len() >= at + 4 + length {
                return head.split(' ').nth(1).and_then(|s| s.parse().ok());
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => read.extend_from_slice(&chunk[..n]),
            Ok(_) => return None,
            Err(_) => panic!("no answer, and the connection is not closed, within 20 s"),
        }
    }
}

/// A Basic client whose connection sits idle past `limits.idle_connection_timeout` gets
/// its place under `limits.connections_per_partner` back, as a certificate holder does:
/// the idle connection is closed, and a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_basic_connection_gives_back_its_place_under_connections_per_partner() {
    use base64::Engine as _;
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("siem.soc");
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(&format!(
        "\n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"CLEAR\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n\
         \n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{}\"\n\
         \n[limits]\nconnections_per_partner = 1\nidle_connection_timeout = \"1s\"\n",
        common::hash_password(SIEM_PASSWORD)
    ));
    let config = pki.path().join("redmond.hq.toml");
    std::fs::write(&config, text).unwrap();
    let node = common::serve_taxii(&config);
    let siem = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("siem.soc:{SIEM_PASSWORD}"))
    );

    let mut first = open_anonymous(&pki, node.taxii).await;
    assert_eq!(basic_get(&mut first, node.taxii, &siem).await, Some(200));
    // The one place is taken while the connection is in use.
    let mut second = open_anonymous(&pki, node.taxii).await;
    assert_eq!(basic_get(&mut second, node.taxii, &siem).await, Some(429));
    drop(second);

    // Idle for well past the timeout: closed by the node, and its place free.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut chunk = [0u8; 64];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(2), first.read(&mut chunk)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    let mut third = open_anonymous(&pki, node.taxii).await;
    let status = basic_get(&mut third, node.taxii, &siem).await;
    assert_eq!(
        status,
        Some(200),
        "a Basic connection idle past limits.idle_connection_timeout still holds the client's place (closed by the node: {closed})"
    );
    assert!(closed, "the idle Basic connection was not closed");
    drop((first, third, node));
}
