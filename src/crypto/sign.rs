//! Signing bundles as their origin.

use prost::Message;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};

use super::verify::{BundleHeader, VerifiedBundle, VerifiedItem};
use super::{
    MAX_ITEMS_PER_BUNDLE, SALT_LEN, SIGNATURE_ALGORITHM_V1, leaf_digest, sha256, signed_message,
};
use crate::model::{BundleId, Distribution, Item, NodeId};
use crate::wire;

/// Why a bundle could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key is not a PKCS#8 ECDSA P-256 key.
    #[error("the node key cannot sign bundles: {0} (a PKCS#8 ECDSA P-256 key is required)")]
    BadKey(String),
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// No items, or more than a bundle may hold.
    #[error("a bundle holds 1 to {MAX_ITEMS_PER_BUNDLE} items, not {0}")]
    ItemCount(usize),
}

/// Signs bundles with the node's key. The key never leaves this value and is never logged.
pub struct BundleSigner {
    origin: NodeId,
    key: EcdsaKeyPair,
    cert_sha256: [u8; 32],
    rng: SystemRandom,
}

impl std::fmt::Debug for BundleSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSigner")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl BundleSigner {
    /// A signer for `origin` from its PKCS#8 key and DER certificate.
    pub fn new(origin: NodeId, key_pkcs8: &[u8], cert_der: &[u8]) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8, &rng)
            .map_err(|e| SignError::BadKey(e.to_string()))?;
        Ok(Self {
            origin,
            key,
            cert_sha256: sha256(cert_der),
            rng,
        })
    }

    /// The origin this signer signs for.
    pub fn origin(&self) -> &NodeId {
        &self.origin
    }

    /// SHA-256 of the signer's certificate (named in every header it signs).
    pub fn certificate_sha256(&self) -> [u8; 32] {
        self.cert_sha256
    }

    /// Signs `items` as one bundle with every item disclosed. The result is verified by
    /// construction: this signer made the header, the digests and the signature from
    /// these very items (`to_wire` gives the bytes to send).
    pub fn sign(
        &self,
        items: &[Item],
        distribution: &Distribution,
        created_ms: i64,
    ) -> Result<VerifiedBundle, SignError> {
        if items.is_empty() || items.len() > MAX_ITEMS_PER_BUNDLE {
            return Err(SignError::ItemCount(items.len()));
        }
        self.sign_owned(items.to_vec(), distribution, created_ms)
    }

    /// [`Self::sign`] of items the caller gives up: they go into the bundle without
    /// being copied.
    pub fn sign_owned(
        &self,
        items: Vec<Item>,
        distribution: &Distribution,
        created_ms: i64,
    ) -> Result<VerifiedBundle, SignError> {
        if items.is_empty() || items.len() > MAX_ITEMS_PER_BUNDLE {
            return Err(SignError::ItemCount(items.len()));
        }
        let item_count = items.len();
        let mut leaf_digests = Vec::with_capacity(items.len());
        let mut verified = Vec::with_capacity(items.len());
        let mut salts = vec![0u8; SALT_LEN * items.len()];
        self.rng.fill(&mut salts).map_err(|_| SignError::Random)?;
        for ((index, item), salt) in items
            .into_iter()
            .enumerate()
            .zip(salts.chunks_exact(SALT_LEN))
        {
            let mut salt_bytes = [0u8; SALT_LEN];
            salt_bytes.copy_from_slice(salt);
            let item_bytes = item.encode();
            leaf_digests.push(leaf_digest(&salt_bytes, &item_bytes).to_vec());
            verified.push(VerifiedItem {
                // MAX_ITEMS_PER_BUNDLE fits in u32.
                index: index as u32,
                salt: salt_bytes,
                item_bytes,
                item,
            });
        }
        let bundle_id = BundleId::new_random();
        let header = wire::BundleHeader {
            bundle_id: bundle_id.to_string(),
            origin: self.origin.to_string(),
            created_unix_ms: created_ms,
            signer_cert_sha256: self.cert_sha256.to_vec(),
            signature_algorithm: SIGNATURE_ALGORITHM_V1.to_owned(),
            distribution: Some(wire::Distribution {
                max_hops: distribution.max_hops,
                recipients: distribution
                    .recipients
                    .iter()
                    .map(|r| r.to_string())
                    .collect(),
            }),
            leaf_digests,
        };
        let parsed = BundleHeader {
            bundle_id,
            origin: self.origin.clone(),
            created_ms,
            signer_cert_sha256: self.cert_sha256,
            distribution: distribution.clone(),
            // Bounded by MAX_ITEMS_PER_BUNDLE above.
            item_count: item_count as u32,
        };
        let header_bytes = header.encode_to_vec();
        let signature = self
            .key
            .sign(&self.rng, &signed_message(&header_bytes))
            .map_err(|_| SignError::Random)?;
        Ok(VerifiedBundle::from_trusted_parts(
            parsed,
            header_bytes,
            signature.as_ref().to_vec(),
            verified,
        ))
    }
}
