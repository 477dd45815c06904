//! The operator's admin listener (`[admin]`): `GET /metrics` in the Prometheus
//! (OpenMetrics) text format and a read-only web console, both over plain HTTP on a
//! loopback address. Owns the listener, its routes and the gathering of what they show;
//! the values come from where they live (the engine and store, the pull links' state,
//! `telemetry`, the limit counters, the certificate files), and every sharing decision
//! shown is the engine's (`Engine::explain`). Must not change anything: no route takes a
//! request body or writes configuration, items or cursors, and it shows nothing the
//! operator cannot already read with `entente status`, `ledger show` and `policy
//! explain`. Every text it renders is escaped ([`html::escape`]).

pub mod certificates;
pub mod html;
pub mod metrics;
pub mod pages;
pub mod timing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, now_ms};
use crate::model::{ItemId, NodeId, Partner, PartnerKind, Role};
use crate::store::{ItemQuery, StoredItem};
use crate::sync::LinkState;
use crate::telemetry::{Rejection, ServedPosition, telemetry};
use crate::transport::TlsPaths;
use certificates::CertificateExpiry;

/// Longest request target (path and query) accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 4096;
/// Longest value a ledger lookup accepts, in bytes.
pub const MAX_LOOKUP_VALUE_BYTES: usize = 2048;
/// Most ledger records one lookup reads (a lookup reads the ledger from its start).
pub const MAX_LEDGER_SCAN: u64 = 200_000;
/// Most deliveries one lookup lists.
pub const MAX_LOOKUP_DELIVERIES: usize = 1000;
/// Most items a value lookup follows.
const MAX_LOOKUP_ITEMS: usize = 100;
/// Most item versions (records held) one lookup matches the ledger against.
pub const MAX_LOOKUP_VERSIONS: usize = 1000;
/// Ledger records read per store call.
const LEDGER_PAGE: usize = 500;
/// Connections the admin listener holds open at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a request's head.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest request head (request line and headers), bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time open connections have to finish at shutdown, or when their lifetime is over.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest time one connection is served: a client that sends requests and never reads
/// the answers leaves the connection waiting to write, which no head timeout covers.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);
/// Requests the admin listener serves at once; more are answered 503 at once (each may
/// read the store or the ledger on a blocking thread).
pub const MAX_REQUESTS_IN_FLIGHT: usize = 8;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What the console reads: the node's engine, its pull links, and the files of its TLS
/// material (for certificate expiry).
pub struct Sources {
    /// The node's id.
    pub node: NodeId,
    /// The node's core.
    pub engine: Arc<Engine>,
    /// The pull links' state.
    pub links: crate::sync::Links,
    /// The partner directory (the certificates of connected partners).
    pub directory: Arc<crate::transport::Directory>,
    /// The certificate and trust-anchor files (`node.cert`, `node.trust_anchors`).
    pub tls: TlsPaths,
}

struct Console {
    sources: Sources,
    /// A random value drawn at start and carried by the explain form: an explain,
    /// which writes a ledger record, is made only when the request carries it, so a
    /// page elsewhere cannot have the operator's browser make one.
    form_token: String,
    /// The highest ledger sequence number seen so far (the ledger's record count, read
    /// on from here at each look).
    ledger_seen: Mutex<u64>,
}

/// A running admin listener.
pub struct ConsoleServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ConsoleServer {
    /// Binds `listen` and serves until `shutdown`.
    pub async fn start(
        listen: SocketAddr,
        sources: Sources,
        shutdown: CancellationToken,
    ) -> Result<Self, ConsoleError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| ConsoleError::Bind {
                addr: listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| ConsoleError::Bind {
            addr: listen,
            source,
        })?;
        let state = Arc::new(Console {
            sources,
            form_token: form_token(),
            ledger_seen: Mutex::new(0),
        });
        let app = router(
            state,
            Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
        );
        let task = tokio::spawn(accept(listener, app, shutdown));
        tracing::info!(addr = %local_addr, "admin listener serving metrics and console");
        Ok(Self { local_addr, task })
    }

    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits for the listener to stop (after the node's shutdown token is cancelled).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Accepts connections (at most [`MAX_CONNECTIONS`] at once) and serves HTTP/1.1 on
/// each, with a bounded head and a deadline for it, for at most [`CONNECTION_LIFETIME`],
/// until `shutdown`; then lets the open connections finish for [`DRAIN`].
async fn accept(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, remote_addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin listener: accept failed");
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let mut app = app.clone();
                // A Router is always ready and never fails.
                async move { tower::Service::call(&mut app, request).await }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES);
            let served = builder.serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            tokio::pin!(served);
            tokio::select! {
                result = served.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(addr = %remote_addr, %error, "admin connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, served).await;
                }
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    // The request in progress may finish; then the connection is closed.
                    served.as_mut().graceful_shutdown();
                    if tokio::time::timeout(DRAIN, served).await.is_err() {
                        tracing::debug!(addr = %remote_addr, "admin connection cut at its lifetime");
                    }
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

fn router(state: Arc<Console>, in_flight: Arc<tokio::sync::Semaphore>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/", get(overview_page))
        .route("/ledger", get(ledger_page))
        .route("/explain", get(explain_page))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(guard))
        .layer(axum::middleware::from_fn(
            move |request: Request, next: Next| {
                let in_flight = in_flight.clone();
                async move {
                    // Held until the answer is built.
                    let Ok(_permit) = in_flight.try_acquire_owned() else {
                        return error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the console is busy with other requests; try again",
                        );
                    };
                    next.run(request).await
                }
            },
        ))
        // Outermost, so that every answer carries them, refusals included.
        .layer(axum::middleware::from_fn(protective_headers))
        .with_state(state)
}

/// A random token for the explain form (128 bits, hex).
fn form_token() -> String {
    let bytes: [u8; 16] = rand::random();
    crate::util::hex(&bytes)
}

/// Adds to every answer the headers that keep a browser from running or framing
/// anything of it, from sniffing its type, and from keeping or passing it on.
async fn protective_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Refuses what the console never serves before any handler runs: a request target
/// over [`MAX_TARGET_BYTES`], a method other than GET or HEAD, a request with a body,
/// a `Host` that is not one loopback name (a web page the operator visits could
/// otherwise read the console through a DNS name rebound to 127.0.0.1), and a request
/// a browser says another site made ([`cross_site`]).
async fn guard(request: Request, next: Next) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > MAX_TARGET_BYTES {
        return error_response(StatusCode::URI_TOO_LONG, "the request target is too long");
    }
    if request.method() != axum::http::Method::GET && request.method() != axum::http::Method::HEAD {
        return error_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console is read-only: only GET and HEAD",
        );
    }
    let has_body = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || request.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return error_response(StatusCode::BAD_REQUEST, "the console takes no request body");
    }
    // One Host header, naming a loopback host; an absolute-form target names one too.
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().unwrap_or(""),
        _ => "",
    };
    let authority_ok = request
        .uri()
        .authority()
        .is_none_or(|a| is_loopback_host(a.as_str()));
    if !is_loopback_host(host) || !authority_ok {
        return error_response(
            StatusCode::MISDIRECTED_REQUEST,
            "the console answers only requests for a loopback host (127.0.0.1, [::1] or localhost)",
        );
    }
    if let Some(refusal) = cross_site(request.headers()) {
        return error_response(StatusCode::FORBIDDEN, refusal);
    }
    next.run(request).await
}

/// Why a request made by a browser for a page of another site is refused, if it is one:
/// the fetch metadata a browser sends (`Sec-Fetch-Site`) must say the request comes from
/// the console itself or from the address bar, and an `Origin`, when sent, must be a
/// loopback one. A page elsewhere cannot read the answer anyway; this keeps it from
/// spending the node's time on ledger lookups.
fn cross_site(headers: &axum::http::HeaderMap) -> Option<&'static str> {
    const REFUSAL: &str = "the console answers requests from its own pages and the address bar only, not from other sites";
    let mut sites = headers.get_all("sec-fetch-site").iter();
    match (sites.next(), sites.next()) {
        (None, _) => {}
        (Some(site), None)
            if site.as_bytes().eq_ignore_ascii_case(b"same-origin")
                || site.as_bytes().eq_ignore_ascii_case(b"none") => {}
        _ => return Some(REFUSAL),
    }
    for origin in headers.get_all(header::ORIGIN) {
        let loopback = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(is_loopback_host);
        if !loopback {
            return Some(REFUSAL);
        }
    }
    None
}

/// Whether `host` (a `Host` header: name or address, optional port) names this host's
/// loopback interface.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, _)) => name,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn error_response(status: StatusCode, message: &str) -> Response {
    (status, html_headers(), pages::error(status, message)).into_response()
}

fn html_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "text/html; charset=utf-8")]
}

async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "no such page")
}

/// Everything the overview and the metrics show, read at one moment.
pub struct Snapshot {
    /// The node's id.
    pub node: String,
    /// When it was read, ms since the epoch.
    pub now_ms: i64,
    /// The policy hash in force, hex.
    pub policy_hash: String,
    /// The configured partners, by id.
    pub partners: Vec<PartnerRow>,
    /// The pull links, by peer.
    pub links: BTreeMap<NodeId, LinkState>,
    /// Each partner's position in this node's feed.
    pub served: BTreeMap<String, ServedPosition>,
    /// This node's feed head.
    pub feed_head: u64,
    /// Bytes the store takes on disk.
    pub store_bytes: u64,
    /// Records in the disclosure ledger.
    pub ledger_records: u64,
    /// How the ledger's retention stands.
    pub retention: crate::store::RetentionState,
    /// The limits in force.
    pub limits: crate::limits::Limits,
    /// The certificates and their expiry.
    pub certificates: Vec<CertificateExpiry>,
    /// The most recent rejections, newest first.
    pub rejections: Vec<Rejection>,
}

/// A configured partner as the overview lists it.
pub struct PartnerRow {
    /// Its id.
    pub id: String,
    /// `node` or `client`.
    pub kind: &'static str,
    /// Its role.
    pub role: &'static str,
    /// The highest marking it receives (`none` when it receives nothing).
    pub max_tlp: String,
    /// Whether it may receive anything at all.
    pub receives: bool,
}

impl Console {
    /// Reads a [`Snapshot`] (blocking: it reads the store and certificate files).
    fn snapshot(&self) -> Snapshot {
        let engine = &self.sources.engine;
        let policy = engine.policy();
        let mut partners: Vec<PartnerRow> = policy
            .partners()
            .map(|p| PartnerRow {
                id: p.id.to_string(),
                kind: match p.kind {
                    PartnerKind::Node => "node",
                    PartnerKind::Client => "client",
                    PartnerKind::Local => "local",
                },
                role: p.role.as_str(),
                max_tlp: p
                    .max_tlp
                    .map_or_else(|| "none".to_owned(), |t| t.as_str().to_owned()),
                receives: p.receives_anything(),
            })
            .collect();
        partners.sort_by(|a, b| a.id.cmp(&b.id));
        let store = engine.store();
        let store_bytes = store.size_on_disk().unwrap_or_else(|error| {
            tracing::warn!(%error, "admin listener: store size unknown");
            0
        });
        // Partners no longer configured are left out.
        let served = telemetry()
            .served_positions()
            .into_iter()
            .filter(|(id, _)| partners.iter().any(|p| p.id == *id))
            .collect();
        Snapshot {
            node: self.sources.node.to_string(),
            now_ms: now_ms(),
            policy_hash: crate::util::hex(&policy.hash()),
            partners,
            links: self
                .sources
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            served,
            feed_head: store.feed_head(),
            store_bytes,
            ledger_records: self.ledger_records(),
            retention: store.retention(),
            limits: engine.limits().clone(),
            certificates: certificates::read(
                &self.sources.tls,
                self.sources.node.as_str(),
                &self.sources.directory.watched_certificates(),
            ),
            rejections: telemetry().recent_rejections(),
        }
    }

    /// The ledger's record count: its last sequence number, read on from the last one
    /// seen (at most [`MAX_LEDGER_SCAN`] records per look, so a long ledger is counted
    /// over a few looks after a start).
    fn ledger_records(&self) -> u64 {
        let mut seen = self.ledger_seen.lock().unwrap_or_else(|p| p.into_inner());
        let store = self.sources.engine.store();
        let mut read = 0u64;
        while read < MAX_LEDGER_SCAN {
            match store.ledger(*seen, LEDGER_PAGE, None, None) {
                Ok(page) => {
                    let Some(last) = page.last() else { break };
                    read += page.len() as u64;
                    *seen = last.seq;
                    if page.len() < LEDGER_PAGE {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "admin listener: ledger not readable");
                    break;
                }
            }
        }
        *seen
    }
}

async fn snapshot(state: &Arc<Console>) -> Result<Snapshot, Response> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || state.snapshot())
        .await
        .map_err(|_| {
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the node's state failed",
            )
        })
}

async fn metrics_page(State(state): State<Arc<Console>>) -> Response {
    let snapshot = match snapshot(&state).await {
        Ok(s) => s,
        Err(response) => return response,
    };
    match metrics::render(&snapshot) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(_) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed"),
    }
}

async fn overview_page(State(state): State<Arc<Console>>) -> Response {
    match snapshot(&state).await {
        Ok(s) => (html_headers(), pages::overview(&s)).into_response(),
        Err(response) => response,
    }
}

/// The query of `GET /ledger`: an item id or an indicator value (one of them).
#[derive(serde::Deserialize, Default)]
pub struct LedgerQuery {
    /// An item id.
    #[serde(default)]
    pub item: String,
    /// An indicator value.
    #[serde(default)]
    pub value: String,
}

/// One delivery of an item, from the ledger.
pub struct Delivery {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// To whom.
    pub partner: String,
    /// Through which path (`pull`, `query`, …).
    pub path: String,
    /// The item delivered.
    pub item: String,
    /// The version delivered: its modified time, ms since the epoch.
    pub modified_ms: i64,
    /// Its bundle.
    pub bundle: String,
    /// Its index there.
    pub index: u32,
}

/// The answer to a ledger lookup.
pub struct Lookup {
    /// The items the lookup found, as held now (the latest version of each).
    pub items: Vec<StoredItem>,
    /// The versions whose deliveries were looked for: every record held of the item, or
    /// of an indicator with the value, replaced and revoked versions included, and a
    /// revocation that carries the value (a version a compaction removed is not held,
    /// and cannot be matched).
    pub versions: Vec<StoredItem>,
    /// Whether every version held was searched (else the first
    /// [`MAX_LOOKUP_VERSIONS`]).
    pub versions_complete: bool,
    /// Their deliveries, oldest first.
    pub deliveries: Vec<Delivery>,
    /// Ledger records read.
    pub scanned: u64,
    /// Whether the whole ledger was read (else the first [`MAX_LEDGER_SCAN`] records,
    /// or the first [`MAX_LOOKUP_DELIVERIES`] deliveries, were).
    pub complete: bool,
}

async fn ledger_page(
    State(state): State<Arc<Console>>,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(StatusCode::BAD_REQUEST, "the query string is malformed");
    };
    let item = query.item.trim().to_owned();
    let value = query.value.trim().to_owned();
    if item.is_empty() && value.is_empty() {
        return (
            html_headers(),
            pages::ledger(state.sources.node.as_str(), &query, None, None),
        )
            .into_response();
    }
    if value.len() > MAX_LOOKUP_VALUE_BYTES {
        return (
            StatusCode::BAD_REQUEST,
            html_headers(),
            pages::ledger(
                state.sources.node.as_str(),
                &query,
                None,
                Some("the value is too long"),
            ),
        )
            .into_response();
    }
    let id = if item.is_empty() {
        None
    } else {
        match ItemId::parse(&item) {
            Ok(id) => Some(id),
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    html_headers(),
                    pages::ledger(
                        state.sources.node.as_str(),
                        &query,
                        None,
                        Some(&format!("item: {e}")),
                    ),
                )
                    .into_response();
            }
        }
    };
    let engine = state.sources.engine.clone();
    if let Err(error) = engine.sync_ledger().await {
        tracing::warn!(%error, "admin listener: ledger not complete");
    }
    let looked_up = tokio::task::spawn_blocking(move || lookup(&engine, id.as_ref(), &value))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match looked_up {
        Ok(found) => (
            html_headers(),
            pages::ledger(state.sources.node.as_str(), &query, Some(&found), None),
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "admin listener: ledger lookup failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                html_headers(),
                pages::ledger(
                    state.sources.node.as_str(),
                    &query,
                    None,
                    Some("the lookup failed; see the node's log"),
                ),
            )
                .into_response()
        }
    }
}

/// Who received the item `id`, or the items holding `value`: the items as held, every
/// version held of them (a delivery names the version it carried: its bundle and
/// index), then every ledger delivery of those versions (reads the ledger from its
/// start, within bounds).
fn lookup(
    engine: &Engine,
    id: Option<&ItemId>,
    value: &str,
) -> Result<Lookup, crate::store::StoreError> {
    let store = engine.store();
    let mut items: Vec<StoredItem> = Vec::new();
    let mut versions: Vec<StoredItem> = Vec::new();
    let mut versions_complete = true;
    let mut bounded = |mut held: Vec<StoredItem>| {
        if held.len() > MAX_LOOKUP_VERSIONS {
            held.truncate(MAX_LOOKUP_VERSIONS);
            versions_complete = false;
        }
        held
    };
    if let Some(id) = id {
        items.extend(store.get(id)?);
        versions.extend(bounded(store.records_of(id, MAX_LOOKUP_VERSIONS + 1)?));
    }
    if !value.is_empty() {
        let query = ItemQuery {
            value: Some(value.to_owned()),
            include_expired: true,
            ..ItemQuery::default()
        };
        let mut after: Option<Vec<u8>> = None;
        // The operator sees every item (as `policy explain` and `ledger show` do).
        for _ in 0..16 {
            let page = store.query(
                &query,
                after.as_deref(),
                crate::store::PageLimit::items(MAX_LOOKUP_ITEMS),
                now_ms(),
                &|_| true,
            )?;
            items.extend(page.items);
            match page.next {
                Some(next) if items.len() < MAX_LOOKUP_ITEMS => after = Some(next),
                _ => break,
            }
        }
        items.truncate(MAX_LOOKUP_ITEMS);
        // A query gives the latest versions that still hold the value; the versions
        // replaced since (by a revocation, or by a version with another value) are
        // found on the value's own records.
        // What the query found: the value itself, or a STIX pattern naming it.
        versions.extend(items.iter().cloned());
        let held = bounded(store.records_with_value(value, MAX_LOOKUP_VERSIONS + 1)?);
        for record in &held {
            if items.len() >= MAX_LOOKUP_ITEMS {
                break;
            }
            if items.iter().any(|i| i.item.id == record.item.id) {
                continue;
            }
            let Some(latest) = store.get(&record.item.id)? else {
                continue;
            };
            // A revocation carries the indicator it revokes: when that holds the value,
            // its deliveries disclosed it too.
            let carries = match &latest.item.kind {
                crate::model::ItemKind::Revocation(r) => r
                    .indicator
                    .as_ref()
                    .is_some_and(|i| Some(i.value.as_str()) == record.item.value()),
                _ => false,
            };
            if carries {
                versions.push(latest.clone());
            }
            items.push(latest);
        }
        versions.extend(held);
    }
    // One entry per (bundle, index): a record written again is the same version.
    let mut seen = std::collections::HashSet::new();
    versions.retain(|v| seen.insert((v.bundle_id.clone(), v.index)));
    let wanted: std::collections::HashMap<(String, u32), (String, i64)> = versions
        .iter()
        .map(|s| {
            (
                (s.bundle_id.to_string(), s.index),
                (s.item.id.to_string(), s.item.modified_ms),
            )
        })
        .collect();
    let mut deliveries = Vec::new();
    let mut scanned = 0u64;
    let mut after = 0u64;
    let mut complete = true;
    if !wanted.is_empty() {
        loop {
            if scanned >= MAX_LEDGER_SCAN || deliveries.len() >= MAX_LOOKUP_DELIVERIES {
                complete = false;
                break;
            }
            let page = store.ledger(after, LEDGER_PAGE, None, None)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            scanned += page.len() as u64;
            for record in page {
                for (bundle, indices) in &record.entry.deliveries {
                    let bundle = bundle.to_string();
                    for index in indices {
                        if let Some((item, modified_ms)) = wanted.get(&(bundle.clone(), *index)) {
                            deliveries.push(Delivery {
                                time_ms: record.entry.time_ms,
                                partner: record.entry.partner.to_string(),
                                path: record.entry.path.clone(),
                                item: item.clone(),
                                modified_ms: *modified_ms,
                                bundle: bundle.clone(),
                                index: *index,
                            });
                        }
                    }
                }
            }
        }
    }
    deliveries.truncate(MAX_LOOKUP_DELIVERIES);
    Ok(Lookup {
        items,
        versions,
        versions_complete,
        deliveries,
        scanned,
        complete,
    })
}

/// The query of `GET /explain`: a partner and an item id.
#[derive(serde::Deserialize, Default)]
pub struct ExplainQuery {
    /// The partner to decide for.
    #[serde(default)]
    pub partner: String,
    /// The item.
    #[serde(default)]
    pub item: String,
    /// The token the console's explain form carries (drawn at start; an explain is made
    /// only with it).
    #[serde(default)]
    pub confirm: String,
}

/// The answer to an explain form.
pub struct Explained {
    /// The item as held.
    pub stored: StoredItem,
    /// Whether the partner would receive it.
    pub allowed: bool,
    /// The rule that decided, in words.
    pub rule: String,
}

async fn explain_page(
    State(state): State<Arc<Console>>,
    query: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error_response(StatusCode::BAD_REQUEST, "the query string is malformed");
    };
    let partners: Vec<String> = {
        let mut ids: Vec<String> = state
            .sources
            .engine
            .policy()
            .partners()
            .map(|p| p.id.to_string())
            .collect();
        ids.sort();
        ids
    };
    let token = state.form_token.as_str();
    if query.partner.is_empty() && query.item.is_empty() {
        return (
            html_headers(),
            pages::explain(state.sources.node.as_str(), &query, &partners, token, None),
        )
            .into_response();
    }
    // An explain is recorded in the ledger: it is made only from the console's own form,
    // never from a link or an image another page made the browser request. The form is
    // shown filled in, to be sent from here.
    if !tokens_match(query.confirm.as_bytes(), token.as_bytes()) {
        return (
            html_headers(),
            pages::explain(
                state.sources.node.as_str(),
                &query,
                &partners,
                token,
                Some(&Err(
                    "not asked from this console's form: check the partner and item, then press Explain"
                        .to_owned(),
                )),
            ),
        )
            .into_response();
    }
    let answer = explain(&state, &query).await;
    let status = match &answer {
        Ok(_) => StatusCode::OK,
        Err((status, _)) => *status,
    };
    let answer = answer.map_err(|(_, message)| message);
    (
        status,
        html_headers(),
        pages::explain(
            state.sources.node.as_str(),
            &query,
            &partners,
            token,
            Some(&answer),
        ),
    )
        .into_response()
}

/// Whether `given` is `expected`, in a time that does not depend on where they differ.
fn tokens_match(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// What `Admin.Explain` answers the node's operator: the decision for the partner, by
/// the engine (which records the operator's view of the item in the ledger, as it does
/// for `entente policy explain`).
async fn explain(state: &Console, query: &ExplainQuery) -> Result<Explained, (StatusCode, String)> {
    let bad = |m: String| (StatusCode::BAD_REQUEST, m);
    let partner = NodeId::new(query.partner.trim()).map_err(|e| bad(format!("partner: {e}")))?;
    let id = ItemId::parse(query.item.trim()).map_err(|e| bad(format!("item: {e}")))?;
    let operator = Partner {
        id: state.sources.node.clone(),
        kind: PartnerKind::Local,
        role: Role::Admin,
    };
    match state.sources.engine.explain(&operator, &partner, &id).await {
        Ok(Some((stored, decision))) => Ok(Explained {
            allowed: decision.allowed(),
            rule: decision.rule.to_string(),
            stored,
        }),
        Ok(None) => Err((
            StatusCode::NOT_FOUND,
            format!("{id} is not held by this node"),
        )),
        Err(error) => {
            tracing::warn!(%error, "admin listener: explain failed");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the decision could not be made; see the node's log".to_owned(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_are_served() {
        for host in [
            "127.0.0.1:9464",
            "127.0.0.1",
            "[::1]:9464",
            "[::1]",
            "localhost:80",
            "LOCALHOST",
            "127.3.4.5:1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example:9464",
            "10.0.0.1:9464",
            "localhost.evil.example",
            "[::1]x",
            "[2001:db8::1]:80",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
