//! From a verified certificate to a configured partner: the certificate's first
//! DNS subject-alternative name is the id, and the [`super::Directory`] says who
//! that is; [`ConnectionInfo`] is what a request knows of its connection.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::access::{Access, Withdrawal};
use crate::model::{InvalidNodeId, NodeId, Partner};

/// Why no id could be read from a certificate.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// The DER is not an X.509 certificate.
    #[error("certificate cannot be parsed: {0}")]
    Unparseable(String),
    /// The certificate has no DNS subject-alternative name.
    #[error("certificate has no DNS subject-alternative name to take the id from")]
    NoDnsName,
    /// The first DNS name is not a valid id.
    #[error("certificate id {name:?} is invalid: {reason}")]
    InvalidId {
        /// The name as found.
        name: String,
        /// Why it is not an id.
        reason: InvalidNodeId,
    },
}

/// Reads the id of a certificate: its first DNS subject-alternative name.
///
/// Certificates made by `entente certs` put the id first; further DNS names
/// (host names used to reach the node) follow it.
pub fn certificate_id(der: &CertificateDer<'_>) -> Result<NodeId, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?
        .ok_or(IdentityError::NoDnsName)?;
    let name = san
        .value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::DNSName(name) => Some(*name),
            _ => None,
        })
        .ok_or(IdentityError::NoDnsName)?;
    NodeId::new(name).map_err(|reason| IdentityError::InvalidId {
        name: name.to_owned(),
        reason,
    })
}

/// Which certificate a handshake concerned, for messages and logs: its id (or why it
/// has none) and its serial number in lowercase hex, as `revoked.toml` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateLabel {
    /// The id the certificate names, or a placeholder saying why none can be read.
    pub id: String,
    /// The serial number, hex; empty when the certificate cannot be parsed.
    pub serial: String,
}

impl CertificateLabel {
    /// The label of a certificate (DER); never fails, whatever the bytes.
    pub fn of(der: &CertificateDer<'_>) -> Self {
        let id = match certificate_id(der) {
            Ok(id) => id.to_string(),
            Err(_) => "(no valid id)".to_owned(),
        };
        let serial = X509Certificate::from_der(der.as_ref())
            .map(|(_, cert)| crate::util::hex(cert.raw_serial()))
            .unwrap_or_default();
        Self { id, serial }
    }
}

impl std::fmt::Display for CertificateLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.serial.is_empty() {
            write!(f, "{} (unreadable certificate)", self.id)
        } else {
            write!(f, "{} (serial {})", self.id, self.serial)
        }
    }
}

/// What the server knows about the other end of an accepted connection. Attached to
/// every request as an extension by the listener; `partner` is replaced by the one in
/// force now before a request reaches a service (`rpc::auth`).
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The authenticated partner.
    pub partner: Partner,
    /// The remote socket address.
    pub remote_addr: SocketAddr,
    /// The connection's entry in the directory's registry.
    pub(crate) access: Arc<Access>,
}

impl ConnectionInfo {
    /// The client certificate's notAfter, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.access.not_after()
    }

    /// The withdrawal, if this connection's access was withdrawn.
    pub fn withdrawal(&self) -> Option<Withdrawal> {
        self.access.withdrawal()
    }

    /// Marks a call in progress on this connection until the guard is dropped: a
    /// connection with none is closed after `limits.idle_connection_timeout`.
    pub(crate) fn call_begun(&self) -> super::access::CallInProgress {
        self.access.call_begun()
    }

    /// Resolves when this connection's access is withdrawn (partner removed or
    /// changed, certificate revoked or expired); stream handlers select on it to
    /// end with a clear status.
    pub fn withdrawn(&self) -> impl std::future::Future<Output = Withdrawal> + Send + 'static {
        self.access.withdrawn()
    }
}

/// The SubjectPublicKeyInfo (DER) of a certificate, or `None` if it cannot be parsed.
pub fn public_key(der: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// Whether a certificate may serve as a node's: its extended key usage allows server
/// authentication (`certs node` gives server and client use, `certs client` client use
/// only), or it has no such extension (any use, as RFC 5280 reads it and as WebPKI
/// accepts it for a server; many organisations' CAs issue them so).
pub fn is_node_certificate(der: &CertificateDer<'_>) -> bool {
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else {
        return false;
    };
    match cert.extended_key_usage() {
        Ok(None) => true,
        Ok(Some(usage)) => usage.value.server_auth || usage.value.any,
        Err(_) => false,
    }
}
