//! Certificate expiry: the certificates a node depends on (its own, its trust anchors,
//! the partner certificates it has admitted) with their notAfter, and the warning that
//! one of them expires soon, logged at start and once a day and shown by
//! `entente status`. Reads certificates only; refuses nothing (expiry itself is
//! enforced by the verifiers and `access`).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::access::Directory;
use super::identity::CertificateLabel;

/// How long before its notAfter a certificate is reported as expiring soon.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// How often a running node logs the certificates that expire soon.
pub const EXPIRY_CHECK_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// What a watched certificate is to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateRole {
    /// The node's own certificate (as its listener presents it).
    Own,
    /// A CA certificate in `node.trust_anchors`.
    TrustAnchor,
    /// A partner's certificate, seen when it connected.
    Partner,
}

impl CertificateRole {
    /// The role in words, as `entente status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateRole::Own => "own",
            CertificateRole::TrustAnchor => "trust anchor",
            CertificateRole::Partner => "partner",
        }
    }
}

/// One certificate whose expiry matters to this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedCertificate {
    /// What it is to this node.
    pub role: CertificateRole,
    /// The id (own, partner) or the subject (trust anchor).
    pub name: String,
    /// The serial number, hex.
    pub serial: String,
    /// notAfter, milliseconds since the Unix epoch.
    pub not_after_ms: i64,
    /// For a partner: when it last connected, milliseconds since the Unix epoch.
    pub last_seen_ms: Option<i64>,
    /// For the node's own: the issuer of a CRL in force that revokes it (partners then
    /// refuse the node's connections and bundles).
    pub revoked_by: Option<String>,
}

impl WatchedCertificate {
    /// Reads a certificate; `None` if it cannot be parsed (the verifiers refuse those).
    pub fn read(role: CertificateRole, der: &CertificateDer<'_>) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
        let label = CertificateLabel::of(der);
        let name = match role {
            CertificateRole::TrustAnchor => cert.subject().to_string(),
            CertificateRole::Own | CertificateRole::Partner => label.id,
        };
        Some(Self {
            role,
            name,
            serial: label.serial,
            not_after_ms: cert.validity().not_after.timestamp().saturating_mul(1000),
            last_seen_ms: None,
            revoked_by: None,
        })
    }

    /// What to do about it expiring, in words.
    pub fn advice(&self) -> &'static str {
        match self.role {
            CertificateRole::TrustAnchor => {
                "a new CA certificate must be in every node's node.trust_anchors before then"
            }
            CertificateRole::Own | CertificateRole::Partner => {
                "renew it (entente certs renew at the CA) and install the new one"
            }
        }
    }

    /// Whether it expires within `window` of `now_ms` (or has expired).
    pub fn expires_within(&self, now_ms: i64, window: Duration) -> bool {
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        self.not_after_ms <= now_ms.saturating_add(window_ms)
    }

    /// Its expiry in words relative to `now_ms`: "expires in 12 days (2027-01-01T00:00:00Z)"
    /// or "expired 3 days ago (…)".
    pub fn expiry_words(&self, now_ms: i64) -> String {
        let at = time::OffsetDateTime::from_unix_timestamp(self.not_after_ms / 1000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.not_after_ms.to_string());
        let days = (self.not_after_ms - now_ms) / (24 * 3600 * 1000);
        if self.not_after_ms <= now_ms {
            format!("expired {} days ago ({at})", -days)
        } else {
            format!("expires in {days} days ({at})")
        }
    }
}

/// Logs a warning for each certificate in `watched` that expires within
/// [`EXPIRY_WARNING`] of `now_ms`.
pub fn log_expiring(watched: &[WatchedCertificate], now_ms: i64) {
    for cert in watched
        .iter()
        .filter(|c| c.expires_within(now_ms, EXPIRY_WARNING))
    {
        tracing::warn!(
            certificate = cert.role.as_str(),
            name = %cert.name,
            serial = %cert.serial,
            expiry = %cert.expiry_words(now_ms),
            advice = cert.advice(),
            "certificate expires soon"
        );
    }
}

pub use crate::util::now_ms;

/// Logs the certificates that expire soon now and then once every
/// [`EXPIRY_CHECK_PERIOD`], until `shutdown`.
pub async fn watch(directory: Arc<Directory>, shutdown: CancellationToken) {
    loop {
        log_expiring(&directory.watched_certificates(), now_ms());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_CHECK_PERIOD) => {}
        }
    }
}
