//! The signed formats as prost messages (`proto/entente/v1/bundle.proto`): bundle
//! headers, disclosures and items. Their exact bytes are what is hashed and signed,
//! so `crypto` and `store` use these types directly; `rpc` reuses them by extern path.
//! No tonic here.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/wire/entente.v1.rs"));

/// Largest request accepted by the Federation service (Hello, Pull, GetCertificates).
pub const MAX_FEDERATION_REQUEST_BYTES: usize = 64 * 1024;

/// Largest gRPC message accepted or sent (a bundle of 100,000 small items fits).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
