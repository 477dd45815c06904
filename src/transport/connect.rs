//! Outgoing connections: TCP, TLS 1.3 with this node's certificate, and a check
//! that the server is exactly the node the caller meant to reach.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::identity::{CertificateLabel, certificate_id};
use crate::model::NodeId;

/// Time allowed to establish TCP and TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `host:port`.
    #[error("invalid address {0:?}: expected host:port")]
    BadAddress(String),
    /// The node refused this side's certificate: it sent a TLS alert saying why, or
    /// closed the connection right after the handshake.
    #[error("{id} at {address} refused certificate {presented}: {reason}")]
    Refused {
        /// The node meant.
        id: NodeId,
        /// Where.
        address: String,
        /// The certificate presented (id and serial), or that none was.
        presented: String,
        /// Why, as far as the alert tells; otherwise what a silent close usually means.
        reason: String,
    },
    /// TCP, TLS or HTTP/2 failed.
    #[error("cannot connect to {id} at {address}: {reason}")]
    Failed {
        /// The node meant.
        id: NodeId,
        /// Where.
        address: String,
        /// What went wrong, with its causes.
        reason: String,
    },
}

/// How an open connection is checked for life: an HTTP/2 ping every `interval`, and
/// the connection closed when one is not answered within `timeout`. A peer that stops
/// answering without closing (a host that hangs, a firewall or NAT that forgets the
/// connection) is noticed this way; otherwise a stream waiting on it waits for ever.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    /// Between pings.
    pub interval: Duration,
    /// For the answer to one.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: crate::limits::DEFAULT_KEEPALIVE_INTERVAL,
            timeout: crate::limits::DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

/// Opens a gRPC channel to the node `expected` at `address` (`host:port`).
pub async fn connect(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    expected: &NodeId,
) -> Result<Channel, ConnectError> {
    connect_counting(tls, address, expected, None, Keepalive::default()).await
}

/// [`connect`], adding every byte received (HTTP/2 frames, after TLS) to `received`
/// when given (for measuring what crosses the wire), and checking the connection for
/// life as `keepalive` says.
pub async fn connect_counting(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    expected: &NodeId,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
    keepalive: Keepalive,
) -> Result<Channel, ConnectError> {
    let uri: Uri = format!("http://{address}")
        .parse()
        .map_err(|_| ConnectError::BadAddress(address.to_owned()))?;
    if uri.port_u16().is_none() {
        return Err(ConnectError::BadAddress(address.to_owned()));
    }
    // Pings also while no stream is open, so a connection kept for later is known
    // dead before it is used.
    let endpoint = Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(keepalive.interval)
        .keep_alive_timeout(keepalive.timeout)
        .keep_alive_while_idle(true);
    let presented = presented_certificate(&tls);
    let connector = TlsConnector::from(tls);
    let target = address.to_owned();
    let want = expected.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            let want = want.clone();
            let received = received.clone();
            let presented = presented.clone();
            async move {
                let server_name = ServerName::try_from(want.to_string())?;
                let tcp = TcpStream::connect(&target).await?;
                tcp.set_nodelay(true)?;
                let tls = connector.connect(server_name, tcp).await?;
                let (_, session) = tls.get_ref();
                let leaf = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .ok_or("server sent no certificate")?;
                let found = certificate_id(leaf)?;
                if found != want {
                    return Err(
                        format!("server certificate is for {found}, expected {want}").into(),
                    );
                }
                let (tls, first) = first_bytes(tls, &presented).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(Counting {
                    inner: tls,
                    first,
                    received,
                }))
            }
        }))
        .await
        .map_err(|e| match find_refusal(&e) {
            Some(refusal) => ConnectError::Refused {
                id: expected.clone(),
                address: address.to_owned(),
                presented: refusal.presented.clone(),
                reason: refusal.reason.clone(),
            },
            None => ConnectError::Failed {
                id: expected.clone(),
                address: address.to_owned(),
                reason: error_chain(&e),
            },
        })?;
    Ok(channel)
}

/// Time to wait for the server's first bytes after the handshake. In TLS 1.3 the
/// client's side of the handshake completes before the server has checked the client
/// certificate; a refusal arrives as an alert (or a close) in place of the server's
/// first HTTP/2 frame. Past this wait the connection is used as it is.
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(5);

/// Largest first read kept to hand to HTTP/2.
const FIRST_BYTES_MAX: usize = 16 * 1024;

/// The server refused this side's certificate.
#[derive(Debug, thiserror::Error)]
#[error("the server refused certificate {presented}: {reason}")]
struct RefusedByServer {
    presented: String,
    reason: String,
}

/// Waits for the server to speak first (an HTTP/2 server sends its settings at once),
/// so that a refusal is read as the alert it is rather than lost when the client's
/// own first frames make the server's close a reset. The bytes read are returned to
/// be read again before the rest of the stream.
async fn first_bytes<S>(
    mut tls: S,
    presented: &str,
) -> Result<(S, Vec<u8>), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0; FIRST_BYTES_MAX];
    let refused = |reason: String| RefusedByServer {
        presented: presented.to_owned(),
        reason,
    };
    match tokio::time::timeout(FIRST_BYTES_WAIT, tls.read(&mut buf)).await {
        Err(_) => Ok((tls, Vec::new())),
        Ok(Ok(0)) => Err(refused(CLOSED_AFTER_HANDSHAKE.to_owned()).into()),
        Ok(Ok(n)) => {
            buf.truncate(n);
            Ok((tls, buf))
        }
        Ok(Err(error)) => {
            let alert = error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .and_then(|tls_error| match tls_error {
                    rustls::Error::AlertReceived(alert) => Some(*alert),
                    _ => None,
                });
            match alert {
                Some(alert) => Err(refused(alert_reason(alert)).into()),
                None if matches!(
                    error.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::BrokenPipe
                ) =>
                {
                    Err(refused(CLOSED_AFTER_HANDSHAKE.to_owned()).into())
                }
                None => Err(error.into()),
            }
        }
    }
}

/// What a close right after the handshake usually means.
const CLOSED_AFTER_HANDSHAKE: &str = "the node closed the connection right after the TLS \
     handshake without saying why; this usually means it refused the certificate (an id \
     it does not list, a revoked or expired certificate, another CA) or a connection limit \
     was reached; the node's log names the certificate and the reason on a \
     \"connection refused\" line";

/// A TLS alert received from a server, as the reason a certificate was refused.
pub fn alert_reason(alert: rustls::AlertDescription) -> String {
    use rustls::AlertDescription as A;
    let reason = match alert {
        A::CertificateRevoked => {
            "the certificate is revoked (a CRL the node holds lists its serial)"
        }
        A::CertificateExpired => {
            "the certificate has expired or is not valid yet by the node's clock"
        }
        A::UnknownCA => {
            "the certificate does not chain to a trust anchor the node holds (another \
             federation's CA?)"
        }
        A::AccessDenied => {
            "the node does not list this id as a peer or client, or pins it to another \
             trust anchor"
        }
        A::CertificateRequired => "no client certificate was presented; the node requires one",
        A::BadCertificate => "the certificate is malformed or names no usable id",
        A::UnsupportedCertificate => "the certificate is not for TLS client authentication",
        A::DecryptError => "a signature in the certificate chain or handshake does not verify",
        A::CertificateUnknown => {
            "the node could not accept the certificate (for example, it names no valid id)"
        }
        other => return format!("the node sent TLS alert {other:?}"),
    };
    format!("{reason} (TLS alert {alert:?})")
}

/// The certificate this configuration presents, as `id (serial hex)`, or that it
/// presents none.
fn presented_certificate(tls: &rustls::ClientConfig) -> String {
    let schemes = tls
        .crypto_provider()
        .signature_verification_algorithms
        .supported_schemes();
    tls.client_auth_cert_resolver
        .resolve(&[], &schemes)
        .and_then(|key| key.cert.first().map(CertificateLabel::of))
        .map_or_else(|| "(none)".to_owned(), |label| label.to_string())
}

/// The refusal somewhere in an error's chain of sources.
fn find_refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a RefusedByServer> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refusal) = e.downcast_ref::<RefusedByServer>() {
            return Some(refusal);
        }
        current = e.source();
    }
    None
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A stream that counts the bytes read through it, after handing out `first` (bytes
/// read from `inner` already).
struct Counting<S> {
    inner: S,
    first: Vec<u8>,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = if self.first.is_empty() {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        } else {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.drain(..n);
            std::task::Poll::Ready(Ok(()))
        };
        if let Some(counter) = &self.received {
            let read = buf.filled().len() - before;
            counter.fetch_add(read as u64, std::sync::atomic::Ordering::Relaxed);
        }
        poll
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
