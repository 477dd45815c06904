//! The pull loop: one per configured `[[peer]]` that may send to this
//! node. It reaches the peer through the [`Dialer`] and [`Peer`] traits (implemented over
//! gRPC by the service layer), parses each bundle's header once, asks the peer for an
//! unknown signer certificate, hands the bundle to `Engine::accept_pulled`, and stores
//! the cursor after it. Owns reconnection, backoff and the retry of bundles refused for
//! a passing reason; must not touch gRPC, transport or the inbound rules themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::feed::FeedEvent;
use super::links::{Links, update};
use crate::crypto::BundleHeader;
use crate::engine::{Engine, EngineError, InboundBundle, now_ms};
use crate::model::NodeId;

/// Largest pull message accepted from a peer (decoded size; a bundle of 1,000 items is
/// about 0.3 MiB).
pub const MAX_PULL_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Largest answer to a signer-certificate request read from a peer (one certificate of
/// at most 16 KiB is asked for at a time).
pub const MAX_CERTIFICATE_RESPONSE_BYTES: usize = 64 * 1024;

/// First reconnection delay.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// First wait before a bundle refused for a reason that can pass (an unknown signer, a
/// time ahead of this clock) is pulled again; doubled per attempt up to
/// [`RETRY_MAX`].
const RETRY_START: Duration = Duration::from_secs(2);
/// Longest wait between two attempts at a bundle refused for a passing reason.
const RETRY_MAX: Duration = Duration::from_secs(300);
/// Most bundles of one link waiting to be pulled again.
const MAX_RETRIED: usize = 4096;
/// After this long, a bundle still refused for a passing reason is passed over for good.
const RETRY_GIVE_UP_MS: i64 = 24 * 3_600_000;
/// Longest reconnection delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The answer was larger than this node reads ([`MAX_CERTIFICATE_RESPONSE_BYTES`]
    /// for a certificate), or the peer said it would be.
    #[error("the answer is larger than this node reads")]
    TooLarge,
    /// Anything else, in words (with its transport cause).
    #[error("{0}")]
    Failed(String),
}

/// A peer's change feed as it arrives, one event at a time; an error ends it.
pub type PeerFeed = Pin<Box<dyn Stream<Item = Result<FeedEvent, PeerError>> + Send>>;

/// Opens connections to one peer: one per attempt of the pull loop, closed when the
/// attempt ends.
pub trait Dialer: Send + Sync + 'static {
    /// One open connection.
    type Peer: Peer;
    /// Connects to the peer (and checks it is the node meant).
    fn dial(&self) -> impl Future<Output = Result<Self::Peer, PeerError>> + Send;
}

/// One open connection to a peer, as the pull loop uses it.
pub trait Peer: Send {
    /// Pulls the peer's feed after `cursor`, following it.
    fn pull(&mut self, cursor: u64) -> impl Future<Output = Result<PeerFeed, PeerError>> + Send;
    /// The certificates the peer holds under `fingerprint` (the first certificate of
    /// each chain it answers with; none when it holds none).
    fn certificates(
        &mut self,
        fingerprint: [u8; 32],
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, PeerError>> + Send;
}

/// One peer this node pulls from.
#[derive(Clone, Debug)]
pub struct Link {
    /// The peer's id.
    pub peer: NodeId,
    /// `host:port`.
    pub address: String,
}

/// Pulls from `link`, connecting through `dialer`, until `shutdown` is cancelled.
pub async fn run_link<D: Dialer>(
    link: Link,
    dialer: D,
    engine: Arc<Engine>,
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
        let result = pull(&link, &dialer, &engine, &links, &shutdown, &mut retries).await;
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
        // Bounded: past this many, a further refusal is final (a peer cannot make this
        // node hold its refusals without limit).
        if !self.since.contains_key(&seq) && self.since.len() >= MAX_RETRIED {
            return false;
        }
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

/// One connection's worth of pulling: connect, pull from the stored cursor, accept what
/// arrives, until the stream ends, `shutdown`, or the time to pull again bundles refused
/// for a passing reason.
async fn pull<D: Dialer>(
    link: &Link,
    dialer: &D,
    engine: &Arc<Engine>,
    links: &Links,
    shutdown: &CancellationToken,
    retries: &mut Retries,
) -> Result<(), String> {
    let mut peer = dialer.dial().await.map_err(|e| e.to_string())?;
    let cursor = engine
        .store()
        .cursor(&link.peer)
        .map_err(|e| e.to_string())?;
    let mut stream = peer.pull(cursor).await.map_err(|e| e.to_string())?;
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
            // Stopping first: a loop replaced at a reload handles nothing more.
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut retry_at, if retry_armed => {
                tracing::info!(peer = %link.peer, refused = retries.open.len(), "pulling again the bundles refused for a passing reason");
                return Ok(());
            }
            message = stream.next() => message.transpose().map_err(|e| e.to_string())?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        match message {
            FeedEvent::Bundle(feed) => {
                let disclosed = feed.bundle.disclosures.len() as u64;
                // The header is parsed here, once: for the signer's fingerprint and for
                // the engine's inbound rules. One that does not parse is refused as the
                // engine would refuse it.
                let accepted = match InboundBundle::parse(feed.bundle) {
                    Err(error) => Err(EngineError::Verify(error)),
                    Ok(bundle) => match offered_signer(&mut peer, engine, bundle.header()).await? {
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
                                worker.accept_pulled(
                                    &peer,
                                    &bundle,
                                    hops,
                                    offered.as_deref(),
                                    now_ms(),
                                )
                            })
                            .await
                            .map_err(|e| e.to_string())?
                        }
                    },
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
                if shutdown.is_cancelled() {
                    // Replaced (a reload) or stopping: the next loop stores cursors.
                    return Ok(());
                }
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
            FeedEvent::Checkpoint {
                cursor: reached,
                head,
            } => {
                let cursor = retries.cap(reached);
                if shutdown.is_cancelled() {
                    return Ok(());
                }
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
                    s.head = head;
                    s.checkpoint_since_connect = true;
                    s.last_message_ms = now;
                    s.behind_since_ms = if reached >= head {
                        None
                    } else {
                        Some(s.behind_since_ms.unwrap_or(now))
                    };
                });
            }
        }
    }
}

/// What the peer supplied for a bundle's signer certificate.
enum Offer {
    /// The certificate is cached already, or the peer could not answer now: verify
    /// with the cache.
    None,
    /// The blob the peer supplied under the header's fingerprint, for this bundle's
    /// verification only.
    Supplied(Vec<u8>),
    /// The peer supplied something that can never be this bundle's certificate.
    Refused(String),
}

/// The signer certificate named by `header` when it is not cached yet, asked of the
/// peer by fingerprint (the answer bounded in size, and only a blob whose SHA-256
/// matches). Nothing is cached here: the engine uses it to verify this bundle, and
/// caches it through its guarded path only once the bundle verified with it.
async fn offered_signer<P: Peer>(
    peer: &mut P,
    engine: &Arc<Engine>,
    header: &BundleHeader,
) -> Result<Offer, String> {
    let fingerprint = header.signer_cert_sha256;
    if engine
        .store()
        .certificate(&fingerprint)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(Offer::None);
    }
    let answer = match peer.certificates(fingerprint).await {
        Ok(answer) => answer,
        Err(PeerError::TooLarge) => {
            return Ok(Offer::Refused(format!(
                "the peer answered the signer certificate request with more than {MAX_CERTIFICATE_RESPONSE_BYTES} bytes"
            )));
        }
        Err(problem) => {
            // The bundle is refused as signed by an unknown certificate, and pulled again.
            let fingerprint: String = fingerprint.iter().map(|b| format!("{b:02x}")).collect();
            tracing::warn!(%fingerprint, %problem, "peer did not supply a signer certificate");
            return Ok(Offer::None);
        }
    };
    let found = answer
        .into_iter()
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
