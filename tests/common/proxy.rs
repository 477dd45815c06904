//! A TCP proxy for tests that cuts every connection once it has carried a given number
//! of bytes from the server to the client: a link broken again and again in the
//! middle of whatever it carries (TLS passes through untouched).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; dropping it stops accepting.
pub struct CuttingProxy {
    pub addr: SocketAddr,
    /// Connections cut so far.
    pub cuts: Arc<AtomicU64>,
    /// Bytes carried from the server to clients so far.
    pub carried: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// Forwards 127.0.0.1:0 to `upstream`, cutting each connection after `cut_after`
    /// bytes towards the client.
    pub async fn start(upstream: SocketAddr, cut_after: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cuts = Arc::new(AtomicU64::new(0));
        let carried = Arc::new(AtomicU64::new(0));
        let task = {
            let (cuts, carried) = (cuts.clone(), carried.clone());
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let (cuts, carried) = (cuts.clone(), carried.clone());
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        if relay(client, server, cut_after, &carried).await {
                            cuts.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            })
        };
        Self {
            addr,
            cuts,
            carried,
            task,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Relays both ways until either side closes (false) or `cut_after` bytes went to the
/// client (true: both sockets are dropped at once).
async fn relay(client: TcpStream, server: TcpStream, cut_after: u64, carried: &AtomicU64) -> bool {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        false
    };
    let downstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        loop {
            let room = usize::try_from(cut_after - sent)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = match server_read.read(&mut buf[..room]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                return false;
            }
            sent += n as u64;
            carried.fetch_add(n as u64, Ordering::Relaxed);
            if sent >= cut_after {
                return true;
            }
        }
    };
    tokio::select! {
        cut = upstream => cut,
        cut = downstream => cut,
    }
}

/// A proxy that can silence every connection it carries: after [`SilencingProxy::silence`]
/// the connections open then carry nothing more either way but stay open (a host that
/// hangs, a firewall or NAT that forgets a connection), while new ones are carried as
/// usual.
pub struct SilencingProxy {
    pub addr: SocketAddr,
    silenced: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl SilencingProxy {
    /// Forwards 127.0.0.1:0 to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (silenced, watch) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                watch.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_read, &mut server_write) => return,
                        _ = tokio::io::copy(&mut server_read, &mut client_write) => return,
                        _ = watch.changed() => {}
                    }
                    // Silenced: the sockets stay open and nothing more is read or
                    // written, until the proxy is dropped.
                    let _held = (client_read, client_write, server_read, server_write);
                    while watch.changed().await.is_ok() {}
                });
            }
        });
        Self {
            addr,
            silenced,
            task,
        }
    }

    /// Silences every connection open now; they close when the proxy is dropped.
    pub fn silence(&self) {
        self.silenced.send_modify(|n| *n += 1);
    }
}

impl Drop for SilencingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
