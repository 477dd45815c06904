//! Bundle cryptography (DESIGN section 4): canonical header bytes, salted leaf
//! digests, the domain-separated ECDSA P-256 signature, and verification that
//! turns wire bytes into a verified bundle. No I/O here.

/// Prefix of every bundle signature, so no bundle signature can be taken for any
/// other signature made with the node's key (such as a TLS handshake).
pub const BUNDLE_SIGNATURE_CONTEXT: &[u8] = b"entente/bundle/v1\0";

/// Name of the v1 signature algorithm in bundle headers.
pub const SIGNATURE_ALGORITHM_V1: &str = "ecdsa-p256-sha256";
