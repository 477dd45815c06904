//! Bundle cryptography: salted leaf digests, the exact header
//! bytes, the domain-separated ECDSA P-256 signature, and verification that turns
//! wire bytes into a [`VerifiedBundle`] or a specific [`VerifyError`]. No I/O here:
//! certificates come in through [`CertificateSource`] and chain checks through
//! [`SignerTrust`].

pub mod password;
mod sign;
mod verify;

pub use sign::{BundleSigner, SignError};
pub use verify::{
    BundleHeader, CertificateSource, SignerError, SignerTrust, VerifiedBundle, VerifiedItem,
    VerifyError, parse_header, verify,
};

/// Prefix of every bundle signature, so no bundle signature can be taken for any
/// other signature made with the node's key (such as a TLS handshake).
pub const BUNDLE_SIGNATURE_CONTEXT: &[u8] = b"entente/bundle/v1\0";

/// Name of the v1 signature algorithm in bundle headers.
pub const SIGNATURE_ALGORITHM_V1: &str = "ecdsa-p256-sha256";

/// Bytes of salt per item.
pub const SALT_LEN: usize = 16;

/// Most items one bundle may have.
pub const MAX_ITEMS_PER_BUNDLE: usize = 100_000;

/// Largest encoded item.
pub const MAX_ITEM_BYTES: usize = 64 * 1024;

/// Largest encoded header (leaf digests included).
pub const MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;

/// How far in the future a bundle's creation time may be (clock skew between nodes).
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The leaf digest of one item: SHA-256(salt || item_bytes).
pub fn leaf_digest(salt: &[u8], item_bytes: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt);
    ctx.update(item_bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The bytes a bundle signature covers.
pub fn signed_message(header_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(BUNDLE_SIGNATURE_CONTEXT.len() + header_bytes.len());
    message.extend_from_slice(BUNDLE_SIGNATURE_CONTEXT);
    message.extend_from_slice(header_bytes);
    message
}
