//! Certificate revocation lists that travel through the federation: a CRL offered by a
//! peer (or handed to this node by its operator) is put in force only if one of this
//! node's trust anchors signed it and it is newer than the CRL in force for that
//! issuer. Of several CRLs from one issuer, only the newest is in force.

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// Largest CRL accepted (DER): it must fit in one small gRPC request (64 KiB), which
/// holds well over a thousand revoked certificates.
pub const MAX_CRL_BYTES: usize = 60 * 1024;

/// Why an offered CRL is not put in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlRefusal {
    /// Larger than [`MAX_CRL_BYTES`].
    #[error("the CRL is larger than {MAX_CRL_BYTES} bytes")]
    TooLarge,
    /// Not a DER CRL.
    #[error("not a readable CRL: {0}")]
    Unreadable(String),
    /// No trust anchor of this node has the CRL's issuer as subject and a key that
    /// verifies its signature.
    #[error("the CRL of {issuer} is not signed by any trust anchor of this node")]
    Untrusted {
        /// The issuer named in the CRL.
        issuer: String,
    },
    /// The CRL's issuer is the subject of more than one trust anchor, and the one that
    /// signed it is not an anchor this node's own certificate comes from. Verifiers pick
    /// a CRL by its issuer's name: in force, it would stand for every anchor of that
    /// name, and the certificates of the others would fail its signature check (a
    /// partner's CA given the name of this node's CA could cut off every certificate
    /// that CA issued).
    #[error(
        "the CRL of {issuer} names an issuer that more than one trust anchor of this node is called by, and is not signed by the anchor of this node's own certificate"
    )]
    Ambiguous {
        /// The issuer named in the CRL.
        issuer: String,
    },
    /// The CRL in force for that issuer is as new or newer.
    #[error("the CRL of {issuer} is not newer than the one in force")]
    NotNewer {
        /// The issuer.
        issuer: String,
    },
}

/// What orders two CRLs of one issuer: the CRL number when both carry one, else the
/// thisUpdate time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Freshness {
    issuer: Vec<u8>,
    /// The issuer's key identifier (authority key identifier), when the CRL names it:
    /// two CAs may bear one name, and each CRL speaks for its own key only.
    key_id: Option<Vec<u8>>,
    number: Option<Vec<u8>>,
    this_update: i64,
}

impl Freshness {
    fn of(der: &[u8]) -> Result<Self, CrlRefusal> {
        let (rest, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| CrlRefusal::Unreadable(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CrlRefusal::Unreadable("trailing bytes".into()));
        }
        let key_id = authority_key_id(crl.extensions());
        Ok(Self {
            issuer: crl.issuer().as_raw().to_vec(),
            key_id,
            number: crl.crl_number().map(|n| n.to_bytes_be()),
            this_update: crl.last_update().timestamp(),
        })
    }

    /// Whether both come from one issuer: the same name and the same key identifier.
    fn same_issuer(&self, other: &Freshness) -> bool {
        self.issuer == other.issuer && self.key_id == other.key_id
    }

    /// Whether `self` is newer than `other` (same issuer assumed).
    fn newer_than(&self, other: &Freshness) -> bool {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => compare_big_endian(a, b) == std::cmp::Ordering::Greater,
            _ => self.this_update > other.this_update,
        }
    }
}

/// Compares two unsigned big-endian integers.
fn compare_big_endian(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let trim = |x: &[u8]| -> Vec<u8> { x.iter().copied().skip_while(|b| *b == 0).collect() };
    let (a, b) = (trim(a), trim(b));
    a.len().cmp(&b.len()).then_with(|| a.cmp(&b))
}

/// The key identifier an authority key identifier extension among `extensions` names.
fn authority_key_id(extensions: &[x509_parser::extensions::X509Extension<'_>]) -> Option<Vec<u8>> {
    extensions
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
}

/// The issuer of the first CRL of `crls` that revokes `cert` (the same issuer name and,
/// when both name one, the same issuer key identifier, and the certificate's serial
/// listed), or `None`.
pub fn revoking_issuer(
    crls: &[CertificateRevocationListDer<'_>],
    cert: &CertificateDer<'_>,
) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let cert_key_id = authority_key_id(cert.extensions());
    crls.iter().find_map(|der| {
        let (_, crl) = CertificateRevocationList::from_der(der.as_ref()).ok()?;
        if crl.issuer().as_raw() != cert.issuer().as_raw() {
            return None;
        }
        let crl_key_id = authority_key_id(crl.extensions());
        if let (Some(a), Some(b)) = (&crl_key_id, &cert_key_id) {
            if a != b {
                return None;
            }
        }
        crl.iter_revoked_certificates()
            .any(|revoked| revoked.raw_serial() == cert.raw_serial())
            .then(|| crl.issuer().to_string())
    })
}

/// The checks of an offered CRL that need no configuration: its size, and that it
/// reads as one CRL with nothing after it. Cheap, so made before anything is loaded.
pub fn check_form(der: &[u8]) -> Result<(), CrlRefusal> {
    if der.len() > MAX_CRL_BYTES {
        return Err(CrlRefusal::TooLarge);
    }
    Freshness::of(der).map(|_| ())
}

/// Checks an offered CRL (DER): signed by one of `anchors` and newer than every CRL of
/// the same issuer in `in_force`; when several anchors bear the issuer's name, signed by
/// one of `own` (the anchors this node's own certificate comes from). Returns the
/// issuer's name in words.
pub fn check_offered(
    der: &[u8],
    anchors: &[CertificateDer<'_>],
    own: &[CertificateDer<'_>],
    in_force: &[CertificateRevocationListDer<'_>],
) -> Result<String, CrlRefusal> {
    check_form(der)?;
    let (_, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| CrlRefusal::Unreadable(e.to_string()))?;
    let issuer = crl.issuer().to_string();
    let mut named: Vec<&CertificateDer<'_>> = Vec::new();
    let mut signer = None;
    for anchor in anchors {
        let Ok((_, cert)) = X509Certificate::from_der(anchor.as_ref()) else {
            continue;
        };
        if cert.subject().as_raw() != crl.issuer().as_raw() || named.contains(&anchor) {
            continue;
        }
        named.push(anchor);
        if signer.is_none() && crl.verify_signature(cert.public_key()).is_ok() {
            signer = Some(anchor);
        }
    }
    let Some(signer) = signer else {
        return Err(CrlRefusal::Untrusted { issuer });
    };
    if named.len() > 1 && !own.contains(signer) {
        return Err(CrlRefusal::Ambiguous { issuer });
    }
    let offered = Freshness::of(der)?;
    for current in in_force {
        if let Ok(current) = Freshness::of(current.as_ref()) {
            if current.same_issuer(&offered) && !offered.newer_than(&current) {
                return Err(CrlRefusal::NotNewer { issuer });
            }
        }
    }
    Ok(issuer)
}

/// Whether the CRL (DER) was signed by one of `certificates` (named as its issuer), or
/// cannot be read at all (left for the verifier builder to refuse).
pub fn signed_by_any_or_unreadable(der: &[u8], certificates: &[CertificateDer<'_>]) -> bool {
    let Ok((_, crl)) = CertificateRevocationList::from_der(der) else {
        return true;
    };
    certificates.iter().any(|cert| {
        X509Certificate::from_der(cert.as_ref()).is_ok_and(|(_, cert)| {
            cert.subject().as_raw() == crl.issuer().as_raw()
                && crl.verify_signature(cert.public_key()).is_ok()
        })
    })
}

/// Keeps, of several CRLs from one issuer, only the newest (an unreadable CRL is kept
/// as it is, for the verifier builder to refuse).
pub fn newest_per_issuer(
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Vec<CertificateRevocationListDer<'static>> {
    let mut kept: Vec<(Option<Freshness>, CertificateRevocationListDer<'static>)> = Vec::new();
    for crl in crls {
        let fresh = Freshness::of(crl.as_ref()).ok();
        let same_issuer = fresh.as_ref().and_then(|f| {
            kept.iter()
                .position(|(k, _)| k.as_ref().is_some_and(|k| k.same_issuer(f)))
        });
        match (same_issuer, &fresh) {
            (Some(at), Some(f)) => {
                let newer = kept[at].0.as_ref().is_some_and(|k| f.newer_than(k));
                if newer {
                    kept[at] = (fresh, crl);
                }
            }
            _ => kept.push((fresh, crl)),
        }
    }
    kept.into_iter().map(|(_, crl)| crl).collect()
}

/// A short, stable file name for the CRL of an issuer (hex of a hash of its name).
pub fn file_name_for(der: &[u8]) -> Result<String, CrlRefusal> {
    let fresh = Freshness::of(der)?;
    let mut named = fresh.issuer.clone();
    if let Some(key_id) = &fresh.key_id {
        named.push(0);
        named.extend_from_slice(key_id);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &named);
    Ok(format!(
        "issuer-{}.pem",
        crate::util::hex(&digest.as_ref()[..8])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertificateAuthority, Validity};

    fn der(pem: &str) -> CertificateRevocationListDer<'static> {
        use rustls::pki_types::pem::PemObject;
        CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_newest_crl_of_an_issuer_is_in_force_and_only_a_newer_one_is_taken() {
        let ca = CertificateAuthority::generate("one", Validity::days_from_now(1)).unwrap();
        let other = CertificateAuthority::generate("two", Validity::days_from_now(1)).unwrap();
        let (first, second) = (
            der(&ca.crl(&[], 1, 1).unwrap()),
            der(&ca.crl(&[], 2, 1).unwrap()),
        );
        let theirs = der(&other.crl(&[], 7, 1).unwrap());
        let kept = newest_per_issuer(vec![second.clone(), theirs.clone(), first.clone()]);
        assert_eq!(kept, vec![second.clone(), theirs.clone()]);

        use rustls::pki_types::pem::PemObject;
        let anchor = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap();
        let anchors = [anchor];
        assert!(
            check_offered(second.as_ref(), &anchors, &[], std::slice::from_ref(&first)).is_ok()
        );
        assert!(matches!(
            check_offered(first.as_ref(), &anchors, &[], std::slice::from_ref(&second)),
            Err(CrlRefusal::NotNewer { .. })
        ));
        assert!(matches!(
            check_offered(theirs.as_ref(), &anchors, &[], &[]),
            Err(CrlRefusal::Untrusted { .. })
        ));
        assert!(matches!(
            check_offered(&vec![0; MAX_CRL_BYTES + 1], &anchors, &[], &[]),
            Err(CrlRefusal::TooLarge)
        ));

        // Two anchors under one name: only the one this node's certificate comes from
        // may have its CRL put in force.
        let namesake = CertificateAuthority::generate("one", Validity::days_from_now(1)).unwrap();
        let namesake_anchor =
            CertificateDer::from_pem_slice(namesake.cert_pem().as_bytes()).unwrap();
        let both = [anchors[0].clone(), namesake_anchor];
        let own = std::slice::from_ref(&anchors[0]);
        assert!(check_offered(second.as_ref(), &both, own, &[]).is_ok());
        let forged = der(&namesake.crl(&[], 9, 1).unwrap());
        assert!(matches!(
            check_offered(forged.as_ref(), &both, own, &[]),
            Err(CrlRefusal::Ambiguous { .. })
        ));
        assert_eq!(
            compare_big_endian(&[0, 2], &[1]),
            std::cmp::Ordering::Greater
        );
        assert_eq!(
            compare_big_endian(&[1, 0], &[0xff]),
            std::cmp::Ordering::Greater
        );
    }
}
