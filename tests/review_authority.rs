//! Attacks on authority in force now and on withheld-versus-absent, again, each against
//! a real node over mTLS, as a GREEN read-only researcher and an analyst:
//!
//! - a subscription handed out a version of an item that a newer version held beside it
//!   had superseded (two versions of one id in one bundle, or a newer version stored
//!   while the older one waited in the subscriber's queue): rule 6 gives clients the
//!   latest version only, and a superseded version told the subscriber that an id is
//!   held whose latest version is withheld from it;
//! - an open `Publish` stream went on publishing the messages its writer sent after a
//!   reload had demoted it to read-only, until its connection closed;
//! - a TAXII POST whose body arrived after a reload had demoted its writer to
//!   read-only was still signed and stored: authority was checked when the request's
//!   head arrived only;
//! - `Admin.Certificates` named every partner that had connected, with its serial and
//!   when it last connected, to an admin whose policy is narrowed, to which the link
//!   state and a reload's description of the partners are refused;
//! - rule 7 did not read a UUID with a character that does not show written inside it
//!   (a zero-width space, a word joiner, a soft hyphen): every reader sees the
//!   withheld object's UUID, and the object naming it was delivered; nor one written
//!   as Markdown or HTML show it (`\-`, `&#45;`, `&hyphen;` for its hyphens).

mod common;

use std::time::Duration;

use common::Pki;
use entente::Node;
use entente::client::{ClientError, NodeClient};
use entente::engine::now_ms;
use entente::model::ItemId;
use entente::rpc::proto::{ItemFilter, PublishRequest, StoredItem};
use entente::wire::{self, Tlp};

const DEADLINE: Duration = Duration::from_secs(30);

const HQ: &str = "redmond.hq";
const ANALYST: &str = "analyst.alice";
const RESEARCHER: &str = "researcher.bob";

/// A node with an analyst that sees everything and a GREEN researcher allowed domains
/// and IPv4 addresses.
struct Hq {
    node: Node,
    pki: Pki,
}

impl Hq {
    async fn start() -> Self {
        common::init_logging();
        let pki = Pki::new();
        let id = pki.node(HQ);
        for who in [ANALYST, RESEARCHER] {
            pki.client(who);
        }
        let mut text = common::node_section(&pki, &id, &pki.path().join("data-hq"));
        text.push_str(&format!(
            r#"
[[client]]
id = "{ANALYST}"
role = "analyst"

[[client]]
id = "{RESEARCHER}"
role = "read_only"
allow_types = ["domain", "ipv4"]
"#
        ));
        let path = pki.path().join("hq.toml");
        std::fs::write(&path, text).unwrap();
        let node = common::start(&path).await;
        Self { node, pki }
    }

    async fn connect(&self, who: &str) -> NodeClient {
        common::connect(&self.pki, &self.node, who).await
    }

    async fn stop(self) {
        self.node.shutdown(DEADLINE).await.unwrap();
    }
}

fn indicator(id: &str, value: &str, tlp: Tlp, modified_ms: i64) -> wire::Item {
    wire::Item {
        id: id.to_owned(),
        modified_unix_ms: modified_ms,
        tlp: tlp as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish(client: &NodeClient, items: Vec<wire::Item>) -> Result<(), ClientError> {
    let request = PublishRequest {
        items,
        distribution: None,
        groups: vec![],
    };
    client
        .publish(tokio_stream::iter(vec![request]))
        .await
        .map(|_| ())
}

fn item_id(stored: &StoredItem) -> String {
    stored.item.as_ref().unwrap().id.clone()
}

/// Rule 6 on a subscription: a GREEN version superseded, in the same bundle, by an
/// AMBER version of the same id is never handed to a GREEN subscriber. Before the fix
/// the subscriber received the GREEN version (the stream judged every version it was
/// offered as if it were the latest), while `Get` answered the id as not held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_never_hands_out_a_superseded_version() {
    let hq = Hq::start().await;
    let alice = hq.connect(ANALYST).await;
    let bob = hq.connect(RESEARCHER).await;
    let mut subscription = bob.subscribe(ItemFilter::default()).await.unwrap();

    let id = ItemId::new_random().to_string();
    let now = now_ms();
    let green = indicator(&id, "once-green.example", Tlp::Green, now - 2_000);
    let amber = indicator(&id, "now-amber.example", Tlp::Amber, now - 1_000);
    publish(&alice, vec![green, amber]).await.unwrap();
    // A marker the researcher may see, to know the subscription has caught up.
    let marker = indicator(
        &ItemId::new_random().to_string(),
        "marker.example",
        Tlp::Green,
        now,
    );
    publish(&alice, vec![marker.clone()]).await.unwrap();

    let first = tokio::time::timeout(DEADLINE, subscription.message())
        .await
        .expect("the subscription delivers in time")
        .expect("the subscription goes on")
        .expect("an item");
    assert_eq!(
        item_id(&first),
        marker.id,
        "the subscriber received a superseded version of an item whose latest version is withheld from it"
    );
    // The id is withheld from the researcher, exactly as an absent one.
    assert!(bob.get(&id).await.unwrap().is_none());
    hq.stop().await;
}

/// A `Publish` stream is a request per message: once a reload demotes its writer to
/// read-only, the next message is refused, not signed and stored in the grace before
/// the connection closes. Before the fix the message sent right after the reload was
/// published and the call answered with both items accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_publish_stream_stops_at_a_reload_that_demotes_its_writer() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    pki.client(ANALYST);
    let config = common::write_config(&pki, &hq, &[common::client(ANALYST, "analyst")], &[]);
    let node = common::start(&config).await;
    let alice = common::connect(&pki, &node, ANALYST).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<PublishRequest>(4);
    let call = tokio::spawn(async move {
        alice
            .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let now = now_ms();
    let before = indicator(
        &ItemId::new_random().to_string(),
        "before-demotion.example",
        Tlp::Green,
        now,
    );
    let after = indicator(
        &ItemId::new_random().to_string(),
        "after-demotion.example",
        Tlp::Green,
        now,
    );
    let message = |item: &wire::Item| PublishRequest {
        items: vec![item.clone()],
        distribution: None,
        groups: vec![],
    };
    tx.send(message(&before)).await.unwrap();
    let store = node.engine().store().clone();
    let before_id = ItemId::parse(&before.id).unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while store.get(&before_id).unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first message was not published"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    common::write_config(&pki, &hq, &[common::client(ANALYST, "read_only")], &[]);
    node.reload_policy().expect("reload");
    tx.send(message(&after)).await.unwrap();
    drop(tx);
    let answered = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("the call ends in time")
        .unwrap();
    match answered {
        Err(ClientError::Status { code, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied)
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(response) => panic!(
            "the demoted writer's stream went on: {} item(s) accepted",
            response.items_accepted
        ),
    }
    assert!(
        store
            .get(&ItemId::parse(&after.id).unwrap())
            .unwrap()
            .is_none(),
        "a message sent after the demotion was published"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

/// A TAXII POST is authorised again once its body has arrived: a writer demoted to
/// read-only by a reload while it was sending the body is refused, and nothing of it is
/// stored. Before the fix the envelope was stored and answered 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taxii_post_whose_writer_is_demoted_while_it_sends_is_not_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    pki.client(ANALYST);
    let write = |role: &str| {
        let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
        text.push_str(&format!(
            "\n[[client]]\nid = \"{ANALYST}\"\nrole = \"{role}\"\n\
             \n[taxii]\nlisten = \"127.0.0.1:0\"\n\
             \n[limits]\npublishes_per_partner = 1\n"
        ));
        let path = pki.path().join("hq.toml");
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = write("analyst");
    let node = common::start(&config).await;
    let taxii = node.taxii_addr().expect("a TAXII listener");
    let writer = common::https::tls(&pki, ANALYST);
    let listed = common::https::get(&writer, taxii, "/api/collections/")
        .await
        .json();
    let collection = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    let objects = format!("/api/collections/{collection}/objects/");

    let id = ItemId::new_random().to_string();
    let body = serde_json::json!({
        "objects": [common::https::indicator(
            &id,
            "sent-while-demoted.example",
            "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        )]
    })
    .to_string();
    let tcp = tokio::net::TcpStream::connect(taxii).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(writer.clone())
        .connect(
            rustls::pki_types::ServerName::IpAddress(taxii.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let head = format!(
        "POST {objects} HTTP/1.1\r\nHost: {taxii}\r\nConnection: close\r\nAccept: {t}\r\nContent-Type: {t}\r\nContent-Length: {}\r\n\r\n",
        body.len(),
        t = common::https::TAXII,
    );
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first).await.unwrap();
    stream.flush().await.unwrap();
    // The request holds the writer's one publish slot once it is authorised and reads
    // its body.
    let analyst = entente::NodeId::new(ANALYST).unwrap();
    let deadline = std::time::Instant::now() + DEADLINE;
    while node.engine().open_publish(&analyst).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the POST did not take its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    write("read_only");
    node.reload_policy().expect("reload");
    stream.write_all(rest).await.unwrap();
    stream.flush().await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw)).await;
    let answer = String::from_utf8_lossy(&raw).into_owned();
    assert!(
        !answer.starts_with("HTTP/1.1 202"),
        "the demoted writer's POST was accepted: {answer}"
    );
    let store = node.engine().store().clone();
    assert!(
        store.get(&ItemId::parse(&id).unwrap()).unwrap().is_none(),
        "the demoted writer's object was stored"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

/// A narrowed admin is given its node's own certificate, the trust anchors and its own
/// certificate, not the other partners' (ids, serials, when each last connected): the
/// partners and their activity are for the operator and admins that see everything, as
/// the link state and a reload's description are. Before the fix the researcher's
/// certificate and last connection were listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowed_admin_is_not_told_which_partners_connect() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    for who in ["admin.narrow", "admin.ops", RESEARCHER] {
        pki.client(who);
    }
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str(&format!(
        "\n[[client]]\nid = \"admin.narrow\"\nrole = \"admin\"\nmax_tlp = \"GREEN\"\n\
         \n[[client]]\nid = \"admin.ops\"\nrole = \"admin\"\n\
         \n[[client]]\nid = \"{RESEARCHER}\"\nrole = \"read_only\"\nallow_types = [\"*\"]\n"
    ));
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let bob = common::connect(&pki, &node, RESEARCHER).await;
    bob.query(ItemFilter::default(), 1, Vec::new())
        .await
        .unwrap();

    let names = |answer: entente::rpc::proto::CertificatesResponse| -> Vec<String> {
        answer.certificates.into_iter().map(|c| c.name).collect()
    };
    // The operator's view lists the researcher as it connected.
    let ops = common::connect(&pki, &node, "admin.ops").await;
    let full = names(ops.certificates().await.unwrap());
    assert!(full.iter().any(|n| n == RESEARCHER), "{full:?}");

    let narrow = common::connect(&pki, &node, "admin.narrow").await;
    let listed = names(narrow.certificates().await.unwrap());
    assert!(
        !listed.iter().any(|n| n == RESEARCHER || n == "admin.ops"),
        "a narrowed admin was told which partners connect: {listed:?}"
    );
    assert!(listed.iter().any(|n| n == HQ), "{listed:?}");
    node.shutdown(DEADLINE).await.unwrap();
}

/// Rule 7 over TAXII: an object whose text writes a withheld object's UUID with a
/// character that does not show inside it (as a reader sees it: the UUID itself) is
/// withheld like one that writes the UUID plainly. Before the fix the GREEN researcher
/// listed all three objects naming the AMBER indicator so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uuid_written_with_characters_that_do_not_show_is_still_judged() {
    use serde_json::json;
    const GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
    const AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";

    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    for who in [ANALYST, RESEARCHER] {
        pki.client(who);
    }
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str(&format!(
        "\n[[client]]\nid = \"{ANALYST}\"\nrole = \"analyst\"\n\
         \n[[client]]\nid = \"{RESEARCHER}\"\nrole = \"read_only\"\nallow_types = [\"*\"]\n\
         \n[taxii]\nlisten = \"127.0.0.1:0\"\n"
    ));
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, text).unwrap();
    let node = common::start(&path).await;
    let taxii = node.taxii_addr().unwrap();
    let writer = common::https::tls(&pki, ANALYST);
    let reader = common::https::tls(&pki, RESEARCHER);
    let listed = common::https::get(&writer, taxii, "/api/collections/")
        .await
        .json();
    let collection = listed["collections"][0]["id"].as_str().unwrap().to_owned();
    let objects = format!("/api/collections/{collection}/objects/");

    let uuid = "c3c3c3c3-0000-4000-8000-000000000001";
    let secret = common::https::indicator(&format!("indicator--{uuid}"), "amber-c2.example", AMBER);
    let written = [
        // A zero-width space, a word joiner and a soft hyphen inside the UUID.
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a1",
            "c3c3c3c3-00\u{200b}00-4000-8000-000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a2",
            "c3c3c3c3-0000-4000-80\u{2060}00-000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a3",
            "c3c3c3c3\u{00ad}-0000-4000-8000-000000000001",
        ),
        // As Markdown and HTML show them: an escaped hyphen, character references.
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a4",
            "c3c3c3c3\\-0000\\-4000\\-8000\\-000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a5",
            "c3c3c3c3&#45;0000&#x2D;4000&hyphen;8000&#8208;000000000001",
        ),
        // Other separators between the groups: underscores, spaces, dots and colons,
        // line breaks and tabs, two hyphens, an escaped hyphen.
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a6",
            "c3c3c3c3_0000_4000_8000_000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a7",
            "c3c3c3c3 0000 4000 8000 000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a8",
            "c3c3c3c3.0000:4000.8000:000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000a9",
            "c3c3c3c3\n0000\t4000\r\n8000 000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000aa",
            "c3c3c3c3--0000--4000--8000--000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000ab",
            "c3c3c3c3\\u002d0000\\u002d4000\\u002d8000\\u002d000000000001",
        ),
        // Two forms at once; separators written as references or percent-encoded.
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000ac",
            "c3c3\u{200b}c3c3_0000_4000_8000_000000000001",
        ),
        (
            "malware--c3c3c3c3-0000-4000-8000-0000000000ad",
            "c3c3c3c3&#45;&#45;0000&nbsp;4000&#95;8000 %2D 000000000001",
        ),
    ];
    let mut envelope = vec![secret];
    for (id, named) in written {
        envelope.push(json!({
            "type": "malware", "spec_version": "2.1", "id": id,
            "created": "2025-01-01T00:00:00.000Z", "modified": "2025-01-01T00:00:00.000Z",
            "name": "loader", "is_family": true,
            "description": format!("talks to the server of {named}"),
            "object_marking_refs": [GREEN],
        }));
    }
    // A control: the same words without the UUID.
    envelope.push(json!({
        "type": "malware", "spec_version": "2.1",
        "id": "malware--c3c3c3c3-0000-4000-8000-0000000000a0",
        "created": "2025-01-01T00:00:00.000Z", "modified": "2025-01-01T00:00:00.000Z",
        "name": "loader", "is_family": true, "description": "talks to a server",
        "object_marking_refs": [GREEN],
    }));
    let posted = common::https::post(
        &writer,
        taxii,
        &objects,
        &json!({ "objects": envelope }).to_string(),
    )
    .await;
    assert_eq!(posted.status, 202, "{}", posted.text());
    assert_eq!(posted.json()["success_count"], 15, "{}", posted.text());

    let page = common::https::get(&reader, taxii, &format!("{objects}?limit=1000")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let listed: Vec<String> = page.json()["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("malware--") || id.starts_with("indicator--"))
        .collect();
    assert_eq!(
        listed,
        ["malware--c3c3c3c3-0000-4000-8000-0000000000a0"],
        "an object naming the AMBER indicator reached the GREEN researcher"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

/// A CRL that revokes the node's own certificate was put in force without a word: the
/// node ran on, its partners refusing it, while `status` and the console showed its
/// certificate as valid for months. The certificate row now names the CRL's issuer
/// (`Admin.Certificates`, `entente status`, the console and
/// `entente_certificate_revoked`), and the node logs an error at start and at each
/// reload that keeps it in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_revoking_the_nodes_own_certificate_is_shown() {
    let pki = Pki::new();
    let hq = pki.node(HQ);
    pki.client("admin.ops");
    let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq"));
    text.push_str("\n[[client]]\nid = \"admin.ops\"\nrole = \"admin\"\n");
    let path = pki.path().join("hq.toml");
    std::fs::write(&path, &text).unwrap();
    let node = common::start(&path).await;
    let ops = common::connect(&pki, &node, "admin.ops").await;
    let own_row = |answer: entente::rpc::proto::CertificatesResponse| {
        answer
            .certificates
            .into_iter()
            .find(|c| c.role == "own")
            .expect("the node's own certificate is listed")
    };
    assert_eq!(own_row(ops.certificates().await.unwrap()).revoked_by, "");

    let crl = pki.certs.revoke(&hq).unwrap();
    let mut text = common::node_toml(&pki, &hq, &pki.path().join("data-hq"))
        .crl(&crl)
        .render();
    text.push_str("\n[[client]]\nid = \"admin.ops\"\nrole = \"admin\"\n");
    std::fs::write(&path, &text).unwrap();
    node.reload_policy().expect("reload");
    let row = own_row(ops.certificates().await.unwrap());
    assert!(!row.revoked_by.is_empty(), "{row:?}");
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
