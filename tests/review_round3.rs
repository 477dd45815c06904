//! A third attack pass over what a partner or client can learn, against a real node: ids
//! of withheld items written in labels, kill chain phases and revocation reasons;
//! revocations that name other types or fewer objects than what they revoke; the ledger
//! records of TAXII requests that serve nothing; an admin's ledger stream read on after
//! a reload narrowed its policy; what a narrowed writer learns from a UUID held under
//! another type; and authority on a kept TAXII connection across reloads.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use entente::config::builder;
use entente::rpc::proto::{ItemFilter, LedgerShowRequest, PublishRequest};
use entente::wire::{self, Tlp};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::https::{Reply, TAXII, get, indicator, objects_path, post, tls};
use common::{Pki, TaxiiNode, node_section, serve_taxii};

const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

/// Upper bound for anything the tests wait for.
const DEADLINE: Duration = Duration::from_secs(60);

/// A node (redmond.hq) with a GREEN read-only researcher, an analyst that sees
/// everything, an analyst narrowed to GREEN and a TAXII listener, as its own process.
fn start_taxii() -> (Pki, TaxiiNode) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("researcher.uni-x");
    pki.client("analyst.soc");
    pki.client("analyst.green");
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"researcher.uni-x\"\nrole = \"read_only\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"analyst.green\"\nrole = \"analyst\"\nallow_types = [\"*\"]\nmax_tlp = \"GREEN\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = serve_taxii(&path);
    (pki, node)
}

/// The ids of the items (not the marking definitions and identities served with them)
/// on the first page `tls` lists.
async fn listed_ids(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    objects: &str,
) -> BTreeSet<String> {
    let reply = get(tls, addr, &format!("{objects}?limit=1000")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            !matches!(
                o["type"].as_str().unwrap(),
                "marking-definition" | "extension-definition" | "identity"
            )
        })
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Rule 7 judges every id an item carries, but only in the texts `Item::referenced`
/// scanned: STIX properties, description and value. An item's labels (its tags), an
/// indicator's kill chain phases and a revocation's reason were not scanned, so a GREEN
/// object carrying an AMBER indicator's id in one of them reached a GREEN partner with
/// the id in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_in_labels_kill_chain_phases_and_revocation_reasons_are_judged_like_references() {
    const SECRET: &str = "indicator--b3b3b3b3-0000-4000-8000-000000000001";
    const PUBLIC: &str = "indicator--b3b3b3b3-0000-4000-8000-000000000002";
    const LABELLED: &str = "indicator--b3b3b3b3-0000-4000-8000-000000000003";
    const PHASED: &str = "indicator--b3b3b3b3-0000-4000-8000-000000000004";
    const LABELLED_MALWARE: &str = "malware--b3b3b3b3-0000-4000-8000-000000000005";
    const REVOKED: &str = "indicator--b3b3b3b3-0000-4000-8000-000000000006";
    const ABSENT: &str = "indicator--b3b3b3b3-0000-4000-8000-0000000000ff";
    let (pki, node) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = objects_path(&analyst, &node).await;

    let mut labelled = indicator(LABELLED, "labelled.example", GREEN);
    labelled["labels"] = json!([SECRET]);
    let mut phased = indicator(PHASED, "phased.example", GREEN);
    phased["kill_chain_phases"] = json!([{ "kill_chain_name": "seen-with", "phase_name": SECRET }]);
    let envelope = json!({ "objects": [
        indicator(SECRET, "secret.example", AMBER),
        indicator(PUBLIC, "public.example", GREEN),
        labelled,
        phased,
        {
            "type": "malware", "spec_version": "2.1", "id": LABELLED_MALWARE,
            "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
            "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
            "labels": [SECRET],
        },
        indicator(REVOKED, "revoked.example", GREEN),
    ]})
    .to_string();
    let posted = post(&analyst, node.taxii, &objects, &envelope).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(6),
        "{}",
        posted.text()
    );
    // The origin revokes the GREEN indicator, naming the AMBER one in its reason.
    let mut revocation = indicator(REVOKED, "revoked.example", GREEN);
    revocation["modified"] = json!("2025-01-03T00:00:00.000Z");
    revocation["revoked"] = json!(true);
    revocation["x_entente_revocation_reason"] = json!(format!("replaced by {SECRET}"));
    let posted = post(
        &analyst,
        node.taxii,
        &objects,
        &json!({ "objects": [revocation] }).to_string(),
    )
    .await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(1),
        "{}",
        posted.text()
    );

    let everything: BTreeSet<String> =
        [SECRET, PUBLIC, LABELLED, PHASED, LABELLED_MALWARE, REVOKED]
            .map(str::to_owned)
            .into();
    assert_eq!(listed_ids(&analyst, node.taxii, &objects).await, everything);
    // The GREEN researcher gets the public indicator only, and the AMBER id nowhere.
    let seen = listed_ids(&researcher, node.taxii, &objects).await;
    assert_eq!(seen, BTreeSet::from([PUBLIC.to_owned()]));
    let listed = get(&researcher, node.taxii, &format!("{objects}?limit=1000"))
        .await
        .text();
    assert!(!listed.contains(&SECRET[11..]), "{listed}");
    let absent = get(&researcher, node.taxii, &format!("{objects}{ABSENT}/")).await;
    assert_eq!(absent.status, 404);
    for id in [LABELLED, PHASED, LABELLED_MALWARE, REVOKED] {
        let withheld = get(&researcher, node.taxii, &format!("{objects}{id}/")).await;
        assert_eq!(
            (withheld.status, withheld.text()),
            (absent.status, absent.text()),
            "{id}"
        );
    }
    // gRPC says the same.
    let client = common::taxii_node_client(&pki, &node, "researcher.uni-x").await;
    for id in [LABELLED, PHASED, LABELLED_MALWARE, REVOKED] {
        assert!(client.get(id).await.unwrap().is_none(), "{id}");
    }
}

/// The match[id] listing and the object resource take an item through `Engine::get`,
/// which records the disclosure, and only then apply `match[type]`, `match[version]` and
/// `added_after`: an item those filters leave out was recorded in the ledger as given to
/// the caller though nothing of it was served (the same over-statement a review found
/// and fixed in listings).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_id_or_object_request_records_only_what_it_serves() {
    const PUBLIC: &str = "indicator--c4c4c4c4-0000-4000-8000-000000000001";
    let (pki, node) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let researcher = tls(&pki, "researcher.uni-x");
    let objects = objects_path(&analyst, &node).await;
    let manifest = objects.replace("/objects/", "/manifest/");
    let envelope = json!({ "objects": [indicator(PUBLIC, "public.example", GREEN)] });
    let posted = post(&analyst, node.taxii, &objects, &envelope.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());

    let later = "2099-01-01T00:00:00.000Z";
    let version = "2024-01-01T00:00:00.000Z";
    for query in [
        format!("{objects}?match[id]={PUBLIC}&match[type]=malware"),
        format!("{objects}?match[id]={PUBLIC}&added_after={later}"),
        format!("{objects}?match[id]={PUBLIC}&match[version]={version}"),
        format!("{manifest}?match[id]={PUBLIC}&match[type]=malware"),
    ] {
        let reply = get(&researcher, node.taxii, &query).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.text());
        assert_eq!(reply.json()["objects"], json!([]), "{query}");
    }
    for query in [
        format!("{objects}{PUBLIC}/?match[type]=malware"),
        format!("{objects}{PUBLIC}/?added_after={later}"),
    ] {
        let reply = get(&researcher, node.taxii, &query).await;
        assert_eq!(reply.status, 404, "{query}: {}", reply.text());
    }
    let records = common::ledger_records(&pki, &node, "researcher.uni-x").await;
    assert!(
        records.iter().all(|r| r.deliveries.is_empty()),
        "nothing was served, yet the ledger records deliveries: {:?}",
        records
            .iter()
            .map(|r| (r.path.clone(), r.deliveries.len()))
            .collect::<Vec<_>>()
    );

    // What is served is recorded.
    let reply = get(&researcher, node.taxii, &format!("{objects}{PUBLIC}/")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let records = common::ledger_records(&pki, &node, "researcher.uni-x").await;
    assert_eq!(
        records.iter().filter(|r| !r.deliveries.is_empty()).count(),
        1
    );
}

/// `Admin.LedgerShow` is for admins whose policy withholds nothing, checked when the
/// stream opens. An admin whose policy a reload then narrowed (its role unchanged, so
/// its connection stays) read the rest of the ledger on the stream it had opened, by
/// reading it after the reload: every record naming bundles and partners beyond its
/// new policy. Other streams decide again as each message leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_stream_ends_when_a_reload_narrows_its_admin() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.alice");
    pki.client("ops.admin");
    let config = pki.path().join("redmond.hq.toml");
    let write = |admin: builder::Policy| {
        common::node_toml(&pki, &hq, &pki.path().join("data"))
            .entry(builder::Entry::client("analyst.alice", "analyst"))
            .entry(builder::Entry::client("ops.admin", "admin").policy(admin))
            .write(&config)
            .unwrap();
    };
    // With no policy fields, the admin sees everything.
    write(builder::Policy::default());
    let node = common::start(&config).await;
    let alice = common::connect(&pki, &node, "analyst.alice").await;
    let ops = common::connect(&pki, &node, "ops.admin").await;

    // A ledger larger than the HTTP/2 windows: records that each name 1,000 bundles.
    let requests: Vec<PublishRequest> = (0..1000)
        .map(|b| PublishRequest {
            items: vec![wire::Item {
                id: String::new(),
                modified_unix_ms: 0,
                tlp: Tlp::Green as i32,
                tags: vec![],
                kind: Some(wire::item::Kind::Indicator(wire::Indicator {
                    indicator_type: "domain".into(),
                    value: format!("host-{b}.example"),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        })
        .collect();
    alice
        .publish(tokio_stream::iter(requests))
        .await
        .expect("publish");
    for _ in 0..100 {
        let page = alice
            .query(ItemFilter::default(), 1000, Vec::new())
            .await
            .unwrap();
        assert_eq!(page.items.len(), 1000);
    }

    let mut stream = ops
        .ledger_show(LedgerShowRequest {
            partner: String::new(),
            since_unix_ms: 0,
        })
        .await
        .expect("an admin that sees everything reads the ledger");
    assert!(stream.message().await.unwrap().is_some());

    // The reload narrows the admin to GREEN; its role, and so its connection, stay.
    write(builder::Policy::all_types().max_tlp("GREEN"));
    node.reload_policy().expect("reload");
    let refused = ops
        .ledger_show(LedgerShowRequest {
            partner: String::new(),
            since_unix_ms: 0,
        })
        .await;
    assert!(refused.is_err(), "a new ledger stream is refused");

    let mut read = 1usize;
    let end = loop {
        match tokio::time::timeout(DEADLINE, stream.message())
            .await
            .expect("ledger record in time")
        {
            Ok(Some(_)) => read += 1,
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    match end {
        Some(status) => assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}"),
        None => panic!(
            "the narrowed admin read the whole ledger on its open stream ({read} records) after the reload"
        ),
    }
    node.shutdown(DEADLINE).await.unwrap();
}

/// A writer whose policy withholds an item cannot overwrite it, and learns from the
/// refusal only that the id is held (a known gap). Under another type the store refused
/// the object naming the id it holds: an analyst narrowed to GREEN that sent
/// `malware--U` learnt that `indicator--U` is held, and that it is an indicator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_held_under_another_type_is_not_named_to_a_writer_that_may_not_see_it() {
    const SECRET: &str = "indicator--d5d5d5d5-0000-4000-8000-000000000001";
    const SAME_UUID: &str = "malware--d5d5d5d5-0000-4000-8000-000000000001";
    let (pki, node) = start_taxii();
    let analyst = tls(&pki, "analyst.soc");
    let narrowed = tls(&pki, "analyst.green");
    let objects = objects_path(&analyst, &node).await;
    let envelope = json!({ "objects": [indicator(SECRET, "secret.example", AMBER)] });
    let posted = post(&analyst, node.taxii, &objects, &envelope.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(1),
        "{}",
        posted.text()
    );

    let failure = |reply: &Reply| -> String {
        assert_eq!(reply.status, 202, "{}", reply.text());
        let status = reply.json();
        assert_eq!(status["failure_count"], json!(1), "{}", reply.text());
        status["failures"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // The same id: refused, saying only that this writer cannot write it.
    let mut rewrite = indicator(SECRET, "other.example", GREEN);
    rewrite["modified"] = json!("2025-02-01T00:00:00.000Z");
    let same_id = post(
        &narrowed,
        node.taxii,
        &objects,
        &json!({ "objects": [rewrite] }).to_string(),
    )
    .await;
    let same_id = failure(&same_id);
    // Its UUID under another type: refused in the same words, for that id.
    let malware = json!({
        "type": "malware", "spec_version": "2.1", "id": SAME_UUID,
        "created": "2025-04-01T00:00:00.000Z", "modified": "2025-04-01T00:00:00.000Z",
        "name": "Loader", "is_family": true, "object_marking_refs": [GREEN],
    });
    let other_type = post(
        &narrowed,
        node.taxii,
        &objects,
        &json!({ "objects": [malware] }).to_string(),
    )
    .await;
    let other_type = failure(&other_type);
    assert!(!other_type.contains(SECRET), "{other_type}");
    assert_eq!(other_type, same_id.replace(SECRET, SAME_UUID));
}

/// One HTTP/1.1 connection kept open across requests, with or without a client
/// certificate; `None` once the node has closed it.
struct Kept {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    addr: SocketAddr,
    read: Vec<u8>,
}

impl Kept {
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

    async fn get(&mut self, path: &str, authorization: Option<&str>) -> Option<Reply> {
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: {TAXII}\r\n",
            self.addr
        );
        if let Some(authorization) = authorization {
            head.push_str(&format!("Authorization: {authorization}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await.ok()?;
        self.stream.flush().await.ok()?;
        let split = loop {
            if let Some(at) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.read[..split]).to_string();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap();
        let length: usize = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.trim().parse().unwrap())
            .expect("a kept connection's answer has a length");
        while self.read.len() < split + 4 + length {
            self.fill().await?;
        }
        let body = self.read[split + 4..split + 4 + length].to_vec();
        self.read.drain(..split + 4 + length);
        Some(Reply {
            status,
            headers: Vec::new(),
            body,
        })
    }

    async fn fill(&mut self) -> Option<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
            .await
            .expect("an answer in time")
            .ok()?;
        (n > 0).then(|| self.read.extend_from_slice(&chunk[..n]))
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Sends SIGHUP to the node process: a reload.
fn reload(node: &TaxiiNode) {
    let pid = i32::try_from(node.child.id()).unwrap();
    // SAFETY: kill(2) with a pid this test spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
}

/// Authority on a kept TAXII connection follows each reload at the next request: a
/// Basic password changed, a Basic client's policy narrowed to nothing, its credentials
/// removed, and a certificate client demoted from analyst to read-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_on_a_kept_taxii_connection_follows_each_reload() {
    const OLD: &str = "siem basic password 1";
    const NEW: &str = "siem basic password 2";
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    pki.client("analyst.soc");
    let (old_hash, new_hash) = (common::hash_password(OLD), common::hash_password(NEW));
    let path = pki.path().join("redmond.hq.toml");
    let write = |analyst_role: &str, siem_policy: &str, hash: Option<&str>| {
        let mut text = node_section(&pki, &hq, &pki.path().join("data"));
        text.push_str(&format!(
            "\n[[client]]\nid = \"analyst.soc\"\nrole = \"{analyst_role}\"\nallow_types = [\"*\"]\nmax_tlp = \"RED\"\n\
             \n[[client]]\nid = \"siem.soc\"\nrole = \"read_only\"\n{siem_policy}\n\
             \n[taxii]\nlisten = \"127.0.0.1:0\"\n"
        ));
        if let Some(hash) = hash {
            text.push_str(&format!(
                "\n[[taxii.basic]]\nclient = \"siem.soc\"\npassword_hash = \"{hash}\"\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
    };
    let everything = "allow_types = [\"*\"]\nmax_tlp = \"GREEN\"";
    write("analyst", everything, Some(&old_hash));
    let node = serve_taxii(&path);
    let until = std::time::Instant::now() + DEADLINE;
    let anonymous = {
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
        Arc::new(config)
    };
    let collections = "/api/collections/";

    // The password changes: the old one stops working on the kept connection.
    let mut siem = Kept::open(&anonymous, node.taxii).await;
    let old = basic("siem.soc", OLD);
    let listed = siem.get(collections, Some(&old)).await.unwrap();
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["collections"].as_array().unwrap().len(), 1);
    write("analyst", everything, Some(&new_hash));
    reload(&node);
    loop {
        let reply = siem.get(collections, Some(&old)).await.unwrap();
        if reply.status == 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the old password still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A refused request closes its connection: the client connects again.
    assert!(
        siem.get(collections, Some(&old)).await.is_none(),
        "the connection was kept open after a 401"
    );
    let mut siem = Kept::open(&anonymous, node.taxii).await;
    let new = basic("siem.soc", NEW);
    assert_eq!(siem.get(collections, Some(&new)).await.unwrap().status, 200);

    // Its policy is narrowed to nothing: the collection is gone on the same connection.
    write("analyst", "", Some(&new_hash));
    reload(&node);
    loop {
        let reply = siem.get(collections, Some(&new)).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        if reply.json().get("collections").is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the collection is still listed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A certificate client may write on its kept connection until it is demoted.
    let analyst = tls(&pki, "analyst.soc");
    let mut kept = Kept::open(&analyst, node.taxii).await;
    let listed = kept.get(collections, None).await.unwrap().json();
    assert_eq!(listed["collections"][0]["can_write"], json!(true));
    // The Basic credentials are removed and the analyst made read-only.
    write("read_only", "", None);
    reload(&node);
    loop {
        match siem.get(collections, Some(&new)).await {
            None => break,
            Some(reply) if reply.status == 401 => break,
            Some(_) => {}
        }
        assert!(
            std::time::Instant::now() < until,
            "removed credentials still work"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        match kept.get(collections, None).await {
            // The demoted client's connection is closed, or answered as read-only.
            None => break,
            Some(reply) if reply.status == 401 => break,
            Some(reply) => {
                assert_eq!(reply.status, 200, "{}", reply.text());
                if reply.json()["collections"][0]["can_write"] == json!(false) {
                    break;
                }
            }
        }
        assert!(
            std::time::Instant::now() < until,
            "the demoted analyst may still write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A revocation must carry the revoked item's marking, type and tags, so that it goes
/// only where the item went. For a STIX pattern, though, the types the delivery rule
/// judges are those the pattern names, and a revocation's pattern is what its writer
/// sends: a revocation of an IPv4 pattern written with a domain pattern (or with no
/// pattern at all, as `stix-pattern`) reached partners allowed only domains (or only
/// `stix-pattern`), with the revoked id and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_is_judged_by_what_the_revoked_pattern_is_about() {
    const REPATTERNED: &str = "indicator--e8e8e8e8-0000-4000-8000-000000000001";
    const PATTERNLESS: &str = "indicator--e8e8e8e8-0000-4000-8000-000000000002";
    const FAITHFUL: &str = "indicator--e8e8e8e8-0000-4000-8000-000000000003";
    const IPV4: &str = "[ipv4-addr:value = '198.51.100.7'] OR [ipv4-addr:value = '198.51.100.8']";
    const DOMAINS: &str = "[domain-name:value = 'a.example'] OR [domain-name:value = 'b.example']";
    let (pki, node, analyst, objects) = start_typed().await;
    let pattern_indicator = |id: &str, pattern: &str| {
        let mut object = indicator(id, "unused.example", GREEN);
        object["pattern"] = json!(pattern);
        object
    };
    let envelope = json!({ "objects": [
        pattern_indicator(REPATTERNED, IPV4),
        pattern_indicator(PATTERNLESS, IPV4),
        pattern_indicator(FAITHFUL, IPV4),
    ]});
    let posted = post(&analyst, node.taxii, &objects, &envelope.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(3),
        "{}",
        posted.text()
    );
    // Neither partner may see an IPv4 pattern.
    let domains = tls(&pki, "domains.uni-y");
    let patterns = tls(&pki, "patterns.uni-z");
    for partner in [&domains, &patterns] {
        let reply = get(partner, node.taxii, &format!("{objects}?limit=1000")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(!reply.text().contains("e8e8e8e8"), "{}", reply.text());
    }

    let revoke = |object: &mut Value| {
        object["modified"] = json!("2025-01-03T00:00:00.000Z");
        object["revoked"] = json!(true);
        object["x_entente_revocation_reason"] = json!("withdrawn by the analyst");
    };
    let mut repatterned = pattern_indicator(REPATTERNED, DOMAINS);
    revoke(&mut repatterned);
    let mut patternless = pattern_indicator(PATTERNLESS, IPV4);
    revoke(&mut patternless);
    let patternless = {
        let mut object = patternless.as_object().unwrap().clone();
        object.remove("pattern");
        object.remove("pattern_type");
        object.insert("x_entente_indicator_type".into(), json!("stix-pattern"));
        Value::Object(object)
    };
    let mut faithful = pattern_indicator(FAITHFUL, IPV4);
    revoke(&mut faithful);
    let mut counts = Vec::new();
    for revocation in [repatterned, patternless, faithful] {
        let body = json!({ "objects": [revocation] }).to_string();
        let reply = post(&analyst, node.taxii, &objects, &body).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
        let status = reply.json();
        counts.push((
            status["success_count"].as_u64().unwrap(),
            status["failure_count"].as_u64().unwrap(),
        ));
    }
    // Still nothing of the three reaches either partner.
    for partner in [&domains, &patterns] {
        let reply = get(partner, node.taxii, &format!("{objects}?limit=1000")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(!reply.text().contains("e8e8e8e8"), "{}", reply.text());
    }
    // The two that would go further than the item are refused; the faithful one is
    // stored.
    assert_eq!(counts, [(0, 1), (0, 1), (1, 0)]);
}

/// A node with an analyst that sees everything and two GREEN read-only clients, one
/// allowed domains only and one `stix-pattern` only: its PKI, the node, the analyst's
/// TLS client and the collection's objects path.
async fn start_typed() -> (Pki, TaxiiNode, Arc<rustls::ClientConfig>, String) {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    for who in ["analyst.soc", "domains.uni-y", "patterns.uni-z"] {
        pki.client(who);
    }
    let mut text = node_section(&pki, &hq, &pki.path().join("data"));
    text.push_str(
        "\n[[client]]\nid = \"analyst.soc\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"domains.uni-y\"\nrole = \"read_only\"\nallow_types = [\"domain\"]\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"patterns.uni-z\"\nrole = \"read_only\"\nallow_types = [\"stix-pattern\"]\nmax_tlp = \"GREEN\"\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n",
    );
    let path = pki.path().join("redmond.hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = serve_taxii(&path);
    let analyst = tls(&pki, "analyst.soc");
    let objects = objects_path(&analyst, &node).await;
    (pki, node, analyst, objects)
}

/// A revocation is judged by the ids it carries (rule 7) like any item, but it could
/// carry fewer than the item it revokes: a GREEN domain indicator withheld from a
/// domains-only partner because its description names an AMBER indicator was revoked
/// with the description left out, and the revocation, with the revoked id, reached that
/// partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_names_every_object_its_item_names() {
    const SECRET: &str = "indicator--f9f9f9f9-0000-4000-8000-000000000001";
    const NAMING: &str = "indicator--f9f9f9f9-0000-4000-8000-000000000002";
    let (pki, node, analyst, objects) = start_typed().await;
    let mut naming = indicator(NAMING, "naming.example", GREEN);
    naming["description"] = json!(format!("seen with {SECRET}"));
    let envelope = json!({ "objects": [indicator(SECRET, "secret.example", AMBER), naming] });
    let posted = post(&analyst, node.taxii, &objects, &envelope.to_string()).await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(
        posted.json()["success_count"],
        json!(2),
        "{}",
        posted.text()
    );
    let domains = tls(&pki, "domains.uni-y");
    let listed = || async {
        let reply = get(&domains, node.taxii, &format!("{objects}?limit=1000")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.text()
    };
    assert!(!listed().await.contains("f9f9f9f9"));

    let mut revocation = indicator(NAMING, "naming.example", GREEN);
    revocation["modified"] = json!("2025-01-03T00:00:00.000Z");
    revocation["revoked"] = json!(true);
    let body = json!({ "objects": [revocation] }).to_string();
    let reply = post(&analyst, node.taxii, &objects, &body).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let text = listed().await;
    assert!(!text.contains("f9f9f9f9"), "{text}");
    assert_eq!(reply.json()["failure_count"], json!(1), "{}", reply.text());
}
