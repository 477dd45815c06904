//! The federation's certificate tooling behind `entente certs` and `entente init`:
//! a CA, node and client certificates (ECDSA P-256), and a CRL. Used by operators
//! for small federations and by the tests to build a PKI at run time.
//!
//! Layout of a certificate directory:
//!
//! | file | contents |
//! | --- | --- |
//! | `ca.crt`, `ca.key` | the federation CA (key mode 0600) |
//! | `ID.crt`, `ID.key` | a node or client certificate and key (mode 0600) |
//! | `revoked.toml` | the revocation register: serials, ids, times, CRL number |
//! | `crl.pem` | the CRL signed by the CA, regenerated from the register |

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::model::NodeId;
use crate::transport::files::{self, FileError};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// Key generation, signing or encoding failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read, parsed, or has unsafe permissions.
    #[error(transparent)]
    File(#[from] FileError),
    /// A file could not be written (for example, it exists already).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A certificate file is not a certificate this tool can read.
    #[error("{path}: {problem}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A DNS name given for a node certificate is invalid.
    #[error("invalid DNS name {0:?}")]
    BadDnsName(String),
}

/// The validity period of a certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// First instant of validity.
    pub not_before: OffsetDateTime,
    /// Last instant of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from an hour ago (tolerating clock skew) for `days` days.
    pub fn days_from_now(days: u32) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(i64::from(days)),
        }
    }
}

/// What a certificate is for.
#[derive(Clone, Debug)]
pub enum Usage {
    /// A node: server and client authentication; extra host names and addresses
    /// (after the id, which is always the first DNS name).
    Node {
        /// IP addresses the node is reached at.
        ips: Vec<IpAddr>,
        /// Further DNS names the node is reached at.
        dns: Vec<String>,
    },
    /// A client (analyst, researcher, tool): client authentication only.
    Client,
}

/// A certificate and its private key, both PEM.
pub struct IssuedCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Never log it.
    pub key_pem: String,
}

/// A federation certificate authority.
pub struct CertificateAuthority {
    cert_pem: String,
    key: KeyPair,
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive and without a leading zero byte, so the DER integer is exactly these bytes.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn new_key() -> Result<KeyPair, rcgen::Error> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
}

impl CertificateAuthority {
    /// Generates a CA named `name`.
    pub fn generate(name: &str, validity: Validity) -> Result<Self, CertsError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Entente federation");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its certificate and key (both PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertsError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parse once now so a mismatched file fails here rather than when signing.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    /// The CA certificate (PEM): the trust anchor to give every node.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key (PEM). Never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, CertsError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// Issues a certificate whose first DNS name is `id`.
    pub fn issue(
        &self,
        id: &NodeId,
        usage: &Usage,
        validity: Validity,
    ) -> Result<IssuedCertificate, CertsError> {
        let key = new_key()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, id.as_str());
        let mut sans = vec![SanType::DnsName(id.as_str().try_into()?)];
        match usage {
            Usage::Node { ips, dns } => {
                for name in dns {
                    if name != id.as_str() {
                        sans.push(SanType::DnsName(
                            name.as_str()
                                .try_into()
                                .map_err(|_| CertsError::BadDnsName(name.clone()))?,
                        ));
                    }
                }
                sans.extend(ips.iter().copied().map(SanType::IpAddress));
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Usage::Client => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A CRL listing `revoked`, valid for `days` days.
    pub fn crl(
        &self,
        revoked: &[RevokedEntry],
        crl_number: u64,
        days: u32,
    ) -> Result<String, CertsError> {
        let now = OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::with_capacity(revoked.len());
        for entry in revoked {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&entry.serial_bytes()?),
                revocation_time: entry.revoked_at,
                reason_code: Some(RevocationReason::Unspecified),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: now - Duration::minutes(5),
            next_update: now + Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }
}

/// One revoked certificate in the register.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// The id the certificate was issued to.
    pub id: String,
    /// Its serial number, hex.
    pub serial: String,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

impl RevokedEntry {
    fn serial_bytes(&self) -> Result<Vec<u8>, CertsError> {
        hex_decode(&self.serial).ok_or_else(|| CertsError::Malformed {
            path: PathBuf::from(REVOKED_FILE),
            problem: format!("serial {:?} is not hex", self.serial),
        })
    }
}

/// The revocation register kept next to the CA.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RevocationRegister {
    /// Number of the last CRL issued.
    pub crl_number: u64,
    /// Every revoked certificate.
    #[serde(default)]
    pub revoked: Vec<RevokedEntry>,
}

const REVOKED_FILE: &str = "revoked.toml";
/// Validity of a CRL written by `entente certs revoke`.
pub const CRL_VALIDITY_DAYS: u32 = 365;

/// A directory holding a federation CA and the certificates it issued.
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// The directory (created when needed).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Path of `ID.crt`.
    pub fn cert_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.crt"))
    }

    /// Path of `ID.key`.
    pub fn key_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }

    /// Path of `ca.crt`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Path of `crl.pem`.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    fn create_dir(&self) -> Result<(), CertsError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CertsError::Write {
            path: self.dir.clone(),
            source,
        })
    }

    fn write_pair(&self, stem: &str, issued: &IssuedCertificate) -> Result<(), CertsError> {
        let cert = self.cert_path(stem);
        let key = self.key_path(stem);
        for path in [&cert, &key] {
            if path.exists() {
                return Err(CertsError::Write {
                    path: path.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "file exists; refusing to overwrite",
                    ),
                });
            }
        }
        files::write_private(&key, issued.key_pem.as_bytes()).map_err(|source| {
            CertsError::Write {
                path: key.clone(),
                source,
            }
        })?;
        files::write_public_new(&cert, issued.cert_pem.as_bytes())
            .map_err(|source| CertsError::Write { path: cert, source })
    }

    /// Creates `ca.crt` and `ca.key`; refuses if a CA exists already.
    pub fn create_ca(
        &self,
        name: &str,
        validity: Validity,
    ) -> Result<CertificateAuthority, CertsError> {
        self.create_dir()?;
        let ca = CertificateAuthority::generate(name, validity)?;
        self.write_pair(
            "ca",
            &IssuedCertificate {
                cert_pem: ca.cert_pem.clone(),
                key_pem: ca.key_pem(),
            },
        )?;
        Ok(ca)
    }

    /// Loads the CA (checking the key file's permissions).
    pub fn load_ca(&self) -> Result<CertificateAuthority, CertsError> {
        let cert_path = self.ca_cert_path();
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|source| {
            CertsError::File(FileError::Read {
                path: cert_path.clone(),
                source,
            })
        })?;
        let key_pem = files::read_private_key_pem(&self.key_path("ca"))?;
        CertificateAuthority::from_pem(&cert_pem, &key_pem)
    }

    /// Issues `ID.crt` / `ID.key` signed by the CA in this directory.
    pub fn issue(&self, id: &NodeId, usage: &Usage, validity: Validity) -> Result<(), CertsError> {
        let ca = self.load_ca()?;
        let issued = ca.issue(id, usage, validity)?;
        self.write_pair(id.as_str(), &issued)
    }

    /// Adds `ID.crt` to the register and rewrites `crl.pem`. Returns the CRL path.
    pub fn revoke(&self, id: &NodeId) -> Result<PathBuf, CertsError> {
        let ca = self.load_ca()?;
        let cert_path = self.cert_path(id.as_str());
        let serial = hex_encode(&certificate_serial(&cert_path)?);
        let register_path = self.dir.join(REVOKED_FILE);
        let mut register = read_register(&register_path)?;
        if !register.revoked.iter().any(|r| r.serial == serial) {
            register.revoked.push(RevokedEntry {
                id: id.to_string(),
                serial,
                revoked_at: OffsetDateTime::now_utc(),
            });
        }
        register.crl_number += 1;
        let crl = ca.crl(&register.revoked, register.crl_number, CRL_VALIDITY_DAYS)?;
        let text = toml::to_string(&register).map_err(|e| CertsError::Malformed {
            path: register_path.clone(),
            problem: e.to_string(),
        })?;
        files::replace_public(&register_path, text.as_bytes()).map_err(|source| {
            CertsError::Write {
                path: register_path.clone(),
                source,
            }
        })?;
        let crl_path = self.crl_path();
        files::replace_public(&crl_path, crl.as_bytes()).map_err(|source| CertsError::Write {
            path: crl_path.clone(),
            source,
        })?;
        Ok(crl_path)
    }
}

fn read_register(path: &Path) -> Result<RevocationRegister, CertsError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| CertsError::Malformed {
            path: path.to_owned(),
            problem: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationRegister::default()),
        Err(source) => Err(CertsError::File(FileError::Read {
            path: path.to_owned(),
            source,
        })),
    }
}

/// The serial number bytes of the (first) certificate in a PEM file.
pub fn certificate_serial(path: &Path) -> Result<Vec<u8>, CertsError> {
    let certs = files::read_certificates(path)?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs[0].as_ref()).map_err(|e| {
        CertsError::Malformed {
            path: path.to_owned(),
            problem: e.to_string(),
        }
    })?;
    Ok(cert.raw_serial().to_vec())
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.is_empty() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes = [0x01, 0xab, 0xff, 0x00];
        assert_eq!(hex_decode(&hex_encode(&bytes)).unwrap(), bytes);
        assert_eq!(hex_decode("abc"), None);
        assert_eq!(hex_decode("zz"), None);
    }

    #[test]
    fn issued_certificate_carries_id_first() {
        let ca = CertificateAuthority::generate("test", Validity::days_from_now(1)).unwrap();
        let id = NodeId::new("redmond.hq").unwrap();
        let usage = Usage::Node {
            ips: vec!["127.0.0.1".parse().unwrap()],
            dns: vec!["hq.example.org".into()],
        };
        let issued = ca.issue(&id, &usage, Validity::days_from_now(1)).unwrap();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes());
        use rustls::pki_types::pem::PemObject;
        let found = crate::transport::certificate_id(&der.unwrap()).unwrap();
        assert_eq!(found, id);
    }
}
