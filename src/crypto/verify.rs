//! Verification: wire bytes in, a [`VerifiedBundle`] or a specific [`VerifyError`] out.
//! Nothing else in the crate constructs a `VerifiedBundle`.

use std::collections::BTreeMap;

use prost::Message;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};

use super::{
    MAX_CLOCK_SKEW_MS, MAX_HEADER_BYTES, MAX_ITEM_BYTES, MAX_ITEMS_PER_BUNDLE, SALT_LEN,
    SIGNATURE_ALGORITHM_V1, leaf_digest, sha256, signed_message,
};
use crate::model::{BundleId, Distribution, Item, MAX_RECIPIENTS, ModelError, NodeId};
use crate::wire;

/// Gives the DER certificate with a given SHA-256 fingerprint, if known.
pub trait CertificateSource {
    /// The certificate, or `None` when unknown.
    fn certificate(&self, sha256: &[u8; 32]) -> Option<Vec<u8>>;
}

/// Decides whether a certificate may sign bundles: chain to a trust anchor,
/// validity at the given time, revocation. Returns the certificate's id.
pub trait SignerTrust {
    /// Checks `cert_der` as of `at_ms` (revocation is checked regardless of time).
    fn verify_signer(&self, cert_der: &[u8], at_ms: i64) -> Result<NodeId, SignerError>;
}

/// Why a signer certificate is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// It does not chain to a trust anchor (unknown or forged issuer).
    #[error("signer certificate is not trusted: {0}")]
    Untrusted(String),
    /// It is listed in a CRL.
    #[error("signer certificate is revoked")]
    Revoked,
    /// It was not valid when the bundle was created.
    #[error("signer certificate was not valid when the bundle was created")]
    Expired,
    /// No id can be read from it.
    #[error("signer certificate has no usable id: {0}")]
    NoIdentity(String),
}

/// Why a bundle was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The header is larger than [`MAX_HEADER_BYTES`](super::MAX_HEADER_BYTES).
    #[error("header is {0} bytes, more than allowed")]
    HeaderTooLarge(usize),
    /// The header bytes do not decode.
    #[error("header does not decode: {0}")]
    HeaderDecode(String),
    /// A header field is invalid (id, origin, algorithm, digest sizes, distribution).
    #[error("header field {field}: {problem}")]
    HeaderField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The bundle claims to be created too far in the future.
    #[error("bundle is dated {0} ms in the future")]
    FromTheFuture(i64),
    /// No certificate with the header's fingerprint is known.
    #[error("signer certificate {0} is unknown")]
    UnknownSigner(String),
    /// The certificate found does not have the fingerprint asked for.
    #[error("certificate source returned a certificate with another fingerprint")]
    CertificateMismatch,
    /// The signer certificate is not acceptable.
    #[error(transparent)]
    Signer(#[from] SignerError),
    /// The signer is not the bundle's origin.
    #[error("bundle claims origin {origin} but is signed by {signer}")]
    SignerNotOrigin {
        /// The origin in the header.
        origin: String,
        /// The id in the signer certificate.
        signer: NodeId,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// More disclosures than leaf digests.
    #[error("{disclosures} disclosures for {digests} digests")]
    TooManyDisclosures {
        /// Disclosures sent.
        disclosures: usize,
        /// Digests in the header.
        digests: usize,
    },
    /// A disclosure index is out of range.
    #[error("disclosure index {0} is out of range")]
    IndexOutOfRange(u32),
    /// The same index is disclosed twice.
    #[error("disclosure index {0} appears twice")]
    DuplicateIndex(u32),
    /// A salt is not 16 bytes.
    #[error("disclosure {0}: salt must be 16 bytes")]
    BadSalt(u32),
    /// An item is larger than allowed.
    #[error("disclosure {0}: item is larger than allowed")]
    ItemTooLarge(u32),
    /// An item does not match its leaf digest.
    #[error("disclosure {0}: item does not match its digest")]
    DigestMismatch(u32),
    /// An item matches its digest but is not a valid item.
    #[error("disclosure {index}: {error}")]
    BadItem {
        /// The index.
        index: u32,
        /// Why it is invalid.
        error: ModelError,
    },
}

/// The parsed, verified header of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleHeader {
    /// The bundle id.
    pub bundle_id: BundleId,
    /// The origin node (also the signer).
    pub origin: NodeId,
    /// When the origin created it, ms since the epoch.
    pub created_ms: i64,
    /// SHA-256 of the signer certificate.
    pub signer_cert_sha256: [u8; 32],
    /// The signed distribution.
    pub distribution: Distribution,
    /// Number of items (leaf digests), disclosed or not.
    pub item_count: u32,
}

/// One disclosed item whose digest and content verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedItem {
    /// Its index in the bundle.
    pub index: u32,
    /// Its salt.
    pub salt: [u8; SALT_LEN],
    /// The exact bytes that were hashed.
    pub item_bytes: Vec<u8>,
    /// The decoded item.
    pub item: Item,
}

/// A bundle whose signature, signer and disclosed items verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    header: BundleHeader,
    header_bytes: Vec<u8>,
    signature: Vec<u8>,
    items: Vec<VerifiedItem>,
}

impl VerifiedBundle {
    /// The parsed header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// The exact signed header bytes.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The disclosed items, by index.
    pub fn items(&self) -> &[VerifiedItem] {
        &self.items
    }

    /// The wire form with only the items `keep` allows disclosed; the others stay
    /// withheld behind their digests. The header and signature are unchanged.
    pub fn to_wire(&self, mut keep: impl FnMut(&VerifiedItem) -> bool) -> wire::SignedBundle {
        wire::SignedBundle {
            header_bytes: self.header_bytes.clone(),
            signature: self.signature.clone(),
            disclosures: self
                .items
                .iter()
                .filter(|i| keep(i))
                .map(|i| wire::Disclosure {
                    index: i.index,
                    salt: i.salt.to_vec(),
                    item_bytes: i.item_bytes.clone(),
                })
                .collect(),
        }
    }

    /// A verified bundle from parts this crate made or checked itself (the signer's
    /// own output). Never for bytes from outside.
    pub(crate) fn from_trusted_parts(
        header: BundleHeader,
        header_bytes: Vec<u8>,
        signature: Vec<u8>,
        items: Vec<VerifiedItem>,
    ) -> Self {
        Self {
            header,
            header_bytes,
            signature,
            items,
        }
    }
}

fn field(field: &'static str, problem: impl Into<String>) -> VerifyError {
    VerifyError::HeaderField {
        field,
        problem: problem.into(),
    }
}

/// Parses and checks header bytes (no signature check); also returns the leaf digests.
pub fn parse_header(header_bytes: &[u8]) -> Result<(BundleHeader, Vec<Vec<u8>>), VerifyError> {
    if header_bytes.len() > MAX_HEADER_BYTES {
        return Err(VerifyError::HeaderTooLarge(header_bytes.len()));
    }
    count_header_fields(header_bytes)?;
    let wire::BundleHeader {
        bundle_id,
        origin,
        created_unix_ms,
        signer_cert_sha256,
        signature_algorithm,
        distribution,
        leaf_digests,
    } = wire::BundleHeader::decode(header_bytes)
        .map_err(|e| VerifyError::HeaderDecode(e.to_string()))?;
    let bundle_id = BundleId::parse(&bundle_id).map_err(|e| field("bundle_id", e.to_string()))?;
    let origin = NodeId::new(&origin).map_err(|e| field("origin", e.to_string()))?;
    if signature_algorithm != SIGNATURE_ALGORITHM_V1 {
        return Err(field(
            "signature_algorithm",
            format!("{signature_algorithm:?} is not supported"),
        ));
    }
    let signer_cert_sha256: [u8; 32] = signer_cert_sha256
        .as_slice()
        .try_into()
        .map_err(|_| field("signer_cert_sha256", "must be 32 bytes"))?;
    if leaf_digests.is_empty() || leaf_digests.len() > MAX_ITEMS_PER_BUNDLE {
        return Err(field(
            "leaf_digests",
            format!(
                "{} digests; a bundle holds 1 to {MAX_ITEMS_PER_BUNDLE}",
                leaf_digests.len()
            ),
        ));
    }
    if leaf_digests.iter().any(|d| d.len() != 32) {
        return Err(field("leaf_digests", "every digest must be 32 bytes"));
    }
    let distribution = match distribution {
        None => Distribution::default(),
        Some(wire::Distribution {
            max_hops,
            recipients,
        }) => {
            if recipients.len() > MAX_RECIPIENTS {
                return Err(field("distribution.recipients", "too many recipients"));
            }
            let recipients = recipients
                .iter()
                .map(|r| NodeId::new(r))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| field("distribution.recipients", e.to_string()))?;
            Distribution {
                max_hops,
                recipients,
            }
        }
    };
    let header = BundleHeader {
        bundle_id,
        origin,
        created_ms: created_unix_ms,
        signer_cert_sha256,
        distribution,
        // Bounded by MAX_ITEMS_PER_BUNDLE above.
        item_count: leaf_digests.len() as u32,
    };
    Ok((header, leaf_digests))
}

/// Most bytes of a header's distribution over all its occurrences: its recipients, at
/// most [`MAX_RECIPIENTS`] node ids of at most 253 bytes each, with their framing.
const MAX_DISTRIBUTION_BYTES: usize = MAX_RECIPIENTS * 256 + 64;

/// Walks the header's fields without decoding them, before prost does: an element of a
/// repeated field costs 2 bytes on the wire but a 24-byte vector decoded, so the leaf
/// digests are counted (at most [`MAX_ITEMS_PER_BUNDLE`]) and the distribution, which
/// holds the recipients, is bounded in bytes. A header of empty digests is thus refused
/// before it can take twelve times its size in memory.
fn count_header_fields(mut buf: &[u8]) -> Result<(), VerifyError> {
    let decode = |e: prost::DecodeError| VerifyError::HeaderDecode(e.to_string());
    let (mut digests, mut distribution) = (0usize, 0usize);
    while !buf.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf).map_err(decode)?;
        let before = buf.len();
        prost::encoding::skip_field(wire_type, tag, &mut buf, Default::default())
            .map_err(decode)?;
        match tag {
            7 => {
                digests += 1;
                if digests > MAX_ITEMS_PER_BUNDLE {
                    return Err(field(
                        "leaf_digests",
                        format!("more than {MAX_ITEMS_PER_BUNDLE} digests"),
                    ));
                }
            }
            6 => {
                distribution += before - buf.len();
                if distribution > MAX_DISTRIBUTION_BYTES {
                    return Err(field(
                        "distribution",
                        format!("more than {MAX_DISTRIBUTION_BYTES} bytes"),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

use crate::util::hex;

/// Verifies a bundle as received: header, signer certificate (from `certs`, checked
/// by `trust`), signature, and every disclosed item against its digest.
pub fn verify(
    bundle: &wire::SignedBundle,
    certs: &dyn CertificateSource,
    trust: &dyn SignerTrust,
    now_ms: i64,
) -> Result<VerifiedBundle, VerifyError> {
    let (header, digests) = parse_header(&bundle.header_bytes)?;
    if header.created_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(VerifyError::FromTheFuture(header.created_ms - now_ms));
    }

    let cert = certs
        .certificate(&header.signer_cert_sha256)
        .ok_or_else(|| VerifyError::UnknownSigner(hex(&header.signer_cert_sha256)))?;
    if sha256(&cert) != header.signer_cert_sha256 {
        return Err(VerifyError::CertificateMismatch);
    }
    let signer = trust.verify_signer(&cert, header.created_ms)?;
    if signer != header.origin {
        return Err(VerifyError::SignerNotOrigin {
            origin: header.origin.to_string(),
            signer,
        });
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| SignerError::NoIdentity(e.to_string()))?;
    let public_key = &parsed.public_key().subject_public_key.data;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public_key.as_ref())
        .verify(&signed_message(&bundle.header_bytes), &bundle.signature)
        .map_err(|_| VerifyError::BadSignature)?;

    if bundle.disclosures.len() > digests.len() {
        return Err(VerifyError::TooManyDisclosures {
            disclosures: bundle.disclosures.len(),
            digests: digests.len(),
        });
    }
    let mut items = BTreeMap::new();
    for d in &bundle.disclosures {
        let digest = digests
            .get(d.index as usize)
            .ok_or(VerifyError::IndexOutOfRange(d.index))?;
        if items.contains_key(&d.index) {
            return Err(VerifyError::DuplicateIndex(d.index));
        }
        let salt: [u8; SALT_LEN] = d
            .salt
            .as_slice()
            .try_into()
            .map_err(|_| VerifyError::BadSalt(d.index))?;
        if d.item_bytes.len() > MAX_ITEM_BYTES {
            return Err(VerifyError::ItemTooLarge(d.index));
        }
        if leaf_digest(&salt, &d.item_bytes).as_slice() != digest.as_slice() {
            return Err(VerifyError::DigestMismatch(d.index));
        }
        let item = Item::decode(&d.item_bytes).map_err(|error| VerifyError::BadItem {
            index: d.index,
            error,
        })?;
        items.insert(
            d.index,
            VerifiedItem {
                index: d.index,
                salt,
                item_bytes: d.item_bytes.clone(),
                item,
            },
        );
    }
    Ok(VerifiedBundle {
        header,
        header_bytes: bundle.header_bytes.clone(),
        signature: bundle.signature.clone(),
        items: items.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::{MAX_DISTRIBUTION_BYTES, VerifyError, parse_header};
    use crate::crypto::{MAX_HEADER_BYTES, MAX_ITEMS_PER_BUNDLE};

    /// A header of the largest size made of empty leaf digests (2 bytes each on the
    /// wire, 24 decoded) is refused by the count before prost decodes it.
    #[test]
    fn a_header_of_empty_digests_is_counted_before_it_is_decoded() {
        let header = [0x3a, 0x00].repeat(MAX_HEADER_BYTES / 2);
        let Err(VerifyError::HeaderField { field, problem }) = parse_header(&header) else {
            panic!("refused");
        };
        assert_eq!(field, "leaf_digests");
        assert!(
            problem.contains(&format!("more than {MAX_ITEMS_PER_BUNDLE}")),
            "{problem}"
        );
        // The recipients' field is bounded by bytes, whatever its number of occurrences.
        // Each occurrence is 3 bytes after its key.
        let distribution = [0x32, 0x02, 0x12, 0x00].repeat(MAX_DISTRIBUTION_BYTES / 3 + 1);
        let Err(VerifyError::HeaderField { field, .. }) = parse_header(&distribution) else {
            panic!("refused");
        };
        assert_eq!(field, "distribution");
    }
}
