//! A CRL travels through the federation: revoked at the CA and handed to one node, it is
//! put in force on that node's peers without a restart, and they refuse the revoked
//! certificate. Three nodes over real mutual TLS on port 0, a PKI generated at test time.

mod common;

use std::time::{Duration, Instant};

use common::{Pki, client, hello, peer, start, write_config};
use entente::client::NodeClient;
use rustls::pki_types::pem::PemObject;

const DEADLINE: Duration = Duration::from_secs(30);

fn crl_der(path: &std::path::Path) -> Vec<u8> {
    rustls::pki_types::CertificateRevocationListDer::from_pem_file(path)
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn a_crl_handed_to_one_node_reaches_its_peers() {
    let pki = Pki::new();
    let a = pki.node("hq.a");
    let b = pki.node("office.b");
    let c = pki.node("office.c");
    let gone = pki.client("analyst.gone");
    let kept = pki.client("analyst.kept");
    let clients = || {
        vec![
            client("analyst.gone", "read_only"),
            client("analyst.kept", "read_only"),
        ]
    };
    let mut b_entries = clients();
    b_entries.push(peer("hq.a", "127.0.0.1:1"));
    let node_b = start(&write_config(&pki, &b, &b_entries, &[])).await;
    let mut c_entries = clients();
    c_entries.push(peer("hq.a", "127.0.0.1:1"));
    let node_c = start(&write_config(&pki, &c, &c_entries, &[])).await;
    let mut a_entries = clients();
    a_entries.push(peer("office.b", &node_b.local_addr().to_string()));
    a_entries.push(peer("office.c", &node_c.local_addr().to_string()));
    let node_a = start(&write_config(&pki, &a, &a_entries, &[])).await;

    for (node, id) in [(&node_b, &b), (&node_c, &c)] {
        hello(&pki.material(&gone), node.local_addr(), id)
            .await
            .unwrap();
    }

    // One command at the CA, the CRL handed to one node by its operator.
    let crl = pki.certs.revoke(&gone).unwrap();
    let der = crl_der(&crl);
    let operator = NodeClient::connect(
        pki.material(&a).client_config().unwrap(),
        &a,
        &node_a.local_addr().to_string(),
        &a,
    )
    .await
    .unwrap();
    assert!(operator.apply_crl(der.clone()).await.unwrap());
    // The same CRL again is not newer: nothing happens.
    assert!(!operator.apply_crl(der.clone()).await.unwrap());

    // The peers refuse the revoked certificate within the deadline; others still pass.
    for (node, id) in [(&node_b, &b), (&node_c, &c)] {
        let start = Instant::now();
        loop {
            match hello(&pki.material(&gone), node.local_addr(), id).await {
                Err(err) if err.contains("revoked") => break,
                other => assert!(
                    start.elapsed() < DEADLINE,
                    "{id} still admits the revoked certificate: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hello(&pki.material(&kept), node.local_addr(), id)
            .await
            .unwrap();
    }

    // A CRL signed by another CA, under the same issuer name, is refused.
    let other = Pki::new();
    let stranger = other.client("analyst.kept");
    let forged = crl_der(&other.certs.revoke(&stranger).unwrap());
    let err = operator.apply_crl(forged).await.unwrap_err().to_string();
    assert!(err.contains("not signed by any trust anchor"), "{err}");
    // Garbage is refused too.
    let err = operator
        .apply_crl(vec![0x30, 0x03, 0x02, 0x01])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable CRL"), "{err}");

    for node in [node_a, node_b, node_c] {
        node.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}

/// Revoking a member is one command at the CA: `certs revoke --push-to` rewrites the CRL
/// and hands it to one node, whose peer then refuses the certificate too.
#[tokio::test]
async fn revoke_with_push_to_is_one_command_at_the_ca() {
    let pki = Pki::new();
    let a = pki.node("hq.a");
    let b = pki.node("office.b");
    let gone = pki.client("analyst.gone");
    let kept = pki.client("analyst.kept");
    let clients = || {
        vec![
            client("analyst.gone", "read_only"),
            client("analyst.kept", "read_only"),
        ]
    };
    let mut b_entries = clients();
    b_entries.push(peer("hq.a", "127.0.0.1:1"));
    let node_b = start(&write_config(&pki, &b, &b_entries, &[])).await;
    let mut a_entries = clients();
    a_entries.push(peer("office.b", &node_b.local_addr().to_string()));
    let node_a = start(&write_config(&pki, &a, &a_entries, &[])).await;
    hello(&pki.material(&gone), node_b.local_addr(), &b)
        .await
        .unwrap();

    // The CA operator reaches hq.a with hq.a's own certificate (its operator identity).
    let operator = pki.path().join("operator.toml");
    std::fs::write(
        &operator,
        format!(
            "[client]\nid = \"{a}\"\ncert = \"{cert}\"\nkey = \"{key}\"\ntrust_anchors = [\"{ca}\"]\ncrls = []\nnode = \"{addr}\"\nnode_id = \"{a}\"\n",
            cert = pki.certs.cert_path(a.as_str()).display(),
            key = pki.certs.key_path(a.as_str()).display(),
            ca = pki.ca_cert().display(),
            addr = node_a.local_addr(),
        ),
    )
    .unwrap();
    let ca_dir = pki.path().join("certs");
    let gone_id = gone.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_entente"))
            .args(["certs", "revoke", "--dir"])
            .arg(&ca_dir)
            .args(["--id", &gone_id, "--push-to"])
            .arg(&operator)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("revoked analyst.gone"), "{said}");
    assert!(said.contains("hq.a put the CRL in force"), "{said}");

    for (node, id) in [(&node_a, &a), (&node_b, &b)] {
        let start = Instant::now();
        loop {
            match hello(&pki.material(&gone), node.local_addr(), id).await {
                Err(err) if err.contains("revoked") => break,
                other => assert!(
                    start.elapsed() < DEADLINE,
                    "{id} still admits the revoked certificate: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        hello(&pki.material(&kept), node.local_addr(), id)
            .await
            .unwrap();
    }
    for node in [node_a, node_b] {
        node.shutdown(Duration::from_secs(10)).await.unwrap();
    }
}
