//! End-to-end identity and transport tests: real nodes on port 0, real mutual TLS,
//! a PKI generated at test time.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Pki, client, hello, peer, start, write_config};
use entente::NodeId;
use entente::certs::{CertDir, Usage, Validity};
use entente::transport::{TlsMaterial, TlsPaths};

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn two_nodes_say_hello_both_ways() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    // Each node names the other; addresses are placeholders until both are bound,
    // and Hello needs only the caller's identity.
    let hq_node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    let berlin_node = start(&write_config(
        &pki,
        &berlin,
        &[peer("redmond.hq", "127.0.0.1:1")],
        &[],
    ))
    .await;

    let from_hq = hello(&pki.material(&hq), berlin_node.local_addr(), &berlin)
        .await
        .unwrap();
    assert_eq!(from_hq.node_id, "berlin.office");
    assert_eq!(from_hq.caller_id, "redmond.hq");
    assert_eq!(from_hq.caller_role, "peer");
    assert_eq!(from_hq.protocol_version, entente::rpc::PROTOCOL_VERSION);

    let from_berlin = hello(&pki.material(&berlin), hq_node.local_addr(), &hq)
        .await
        .unwrap();
    assert_eq!(from_berlin.node_id, "redmond.hq");
    assert_eq!(from_berlin.caller_id, "berlin.office");

    hq_node.shutdown(DEADLINE).await.unwrap();
    berlin_node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn a_client_is_identified_with_its_role() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let researcher = pki.client("researcher.uni-x");
    let node = start(&write_config(
        &pki,
        &hq,
        &[client("researcher.uni-x", "read_only")],
        &[],
    ))
    .await;
    let answer = hello(&pki.material(&researcher), node.local_addr(), &hq)
        .await
        .unwrap();
    assert_eq!(answer.caller_id, "researcher.uni-x");
    assert_eq!(answer.caller_role, "read_only");
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;

    // Same id, but issued by a rogue CA; it trusts our CA so only the server's check can stop it.
    let rogue = Pki::new();
    let impostor = rogue.node("berlin.office");
    let material = TlsMaterial::load(
        &TlsPaths {
            cert: rogue.certs.cert_path("berlin.office"),
            key: rogue.certs.key_path("berlin.office"),
            trust_anchors: vec![pki.ca_cert()],
            crls: vec![],
        },
        &impostor,
    )
    .unwrap();
    let err = hello(&material, node.local_addr(), &hq).await.unwrap_err();
    // The rogue CA has the same name as ours, so the server finds the issuer by name
    // and the signature check fails (DecryptError); with another name it is UnknownCA.
    assert!(
        err.contains("DecryptError") || err.contains("UnknownCA"),
        "{err}"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    let berlin = NodeId::new("berlin.office").unwrap();
    let now = time::OffsetDateTime::now_utc();
    pki.certs
        .issue(
            &berlin,
            &Usage::Node {
                ips: vec![],
                dns: vec![],
            },
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let err = hello(&pki.material(&berlin), node.local_addr(), &hq)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateExpired"), "{err}");
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn revoked_certificate_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let singapore = pki.node("singapore.office");
    let crl = pki.certs.revoke(&berlin).unwrap();
    let node = start(&write_config(
        &pki,
        &hq,
        &[
            peer("berlin.office", "127.0.0.1:1"),
            peer("singapore.office", "127.0.0.1:1"),
        ],
        &[crl],
    ))
    .await;
    let err = hello(&pki.material(&berlin), node.local_addr(), &hq)
        .await
        .unwrap_err();
    assert!(err.contains("CertificateRevoked"), "{err}");
    // The CRL does not harm a certificate it does not list.
    hello(&pki.material(&singapore), node.local_addr(), &hq)
        .await
        .unwrap();
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn connection_without_client_certificate_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let node = start(&write_config(&pki, &hq, &[], &[])).await;

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
    config.alpn_protocols = vec![b"h2".to_vec()];
    let result = entente::transport::connect(
        std::sync::Arc::new(config),
        &node.local_addr().to_string(),
        &hq,
    )
    .await;
    let err = match result {
        Err(e) => e.to_string(),
        Ok(channel) => {
            let mut client = entente::rpc::proto::federation_client::FederationClient::new(channel);
            client
                .hello(entente::rpc::proto::HelloRequest {
                    node_id: String::new(),
                    protocol_version: 1,
                    capabilities: vec![],
                })
                .await
                .expect_err("hello without a client certificate must fail")
                .to_string()
        }
    };
    assert!(err.contains("CertificateRequired"), "{err}");
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn valid_certificate_of_unconfigured_id_is_refused() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let stranger = pki.node("stranger.example");
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    let err = hello(&pki.material(&stranger), node.local_addr(), &hq)
        .await
        .unwrap_err();
    assert!(
        err.contains("refused certificate stranger.example (serial "),
        "{err}"
    );
    assert!(err.contains("does not list this id"), "{err}");
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn a_server_with_another_id_is_refused_by_the_client() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    // berlin expects to reach singapore.office at hq's address: the name check fails.
    let singapore = NodeId::new("singapore.office").unwrap();
    let err = hello(&pki.material(&berlin), node.local_addr(), &singapore)
        .await
        .unwrap_err();
    assert!(
        err.contains("not valid for name \"singapore.office\""),
        "{err}"
    );
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn role_limits_are_enforced_per_service() {
    use entente::rpc::proto::federation_client::FederationClient;
    use entente::rpc::proto::intel_client::IntelClient;
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let researcher = pki.client("researcher.uni-x");
    let berlin = pki.node("berlin.office");
    let node = start(&write_config(
        &pki,
        &hq,
        &[
            client("researcher.uni-x", "read_only"),
            peer("berlin.office", "127.0.0.1:1"),
        ],
        &[],
    ))
    .await;
    let addr = node.local_addr().to_string();

    let channel = entente::transport::connect(
        pki.material(&researcher).client_config().unwrap(),
        &addr,
        &hq,
    )
    .await
    .unwrap();
    // A client may not pull the federation feed.
    let status = FederationClient::new(channel.clone())
        .pull(entente::rpc::proto::PullRequest {
            cursor: Vec::new(),
            follow: false,
            protocol_version: entente::rpc::PROTOCOL_VERSION,
            resume: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A read-only client may not publish.
    let status = IntelClient::new(channel)
        .publish(tokio_stream::iter(vec![
            entente::rpc::proto::PublishRequest::default(),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // A peer node may not use the client service.
    let channel =
        entente::transport::connect(pki.material(&berlin).client_config().unwrap(), &addr, &hq)
            .await
            .unwrap();
    let status = IntelClient::new(channel)
        .query(entente::rpc::proto::QueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    node.shutdown(DEADLINE).await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served_to_authenticated_callers() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let researcher = pki.client("researcher.uni-x");
    let node = start(&write_config(
        &pki,
        &hq,
        &[client("researcher.uni-x", "read_only")],
        &[],
    ))
    .await;
    let channel = entente::transport::connect(
        pki.material(&researcher).client_config().unwrap(),
        &node.local_addr().to_string(),
        &hq,
    )
    .await
    .unwrap();

    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "entente.v1.Federation".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "entente.v1.Federation",
        "entente.v1.Intel",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    node.shutdown(DEADLINE).await.unwrap();
}

#[test]
fn revocation_register_grows_and_crl_lists_every_serial() {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertDir::new(dir.path());
    certs.create_ca("ca", Validity::days_from_now(1)).unwrap();
    let a = NodeId::new("a.example").unwrap();
    let b = NodeId::new("b.example").unwrap();
    certs
        .issue(&a, &Usage::Client, Validity::days_from_now(1))
        .unwrap();
    certs
        .issue(&b, &Usage::Client, Validity::days_from_now(1))
        .unwrap();
    certs.revoke(&a).unwrap();
    let crl_path = certs.revoke(&b).unwrap();
    let crls = entente::transport::files::read_crls(&crl_path).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(crls[0].as_ref()).unwrap();
    let listed: Vec<Vec<u8>> = crl
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    for id in [&a, &b] {
        let serial = entente::certs::certificate_serial(&certs.cert_path(id.as_str())).unwrap();
        assert!(listed.contains(&serial), "{id} not in CRL");
    }
    assert_eq!(listed.len(), 2);
    // Revoking again does not duplicate the entry.
    certs.revoke(&a).unwrap();
    let crls = entente::transport::files::read_crls(&certs.crl_path()).unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(crls[0].as_ref()).unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 2);
}

/// Connects with `tls` and reads what the server sends first; whether the handshake
/// resumed a session and whether the server went on to talk (it was admitted).
async fn resume_probe(
    tls: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
) -> (Option<rustls::HandshakeKind>, bool) {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("redmond.hq").unwrap();
    let Ok(mut stream) = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
    else {
        return (None, false);
    };
    let kind = stream.get_ref().1.handshake_kind();
    let mut buf = [0u8; 64];
    let talked = matches!(
        tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await,
        Ok(Ok(n)) if n > 0
    );
    (kind, talked)
}

#[tokio::test]
async fn a_revoked_certificate_cannot_come_back_by_resuming_a_tls_session() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let config = write_config(&pki, &hq, &[peer("berlin.office", "127.0.0.1:1")], &[]);
    let node = start(&config).await;
    let mut tls = (*pki.material(&berlin).client_config().unwrap()).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    // The client keeps its sessions to resume them, as an attacker's would.
    tls.resumption = rustls::client::Resumption::default();
    let tls = Arc::new(tls);
    let (_, talked) = resume_probe(tls.clone(), node.local_addr()).await;
    assert!(talked, "admitted before the revocation");
    let crl = pki.certs.revoke(&berlin).unwrap();
    write_config(&pki, &hq, &[peer("berlin.office", "127.0.0.1:1")], &[crl]);
    node.reload_policy().unwrap();
    let (kind, talked) = resume_probe(tls.clone(), node.local_addr()).await;
    assert!(!talked, "a revoked certificate was admitted ({kind:?})");
    node.shutdown(DEADLINE).await.unwrap();
}

/// With two trust anchors, a CRL of one CA revokes only that CA's certificates: the
/// other CA's, for which no CRL is in force, still pass. (A CRL a partner's CA signed,
/// offered by that partner, must not lock out this federation's own certificates.)
#[tokio::test]
async fn a_crl_of_one_ca_leaves_the_other_cas_certificates_alone() {
    common::init_logging();
    let pki = Pki::new();
    let partner = Pki::named("Partner CA");
    let hq = pki.node("redmond.hq");
    let alice = pki.client("analyst.alice");
    let gone = pki.client("old.laptop");
    let tool = partner.client("tool.partner");
    // The partner's CA revokes one of its own certificates; the node holds that CRL.
    let stray = partner.client("stray.partner");
    let crl = partner.certs.revoke(&stray).unwrap();
    let config = pki.path().join("hq.toml");
    common::node_toml(&pki, &hq, &pki.path().join("data"))
        .anchor(partner.ca_cert())
        .crl(&crl)
        .entry(pinned("analyst.alice", "analyst", pki.ca_cert()))
        .entry(pinned("old.laptop", "analyst", pki.ca_cert()))
        .entry(pinned("tool.partner", "read_only", partner.ca_cert()))
        .entry(pinned("stray.partner", "read_only", partner.ca_cert()))
        .write(&config)
        .unwrap();
    let node = start(&config).await;
    let trusting_hq = |who: &Pki, id: &NodeId| issued_by(who, id, &pki);
    for (who, id) in [(&pki, &alice), (&pki, &gone), (&partner, &tool)] {
        let answer = hello(&trusting_hq(who, id), node.local_addr(), &hq).await;
        assert!(answer.is_ok(), "{id}: {answer:?}");
    }
    let refused = hello(&trusting_hq(&partner, &stray), node.local_addr(), &hq)
        .await
        .unwrap_err();
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    node.shutdown(DEADLINE).await.unwrap();
}

/// A certificate the CA issued for a client under a node's id does not speak as that
/// node: under the node's own id it is not the operator (another key), and under a
/// peer's id it is not that peer (a client certificate).
#[tokio::test]
async fn a_client_certificate_under_a_nodes_id_is_neither_the_operator_nor_the_peer() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    let ca = pki.certs.load_ca().unwrap();
    let impostor = |id: &NodeId| {
        let issued = ca
            .issue(id, &Usage::Client, Validity::days_from_now(30))
            .unwrap();
        let dir = pki.path().join(format!("impostor-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, issued.cert_pem).unwrap();
        std::fs::write(&key, issued.key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        TlsMaterial::load(
            &TlsPaths {
                cert,
                key,
                trust_anchors: vec![pki.ca_cert()],
                crls: vec![],
            },
            id,
        )
        .unwrap()
    };
    for id in [&hq, &berlin] {
        let answer = hello(&impostor(id), node.local_addr(), &hq).await;
        assert!(answer.is_err(), "a client certificate as {id}: {answer:?}");
    }
    // The real ones still work.
    for id in [&hq, &berlin] {
        hello(&pki.material(id), node.local_addr(), &hq)
            .await
            .unwrap();
    }
    node.shutdown(DEADLINE).await.unwrap();
}

/// A node certificate issued without an extended key usage extension (any use, as many
/// organisations' CAs issue them) is a node certificate: the peer is admitted.
#[tokio::test]
async fn a_node_certificate_without_extended_key_usage_is_admitted_as_the_node() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = NodeId::new("berlin.office").unwrap();
    let node = start(&write_config(
        &pki,
        &hq,
        &[peer("berlin.office", "127.0.0.1:1")],
        &[],
    ))
    .await;
    let ca_pem = std::fs::read_to_string(pki.ca_cert()).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.certs.key_path("ca")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["berlin.office".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "berlin.office");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = pki.path().join("no-eku");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let material = TlsMaterial::load(
        &TlsPaths {
            cert: cert_path,
            key: key_path,
            trust_anchors: vec![pki.ca_cert()],
            crls: vec![],
        },
        &berlin,
    )
    .unwrap();
    let answer = hello(&material, node.local_addr(), &hq).await.unwrap();
    assert_eq!(answer.caller_id, "berlin.office");
    node.shutdown(DEADLINE).await.unwrap();
}

/// Two CAs of one name (every `certs ca` made the same name before): each one's CRL
/// revokes its own certificates only, both are in force, and neither turns the other
/// CA's certificates away.
#[tokio::test]
async fn crls_of_two_cas_of_one_name_each_revoke_only_their_own() {
    let pki = Pki::new();
    let partner = Pki::new();
    let hq = pki.node("redmond.hq");
    let alice = pki.client("analyst.alice");
    let gone = pki.client("old.laptop");
    let tool = partner.client("tool.partner");
    let stray = partner.client("stray.partner");
    let ours = pki.certs.revoke(&gone).unwrap();
    let theirs = partner.certs.revoke(&stray).unwrap();
    let config = pki.path().join("hq.toml");
    common::node_toml(&pki, &hq, &pki.path().join("data"))
        .anchor(partner.ca_cert())
        .crl(&ours)
        .crl(&theirs)
        .entry(pinned("analyst.alice", "analyst", pki.ca_cert()))
        .entry(pinned("old.laptop", "analyst", pki.ca_cert()))
        .entry(pinned("tool.partner", "read_only", partner.ca_cert()))
        .entry(pinned("stray.partner", "read_only", partner.ca_cert()))
        .write(&config)
        .unwrap();
    let node = start(&config).await;
    let trusting_hq = |who: &Pki, id: &NodeId| issued_by(who, id, &pki);
    for (who, id) in [(&pki, &alice), (&partner, &tool)] {
        let answer = hello(&trusting_hq(who, id), node.local_addr(), &hq).await;
        assert!(answer.is_ok(), "{id}: {answer:?}");
    }
    for (who, id) in [(&pki, &gone), (&partner, &stray)] {
        let refused = hello(&trusting_hq(who, id), node.local_addr(), &hq)
            .await
            .unwrap_err();
        assert!(refused.contains("CertificateRevoked"), "{id}: {refused}");
    }
    // The node's own operator, with both CRLs in its client configuration, reaches it.
    let operator = TlsMaterial::load(
        &TlsPaths {
            cert: pki.certs.cert_path("redmond.hq"),
            key: pki.certs.key_path("redmond.hq"),
            trust_anchors: vec![pki.ca_cert(), partner.ca_cert()],
            crls: vec![ours.clone(), theirs.clone()],
        },
        &hq,
    )
    .unwrap();
    hello(&operator, node.local_addr(), &hq).await.unwrap();
    node.shutdown(DEADLINE).await.unwrap();
}

/// Bundles are signed by nodes: a client certificate the CA issued under a node's id is
/// no origin's signature.
#[test]
fn a_client_certificate_is_not_trusted_as_a_bundle_signer() {
    use entente::crypto::SignerTrust;
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let berlin = pki.node("berlin.office");
    let trust = pki.material(&hq).signer_trust().unwrap();
    let now = entente::engine::now_ms();
    let node_cert =
        entente::transport::files::read_certificates(&pki.certs.cert_path("berlin.office"))
            .unwrap();
    assert_eq!(
        trust.verify_signer(node_cert[0].as_ref(), now).unwrap(),
        berlin
    );
    let issued = pki
        .certs
        .load_ca()
        .unwrap()
        .issue(&berlin, &Usage::Client, Validity::days_from_now(30))
        .unwrap();
    let client_cert = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .unwrap();
    let refused = trust.verify_signer(client_cert.as_ref(), now);
    assert!(refused.is_err(), "{refused:?}");
}

/// A `[[client]]` entry pinned to `anchor`.
fn pinned(id: &str, role: &str, anchor: std::path::PathBuf) -> entente::config::builder::Entry {
    entente::config::builder::Entry::client(id, role).policy(
        entente::config::builder::Policy::default().line(&format!(
            "trust_anchor = {}",
            entente::config::builder::quote(&anchor.display().to_string())
        )),
    )
}

/// `id`'s certificate and key as `who` issued them, trusting `server`'s CA.
fn issued_by(who: &Pki, id: &NodeId, server: &Pki) -> TlsMaterial {
    TlsMaterial::load(
        &TlsPaths {
            cert: who.certs.cert_path(id.as_str()),
            key: who.certs.key_path(id.as_str()),
            trust_anchors: vec![server.ca_cert()],
            crls: vec![],
        },
        id,
    )
    .unwrap()
}
