//! The bundle scheme: what verifies and what is rejected, with
//! real ECDSA P-256 keys and certificates from a PKI generated at test time.

mod common;

use std::collections::HashMap;

use common::Pki;
use entente::crypto::{BundleSigner, CertificateSource, SignerError, VerifyError, sha256, verify};
use entente::model::{Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, NodeId, Tlp};
use entente::transport::{SignerVerifier, TlsMaterial};
use entente::wire::SignedBundle;

/// The test's clock: the real time (the PKI is valid around it).
static NOW: std::sync::LazyLock<i64> = std::sync::LazyLock::new(entente::engine::now_ms);

#[derive(Default)]
struct Certs(HashMap<[u8; 32], Vec<u8>>);

impl Certs {
    fn add(&mut self, material: &TlsMaterial) {
        let der = material.certificate_der().to_vec();
        self.0.insert(sha256(&der), der);
    }
}

impl CertificateSource for Certs {
    fn certificate(&self, sha: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.get(sha).cloned()
    }
}

fn item(n: u32) -> Item {
    Item {
        id: ItemId::new_random(),
        modified_ms: *NOW - 1000,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Indicator(Indicator {
            indicator_type: IndicatorType::Domain,
            value: format!("c2-{n}.example.com"),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: *NOW - 1000,
            valid_until_ms: None,
            properties: Default::default(),
        }),
    }
}

fn signer(material: &TlsMaterial) -> BundleSigner {
    BundleSigner::new(
        material.id.clone(),
        material.private_key_pkcs8().unwrap(),
        material.certificate_der(),
    )
    .unwrap()
}

struct Fixture {
    _pki: Pki,
    hq: TlsMaterial,
    berlin: TlsMaterial,
    certs: Certs,
    trust: SignerVerifier,
}

fn fixture() -> Fixture {
    let pki = Pki::new();
    let hq_id = pki.node("redmond.hq");
    let berlin_id = pki.node("berlin.office");
    let hq = pki.material(&hq_id);
    let berlin = pki.material(&berlin_id);
    let mut certs = Certs::default();
    certs.add(&hq);
    certs.add(&berlin);
    let trust = hq.signer_trust().unwrap();
    Fixture {
        _pki: pki,
        hq,
        berlin,
        certs,
        trust,
    }
}

fn sign(f: &Fixture, n: u32) -> SignedBundle {
    let items: Vec<Item> = (0..n).map(item).collect();
    signer(&f.hq)
        .sign(&items, &Distribution::default(), *NOW - 500)
        .unwrap()
        .to_wire(|_| true)
}

fn check(
    f: &Fixture,
    bundle: &SignedBundle,
) -> Result<entente::crypto::VerifiedBundle, VerifyError> {
    verify(bundle, &f.certs, &f.trust, *NOW)
}

#[test]
fn a_signed_bundle_verifies_with_every_item() {
    let f = fixture();
    let bundle = sign(&f, 5);
    let verified = check(&f, &bundle).unwrap();
    assert_eq!(verified.header().origin, f.hq.id);
    assert_eq!(verified.header().item_count, 5);
    assert_eq!(verified.items().len(), 5);
    for (i, v) in verified.items().iter().enumerate() {
        assert_eq!(v.index as usize, i);
        assert_eq!(v.item.value().unwrap(), format!("c2-{i}.example.com"));
    }
}

#[test]
fn any_subset_of_disclosures_verifies_including_none() {
    let f = fixture();
    let bundle = sign(&f, 6);
    for mask in 0u32..64 {
        let mut subset = bundle.clone();
        subset.disclosures.retain(|d| mask & (1 << d.index) != 0);
        let verified = check(&f, &subset).unwrap();
        let indices: Vec<u32> = verified.items().iter().map(|v| v.index).collect();
        let expected: Vec<u32> = (0..6).filter(|i| mask & (1 << i) != 0).collect();
        assert_eq!(indices, expected);
        assert_eq!(verified.header().item_count, 6);
    }
}

#[test]
fn redaction_keeps_the_signature_valid() {
    let f = fixture();
    let verified = check(&f, &sign(&f, 4)).unwrap();
    let redacted = verified.to_wire(|v| v.index % 2 == 0);
    assert_eq!(redacted.header_bytes, verified.header_bytes());
    let again = check(&f, &redacted).unwrap();
    assert_eq!(
        again.items().iter().map(|v| v.index).collect::<Vec<_>>(),
        vec![0, 2]
    );
}

#[test]
fn every_flipped_header_byte_is_rejected() {
    let f = fixture();
    let bundle = sign(&f, 3);
    for i in 0..bundle.header_bytes.len() {
        let mut tampered = bundle.clone();
        tampered.header_bytes[i] ^= 0x01;
        assert!(
            check(&f, &tampered).is_err(),
            "flipping header byte {i} was accepted"
        );
    }
}

#[test]
fn a_flipped_item_byte_is_rejected() {
    let f = fixture();
    let bundle = sign(&f, 3);
    for i in 0..bundle.disclosures[1].item_bytes.len() {
        let mut tampered = bundle.clone();
        tampered.disclosures[1].item_bytes[i] ^= 0x01;
        assert_eq!(
            check(&f, &tampered).unwrap_err(),
            VerifyError::DigestMismatch(1),
            "byte {i}"
        );
    }
}

#[test]
fn a_wrong_salt_is_rejected() {
    let f = fixture();
    let mut bundle = sign(&f, 3);
    bundle.disclosures[2].salt[0] ^= 0xff;
    assert_eq!(
        check(&f, &bundle).unwrap_err(),
        VerifyError::DigestMismatch(2)
    );
    let mut bundle = sign(&f, 3);
    bundle.disclosures[0].salt.pop();
    assert_eq!(check(&f, &bundle).unwrap_err(), VerifyError::BadSalt(0));
}

#[test]
fn a_disclosure_moved_to_another_index_is_rejected() {
    let f = fixture();
    let mut bundle = sign(&f, 3);
    bundle.disclosures[0].index = 1;
    bundle.disclosures.remove(1);
    assert_eq!(
        check(&f, &bundle).unwrap_err(),
        VerifyError::DigestMismatch(1)
    );
    let mut bundle = sign(&f, 3);
    bundle.disclosures[0].index = 7;
    assert_eq!(
        check(&f, &bundle).unwrap_err(),
        VerifyError::IndexOutOfRange(7)
    );
}

#[test]
fn a_disclosure_moved_into_another_bundle_is_rejected() {
    let f = fixture();
    let first = sign(&f, 3);
    let mut second = sign(&f, 3);
    second.disclosures[1] = first.disclosures[1].clone();
    assert_eq!(
        check(&f, &second).unwrap_err(),
        VerifyError::DigestMismatch(1)
    );
}

#[test]
fn duplicated_indices_are_rejected() {
    let f = fixture();
    let mut bundle = sign(&f, 3);
    bundle.disclosures.truncate(2);
    let copy = bundle.disclosures[0].clone();
    bundle.disclosures.push(copy);
    assert_eq!(
        check(&f, &bundle).unwrap_err(),
        VerifyError::DuplicateIndex(0)
    );
}

#[test]
fn more_disclosures_than_digests_are_rejected() {
    let f = fixture();
    let mut bundle = sign(&f, 2);
    let copy = bundle.disclosures[0].clone();
    bundle.disclosures.push(copy);
    assert_eq!(
        check(&f, &bundle).unwrap_err(),
        VerifyError::TooManyDisclosures {
            disclosures: 3,
            digests: 2
        }
    );
}

#[test]
fn a_signature_by_a_key_that_is_not_the_origins_is_rejected() {
    use prost::Message;
    let f = fixture();
    // berlin signs a bundle that claims hq as origin (with berlin's certificate).
    let items = vec![item(0)];
    let bundle = signer(&f.berlin)
        .sign(&items, &Distribution::default(), *NOW - 500)
        .unwrap()
        .to_wire(|_| true);
    let mut header = entente::wire::BundleHeader::decode(bundle.header_bytes.as_slice()).unwrap();
    header.origin = "redmond.hq".into();
    let header_bytes = header.encode_to_vec();
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        f.berlin.private_key_pkcs8().unwrap(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let sig = key
        .sign(
            &ring::rand::SystemRandom::new(),
            &entente::crypto::signed_message(&header_bytes),
        )
        .unwrap();
    let forged = SignedBundle {
        header_bytes: header_bytes.clone(),
        signature: sig.as_ref().to_vec(),
        disclosures: bundle.disclosures.clone(),
    };
    assert_eq!(
        check(&f, &forged).unwrap_err(),
        VerifyError::SignerNotOrigin {
            origin: "redmond.hq".into(),
            signer: NodeId::new("berlin.office").unwrap()
        }
    );

    // Naming hq's certificate while signing with berlin's key fails the signature check.
    header.signer_cert_sha256 = sha256(f.hq.certificate_der()).to_vec();
    let header_bytes = header.encode_to_vec();
    let sig = key
        .sign(
            &ring::rand::SystemRandom::new(),
            &entente::crypto::signed_message(&header_bytes),
        )
        .unwrap();
    let forged = SignedBundle {
        header_bytes,
        signature: sig.as_ref().to_vec(),
        disclosures: bundle.disclosures,
    };
    assert_eq!(check(&f, &forged).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn a_signature_without_the_domain_prefix_is_rejected() {
    let f = fixture();
    let mut bundle = sign(&f, 1);
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        f.hq.private_key_pkcs8().unwrap(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    bundle.signature = key
        .sign(&ring::rand::SystemRandom::new(), &bundle.header_bytes)
        .unwrap()
        .as_ref()
        .to_vec();
    assert_eq!(check(&f, &bundle).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn a_signer_certificate_from_an_untrusted_ca_is_rejected() {
    let f = fixture();
    let rogue = Pki::new();
    let id = rogue.node("redmond.hq");
    let impostor = rogue.material(&id);
    let bundle = signer(&impostor)
        .sign(&[item(0)], &Distribution::default(), *NOW - 500)
        .unwrap()
        .to_wire(|_| true);
    let mut certs = Certs::default();
    certs.add(&impostor);
    let err = verify(&bundle, &certs, &f.trust, *NOW).unwrap_err();
    assert!(
        matches!(err, VerifyError::Signer(SignerError::Untrusted(_))),
        "{err:?}"
    );
}

#[test]
fn a_revoked_signer_is_rejected() {
    let pki = Pki::new();
    let hq_id = pki.node("redmond.hq");
    let berlin_id = pki.node("berlin.office");
    let berlin = pki.material(&berlin_id);
    let crl = pki.certs.revoke(&berlin_id).unwrap();
    let trust = pki
        .material_with_crls(&hq_id, vec![crl])
        .signer_trust()
        .unwrap();
    let mut certs = Certs::default();
    certs.add(&berlin);
    let bundle = signer(&berlin)
        .sign(&[item(0)], &Distribution::default(), *NOW - 500)
        .unwrap()
        .to_wire(|_| true);
    assert_eq!(
        verify(&bundle, &certs, &trust, *NOW).unwrap_err(),
        VerifyError::Signer(SignerError::Revoked)
    );
}

#[test]
fn an_unknown_signer_and_a_lying_certificate_source_are_rejected() {
    let f = fixture();
    let bundle = sign(&f, 1);
    assert!(matches!(
        verify(&bundle, &Certs::default(), &f.trust, *NOW),
        Err(VerifyError::UnknownSigner(_))
    ));
    // A source that answers with another certificate than the one asked for.
    let mut lying = Certs::default();
    lying.0.insert(
        sha256(f.hq.certificate_der()),
        f.berlin.certificate_der().to_vec(),
    );
    assert_eq!(
        verify(&bundle, &lying, &f.trust, *NOW).unwrap_err(),
        VerifyError::CertificateMismatch
    );
}

#[test]
fn a_bundle_from_the_future_is_rejected() {
    let f = fixture();
    let bundle = signer(&f.hq)
        .sign(&[item(0)], &Distribution::default(), *NOW + 3_600_000)
        .unwrap()
        .to_wire(|_| true);
    assert!(matches!(
        check(&f, &bundle),
        Err(VerifyError::FromTheFuture(_))
    ));
}

#[test]
fn garbage_never_panics() {
    let f = fixture();
    let bundle = sign(&f, 2);
    let mut state = 0x2545F4914F6CDD1Du64;
    for round in 0..2000 {
        let mut tampered = bundle.clone();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let target = (state % 3) as usize;
        let bytes = match target {
            0 => &mut tampered.header_bytes,
            1 => &mut tampered.signature,
            _ => &mut tampered.disclosures[(state >> 8) as usize % 2].item_bytes,
        };
        if bytes.is_empty() {
            continue;
        }
        let len = bytes.len();
        let at = (state >> 16) as usize % len;
        match round % 3 {
            0 => bytes[at] = (state >> 24) as u8,
            1 => bytes.truncate(at),
            _ => bytes.extend_from_slice(&state.to_le_bytes()),
        }
        if tampered != bundle {
            assert!(
                check(&f, &tampered).is_err(),
                "round {round} accepted a tampered bundle"
            );
        }
    }
}
