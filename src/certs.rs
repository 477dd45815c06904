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
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
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
    /// A certificate signing request was refused: unreadable, its signature does not
    /// verify, or it asks for an id or names the CA did not intend.
    #[error("certificate request refused: {0}")]
    Request(String),
    /// The certificate to renew is revoked.
    #[error(
        "the certificate of {id} (serial {serial}) is revoked; issue a new one instead of renewing it"
    )]
    RenewRevoked {
        /// The id.
        id: String,
        /// Its serial, hex.
        serial: String,
    },
}

/// Largest certificate signing request read (PEM); real ones are well under 2 KiB.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

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

    /// Issues a certificate whose first DNS name is `id`, with a new key.
    pub fn issue(
        &self,
        id: &NodeId,
        usage: &Usage,
        validity: Validity,
    ) -> Result<IssuedCertificate, CertsError> {
        let key = new_key()?;
        let cert = leaf_params(id, usage, validity)?.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a certificate for the key of a certificate signing request (PEM), never
    /// seeing the private key. The request's signature must verify; its id (first DNS
    /// subject alternative name) must be valid, and `expected` when given; every further
    /// name it asks for must be one the CA grants through `usage` (node DNS names and
    /// addresses); it may ask for no other extension. What the certificate carries is
    /// decided here (`usage`, `validity`), not by the request: its subject is the id.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        usage: &Usage,
        expected: Option<&NodeId>,
        validity: Validity,
    ) -> Result<(NodeId, String), CertsError> {
        let refuse = |problem: String| CertsError::Request(problem);
        if csr_pem.len() > MAX_REQUEST_BYTES {
            return Err(refuse(format!(
                "the request is larger than {MAX_REQUEST_BYTES} bytes"
            )));
        }
        let request = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => refuse(
                "its signature does not verify: it was altered, or not signed with the key it carries"
                    .into(),
            ),
            rcgen::Error::UnsupportedExtension => refuse(
                "it asks for an extension the CA does not grant (a request may carry only \
                 subject alternative names)"
                    .into(),
            ),
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                refuse("it is signed with an algorithm this CA does not support".into())
            }
            other => refuse(format!("not a readable PKCS#10 request ({other})")),
        })?;
        let asked = &request.params;
        if !asked.key_usages.is_empty() || !asked.extended_key_usages.is_empty() {
            return Err(refuse(
                "it asks for key usages; the CA decides those (--client or --node)".into(),
            ));
        }
        let mut names = asked.subject_alt_names.iter();
        let id = match names.next() {
            Some(SanType::DnsName(name)) => NodeId::new(name.as_str())
                .map_err(|e| refuse(format!("its id {:?} is invalid: {e}", name.as_str())))?,
            _ => {
                return Err(refuse(
                    "it names no id: the first subject alternative name must be a DNS name, \
                     the id (entente certs request writes one)"
                        .into(),
                ));
            }
        };
        if let Some(expected) = expected {
            if &id != expected {
                return Err(refuse(format!("it is for {id}, not for {expected}")));
            }
        }
        let (granted_ips, granted_dns): (&[IpAddr], &[String]) = match usage {
            Usage::Node { ips, dns } => (ips, dns),
            Usage::Client => (&[], &[]),
        };
        for name in names {
            let granted = match name {
                SanType::DnsName(dns) => {
                    dns.as_str() == id.as_str() || granted_dns.iter().any(|g| g == dns.as_str())
                }
                SanType::IpAddress(ip) => granted_ips.contains(ip),
                _ => false,
            };
            if !granted {
                return Err(refuse(format!(
                    "it asks for the name {name:?}, which this signing does not grant \
                     (a node's further names and addresses are given at the CA with --dns and --ip)"
                )));
            }
        }
        let cert =
            leaf_params(&id, usage, validity)?.signed_by(&request.public_key, &self.issuer()?)?;
        Ok((id, cert.pem()))
    }

    /// A new certificate for the same id, names, usage and public key as `cert_der`
    /// (a certificate this CA issued), valid for `validity`. The old certificate stays
    /// valid until it expires, so both overlap.
    pub fn renew(
        &self,
        cert_der: &[u8],
        validity: Validity,
    ) -> Result<(NodeId, String), CertsError> {
        let (id, usage, spki) = describe_leaf(cert_der)?;
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(&spki)?;
        let cert = leaf_params(&id, &usage, validity)?.signed_by(&public_key, &self.issuer()?)?;
        Ok((id, cert.pem()))
    }
}

/// The id, usage and public key (SubjectPublicKeyInfo DER) of a leaf certificate.
fn describe_leaf(der: &[u8]) -> Result<(NodeId, Usage, Vec<u8>), CertsError> {
    let malformed = |problem: String| CertsError::Malformed {
        path: PathBuf::from("(certificate)"),
        problem,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| malformed(e.to_string()))?;
    let id = crate::transport::certificate_id(&rustls::pki_types::CertificateDer::from(der))
        .map_err(|e| malformed(e.to_string()))?;
    let server = cert
        .extended_key_usage()
        .map_err(|e| malformed(e.to_string()))?
        .is_some_and(|eku| eku.value.server_auth);
    let usage = if server {
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        if let Some(san) = cert
            .subject_alternative_name()
            .map_err(|e| malformed(e.to_string()))?
        {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(n) if *n != id.as_str() => {
                        dns.push((*n).to_owned());
                    }
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Usage::Node { ips, dns }
    } else {
        Usage::Client
    };
    Ok((id, usage, cert.public_key().raw.to_vec()))
}

/// A new key and a certificate signing request (PKCS#10) for `id`, made where the key
/// is to stay; with `key_pem`, the request is for that existing key (renewal).
pub fn certificate_request(
    id: &NodeId,
    key_pem: Option<&str>,
) -> Result<IssuedRequest, CertsError> {
    let key = match key_pem {
        Some(pem) => KeyPair::from_pem(pem)?,
        None => new_key()?,
    };
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, id.as_str());
    params.subject_alt_names = vec![SanType::DnsName(id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok(IssuedRequest {
        csr_pem: csr.pem()?,
        key_pem: key.serialize_pem(),
    })
}

/// Writes a certificate signing request for `id` as `DIR/ID.csr`, with a new key
/// `DIR/ID.key` (mode 0600), or for the existing key at `key` (renewal with the same
/// key; nothing else is written). Refuses to overwrite either file. Returns the paths of
/// the request and of the key.
pub fn write_request(
    dir: &Path,
    id: &NodeId,
    key: Option<&Path>,
) -> Result<(PathBuf, PathBuf), CertsError> {
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let existing = match key {
        Some(path) => Some(files::read_private_key_pem(path)?),
        None => None,
    };
    let request = certificate_request(id, existing.as_deref())?;
    let csr_path = dir.join(format!("{id}.csr"));
    let key_path = match key {
        Some(path) => path.to_owned(),
        None => {
            let path = dir.join(format!("{id}.key"));
            files::write_private(&path, request.key_pem.as_bytes()).map_err(|source| {
                CertsError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
            path
        }
    };
    files::write_public_new(&csr_path, request.csr_pem.as_bytes()).map_err(|source| {
        CertsError::Write {
            path: csr_path.clone(),
            source,
        }
    })?;
    Ok((csr_path, key_path))
}

/// A certificate signing request and the private key it was made with, both PEM.
pub struct IssuedRequest {
    /// The request, to send to the CA.
    pub csr_pem: String,
    /// The private key (PKCS#8). Never log it; it never leaves the member's machine.
    pub key_pem: String,
}

/// The certificate parameters this CA issues for `id` and `usage`: the id as subject
/// and first DNS name, fixed key usages, a random serial.
fn leaf_params(
    id: &NodeId,
    usage: &Usage,
    validity: Validity,
) -> Result<CertificateParams, CertsError> {
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
    Ok(params)
}

impl CertificateAuthority {
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

/// The name a new CA gets when none is given: "Entente federation CA" and 8 random
/// hexadecimal digits. CRLs are matched to CAs by name, so two federations' CAs must
/// not share one.
pub fn default_ca_name() -> String {
    let mut suffix = [0u8; 4];
    use rand::RngCore as _;
    rand::rng().fill_bytes(&mut suffix);
    format!("Entente federation CA {}", crate::util::hex(&suffix))
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
    /// SHA-256 (hex) of its public key (SubjectPublicKeyInfo), so that the key is never
    /// certified again even once the certificate's file is gone. Absent in entries
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

impl RevokedEntry {
    fn serial_bytes(&self) -> Result<Vec<u8>, CertsError> {
        hex_decode(&self.serial).ok_or_else(|| CertsError::Malformed {
            path: PathBuf::from(REVOKED_FILE),
            problem: format!("serial {:?} is not hex", self.serial),
        })
    }
}

/// SHA-256 (hex) of a certificate's public key (its SubjectPublicKeyInfo).
fn public_key_digest(der: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Some(hex_encode(digest.as_ref()))
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

    /// The id and serial of a certificate this CA revoked whose key is the key of
    /// `cert_pem`, if there is one among the certificates it kept (`ID.crt`,
    /// `ID.SERIAL.crt`).
    fn revoked_holder_of(&self, cert_pem: &str) -> Result<Option<(String, String)>, CertsError> {
        fn key_of(der: &[u8]) -> Option<Vec<u8>> {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some(cert.public_key().raw.to_vec())
        }
        use rustls::pki_types::pem::PemObject;
        let Some(der) = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()
        else {
            return Ok(None);
        };
        let Some(key) = key_of(der.as_ref()) else {
            return Ok(None);
        };
        let digest = public_key_digest(&der);
        let register = read_register(&self.dir.join(REVOKED_FILE))?;
        // The key recorded at revocation, whatever became of the certificate's file.
        if let Some(entry) = register
            .revoked
            .iter()
            .find(|entry| entry.key_sha256.is_some() && entry.key_sha256 == digest)
        {
            return Ok(Some((entry.id.clone(), entry.serial.clone())));
        }
        for entry in register.revoked {
            let kept = [
                self.dir.join(format!("{}.{}.crt", entry.id, entry.serial)),
                self.dir.join(format!("{}.crt", entry.id)),
            ];
            for path in kept {
                // Only the file of that very serial: the current `ID.crt` may be a
                // later certificate.
                let Ok(certs) = files::read_certificates(&path) else {
                    continue;
                };
                let Some(leaf) = certs.first() else { continue };
                let same_serial = certificate_serial(&path)
                    .is_ok_and(|serial| hex_encode(&serial).eq_ignore_ascii_case(&entry.serial));
                if same_serial && key_of(leaf.as_ref()).as_deref() == Some(key.as_slice()) {
                    return Ok(Some((entry.id.clone(), entry.serial.clone())));
                }
            }
        }
        Ok(None)
    }

    /// The certificates of `id` this CA revoked before, from the revocation register.
    pub fn revoked_for(&self, id: &NodeId) -> Result<Vec<RevokedEntry>, CertsError> {
        Ok(read_register(&self.dir.join(REVOKED_FILE))?
            .revoked
            .into_iter()
            .filter(|entry| entry.id == id.as_str())
            .collect())
    }

    /// Moves an existing `ID.EXT` aside as `ID.SERIAL.EXT` (the serial of `ID.crt`), so
    /// the CA keeps every certificate it issued. Returns the new name, if there was a file.
    fn archive(&self, id: &str, serial: &str, ext: &str) -> Result<Option<PathBuf>, CertsError> {
        let current = self.dir.join(format!("{id}.{ext}"));
        if !current.exists() {
            return Ok(None);
        }
        let archived = self.dir.join(format!("{id}.{serial}.{ext}"));
        if archived.exists() {
            return Err(CertsError::Write {
                path: archived,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "file exists; refusing to overwrite",
                ),
            });
        }
        std::fs::rename(&current, &archived).map_err(|source| CertsError::Write {
            path: current.clone(),
            source,
        })?;
        Ok(Some(archived))
    }

    /// Writes `ID.crt`, moving a previous one aside as `ID.SERIAL.crt`.
    fn replace_certificate(
        &self,
        id: &NodeId,
        cert_pem: &str,
    ) -> Result<Option<PathBuf>, CertsError> {
        let path = self.cert_path(id.as_str());
        let previous = if path.exists() {
            let serial = hex_encode(&certificate_serial(&path)?);
            self.archive(id.as_str(), &serial, "crt")?
        } else {
            None
        };
        files::write_public_new(&path, cert_pem.as_bytes())
            .map_err(|source| CertsError::Write { path, source })?;
        Ok(previous)
    }

    /// Issues `ID.crt` from the certificate signing request at `csr` (see
    /// [`CertificateAuthority::sign_request`]); a previous `ID.crt` is kept as
    /// `ID.SERIAL.crt`. The CA never sees the key.
    pub fn sign(
        &self,
        csr: &Path,
        usage: &Usage,
        expected: Option<&NodeId>,
        validity: Validity,
    ) -> Result<Signed, CertsError> {
        let ca = self.load_ca()?;
        let text = read_bounded_text(csr, MAX_REQUEST_BYTES)?;
        let (id, cert_pem) = ca.sign_request(&text, usage, expected, validity)?;
        // A key whose certificate this CA revoked (it leaked, or its holder left) is not
        // certified again, under any id: `renew` refuses a revoked certificate, and a
        // request is the same operation by another road.
        if let Some((holder, serial)) = self.revoked_holder_of(&cert_pem)? {
            return Err(CertsError::Request(format!(
                "the request's key is the key of certificate {serial} of {holder}, which this CA revoked; a revoked key is not certified again: make a new key (`entente certs request` without --key)"
            )));
        }
        // An id names one member: a request for a client certificate under a node's id
        // (or the reverse) is refused, not signed over the other certificate.
        let current = self.cert_path(id.as_str());
        if current.exists() {
            let der = files::read_certificates(&current)?;
            let (_, held, _) = describe_leaf(der[0].as_ref())?;
            let kind = |usage: &Usage| matches!(usage, Usage::Node { .. });
            if kind(&held) != kind(usage) {
                let name = |usage: &Usage| if kind(usage) { "node" } else { "client" };
                return Err(CertsError::Request(format!(
                    "{id} already has a {} certificate ({}); this request asks for a {} one under the same id. An id names one member: issue it under another id",
                    name(&held),
                    current.display(),
                    name(usage)
                )));
            }
        }
        let previous_serial = match self.cert_path(id.as_str()) {
            path if path.exists() => Some(hex_encode(&certificate_serial(&path)?)),
            _ => None,
        };
        let previous = self.replace_certificate(&id, &cert_pem)?;
        // The request's key stays with the member: a key the CA holds for this id
        // belongs to the certificate just moved aside, and goes aside with it.
        if let Some(serial) = previous_serial {
            self.archive(id.as_str(), &serial, "key")?;
        }
        Ok(Signed {
            cert: self.cert_path(id.as_str()),
            id,
            previous,
        })
    }

    /// Renews `ID.crt`: a new certificate (new serial) for the same id, names, usage
    /// and key, or with `new_key` for a new key the CA makes (only where the CA holds
    /// `ID.key`, that is for certificates made with `certs node`/`certs client`). The
    /// previous certificate (and key) are kept as `ID.SERIAL.crt` (`.key`) and stay
    /// valid until they expire. A revoked certificate is not renewed.
    pub fn renew(
        &self,
        id: &NodeId,
        new_key: bool,
        validity: Validity,
    ) -> Result<Signed, CertsError> {
        let ca = self.load_ca()?;
        let path = self.cert_path(id.as_str());
        let der = files::read_certificates(&path)?;
        let serial = hex_encode(&certificate_serial(&path)?);
        if self
            .revoked_for(id)?
            .iter()
            .any(|entry| entry.serial == serial)
        {
            return Err(CertsError::RenewRevoked {
                id: id.to_string(),
                serial,
            });
        }
        if !new_key {
            let (found, cert_pem) = ca.renew(der[0].as_ref(), validity)?;
            if &found != id {
                return Err(CertsError::Malformed {
                    path,
                    problem: format!("the certificate is for {found}, not {id}"),
                });
            }
            let previous = self.replace_certificate(id, &cert_pem)?;
            return Ok(Signed {
                id: found,
                cert: path,
                previous,
            });
        }
        let key_path = self.key_path(id.as_str());
        if !key_path.exists() {
            return Err(CertsError::Malformed {
                path: key_path,
                problem: "no key here: the member holds it; for a new key the member runs \
                          entente certs request and the CA signs that request"
                    .into(),
            });
        }
        let (found, usage, _) = describe_leaf(der[0].as_ref())?;
        let issued = ca.issue(&found, &usage, validity)?;
        let previous = self.archive(id.as_str(), &serial, "crt")?;
        self.archive(id.as_str(), &serial, "key")?;
        self.write_pair(id.as_str(), &issued)?;
        Ok(Signed {
            id: found,
            cert: path,
            previous,
        })
    }

    /// Revokes every certificate this CA issued to `id` (see [`Self::revoke_certificates`]).
    /// Returns the CRL path.
    pub fn revoke(&self, id: &NodeId) -> Result<PathBuf, CertsError> {
        Ok(self.revoke_certificates(id, None)?.crl)
    }

    /// The certificates this CA keeps for `id`, as (serial in hex, path): `ID.crt` and
    /// every `ID.SERIAL.crt` a renewal or a new signature moved aside, each read and
    /// checked to be issued to `id` under that serial.
    pub fn issued_to(&self, id: &NodeId) -> Result<Vec<(String, PathBuf)>, CertsError> {
        let mut found = Vec::new();
        let current = self.cert_path(id.as_str());
        if current.exists() {
            found.push((hex_encode(&certificate_serial(&current)?), current.clone()));
        }
        let prefix = format!("{id}.");
        let entries = std::fs::read_dir(&self.dir).map_err(|source| {
            CertsError::File(FileError::Read {
                path: self.dir.clone(),
                source,
            })
        })?;
        for entry in entries {
            let path = entry
                .map_err(|source| {
                    CertsError::File(FileError::Read {
                        path: self.dir.clone(),
                        source,
                    })
                })?
                .path();
            let Some(serial) = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix(".crt"))
            else {
                continue;
            };
            // Another id may share the prefix (`analyst.ext` and `analyst.ext.lab`):
            // only a name whose middle is a serial, for a certificate of `id`, counts.
            if serial.is_empty() || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let der = files::read_certificates(&path)?;
            let (issued, _, _) = describe_leaf(der[0].as_ref())?;
            let actual = hex_encode(&certificate_serial(&path)?);
            if &issued == id && actual.eq_ignore_ascii_case(serial) {
                found.push((actual, path));
            }
        }
        if found.is_empty() {
            return Err(CertsError::Malformed {
                path: current,
                problem: format!("this CA keeps no certificate of {id}"),
            });
        }
        Ok(found)
    }

    /// Adds certificates of `id` to the register and rewrites `crl.pem`: all of them
    /// (`ID.crt` and every earlier one kept as `ID.SERIAL.crt`, which stay valid until
    /// they expire unless revoked), or with `serial` that one only. A member cut off
    /// must lose every certificate it holds, not only the newest.
    pub fn revoke_certificates(
        &self,
        id: &NodeId,
        serial: Option<&str>,
    ) -> Result<Revocation, CertsError> {
        let ca = self.load_ca()?;
        let mut chosen = self.issued_to(id)?;
        if let Some(serial) = serial {
            let known: Vec<String> = chosen.iter().map(|(s, _)| s.clone()).collect();
            chosen.retain(|(s, _)| s.eq_ignore_ascii_case(serial));
            if chosen.is_empty() {
                return Err(CertsError::Malformed {
                    path: self.cert_path(id.as_str()),
                    problem: format!(
                        "no certificate of {id} has serial {serial}; its certificates here: {}",
                        known.join(", ")
                    ),
                });
            }
        }
        let register_path = self.dir.join(REVOKED_FILE);
        let mut register = read_register(&register_path)?;
        let mut serials = Vec::new();
        for (serial, path) in chosen {
            if !register.revoked.iter().any(|r| r.serial == serial) {
                let key_sha256 = files::read_certificates(&path)
                    .ok()
                    .and_then(|certs| certs.first().and_then(|leaf| public_key_digest(leaf)));
                register.revoked.push(RevokedEntry {
                    id: id.to_string(),
                    serial: serial.clone(),
                    revoked_at: OffsetDateTime::now_utc(),
                    key_sha256,
                });
            }
            serials.push(serial);
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
        Ok(Revocation {
            crl: crl_path,
            serials,
        })
    }
}

/// What [`CertDir::revoke_certificates`] did.
#[derive(Debug)]
pub struct Revocation {
    /// The CRL written.
    pub crl: PathBuf,
    /// The serials (hex) revoked by this call, or already revoked before it.
    pub serials: Vec<String>,
}

/// A certificate written by [`CertDir::sign`] or [`CertDir::renew`].
#[derive(Debug)]
pub struct Signed {
    /// Whom it is for.
    pub id: NodeId,
    /// Where it was written (`ID.crt`).
    pub cert: PathBuf,
    /// Where the previous `ID.crt` was moved, if there was one.
    pub previous: Option<PathBuf>,
}

/// Reads a text file of at most `max` bytes.
fn read_bounded_text(path: &Path, max: usize) -> Result<String, CertsError> {
    let read_err = |source| {
        CertsError::File(FileError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let mut text = String::new();
    let file = std::fs::File::open(path).map_err(read_err)?;
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, u64::try_from(max).unwrap_or(u64::MAX) + 1),
        &mut text,
    )
    .map_err(read_err)?;
    if text.len() > max {
        return Err(CertsError::Request(format!(
            "{} is larger than {max} bytes",
            path.display()
        )));
    }
    Ok(text)
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

use crate::util::hex as hex_encode;

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

    fn request_with(names: Vec<SanType>, eku: bool) -> (KeyPair, String) {
        let key = new_key().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        if eku {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        (key, pem)
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    #[test]
    fn a_request_is_signed_for_its_key_and_nothing_the_ca_did_not_grant() {
        let ca = CertificateAuthority::generate("test", Validity::days_from_now(1)).unwrap();
        let id = NodeId::new("berlin.office").unwrap();
        let request = certificate_request(&id, None).unwrap();
        let (found, cert_pem) = ca
            .sign_request(
                &request.csr_pem,
                &Usage::Client,
                Some(&id),
                Validity::days_from_now(1),
            )
            .unwrap();
        assert_eq!(found, id);
        // The certificate is for the request's key, which the CA never saw.
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let key = KeyPair::from_pem(&request.key_pem).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );

        let sign = |pem: &str, usage: &Usage| {
            ca.sign_request(pem, usage, None, Validity::days_from_now(1))
                .map(|(id, _)| id)
        };
        // Another id than expected.
        let other = NodeId::new("paris.office").unwrap();
        let err = ca
            .sign_request(
                &request.csr_pem,
                &Usage::Client,
                Some(&other),
                Validity::days_from_now(1),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not for paris.office"), "{err}");
        // A further name the CA did not grant, then granted.
        let (_, pem) = request_with(vec![dns("berlin.office"), dns("evil.example")], false);
        let err = sign(&pem, &Usage::Client).unwrap_err();
        assert!(err.to_string().contains("evil.example"), "{err}");
        let granted = Usage::Node {
            ips: vec![],
            dns: vec!["evil.example".into()],
        };
        assert_eq!(sign(&pem, &granted).unwrap(), id);
        // Key usages asked for, an invalid id, no id.
        let (_, pem) = request_with(vec![dns("berlin.office")], true);
        assert!(
            sign(&pem, &Usage::Client)
                .unwrap_err()
                .to_string()
                .contains("key usages")
        );
        let (_, pem) = request_with(vec![dns("-bad-")], false);
        assert!(
            sign(&pem, &Usage::Client)
                .unwrap_err()
                .to_string()
                .contains("invalid")
        );
        let (_, pem) = request_with(vec![], false);
        assert!(
            sign(&pem, &Usage::Client)
                .unwrap_err()
                .to_string()
                .contains("names no id")
        );
        // A tampered request: its signature no longer verifies.
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(request.csr_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let mut tampered = der.clone();
        let at = tampered
            .windows(b"berlin".len())
            .position(|w| w == b"berlin")
            .unwrap();
        tampered[at] = b'b' ^ 0x01;
        let pem = {
            use base64::Engine as _;
            let body = base64::engine::general_purpose::STANDARD.encode(&tampered);
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{body}\n-----END CERTIFICATE REQUEST-----\n"
            )
        };
        let err = sign(&pem, &Usage::Client).unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );
        // Not a request at all, and too large.
        assert!(sign("garbage", &Usage::Client).is_err());
        let huge = "A".repeat(MAX_REQUEST_BYTES + 1);
        assert!(
            sign(&huge, &Usage::Client)
                .unwrap_err()
                .to_string()
                .contains("larger")
        );
    }

    #[test]
    fn renewal_keeps_the_key_and_the_names() {
        let ca = CertificateAuthority::generate("test", Validity::days_from_now(1)).unwrap();
        let id = NodeId::new("redmond.hq").unwrap();
        let usage = Usage::Node {
            ips: vec!["127.0.0.1".parse().unwrap()],
            dns: vec!["hq.example.org".into()],
        };
        let issued = ca.issue(&id, &usage, Validity::days_from_now(1)).unwrap();
        use rustls::pki_types::pem::PemObject;
        let old =
            rustls::pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let (found, renewed) = ca.renew(old.as_ref(), Validity::days_from_now(30)).unwrap();
        assert_eq!(found, id);
        let new = rustls::pki_types::CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
        let (_, a) = x509_parser::parse_x509_certificate(old.as_ref()).unwrap();
        let (_, b) = x509_parser::parse_x509_certificate(new.as_ref()).unwrap();
        assert_eq!(a.public_key().raw, b.public_key().raw);
        assert_ne!(a.raw_serial(), b.raw_serial());
        assert_eq!(
            a.subject_alternative_name().unwrap().unwrap().value,
            b.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(b.extended_key_usage().unwrap().unwrap().value.server_auth);
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
