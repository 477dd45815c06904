//! Everything between a socket and a request: rustls configurations, the client
//! certificate verifier, certificate → partner mapping, the authenticated
//! listener and outgoing connections. No gRPC service logic and no policy here.

pub mod connect;
pub mod files;
pub mod identity;
pub mod listener;
pub mod tls;

pub use connect::{ConnectError, connect};
pub use identity::{ConnectionInfo, Directory, Partner, PartnerKind, certificate_id};
pub use tls::{TlsError, TlsMaterial, TlsPaths, crypto_provider};
