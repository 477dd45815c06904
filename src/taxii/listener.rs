//! The TAXII listener: TCP accept, TLS 1.3 handshake (bounded in time and number),
//! the client certificate admitted through the node's [`Directory`] exactly as on the
//! gRPC listener, then HTTP/1.1. Each request is authenticated again against the
//! configuration in force when it arrives: a certificate through
//! [`Directory::authorize`], otherwise HTTP Basic credentials of a read-only client.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::Credentials;
use super::handlers::{Caller, Handlers, ReadAhead};
use crate::config::{Config, TaxiiSettings};
use crate::crypto::password::{MAX_PASSWORD_BYTES, verify_password};
use crate::engine::Engine;
use crate::limits::{Limits, Slot, Slots};
use crate::model::{NodeId, PartnerKind, Role};
use crate::transport::access::Registration;
use crate::transport::listener::describe_io_error;
use crate::transport::{ConnectionInfo, Directory, TlsError};

/// Why the TAXII listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum TaxiiError {
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No random key could be drawn for the listings' `next`.
    #[error("cannot draw a random key for TAXII page tokens")]
    Random,
    /// The address could not be bound.
    #[error("cannot listen on {addr} (taxii.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Longest a connection stays open; then it finishes its request and closes.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Time a connection asked to close has to finish its request.
const DRAIN: Duration = Duration::from_secs(70);
/// Connections served at once (with or without a certificate), handshakes apart.
const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (request line and headers), bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Password checks running at once (each costs about 19 MiB and tens of ms).
const PASSWORD_CHECKS: usize = 2;
/// Longest `Authorization` header read, bytes.
const MAX_AUTHORIZATION_BYTES: usize = 1024;
/// Connections without a certificate that have not passed Basic yet, at once (they
/// count among the `MAX_CONNECTIONS` too, so certificate holders keep the rest).
const MAX_UNAUTHENTICATED: usize = 32;
/// Of those, from one source address.
const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 4;

/// A running TAXII listener.
pub struct TaxiiServer {
    local_addr: SocketAddr,
    credentials: Arc<Credentials>,
    task: JoinHandle<()>,
}

/// What every connection shares.
struct Shared {
    handlers: Handlers,
    directory: Arc<Directory>,
    credentials: Arc<Credentials>,
    password_checks: Semaphore,
    /// `limits.connections_per_partner`, for certificate holders and Basic clients alike
    /// (a Basic connection takes its client's slot when its credentials first pass).
    per_partner: Arc<Slots<NodeId>>,
    /// Connections without a certificate not yet authenticated by Basic credentials.
    unauthenticated: Arc<Unauthenticated>,
    /// `limits.idle_connection_timeout`: a certificate connection with no request in
    /// progress for this long is closed, as on the gRPC listener.
    idle_timeout: std::time::Duration,
}

impl TaxiiServer {
    /// Binds `settings.listen` (of `config`, whose certificate, id and `[limits]` it
    /// uses) and serves until `shutdown` is cancelled. A client certificate is required
    /// unless Basic credentials are in force; `credentials` are those in force (a reload
    /// replaces them there, and may turn Basic on or off).
    pub async fn start(
        settings: &TaxiiSettings,
        config: &Config,
        directory: Arc<Directory>,
        engine: Arc<Engine>,
        credentials: Arc<Credentials>,
        shutdown: CancellationToken,
    ) -> Result<Self, TaxiiError> {
        // A certificate is optional at the handshake, so that a reload can turn HTTP
        // Basic on and off; while no Basic credentials are in force, a connection
        // without a certificate is closed as soon as its handshake ends.
        let server_tls = config.tls.https_server_config(directory.clone(), false)?;
        let listener =
            TcpListener::bind(settings.listen)
                .await
                .map_err(|source| TaxiiError::Bind {
                    addr: settings.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| TaxiiError::Bind {
            addr: settings.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            handlers: Handlers::new(engine, &config.node.id, settings.max_body_bytes)
                .map_err(|_| TaxiiError::Random)?,
            directory,
            credentials: credentials.clone(),
            password_checks: Semaphore::new(PASSWORD_CHECKS),
            per_partner: Arc::new(Slots::new(config.node.limits.connections_per_partner)),
            unauthenticated: Arc::default(),
            idle_timeout: config.node.limits.idle_connection_timeout,
        });
        let task = tokio::spawn(accept(
            listener,
            TlsAcceptor::from(server_tls),
            shared,
            config.node.limits.clone(),
            shutdown,
        ));
        tracing::info!(addr = %local_addr, basic = !settings.basic.is_empty(), "TAXII serving");
        Ok(Self {
            local_addr,
            credentials,
            task,
        })
    }

    /// The address served (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The Basic credentials in force, replaced at each reload.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.credentials
    }

    /// Waits for the accept loop to end (after the shutdown token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// A connection whose handshake completed, on its way to be served.
struct Established {
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote_addr: SocketAddr,
    info: Option<ConnectionInfo>,
    /// Keeps the connection in the directory (certificate connections only).
    registration: Option<Registration>,
    /// Its place under `limits.connections_per_partner` (certificate connections only).
    partner_slot: Option<Slot<NodeId>>,
    /// Its place among the connections not authenticated yet (connections without a
    /// certificate only).
    pending: Option<Pending>,
    /// Its place among the listener's connections.
    permit: tokio::sync::OwnedSemaphorePermit,
}

/// One connection without a certificate waiting to be authenticated by Basic
/// credentials.
struct Waiting {
    id: u64,
    source: IpAddr,
    /// A request has begun on it: it is not evicted.
    busy: bool,
    evict: CancellationToken,
}

/// The connections without a certificate that have not passed Basic yet: at most
/// `MAX_UNAUTHENTICATED`, `MAX_UNAUTHENTICATED_PER_SOURCE` from one address. When all
/// are taken, a new one takes the place of the oldest that has not begun a request.
#[derive(Default)]
struct Unauthenticated {
    waiting: std::sync::Mutex<(u64, std::collections::VecDeque<Waiting>)>,
}

impl Unauthenticated {
    /// A place for a connection from `source`, or `None` when its address holds the
    /// most already, or every place is taken by a connection with a request begun.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Pending> {
        let mut guard = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let (next, waiting) = &mut *guard;
        if waiting.iter().filter(|w| w.source == source).count() >= MAX_UNAUTHENTICATED_PER_SOURCE {
            return None;
        }
        if waiting.len() >= MAX_UNAUTHENTICATED {
            let oldest = waiting.iter().position(|w| !w.busy)?;
            if let Some(evicted) = waiting.remove(oldest) {
                evicted.evict.cancel();
                tracing::info!(addr = %evicted.source, "TAXII connection without a certificate closed before its first request: {MAX_UNAUTHENTICATED} such connections were open");
            }
        }
        *next += 1;
        let evict = CancellationToken::new();
        waiting.push_back(Waiting {
            id: *next,
            source,
            busy: false,
            evict: evict.clone(),
        });
        Some(Pending {
            pool: self.clone(),
            id: *next,
            evict,
        })
    }

    /// Places taken now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .len()
    }
}

/// A place among the unauthenticated connections, given back when dropped.
struct Pending {
    pool: Arc<Unauthenticated>,
    id: u64,
    /// Cancelled when a newer connection takes the place.
    evict: CancellationToken,
}

impl Pending {
    /// Marks a request begun, so the connection is no longer evicted; `false` if it
    /// was evicted already.
    fn begin(&self) -> bool {
        let mut guard = self.pool.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match guard.1.iter_mut().find(|w| w.id == self.id) {
            Some(waiting) => {
                waiting.busy = true;
                true
            }
            None => false,
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut guard = self.pool.waiting.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.retain(|w| w.id != self.id);
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    // The gRPC listener's `[limits]` for handshakes and connections per partner apply
    // here too, counted apart from it, and as there the oldest handshake in progress
    // gives way when every slot is taken.
    let handshake_permits = Arc::new(Semaphore::new(limits.handshakes));
    let per_source: Arc<Slots<IpAddr>> = Arc::new(Slots::new(limits.handshakes_per_source));
    let per_partner = shared.per_partner.clone();
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (established_tx, mut established_rx) = tokio::sync::mpsc::channel::<Established>(16);
    let mut handshakes = tokio::task::JoinSet::new();
    let mut in_progress: std::collections::VecDeque<tokio::task::AbortHandle> =
        std::collections::VecDeque::new();
    let mut served = tokio::task::JoinSet::new();
    'accept: loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(established) = established_rx.recv() => {
                served.spawn(serve_connection(established, shared.clone(), shutdown.clone()));
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        while handshakes.try_join_next().is_some() {}
        while served.try_join_next().is_some() {}
        let (tcp, remote_addr) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "TAXII accept failed");
                continue;
            }
        };
        // Over the per-source bound the connection is closed at once.
        let Some(source) = per_source.take(&remote_addr.ip()) else {
            crate::limits::count(crate::limits::Limit::HandshakesPerSource);
            continue;
        };
        let handshake = match handshake_permits.clone().try_acquire_owned() {
            Ok(handshake) => handshake,
            Err(_) => {
                crate::limits::count(crate::limits::Limit::Handshakes);
                in_progress.retain(|h| !h.is_finished());
                if let Some(oldest) = in_progress.pop_front() {
                    oldest.abort();
                }
                // Connections that finished their handshake meanwhile are served while
                // this one waits for a slot.
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'accept,
                        Some(established) = established_rx.recv() => {
                            served.spawn(serve_connection(established, shared.clone(), shutdown.clone()));
                        }
                        handshake = handshake_permits.clone().acquire_owned() => match handshake {
                            Ok(handshake) => break handshake,
                            Err(_) => break 'accept,
                        },
                    }
                }
            }
        };
        if in_progress.len() > 2 * limits.handshakes {
            in_progress.retain(|h| !h.is_finished());
        }
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let directory = shared.directory.clone();
        let credentials = shared.credentials.clone();
        let per_partner = per_partner.clone();
        let unauthenticated = shared.unauthenticated.clone();
        let connections = connections.clone();
        let established_tx = established_tx.clone();
        let handshake_timeout = limits.handshake_timeout;
        in_progress.push_back(handshakes.spawn(async move {
            let generation = directory.generation();
            let stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        let reason = describe_io_error(&error);
                        tracing::warn!(addr = %remote_addr, %reason, "TAXII TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        crate::limits::count(crate::limits::Limit::HandshakeTimeout);
                        tracing::warn!(addr = %remote_addr, "TAXII TLS handshake timed out");
                        return;
                    }
                };
            let chain: Option<Vec<_>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect());
            // A certificate is admitted as on the gRPC listener: registered, so a reload
            // or its expiry withdraws it and closes the connection.
            let (info, registration) = match chain {
                Some(chain) => match directory.admit(chain, remote_addr, generation) {
                    Ok((info, registration)) => (Some(info), Some(registration)),
                    Err(reason) => {
                        tracing::warn!(addr = %remote_addr, %reason, "TAXII connection refused");
                        return;
                    }
                },
                None => (None, None),
            };
            // Without a certificate, a connection is served only while Basic credentials
            // are in force (the configuration now, not at start).
            if info.is_none() && credentials.current().0.is_empty() {
                tracing::info!(addr = %remote_addr, "TAXII connection without a client certificate closed: no [[taxii.basic]] credentials are configured");
                return;
            }
            let partner_slot = match &info {
                Some(info) => match per_partner.take(&info.partner.id) {
                    Some(slot) => Some(slot),
                    None => {
                        crate::limits::count(crate::limits::Limit::ConnectionsPerPartner);
                        tracing::warn!(peer = %info.partner.id, "TAXII connection refused: limits.connections_per_partner");
                        return;
                    }
                },
                None => None,
            };
            // The handshake is over: its slots go back before the connection is handed on.
            drop(handshake);
            drop(source);
            let Ok(permit) = connections.try_acquire_owned() else {
                tracing::warn!(addr = %remote_addr, "TAXII connection refused: {MAX_CONNECTIONS} connections are open");
                return;
            };
            // Without a certificate, a connection is not authenticated until Basic
            // credentials pass on it: until then it holds one of a few places, so such
            // connections never take the places certificate holders need.
            let pending = match &info {
                Some(_) => None,
                None => match unauthenticated.admit(remote_addr.ip()) {
                    Some(pending) => Some(pending),
                    None => {
                        tracing::warn!(addr = %remote_addr, "TAXII connection without a certificate refused: {MAX_UNAUTHENTICATED} such connections, or {MAX_UNAUTHENTICATED_PER_SOURCE} from its address, are open");
                        return;
                    }
                },
            };
            let _ = established_tx
                .send(Established {
                    stream,
                    remote_addr,
                    info,
                    registration,
                    partner_slot,
                    pending,
                    permit,
                })
                .await;
        }));
    }
    handshakes.shutdown().await;
    served.shutdown().await;
}

/// Serves HTTP/1.1 on one connection until the client closes it, its access is
/// withdrawn, or its lifetime ends.
async fn serve_connection(
    established: Established,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let Established {
        stream,
        remote_addr,
        info,
        registration,
        partner_slot,
        pending,
        permit,
    } = established;
    let _held = (partner_slot, permit);
    let idle_timeout = shared.idle_timeout;
    let evicted = pending.as_ref().map(|p| p.evict.clone());
    // Requests in progress on a connection without a certificate: one with none for
    // `limits.idle_connection_timeout` is closed, as a certificate connection is, so
    // that a Basic client's place under `limits.connections_per_partner` comes back.
    let calls = Arc::new(tokio::sync::watch::channel(0usize).0);
    let closing = {
        let calls = calls.clone();
        async move {
            match (&registration, evicted) {
                (Some(registration), _) => {
                    tokio::spawn(registration.watchdog(idle_timeout));
                    registration.closing().await;
                }
                (None, Some(evicted)) => {
                    tokio::select! {
                        _ = evicted.cancelled_owned() => {}
                        _ = idle_for(&calls, idle_timeout) => {
                            crate::limits::count(crate::limits::Limit::IdleConnectionTimeout);
                            tracing::info!(addr = %remote_addr, timeout_s = idle_timeout.as_secs_f64(), "TAXII connection without a certificate closed: no request in progress for limits.idle_connection_timeout");
                        }
                    }
                }
                (None, None) => std::future::pending::<()>().await,
            }
        }
    };
    let connection = Arc::new(Connection {
        info,
        remote_addr,
        basic: std::sync::Mutex::new(None),
        pending: std::sync::Mutex::new(pending),
        basic_slot: std::sync::Mutex::new(None),
        read_ahead: Arc::default(),
    });
    let service = hyper::service::service_fn(move |request| {
        let shared = shared.clone();
        let connection = connection.clone();
        let calls = calls.clone();
        async move {
            // A request is a call in progress (`limits.idle_connection_timeout`) until its
            // answer, which is built whole, is handed over.
            let _call = connection.info.as_ref().map(|info| info.call_begun());
            let _basic_call = connection
                .info
                .is_none()
                .then(|| RequestInProgress::begin(&calls));
            Ok::<_, std::convert::Infallible>(serve(&shared, &connection, request).await)
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    tokio::pin!(closing);
    // A connection lives at most CONNECTION_LIFETIME: then (or at shutdown) it finishes
    // the request in progress, for at most DRAIN, and closes. A withdrawal closes it at
    // once.
    let lifetime = tokio::time::sleep(CONNECTION_LIFETIME);
    tokio::pin!(lifetime);
    let mut draining = false;
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(addr = %remote_addr, %error, "TAXII connection ended");
                }
                break;
            }
            _ = closing.as_mut() => {
                tracing::info!(addr = %remote_addr, "TAXII connection closed: access withdrawn, idle, or a newer connection without a certificate took its place");
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                served.as_mut().graceful_shutdown();
                lifetime.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = lifetime.as_mut() => {
                if draining {
                    break;
                }
                draining = true;
                served.as_mut().graceful_shutdown();
                lifetime.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
        }
    }
    // `registration` is dropped after this: the connection leaves the directory.
}

/// A request in progress on a connection without a certificate, counted in `calls`
/// until dropped.
struct RequestInProgress(Arc<tokio::sync::watch::Sender<usize>>);

impl RequestInProgress {
    fn begin(calls: &Arc<tokio::sync::watch::Sender<usize>>) -> Self {
        calls.send_modify(|open| *open += 1);
        Self(calls.clone())
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// Returns once `calls` has stayed at zero for `timeout`.
async fn idle_for(calls: &tokio::sync::watch::Sender<usize>, timeout: std::time::Duration) {
    let mut open = calls.subscribe();
    loop {
        // The sender outlives this wait: it is borrowed.
        if open.wait_for(|open| *open == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(timeout) => return,
            // A request began (and may have ended already): start over.
            _ = open.changed() => {}
        }
    }
}

/// One connection: its certificate identity, if it presented one, and the last Basic
/// credentials that passed on it.
struct Connection {
    info: Option<ConnectionInfo>,
    remote_addr: SocketAddr,
    /// SHA-256 of the last `Authorization` header that passed, the client it named and
    /// the credentials generation it passed under: the same header again on this
    /// connection is not hashed again until the credentials change.
    basic: std::sync::Mutex<Option<([u8; 32], NodeId, u64)>>,
    /// Its place among the unauthenticated connections, until Basic credentials first
    /// pass on it (connections without a certificate only).
    pending: std::sync::Mutex<Option<Pending>>,
    /// The Basic client's place under `limits.connections_per_partner`, taken when its
    /// credentials first pass on this connection.
    basic_slot: std::sync::Mutex<Option<(NodeId, Slot<NodeId>)>>,
    /// The next listing page, made while the client reads the one before.
    read_ahead: Arc<ReadAhead>,
}

async fn serve(
    shared: &Shared,
    connection: &Connection,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if let Some(pending) = &*connection.pending.lock().unwrap_or_else(|p| p.into_inner()) {
        if !pending.begin() {
            return closing(super::handlers::unauthorized());
        }
    }
    let caller = match authenticate(shared, connection, &request).await {
        Ok(caller) => caller,
        Err(response) => {
            tracing::info!(addr = %connection.remote_addr, %method, path = %shown(&path), status = response.status().as_u16(), "TAXII request refused");
            // A refused caller keeps no connection open: it must make a new one (a
            // handshake, under the handshake limits) to try again.
            return closing(response);
        }
    };
    let response = shared.handlers.handle(&caller, request).await;
    tracing::info!(peer = %caller.partner.id, addr = %connection.remote_addr, %method, path = %shown(&path), status = response.status().as_u16(), "TAXII request");
    response
}

/// `response` with `Connection: close`: the connection closes once it is sent.
fn closing(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// The start of a path, for logs.
fn shown(path: &str) -> String {
    path.chars().take(200).collect()
}

/// The caller of a request, as configured now: the connection's certificate
/// (authorised again against the directory in force) or, without one, HTTP Basic
/// credentials in force of a client configured now with role `read_only`. Anything
/// else is 401 without detail.
async fn authenticate(
    shared: &Shared,
    connection: &Connection,
    request: &Request<Incoming>,
) -> Result<Caller, Response<Full<Bytes>>> {
    if let Some(info) = &connection.info {
        return match shared.directory.authorize(info) {
            Ok(partner) => Ok(Caller {
                partner,
                basic: false,
                read_ahead: Some(connection.read_ahead.clone()),
                access: Some(info.clone()),
            }),
            Err(withdrawal) => {
                tracing::info!(peer = %info.partner.id, reason = %withdrawal.reason, "TAXII request from a connection whose access was withdrawn");
                Err(super::handlers::unauthorized())
            }
        };
    }
    let header = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes)
        .filter(|h| h.len() <= MAX_AUTHORIZATION_BYTES)
        .ok_or_else(super::handlers::unauthorized)?;
    let (user, password) = basic_credentials(header).ok_or_else(super::handlers::unauthorized)?;
    let (entries, generation) = shared.credentials.current();
    // Basic was turned off by a reload: nothing to check a password against.
    if entries.is_empty() {
        return Err(super::handlers::unauthorized());
    }
    let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, header)
        .as_ref()
        .try_into()
        .unwrap_or([0; 32]);
    let remembered = connection
        .basic
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let client = match remembered {
        Some((seen, client, at)) if at == generation && seen == digest => Some(client),
        _ => {
            let entry = entries.iter().find(|e| e.client.as_str() == user);
            // An unknown name is checked against a decoy as costly as the costliest
            // configured hash, so it takes as long to refuse as a wrong password.
            let hash = entry.map_or_else(
                || shared.credentials.decoy().to_string(),
                |e| e.password_hash.clone(),
            );
            let permit = shared
                .password_checks
                .acquire()
                .await
                .map_err(|_| super::handlers::unauthorized())?;
            let matched = tokio::task::spawn_blocking(move || verify_password(&hash, &password))
                .await
                .unwrap_or(false);
            drop(permit);
            match (matched, entry) {
                (true, Some(entry)) => {
                    *connection.basic.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((digest, entry.client.clone(), generation));
                    Some(entry.client.clone())
                }
                _ => None,
            }
        }
    };
    let Some(client) = client else {
        tracing::info!(addr = %connection.remote_addr, "TAXII Basic credentials refused");
        return Err(super::handlers::unauthorized());
    };
    // A client whose certificate a CRL in force revokes is cut off, password or not.
    if shared.directory.revoked_since_seen(&client) {
        tracing::info!(peer = %client, "TAXII Basic credentials refused: a certificate of this client is revoked");
        return Err(super::handlers::unauthorized());
    }
    // The client must still be configured, and read-only, now.
    match shared.directory.lookup(&client) {
        Some(partner) if partner.kind == PartnerKind::Client && partner.role == Role::ReadOnly => {
            // The connection counts against the client's `connections_per_partner`
            // from its first request that passes, and leaves the unauthenticated ones.
            let mut slot = connection
                .basic_slot
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if slot.as_ref().is_none_or(|(held, _)| *held != client) {
                let Some(taken) = shared.per_partner.take(&client) else {
                    crate::limits::count(crate::limits::Limit::ConnectionsPerPartner);
                    tracing::warn!(peer = %client, "TAXII Basic connection refused: limits.connections_per_partner");
                    return Err(super::handlers::error(
                        http::StatusCode::TOO_MANY_REQUESTS,
                        "Too Many Requests",
                        "this client has limits.connections_per_partner connections open already",
                    ));
                };
                *slot = Some((client.clone(), taken));
            }
            drop(slot);
            connection
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            Ok(Caller {
                partner,
                basic: true,
                read_ahead: Some(connection.read_ahead.clone()),
                access: None,
            })
        }
        _ => Err(super::handlers::unauthorized()),
    }
}

/// The user name and password of a `Basic` authorization header.
pub(crate) fn basic_credentials(header: &[u8]) -> Option<(String, Vec<u8>)> {
    let header = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let at = decoded.iter().position(|b| *b == b':')?;
    let (user, password) = (&decoded[..at], &decoded[at + 1..]);
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return None;
    }
    Some((String::from_utf8(user.to_vec()).ok()?, password.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_connections_are_bounded_and_the_oldest_idle_gives_way() {
        let pool = Arc::new(Unauthenticated::default());
        let address = |n: usize| IpAddr::from([127, 0, 3, n as u8]);
        // 4 per address.
        let mine: Vec<Pending> = (0..4).map(|_| pool.admit(address(0)).unwrap()).collect();
        assert!(pool.admit(address(0)).is_none());
        // 32 in all; the first has begun a request, so it is not evicted.
        assert!(mine[0].begin());
        let mut others: Vec<Pending> = (0..28)
            .map(|n| pool.admit(address(1 + n / 4)).unwrap())
            .collect();
        assert_eq!(pool.len(), MAX_UNAUTHENTICATED);
        let newest = pool.admit(address(100)).unwrap();
        assert_eq!(pool.len(), MAX_UNAUTHENTICATED);
        assert!(!mine[0].evict.is_cancelled());
        assert!(mine[1].evict.is_cancelled());
        assert!(!mine[1].begin());
        // A place given back (authenticated or closed) is free again.
        others.pop();
        drop(newest);
        assert_eq!(pool.len(), MAX_UNAUTHENTICATED - 2);
        // Every place busy: a new connection is refused.
        drop(mine);
        let busy: Vec<Pending> = (0..MAX_UNAUTHENTICATED - others.len())
            .map(|n| pool.admit(address(200 + n)).unwrap())
            .collect();
        for pending in others.iter().chain(&busy) {
            assert!(pending.begin());
        }
        assert!(pool.admit(address(250)).is_none());
    }

    #[test]
    fn reads_basic_headers() {
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("siem.soc:pass:word")
        );
        assert_eq!(
            basic_credentials(header.as_bytes()),
            Some(("siem.soc".into(), b"pass:word".to_vec()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        let empty = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("siem.soc:")
        );
        assert_eq!(basic_credentials(empty.as_bytes()), None);
    }
}
