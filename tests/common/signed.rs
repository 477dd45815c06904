//! Signed bundles for store-level tests: a PKI with two nodes, items, and bundles
//! signed and verified as the node does.

use std::collections::HashMap;

use entente::crypto::{BundleSigner, CertificateSource, VerifiedBundle, sha256, verify};
use entente::engine::now_ms;
use entente::model::{
    Distribution, Indicator, IndicatorType, Item, ItemId, ItemKind, NodeId, Revocation, Tlp,
};
use entente::store::Source;
use entente::transport::{SignerVerifier, TlsMaterial};

use super::Pki;

/// Certificates by SHA-256, as the store keeps them.
#[derive(Default)]
pub struct Certs(pub HashMap<[u8; 32], Vec<u8>>);

impl CertificateSource for Certs {
    fn certificate(&self, sha: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.get(sha).cloned()
    }
}

/// Two nodes of one federation, redmond.hq (the store's owner) and berlin.office.
pub struct Fixture {
    pub pki: Pki,
    pub hq: TlsMaterial,
    pub berlin: TlsMaterial,
    pub certs: Certs,
    pub trust: SignerVerifier,
}

pub fn fixture() -> Fixture {
    let pki = Pki::new();
    let hq = pki.material(&pki.node("redmond.hq"));
    let berlin = pki.material(&pki.node("berlin.office"));
    let mut certs = Certs::default();
    for m in [&hq, &berlin] {
        certs
            .0
            .insert(sha256(m.certificate_der()), m.certificate_der().to_vec());
    }
    let trust = hq.signer_trust().unwrap();
    Fixture {
        pki,
        hq,
        berlin,
        certs,
        trust,
    }
}

/// An indicator with no expiry.
pub fn indicator(
    id: &ItemId,
    ty: IndicatorType,
    value: &str,
    modified: i64,
    tlp: Tlp,
    tags: &[&str],
) -> Item {
    Item {
        id: id.clone(),
        modified_ms: modified,
        tlp,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        kind: ItemKind::Indicator(Indicator {
            indicator_type: ty,
            value: value.into(),
            description: String::new(),
            confidence: 50,
            kill_chain_phases: vec![],
            valid_from_ms: modified,
            valid_until_ms: None,
            properties: Default::default(),
        }),
    }
}

/// `items` signed by `by` and verified.
pub fn bundle(f: &Fixture, by: &TlsMaterial, items: &[Item]) -> VerifiedBundle {
    let signer = BundleSigner::new(
        by.id.clone(),
        by.private_key_pkcs8().unwrap(),
        by.certificate_der(),
    )
    .unwrap();
    let wire = signer
        .sign(items, &Distribution::default(), now_ms())
        .unwrap()
        .to_wire(|_| true);
    verify(&wire, &f.certs, &f.trust, now_ms()).unwrap()
}

/// Published by `id` itself.
pub fn local(id: &NodeId) -> Source {
    Source {
        received_from: id.clone(),
        hops: 0,
    }
}

/// A GREEN revocation of domain indicator `id`, withdrawn at `modified`.
pub fn revocation(id: &ItemId, modified: i64) -> Item {
    Item {
        id: id.clone(),
        modified_ms: modified,
        tlp: Tlp::Green,
        tags: vec![],
        kind: ItemKind::Revocation(Revocation {
            indicator_type: IndicatorType::Domain,
            reason: "withdrawn".into(),
            indicator: None,
        }),
    }
}

/// A small deterministic generator, so a failing seed can be replayed.
pub struct Lcg(pub u64);

impl Lcg {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}
