//! Access decided now, not at the handshake: real nodes on port 0, real mutual TLS, a
//! PKI generated at test time. A reload that removes or demotes a partner, a CRL that
//! revokes its certificate, and the certificate's own expiry each end the access of an
//! already-open connection (requests refused, streams ended with a clear status, the
//! connection closed within a second); a partner's certificate must chain to the trust
//! anchor its configuration names.

mod common;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Pki, client, hello, peer, start, write_config};
use entente::certs::{CertDir, Usage, Validity};
use entente::client::{ClientError, NodeClient};
use entente::model::ItemId;
use entente::rpc::proto::federation_client::FederationClient;
use entente::rpc::proto::{
    ItemFilter, PublishRequest, PullRequest, PullResponse, StoredItem, pull_response,
};
use entente::transport::{TlsMaterial, TlsPaths};
use entente::wire::{self, Tlp};
use entente::{Node, NodeId};

/// Bound on any single step of a test.
const DEADLINE: Duration = Duration::from_secs(10);
/// How soon a connection that lost access must be gone.
const WITHDRAWN_WITHIN: Duration = Duration::from_secs(1);
const HQ: &str = "redmond.hq";

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {DEADLINE:?}"))
}

/// Polls `condition` until it holds, failing after `deadline`.
async fn eventually(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not true within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connect(pki: &Pki, who: &NodeId, node: &Node, hq: &NodeId) -> NodeClient {
    connect_as(&pki.material(who), node, hq).await
}

async fn connect_as(material: &TlsMaterial, node: &Node, hq: &NodeId) -> NodeClient {
    let tls = material.client_config().expect("client TLS config");
    within(
        "connect",
        NodeClient::connect(tls, &material.id, &node.local_addr().to_string(), hq),
    )
    .await
    .unwrap_or_else(|e| panic!("{} cannot connect: {e}", material.id))
}

fn indicator(value: &str) -> wire::Item {
    wire::Item {
        id: ItemId::new_random().to_string(),
        modified_unix_ms: 0,
        tlp: Tlp::Green as i32,
        tags: vec![],
        kind: Some(wire::item::Kind::Indicator(wire::Indicator {
            indicator_type: "domain".to_owned(),
            value: value.to_owned(),
            ..Default::default()
        })),
    }
}

async fn publish(client: &NodeClient, value: &str) -> Result<(), ClientError> {
    let request = PublishRequest {
        items: vec![indicator(value)],
        distribution: None,
        groups: vec![],
    };
    within("publish", client.publish(tokio_stream::iter(vec![request])))
        .await
        .map(|_| ())
}

async fn query(client: &NodeClient) -> Result<(), ClientError> {
    within("query", client.query(everything(), 10, vec![]))
        .await
        .map(|_| ())
}

fn everything() -> ItemFilter {
    ItemFilter {
        include_expired: true,
        ..Default::default()
    }
}

/// Asserts a call was refused; when the connection was still open the refusal is the
/// node's per-request check, with its reason (once the node has closed the connection,
/// the client's reconnection is refused at the handshake instead).
fn assert_refused(what: &str, result: Result<(), ClientError>, reason: &str) {
    match result {
        Ok(()) => panic!("{what} was served on a connection that lost access"),
        Err(ClientError::Status { code, message, .. })
            if code == tonic::Code::PermissionDenied || code == tonic::Code::Unauthenticated =>
        {
            assert!(
                message.contains("withdrawn") || message.contains("may not"),
                "{what}: {message}"
            );
            assert!(
                message.contains(reason) || message.contains("role"),
                "{what}: {message}"
            );
        }
        Err(ClientError::Status { code, message, .. }) => assert!(
            matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown),
            "{what}: unexpected {code:?}: {message}"
        ),
        Err(other) => panic!("{what}: unexpected error {other}"),
    }
}

/// Waits for the stream to end with an error status, at most until `by`; fails if it
/// yields an item or ends cleanly.
async fn ends_with_status<T: std::fmt::Debug>(
    what: &str,
    stream: &mut tonic::Streaming<T>,
    by: Instant,
) -> tonic::Status {
    let left = by.saturating_duration_since(Instant::now());
    match tokio::time::timeout(left, stream.message()).await {
        Err(_) => panic!("{what}: still open when it should have ended"),
        Ok(Ok(Some(item))) => panic!("{what}: unexpected message {item:?}"),
        Ok(Ok(None)) => panic!("{what}: ended without a status"),
        Ok(Err(status)) => status,
    }
}

async fn next_item(what: &str, stream: &mut tonic::Streaming<StoredItem>) -> StoredItem {
    match within(what, stream.message()).await {
        Ok(Some(item)) => item,
        other => panic!("{what}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_client_loses_its_open_connection_and_subscription() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let alice = pki.client("analyst.alice");
    let bob = pki.client("analyst.bob");
    let config = write_config(
        &pki,
        &hq,
        &[
            client("analyst.alice", "analyst"),
            client("analyst.bob", "analyst"),
        ],
        &[],
    );
    let node = start(&config).await;
    let alice_client = connect(&pki, &alice, &node, &hq).await;
    let bob_client = connect(&pki, &bob, &node, &hq).await;
    publish(&alice_client, "before.example.com").await.unwrap();
    query(&alice_client).await.unwrap();
    let mut subscription = within("subscribe", alice_client.subscribe(everything()))
        .await
        .unwrap();
    // The subscription is live: it receives what bob publishes.
    publish(&bob_client, "live.example.com").await.unwrap();
    next_item("alice's subscription", &mut subscription).await;
    assert_eq!(node.open_connections(), 2);

    write_config(&pki, &hq, &[client("analyst.bob", "analyst")], &[]);
    node.reload_policy().expect("reload");
    let reloaded = Instant::now();

    assert_refused(
        "publish after removal",
        publish(&alice_client, "after.example.com").await,
        "no longer configured",
    );
    assert_refused(
        "query after removal",
        query(&alice_client).await,
        "no longer configured",
    );
    let status = ends_with_status(
        "alice's subscription",
        &mut subscription,
        reloaded + WITHDRAWN_WITHIN,
    )
    .await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("access to this node was withdrawn: analyst.alice is no longer configured"),
        "{status:?}"
    );
    eventually(
        "alice's connection is closed",
        WITHDRAWN_WITHIN.saturating_sub(reloaded.elapsed()) + Duration::from_millis(50),
        || node.open_connections() == 1,
    )
    .await;
    // And she cannot come back; bob, still configured, is not affected.
    assert!(
        hello(&pki.material(&alice), node.local_addr(), &hq)
            .await
            .is_err()
    );
    query(&bob_client).await.unwrap();
    publish(&bob_client, "still.example.com").await.unwrap();
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_admin_loses_admin_and_write_access_at_once() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let ops = pki.client("admin.ops");
    let config = write_config(&pki, &hq, &[client("admin.ops", "admin")], &[]);
    let node = start(&config).await;
    let admin = connect(&pki, &ops, &node, &hq).await;
    let item = ItemId::new_random().to_string();
    // Authorised: the node answers that it does not hold the item.
    match within("explain", admin.explain("admin.ops", &item)).await {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::NotFound),
        other => panic!("explain as admin: {other:?}"),
    }
    publish(&admin, "admin.example.com").await.unwrap();

    write_config(&pki, &hq, &[client("admin.ops", "read_only")], &[]);
    node.reload_policy().expect("reload");
    let reloaded = Instant::now();

    match within("explain", admin.explain("admin.ops", &item)).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(
                message.contains("withdrawn") || message.contains("read_only"),
                "{message}"
            );
        }
        other => panic!("explain after demotion: {other:?}"),
    }
    match publish(&admin, "demoted.example.com").await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}")
        }
        other => panic!("publish after demotion: {other:?}"),
    }
    eventually(
        "the demoted admin's connection is closed",
        WITHDRAWN_WITHIN.saturating_sub(reloaded.elapsed()) + Duration::from_millis(50),
        || node.open_connections() == 0,
    )
    .await;
    // Reconnecting gives the new role: reads work, admin calls do not.
    let reader = connect(&pki, &ops, &node, &hq).await;
    query(&reader).await.unwrap();
    match within("explain", reader.explain("admin.ops", &item)).await {
        Err(ClientError::Status { code, message, .. }) => {
            assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
            assert!(message.contains("role read_only"), "{message}");
        }
        other => panic!("explain as read_only: {other:?}"),
    }
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_loses_its_follow_stream() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let berlin = pki.node("berlin.office");
    let singapore = pki.node("singapore.office");
    let config = write_config(
        &pki,
        &hq,
        &[
            peer("berlin.office", "127.0.0.1:1"),
            peer("singapore.office", "127.0.0.1:1"),
        ],
        &[],
    );
    let node = start(&config).await;
    let channel = entente::transport::connect(
        pki.material(&berlin).client_config().unwrap(),
        &node.local_addr().to_string(),
        &hq,
    )
    .await
    .unwrap();
    let mut pull = within(
        "pull",
        FederationClient::new(channel).pull(PullRequest {
            cursor: Vec::new(),
            follow: true,
            protocol_version: entente::rpc::PROTOCOL_VERSION,
            resume: None,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    // The first checkpoint says the stream is served and caught up; it then waits.
    let first = within("first checkpoint", pull.message()).await.unwrap();
    assert!(first.is_some());

    write_config(&pki, &hq, &[peer("singapore.office", "127.0.0.1:1")], &[]);
    node.reload_policy().expect("reload");
    let reloaded = Instant::now();
    // Checkpoints may still come; the stream must end with a status in time.
    let status = loop {
        let left = (reloaded + WITHDRAWN_WITHIN).saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, pull.message()).await {
            Err(_) => panic!("berlin's follow stream is still open"),
            Ok(Ok(Some(PullResponse {
                event: Some(pull_response::Event::Checkpoint(_)),
            }))) => continue,
            Ok(Ok(other)) => panic!("berlin's follow stream: unexpected {other:?}"),
            Ok(Err(status)) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("withdrawn: berlin.office is no longer configured"),
        "{status:?}"
    );
    eventually(
        "berlin's connection is closed",
        WITHDRAWN_WITHIN.saturating_sub(reloaded.elapsed()) + Duration::from_millis(50),
        || node.open_connections() == 0,
    )
    .await;
    hello(&pki.material(&singapore), node.local_addr(), &hq)
        .await
        .unwrap();
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_a_reloaded_crl_loses_its_connection() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let alice = pki.client("analyst.alice");
    let bob = pki.client("analyst.bob");
    // The CRL the configuration names starts out listing another certificate only.
    let spare = pki.client("spare.example");
    let crl = pki.certs.revoke(&spare).unwrap();
    let entries = [
        client("analyst.alice", "analyst"),
        client("analyst.bob", "analyst"),
    ];
    let config = write_config(&pki, &hq, &entries, std::slice::from_ref(&crl));
    let node = start(&config).await;
    let alice_client = connect(&pki, &alice, &node, &hq).await;
    let bob_client = connect(&pki, &bob, &node, &hq).await;
    query(&alice_client).await.unwrap();
    query(&bob_client).await.unwrap();
    let mut subscription = within("subscribe", alice_client.subscribe(everything()))
        .await
        .unwrap();
    publish(&bob_client, "live.example.com").await.unwrap();
    next_item("alice's subscription", &mut subscription).await;

    // A CRL file that cannot be read refuses the reload as a whole: nothing changes.
    let missing = pki.path().join("missing-crl.pem");
    write_config(&pki, &hq, &entries, &[crl.clone(), missing]);
    let problem = node
        .reload_policy()
        .expect_err("a missing CRL refuses the reload");
    assert!(problem.contains("missing-crl.pem"), "{problem}");
    query(&alice_client).await.unwrap();
    write_config(&pki, &hq, &entries, std::slice::from_ref(&crl));

    // Revoke alice in the same file; the configuration itself is unchanged.
    pki.certs.revoke(&alice).unwrap();
    node.reload_policy().expect("reload");
    let reloaded = Instant::now();
    assert_refused(
        "query after revocation",
        query(&alice_client).await,
        "revoked",
    );
    let status = ends_with_status(
        "alice's subscription",
        &mut subscription,
        reloaded + WITHDRAWN_WITHIN,
    )
    .await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("withdrawn: the certificate is revoked"),
        "{status:?}"
    );
    eventually(
        "alice's connection is closed",
        WITHDRAWN_WITHIN.saturating_sub(reloaded.elapsed()) + Duration::from_millis(50),
        || node.open_connections() == 1,
    )
    .await;
    // New handshakes with the revoked certificate are refused, without a restart. In
    // TLS 1.3 the server refuses after the client's side of the handshake is done, so a
    // client already writing may see a closed connection instead of the alert: every
    // attempt must fail, and the alert must be seen.
    let mut errors = Vec::new();
    while errors.len() < 10 {
        let err = hello(&pki.material(&alice), node.local_addr(), &hq)
            .await
            .expect_err("a revoked certificate must not complete a call");
        let revoked = err.contains("CertificateRevoked");
        errors.push(err);
        if revoked {
            break;
        }
    }
    assert!(
        errors
            .last()
            .is_some_and(|e| e.contains("CertificateRevoked")),
        "{errors:?}"
    );
    query(&bob_client).await.unwrap();
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_certificate_expires() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let brief = NodeId::new("analyst.brief").unwrap();
    let now = time::OffsetDateTime::now_utc();
    let expires = now + time::Duration::seconds(4);
    pki.certs
        .issue(
            &brief,
            &Usage::Client,
            Validity {
                not_before: now - time::Duration::hours(1),
                not_after: expires,
            },
        )
        .unwrap();
    let config = write_config(&pki, &hq, &[client("analyst.brief", "analyst")], &[]);
    let node = start(&config).await;
    let brief_client = connect(&pki, &brief, &node, &hq).await;
    query(&brief_client).await.unwrap();
    let mut subscription = within("subscribe", brief_client.subscribe(everything()))
        .await
        .unwrap();
    assert_eq!(node.open_connections(), 1);

    // The notAfter is whole seconds; the stream must end within a second of it.
    let expiry = Instant::now()
        + Duration::try_from(
            time::OffsetDateTime::from_unix_timestamp(expires.unix_timestamp()).unwrap()
                - time::OffsetDateTime::now_utc(),
        )
        .unwrap_or_default();
    let status = ends_with_status(
        "the subscription of an expiring certificate",
        &mut subscription,
        expiry + WITHDRAWN_WITHIN,
    )
    .await;
    assert!(
        Instant::now() + Duration::from_millis(100) >= expiry,
        "ended before the certificate expired: {status:?}"
    );
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert!(
        status
            .message()
            .contains("withdrawn: the certificate of analyst.brief expired"),
        "{status:?}"
    );
    eventually("the expired connection is closed", WITHDRAWN_WITHIN, || {
        node.open_connections() == 0
    })
    .await;
    assert_refused("query after expiry", query(&brief_client).await, "expired");
    node.shutdown(DEADLINE).await.unwrap();
}

/// A second CA, with another name, and a certificate it issues.
fn second_ca(dir: &Path) -> CertDir {
    let certs = CertDir::new(dir.join("second-ca"));
    certs
        .create_ca("Second federation CA", Validity::days_from_now(30))
        .unwrap();
    certs
}

/// A node configuration trusting `anchors`, with `clients` given as (id, role, pinned anchor).
fn config_with_anchors(
    pki: &Pki,
    hq: &NodeId,
    anchors: &[PathBuf],
    clients: &[(&str, &str, Option<&Path>)],
) -> PathBuf {
    let mut text = format!(
        "[node]\nid = \"{hq}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\ncert = \"{cert}\"\nkey = \"{key}\"\ntrust_anchors = [{anchors}]\n",
        data = pki.path().join("data-anchors").display(),
        cert = pki.certs.cert_path(hq.as_str()).display(),
        key = pki.certs.key_path(hq.as_str()).display(),
        anchors = anchors
            .iter()
            .map(|a| format!("\"{}\"", a.display()))
            .collect::<Vec<_>>()
            .join(", "),
    );
    for (id, role, anchor) in clients {
        text.push_str(&format!("\n[[client]]\nid = \"{id}\"\nrole = \"{role}\"\n"));
        if let Some(anchor) = anchor {
            text.push_str(&format!("trust_anchor = \"{}\"\n", anchor.display()));
        }
    }
    let path = pki.path().join("anchors.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_is_pinned_to_its_trust_anchor() {
    common::init_logging();
    let pki = Pki::new();
    let hq = pki.node(HQ);
    let second = second_ca(pki.path());
    let ca1 = pki.ca_cert();
    let ca2 = second.ca_cert_path();
    let anchors = [ca1.clone(), ca2.clone()];

    // With two anchors, a partner that names none is refused at load.
    let unpinned = config_with_anchors(&pki, &hq, &anchors, &[("analyst.x", "analyst", None)]);
    let err = entente::Config::load(&unpinned).unwrap_err().to_string();
    assert!(err.contains("client[0].trust_anchor"), "{err}");
    // And one that names a file that is not an anchor.
    let stray = pki.path().join("stray.crt");
    std::fs::copy(&ca2, &stray).unwrap();
    let wrong = config_with_anchors(
        &pki,
        &hq,
        &anchors,
        &[("analyst.x", "analyst", Some(&stray))],
    );
    let err = entente::Config::load(&wrong).unwrap_err().to_string();
    assert!(err.contains("is not one of node.trust_anchors"), "{err}");

    // analyst.x is pinned to CA1; analyst.y (from CA2) to CA2.
    let x = pki.client("analyst.x");
    let y = NodeId::new("analyst.y").unwrap();
    second
        .issue(&y, &Usage::Client, Validity::days_from_now(30))
        .unwrap();
    let config = config_with_anchors(
        &pki,
        &hq,
        &anchors,
        &[
            ("analyst.x", "analyst", Some(&ca1)),
            ("analyst.y", "analyst", Some(&ca2)),
        ],
    );
    let node = start(&config).await;
    hello(&pki.material(&x), node.local_addr(), &hq)
        .await
        .unwrap();
    let material_y = TlsMaterial::load(
        &TlsPaths {
            cert: second.cert_path("analyst.y"),
            key: second.key_path("analyst.y"),
            trust_anchors: vec![ca1.clone()],
            crls: vec![],
        },
        &y,
    )
    .unwrap();
    hello(&material_y, node.local_addr(), &hq).await.unwrap();

    // A certificate for analyst.x issued by CA2, which the node trusts, is refused:
    // analyst.x's identity belongs to CA1.
    second
        .issue(&x, &Usage::Client, Validity::days_from_now(30))
        .unwrap();
    let impostor = TlsMaterial::load(
        &TlsPaths {
            cert: second.cert_path("analyst.x"),
            key: second.key_path("analyst.x"),
            trust_anchors: vec![ca1.clone()],
            crls: vec![],
        },
        &x,
    )
    .unwrap();
    // The server refuses after the client's side of the TLS 1.3 handshake is done; the
    // client waits for the server's first bytes, so it reads the alert.
    let err = hello(&impostor, node.local_addr(), &hq).await.unwrap_err();
    assert!(
        err.contains("refused certificate analyst.x (serial ")
            && err.contains("pins it to another trust anchor"),
        "{err}"
    );

    // Re-pinning analyst.y to CA1 at a reload closes its open connection.
    let y_client = connect_as(&material_y, &node, &hq).await;
    query(&y_client).await.unwrap();
    config_with_anchors(
        &pki,
        &hq,
        &anchors,
        &[
            ("analyst.x", "analyst", Some(&ca1)),
            ("analyst.y", "analyst", Some(&ca1)),
        ],
    );
    node.reload_policy().expect("reload");
    assert_refused(
        "query after re-pinning",
        query(&y_client).await,
        "does not chain to its configured trust anchor",
    );
    eventually("analyst.y's connection is closed", WITHDRAWN_WITHIN, || {
        node.open_connections() == 0
    })
    .await;
    node.shutdown(DEADLINE).await.unwrap();
}
