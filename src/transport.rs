//! Everything between a socket and a request: rustls configurations, the client
//! certificate verifier, certificate → partner mapping, the authenticated
//! listener and outgoing connections. No gRPC service logic and no policy here.

pub mod access;
pub mod connect;
pub mod crl;
pub mod expiry;
pub mod files;
pub mod identity;
pub mod listener;
pub mod tls;

pub use crate::model::{Partner, PartnerKind};
pub use access::{Cause, Directory, Listing, Verifiers, Withdrawal};
pub use connect::{ConnectError, connect};
pub use identity::{CertificateLabel, ConnectionInfo, certificate_id};
pub use tls::{SignerVerifier, TlsError, TlsMaterial, TlsPaths, crypto_provider};
