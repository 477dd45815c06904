//! rustls configurations for both directions. Server: TLS 1.3 only, a client
//! certificate is required, must chain to a trust anchor (the one its partner is
//! pinned to), must not be revoked and must name a configured partner, all under
//! the directory's state in force at the handshake. Client: the same anchors and CRLs, and the
//! server must prove the exact node id the caller expects.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::access::{Directory, Listing, Verifiers, describe_tls_error};
use super::expiry::{CertificateRole, WatchedCertificate};
use super::files::{self, FileError};
use super::identity::{IdentityError, certificate_id};
use crate::crypto::{SignerError, SignerTrust};
use crate::model::NodeId;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Checks that a trust anchor is a CA certificate: basic constraints with `cA` set, and a
/// key usage, when present, that allows signing certificates. A leaf certificate given as
/// an anchor would make webpki trust that one certificate as an issuer, and is almost
/// always a misconfiguration (the node's own or a partner's certificate instead of the
/// federation CA's), so it is refused rather than left to fail every handshake.
fn check_ca(cert: &CertificateDer<'_>) -> Result<(), String> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not a readable X.509 certificate: {e}"))?;
    let subject = parsed.subject().to_string();
    let constraints = parsed
        .basic_constraints()
        .map_err(|e| format!("{subject}: unreadable basic constraints: {e}"))?;
    if !constraints.is_some_and(|c| c.value.ca) {
        return Err(format!(
            "{subject} is not a CA certificate (its basic constraints do not say cA), so it \
             cannot be a trust anchor: give the federation CA's certificate (ca.crt), not a \
             node's or a client's"
        ));
    }
    let usage = parsed
        .key_usage()
        .map_err(|e| format!("{subject}: unreadable key usage: {e}"))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err(format!(
            "{subject} is marked CA but its key usage does not allow signing certificates \
             (keyCertSign), so it cannot be a trust anchor"
        ));
    }
    Ok(())
}

/// ALPN protocol for gRPC over HTTP/2; gRPC clients such as `grpcio` require it.
const ALPN_H2: &[u8] = b"h2";
/// The TAXII listener speaks HTTP/1.1 only.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The process's one cryptographic provider (ring). Every rustls configuration is
/// built with it explicitly, so nothing depends on a process-wide default.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why TLS material could not be loaded or a configuration built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A trust anchor is not a usable CA certificate.
    #[error("trust anchor {path}: {problem}")]
    BadTrustAnchor {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The node certificate does not carry the configured id.
    #[error("certificate {path} is for {found:?}, not for {expected}")]
    WrongIdentity {
        /// The certificate file.
        path: PathBuf,
        /// The configured id.
        expected: NodeId,
        /// What the certificate says.
        found: String,
    },
    /// The node certificate's id cannot be read.
    #[error("certificate {path}: {source}")]
    Identity {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        source: IdentityError,
    },
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// The certificate verifier could not be built (e.g. an unusable CRL).
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

impl TlsError {
    /// The file the error concerns, when there is one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            TlsError::File(e) => Some(e.path()),
            TlsError::BadTrustAnchor { path, .. }
            | TlsError::WrongIdentity { path, .. }
            | TlsError::Identity { path, .. } => Some(path),
            TlsError::Rustls { .. } | TlsError::Verifier(_) => None,
        }
    }
}

/// Where a node's (or client's) TLS material lives.
#[derive(Clone, Debug)]
pub struct TlsPaths {
    /// Own certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Own private key (PEM), mode 0600.
    pub key: PathBuf,
    /// CA certificates trusted for peers and clients.
    pub trust_anchors: Vec<PathBuf>,
    /// Certificate revocation lists.
    pub crls: Vec<PathBuf>,
}

/// The loaded and checked TLS material of one identity.
#[derive(Debug)]
pub struct TlsMaterial {
    /// The identity the certificate proves.
    pub id: NodeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    /// Each trust-anchor file with the CA certificates it holds, for partners pinned to it.
    anchors: Vec<(PathBuf, Arc<RootCertStore>)>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    /// Every trust-anchor certificate, for expiry warnings.
    anchor_certificates: Vec<CertificateDer<'static>>,
    /// The certificates of each trust-anchor file, in the order of `anchors`: each
    /// anchor's verifier is given only the CRLs its own certificates signed.
    anchor_files: Vec<Vec<CertificateDer<'static>>>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            anchors: self.anchors.clone(),
            crls: self.crls.clone(),
            anchor_certificates: self.anchor_certificates.clone(),
            anchor_files: self.anchor_files.clone(),
        }
    }
}

impl TlsMaterial {
    /// This material with the CRL `der` among its CRLs, in place of an older one of the
    /// same issuer (check it first with [`TlsMaterial::check_crl`]).
    pub fn with_crl(&self, der: &[u8]) -> Self {
        let mut crls = self.crls.clone();
        crls.push(CertificateRevocationListDer::from(der.to_vec()));
        Self {
            crls: super::crl::newest_per_issuer(crls),
            ..self.clone()
        }
    }

    /// Loads and checks the files: readable, well-formed, key permissions, the
    /// certificate's id equals `expected_id`, and the key matches the certificate.
    pub fn load(paths: &TlsPaths, expected_id: &NodeId) -> Result<Self, TlsError> {
        let chain = files::read_certificates(&paths.cert)?;
        let found = certificate_id(&chain[0]).map_err(|source| TlsError::Identity {
            path: paths.cert.clone(),
            source,
        })?;
        if &found != expected_id {
            return Err(TlsError::WrongIdentity {
                path: paths.cert.clone(),
                expected: expected_id.clone(),
                found: found.to_string(),
            });
        }
        let key = files::read_private_key(&paths.key)?;
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::with_capacity(paths.trust_anchors.len());
        let mut anchor_certificates = Vec::new();
        let mut anchor_files = Vec::with_capacity(paths.trust_anchors.len());
        for path in &paths.trust_anchors {
            let mut anchor = RootCertStore::empty();
            let certificates = files::read_certificates(path)?;
            anchor_files.push(certificates.clone());
            for (index, cert) in certificates.into_iter().enumerate() {
                anchor_certificates.push(cert.clone());
                check_ca(&cert).map_err(|problem| TlsError::BadTrustAnchor {
                    path: path.clone(),
                    problem: format!("certificate {} in the file: {problem}", index + 1),
                })?;
                for store in [&mut roots, &mut anchor] {
                    store
                        .add(cert.clone())
                        .map_err(|e| TlsError::BadTrustAnchor {
                            path: path.clone(),
                            problem: e.to_string(),
                        })?;
                }
            }
            anchors.push((path.clone(), Arc::new(anchor)));
        }
        let mut crls = Vec::new();
        for path in &paths.crls {
            crls.extend(files::read_crls(path)?);
        }
        // Of several CRLs from one issuer (a configured file and one received from the
        // federation), the newest is in force.
        let crls = super::crl::newest_per_issuer(crls);
        let material = Self {
            id: found,
            chain,
            key,
            roots: Arc::new(roots),
            anchors,
            crls,
            anchor_certificates,
            anchor_files,
        };
        // Building a server config checks that the key matches the certificate.
        material.client_config()?;
        Ok(material)
    }

    /// A WebPKI client-certificate verifier over `roots` and these CRLs.
    fn verifier_over(
        &self,
        roots: &Arc<RootCertStore>,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        Ok(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
                .with_crls(crls.iter().cloned())
                .only_check_end_entity_revocation()
                // A CRL revokes only certificates of its own issuer: a CA with no CRL
                // in force is not checked for revocation, rather than every one of its
                // certificates refused (a partner's CA's CRL, offered by that partner,
                // would otherwise lock out this federation's own certificates).
                .allow_unknown_revocation_status()
                .build()?,
        )
    }

    /// The CRLs the certificates of anchor file `at` signed (and any that cannot be read,
    /// for the verifier builder to refuse): WebPKI picks a CRL by its issuer's name, so a
    /// CRL of another CA of the same name must never be offered to this anchor's checks.
    fn crls_of_anchor(&self, at: usize) -> Vec<CertificateRevocationListDer<'static>> {
        let certificates = self.anchor_files.get(at).map_or(&[][..], Vec::as_slice);
        self.crls
            .iter()
            .filter(|crl| super::crl::signed_by_any_or_unreadable(crl.as_ref(), certificates))
            .cloned()
            .collect()
    }

    /// A verifier over every anchor: with one anchor file, WebPKI over it; with
    /// several, the first of the per-anchor verifiers that accepts (each with only its
    /// own CRLs).
    fn any_anchor(
        &self,
        by_anchor: &AnchorVerifiers,
    ) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        if self.anchors.len() <= 1 {
            return self.verifier_over(&self.roots, &self.crls);
        }
        let each: Vec<Arc<dyn ClientCertVerifier>> = self
            .anchors
            .iter()
            .filter_map(|(path, _)| by_anchor.get(path).cloned())
            .collect();
        let hints = each
            .iter()
            .flat_map(|v| v.root_hint_subjects().to_vec())
            .collect();
        Ok(Arc::new(AnyAnchor {
            each,
            hints,
            algorithms: crypto_provider().signature_verification_algorithms,
        }))
    }

    /// One verifier per anchor file, and the anchor files this node's own certificate
    /// chains to.
    fn anchor_verifiers(&self) -> Result<(AnchorVerifiers, Vec<PathBuf>), TlsError> {
        let mut by_anchor = HashMap::with_capacity(self.anchors.len());
        let mut own_anchors = Vec::new();
        // `load` refuses a certificate file without a certificate, so the chain has a leaf.
        let own = self.chain.split_first();
        for (at, (path, roots)) in self.anchors.iter().enumerate() {
            let verifier = self.verifier_over(roots, &self.crls_of_anchor(at))?;
            let chains_here = own.is_some_and(|(leaf, intermediates)| {
                verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok()
            });
            if chains_here {
                own_anchors.push(path.clone());
            }
            by_anchor.insert(path.clone(), verifier);
        }
        Ok((by_anchor, own_anchors))
    }

    /// Client-certificate verifiers over these anchors and CRLs: one over every
    /// anchor, and one per anchor file (for partners pinned to it).
    pub fn client_verifiers(&self) -> Result<Verifiers, TlsError> {
        let (by_anchor, own_anchors) = self.anchor_verifiers()?;
        Ok(Verifiers {
            anchor_certificates: self
                .anchor_certificates
                .iter()
                .filter_map(|der| WatchedCertificate::read(CertificateRole::TrustAnchor, der))
                .collect(),
            any: self.any_anchor(&by_anchor)?,
            by_anchor,
            // With one anchor there is nothing to pin to; with several, the node's own id
            // is accepted only from the anchors its own certificate chains to.
            own_anchors: (self.anchors.len() > 1).then_some(own_anchors),
            own_key: self.chain.first().and_then(super::identity::public_key),
            own_revoked_by: self.own_revoked_by(),
        })
    }

    /// The issuer of a CRL in force that revokes this node's own certificate: partners
    /// then refuse its connections, its pulls and the bundles it signs.
    pub fn own_revoked_by(&self) -> Option<String> {
        let own = self.chain.first()?;
        super::crl::revoking_issuer(&self.crls, own)
    }

    /// The server side: TLS 1.3, client certificate required, and the client's
    /// certificate checked against the directory's state in force at each handshake
    /// (anchors, CRLs, configured id, pinned anchor). Installs this material's
    /// verifiers in `directory`; a reload replaces them there.
    pub fn server_config(
        &self,
        directory: Arc<Directory>,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let verifiers = self.client_verifiers()?;
        let root_hints = verifiers.any.root_hint_subjects().to_vec();
        directory.install(
            verifiers,
            self.chain
                .first()
                .and_then(|leaf| WatchedCertificate::read(CertificateRole::Own, leaf)),
        );
        self.build_server_config(directory, root_hints, true, ALPN_H2)
    }

    /// The server side of the TAXII (HTTPS) listener: TLS 1.3, the client's certificate
    /// checked exactly as for gRPC against the directory's state in force at each
    /// handshake, HTTP/1.1. With `certificate_required` false a client may connect
    /// without a certificate (it must then authenticate each request otherwise); one
    /// that presents a certificate is still verified. Uses the verifiers
    /// [`TlsMaterial::server_config`] installed in `directory`.
    pub fn https_server_config(
        &self,
        directory: Arc<Directory>,
        certificate_required: bool,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let root_hints = self.client_verifiers()?.any.root_hint_subjects().to_vec();
        self.build_server_config(directory, root_hints, certificate_required, ALPN_HTTP1)
    }

    fn build_server_config(
        &self,
        directory: Arc<Directory>,
        root_hints: Vec<DistinguishedName>,
        mandatory: bool,
        alpn: &[u8],
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = crypto_provider();
        let verifier = Arc::new(KnownPartnerVerifier {
            directory,
            root_hints,
            mandatory,
            algorithms: provider.signature_verification_algorithms,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                context: "server protocol versions",
                source,
            })?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "server certificate and key",
                source,
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        // No session resumption: a resumed TLS 1.3 session skips the client certificate
        // verifier, so a certificate revoked (or a partner removed from a CA's trust)
        // since the first handshake would come back in with the session. Every
        // connection makes a full handshake, checked against the state in force.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The client side: TLS 1.3, presents this identity's certificate, verifies the
    /// server against the same anchors and CRLs.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        if self.anchors.len() <= 1 {
            return self.client_config_over(&self.roots, &self.crls);
        }
        let each = (0..self.anchors.len())
            .map(|at| self.server_verifier(&self.anchors[at].1, &self.crls_of_anchor(at)))
            .collect::<Result<Vec<_>, _>>()?;
        self.client_config_with(Arc::new(AnyServerAnchor {
            each,
            algorithms: crypto_provider().signature_verification_algorithms,
        }))
    }

    /// [`TlsMaterial::client_config`] for a peer pinned to `anchor` (one of the
    /// trust-anchor files): its server certificate must chain to that anchor, not to
    /// any other this node trusts. `None` accepts every anchor.
    pub fn client_config_for(
        &self,
        anchor: Option<&std::path::Path>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let Some(anchor) = anchor else {
            return self.client_config();
        };
        let at = self
            .anchors
            .iter()
            .position(|(path, _)| path == anchor)
            .ok_or_else(|| TlsError::BadTrustAnchor {
                path: anchor.to_path_buf(),
                problem: "not one of this node's trust anchors".into(),
            })?;
        let roots = self.anchors[at].1.clone();
        self.client_config_over(&roots, &self.crls_of_anchor(at))
    }

    fn server_verifier(
        &self,
        roots: &Arc<RootCertStore>,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
        Ok(
            WebPkiServerVerifier::builder_with_provider(roots.clone(), crypto_provider())
                .with_crls(crls.iter().cloned())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status()
                .build()?,
        )
    }

    fn client_config_over(
        &self,
        roots: &Arc<RootCertStore>,
        crls: &[CertificateRevocationListDer<'static>],
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        self.client_config_with(self.server_verifier(roots, crls)?)
    }

    fn client_config_with(
        &self,
        verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
    ) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = crypto_provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|source| TlsError::Rustls {
                context: "client protocol versions",
                source,
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|source| TlsError::Rustls {
                context: "client certificate and key",
                source,
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        // No session resumption either way: a resumed session skips verifying the
        // server's certificate against the anchors and CRLs in force.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

impl TlsMaterial {
    /// The certificates this material depends on, for expiry warnings: its own
    /// certificate and every trust anchor.
    pub fn watched_certificates(&self) -> Vec<WatchedCertificate> {
        self.chain
            .first()
            .and_then(|leaf| WatchedCertificate::read(CertificateRole::Own, leaf))
            .map(|mut own| {
                own.revoked_by = self.own_revoked_by();
                own
            })
            .into_iter()
            .chain(
                self.anchor_certificates
                    .iter()
                    .filter_map(|der| WatchedCertificate::read(CertificateRole::TrustAnchor, der)),
            )
            .collect()
    }

    /// Checks a CRL (DER) offered to this node: signed by one of its trust anchors (by
    /// the anchor of this node's own certificate, when several anchors bear the
    /// issuer's name) and newer than the CRL in force for that issuer. Returns the
    /// issuer in words.
    pub fn check_crl(&self, der: &[u8]) -> Result<String, super::crl::CrlRefusal> {
        super::crl::check_offered(
            der,
            &self.anchor_certificates,
            &self.own_anchor_certificates(),
            &self.crls,
        )
    }

    /// The trust anchors that issued the top certificate of this node's own chain.
    fn own_anchor_certificates(&self) -> Vec<CertificateDer<'static>> {
        let Some(Ok((_, top))) = self.chain.last().map(|c| X509Certificate::from_der(c)) else {
            return Vec::new();
        };
        self.anchor_certificates
            .iter()
            .filter(|anchor| {
                X509Certificate::from_der(anchor.as_ref()).is_ok_and(|(_, anchor)| {
                    anchor.subject().as_raw() == top.issuer().as_raw()
                        && top.verify_signature(Some(anchor.public_key())).is_ok()
                })
            })
            .cloned()
            .collect()
    }

    /// The leaf certificate (DER).
    pub fn certificate_der(&self) -> &[u8] {
        self.chain[0].as_ref()
    }

    /// The private key as PKCS#8 DER, for bundle signing. Never log it.
    pub fn private_key_pkcs8(&self) -> Option<&[u8]> {
        match &self.key {
            PrivateKeyDer::Pkcs8(key) => Some(key.secret_pkcs8_der()),
            _ => None,
        }
    }

    /// Checks bundle signer certificates against the same anchors and CRLs, whatever
    /// anchor a signer's certificate chains to.
    pub fn signer_trust(&self) -> Result<SignerVerifier, TlsError> {
        self.signer_trust_pinned(&[])
    }

    /// Checks bundle signer certificates against the same anchors and CRLs; a signer
    /// whose id is that of a partner pinned to an anchor (`listings`) must chain to
    /// that anchor, and one in this node's own name, or in a name no entry pins, to the
    /// anchors its own certificate chains to (when several anchors are configured), so
    /// that no trusted CA can sign in the name of a node whose identity belongs to
    /// another.
    pub fn signer_trust_pinned(&self, listings: &[Listing]) -> Result<SignerVerifier, TlsError> {
        let (by_anchor, own_anchors) = self.anchor_verifiers()?;
        let mut pinned: HashMap<NodeId, Vec<Arc<dyn ClientCertVerifier>>> = HashMap::new();
        for listing in listings {
            if let Some(anchor) = &listing.trust_anchor {
                pinned
                    .entry(listing.partner.id.clone())
                    .or_default()
                    .extend(by_anchor.get(anchor).cloned());
            }
        }
        // With several anchors, this node's own id, and any origin no entry names, are
        // held to the anchors this node's own certificate chains to: a partner
        // organisation's CA speaks for the partners pinned to it, not for the rest of
        // the federation.
        let unpinned = if self.anchors.len() > 1 {
            let own: Vec<Arc<dyn ClientCertVerifier>> = own_anchors
                .iter()
                .filter_map(|a| by_anchor.get(a).cloned())
                .collect();
            pinned.insert(self.id.clone(), own.clone());
            Some(own)
        } else {
            None
        };
        Ok(SignerVerifier {
            state: Arc::new(RwLock::new(Arc::new(SignerState {
                any: self.any_anchor(&by_anchor)?,
                pinned,
                unpinned,
            }))),
        })
    }
}

/// A client-certificate verifier per trust-anchor file.
type AnchorVerifiers = HashMap<PathBuf, Arc<dyn ClientCertVerifier>>;

/// [`SignerTrust`] over WebPKI: the signer certificate must chain to a trust anchor,
/// have been valid when the bundle was created, and not be revoked. Clones share
/// one verifier, which [`SignerVerifier::replace_with`] swaps at a reload.
#[derive(Debug, Clone)]
pub struct SignerVerifier {
    state: Arc<RwLock<Arc<SignerState>>>,
}

/// The verifiers of [`SignerVerifier`] in force.
#[derive(Debug)]
struct SignerState {
    /// Over every anchor.
    any: Arc<dyn ClientCertVerifier>,
    /// Ids whose certificates must chain to one of these (their anchors) as well.
    pinned: HashMap<NodeId, Vec<Arc<dyn ClientCertVerifier>>>,
    /// With several anchors, the anchors of every other id: this node's own.
    unpinned: Option<Vec<Arc<dyn ClientCertVerifier>>>,
}

impl SignerVerifier {
    /// Puts `other`'s anchors, CRLs and pins in force for this verifier and its clones.
    pub fn replace_with(&self, other: &SignerVerifier) {
        let next = other
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

impl SignerTrust for SignerVerifier {
    fn verify_signer(&self, cert_der: &[u8], at_ms: i64) -> Result<NodeId, SignerError> {
        let cert = CertificateDer::from(cert_der);
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_millis(
            u64::try_from(at_ms).unwrap_or(0),
        ));
        let state = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        state
            .any
            .verify_client_cert(&cert, &[], at)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => {
                    SignerError::Revoked
                }
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. },
                ) => SignerError::Expired,
                other => SignerError::Untrusted(other.to_string()),
            })?;
        let id = certificate_id(&cert).map_err(|e| SignerError::NoIdentity(e.to_string()))?;
        // Bundles are signed by nodes: a client certificate (one whose extended key
        // usage names no server authentication) never speaks as an origin.
        if !super::identity::is_node_certificate(&cert) {
            return Err(SignerError::Untrusted(format!(
                "the certificate names {id} but is not a node certificate (its extended key usage has no server authentication)"
            )));
        }
        if let Some(anchors) = state.pinned.get(&id) {
            let chains = anchors
                .iter()
                .any(|verifier| verifier.verify_client_cert(&cert, &[], at).is_ok());
            if !chains {
                return Err(SignerError::Untrusted(format!(
                    "the certificate names {id} but does not chain to the trust anchor configured for {id}"
                )));
            }
        } else if let Some(anchors) = &state.unpinned {
            let chains = anchors
                .iter()
                .any(|verifier| verifier.verify_client_cert(&cert, &[], at).is_ok());
            if !chains {
                return Err(SignerError::Untrusted(format!(
                    "the certificate names {id}, which no entry pins to an anchor, and does not chain to this node's own trust anchor (only that anchor speaks for origins without an entry)"
                )));
            }
        }
        Ok(id)
    }
}

/// What a server-side handshake saw of the client's certificate: the leaf presented
/// and, when the verifier refused it, why in words. Filled by the verifier while the
/// handshake runs inside [`record_handshake`].
#[derive(Debug, Default)]
pub(crate) struct HandshakeRecord {
    /// The client's leaf certificate, once it was presented.
    pub(crate) presented: Option<CertificateDer<'static>>,
    /// Why the verifier refused it.
    pub(crate) refusal: Option<String>,
    /// The same as a fixed word (a metrics label), from the verifier's own error: the
    /// error the handshake returns is chosen for the client's alert and says less.
    pub(crate) refusal_kind: Option<&'static str>,
}

tokio::task_local! {
    static HANDSHAKE_RECORD: std::cell::RefCell<HandshakeRecord>;
}

/// Runs a server-side handshake, recording the certificate the client presented and
/// the verifier's reason for refusing it, which the TLS error alone does not carry.
pub(crate) async fn record_handshake<F: std::future::Future>(
    handshake: F,
) -> (F::Output, HandshakeRecord) {
    HANDSHAKE_RECORD
        .scope(std::cell::RefCell::default(), async move {
            let output = handshake.await;
            let record = HANDSHAKE_RECORD
                .try_with(|record| record.take())
                .unwrap_or_default();
            (output, record)
        })
        .await
}

/// The error the verifier returns for a refusal, chosen for the alert the client
/// receives: an id this node does not list, or one pinned to another anchor, becomes
/// `access_denied`; WebPKI's own errors keep their alerts (revoked, expired, unknown CA).
fn alert_for(error: rustls::Error) -> rustls::Error {
    match &error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other))
            if super::access::is_partner_refusal(other) =>
        {
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        }
        _ => error,
    }
}

/// Client verification against the directory's state in force at the handshake:
/// WebPKI over the current anchors and CRLs, then the id must be configured and the
/// chain must reach the anchor the partner is pinned to.
#[derive(Debug)]
struct KnownPartnerVerifier {
    directory: Arc<Directory>,
    /// Subjects of the anchors at start, offered to clients as hints.
    root_hints: Vec<DistinguishedName>,
    /// Whether a client must present a certificate (always, but on a TAXII listener
    /// that also takes HTTP Basic credentials).
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for KnownPartnerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let _ = HANDSHAKE_RECORD.try_with(|record| {
            record.borrow_mut().presented = Some(end_entity.clone().into_owned());
        });
        if let Err(error) = self
            .directory
            .verify_handshake(end_entity, intermediates, now)
        {
            let _ = HANDSHAKE_RECORD.try_with(|record| {
                let mut record = record.borrow_mut();
                record.refusal = Some(describe_tls_error(&error));
                record.refusal_kind = Some(super::access::tls_refusal_reason(&error));
            });
            return Err(alert_for(error));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// How telling a verifier's refusal is, to pick the one to report when every anchor
/// refused: revoked first, then expired, then the first.
fn refusal_rank(error: &rustls::Error) -> u8 {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Revoked) => 3,
        rustls::Error::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => 2,
        _ => 1,
    }
}

/// The first acceptance of several anchors' verifiers (tried lazily, in order), or the
/// most telling of their refusals.
fn first_accepted<T>(
    attempts: impl Iterator<Item = Result<T, rustls::Error>>,
) -> Result<T, rustls::Error> {
    let mut refused: Option<rustls::Error> = None;
    for attempt in attempts {
        match attempt {
            Ok(verified) => return Ok(verified),
            Err(e)
                if refused
                    .as_ref()
                    .is_none_or(|r| refusal_rank(&e) > refusal_rank(r)) =>
            {
                refused = Some(e);
            }
            Err(_) => {}
        }
    }
    Err(refused.unwrap_or(rustls::Error::InvalidCertificate(
        CertificateError::UnknownIssuer,
    )))
}

/// A client-certificate verifier over several anchor files: accepted when one of the
/// per-anchor verifiers (each with only the CRLs its anchor signed) accepts.
#[derive(Debug)]
struct AnyAnchor {
    each: Vec<Arc<dyn ClientCertVerifier>>,
    hints: Vec<DistinguishedName>,
    /// Handshake signatures do not depend on the anchor: checked as
    /// [`KnownPartnerVerifier`] checks them.
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyAnchor {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        first_accepted(
            self.each
                .iter()
                .map(|verifier| verifier.verify_client_cert(end_entity, intermediates, now)),
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A server-certificate verifier over several anchor files, as [`AnyAnchor`].
#[derive(Debug)]
struct AnyServerAnchor {
    each: Vec<Arc<WebPkiServerVerifier>>,
    /// As [`AnyAnchor::algorithms`].
    algorithms: WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for AnyServerAnchor {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        first_accepted(self.each.iter().map(|verifier| {
            verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        }))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
