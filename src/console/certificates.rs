//! The expiry of the certificates in force (the node's own as presented, its trust
//! anchors, its partners' last ones), and of the node's certificate file when it is
//! not the one presented. Only public certificates, never the key.

use std::path::Path;

use crate::transport::TlsPaths;

/// One certificate's validity, as the console and the metrics show it.
#[derive(Clone, Debug)]
pub struct CertificateExpiry {
    /// `own` (this node's certificate), `ca` (a trust anchor) or `partner` (the
    /// certificate a partner connected with).
    pub role: &'static str,
    /// Its subject: the node id for the node's certificate, the distinguished name for
    /// a CA.
    pub subject: String,
    /// The file it was read from.
    pub file: String,
    /// Its notAfter, ms since the epoch.
    pub not_after_ms: i64,
    /// The issuer of a CRL in force that revokes it (the node's own only).
    pub revoked_by: Option<String>,
}

/// Days from `now_ms` until `cert` expires (negative once it has).
pub fn days_left(cert: &CertificateExpiry, now_ms: i64) -> f64 {
    ((cert.not_after_ms - now_ms) as f64 / 86_400_000.0 * 100.0).round() / 100.0
}

/// The certificates in force: the node's own as its listener presents it (not the
/// file on disk, which a renewal may have replaced before the restart that puts it in
/// use), the trust anchors in force, and the last certificate each configured partner
/// connected with. When the certificate file on disk is not the one presented, it is
/// listed too, as `own (file, not in use until a restart)`, so that a renewal waiting
/// for its restart is seen.
pub fn read(
    paths: &TlsPaths,
    node: &str,
    watched: &[crate::transport::expiry::WatchedCertificate],
) -> Vec<CertificateExpiry> {
    use crate::transport::expiry::CertificateRole;
    let mut out = Vec::new();
    let mut presented = None;
    for cert in watched {
        let (role, subject, file) = match cert.role {
            CertificateRole::Own => {
                presented = Some(cert.not_after_ms);
                ("own", node.to_owned(), paths.cert.display().to_string())
            }
            CertificateRole::TrustAnchor => ("ca", cert.name.clone(), String::new()),
            CertificateRole::Partner => ("partner", cert.name.clone(), String::new()),
        };
        out.push(CertificateExpiry {
            role,
            subject,
            file,
            not_after_ms: cert.not_after_ms,
            revoked_by: cert.revoked_by.clone(),
        });
    }
    if let Some((_, on_disk)) = read_file(&paths.cert).into_iter().next() {
        if presented.is_some_and(|presented| presented != on_disk) {
            out.push(CertificateExpiry {
                role: "own_file",
                subject: format!("{node} (file, not in use until a restart)"),
                file: paths.cert.display().to_string(),
                not_after_ms: on_disk,
                revoked_by: None,
            });
        }
    }
    out
}

/// (subject, notAfter in ms) of every certificate in a PEM file.
fn read_file(path: &Path) -> Vec<(String, i64)> {
    let Ok(certs) = crate::transport::files::read_certificates(path) else {
        return Vec::new();
    };
    certs
        .iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let not_after = cert.validity().not_after.timestamp().saturating_mul(1000);
            Some((cert.subject().to_string(), not_after))
        })
        .collect()
}
