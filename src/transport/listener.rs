//! Accepting connections: TCP accept, TLS handshake (bounded in time and in
//! number), then the connection is registered in the [`Directory`] and its
//! [`ConnectionInfo`] attached so every request carries it. A connection whose
//! access is withdrawn (reload, revocation, expiry), or which has had no call in
//! progress for `limits.idle_connection_timeout`, stops reading and writing, which
//! closes it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use tokio::task::{AbortHandle, JoinSet};

use crate::limits::{self, Limit, Limits, Slot, Slots};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use super::access::{Directory, Registration, describe_tls_error};
use super::identity::{CertificateLabel, ConnectionInfo};
use super::tls::record_handshake;

/// Time a client has to complete the TLS handshake, by default
/// (`limits.handshake_timeout`).
pub const HANDSHAKE_TIMEOUT: Duration = crate::limits::DEFAULT_HANDSHAKE_TIMEOUT;
/// Handshakes in progress at once, by default (`limits.handshakes`). When all are taken,
/// the oldest handshake in progress is dropped to make room for the newest, so that
/// connections which never finish cannot keep a legitimate caller waiting.
pub const MAX_CONCURRENT_HANDSHAKES: usize = crate::limits::DEFAULT_HANDSHAKES;
/// Handshakes in progress at once from one source address, by default
/// (`limits.handshakes_per_source`); a further connection from it is closed at once.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = crate::limits::DEFAULT_HANDSHAKES_PER_SOURCE;

/// An accepted, authenticated connection.
pub struct AuthenticatedConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
    /// Resolves when the connection must stop: its access was withdrawn and the
    /// streams had their grace period to say so, or it was idle too long.
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    registration: Registration,
    /// The connection's place under `limits.connections_per_partner`.
    _slot: Slot<crate::model::NodeId>,
}

impl AuthenticatedConnection {
    /// Fails the I/O once the connection must close; otherwise registers the waker
    /// so that a withdrawal wakes an idle connection.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.registration.is_closing() || self.closing.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the node closed the connection (access withdrawn, or idle)",
            ));
        }
        Ok(())
    }
}

impl Connected for AuthenticatedConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> ConnectionInfo {
        self.info.clone()
    }
}

impl AsyncRead for AuthenticatedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AuthenticatedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The stream of authenticated connections handed to the gRPC server.
pub type Incoming = ReceiverStream<Result<AuthenticatedConnection, io::Error>>;

/// Starts accepting on `listener`. Returns the connection stream and the accept
/// task, which ends when `shutdown` is cancelled (aborting handshakes in progress).
pub fn accept(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    directory: Arc<Directory>,
    limits: &Limits,
    shutdown: CancellationToken,
) -> (Incoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let handshake_timeout = limits.handshake_timeout;
    let idle_timeout = limits.idle_connection_timeout;
    let max_handshakes = limits.handshakes;
    let per_source = Slots::new(limits.handshakes_per_source);
    let per_partner = Arc::new(Slots::new(limits.connections_per_partner));
    let task = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(max_handshakes));
        let mut handshakes = JoinSet::new();
        // Handshakes in progress, oldest first.
        let mut in_progress: VecDeque<AbortHandle> = VecDeque::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            // Reap finished handshakes so the set does not grow.
            while handshakes.try_join_next().is_some() {}
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            let Some(slot) = per_source.take(&remote_addr.ip()) else {
                // Closed at once (dropped).
                limits::count(Limit::HandshakesPerSource);
                tracing::debug!(addr = %remote_addr, "too many handshakes in progress from this address; connection closed");
                continue;
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Every slot is taken: the oldest handshake still in progress gives
                    // way. A legitimate handshake takes milliseconds; one that has waited
                    // behind every other slot is most likely one that never finishes.
                    limits::count(Limit::Handshakes);
                    in_progress.retain(|h| !h.is_finished());
                    if let Some(oldest) = in_progress.pop_front() {
                        oldest.abort();
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        permit = permits.clone().acquire_owned() => match permit {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            if in_progress.len() > 2 * max_handshakes {
                in_progress.retain(|h| !h.is_finished());
            }
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, addr = %remote_addr, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let directory = directory.clone();
            let per_partner = per_partner.clone();
            let tx = tx.clone();
            in_progress.push_back(handshakes.spawn(async move {
                let _permit = permit;
                let _slot = slot;
                match handshake(
                    acceptor,
                    tcp,
                    remote_addr,
                    &directory,
                    &per_partner,
                    handshake_timeout,
                )
                .await
                {
                    Ok(conn) => {
                        tracing::debug!(peer = %conn.info.partner.id, addr = %remote_addr, "connection authenticated");
                        // Ends when the connection is dropped.
                        tokio::spawn(conn.registration.watchdog(idle_timeout));
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(Refused {
                        reason,
                        certificate: Some(certificate),
                    }) => {
                        tracing::warn!(
                            addr = %remote_addr,
                            id = %certificate.id,
                            serial = %certificate.serial,
                            %reason,
                            "connection refused"
                        );
                    }
                    Err(Refused {
                        reason,
                        certificate: None,
                    }) => {
                        tracing::warn!(addr = %remote_addr, %reason, "connection refused");
                    }
                }
            }));
        }
        handshakes.shutdown().await;
    });
    (ReceiverStream::new(rx), task)
}

/// Why a connection was refused, and the certificate it presented when there was one.
struct Refused {
    /// In words.
    reason: String,
    /// The client's certificate (id and serial), if it presented one.
    certificate: Option<CertificateLabel>,
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    directory: &Arc<Directory>,
    per_partner: &Slots<crate::model::NodeId>,
    timeout: Duration,
) -> Result<AuthenticatedConnection, Refused> {
    // A reload after this point makes the directory verify the chain again at admission.
    let generation = directory.generation();
    let (accepted, record) =
        record_handshake(tokio::time::timeout(timeout, acceptor.accept(tcp))).await;
    let certificate = record.presented.as_ref().map(CertificateLabel::of);
    let refused = |reason: String| Refused {
        reason,
        certificate: certificate.clone(),
    };
    let stream = accepted
        .map_err(|_| {
            limits::count(Limit::HandshakeTimeout);
            count_refusal("timeout");
            refused("TLS handshake timed out (limits.handshake_timeout)".to_owned())
        })?
        .map_err(|e| {
            count_refusal(record.refusal_kind.unwrap_or_else(|| refusal_reason(&e)));
            refused(
                record
                    .refusal
                    .clone()
                    .unwrap_or_else(|| format!("TLS handshake failed: {}", describe_io_error(&e))),
            )
        })?;
    // The verifier has already checked the chain, revocation, the pinned anchor and
    // that the id is configured; register the connection so reloads re-check it.
    let (_, session) = stream.get_ref();
    let chain: Vec<_> = session
        .peer_certificates()
        .ok_or_else(|| {
            count_refusal("no_certificate");
            refused("no client certificate was presented".to_owned())
        })?
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let (info, registration) = directory
        .admit(chain, remote_addr, generation)
        .inspect_err(|_| count_refusal("admission"))
        .map_err(refused)?;
    let Some(slot) = per_partner.take(&info.partner.id) else {
        limits::count(Limit::ConnectionsPerPartner);
        count_refusal("connections_per_partner");
        return Err(refused(format!(
            "{} has {} connections open already (limits.connections_per_partner)",
            info.partner.id,
            per_partner.max()
        )));
    };
    let closing = Box::pin(registration.closing());
    Ok(AuthenticatedConnection {
        stream,
        info,
        closing,
        registration,
        _slot: slot,
    })
}

/// Counts a refused handshake or admission under `reason` (a fixed word).
fn count_refusal(reason: &'static str) {
    crate::telemetry::telemetry().handshake_refused(reason);
}

/// The reason word a failed TLS handshake is counted under.
fn refusal_reason(error: &io::Error) -> &'static str {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => super::access::tls_refusal_reason(tls),
        None => "io",
    }
}

/// An I/O error from the TLS layer in words: the rustls error it carries, described.
pub(crate) fn describe_io_error(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => error.to_string(),
    }
}
