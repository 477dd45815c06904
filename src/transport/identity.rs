//! From a verified certificate to a configured partner: the certificate's first
//! DNS subject-alternative name is the id, and the [`Directory`] says who that is.

use std::collections::HashMap;
use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::{InvalidNodeId, NodeId, Partner, PartnerKind, Role};

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

/// Every identity this node will talk to. Anything else is refused at the handshake.
/// Replaced as a whole when the configuration is reloaded.
#[derive(Debug, Default)]
pub struct Directory {
    partners: std::sync::RwLock<HashMap<NodeId, Partner>>,
}

impl Directory {
    /// A directory of the given partners. The node itself is added as [`PartnerKind::Local`]
    /// with the admin role: whoever holds the node's own key is its operator.
    pub fn new(own_id: &NodeId, partners: impl IntoIterator<Item = Partner>) -> Self {
        Self {
            partners: std::sync::RwLock::new(Self::map(own_id, partners)),
        }
    }

    fn map(
        own_id: &NodeId,
        partners: impl IntoIterator<Item = Partner>,
    ) -> HashMap<NodeId, Partner> {
        let mut map: HashMap<NodeId, Partner> =
            partners.into_iter().map(|p| (p.id.clone(), p)).collect();
        map.insert(
            own_id.clone(),
            Partner {
                id: own_id.clone(),
                kind: PartnerKind::Local,
                role: Role::Admin,
            },
        );
        map
    }

    /// Replaces every entry (configuration reload). Connections already open keep the
    /// identity they were accepted with; new handshakes see the new directory.
    pub fn replace(&self, own_id: &NodeId, partners: impl IntoIterator<Item = Partner>) {
        let map = Self::map(own_id, partners);
        *self.partners.write().unwrap_or_else(|p| p.into_inner()) = map;
    }

    /// The partner with this id, if configured.
    pub fn lookup(&self, id: &NodeId) -> Option<Partner> {
        self.partners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }
}

/// What the server knows about the other end of an accepted connection. Attached to
/// every request as an extension by the listener.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// The authenticated partner.
    pub partner: Partner,
    /// The remote socket address.
    pub remote_addr: SocketAddr,
}
