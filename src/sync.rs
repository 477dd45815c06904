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
/// First wait before a bundle refused for a reason that can pass (an unknown signer, a
/// time ahead of this clock) is pulled again; doubled per attempt up to
/// [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(2);
/// Longest wait between two attempts at a bundle refused for a passing reason.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// After this long, a bundle still refused for a passing reason is passed over for good.
const RETRY_GIVE_UP_MS: i64 = 24 * 3_600_000;
/// Largest answer to `GetCertificates` read from a peer (one certificate of at most
/// 16 KiB is asked for at a time).
const MAX_CERTIFICATE_RESPONSE_BYTES: usize = 64 * 1024;
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
    let mut retries = Retries::default();
    update(&links, &link.peer, |s| {
        s.address = link.address.clone();
        s.cursor = engine.store().cursor(&link.peer).unwrap_or(0);
    });
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let result = pull(&link, &engine, tls.clone(), &links, &shutdown, &mut retries).await;
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

/// Bundles of one link refused for a reason that can pass. The stored cursor never
/// passes the first of them, so they are pulled again, after a reconnection, until they
/// are accepted or refused for good (or [`RETRY_GIVE_UP_MS`] has passed); meanwhile
/// the link goes on with the bundles after them.
#[derive(Debug, Default)]
struct Retries {
    /// Feed position → when it was first refused (ms).
    since: std::collections::BTreeMap<u64, i64>,
    /// The positions refused on the current connection.
    open: std::collections::BTreeSet<u64>,
    /// The wait before the next attempt.
    delay: Option<Duration>,
}

impl Retries {
    /// The highest cursor that may be stored: just before the first refused position.
    fn cap(&self, cursor: u64) -> u64 {
        self.open
            .first()
            .map_or(cursor, |first| cursor.min(first.saturating_sub(1)))
    }

    /// Records a passing refusal of `seq`; false when it has been refused for so long
    /// that it is passed over for good.
    fn refused(&mut self, seq: u64, now: i64) -> bool {
        let since = *self.since.entry(seq).or_insert(now);
        if now - since > RETRY_GIVE_UP_MS {
            self.since.remove(&seq);
            return false;
        }
        self.open.insert(seq);
        true
    }

    /// `seq` was accepted or refused for good.
    fn settled(&mut self, seq: u64) {
        self.since.remove(&seq);
        self.open.remove(&seq);
    }

    /// The wait before pulling the refused bundles again (doubling per attempt).
    fn next_delay(&mut self) -> Duration {
        let delay = self.delay.map_or(RETRY_START, |d| (d * 2).min(RETRY_MAX));
        self.delay = Some(delay);
        delay
    }
}

/// Whether a refusal can pass by itself: a signer certificate the peer could not
/// supply yet, or a time ahead of this node's clock.
fn is_transient(error: &EngineError) -> bool {
    match error {
        EngineError::Refused(refusal) => refusal.is_transient(),
        EngineError::Verify(
            crate::crypto::VerifyError::UnknownSigner(_)
            | crate::crypto::VerifyError::FromTheFuture(_),
        ) => true,
        _ => false,
    }
}

async fn pull(
    link: &Link,
    engine: &Arc<Engine>,
    tls: Arc<rustls::ClientConfig>,
    links: &Links,
    shutdown: &CancellationToken,
    retries: &mut Retries,
) -> Result<(), String> {
    let channel = connect(tls, &link.address, &link.peer)
        .await
        .map_err(|e| e.to_string())?;
    let mut certificates = FederationClient::new(channel.clone())
        .max_decoding_message_size(MAX_CERTIFICATE_RESPONSE_BYTES)
        .max_encoding_message_size(MAX_CERTIFICATE_RESPONSE_BYTES);
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
    retries.open.clear();
    // When bundles were refused for a passing reason, this connection ends after a
    // while so that they are pulled again from the stored cursor.
    let retry_at = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(retry_at);
    let mut retry_armed = false;
    update(links, &link.peer, |s| {
        s.connected = true;
        s.checkpoint_since_connect = false;
        // Errors of earlier attempts are history once a stream is open.
        s.last_error = None;
    });
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut retry_at, if retry_armed => {
                tracing::info!(peer = %link.peer, refused = retries.open.len(), "pulling again the bundles refused for a passing reason");
                return Ok(());
            }
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
                let disclosed = bundle.disclosures.len() as u64;
                let accepted = match offered_signer(&mut certificates, engine, &bundle).await? {
                    Offer::Refused(why) => Err(EngineError::Certificate(why)),
                    offer => {
                        let offered = match offer {
                            Offer::Supplied(der) => Some(der),
                            _ => None,
                        };
                        let worker = engine.clone();
                        let peer = link.peer.clone();
                        let hops = feed.hops;
                        tokio::task::spawn_blocking(move || {
                            worker.accept_pulled(&peer, &bundle, hops, offered.as_deref(), now_ms())
                        })
                        .await
                        .map_err(|e| e.to_string())?
                    }
                };
                let ok = accepted.is_ok();
                let mut rejection = None;
                let (stored_items, rejected_items) = match &accepted {
                    Ok(report) => (report.stored.len() as u64, report.rejected.len() as u64),
                    Err(_) => (0, disclosed),
                };
                match accepted {
                    Ok(report) => {
                        retries.settled(feed.seq);
                        if !report.rejected.is_empty() {
                            tracing::warn!(peer = %link.peer, rejected = report.rejected.len(), "items rejected by the single-writer or revocation rule");
                        }
                    }
                    // May pass later: keep the cursor before it and pull it again.
                    Err(error) if is_transient(&error) && retries.refused(feed.seq, now_ms()) => {
                        tracing::warn!(peer = %link.peer, seq = feed.seq, %error, "bundle refused for now; it will be pulled again");
                        rejection = Some(format!("seq {}: {error} (will retry)", feed.seq));
                        if !retry_armed {
                            retry_armed = true;
                            retry_at
                                .as_mut()
                                .reset(tokio::time::Instant::now() + retries.next_delay());
                        }
                    }
                    // Never acceptable later: log with the sender, and move on.
                    Err(
                        error @ (EngineError::Refused(_)
                        | EngineError::Verify(_)
                        | EngineError::Certificate(_)
                        | EngineError::Store(crate::store::StoreError::ConflictingBundle(_))),
                    ) => {
                        retries.settled(feed.seq);
                        tracing::warn!(peer = %link.peer, seq = feed.seq, %error, "bundle rejected");
                        rejection = Some(format!("seq {}: {error}", feed.seq));
                    }
                    Err(error) => return Err(error.to_string()),
                }
                // After the bundle is stored: a recovered cursor never runs ahead of data.
                // A bundle may come as several messages (one per hop count) with the same
                // seq, so only the entries before this one are known to be complete; and
                // never past a bundle to be pulled again.
                let done = retries.cap(feed.seq.saturating_sub(1));
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
                let cursor = retries.cap(checkpoint.cursor);
                if retries.open.is_empty() {
                    retries.delay = None;
                }
                engine
                    .store()
                    .set_cursor(&link.peer, cursor)
                    .map_err(|e| e.to_string())?;
                update(links, &link.peer, |s| {
                    let now = now_ms();
                    s.cursor = cursor;
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

/// What the peer supplied for a bundle's signer certificate.
enum Offer {
    /// The certificate is cached already, or the header does not parse (verification
    /// will say why), or the peer could not answer now: verify with the cache.
    None,
    /// The blob the peer supplied under the header's fingerprint, for this bundle's
    /// verification only.
    Supplied(Vec<u8>),
    /// The peer supplied something that can never be this bundle's certificate.
    Refused(String),
}

/// The signer certificate of `bundle` when it is not cached yet, asked of the peer by
/// fingerprint (the answer bounded in size, and only a blob whose SHA-256 matches).
/// Nothing is cached here: the engine uses it to verify this bundle, and caches it
/// through its guarded path only once the bundle verified with it.
async fn offered_signer(
    certificates: &mut FederationClient<tonic::transport::Channel>,
    engine: &Arc<Engine>,
    bundle: &crate::wire::SignedBundle,
) -> Result<Offer, String> {
    let Ok((header, _)) = crate::crypto::parse_header(&bundle.header_bytes) else {
        return Ok(Offer::None);
    };
    let fingerprint = header.signer_cert_sha256;
    if engine
        .store()
        .certificate(&fingerprint)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(Offer::None);
    }
    let answer = match certificates
        .get_certificates(GetCertificatesRequest {
            sha256: vec![fingerprint.to_vec()],
        })
        .await
    {
        Ok(answer) => answer.into_inner(),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::ResourceExhausted | tonic::Code::OutOfRange
            ) =>
        {
            return Ok(Offer::Refused(format!(
                "the peer answered the signer certificate request with more than {MAX_CERTIFICATE_RESPONSE_BYTES} bytes"
            )));
        }
        Err(status) => {
            // The bundle is refused as signed by an unknown certificate, and pulled again.
            let fingerprint: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
            tracing::warn!(%fingerprint, problem = %status_text(&status), "peer did not supply a signer certificate");
            return Ok(Offer::None);
        }
    };
    let found = answer
        .chains
        .into_iter()
        .filter_map(|chain| chain.der.into_iter().next())
        .find(|der| crate::crypto::sha256(der) == fingerprint);
    Ok(match found {
        None => Offer::None,
        Some(der) if der.len() > crate::engine::MAX_SIGNER_CERTIFICATE_BYTES => {
            Offer::Refused(format!(
                "the peer supplied a signer certificate of {} bytes, more than {}",
                der.len(),
                crate::engine::MAX_SIGNER_CERTIFICATE_BYTES
            ))
        }
        Some(der) => Offer::Supplied(der),
    })
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
