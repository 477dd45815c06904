//! A running node: wires configuration, store, transport and services together,
//! owns every task, and stops them in a fixed order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::Config;
use crate::crypto::BundleSigner;
use crate::engine::Engine;
use crate::model::NodeId;
use crate::rpc::admin::{AdminService, PolicyReload};
use crate::rpc::auth::RequireIdentityLayer;
use crate::rpc::federation::FederationService;
use crate::rpc::intel::IntelService;
use crate::rpc::proto::FILE_DESCRIPTOR_SET;
use crate::rpc::proto::admin_server::AdminServer;
use crate::rpc::proto::federation_server::FederationServer;
use crate::rpc::proto::intel_server::IntelServer;
use crate::store::{SledStore, Store, StoreError};

use crate::transport::{ConnectionInfo, Directory, SignerVerifier, TlsError, listener};
pub use crate::wire::{MAX_FEDERATION_REQUEST_BYTES, MAX_MESSAGE_BYTES};

/// Why a node could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened or flushed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The node key cannot sign bundles.
    #[error(transparent)]
    Sign(#[from] crate::crypto::SignError),
    /// The engine could not start.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The ledger's archive directory is missing or the node cannot write there.
    #[error("{0}")]
    LedgerArchive(String),
    /// The names of the configured feeds could not be recorded, or the record of
    /// earlier ones cannot be read.
    #[error("{0}")]
    KnownFeeds(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Reflection could not be set up from the embedded descriptor set.
    #[error("reflection service: {0}")]
    Reflection(String),
    /// The gRPC server stopped with an error.
    #[error("gRPC server: {0}")]
    Serve(String),
    /// The TAXII listener could not start.
    #[error(transparent)]
    Taxii(#[from] crate::taxii::TaxiiError),
    /// The admin listener could not start.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    /// Connections did not close within the shutdown deadline and were cut.
    #[error("shutdown deadline of {0:?} passed; remaining connections were closed")]
    DeadlineExceeded(Duration),
}

/// A running node. Dropping it without [`Node::shutdown`] cancels its tasks.
pub struct Node {
    id: NodeId,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    _cancel_on_drop: tokio_util::sync::DropGuard,
    accept_task: JoinHandle<()>,
    serve_task: JoinHandle<Result<(), NodeError>>,
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    reload: Arc<ConfigReload>,
    pull_links: Arc<PullLinks>,
    feed_loops: Arc<crate::feeds::FeedLoops>,
    tasks: Vec<JoinHandle<()>>,
    taxii: Option<crate::taxii::TaxiiServer>,
    admin: Option<crate::console::ConsoleServer>,
}

/// The pull loops, one per `[[peer]]` with role `peer`, started again as a set at each
/// reload with the client TLS configuration (anchors, CRLs) and the peer list then in
/// force: a peer removed, or whose certificate a reloaded CRL revokes, is no longer
/// pulled from, and a peer added is.
struct PullLinks {
    engine: Arc<Engine>,
    states: crate::sync::Links,
    shutdown: CancellationToken,
    running: std::sync::Mutex<(CancellationToken, Vec<JoinHandle<()>>)>,
}

/// The client configuration of each peer's pull link.
type PeerTls = std::collections::HashMap<crate::model::NodeId, Arc<rustls::ClientConfig>>;

/// A client configuration per peer: one pinned to a peer's trust anchor holds that
/// peer's server certificate to it, so another trusted CA cannot stand in for the peer.
fn peer_tls(config: &Config) -> Result<PeerTls, crate::transport::TlsError> {
    config
        .peers
        .iter()
        .map(|peer| {
            let tls = config.tls.client_config_for(peer.trust_anchor.as_deref())?;
            Ok((peer.id.clone(), tls))
        })
        .collect()
}

impl PullLinks {
    /// Starts the pull loops of `config` over `tls` (the client configuration for each
    /// peer, [`peer_tls`]), stopping those started before. Must run inside the runtime
    /// (it spawns).
    fn start(&self, config: &Config, tls: &PeerTls) {
        // The loops of the previous configuration stop before the new ones start.
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.0.cancel();
        let generation = self.shutdown.child_token();
        let mut started = Vec::new();
        let peers: Vec<_> = config
            .peers
            .iter()
            .filter(|p| p.role == crate::model::Role::Peer)
            .collect();
        for peer in &peers {
            let Some(tls) = tls.get(&peer.id) else {
                continue;
            };
            let link = crate::sync::Link {
                peer: peer.id.clone(),
                address: peer.address.clone(),
            };
            let dialer = crate::rpc::peer_client::GrpcDialer::new(
                tls.clone(),
                peer.address.clone(),
                peer.id.clone(),
                crate::transport::connect::Keepalive {
                    interval: config.node.limits.keepalive_interval,
                    timeout: config.node.limits.keepalive_timeout,
                },
            );
            started.push(tokio::spawn(crate::sync::run_link(
                link,
                dialer,
                self.engine.clone(),
                self.states.clone(),
                generation.clone(),
            )));
        }
        // Links of peers no longer pulled from leave the status.
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| peers.iter().any(|p| &p.id == id));
        running.0 = generation;
        running.1.retain(|task| !task.is_finished());
        running.1.extend(started);
    }

    /// Waits for every pull loop to end (after the node's shutdown token is cancelled).
    async fn join(&self) {
        let tasks = std::mem::take(&mut self.running.lock().unwrap_or_else(|p| p.into_inner()).1);
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// Re-reads the node's configuration file and puts its policy, partner list, trust
/// anchors and CRLs in force; connections that lose access are closed.
struct ConfigReload {
    path: std::path::PathBuf,
    /// The data directory the node started with (its store, and `feeds.known`).
    data_dir: std::path::PathBuf,
    id: NodeId,
    directory: Arc<Directory>,
    engine: Arc<Engine>,
    /// The engine's bundle-signer trust; clones share the verifier swapped here.
    signer_trust: SignerVerifier,
    /// One reload at a time (SIGHUP and `Admin.ReloadPolicy` may race), so the directory
    /// and the policy in force always come from the same file.
    serial: std::sync::Mutex<()>,
    /// One offered CRL at a time, from its check to its reload: two offers checked
    /// against the same CRL in force could otherwise both pass, and the older, written
    /// last, would replace the newer.
    crl_serial: std::sync::Mutex<()>,
    /// The pull loops, started again with the reloaded peers and TLS configuration.
    pull_links: Arc<PullLinks>,
    /// The TAXII listener's HTTP Basic credentials, replaced with the reloaded ones.
    taxii_credentials: Arc<crate::taxii::Credentials>,
    /// The feeds' poll loops, stopped and started to match the reloaded `[[feed]]`s.
    feed_loops: Arc<crate::feeds::FeedLoops>,
    /// Stops the TAXII listener, when a reload takes `[taxii]` out.
    taxii_stop: CancellationToken,
    /// Stops the admin listener (metrics and console), when a reload takes `[admin]` out.
    admin_stop: CancellationToken,
    /// The configuration in force: loaded at start or by the last reload, with the CRLs
    /// handed over since. A CRL handed over is checked against it and added to it,
    /// without reading the file (an edit not reloaded yet stays out of force).
    in_force: std::sync::Mutex<Arc<Config>>,
    /// The configuration the node started with: the settings only a restart changes
    /// are those of this one, whatever reloads came since.
    started: Arc<Config>,
}

/// Time allowed to offer a CRL to one peer.
const CRL_OFFER_TIMEOUT: Duration = Duration::from_secs(30);

/// A CRL (DER) as PEM.
fn crl_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN X509 CRL-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END X509 CRL-----\n");
    pem
}

/// Logs an error when a CRL in force revokes the node's own certificate: partners refuse
/// the node from then on, and the operator must get a new certificate.
fn warn_if_own_revoked(config: &Config) {
    if let Some(issuer) = config.tls.own_revoked_by() {
        tracing::error!(
            node = %config.node.id,
            %issuer,
            "this node's own certificate is revoked by a CRL in force: partners refuse its connections and bundles; get a new certificate (entente certs renew --new-key at the CA), install it and restart"
        );
    }
}

impl PolicyReload for ConfigReload {
    fn restart_needed(&self) -> Vec<String> {
        self.restart_only_changes(&self.in_force())
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    fn watched_certificates(&self) -> Vec<crate::transport::expiry::WatchedCertificate> {
        self.directory.watched_certificates()
    }

    fn offer_crl(&self, der: &[u8]) -> Result<Option<String>, String> {
        use crate::transport::crl::{CrlRefusal, check_form, file_name_for};
        // What needs no configuration first: a stream of junk costs no configuration load.
        check_form(der).map_err(|refusal| refusal.to_string())?;
        let _one_at_a_time = self.crl_serial.lock().unwrap_or_else(|p| p.into_inner());
        // No reload between the check against the configuration in force and the CRL
        // put in force beside it.
        let _no_reload = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let config = self.in_force();
        let issuer = match config.tls.check_crl(der) {
            Ok(issuer) => issuer,
            Err(CrlRefusal::NotNewer { .. }) => return Ok(None),
            Err(refusal) => return Err(refusal.to_string()),
        };
        // Stored where the configuration finds it at every load (`DATA_DIR/crls`), then
        // put in force beside the configuration in force, which also withdraws the
        // connections of certificates it revokes.
        let dir = config.node.data_dir.join("crls");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(file_name_for(der).map_err(|e| e.to_string())?);
        let before = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        crate::transport::files::replace_public(&path, crl_pem(der).as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let config = Config {
            tls: config.tls.with_crl(der),
            ..(*config).clone()
        };
        if let Err(reason) = self.put_in_force(config, false) {
            // A CRL the verifiers refuse (or a reload failing for another reason) must
            // not stay where every later reload and start would read it: the file is put
            // back as it was, and the configuration in force is unchanged.
            let restored = match &before {
                Some(bytes) => crate::transport::files::replace_public(&path, bytes),
                None => std::fs::remove_file(&path),
            };
            if let Err(error) = restored {
                tracing::error!(file = %path.display(), %error, "could not put the CRL file back after a failed reload");
            }
            return Err(format!("the CRL was not put in force: {reason}"));
        }
        tracing::info!(%issuer, file = %path.display(), "CRL put in force; offering it to the peers");
        let config = self.in_force();
        let tls = peer_tls(&config).map_err(|e| e.to_string())?;
        for peer in &config.peers {
            let Some(tls) = tls.get(&peer.id).cloned() else {
                continue;
            };
            let (own, peer_id, address) = (self.id.clone(), peer.id.clone(), peer.address.clone());
            let (crl, shutdown) = (der.to_vec(), self.pull_links.shutdown.clone());
            // Ends within CRL_OFFER_TIMEOUT or at shutdown.
            tokio::spawn(async move {
                let offer = async {
                    let client =
                        crate::client::NodeClient::connect(tls, &own, &address, &peer_id).await?;
                    client.offer_crl(crl).await
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    outcome = tokio::time::timeout(CRL_OFFER_TIMEOUT, offer) => match outcome {
                        Ok(Ok(applied)) => tracing::info!(peer = %peer_id, applied, "CRL offered"),
                        Ok(Err(error)) => tracing::warn!(peer = %peer_id, %error, "CRL offer failed"),
                        Err(_) => tracing::warn!(peer = %peer_id, "CRL offer timed out"),
                    },
                }
            });
        }
        Ok(Some(issuer))
    }

    fn reload(&self) -> Result<Arc<crate::policy::Policy>, String> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        // Loading re-reads the trust anchors and the CRL files the configuration names.
        let config = Config::load(&self.path).map_err(|e| e.to_string())?;
        if config.node.id != self.id {
            return Err(format!(
                "node.id changed from {} to {}; restart the node to change its identity",
                self.id, config.node.id
            ));
        }
        self.put_in_force(config, true)
    }
}

impl ConfigReload {
    /// Closes the TAXII and admin listeners whose sections a reload took out, with
    /// their connections. A listener is only ever started with the node: a section
    /// put back, or a new `listen`, waits for a restart, and the log says so.
    fn close_removed_listeners(&self, config: &Config) {
        let before = self.in_force();
        for (name, was, is, stop) in [
            (
                "taxii",
                before.taxii.as_ref().map(|t| t.listen),
                config.taxii.as_ref().map(|t| t.listen),
                &self.taxii_stop,
            ),
            (
                "admin",
                before.admin.as_ref().map(|a| a.listen),
                config.admin.as_ref().map(|a| a.listen),
                &self.admin_stop,
            ),
        ] {
            match (was, is) {
                (Some(_), None) if !stop.is_cancelled() => {
                    stop.cancel();
                    tracing::warn!(
                        section = name,
                        "the section was removed: its listener and connections are closed; a restart starts it again once the section is back"
                    );
                }
                (was, Some(listen)) if was != Some(listen) => tracing::warn!(
                    section = name,
                    %listen,
                    "the section was added or its listen address changed: that takes a restart"
                ),
                _ => {}
            }
        }
    }

    /// Warns of the settings `config` gives that differ from those the node started
    /// with and that only a restart puts in force (the listener's address and
    /// certificate, the store's directory and cache, the ledger and compaction settings,
    /// `[limits]`), so that "reloaded" does not pass for them. Compared with the start,
    /// not the last reload: a second reload still names what the first could not apply.
    fn unapplied_changes(&self, config: &Config) {
        let names = self.restart_only_changes(config);
        if !names.is_empty() {
            tracing::warn!(
                settings = %names.join(", "),
                "reloaded, but these changed settings take effect only when the node restarts; until then the previous values stay in force"
            );
        }
    }

    /// The settings of `config` that differ from the node's start and need a restart.
    fn restart_only_changes(&self, config: &Config) -> Vec<&'static str> {
        let (was, is) = (&self.started.node, &config.node);
        let changed = [
            ("node.listen", was.listen != is.listen),
            ("node.data_dir", was.data_dir != is.data_dir),
            ("node.cert", was.tls.cert != is.tls.cert),
            ("node.key", was.tls.key != is.tls.key),
            (
                "store.cache_mb",
                was.store_cache_bytes != is.store_cache_bytes,
            ),
            ("store.compact_every", was.compact_every != is.compact_every),
            ("[ledger]", was.ledger != is.ledger),
            ("[limits]", was.limits != is.limits),
        ];
        changed
            .into_iter()
            .filter_map(|(name, changed)| changed.then_some(name))
            .collect()
    }

    /// The configuration in force.
    fn in_force(&self) -> Arc<Config> {
        self.in_force
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `config` in force (the caller holds `serial`): its partners, anchors and
    /// CRLs, the signer trust and the outgoing links always; with `everything`, also its
    /// policy, TAXII credentials and feeds (a reload; a CRL handed over changes only
    /// the TLS side of the configuration in force).
    fn put_in_force(
        &self,
        config: Config,
        everything: bool,
    ) -> Result<Arc<crate::policy::Policy>, String> {
        // Everything that can fail comes first, so a refused change changes nothing.
        let verifiers = config
            .tls
            .client_verifiers()
            .map_err(|e| format!("node.crls: {e}"))?;
        let signer_trust = config
            .tls
            .signer_trust_pinned(&config.listings())
            .map_err(|e| format!("node.crls: {e}"))?;
        let client_tls = peer_tls(&config).map_err(|e| format!("node.crls: {e}"))?;
        let policy = if everything {
            // Feeds taken out of the configuration stay known, so their items stay
            // third-party (recorded before the policy goes into force).
            let known = crate::feeds::known::remember_in_both(
                &self.data_dir,
                self.engine.store().as_ref(),
                config
                    .feeds
                    .iter()
                    .map(crate::feeds::known::KnownFeed::configured),
            )?;
            Some(crate::policy::Policy::compile(
                &config.policy_spec_knowing(&known),
            ))
        } else {
            None
        };
        // Access first: streams woken by the policy change then find theirs withdrawn.
        let withdrawn = self
            .directory
            .replace(&self.id, config.listings(), Some(verifiers));
        self.signer_trust.replace_with(&signer_trust);
        if let Some(policy) = policy {
            self.engine.set_policy(policy);
            self.taxii_credentials.replace(
                config
                    .taxii
                    .as_ref()
                    .map(|t| t.basic.clone())
                    .unwrap_or_default(),
            );
        }
        // Outgoing links too: a peer now revoked or removed is no longer pulled from.
        self.pull_links.start(&config, &client_tls);
        if everything {
            // Feeds removed or changed stop polling; feeds added or changed start.
            self.feed_loops.apply(&config.feeds);
            self.close_removed_listeners(&config);
            self.unapplied_changes(&config);
        }
        let crls = config.node.tls.crls.len();
        warn_if_own_revoked(&config);
        *self.in_force.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        let policy = self.engine.policy();
        if everything {
            tracing::info!(
                policy_hash = %crate::util::hex(&policy.hash()),
                crls,
                connections_withdrawn = withdrawn,
                "policy reloaded"
            );
        } else {
            tracing::info!(
                connections_withdrawn = withdrawn,
                "certificate revocation lists in force changed"
            );
        }
        Ok(policy)
    }
}

impl Node {
    /// Opens the store, binds the listener and starts serving. Returns once the
    /// node accepts connections.
    pub async fn start(config: Config) -> Result<Self, NodeError> {
        Self::start_with_listener(config, None).await
    }

    /// [`Node::start`] on a listener the caller bound already (at the configured
    /// address), so that several nodes can name each other's ports before any starts
    /// without racing other programs for them.
    pub async fn start_with_listener(
        config: Config,
        listener: Option<TcpListener>,
    ) -> Result<Self, NodeError> {
        let id = config.node.id.clone();
        std::fs::create_dir_all(&config.node.data_dir).map_err(|source| NodeError::DataDir {
            path: config.node.data_dir.clone(),
            source,
        })?;
        owner_only(&config.node.data_dir).map_err(|source| NodeError::DataDir {
            path: config.node.data_dir.clone(),
            source,
        })?;
        // Retention moves segments there days or months from now: found out now.
        crate::store::check_archive_dir(&config.node.ledger).map_err(NodeError::LedgerArchive)?;
        let sled = Arc::new(SledStore::open_with(
            &config.node.data_dir,
            &id,
            config.node.store_cache_bytes,
            config.node.ledger.clone(),
        )?);
        let store: Arc<dyn Store> = sled.clone();
        let key = config.tls.private_key_pkcs8().ok_or_else(|| {
            NodeError::Sign(crate::crypto::SignError::BadKey(
                "the node key is not PKCS#8".into(),
            ))
        })?;
        let signer = BundleSigner::new(id.clone(), key, config.tls.certificate_der())?;
        let signer_trust = config.tls.signer_trust_pinned(&config.listings())?;
        // Every feed configured now is recorded before its items can be taken, so that
        // they stay third-party once the feed leaves the configuration.
        let known_feeds = crate::feeds::known::remember_in_both(
            &config.node.data_dir,
            store.as_ref(),
            config
                .feeds
                .iter()
                .map(crate::feeds::known::KnownFeed::configured),
        )
        .map_err(NodeError::KnownFeeds)?;
        let engine = Arc::new(
            Engine::new(
                store.clone(),
                crate::policy::Policy::compile(&config.policy_spec_knowing(&known_feeds)),
                signer,
                config.tls.certificate_der(),
                Box::new(signer_trust.clone()),
            )?
            .with_limits(&config.node.limits),
        );

        let directory = Arc::new(Directory::new(&id, config.listings()));
        let link_states: crate::sync::Links = Arc::default();
        let feed_states: crate::feeds::FeedStates = Arc::default();
        let shutdown = CancellationToken::new();
        let pull_links = Arc::new(PullLinks {
            engine: engine.clone(),
            states: link_states.clone(),
            shutdown: shutdown.clone(),
            running: std::sync::Mutex::new((shutdown.child_token(), Vec::new())),
        });
        let taxii_credentials = Arc::new(crate::taxii::Credentials::new(
            config
                .taxii
                .as_ref()
                .map(|t| t.basic.clone())
                .unwrap_or_default(),
        ));
        let feed_loops = Arc::new(crate::feeds::FeedLoops::new(
            engine.clone(),
            feed_states.clone(),
            shutdown.clone(),
        ));
        let reload = Arc::new(ConfigReload {
            path: config.path.clone(),
            data_dir: config.node.data_dir.clone(),
            id: id.clone(),
            directory: directory.clone(),
            engine: engine.clone(),
            signer_trust,
            serial: std::sync::Mutex::new(()),
            crl_serial: std::sync::Mutex::new(()),
            pull_links: pull_links.clone(),
            taxii_credentials: taxii_credentials.clone(),
            feed_loops: feed_loops.clone(),
            taxii_stop: shutdown.child_token(),
            admin_stop: shutdown.child_token(),
            in_force: std::sync::Mutex::new(Arc::new(config.clone())),
            started: Arc::new(config.clone()),
        });
        warn_if_own_revoked(&config);
        let server_tls = config.tls.server_config(directory.clone())?;

        let listener = match listener {
            Some(listener) => listener,
            None => TcpListener::bind(config.node.listen)
                .await
                .map_err(|source| NodeError::Bind {
                    addr: config.node.listen,
                    source,
                })?,
        };
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.node.listen,
            source,
        })?;

        let (incoming, accept_task) = listener::accept(
            listener,
            server_tls,
            directory.clone(),
            &config.node.limits,
            shutdown.clone(),
        );

        // The TAXII listener, if configured: the same directory (so the same
        // certificates, CRLs and per-request checks) and the same engine.
        let taxii = match &config.taxii {
            Some(settings) => Some(
                crate::taxii::TaxiiServer::start(
                    settings,
                    &config,
                    directory.clone(),
                    engine.clone(),
                    taxii_credentials,
                    reload.taxii_stop.clone(),
                )
                .await?,
            ),
            None => None,
        };

        // The admin listener, if configured: metrics and the read-only console.
        let admin = match &config.admin {
            Some(settings) => Some(
                crate::console::ConsoleServer::start(
                    settings.listen,
                    crate::console::Sources {
                        node: id.clone(),
                        engine: engine.clone(),
                        links: link_states.clone(),
                        directory: directory.clone(),
                        tls: config.node.tls.clone(),
                    },
                    reload.admin_stop.clone(),
                )
                .await?,
            ),
            None => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<FederationServer<FederationService>>()
            .await;
        health.set_serving::<IntelServer<IntelService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Reflection(e.to_string()))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| NodeError::Reflection(e.to_string()))?;

        let limits = &config.node.limits;
        let router = Server::builder()
            // Dead peers and half-open connections are found by HTTP/2 pings and closed,
            // with whatever streams they held.
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            // tonic sets no limit of its own: without one, a connection could hold streams
            // without bound (health watches, unary answers never read).
            .max_concurrent_streams(crate::limits::MAX_STREAMS_PER_CONNECTION)
            .trace_fn(|request| {
                let (peer, role, addr) = match request.extensions().get::<ConnectionInfo>() {
                    Some(info) => (
                        info.partner.id.to_string(),
                        info.partner.role.as_str(),
                        info.remote_addr.to_string(),
                    ),
                    None => (String::from("-"), "-", String::from("-")),
                };
                tracing::info_span!("rpc", method = %request.uri().path(), peer = %peer, role, addr = %addr)
            })
            // Time to answer, per method, for the admin listener's metrics.
            .layer(crate::console::timing::RecordLatencyLayer)
            .layer(RequireIdentityLayer::new(directory))
            // Every request but Publish is cut off past 64 KiB as it arrives, not read whole.
            .layer(crate::rpc::codec::SmallRequestsLayer)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                FederationServer::new(
                    FederationService::new(
                        id.clone(),
                        engine.clone(),
                        shutdown.clone(),
                        config.node.data_dir.clone(),
                    )
                        .with_crl_sink(reload.clone()),
                )
                // Pull streams are compressed for pullers that accept it (all Entente nodes
                // do). Requests are small and never accepted compressed, so a caller cannot
                // make the node decode a large message from a few bytes.
                .send_compressed(tonic::codec::CompressionEncoding::Zstd)
                .max_decoding_message_size(MAX_FEDERATION_REQUEST_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(AdminServer::new(AdminService::new(
                engine.clone(),
                reload.clone(),
                link_states.clone(),
                feed_states.clone(),
            )))
            .add_service(
                IntelServer::new(IntelService::new(engine.clone(), shutdown.clone()))
                    // Only Publish messages are large; `rpc::codec` bounds the rest, and
                    // what any message may cost once decoded.
                    .max_decoding_message_size(limits.publish_message_bytes)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            );

        // One pull loop per peer that may send to this node.
        pull_links.start(&config, &peer_tls(&config)?);

        // Group commit for what does not flush itself: bundles pulled from peers and
        // the cursors that count them reach the disk within this period.
        let mut tasks = vec![tokio::spawn(flush_periodically(
            engine.clone(),
            health.clone(),
            shutdown.clone(),
        ))];
        // The bundle log is compacted online, on a schedule.
        if let Some(every) = config.node.compact_every {
            tasks.push(tokio::spawn(compact_periodically(
                sled,
                every,
                config.node.compaction,
                shutdown.clone(),
            )));
        }
        // Certificates that expire soon are logged now and once a day.
        tasks.push(tokio::spawn(crate::transport::expiry::watch(
            reload.directory.clone(),
            shutdown.clone(),
        )));
        // One poll loop per external feed; a feed that fails only records its error.
        feed_loops.apply(&config.feeds);

        let signal = shutdown.clone();
        let serve_task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, signal.cancelled_owned())
                .await
                .map_err(|e| NodeError::Serve(crate::transport::connect::error_chain(&e)))
        });
        tracing::info!(node = %id, addr = %local_addr, "node serving");
        Ok(Self {
            id,
            local_addr,
            _cancel_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            accept_task,
            serve_task,
            store,
            engine,
            reload,
            pull_links,
            feed_loops,
            tasks,
            taxii,
            admin,
        })
    }

    /// The address of the TAXII listener, when `[taxii]` is configured.
    pub fn taxii_addr(&self) -> Option<SocketAddr> {
        self.taxii
            .as_ref()
            .map(crate::taxii::TaxiiServer::local_addr)
    }

    /// The address of the admin listener (metrics and console), when `[admin]` is
    /// configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(crate::console::ConsoleServer::local_addr)
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Re-reads the configuration file and puts its policy, partner list, trust anchors
    /// and CRLs in force (SIGHUP); connections that lost access are closed within a
    /// second. On error the previous configuration stays in force.
    pub fn reload_policy(&self) -> Result<Arc<crate::policy::Policy>, String> {
        self.reload.reload()
    }

    /// How many authenticated connections are open now.
    pub fn open_connections(&self) -> usize {
        self.reload.directory.connections()
    }

    /// The node's core (store, signing, policy-checked reads).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The address the node listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight calls finish for up to `deadline`, then cuts
    /// what remains and flushes the store.
    pub async fn shutdown(self, deadline: Duration) -> Result<(), NodeError> {
        let Node {
            id,
            shutdown,
            accept_task,
            mut serve_task,
            store,
            engine,
            pull_links,
            feed_loops,
            tasks,
            taxii,
            admin,
            ..
        } = self;
        shutdown.cancel();
        let _ = accept_task.await;
        if let Some(taxii) = taxii {
            taxii.join().await;
        }
        if let Some(admin) = admin {
            admin.join().await;
        }
        pull_links.join().await;
        feed_loops.join().await;
        for task in tasks {
            let _ = task.await;
        }
        let served = match tokio::time::timeout(deadline, &mut serve_task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(NodeError::Serve(join.to_string())),
            Err(_) => {
                serve_task.abort();
                let _ = serve_task.await;
                Err(NodeError::DeadlineExceeded(deadline))
            }
        };
        if let Err(error) = engine.sync_ledger().await {
            tracing::error!(%error, "disclosure ledger not complete at shutdown");
        }
        store.flush()?;
        tracing::info!(node = %id, "node stopped");
        served
    }
}

/// How often the store is flushed in the background.
const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Sets gRPC health for the node as a whole and for its Intel and Federation
/// services: `NOT_SERVING` while the store cannot write (a full disk), since writes
/// and deliveries are refused then.
async fn report_health(health: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <FederationServer<FederationService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health
        .set_service_status(
            <IntelServer<IntelService> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Flushes the store every [`FLUSH_EVERY`] until `shutdown`; a failure is logged
/// when it starts and when it ends, not every period. A store that cannot write
/// tries again at each flush (and goes on once it can: no restart needed); health
/// says `NOT_SERVING` meanwhile.
/// Compacts the bundle log every `every` (the first time `every` after start), on the
/// blocking pool; the store goes on serving meanwhile.
async fn compact_periodically(
    store: Arc<SledStore>,
    every: std::time::Duration,
    settings: crate::store::compact::Compaction,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.compact(settings)).await {
            Ok(Ok(done)) => tracing::info!(
                seconds = done.took.as_secs_f64(),
                writes_paused_ms = done.writes_paused.as_millis() as u64,
                bytes_before = done.bytes_before,
                bytes_after = done.bytes_after,
                records_before = done.records_before,
                records_kept = done.records_kept,
                expired_dropped = done.expired_dropped,
                generation = done.generation,
                "compacted the bundle log"
            ),
            Ok(Err(error)) => {
                tracing::error!(%error, "compaction of the bundle log failed; it is tried again next time")
            }
            Err(error) => tracing::error!(%error, "compaction of the bundle log stopped"),
        }
    }
}

async fn flush_periodically(
    engine: Arc<Engine>,
    health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    let mut serving = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match engine.flush().await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("store flushes again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::error!(%error, "store flush failed; pulled data is not durable");
            }
            Err(_) => {}
        }
        let writable = engine.store().writable().is_ok();
        if writable != serving {
            serving = writable;
            report_health(&health, serving).await;
        }
    }
}

/// Makes the data directory reachable by its owner only (mode 0700). The bundle log is
/// written owner-only, but sled's files and the ledger segments take the process's
/// umask; behind a directory only the node's user can enter, none of them can be read
/// by other local accounts, however the node was started.
fn owner_only(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::info!(dir = %dir.display(), was = format!("{:04o}", mode & 0o7777), "data directory made owner-only (0700)");
    }
    Ok(())
}
