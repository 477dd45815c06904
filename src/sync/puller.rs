//! The pull loop: one per configured `[[peer]]` that may send to this
//! node. It reaches the peer through the [`Dialer`] and [`Peer`] traits (implemented over
//! gRPC by the service layer), assembles each bundle from its parts, checks its header
//! with `Engine::check_pulled_header` as soon as the header is complete (asking the
//! peer for an unknown signer certificate), hands the whole bundle to
//! `Engine::accept_pulled`, and stores the cursor after it. Owns reconnection, backoff,
//! the continuation of a transfer cut short and the retry of bundles refused for a
//! passing reason; must not touch gRPC, transport or the inbound rules themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::feed::FeedEvent;
use super::links::{Links, update};
use super::parts::{Assembly, Part, PartError, Resume};
use crate::crypto::BundleHeader;
use crate::engine::{Engine, EngineError, InboundBundle, now_ms};
use crate::model::NodeId;
use crate::store::AcceptReport;

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
    /// Pulls the peer's feed after `cursor`, following it, continuing the transfer
    /// `resume` if the peer can.
    fn pull(
        &mut self,
        cursor: u64,
        resume: Option<Resume>,
    ) -> impl Future<Output = Result<PeerFeed, PeerError>> + Send;
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
    let mut kept = Kept::default();
    update(&links, &link.peer, |s| {
        s.address = link.address.clone();
        s.cursor = engine.store().cursor(&link.peer).unwrap_or(0);
    });
    let context = Context {
        link: &link,
        engine: &engine,
        links: &links,
        shutdown: &shutdown,
    };
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let before = position(&engine, &link, &kept);
        let result = pull(&context, &dialer, &mut kept).await;
        // Only a transfer cut short by the connection is continued; one refused is
        // pulled again whole (a passing refusal may pass by then).
        if kept.transfer.as_ref().is_some_and(Assembly::is_refused) {
            kept.transfer = None;
            kept.offered = None;
        }
        // A connection that moved the link forward (a stored cursor further on, or more
        // of a transfer kept to continue) is no failure to back off from.
        let after = position(&engine, &link, &kept);
        let progressed = after.0 > before.0 || (after.1.is_some() && after.1 != before.1);
        update(&links, &link.peer, |s| {
            s.connected = false;
            s.checkpoint_since_connect = false;
        });
        if progressed {
            backoff = BACKOFF_START;
        }
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

/// How far a link is: its stored cursor, and the transfer it keeps (feed position and
/// next part).
fn position(engine: &Engine, link: &Link, kept: &Kept) -> (u64, Option<(u64, u32)>) {
    let cursor = engine.store().cursor(&link.peer).unwrap_or(0);
    let transfer = kept.transfer.as_ref().map(|t| {
        let resume = t.resume();
        (resume.seq, resume.next_part)
    });
    (cursor, transfer)
}

/// What one pull loop works with.
struct Context<'a> {
    link: &'a Link,
    engine: &'a Arc<Engine>,
    links: &'a Links,
    shutdown: &'a CancellationToken,
}

/// What a link keeps from one connection to the next.
#[derive(Default)]
struct Kept {
    retries: Retries,
    /// The bundle transfer in progress (continued on the next connection when the
    /// connection breaks in the middle of it).
    transfer: Option<Assembly>,
    /// The signer certificate the peer supplied for the transfer's header.
    offered: Option<Vec<u8>>,
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

/// One connection's worth of pulling: connect, pull from the stored cursor (continuing
/// a transfer cut short), accept what arrives, until the stream ends, `shutdown`, or
/// the time to pull again bundles refused for a passing reason.
async fn pull<D: Dialer>(context: &Context<'_>, dialer: &D, kept: &mut Kept) -> Result<(), String> {
    let Context {
        link,
        engine,
        links,
        shutdown,
    } = *context;
    let mut peer = dialer.dial().await.map_err(|e| e.to_string())?;
    let cursor = engine
        .store()
        .cursor(&link.peer)
        .map_err(|e| e.to_string())?;
    // A transfer continues only from the entry just after the stored cursor.
    let resume = match kept.transfer.as_ref() {
        Some(t) if !t.is_complete() && t.seq() == cursor.saturating_add(1) => Some(t.resume()),
        _ => {
            kept.transfer = None;
            kept.offered = None;
            None
        }
    };
    // Until the first message, the transfer kept is one the peer may or may not
    // continue.
    let mut resuming = resume.is_some();
    let mut stream = peer
        .pull(cursor, resume.clone())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(peer = %link.peer, cursor, resume_part = resume.map(|r| r.next_part), "pulling");
    kept.retries.open.clear();
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
                tracing::info!(peer = %link.peer, refused = kept.retries.open.len(), "pulling again the bundles refused for a passing reason");
                return Ok(());
            }
            message = stream.next() => message.transpose().map_err(|e| e.to_string())?,
        };
        let Some(message) = message else {
            return Ok(());
        };
        let was_resuming = std::mem::replace(&mut resuming, false);
        match message {
            FeedEvent::Part(part) => {
                let outcome = match take_part(context, &mut peer, kept, part, was_resuming).await {
                    Ok(outcome) => outcome,
                    Err(problem) => {
                        // Nothing of a transfer that breaks the protocol is kept.
                        kept.transfer = None;
                        kept.offered = None;
                        return Err(problem);
                    }
                };
                let Some(outcome) = outcome else {
                    update(links, &link.peer, |s| s.last_message_ms = now_ms());
                    continue;
                };
                match settle(context, &mut kept.retries, outcome)? {
                    Settled::Stop => return Ok(()),
                    Settled::Done => {}
                    Settled::RetryLater => {
                        if !retry_armed {
                            retry_armed = true;
                            retry_at
                                .as_mut()
                                .reset(tokio::time::Instant::now() + kept.retries.next_delay());
                        }
                    }
                }
            }
            FeedEvent::Checkpoint {
                cursor: reached,
                head,
            } => {
                if let Some(t) = kept.transfer.as_ref().filter(|t| !t.is_complete()) {
                    let seq = t.seq();
                    kept.transfer = None;
                    kept.offered = None;
                    // A transfer kept from an earlier connection that the peer does not
                    // continue (its feed moved on under another policy) is dropped;
                    // one in progress on this connection must end before anything else.
                    if !was_resuming {
                        return Err(format!(
                            "the peer sent a checkpoint in the middle of the bundle at seq {seq}"
                        ));
                    }
                }
                let cursor = kept.retries.cap(reached);
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if kept.retries.open.is_empty() {
                    kept.retries.delay = None;
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

/// What became of one bundle of a link.
struct Outcome {
    seq: u64,
    /// Items the bundle disclosed.
    disclosed: u64,
    accepted: Result<AcceptReport, EngineError>,
}

/// Takes one part into the transfer in progress (or begins one with it): checks the
/// header once it is complete, and accepts the bundle once it is whole. `None` while
/// the transfer goes on; an error when the part breaks the transfer protocol.
/// `resuming`: the transfer kept is from an earlier connection and this is the first
/// message of this one.
async fn take_part<P: Peer>(
    context: &Context<'_>,
    peer: &mut P,
    kept: &mut Kept,
    part: Part,
    resuming: bool,
) -> Result<Option<Outcome>, String> {
    let Context { link, engine, .. } = *context;
    let seq = part.seq;
    if part.index == 0 {
        if let Some(t) = kept
            .transfer
            .as_ref()
            .filter(|t| !t.is_complete() && !resuming)
        {
            return Err(format!(
                "the peer began the bundle at seq {seq} before the bundle at seq {} was complete",
                t.seq()
            ));
        }
        // A transfer kept from an earlier connection that the peer begins again (or
        // does not continue) is dropped.
        kept.offered = None;
        kept.transfer = Some(
            Assembly::open(&part, engine.limits().pull_transfer_bytes)
                .map_err(|e| e.to_string())?,
        );
    } else if !kept.transfer.as_ref().is_some_and(|t| t.expects(&part)) {
        return Err(format!(
            "part {} of the bundle at seq {seq} does not follow the transfer in progress",
            part.index
        ));
    }
    let Some(assembly) = kept.transfer.as_mut() else {
        return Err(format!("no transfer for the bundle at seq {seq}"));
    };
    let disclosed = u64::from(assembly.disclosed());
    let was_refused = assembly.is_refused();
    let taken = match assembly.take(part) {
        Ok(taken) => taken,
        Err(PartError::Protocol(problem)) => return Err(problem),
        Err(refusal) => {
            if assembly.is_complete() {
                kept.transfer = None;
            }
            let error = match refusal {
                PartError::OverBudget(budget) => {
                    crate::limits::count(crate::limits::Limit::PullTransferBytes);
                    EngineError::TransferTooLarge { budget }
                }
                PartError::Refused(error) => EngineError::Verify(error),
                PartError::Protocol(problem) => return Err(problem),
            };
            return Ok(Some(Outcome {
                seq,
                disclosed,
                accepted: Err(error),
            }));
        }
    };
    if taken.header_complete {
        if let Err(error) = check_header(context, peer, kept).await? {
            if let Some(t) = kept.transfer.as_mut() {
                t.refuse();
                if t.is_complete() || taken.complete {
                    kept.transfer = None;
                }
            }
            kept.offered = None;
            return Ok(Some(Outcome {
                seq,
                disclosed,
                accepted: Err(error),
            }));
        }
    }
    if !taken.complete {
        return Ok(None);
    }
    let Some(assembly) = kept.transfer.take() else {
        return Ok(None);
    };
    let offered = kept.offered.take();
    if was_refused {
        // Counted when it was refused; the rest of its parts carried nothing.
        return Ok(None);
    }
    let hops = assembly.hops();
    let Some(bundle) = assembly.into_bundle() else {
        return Ok(None);
    };
    let accepted = match InboundBundle::parse(bundle) {
        Err(error) => Err(EngineError::Verify(error)),
        Ok(bundle) => {
            let worker = engine.clone();
            let peer = link.peer.clone();
            tokio::task::spawn_blocking(move || {
                worker.accept_pulled(&peer, &bundle, hops, offered.as_deref(), now_ms())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    Ok(Some(Outcome {
        seq,
        disclosed,
        accepted,
    }))
}

/// Checks the header of the transfer in progress, now complete, before its items come:
/// the inbound rules and the origin's signature (with a signer certificate asked of the
/// peer if it is not cached, kept for the bundle's acceptance).
async fn check_header<P: Peer>(
    context: &Context<'_>,
    peer: &mut P,
    kept: &mut Kept,
) -> Result<Result<(), EngineError>, String> {
    let Context { link, engine, .. } = *context;
    let Some(assembly) = kept.transfer.as_ref() else {
        return Ok(Ok(()));
    };
    let hops = assembly.hops();
    let Some(header_only) = assembly.header_only() else {
        return Ok(Ok(()));
    };
    let bundle = match InboundBundle::parse(header_only) {
        Ok(bundle) => bundle,
        Err(error) => return Ok(Err(EngineError::Verify(error))),
    };
    let offered = match offered_signer(peer, engine, bundle.header()).await? {
        Offer::Refused(why) => return Ok(Err(EngineError::Certificate(why))),
        Offer::Supplied(der) => Some(der),
        Offer::None => None,
    };
    let worker = engine.clone();
    let sender = link.peer.clone();
    let (checked, offered) = tokio::task::spawn_blocking(move || {
        let checked =
            worker.check_pulled_header(&sender, &bundle, hops, offered.as_deref(), now_ms());
        (checked, offered)
    })
    .await
    .map_err(|e| e.to_string())?;
    kept.offered = offered;
    Ok(checked)
}

/// How [`settle`] left the link.
enum Settled {
    /// Counted, and the cursor stored.
    Done,
    /// Refused for a passing reason: pull it again later.
    RetryLater,
    /// Stopping or replaced: store nothing more.
    Stop,
}

/// Counts what became of one bundle, remembers a passing refusal for a retry, and
/// stores the cursor before it.
fn settle(
    context: &Context<'_>,
    retries: &mut Retries,
    outcome: Outcome,
) -> Result<Settled, String> {
    let Context {
        link,
        engine,
        links,
        shutdown,
    } = *context;
    let Outcome {
        seq,
        disclosed,
        accepted,
    } = outcome;
    let ok = accepted.is_ok();
    let mut rejection = None;
    // The reason word for the metrics (`telemetry`), when the bundle was not stored.
    let mut reason = None;
    let mut settled = Settled::Done;
    let (stored_items, rejected_items) = match &accepted {
        Ok(report) => (report.stored.len() as u64, report.rejected.len() as u64),
        Err(_) => (0, disclosed),
    };
    match accepted {
        Ok(report) => {
            retries.settled(seq);
            if !report.rejected.is_empty() {
                tracing::warn!(peer = %link.peer, rejected = report.rejected.len(), "items rejected by the single-writer or revocation rule");
            }
        }
        // May pass later: keep the cursor before it and pull it again.
        Err(error) if is_transient(&error) && retries.refused(seq, now_ms()) => {
            tracing::warn!(peer = %link.peer, seq, %error, "bundle refused for now; it will be pulled again");
            rejection = Some(format!("seq {seq}: {error} (will retry)"));
            reason = Some("refused_for_now");
            settled = Settled::RetryLater;
        }
        // Never acceptable later: log with the sender, and move on.
        Err(
            error @ (EngineError::Refused(_)
            | EngineError::Verify(_)
            | EngineError::TransferTooLarge { .. }
            | EngineError::Certificate(_)
            | EngineError::Store(crate::store::StoreError::ConflictingBundle(_))),
        ) => {
            retries.settled(seq);
            tracing::warn!(peer = %link.peer, seq, %error, "bundle rejected");
            reason = Some(rejection_reason(&error));
            rejection = Some(format!("seq {seq}: {error}"));
        }
        Err(error) => return Err(error.to_string()),
    }
    // After the bundle is stored: a recovered cursor never runs ahead of data. A bundle
    // may come as several transfers (one per hop count) with the same seq, so only the
    // entries before this one are known to be complete; and never past a bundle to be
    // pulled again.
    let done = retries.cap(seq.saturating_sub(1));
    if shutdown.is_cancelled() {
        // Replaced (a reload) or stopping: the next loop stores cursors.
        return Ok(Settled::Stop);
    }
    engine
        .store()
        .set_cursor(&link.peer, done)
        .map_err(|e| e.to_string())?;
    let items_rejected_reason = reason.unwrap_or("single_writer_or_revocation");
    let detail = match (&rejection, ok && rejected_items > 0) {
        (Some(text), _) => Some(text.clone()),
        (None, true) => Some(format!(
            "seq {seq}: {rejected_items} items rejected by the single-writer or revocation rule"
        )),
        (None, false) => None,
    };
    crate::telemetry::telemetry().pulled(
        link.peer.as_str(),
        reason,
        stored_items,
        (rejected_items, items_rejected_reason),
        detail,
        now_ms(),
    );
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
    Ok(settled)
}

/// The reason word a rejected bundle is counted under (a metric label: a fixed word).
fn rejection_reason(error: &EngineError) -> &'static str {
    match error {
        EngineError::Refused(_) => "inbound_rule",
        EngineError::Verify(_) => "signature",
        EngineError::TransferTooLarge { .. } => "transfer_too_large",
        EngineError::Certificate(_) => "signer_certificate",
        EngineError::Store(crate::store::StoreError::ConflictingBundle(_)) => "conflicting_bundle",
        _ => "other",
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
            let fingerprint = crate::util::hex(&fingerprint[..]);
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
