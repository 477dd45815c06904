//! The pull loop: one per configured `[[peer]]` that may send to this
//! node. It reaches the peer through the [`Dialer`] and [`Peer`] traits (implemented over
//! gRPC by the service layer), assembles each bundle from its parts, checks its header
//! with `Engine::check_pulled_header` as soon as the header is complete (asking the
//! peer for an unknown signer certificate), hands the whole bundle to
//! `Engine::accept_pulled`, and stores the cursor after it. Owns reconnection, backoff,
//! the continuation of a transfer cut short and the retry of bundles refused for a
//! passing reason; must not touch gRPC, transport or the inbound rules themselves.
//! Positions in the peer's feed are the peer's sealed tokens: stored and sent back as
//! received, never compared or counted (the peer decides what a token means).

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

/// A peer's change feed as it arrives, one event at a time, its positions as the
/// peer's opaque tokens; an error ends it.
pub type PeerFeed = Pin<Box<dyn Stream<Item = Result<FeedEvent<Vec<u8>>, PeerError>> + Send>>;

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
    /// Pulls the peer's feed after `cursor` (a token the peer issued; empty: from the
    /// start), following it, offering to continue the transfer `resume` (the peer
    /// decides whether it can).
    fn pull(
        &mut self,
        cursor: Vec<u8>,
        resume: Option<Resume<Vec<u8>>>,
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
        let before = progress(&kept);
        let result = pull(&context, &dialer, &mut kept).await;
        // Only a transfer cut short by the connection is continued; one refused is
        // pulled again whole (a passing refusal may pass by then). Nor is one continued
        // while bundles refused for a passing reason on the connection wait to be
        // pulled again: the peer, continuing it, would pass over the transfers of its
        // feed entry at lower hop counts, which may be those bundles, and the cursors
        // stored after it would pass them.
        if kept.transfer.as_ref().is_some_and(Assembly::is_refused) || !kept.retries.open.is_empty()
        {
            kept.transfer = None;
            kept.offered = None;
        }
        // A connection that moved the link forward (a bundle settled, or more of a
        // transfer kept to continue) is no failure to back off from.
        let after = progress(&kept);
        let progressed = after.0 != before.0 || (after.1.is_some() && after.1 != before.1);
        update(&links, &link.peer, |s| {
            s.connected = false;
            s.checkpoint_since_connect = false;
            // A link that is down is behind from then on (from its first attempt if it
            // never connected), so that an alert on lag fires for a partner gone quiet.
            s.behind_since_ms = Some(s.behind_since_ms.unwrap_or_else(now_ms));
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

/// How far a link has come: the bundles it settled, and the transfer it keeps (its
/// digest and next part).
fn progress(kept: &Kept) -> (u64, Option<([u8; 32], u32)>) {
    let transfer = kept.transfer.as_ref().map(|t| {
        let resume = t.resume(());
        (resume.transfer, resume.next_part)
    });
    (kept.settled, transfer)
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
    /// connection breaks in the middle of it, if the peer can).
    transfer: Option<Assembly>,
    /// The `after` token the transfer in progress came with.
    after: Vec<u8>,
    /// Bundles settled (accepted, or refused for good) so far: a bundle refused for a
    /// passing reason, served again and again, is no progress.
    settled: u64,
    /// The signer certificate the peer supplied for the transfer's header.
    offered: Option<Vec<u8>>,
}

/// Bundles of one link refused for a reason that can pass, known by their transfer
/// digest (the same each time the peer serves the bundle at the same hop count under
/// the same policy, wherever it stands in the peer's feed). The stored cursor never
/// passes the first of them, so they are pulled again, after a reconnection, until they
/// are accepted or refused for good (or [`RETRY_GIVE_UP_MS`] has passed); meanwhile
/// the link goes on with the bundles after them.
#[derive(Debug, Default)]
struct Retries {
    /// Transfer digest → when it was first refused (ms).
    since: std::collections::HashMap<[u8; 32], i64>,
    /// The transfers refused on the current connection, in the order they came, with
    /// the `after` token each came with.
    open: Vec<([u8; 32], Vec<u8>)>,
    /// The wait before the next attempt.
    delay: Option<Duration>,
}

impl Retries {
    /// The cursor that may be stored instead of `cursor`: the `after` token of the
    /// first transfer still refused on this connection, if any (it came before
    /// `cursor`).
    fn cap<'a>(&'a self, cursor: &'a [u8]) -> &'a [u8] {
        self.open
            .first()
            .map_or(cursor, |(_, after)| after.as_slice())
    }

    /// Records a passing refusal of `transfer` (which came with `after`); false when it
    /// has been refused for so long that it is passed over for good.
    fn refused(&mut self, transfer: [u8; 32], after: &[u8], now: i64) -> bool {
        // Bounded: past this many, a further refusal is final (a peer cannot make this
        // node hold its refusals without limit).
        if !self.since.contains_key(&transfer) && self.since.len() >= MAX_RETRIED {
            return false;
        }
        let since = *self.since.entry(transfer).or_insert(now);
        if now - since > RETRY_GIVE_UP_MS {
            self.since.remove(&transfer);
            return false;
        }
        if self.open.len() < MAX_RETRIED {
            self.open.push((transfer, after.to_vec()));
        }
        true
    }

    /// `transfer` was accepted or refused for good.
    fn settled(&mut self, transfer: &[u8; 32]) {
        self.since.remove(transfer);
        self.open.retain(|(t, _)| t != transfer);
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
        EngineError::Verify(crate::crypto::VerifyError::UnknownSigner(_)) => true,
        // A day ahead at most: a bundle dated years ahead is never pulled again (it
        // would hold the link back, not caught up, for the whole retry period).
        EngineError::Verify(crate::crypto::VerifyError::FromTheFuture(ahead_ms)) => {
            *ahead_ms <= RETRY_GIVE_UP_MS
        }
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
    // A transfer cut short is offered for continuation; the peer continues it only if
    // it is of the entry just after the stored cursor (else it begins it again, or
    // goes on with another).
    let resume = match kept.transfer.as_ref() {
        Some(t) if !t.is_complete() && !t.is_refused() => Some(t.resume(kept.after.clone())),
        _ => {
            kept.transfer = None;
            kept.offered = None;
            None
        }
    };
    // Until the first message, the transfer kept is one the peer may or may not
    // continue.
    let mut resuming = resume.is_some();
    let from_start = cursor.is_empty();
    let resume_part = resume.as_ref().map(|r| r.next_part);
    let mut stream = peer.pull(cursor, resume).await.map_err(|e| e.to_string())?;
    tracing::info!(peer = %link.peer, from_start, resume_part, "pulling");
    kept.retries.open.clear();
    // When bundles were refused for a passing reason, this connection ends after a
    // while so that they are pulled again from the stored cursor.
    let retry_at = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(retry_at);
    let mut retry_armed = false;
    update(links, &link.peer, |s| {
        s.connected = true;
        s.checkpoint_since_connect = false;
        s.peer_caught_up = false;
        s.held_back = 0;
        // Behind until the peer says the link is caught up.
        s.behind_since_ms = Some(s.behind_since_ms.unwrap_or_else(now_ms));
        // Errors of earlier attempts are history once a stream is open.
        s.last_error = None;
    });
    loop {
        let message = tokio::select! {
            // Stopping first: a loop replaced at a reload handles nothing more.
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            // Not in the middle of a transfer (which would then be pulled again whole).
            _ = &mut retry_at, if retry_armed
                && kept.transfer.as_ref().is_none_or(|t| t.is_complete()) => {
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
            FeedEvent::Part { after, part } => {
                let outcome =
                    match take_part(context, &mut peer, kept, after, part, was_resuming).await {
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
                    Settled::Done => kept.settled += 1,
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
                caught_up,
            } => {
                if kept.transfer.as_ref().is_some_and(|t| !t.is_complete()) {
                    kept.transfer = None;
                    kept.offered = None;
                    // A transfer kept from an earlier connection that the peer does not
                    // continue (its feed moved on under another policy) is dropped;
                    // one in progress on this connection must end before anything else.
                    if !was_resuming {
                        return Err(
                            "the peer sent a checkpoint in the middle of a bundle transfer"
                                .to_owned(),
                        );
                    }
                }
                let cursor = kept.retries.cap(&reached).to_vec();
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if kept.retries.open.is_empty() {
                    kept.retries.delay = None;
                }
                engine
                    .store()
                    .set_cursor(&link.peer, &cursor)
                    .map_err(|e| e.to_string())?;
                update(links, &link.peer, |s| {
                    let now = now_ms();
                    s.peer_caught_up = caught_up;
                    s.checkpoint_since_connect = true;
                    s.last_message_ms = now;
                    // Bundles held back to be pulled again keep the link behind.
                    s.behind_since_ms = if s.caught_up() {
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
    /// The `after` token the bundle came with.
    after: Vec<u8>,
    /// Its transfer digest.
    transfer: [u8; 32],
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
    after: Vec<u8>,
    part: Part,
    resuming: bool,
) -> Result<Option<Outcome>, String> {
    let Context { link, engine, .. } = *context;
    let transfer = part.transfer;
    if part.index == 0 {
        if kept
            .transfer
            .as_ref()
            .is_some_and(|t| !t.is_complete() && !resuming)
        {
            return Err(
                "the peer began a bundle before the bundle in transfer was complete".to_owned(),
            );
        }
        // A transfer kept from an earlier connection that the peer begins again (or
        // does not continue) is dropped.
        kept.offered = None;
        kept.transfer = Some(
            Assembly::open(&part, engine.limits().pull_transfer_bytes)
                .map_err(|e| e.to_string())?,
        );
        kept.after = after;
    } else if !kept.transfer.as_ref().is_some_and(|t| t.expects(&part)) {
        return Err(format!(
            "part {} of a bundle does not follow the transfer in progress",
            part.index
        ));
    } else if resuming {
        // The peer continues the transfer kept at the first entry it serves after the
        // stored cursor: the cursor stored once it is whole is the one the peer gave for
        // that entry.
        kept.after = after;
    }
    let after = kept.after.clone();
    let Some(assembly) = kept.transfer.as_mut() else {
        return Err("no transfer in progress".to_owned());
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
                after,
                transfer,
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
                after,
                transfer,
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
        after,
        transfer,
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
        after,
        transfer,
        disclosed,
        accepted,
    } = outcome;
    // How the bundle is named in logs and in the link's last error: its transfer, as
    // the peer's feed position is not known here.
    let label = format!("transfer {}", crate::util::hex(&transfer[..6]));
    let ok = accepted.is_ok();
    let mut rejection = None;
    // The reason word for the metrics (`telemetry`), when the bundle was not stored.
    let mut reason = None;
    let mut settled = Settled::Done;
    let (stored_items, mut rejected_items) = match &accepted {
        Ok(report) => (report.stored.len() as u64, report.rejected.len() as u64),
        Err(_) => (0, disclosed),
    };
    match accepted {
        Ok(report) => {
            retries.settled(&transfer);
            if !report.rejected.is_empty() {
                tracing::warn!(peer = %link.peer, rejected = report.rejected.len(), "items rejected by the single-writer or revocation rule");
            }
        }
        // May pass later: keep the cursor before it and pull it again.
        Err(error) if is_transient(&error) && retries.refused(transfer, &after, now_ms()) => {
            tracing::warn!(peer = %link.peer, bundle = %label, %error, "bundle refused for now; it will be pulled again");
            rejection = Some(format!("{label}: {error} (will retry)"));
            reason = Some(crate::telemetry::HELD_BACK);
            settled = Settled::RetryLater;
            // Not rejected: held back, and counted when it is settled.
            rejected_items = 0;
        }
        // Never acceptable later: log with the sender, and move on.
        Err(
            error @ (EngineError::Refused(_)
            | EngineError::Verify(_)
            | EngineError::TransferTooLarge { .. }
            | EngineError::Certificate(_)
            | EngineError::Store(crate::store::StoreError::ConflictingBundle(_))),
        ) => {
            retries.settled(&transfer);
            tracing::warn!(peer = %link.peer, bundle = %label, %error, "bundle rejected");
            reason = Some(rejection_reason(&error));
            rejection = Some(format!("{label}: {error}"));
        }
        Err(error) => return Err(error.to_string()),
    }
    // After the bundle is stored: a recovered cursor never runs ahead of data. A bundle
    // may come as several transfers (one per hop count) of one feed entry, so the
    // cursor stored is the one before the entry (`after`); and never past a bundle to
    // be pulled again.
    let done = retries.cap(&after).to_vec();
    if shutdown.is_cancelled() {
        // Replaced (a reload) or stopping: the next loop stores cursors.
        return Ok(Settled::Stop);
    }
    engine
        .store()
        .set_cursor(&link.peer, &done)
        .map_err(|e| e.to_string())?;
    let items_rejected_reason = reason.unwrap_or("single_writer_or_revocation");
    let detail = match (&rejection, ok && rejected_items > 0) {
        (Some(text), _) => Some(text.clone()),
        (None, true) => Some(format!(
            "{label}: {rejected_items} items rejected by the single-writer or revocation rule"
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
    let held_back = retries.open.len() as u64;
    update(links, &link.peer, |s| {
        s.last_message_ms = now_ms();
        s.items_received += stored_items;
        s.items_rejected += rejected_items;
        s.held_back = held_back;
        if ok {
            s.received += 1;
        } else {
            if matches!(settled, Settled::Done) {
                s.rejected += 1;
            }
            s.last_error = rejection;
        }
        if s.held_back > 0 {
            s.behind_since_ms = Some(s.behind_since_ms.unwrap_or_else(now_ms));
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

#[cfg(test)]
mod tests {
    use super::{RETRY_GIVE_UP_MS, Retries};

    #[test]
    fn the_cursor_stored_never_passes_the_first_bundle_refused_for_now() {
        let mut retries = Retries::default();
        assert_eq!(retries.cap(b"reached"), b"reached");
        assert!(retries.refused([1; 32], b"before-1", 0));
        assert!(retries.refused([2; 32], b"before-2", 0));
        // The first refused in stream order holds the cursor back.
        assert_eq!(retries.cap(b"reached"), b"before-1");
        retries.settled(&[1; 32]);
        assert_eq!(retries.cap(b"reached"), b"before-2");
        // The same transfer served again at another position (offered again) is known
        // by its digest: its first refusal still counts for giving up.
        assert!(retries.refused([2; 32], b"before-3", 1000));
        assert!(!retries.refused([2; 32], b"before-4", RETRY_GIVE_UP_MS + 1));
        retries.settled(&[2; 32]);
        assert_eq!(retries.cap(b"reached"), b"reached");
    }
}
