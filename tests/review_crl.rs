//! Attacks on the CRL hand-off (`Federation.OfferCrl`, `Admin.ApplyCrl`): a partner whose
//! CA this node trusts (for that partner's certificates) tries to replace the CRL of this
//! node's own CA, or to leave behind a CRL that breaks every later reload; and offers of
//! an older and a newer CRL race. One node over real mutual TLS on port 0, with two trust
//! anchors, certificates and CRLs generated at test time.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Pki, hello};
use entente::NodeId;
use entente::certs::{CertDir, Usage, Validity};
use entente::client::NodeClient;
use entente::transport::{TlsMaterial, TlsPaths};
use rustls::pki_types::pem::PemObject;

fn crl_der(pem: &str) -> Vec<u8> {
    rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

fn material_from(certs: &CertDir, id: &NodeId, anchors: Vec<PathBuf>) -> TlsMaterial {
    TlsMaterial::load(
        &TlsPaths {
            cert: certs.cert_path(id.as_str()),
            key: certs.key_path(id.as_str()),
            trust_anchors: anchors,
            crls: vec![],
        },
        id,
    )
    .unwrap()
}

/// A federation node `hq.a` trusting its own CA and a partner organisation's CA (named
/// `partner_ca_name`), which issued the partner's node `rogue.partner`. Two clients of
/// the node's CA: `analyst.gone` and `analyst.kept`.
struct TwoAnchors {
    pki: Pki,
    partner_ca: CertDir,
    hq: NodeId,
    rogue: NodeId,
    gone: NodeId,
    kept: NodeId,
    config: PathBuf,
}

impl TwoAnchors {
    fn new(partner_ca_name: &str) -> Self {
        let pki = Pki::new();
        let hq = pki.node("hq.a");
        let gone = pki.client("analyst.gone");
        let kept = pki.client("analyst.kept");
        let partner_ca = CertDir::new(pki.path().join("partner-ca"));
        partner_ca
            .create_ca(partner_ca_name, Validity::days_from_now(30))
            .unwrap();
        let rogue = NodeId::new("rogue.partner").unwrap();
        partner_ca
            .issue(
                &rogue,
                &Usage::Node {
                    ips: vec!["127.0.0.1".parse().unwrap()],
                    dns: vec![],
                },
                Validity::days_from_now(30),
            )
            .unwrap();
        let ours = pki.ca_cert();
        let theirs = partner_ca.ca_cert_path();
        let mut text = common::node_section(&pki, &hq, &pki.path().join("data-hq")).replace(
            &format!("trust_anchors = [\"{}\"]", ours.display()),
            &format!(
                "trust_anchors = [\"{}\", \"{}\"]",
                ours.display(),
                theirs.display()
            ),
        );
        for client in [&gone, &kept] {
            text.push_str(&format!(
                "\n[[client]]\nid = \"{client}\"\nrole = \"read_only\"\ntrust_anchor = \"{}\"\n",
                ours.display()
            ));
        }
        text.push_str(&format!(
            "\n[[peer]]\nid = \"{rogue}\"\naddress = \"127.0.0.1:9\"\nrole = \"read_only\"\ntrust_anchor = \"{}\"\n",
            theirs.display()
        ));
        let config = pki.path().join("hq.toml");
        std::fs::write(&config, text).unwrap();
        Self {
            pki,
            partner_ca,
            hq,
            rogue,
            gone,
            kept,
            config,
        }
    }

    /// The node's operator (its own certificate), connected.
    async fn operator(&self, node: &entente::Node) -> NodeClient {
        NodeClient::connect(
            self.pki.material(&self.hq).client_config().unwrap(),
            &self.hq,
            &node.local_addr().to_string(),
            &self.hq,
        )
        .await
        .unwrap()
    }

    /// The partner's node, connected with its certificate from the partner's CA.
    async fn rogue(&self, node: &entente::Node) -> NodeClient {
        let material = material_from(&self.partner_ca, &self.rogue, vec![self.pki.ca_cert()]);
        NodeClient::connect(
            material.client_config().unwrap(),
            &self.rogue,
            &node.local_addr().to_string(),
            &self.hq,
        )
        .await
        .unwrap()
    }

    /// Whether `who`'s certificate is refused as revoked by the node now.
    async fn revoked(&self, node: &entente::Node, who: &NodeId) -> bool {
        match hello(&self.pki.material(who), node.local_addr(), &self.hq).await {
            Ok(_) => false,
            Err(err) if err.contains("revoked") => true,
            Err(err) => panic!("{who}: neither admitted nor refused as revoked: {err}"),
        }
    }
}

/// A partner's CA given the very name of this node's CA signed a CRL (numbered far
/// ahead) under that name, and the partner offered it: it was taken as the CRL of "the"
/// issuer. Every certificate of the node's own CA then failed the CRL's signature check
/// (one partner cut the node off from its whole federation, and the file kept it so
/// after a restart), and the node's own CA's next CRLs were refused as not newer.
#[tokio::test]
async fn a_partners_ca_under_our_cas_name_cannot_replace_our_crl() {
    let fed = TwoAnchors::new("Test federation CA");
    let node = common::start(&fed.config).await;
    let operator = fed.operator(&node).await;

    // The partner's CA, under the same name, signs a CRL numbered far ahead, and the
    // partner offers it.
    let theirs = crl_der(
        &fed.partner_ca
            .load_ca()
            .unwrap()
            .crl(&[], 1_000, 30)
            .unwrap(),
    );
    let err = fed
        .rogue(&node)
        .await
        .offer_crl(theirs.clone())
        .await
        .expect_err("a CRL whose issuer names two anchors is refused")
        .to_string();
    assert!(err.contains("more than one trust anchor"), "{err}");
    // Nor can the operator put it in force by mistake.
    let err = operator.apply_crl(theirs).await.unwrap_err().to_string();
    assert!(err.contains("more than one trust anchor"), "{err}");
    assert!(!fed.revoked(&node, &fed.kept).await);

    // The node's own CA revokes one client: its CRL is taken, and the others still
    // connect.
    let ours = crl_der(&std::fs::read_to_string(fed.pki.certs.revoke(&fed.gone).unwrap()).unwrap());
    assert!(operator.apply_crl(ours).await.unwrap());
    assert!(fed.revoked(&node, &fed.gone).await);
    assert!(!fed.revoked(&node, &fed.kept).await);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// DER of one length-prefixed element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend([0x81, len as u8]);
    } else {
        out.extend([0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

/// A CRL of the CA in `ca` signed with its key, well formed but carrying a critical
/// extension no verifier knows: x509-parser reads it and its signature verifies, the
/// TLS verifiers refuse to be built with it.
fn crl_with_unknown_critical_extension(ca: &CertDir) -> Vec<u8> {
    let ca_cert = std::fs::read(ca.ca_cert_path()).unwrap();
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(&ca_cert).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(ca_der.as_ref()).unwrap();
    let issuer = parsed.subject().as_raw().to_vec();
    // ecdsa-with-SHA256
    let algorithm = der(
        0x30,
        &der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]),
    );
    let this_update = der(0x17, b"260101000000Z");
    let next_update = der(0x17, b"491231000000Z");
    // 1.3.6.1.4.1.55555.1, critical, an empty value.
    let extension = der(
        0x30,
        &[
            der(
                0x06,
                &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xb2, 0x03, 0x01],
            ),
            der(0x01, &[0xff]),
            der(0x04, &der(0x05, &[])),
        ]
        .concat(),
    );
    let extensions = der(0xa0, &der(0x30, &extension));
    let tbs = der(
        0x30,
        &[
            der(0x02, &[0x01]),
            algorithm.clone(),
            issuer,
            this_update,
            next_update,
            extensions,
        ]
        .concat(),
    );
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_file(ca.key_path("ca")).unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        key.secret_pkcs8_der(),
        &rng,
    )
    .unwrap();
    let signature = pair.sign(&rng, &tbs).unwrap();
    let mut bits = vec![0u8];
    bits.extend_from_slice(signature.as_ref());
    der(0x30, &[tbs, algorithm, der(0x03, &bits)].concat())
}

/// A partner's CA (under its own name) signed a CRL its own verifiers refuse (an
/// unknown critical extension) and the partner offered it: the reload that was to put it
/// in force failed, but the file stayed in `DATA_DIR/crls`, which every load reads, so
/// every later reload failed too (the operator could not even remove the partner) and
/// the node would not start again.
#[tokio::test]
async fn a_crl_the_verifiers_refuse_is_not_left_behind_to_break_reloads() {
    let fed = TwoAnchors::new("Partner CA");
    let node = common::start(&fed.config).await;
    let operator = fed.operator(&node).await;
    operator.reload_policy().await.expect("reload before");

    let poisoned = crl_with_unknown_critical_extension(&fed.partner_ca);
    let err = fed
        .rogue(&node)
        .await
        .offer_crl(poisoned)
        .await
        .expect_err("a CRL the verifiers refuse is not put in force")
        .to_string();
    assert!(err.contains("not put in force"), "{err}");

    // Nothing of it is left: reloads work, and the node starts again on its data.
    operator
        .reload_policy()
        .await
        .expect("a reload after the refused CRL");
    let crls = fed.pki.path().join("data-hq/crls");
    let left: Vec<_> = std::fs::read_dir(&crls)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", crls.display());
    assert!(!fed.revoked(&node, &fed.kept).await);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
    let again = common::start(&fed.config).await;
    again.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// Offers of an older and a newer CRL at once: each was checked against the CRL in force
/// before either was written, so the older, written last, could replace the newer and
/// undo its revocations. (Before the fix this failed most runs, not every run: it is a
/// race. After it, offers are taken one at a time and it cannot fail.)
#[tokio::test]
async fn an_older_crl_racing_a_newer_one_does_not_win() {
    let fed = TwoAnchors::new("Partner CA");
    let node = common::start(&fed.config).await;
    let ca = fed.pki.certs.load_ca().unwrap();
    fed.pki.certs.revoke(&fed.gone).unwrap();
    let entries = fed.pki.certs.revoked_for(&fed.gone).unwrap();
    let operator = std::sync::Arc::new(fed.operator(&node).await);

    for round in 0..4u64 {
        // An older CRL that revokes nothing, and a newer that revokes `gone`.
        let older = crl_der(&ca.crl(&[], 10 * round + 1, 30).unwrap());
        let newer = crl_der(&ca.crl(&entries, 10 * round + 2, 30).unwrap());
        let mut offers = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (operator, crl) = (
                operator.clone(),
                if i == 8 { newer.clone() } else { older.clone() },
            );
            offers.spawn(async move { operator.apply_crl(crl).await.map_err(|e| e.to_string()) });
        }
        while let Some(done) = offers.join_next().await {
            done.unwrap().unwrap();
        }
        assert!(
            fed.revoked(&node, &fed.gone).await,
            "round {round}: the older CRL replaced the newer one"
        );
    }
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A CRL applied through `Admin.ApplyCrl` takes effect on what is open already, not only
/// on new handshakes: the revoked client's open subscription ends, refused, within the
/// time a reload takes to withdraw a connection, and its next call on the same
/// connection is refused.
#[tokio::test]
async fn an_applied_crl_ends_the_revoked_clients_open_stream() {
    let fed = TwoAnchors::new("Partner CA");
    let node = common::start(&fed.config).await;
    let operator = fed.operator(&node).await;
    let gone = NodeClient::connect(
        fed.pki.material(&fed.gone).client_config().unwrap(),
        &fed.gone,
        &node.local_addr().to_string(),
        &fed.hq,
    )
    .await
    .unwrap();
    let mut subscription = gone
        .subscribe(entente::rpc::proto::ItemFilter {
            include_expired: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let ours = crl_der(&std::fs::read_to_string(fed.pki.certs.revoke(&fed.gone).unwrap()).unwrap());
    assert!(operator.apply_crl(ours).await.unwrap());
    let ended = tokio::time::timeout(Duration::from_secs(5), subscription.message())
        .await
        .expect("the subscription of a revoked client ends within 5 s");
    let status = ended.expect_err("it ends refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(gone.hello().await.is_err());
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}

/// A CRL handed over (`Admin.ApplyCrl` here; `Federation.OfferCrl` takes the same path)
/// puts that CRL in force, and nothing else: an edit of the configuration file that the
/// operator has not reloaded yet (here a new client) stays out of force until the
/// operator reloads.
#[tokio::test]
async fn a_crl_handed_over_puts_only_itself_in_force_not_unreloaded_edits() {
    let fed = TwoAnchors::new("Partner CA");
    let newcomer = fed.pki.client("analyst.newcomer");
    let node = common::start(&fed.config).await;
    let operator = fed.operator(&node).await;
    let policy_before = node.engine().policy().hash();
    // The operator is editing the file: a new client, not reloaded yet.
    let mut text = std::fs::read_to_string(&fed.config).unwrap();
    text.push_str(&format!(
        "\n[[client]]\nid = \"{newcomer}\"\nrole = \"analyst\"\ntrust_anchor = \"{}\"\n",
        fed.pki.ca_cert().display()
    ));
    std::fs::write(&fed.config, text).unwrap();

    let ours = crl_der(&std::fs::read_to_string(fed.pki.certs.revoke(&fed.gone).unwrap()).unwrap());
    assert!(operator.apply_crl(ours).await.unwrap());
    assert!(fed.revoked(&node, &fed.gone).await, "the CRL is in force");
    assert!(!fed.revoked(&node, &fed.kept).await);
    assert!(
        hello(&fed.pki.material(&newcomer), node.local_addr(), &fed.hq)
            .await
            .is_err(),
        "a client only in the unreloaded file was admitted after a CRL hand-over"
    );
    assert_eq!(node.engine().policy().hash(), policy_before);

    // The operator's reload puts the edit in force, and the CRL stays.
    node.reload_policy().unwrap();
    assert!(
        hello(&fed.pki.material(&newcomer), node.local_addr(), &fed.hq)
            .await
            .is_ok()
    );
    assert!(fed.revoked(&node, &fed.gone).await);
    node.shutdown(Duration::from_secs(10)).await.unwrap();
}
