//! Refused handshakes explain themselves at both ends: the node logs the certificate's
//! id, serial and the reason in words; the client says which certificate was refused,
//! by which node and why. Real `entente serve` processes over real mutual TLS, a PKI
//! generated at test time.

mod common;

use std::process::Command;

use common::served::Served;
use common::{Pki, client, hello, write_config};
use entente::NodeId;
use entente::certs::{Usage, Validity};
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

fn serial_of(pki: &Pki, id: &NodeId) -> String {
    entente::certs::certificate_serial(&pki.certs.cert_path(id.as_str()))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn refused_certificates_are_named_with_their_serial_and_reason_at_both_ends() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let known = pki.client("analyst.known");
    let unknown = pki.client("tool.unknown");
    let revoked = pki.client("analyst.revoked");
    let expired = NodeId::new("analyst.expired").unwrap();
    let now = OffsetDateTime::now_utc();
    pki.certs
        .issue(
            &expired,
            &Usage::Client,
            Validity {
                not_before: now - time::Duration::days(10),
                not_after: now - time::Duration::days(1),
            },
        )
        .unwrap();
    let crl = pki.certs.revoke(&revoked).unwrap();
    let config = write_config(
        &pki,
        &hq,
        &[
            client("analyst.known", "read_only"),
            client("analyst.revoked", "read_only"),
            client("analyst.expired", "read_only"),
        ],
        &[crl],
    );
    let node = Served::start(&config);
    let addr: std::net::SocketAddr = node.addr.parse().unwrap();

    // A configured, valid certificate still gets in.
    let answer = hello(&pki.material(&known), addr, &hq).await.unwrap();
    assert_eq!(answer.caller_id, "analyst.known");

    let cases = [
        (
            &unknown,
            "does not list this id",
            "is not a configured peer or client",
        ),
        (&revoked, "is revoked", "the certificate is revoked"),
        (&expired, "has expired", "the certificate expired at"),
    ];
    for (who, client_says, server_says) in cases {
        let serial = serial_of(&pki, who);
        let err = hello(&pki.material(who), addr, &hq).await.unwrap_err();
        assert!(
            err.contains(&format!(
                "redmond.hq at {addr} refused certificate {who} (serial {serial})"
            )),
            "{err}"
        );
        assert!(err.contains(client_says), "{err}");
        let line = node.wait_for_log(&[
            "connection refused",
            &format!("id={who}"),
            &format!("serial={serial}"),
            server_says,
        ]);
        assert!(!line.contains("OtherError"), "{line}");
    }

    // No certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_cert()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(entente::transport::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let err = entente::transport::connect(std::sync::Arc::new(config), &node.addr, &hq)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refused certificate (none): no client certificate was presented"),
        "{err}"
    );
    node.wait_for_log(&["connection refused", "no client certificate was presented"]);
}

#[test]
fn the_cli_names_the_refused_certificate() {
    let pki = Pki::new();
    let hq = pki.node("redmond.hq");
    let stranger = pki.node("stranger.node");
    let node = Served::start(&write_config(&pki, &hq, &[], &[]));
    let stranger_config = write_config(&pki, &stranger, &[], &[]);
    let out = Command::new(env!("CARGO_BIN_EXE_entente"))
        .args(["status", "--config"])
        .arg(&stranger_config)
        .args(["--node", &format!("redmond.hq@{}", node.addr)])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let serial = serial_of(&pki, &stranger);
    assert!(
        stderr.contains(&format!(
            "refused certificate stranger.node (serial {serial})"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("does not list this id"), "{stderr}");
    node.wait_for_log(&[
        "connection refused",
        "id=stranger.node",
        &format!("serial={serial}"),
    ]);
}
