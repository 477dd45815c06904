//! Accepting connections: TCP accept, TLS handshake (bounded in time and in
//! number), then the connection is registered in the [`Directory`] and its
//! [`ConnectionInfo`] attached so every request carries it. A connection whose
//! access is withdrawn (reload, revocation, expiry) stops reading and writing
//! shortly after, which closes it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

use super::access::{Directory, Registration, describe_tls_error};
use super::identity::ConnectionInfo;

/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one source address; a further connection from it
/// is closed at once, so that one source that never finishes its handshakes cannot hold
/// every handshake slot while others wait.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 16;

/// Handshakes in progress per source address.
type PerSource = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One handshake counted against its source; uncounted when dropped.
struct SourceSlot {
    counts: PerSource,
    ip: std::net::IpAddr,
}

impl SourceSlot {
    /// Counts a handshake from `ip`, unless the source has its limit in progress already.
    fn take(counts: &PerSource, ip: std::net::IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// An accepted, authenticated connection.
pub struct AuthenticatedConnection {
    stream: TlsStream<TcpStream>,
    info: ConnectionInfo,
    /// Resolves when the connection must stop: its access was withdrawn and the
    /// streams had their grace period to say so.
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    registration: Registration,
}

impl AuthenticatedConnection {
    /// Fails the I/O once the connection must close; otherwise registers the waker
    /// so that a withdrawal wakes an idle connection.
    fn check_open(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.registration.is_closing() || self.closing.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "access to this node was withdrawn",
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
    shutdown: CancellationToken,
) -> (Incoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    let task = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
        let per_source = PerSource::default();
        let mut handshakes = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                // Reap finished handshakes so the set does not grow.
                accepted = listener.accept() => accepted,
            };
            while handshakes.try_join_next().is_some() {}
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            let Some(slot) = SourceSlot::take(&per_source, remote_addr.ip()) else {
                // Closed at once (dropped), and its handshake slot is free again.
                tracing::debug!(addr = %remote_addr, "too many handshakes in progress from this address; connection closed");
                continue;
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, addr = %remote_addr, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let directory = directory.clone();
            let tx = tx.clone();
            handshakes.spawn(async move {
                let _permit = permit;
                let _slot = slot;
                match handshake(acceptor, tcp, remote_addr, &directory).await {
                    Ok(conn) => {
                        tracing::debug!(peer = %conn.info.partner.id, addr = %remote_addr, "connection authenticated");
                        // Ends when the connection is dropped.
                        tokio::spawn(conn.registration.watchdog());
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Err(reason) => {
                        tracing::warn!(addr = %remote_addr, %reason, "connection refused");
                    }
                }
            });
        }
        handshakes.shutdown().await;
    });
    (ReceiverStream::new(rx), task)
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    remote_addr: SocketAddr,
    directory: &Arc<Directory>,
) -> Result<AuthenticatedConnection, String> {
    // A reload after this point makes the directory verify the chain again at admission.
    let generation = directory.generation();
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake failed: {}", describe_io_error(&e)))?;
    // The verifier has already checked the chain, revocation, the pinned anchor and
    // that the id is configured; register the connection so reloads re-check it.
    let (_, session) = stream.get_ref();
    let chain: Vec<_> = session
        .peer_certificates()
        .ok_or_else(|| "no client certificate".to_owned())?
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let (info, registration) = directory.admit(chain, remote_addr, generation)?;
    let closing = Box::pin(registration.closing());
    Ok(AuthenticatedConnection {
        stream,
        info,
        closing,
        registration,
    })
}

/// An I/O error from the TLS layer in words: the rustls error it carries, described.
fn describe_io_error(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => error.to_string(),
    }
}
