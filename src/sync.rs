//! Replication between nodes (DESIGN section 7): one pull loop per configured `[[peer]]`
//! whose role may send to this node. Each loop pulls the peer's change feed from the
//! cursor kept for it, follows it, accepts what arrives through the engine's inbound
//! rules, and persists the cursor after the bundles before it are stored. A dropped
//! stream reconnects with capped exponential backoff and jitter and resumes exactly.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError, now_ms};
use crate::model::NodeId;
use crate::node::MAX_MESSAGE_BYTES;
use crate::rpc::proto::federation_client::FederationClient;
use crate::rpc::proto::{GetCertificatesRequest, PullRequest, pull_response};
use crate::transport::connect;

/// Largest pull message accepted from a peer (decoded size; a bundle of 1,000 items is
/// about 0.3 MiB).
pub const MAX_PULL_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What a pull loop reports about its link (for `entente status`).
#[derive(Clone, Debug, Default)]
pub struct LinkState {
    /// The peer's address.
    pub address: String,
    /// Whether a pull stream is open.
    pub connected: bool,
    /// Position reached in the peer's feed.
    pub cursor: u64,
    /// The peer's feed head at its last checkpoint.
    pub head: u64,
    /// Bundles accepted from this link.
    pub received: u64,
    /// Bundles rejected from this link.
    pub rejected: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last message arrived, ms.
    pub last_message_ms: i64,
    /// Items stored from this link.
    pub items_received: u64,
    /// Items from this link that were rejected (in rejected bundles, or by the
    /// single-writer rule).
    pub items_rejected: u64,
    /// Since when the link has been behind the peer's head (`None` when caught up).
    pub behind_since_ms: Option<i64>,
    /// Whether a checkpoint arrived on the current connection (until then `head` is
    /// what an earlier connection last heard, or 0).
    pub checkpoint_since_connect: bool,
}

impl LinkState {
    /// Whether the link has pulled the peer's whole change feed as of the peer's last
    /// checkpoint on the current connection.
    pub fn caught_up(&self) -> bool {
        self.connected && self.checkpoint_since_connect && self.cursor >= self.head
    }
}

/// The state of every link, shared between the pull loops and the Admin service.
pub type Links = Arc<std::sync::Mutex<std::collections::BTreeMap<NodeId, LinkState>>>;

fn update(links: &Links, peer: &NodeId, f: impl FnOnce(&mut LinkState)) {
    let mut map = links.lock().unwrap_or_else(|p| p.into_inner());
    f(map.entry(peer.clone()).or_default());
}

/// One peer this node pulls from.
#[derive(Clone, Debug)]
pub struct Link {
    /// The peer's id.
    pub peer: NodeId,
    /// `host:port`.
    pub address: String,
}

/// Pulls from `link` until `shutdown` is cancelled.
pub async fn run_link(
    link: Link,
    engine: Arc<Engine>,
    tls: Arc<rustls::ClientConfig>,
    links: Links,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    update(&links, &link.peer, |s| {
        s.address = link.address.clone();
        s.cursor = engine.store().cursor(&link.peer).unwrap_or(0);
    });
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = pull(&link, &engine, tls.clone(), &links, &shutdown).await;
        update(&links, &link.peer, |s| {
            s.connected = false;
            s.checkpoint_since_connect = false;
        });
        match result {
            Ok(()) => backoff = BACKOFF_START,
            Err(problem) => {
                tracing::warn!(peer = %link.peer, addr = %link.address, %problem, "pull failed; will retry");
                update(&links, &link.peer, |s| s.last_error = Some(problem));
            }
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn pull(
    link: &Link,
    engine: &Arc<Engine>,
    tls: Arc<rustls::ClientConfig>,
    links: &Links,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    let channel = connect(tls, &link.address, &link.peer)
        .await
        .map_err(|e| e.to_string())?;
    let mut federation = FederationClient::new(channel)
        .accept_compressed(tonic::codec::CompressionEncoding::Zstd)
        .max_decoding_message_size(MAX_PULL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let cursor = engine
        .store()
        .cursor(&link.peer)
        .map_err(|e| e.to_string())?;
    let mut stream = federation
        .pull(PullRequest {
            cursor,
            follow: true,
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    tracing::info!(peer = %link.peer, cursor, "pulling");
    update(links, &link.peer, |s| {
        s.connected = true;
        s.checkpoint_since_connect = false;
        // Errors of earlier attempts are history once a stream is open.
        s.last_error = None;
    });
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            message = stream.message() => message.map_err(|s| status_text(&s))?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        match message.event {
            Some(pull_response::Event::Bundle(feed)) => {
                let Some(bundle) = feed.bundle else {
                    continue;
                };
                fetch_signer(&mut federation, engine, &bundle).await?;
                let disclosed = bundle.disclosures.len() as u64;
                let worker = engine.clone();
                let peer = link.peer.clone();
                let hops = feed.hops;
                let accepted = tokio::task::spawn_blocking(move || {
                    worker.accept_pulled(&peer, &bundle, hops, now_ms())
                })
                .await
                .map_err(|e| e.to_string())?;
                let ok = accepted.is_ok();
                let mut rejection = None;
                let (stored_items, rejected_items) = match &accepted {
                    Ok(report) => (report.stored.len() as u64, report.rejected.len() as u64),
                    Err(_) => (0, disclosed),
                };
                match accepted {
                    Ok(report) if !report.rejected.is_empty() => {
                        tracing::warn!(peer = %link.peer, rejected = report.rejected.len(), "items rejected by the single-writer rule");
                    }
                    Ok(_) => {}
                    // Never acceptable later either: log with the sender, and move on.
                    Err(
                        error @ (EngineError::Refused(_)
                        | EngineError::Verify(_)
                        | EngineError::Store(crate::store::StoreError::ConflictingBundle(_))),
                    ) => {
                        tracing::warn!(peer = %link.peer, seq = feed.seq, %error, "bundle rejected");
                        rejection = Some(format!("seq {}: {error}", feed.seq));
                    }
                    Err(error) => return Err(error.to_string()),
                }
                // After the bundle is stored: a recovered cursor never runs ahead of data.
                // A bundle may come as several messages (one per hop count) with the same
                // seq, so only the entries before this one are known to be complete.
                let done = feed.seq.saturating_sub(1);
                engine
                    .store()
                    .set_cursor(&link.peer, done)
                    .map_err(|e| e.to_string())?;
                update(links, &link.peer, |s| {
                    s.cursor = done;
                    s.last_message_ms = now_ms();
                    s.items_received += stored_items;
                    s.items_rejected += rejected_items;
                    if ok {
                        s.received += 1;
                    } else {
                        s.rejected += 1;
                        s.last_error = rejection;
                    }
                });
            }
            Some(pull_response::Event::Checkpoint(checkpoint)) => {
                engine
                    .store()
                    .set_cursor(&link.peer, checkpoint.cursor)
                    .map_err(|e| e.to_string())?;
                update(links, &link.peer, |s| {
                    let now = now_ms();
                    s.cursor = checkpoint.cursor;
                    s.head = checkpoint.head;
                    s.checkpoint_since_connect = true;
                    s.last_message_ms = now;
                    s.behind_since_ms = if checkpoint.cursor >= checkpoint.head {
                        None
                    } else {
                        Some(s.behind_since_ms.unwrap_or(now))
                    };
                });
            }
            None => {}
        }
    }
}

/// Makes sure the signer certificate of `bundle` is cached, asking the peer for it by
/// fingerprint when it is not. The certificate is trusted only if it chains to this
/// node's anchors, which verification checks; caching it grants nothing by itself.
async fn fetch_signer(
    federation: &mut FederationClient<tonic::transport::Channel>,
    engine: &Arc<Engine>,
    bundle: &crate::wire::SignedBundle,
) -> Result<(), String> {
    let Ok((header, _)) = crate::crypto::parse_header(&bundle.header_bytes) else {
        // Verification will reject it with the reason.
        return Ok(());
    };
    let fingerprint = header.signer_cert_sha256;
    if engine
        .store()
        .certificate(&fingerprint)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(());
    }
    let answer = federation
        .get_certificates(GetCertificatesRequest {
            sha256: vec![fingerprint.to_vec()],
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    for chain in answer.chains {
        if let Some(der) = chain.der.first() {
            if crate::crypto::sha256(der) == fingerprint {
                engine
                    .store()
                    .put_certificate(der)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// A status with its transport cause, on one line.
fn status_text(status: &tonic::Status) -> String {
    match std::error::Error::source(status) {
        Some(cause) => format!(
            "{}: {}",
            status.message(),
            crate::transport::connect::error_chain(cause)
        ),
        None => status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::LinkState;

    #[test]
    fn a_link_is_caught_up_only_after_a_checkpoint_on_its_current_connection() {
        // A fresh link that has received bundles but no checkpoint yet: head is unknown.
        let mut link = LinkState {
            connected: true,
            cursor: 219,
            head: 0,
            ..Default::default()
        };
        assert!(!link.caught_up());
        // The first checkpoint after a page: the peer's head is further on.
        link.checkpoint_since_connect = true;
        link.cursor = 256;
        link.head = 6000;
        assert!(!link.caught_up());
        link.cursor = 6000;
        assert!(link.caught_up());
        // A reconnect: the old head no longer counts until the new stream checkpoints.
        link.connected = false;
        link.checkpoint_since_connect = false;
        assert!(!link.caught_up());
        link.connected = true;
        assert!(!link.caught_up());
    }
}
