//! Signed bundles for store-level tests: a PKI with two nodes, items, and bundles
//! signed and verified as the node does.

use std::collections::HashMap;

use entente::crypto::{BundleSigner, CertificateSource, VerifiedBundle, sha256, verify};
use entente::engine::now_ms;
use entente::model::{
    ContextObject, Distribution, Holder, Indicator, IndicatorType, Item, ItemId, ItemKind, NodeId,
    Revocation, StixProperties, Tlp,
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

/// A GREEN domain indicator with a fresh id and no expiry.
pub fn fresh_domain(name: &str, modified: i64) -> Item {
    indicator(
        &ItemId::new_random(),
        IndicatorType::Domain,
        name,
        modified,
        Tlp::Green,
        &[],
    )
}

/// A fresh id of STIX type `ty`.
pub fn context_id(ty: &str) -> ItemId {
    ItemId::parse(&format!("{ty}--{}", uuid::Uuid::new_v4())).unwrap()
}

/// A GREEN relationship or report `id` referencing `refs` ([`context_with`]).
pub fn context(id: &ItemId, refs: &[&ItemId], modified: i64) -> Item {
    context_with(id, refs, Tlp::Green, modified)
}

/// A relationship or report `id` (by its type) of marking `tlp`, referencing `refs`,
/// with the properties its type needs.
pub fn context_with(id: &ItemId, refs: &[&ItemId], tlp: Tlp, modified: i64) -> Item {
    let object_refs: Vec<String> = refs.iter().map(|r| r.to_string()).collect();
    let (object_type, properties) = match id.stix_type() {
        "relationship" => (
            IndicatorType::Relationship,
            serde_json::json!({"relationship_type": "indicates"}),
        ),
        "report" => (
            IndicatorType::Report,
            serde_json::json!({
                "name": "r",
                "published": "2026-01-01T00:00:00Z",
                "object_refs": object_refs,
            }),
        ),
        other => panic!("no context object of type {other} here"),
    };
    Item {
        id: id.clone(),
        modified_ms: modified,
        tlp,
        tags: vec![],
        kind: ItemKind::Context(ContextObject {
            object_type,
            refs: refs.iter().map(|r| (*r).clone()).collect(),
            properties: StixProperties::keep_for(Holder::Context, properties.as_object().unwrap())
                .unwrap(),
        }),
    }
}
