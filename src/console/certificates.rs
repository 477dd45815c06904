//! The expiry of the node's own certificate and of its trust anchors, read from the
//! files the configuration names (the same files `node` loaded; only public
//! certificates, never the key).

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
}

/// Days from `now_ms` until `cert` expires (negative once it has).
pub fn days_left(cert: &CertificateExpiry, now_ms: i64) -> f64 {
    ((cert.not_after_ms - now_ms) as f64 / 86_400_000.0 * 100.0).round() / 100.0
}

/// The node's certificate (the leaf of `paths.cert`), every trust anchor, and the
/// certificate of each partner connected now (`connected`: id → notAfter in seconds); a
/// file that cannot be read now is left out (the node checked it when it loaded it).
pub fn read(
    paths: &TlsPaths,
    node: &str,
    connected: &std::collections::BTreeMap<crate::model::NodeId, i64>,
) -> Vec<CertificateExpiry> {
    let mut out = Vec::new();
    if let Some(own) = read_file(&paths.cert).into_iter().next() {
        out.push(CertificateExpiry {
            role: "own",
            subject: node.to_owned(),
            file: paths.cert.display().to_string(),
            not_after_ms: own.1,
        });
    }
    for anchor in &paths.trust_anchors {
        for (subject, not_after_ms) in read_file(anchor) {
            out.push(CertificateExpiry {
                role: "ca",
                subject,
                file: anchor.display().to_string(),
                not_after_ms,
            });
        }
    }
    for (id, not_after) in connected {
        out.push(CertificateExpiry {
            role: "partner",
            subject: id.to_string(),
            file: String::new(),
            not_after_ms: not_after.saturating_mul(1000),
        });
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
