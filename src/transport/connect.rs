//! Outgoing connections: TCP, TLS 1.3 with this node's certificate, and a check
//! that the server is exactly the node the caller meant to reach.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::identity::certificate_id;
use crate::model::NodeId;

/// Time allowed to establish TCP and TLS.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not `host:port`.
    #[error("invalid address {0:?}: expected host:port")]
    BadAddress(String),
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

/// Opens a gRPC channel to the node `expected` at `address` (`host:port`).
pub async fn connect(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    expected: &NodeId,
) -> Result<Channel, ConnectError> {
    connect_counting(tls, address, expected, None).await
}

/// [`connect`], adding every byte received (HTTP/2 frames, after TLS) to `received`
/// when given: for measuring what crosses the wire.
pub async fn connect_counting(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    expected: &NodeId,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Result<Channel, ConnectError> {
    let uri: Uri = format!("http://{address}")
        .parse()
        .map_err(|_| ConnectError::BadAddress(address.to_owned()))?;
    if uri.port_u16().is_none() {
        return Err(ConnectError::BadAddress(address.to_owned()));
    }
    let endpoint = Endpoint::from(uri).connect_timeout(CONNECT_TIMEOUT);
    let connector = TlsConnector::from(tls);
    let target = address.to_owned();
    let want = expected.clone();
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            let target = target.clone();
            let want = want.clone();
            let received = received.clone();
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
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(Counting {
                    inner: tls,
                    received,
                }))
            }
        }))
        .await
        .map_err(|e| ConnectError::Failed {
            id: expected.clone(),
            address: address.to_owned(),
            reason: error_chain(&e),
        })?;
    Ok(channel)
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

/// A stream that counts the bytes read through it.
struct Counting<S> {
    inner: S,
    received: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counting<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
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
