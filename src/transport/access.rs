//! Who may use this node now: the partner [`Directory`] (each partner with the trust
//! anchor its certificate must chain to), the certificate verifiers over the anchors
//! and CRLs in force, and the registry of live connections. Every request is checked
//! against the state in force when it arrives, and every reload re-checks each live
//! connection; one that lost access is withdrawn (its streams told why) and closed.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, OtherError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::expiry::{CertificateRole, WatchedCertificate};
use super::identity::{ConnectionInfo, certificate_id};
use crate::model::{NodeId, Partner, PartnerKind, Role};

/// Time a withdrawn connection's streams have to send their final status before the
/// connection is closed.
pub const WITHDRAWAL_GRACE: Duration = Duration::from_millis(250);

/// A configured partner and the trust anchor its certificate must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// Who the partner is and what it may do.
    pub partner: Partner,
    /// The trust-anchor file (as named in `node.trust_anchors`) the partner's
    /// certificate must chain to; `None` accepts any configured anchor (the
    /// configuration allows that only when there is exactly one).
    pub trust_anchor: Option<PathBuf>,
}

impl From<Partner> for Listing {
    fn from(partner: Partner) -> Self {
        Self {
            partner,
            trust_anchor: None,
        }
    }
}

/// Client-certificate verifiers over the trust anchors and CRLs in force: one over
/// every anchor, and one per anchor file for partners pinned to it.
#[derive(Clone, Debug)]
pub struct Verifiers {
    pub(crate) any: Arc<dyn ClientCertVerifier>,
    pub(crate) by_anchor: HashMap<PathBuf, Arc<dyn ClientCertVerifier>>,
    /// When several anchors are configured, the anchor files the node's own certificate
    /// chains to: its own id (the operator, who sees everything) is pinned to them as a
    /// partner is to its anchor, so another anchor cannot issue it. `None` with one anchor.
    pub(crate) own_anchors: Option<Vec<PathBuf>>,
    /// The trust-anchor certificates, for expiry warnings.
    pub(crate) anchor_certificates: Vec<WatchedCertificate>,
    /// The public key (SubjectPublicKeyInfo, DER) of the node's own certificate: its own
    /// id is its operator only with its own key, whatever else a CA issued for that id.
    pub(crate) own_key: Option<Vec<u8>>,
    /// The issuer of a CRL among these that revokes the node's own certificate.
    pub(crate) own_revoked_by: Option<String>,
}

/// Why a certificate is refused beyond what WebPKI checks.
#[derive(Debug, thiserror::Error)]
enum PartnerError {
    /// The id is not configured.
    #[error("certificate id {0} is not a configured peer or client")]
    Unknown(NodeId),
    /// The certificate does not chain to the anchor its partner is pinned to.
    #[error("certificate for {id} does not chain to its configured trust anchor {anchor}")]
    WrongAnchor {
        /// The partner.
        id: NodeId,
        /// The anchor file it is pinned to.
        anchor: String,
    },
    /// No verifier has been installed (no server configuration was built).
    #[error("no certificate verifier is in force")]
    NoVerifier,
    /// A certificate naming this node's own id with another key than the node's own.
    #[error("certificate for {0} (this node's own id) does not hold this node's own key")]
    NotOwnKey(NodeId),
    /// A certificate naming a configured node that was not issued for a node (no server
    /// authentication use): a client certificate cannot speak as a node.
    #[error(
        "certificate for {0}, a configured node, is not a node certificate (its extended key usage has no server authentication)"
    )]
    NotANodeCertificate(NodeId),
}

/// Whether a verifier error is this module's refusal of a valid certificate (an id not
/// configured, or a wrong anchor) rather than a problem with the certificate itself.
pub(crate) fn is_partner_refusal(error: &OtherError) -> bool {
    matches!(
        error.0.downcast_ref::<PartnerError>(),
        Some(
            PartnerError::Unknown(_)
                | PartnerError::WrongAnchor { .. }
                | PartnerError::NotOwnKey(_)
                | PartnerError::NotANodeCertificate(_)
        )
    )
}

fn refuse(error: PartnerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

/// Why a connection lost access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The partner was removed, or its kind or role changed.
    Configuration,
    /// The certificate is revoked by a CRL in force.
    Revoked,
    /// The certificate expired.
    Expired,
    /// The certificate no longer chains to a trust anchor (or its pinned one).
    Untrusted,
}

/// A connection's access was withdrawn; every request on it is refused and the
/// connection is closed shortly after.
#[derive(Clone, Debug, thiserror::Error)]
#[error("access to this node was withdrawn: {reason}")]
pub struct Withdrawal {
    /// What kind of change withdrew it.
    pub cause: Cause,
    /// Why, in words.
    pub reason: String,
}

/// One live connection as the directory sees it.
#[derive(Debug)]
pub struct Access {
    connection: u64,
    id: NodeId,
    /// The partner as it was when the connection was admitted.
    admitted_as: Partner,
    /// The client's chain, leaf first, kept to re-verify it under new CRLs.
    chain: Vec<CertificateDer<'static>>,
    /// The leaf's notAfter, seconds since the Unix epoch.
    not_after: i64,
    /// The directory generation this connection was last verified under.
    generation: AtomicU64,
    withdrawal: OnceLock<Withdrawal>,
    withdrawn: CancellationToken,
    /// Cancelled [`WITHDRAWAL_GRACE`] after the withdrawal, or once the connection has
    /// been idle too long: the connection's reads and writes fail from then on.
    closing: CancellationToken,
    /// Calls in progress on the connection. Every change (a call begun or ended) is
    /// seen by the idle watch, so that a call restarts the idle time however short it is.
    calls: tokio::sync::watch::Sender<usize>,
}

impl Access {
    /// The leaf certificate's notAfter, seconds since the Unix epoch.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The withdrawal, if access was withdrawn.
    pub fn withdrawal(&self) -> Option<Withdrawal> {
        self.withdrawal.get().cloned()
    }

    /// Resolves when access is withdrawn (at once if it already was).
    pub fn withdrawn(self: &Arc<Self>) -> impl Future<Output = Withdrawal> + Send + 'static {
        let access = self.clone();
        async move {
            access.withdrawn.cancelled().await;
            access.withdrawal().unwrap_or_else(|| Withdrawal {
                cause: Cause::Configuration,
                reason: "the connection is closing".into(),
            })
        }
    }

    /// Withdraws access (the first reason wins) and wakes everything waiting on it.
    fn withdraw(&self, cause: Cause, reason: String) -> Withdrawal {
        if self
            .withdrawal
            .set(Withdrawal {
                cause,
                reason: reason.clone(),
            })
            .is_ok()
        {
            tracing::warn!(peer = %self.id, connection = self.connection, %reason, "access withdrawn; closing the connection");
            self.withdrawn.cancel();
        }
        self.withdrawal().unwrap_or(Withdrawal { cause, reason })
    }

    /// Marks a call in progress on this connection until the guard is dropped (when
    /// its response, a stream's included, has ended or was abandoned).
    pub(crate) fn call_begun(self: &Arc<Self>) -> CallInProgress {
        self.calls.send_modify(|n| *n += 1);
        CallInProgress(self.clone())
    }

    /// Resolves once the connection has had no call in progress for `timeout` on end.
    async fn idle_for(&self, timeout: Duration) {
        let mut calls = self.calls.subscribe();
        loop {
            // The sender lives in `self`, so it cannot be dropped while this waits.
            if calls.wait_for(|open| *open == 0).await.is_err() {
                return std::future::pending().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(timeout) => return,
                // A call began (and may have ended already): start over.
                _ = calls.changed() => {}
            }
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        now >= self.not_after.saturating_mul(1000)
    }

    fn expired_reason(&self) -> String {
        let at = time::OffsetDateTime::from_unix_timestamp(self.not_after)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| self.not_after.to_string());
        format!("the certificate of {} expired at {at}", self.id)
    }
}

#[derive(Debug)]
struct State {
    generation: u64,
    partners: HashMap<NodeId, Listing>,
    verifiers: Option<Verifiers>,
}

/// Every identity this node will talk to, the verifiers in force, and the live
/// connections. Replaced as a whole when the configuration is reloaded; each live
/// connection is then re-checked and those that lost access are closed.
#[derive(Debug)]
pub struct Directory {
    state: RwLock<Arc<State>>,
    live: Mutex<HashMap<u64, Arc<Access>>>,
    next_connection: AtomicU64,
    /// The certificate the listener presents, for expiry warnings.
    own_certificate: Mutex<Option<WatchedCertificate>>,
    /// The last certificate each configured partner connected with (at most one per
    /// partner; entries of partners no longer configured are dropped at a reload).
    seen: Mutex<HashMap<NodeId, WatchedCertificate>>,
    /// The certificate chains each configured client connected with since this node
    /// started (at most [`CHAINS_KEPT`] per client, newest last), so that a CRL
    /// revoking one of them also ends the client's HTTP Basic access.
    chains: Mutex<HashMap<NodeId, Vec<SeenChain>>>,
}

/// A client's certificate chain as it was presented, and when.
#[derive(Debug)]
struct SeenChain {
    chain: Vec<CertificateDer<'static>>,
    /// When it was last presented, seconds since the Unix epoch: its revocation is
    /// judged as of then, so that it stays revoked once it has expired.
    at_secs: u64,
}

/// How many distinct certificates of one client [`Directory::revoked_since_seen`] remembers.
const CHAINS_KEPT: usize = 8;

impl Directory {
    /// A directory of the given partners. The node itself is added as [`PartnerKind::Local`]
    /// with the admin role: whoever holds the node's own key is its operator. The
    /// verifiers are installed when a server configuration is built over it.
    pub fn new<L: Into<Listing>>(own_id: &NodeId, partners: impl IntoIterator<Item = L>) -> Self {
        Self {
            state: RwLock::new(Arc::new(State {
                generation: 0,
                partners: Self::map(own_id, partners),
                verifiers: None,
            })),
            live: Mutex::default(),
            next_connection: AtomicU64::new(1),
            own_certificate: Mutex::default(),
            seen: Mutex::default(),
            chains: Mutex::default(),
        }
    }

    fn map<L: Into<Listing>>(
        own_id: &NodeId,
        partners: impl IntoIterator<Item = L>,
    ) -> HashMap<NodeId, Listing> {
        let mut map: HashMap<NodeId, Listing> = partners
            .into_iter()
            .map(Into::into)
            .map(|l: Listing| (l.partner.id.clone(), l))
            .collect();
        map.insert(
            own_id.clone(),
            Listing::from(Partner {
                id: own_id.clone(),
                kind: PartnerKind::Local,
                role: Role::Admin,
            }),
        );
        map
    }

    fn current(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Counts reloads; a connection verified under an older generation is verified
    /// again before its next request is served.
    pub fn generation(&self) -> u64 {
        self.current().generation
    }

    /// How many authenticated connections are open.
    pub fn connections(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The partner with this id, if configured now.
    pub fn lookup(&self, id: &NodeId) -> Option<Partner> {
        self.current().partners.get(id).map(|l| l.partner.clone())
    }

    /// The certificates whose expiry matters to this node: its own (as the listener
    /// presents it), its trust anchors in force, and the last certificate each
    /// configured partner connected with.
    pub fn watched_certificates(&self) -> Vec<WatchedCertificate> {
        let state = self.current();
        let mut all: Vec<WatchedCertificate> = self
            .own_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        if let Some(verifiers) = &state.verifiers {
            for own in &mut all {
                own.revoked_by.clone_from(&verifiers.own_revoked_by);
            }
            all.extend(verifiers.anchor_certificates.iter().cloned());
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let mut partners: Vec<&WatchedCertificate> = seen
            .iter()
            .filter(|(id, _)| state.partners.contains_key(*id))
            .map(|(_, cert)| cert)
            .collect();
        partners.sort_by(|a, b| a.name.cmp(&b.name));
        all.extend(partners.into_iter().cloned());
        all
    }

    /// Installs the verifiers a server configuration was built with, and the
    /// certificate that configuration presents.
    pub(crate) fn install(&self, verifiers: Verifiers, own: Option<WatchedCertificate>) {
        *self
            .own_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = own;
        let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
        *state = Arc::new(State {
            generation: state.generation + 1,
            partners: state.partners.clone(),
            verifiers: Some(verifiers),
        });
    }

    /// Replaces every entry, and the verifiers when given (configuration reload).
    /// Each live connection is then verified again: one whose partner was removed or
    /// changed kind or role, or whose certificate is now revoked, expired or no
    /// longer chains to its anchor, is withdrawn. Returns how many were.
    pub fn replace<L: Into<Listing>>(
        &self,
        own_id: &NodeId,
        partners: impl IntoIterator<Item = L>,
        verifiers: Option<Verifiers>,
    ) -> usize {
        let partners = Self::map(own_id, partners);
        let next = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            let next = Arc::new(State {
                generation: state.generation + 1,
                partners,
                verifiers: verifiers.or_else(|| state.verifiers.clone()),
            });
            *state = next.clone();
            next
        };
        // Connections admitted after this point see the new state themselves.
        let live: Vec<Arc<Access>> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut withdrawn = 0;
        for access in live {
            if access.withdrawal().is_some() {
                continue;
            }
            if Self::evaluate(&access, &next).is_err() {
                withdrawn += 1;
            }
        }
        withdrawn
    }

    /// The handshake check, after the TLS layer's own: the chain is valid under the
    /// anchors and CRLs in force, the id is configured, and the chain reaches the
    /// anchor the partner is pinned to.
    pub(crate) fn verify_handshake(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        Self::verify_chain(&self.current(), end_entity, intermediates, now)
    }

    fn verify_chain(
        state: &State,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let verifiers = state
            .verifiers
            .as_ref()
            .ok_or_else(|| refuse(PartnerError::NoVerifier))?;
        verifiers
            .any
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = certificate_id(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        })?;
        let listing = state
            .partners
            .get(&id)
            .ok_or_else(|| refuse(PartnerError::Unknown(id.clone())))?;
        match listing.partner.kind {
            PartnerKind::Local => {
                if let Some(own) = &verifiers.own_key {
                    if super::identity::public_key(end_entity).as_ref() != Some(own) {
                        return Err(refuse(PartnerError::NotOwnKey(id)));
                    }
                }
            }
            PartnerKind::Node => {
                if !super::identity::is_node_certificate(end_entity) {
                    return Err(refuse(PartnerError::NotANodeCertificate(id)));
                }
            }
            PartnerKind::Client => {}
        }
        if let Some(anchor) = &listing.trust_anchor {
            let wrong = || {
                refuse(PartnerError::WrongAnchor {
                    id: id.clone(),
                    anchor: anchor.display().to_string(),
                })
            };
            verifiers
                .by_anchor
                .get(anchor)
                .ok_or_else(wrong)?
                .verify_client_cert(end_entity, intermediates, now)
                .map_err(|_| wrong())?;
        }
        if let (PartnerKind::Local, Some(own)) = (listing.partner.kind, &verifiers.own_anchors) {
            let chains_to_own = own.iter().any(|anchor| {
                verifiers.by_anchor.get(anchor).is_some_and(|verifier| {
                    verifier
                        .verify_client_cert(end_entity, intermediates, now)
                        .is_ok()
                })
            });
            if !chains_to_own {
                return Err(refuse(PartnerError::WrongAnchor {
                    id: id.clone(),
                    anchor: if own.is_empty() {
                        String::from("(none: the node's own certificate chains to no anchor)")
                    } else {
                        own.iter()
                            .map(|a| a.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                }));
            }
        }
        Ok(())
    }

    /// Registers a connection whose handshake has completed. `verified_under` is the
    /// generation read before the handshake began; if a reload came since, the chain
    /// is verified again here.
    pub(crate) fn admit(
        self: &Arc<Self>,
        chain: Vec<CertificateDer<'static>>,
        remote_addr: SocketAddr,
        verified_under: u64,
    ) -> Result<(ConnectionInfo, Registration), String> {
        let leaf = chain.first().ok_or("no client certificate")?;
        let id = certificate_id(leaf).map_err(|e| e.to_string())?;
        let not_after = X509Certificate::from_der(leaf.as_ref())
            .map_err(|e| format!("certificate cannot be parsed: {e}"))?
            .1
            .validity()
            .not_after
            .timestamp();
        let partner = self
            .lookup(&id)
            .ok_or_else(|| format!("certificate id {id} is not a configured peer or client"))?;
        if partner.kind != PartnerKind::Local {
            if let Some(mut seen) = WatchedCertificate::read(CertificateRole::Partner, leaf) {
                seen.last_seen_ms = Some(super::expiry::now_ms());
                let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                let configured = self.current();
                // Bounded by the partners configured now.
                map.retain(|known, _| configured.partners.contains_key(known));
                map.insert(id.clone(), seen);
            }
        }
        if partner.kind == PartnerKind::Client {
            let mut chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
            let configured = self.current();
            chains.retain(|known, _| configured.partners.contains_key(known));
            let held = chains.entry(id.clone()).or_default();
            let at_secs = UnixTime::now().as_secs();
            match held
                .iter_mut()
                .find(|known| known.chain.first() == Some(leaf))
            {
                Some(known) => known.at_secs = at_secs,
                None => {
                    if held.len() == CHAINS_KEPT {
                        held.remove(0);
                    }
                    held.push(SeenChain {
                        chain: chain.clone(),
                        at_secs,
                    });
                }
            }
        }
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let access = Arc::new(Access {
            connection,
            id,
            admitted_as: partner.clone(),
            chain,
            not_after,
            generation: AtomicU64::new(verified_under),
            withdrawal: OnceLock::new(),
            withdrawn: CancellationToken::new(),
            closing: CancellationToken::new(),
            calls: tokio::sync::watch::Sender::new(0),
        });
        // Registered before the state is read: a reload either sees this connection
        // or came before the read below.
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(connection, access.clone());
        let registration = Registration {
            directory: self.clone(),
            access: access.clone(),
            closed: CancellationToken::new(),
        };
        let state = self.current();
        if access.generation.load(Ordering::Acquire) != state.generation {
            Self::evaluate(&access, &state).map_err(|w| w.reason)?;
        }
        Ok((
            ConnectionInfo {
                partner,
                remote_addr,
                access,
            },
            registration,
        ))
    }

    /// Whether a CRL in force revokes a certificate `id` was seen to present since this
    /// node started. HTTP Basic credentials of such a client are refused: revoking a
    /// member's certificate cuts it off, whatever else it holds.
    pub fn revoked_since_seen(&self, id: &NodeId) -> bool {
        let state = self.current();
        let chains = self.chains.lock().unwrap_or_else(|p| p.into_inner());
        chains.get(id).is_some_and(|held| {
            held.iter().any(|seen| {
                seen.chain
                    .split_first()
                    .is_some_and(|(leaf, intermediates)| {
                        // As of when it was presented (valid then), against the CRLs in force
                        // now: a revoked certificate stays revoked after it expires.
                        let then = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                            seen.at_secs,
                        ));
                        matches!(
                            Self::verify_chain(&state, leaf, intermediates, then),
                            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
                        )
                    })
            })
        })
    }

    /// The partner in force now for a request on this connection, or why the
    /// connection has no access any more (it is then withdrawn).
    pub fn authorize(&self, info: &ConnectionInfo) -> Result<Partner, Withdrawal> {
        let access = &info.access;
        if let Some(withdrawal) = access.withdrawal() {
            return Err(withdrawal);
        }
        if access.expired(SystemTime::now()) {
            return Err(access.withdraw(Cause::Expired, access.expired_reason()));
        }
        let state = self.current();
        if access.generation.load(Ordering::Acquire) != state.generation {
            Self::evaluate(access, &state)?;
        }
        match state.partners.get(&access.id) {
            Some(listing) => Ok(listing.partner.clone()),
            None => Err(access.withdraw(
                Cause::Configuration,
                format!("{} is no longer configured on this node", access.id),
            )),
        }
    }

    /// Verifies a live connection under `state`; withdraws it if it lost access.
    fn evaluate(access: &Access, state: &State) -> Result<(), Withdrawal> {
        let id = &access.id;
        let Some(listing) = state.partners.get(id) else {
            return Err(access.withdraw(
                Cause::Configuration,
                format!("{id} is no longer configured on this node"),
            ));
        };
        let (before, now) = (&access.admitted_as, &listing.partner);
        if before.kind != now.kind {
            return Err(access.withdraw(
                Cause::Configuration,
                format!(
                    "{id} is now configured as a {}, not a {}",
                    kind_name(now.kind),
                    kind_name(before.kind)
                ),
            ));
        }
        if before.role != now.role {
            return Err(access.withdraw(
                Cause::Configuration,
                format!(
                    "the role of {id} changed from {} to {}; reconnect to continue with the new role",
                    before.role, now.role
                ),
            ));
        }
        if access.expired(SystemTime::now()) {
            return Err(access.withdraw(Cause::Expired, access.expired_reason()));
        }
        let (leaf, intermediates) = match access.chain.split_first() {
            Some(split) => split,
            None => {
                return Err(access.withdraw(Cause::Untrusted, "no client certificate".into()));
            }
        };
        if let Err(error) = Self::verify_chain(state, leaf, intermediates, UnixTime::now()) {
            let cause = match &error {
                rustls::Error::InvalidCertificate(CertificateError::Revoked) => Cause::Revoked,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => Cause::Expired,
                _ => Cause::Untrusted,
            };
            return Err(access.withdraw(cause, describe_tls_error(&error)));
        }
        access
            .generation
            .fetch_max(state.generation, Ordering::AcqRel);
        Ok(())
    }
}

fn kind_name(kind: PartnerKind) -> &'static str {
    match kind {
        PartnerKind::Node => "peer node",
        PartnerKind::Client => "client",
        PartnerKind::Local => "local operator",
    }
}

/// The reason word a refused handshake is counted under (a metrics label).
pub(crate) fn tls_refusal_reason(error: &rustls::Error) -> &'static str {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Revoked => "revoked",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_valid_yet"
            }
            CertificateError::UnknownIssuer => "unknown_issuer",
            CertificateError::BadSignature => "bad_signature",
            CertificateError::UnknownRevocationStatus
            | CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => "revocation_status",
            CertificateError::Other(OtherError(other)) => {
                match other.downcast_ref::<PartnerError>() {
                    Some(PartnerError::Unknown(_)) => "unknown_partner",
                    Some(PartnerError::WrongAnchor { .. }) => "wrong_anchor",
                    Some(PartnerError::NoVerifier) => "no_verifier",
                    Some(PartnerError::NotOwnKey(_)) => "not_own_key",
                    Some(PartnerError::NotANodeCertificate(_)) => "not_a_node_certificate",
                    None => "invalid_certificate",
                }
            }
            _ => "invalid_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::AlertReceived(_) => "alert_received",
        _ => "tls_error",
    }
}

/// An instant as RFC 3339 (UTC), or seconds since the epoch if it cannot be formatted.
fn unix_time_text(at: UnixTime) -> String {
    let secs = at.as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} s after the Unix epoch"))
}

/// A rustls error in words, for logs and statuses (never a debug dump).
pub fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Revoked => "the certificate is revoked by a CRL in force".into(),
            CertificateError::Expired => "the certificate has expired".into(),
            CertificateError::ExpiredContext { not_after, .. } => {
                format!("the certificate expired at {}", unix_time_text(*not_after))
            }
            CertificateError::NotValidYet => "the certificate is not valid yet".into(),
            CertificateError::NotValidYetContext { not_before, .. } => format!(
                "the certificate is not valid before {} (check both clocks)",
                unix_time_text(*not_before)
            ),
            CertificateError::UnknownIssuer => {
                "the certificate does not chain to a trust anchor".into()
            }
            CertificateError::BadSignature => "a certificate signature does not verify".into(),
            CertificateError::UnknownRevocationStatus => {
                "no CRL in force covers the certificate's issuer".into()
            }
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                "a CRL in force has expired".into()
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the certificate is not for TLS client authentication".into()
            }
            CertificateError::Other(other) => other.to_string(),
            other => format!("invalid certificate: {other}"),
        },
        rustls::Error::NoCertificatesPresented => "no client certificate was presented".into(),
        rustls::Error::AlertReceived(alert) => format!("the client sent alert {alert:?}"),
        other => other.to_string(),
    }
}

/// A connection's place in the registry; dropping it (the connection closed)
/// removes the connection and stops its watchdog.
#[derive(Debug)]
pub(crate) struct Registration {
    directory: Arc<Directory>,
    access: Arc<Access>,
    closed: CancellationToken,
}

impl Registration {
    /// Resolves [`WITHDRAWAL_GRACE`] after access is withdrawn: the connection must
    /// then stop reading and writing.
    pub(crate) fn closing(&self) -> WaitForCancellationFutureOwned {
        self.access.closing.clone().cancelled_owned()
    }

    /// Whether the connection must stop reading and writing.
    pub(crate) fn is_closing(&self) -> bool {
        self.access.closing.is_cancelled()
    }

    /// Runs until the connection closes: withdraws access when the certificate
    /// expires, and closes the connection [`WITHDRAWAL_GRACE`] after a withdrawal, or
    /// once it has had no call in progress for `idle_timeout`
    /// (`limits.idle_connection_timeout`; a stream is a call in progress as long as it
    /// is open).
    pub(crate) fn watchdog(
        &self,
        idle_timeout: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let access = self.access.clone();
        let closed = self.closed.clone();
        async move {
            let until_expiry = u64::try_from(access.not_after)
                .ok()
                .map(|secs| UNIX_EPOCH + Duration::from_secs(secs))
                .and_then(|at| at.duration_since(SystemTime::now()).ok())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = closed.cancelled() => return,
                _ = access.withdrawn.cancelled() => {}
                _ = tokio::time::sleep(until_expiry) => {
                    access.withdraw(Cause::Expired, access.expired_reason());
                }
                _ = access.idle_for(idle_timeout) => {
                    // No call to tell: the connection closes at once, and its place
                    // under `limits.connections_per_partner` is free.
                    crate::limits::count(crate::limits::Limit::IdleConnectionTimeout);
                    tracing::info!(
                        peer = %access.id,
                        connection = access.connection,
                        timeout_s = idle_timeout.as_secs_f64(),
                        "connection closed: no call in progress for limits.idle_connection_timeout"
                    );
                    access.closing.cancel();
                    return;
                }
            }
            tokio::select! {
                _ = closed.cancelled() => {}
                _ = tokio::time::sleep(WITHDRAWAL_GRACE) => access.closing.cancel(),
            }
        }
    }
}

/// A call in progress on a connection (see [`Access::call_begun`]).
#[derive(Debug)]
pub(crate) struct CallInProgress(Arc<Access>);

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.calls.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.closed.cancel();
        self.directory
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.access.connection);
    }
}
