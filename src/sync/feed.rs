//! Feed serving: this node's change feed as one partner may see it,
//! as a stream of [`FeedEvent`]s that follows the feed, waits out embargoes, and replays
//! from the start when the partner's policy changes, until it ends for a [`FeedEnd`]
//! reason. Owns the serving loop only; the delivery rule and the ledger are the
//! engine's (`Engine::pull_page`), and no gRPC or transport type may appear here: the
//! connection's withdrawal comes in through [`Withdrawable`].

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::parts::{Part, Resume, split, transfer_digest};
use crate::engine::{Engine, EngineError, Transfers};
use crate::model::Partner;

/// Feed entries read per pull page.
pub const PULL_PAGE: usize = 256;
/// Transfers sent between two checkpoints while catching up (counted in what the
/// partner receives, not in entries read).
pub const CHECKPOINT_TRANSFERS: usize = 256;
/// While following, a checkpoint is sent this often whether or not anything happened.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(15);

/// A position of this node's feed as the serving loop hands it to a partner: the
/// position, and the partner's policy fingerprint under which every entry up to it was
/// judged on this stream (since it last replayed the feed from the start). Both are
/// sealed into the token ([`super::positions`]), so a token issued under one policy does
/// not open under another: the partner is served from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The feed position.
    pub seq: u64,
    /// The partner's policy fingerprint it was reached under.
    pub policy: [u8; 32],
}

/// One event of a pull stream, in either direction: what a node serves and what a
/// puller receives. `P` is a feed position: the serving node's own ([`Position`]) in
/// the serving loop; a sealed token ([`super::positions`]) on the wire and in the
/// puller, which does no arithmetic and no comparison on it.
#[derive(Clone, Debug)]
pub enum FeedEvent<P = u64> {
    /// A part of a bundle (redacted for the partner), with the hop count at which the
    /// sender holds its items.
    Part {
        /// The position before the bundle's entry: what the puller stores once it holds
        /// the bundle (the entry is served again on the next pull, for the transfers of
        /// the same bundle at other hop counts that may follow it in the feed).
        after: P,
        /// The part.
        part: Part,
    },
    /// Everything up to `cursor` was sent or withheld. Sent between every
    /// [`CHECKPOINT_TRANSFERS`] transfers and the next, when the feed is caught up to its
    /// head, and while following on a fixed heartbeat: never as a function of how many
    /// entries were read or where pages end, so that it counts nothing the partner does
    /// not see.
    Checkpoint {
        /// Feed position reached.
        cursor: P,
        /// Whether the feed was served up to its head (or to an embargo) then.
        caught_up: bool,
    },
}

impl<P> FeedEvent<P> {
    /// The same event with its position turned by `f` (sealed for the wire, or opened).
    pub fn try_map<Q, E>(self, f: impl FnOnce(P) -> Result<Q, E>) -> Result<FeedEvent<Q>, E> {
        Ok(match self {
            FeedEvent::Part { after, part } => FeedEvent::Part {
                after: f(after)?,
                part,
            },
            FeedEvent::Checkpoint { cursor, caught_up } => FeedEvent::Checkpoint {
                cursor: f(cursor)?,
                caught_up,
            },
        })
    }
}

/// Why a served feed ended with an error (a stream that ends because its reader left,
/// or because a non-following pull is complete, ends without one).
#[derive(Debug)]
pub enum FeedEnd<W> {
    /// The node is shutting down.
    Shutdown,
    /// The connection's access was withdrawn.
    Withdrawn(W),
    /// The engine failed (reading the feed, recording the policy it is served under).
    Engine(EngineError),
    /// The blocking task reading a page failed.
    Task(String),
    /// An item of a bundle whose transfer had begun was superseded or withheld since the
    /// bundle was decided (a newer version, rule 7, expiry): the rest of the transfer is
    /// not sent, and the stream ends so the partner pulls again (the bundle is then
    /// decided anew and sent whole).
    Changed,
    /// The partner's policy changed while bundles decided under the old one were queued:
    /// they are not sent, and the stream ends so the partner pulls again (and is served
    /// its feed from the start under the policy now in force).
    PolicyChanged,
}

/// The serving connection's access, as the feed sees it: whether it has been withdrawn
/// now, and a wait for its withdrawal. Implemented by the service layer over its
/// connection type, so that this module needs none.
pub trait Withdrawable: Send + Sync + 'static {
    /// Why access was withdrawn (turned into the stream's final error).
    type Withdrawal: Send + 'static;
    /// The withdrawal, if access has been withdrawn.
    fn withdrawal(&self) -> Option<Self::Withdrawal>;
    /// Resolves when access is withdrawn (at once if it already was).
    fn withdrawn(&self) -> impl Future<Output = Self::Withdrawal> + Send + 'static;
}

/// What one pull asks for.
#[derive(Clone, Debug)]
pub struct FeedRequest {
    /// The partner served (as configured now).
    pub partner: Partner,
    /// The position it asks to continue after (0: from the start; a token that did not
    /// open is 0).
    pub cursor: u64,
    /// The partner's policy fingerprint the cursor was opened under (a token opens only
    /// under the fingerprint it was sealed with): a policy changed since is a replay.
    pub policy: [u8; 32],
    /// Whether to keep following the feed once caught up.
    pub follow: bool,
    /// A transfer the partner holds in part (its hop count, digest and next part), to
    /// continue. Honoured only when the feed is served from `cursor` and the first feed
    /// entry served holds that transfer: whether it is depends only on what the
    /// partner may see after its cursor, never on withheld entries in between.
    pub resume: Option<Resume<()>>,
}

/// Serves `request` from `engine`'s feed: resolves the cursor to serve from
/// ([`Engine::serving_cursor`], whose error is returned here, before any event), then
/// spawns the serving loop and returns the stream of its messages. Each event, and the
/// end reason if there is one, goes through `convert` in the serving task before it is
/// queued (so an error is turned into the caller's type, and logged by it, when it
/// happens, even if the reader has gone). The loop ends when the reader drops the
/// stream, at `shutdown`, or when `access` is withdrawn.
///
/// `held` (the partner's stream slot) lives as long as the serving loop, so a reader that
/// stops reading gives its slot back when the loop gives up on it.
pub fn serve<A, T, F, H>(
    engine: Arc<Engine>,
    request: FeedRequest,
    access: A,
    shutdown: CancellationToken,
    convert: F,
    held: H,
) -> Result<FeedStream<T>, EngineError>
where
    A: Withdrawable,
    T: Send + 'static,
    H: Send + 'static,
    F: Fn(Result<FeedEvent<Position>, FeedEnd<A::Withdrawal>>) -> T + Send + Sync + 'static,
{
    let FeedRequest {
        partner,
        cursor: requested,
        policy,
        follow,
        resume,
    } = request;
    // Small (`limits.pull_queue_messages`): what is queued was decided under the policy
    // of the moment it was read, so little may wait (and each message is at most one
    // part).
    let (tx, rx) = tokio::sync::mpsc::channel::<(T, Option<[u8; 32]>)>(
        engine.limits().pull_queue_messages.max(1),
    );
    let cursor = engine.serving_cursor(&partner.id, requested)?;
    // A transfer continues only when the feed is served from the partner's cursor (not
    // replayed from the start), in the first entry served (see `run`).
    let resume = resume.filter(|_| cursor == requested);
    let convert = Arc::new(convert);
    let stream = FeedStream {
        rx,
        engine: engine.clone(),
        partner: partner.id.clone(),
        policy_changed: {
            let convert = convert.clone();
            Box::new(move || convert(Err(FeedEnd::PolicyChanged)))
        },
        done: false,
    };
    tokio::spawn(async move {
        let _held = held;
        run(
            Serving {
                engine,
                partner,
                follow,
                access,
                shutdown,
                tx,
                convert,
            },
            cursor,
            policy,
            resume,
        )
        .await;
    });
    Ok(stream)
}

/// The messages of a served feed, as its reader takes them. Each bundle is checked
/// once more as it leaves the queue: if the partner's policy changed since the bundle
/// was decided, it is not sent; the stream ends with [`FeedEnd::PolicyChanged`] and
/// the partner's next pull is served from the start under the new policy.
pub struct FeedStream<T> {
    rx: tokio::sync::mpsc::Receiver<(T, Option<[u8; 32]>)>,
    engine: Arc<Engine>,
    partner: crate::model::NodeId,
    policy_changed: Box<dyn Fn() -> T + Send + Sync>,
    done: bool,
}

impl<T> tokio_stream::Stream for FeedStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((message, Some(decided_under)))) => {
                let now = self.engine.policy().partner_fingerprint(&self.partner);
                if now == decided_under {
                    return Poll::Ready(Some(message));
                }
                self.done = true;
                self.rx.close();
                // The next pull replays the feed from the start, whatever this
                // serving task recorded meanwhile.
                if let Err(error) = self.engine.forget_served_policy(&self.partner) {
                    tracing::error!(partner = %self.partner, %error, "cannot mark the partner's feed for replay");
                }
                Poll::Ready(Some((self.policy_changed)()))
            }
            Poll::Ready(Some((message, None))) => Poll::Ready(Some(message)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The digest of the transfer [`split`] makes of `bundle` at `hops` (it puts the
/// disclosures in index order first).
fn digest_as_split(hops: u32, bundle: &crate::wire::SignedBundle) -> [u8; 32] {
    if bundle.disclosures.is_sorted_by_key(|d| d.index) {
        return transfer_digest(hops, bundle);
    }
    let mut sorted = bundle.clone();
    sorted.disclosures.sort_by_key(|d| d.index);
    transfer_digest(hops, &sorted)
}

/// Within a transfer under way, a bundle is decided again at most this often (deciding
/// a bundle reads all its items again, and one may hold 100,000).
const REDECIDE_WITHIN_TRANSFER: std::time::Duration = std::time::Duration::from_secs(1);

/// A bundle of a pull page as it was decided: what it discloses, and the feed head and
/// time it was last decided at. Before its first part it is decided again once the feed
/// has moved since (a newer version, an id that now withholds an object by rule 7) or a
/// heartbeat has passed (an item expired since); before each later part once the feed
/// has moved, at most every [`REDECIDE_WITHIN_TRANSFER`].
struct Decided {
    header_bytes: Vec<u8>,
    disclosed: Vec<u32>,
    head: u64,
    at: tokio::time::Instant,
}

impl Decided {
    /// Whether the bundle may still be sent as decided (decided again when it may have
    /// changed).
    async fn still_allowed<W>(
        &mut self,
        engine: &Arc<Engine>,
        partner: &crate::model::NodeId,
        within_transfer: bool,
    ) -> Result<bool, FeedEnd<W>> {
        let head = engine.store().feed_head();
        let moved = head != self.head;
        let due = if within_transfer {
            moved && self.at.elapsed() >= REDECIDE_WITHIN_TRANSFER
        } else {
            moved || self.at.elapsed() >= HEARTBEAT
        };
        if !due {
            return Ok(true);
        }
        let at = tokio::time::Instant::now();
        let still = {
            let engine = engine.clone();
            let partner = partner.clone();
            let header_bytes = self.header_bytes.clone();
            let disclosed = self.disclosed.clone();
            tokio::task::spawn_blocking(move || {
                engine.pulled_still_allowed(&partner, &header_bytes, &disclosed)
            })
            .await
        };
        match still {
            Ok(Ok(still)) => {
                (self.head, self.at) = (head, at);
                Ok(still)
            }
            Ok(Err(error)) => Err(FeedEnd::Engine(error)),
            Err(e) => Err(FeedEnd::Task(e.to_string())),
        }
    }
}

/// What the serving loop works with.
struct Serving<A, T, F> {
    engine: Arc<Engine>,
    partner: Partner,
    follow: bool,
    access: A,
    shutdown: CancellationToken,
    tx: tokio::sync::mpsc::Sender<(T, Option<[u8; 32]>)>,
    convert: Arc<F>,
}

impl<A, T, F> Serving<A, T, F>
where
    A: Withdrawable,
    F: Fn(Result<FeedEvent<Position>, FeedEnd<A::Withdrawal>>) -> T,
{
    /// Queues an event (a bundle with the partner's policy fingerprint it was decided
    /// under); false when the reader has gone.
    /// A reader that takes nothing for `limits.slow_reader_timeout` is given up on: the
    /// loop ends and lets go of its page and its stream slot.
    async fn send(&self, event: FeedEvent<Position>, decided_under: Option<[u8; 32]>) -> bool {
        let timeout = self.engine.slow_reader_timeout();
        let sent = self.tx.send(((self.convert)(Ok(event)), decided_under));
        match tokio::time::timeout(timeout, sent).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                crate::limits::count(crate::limits::Limit::SlowReaderTimeout);
                tracing::info!(
                    peer = %self.partner.id,
                    timeout_s = timeout.as_secs_f64(),
                    "pull stream ended: the peer did not read within limits.slow_reader_timeout"
                );
                false
            }
        }
    }

    /// Queues the end reason (the loop ends whether or not the reader is still there).
    async fn end(&self, end: FeedEnd<A::Withdrawal>) {
        let _ = self.tx.send(((self.convert)(Err(end)), None)).await;
    }
}

/// The serving loop: a page at a time from `cursor`, then (when following) a wait for
/// the feed to move, an embargo to pass or the policy to change. A change of the
/// partner's policy fingerprint replays its feed from the start.
///
/// What the partner receives depends only on what it may see: the transfers, a
/// checkpoint between every [`CHECKPOINT_TRANSFERS`] of them and the next, one when the
/// feed is caught up (the first time on this stream, and after any page that sent something), and
/// while following one every [`HEARTBEAT`]. Reading entries that are all withheld sends
/// nothing.
async fn run<A, T, F>(
    serving: Serving<A, T, F>,
    cursor: u64,
    opened_under: [u8; 32],
    resume: Option<Resume<()>>,
) where
    A: Withdrawable,
    T: Send + 'static,
    F: Fn(Result<FeedEvent<Position>, FeedEnd<A::Withdrawal>>) -> T + Send + Sync + 'static,
{
    let engine = &serving.engine;
    let partner = &serving.partner;
    let mut cursor = cursor;
    let mut feed = engine.watch_feed();
    let mut policy = engine.watch_policy();
    // The policy every entry up to `cursor` was judged under: the one the partner's
    // token was opened under, until a change replays the feed from the start. Every
    // position handed out is sealed with it.
    let mut fingerprint = opened_under;
    let at = |seq: u64, policy: [u8; 32]| Position { seq, policy };
    let mut resume = resume;
    // Whether a caught-up checkpoint was sent on this stream.
    let mut announced = false;
    // Transfers sent since the last checkpoint.
    let mut unannounced = 0usize;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The transfers sent of the last entry sent anything of (its position, and each
    // transfer's hop count and digest): when that entry is read again because one of
    // its transfers changed while it waited, the others are not sent twice.
    let mut sent: (u64, Vec<(u32, [u8; 32])>) = (0, Vec::new());
    'pages: loop {
        if let Some(withdrawal) = serving.access.withdrawal() {
            serving.end(FeedEnd::Withdrawn(withdrawal)).await;
            return;
        }
        // A reload that changes this partner's policy replays its feed from the start.
        let now = engine.policy().partner_fingerprint(&partner.id);
        if now != fingerprint {
            fingerprint = now;
            resume = None;
            sent = (0, Vec::new());
            // Served from the start under the policy now in force (recorded as such).
            match engine.serving_cursor(&partner.id, 0) {
                Ok(c) => cursor = c,
                Err(error) => {
                    serving.end(FeedEnd::Engine(error)).await;
                    return;
                }
            }
        }
        let page = {
            let engine = engine.clone();
            let partner = partner.clone();
            let resumed = resume.as_ref().map(|r| (r.hops, r.transfer));
            tokio::task::spawn_blocking(move || {
                // The fingerprint of the policy the page is decided under.
                let policy = engine.policy();
                let decided_under = policy.partner_fingerprint(&partner.id);
                let transfers = Transfers {
                    digest: &digest_as_split,
                    resumed,
                };
                engine
                    .pull_page_under(&policy, &partner, cursor, PULL_PAGE, Some(&transfers))
                    .map(|page| (page, decided_under))
            })
            .await
        };
        let (page, decided_under) = match page {
            Ok(Ok(page)) => page,
            Ok(Err(error)) => {
                serving.end(FeedEnd::Engine(error)).await;
                return;
            }
            Err(e) => {
                serving.end(FeedEnd::Task(e.to_string())).await;
                return;
            }
        };
        // A page decided under another policy than the one the cursor was reached under
        // is not sent: the loop starts again (a replay, if the change holds).
        if decided_under != fingerprint {
            continue;
        }
        // When the page was decided: a bundle that waits for the partner to read is
        // decided again before it goes if the feed has moved since (a newer version, an
        // id that now withholds an object by rule 7) or the page is older than a
        // heartbeat (an item expired since).
        let read_at = tokio::time::Instant::now();
        let read_head = page.head;
        let embargo_until = page.embargo_until;
        let caught_up = page.cursor >= page.head || embargo_until.is_some();
        // The transfer offered for continuation is continued in the first entry the feed
        // sends anything of, if that entry holds it (as `Engine::pull_page_under`
        // records it); then the offer is spent.
        let continued = match page.bundles.first() {
            Some(first) => resume.take().and_then(|r| {
                page.bundles
                    .iter()
                    .take_while(|b| b.seq == first.seq)
                    .any(|b| b.hops == r.hops && digest_as_split(b.hops, &b.bundle) == r.transfer)
                    .then_some((first.seq, r))
            }),
            None => None,
        };
        for bundle in page.bundles {
            // What the bundle discloses, to decide it again while it waits.
            let mut decided = Decided {
                header_bytes: bundle.bundle.header_bytes.clone(),
                disclosed: bundle.bundle.disclosures.iter().map(|d| d.index).collect(),
                head: read_head,
                at: read_at,
            };
            match decided.still_allowed(engine, &partner.id, false).await {
                Ok(true) => {}
                Ok(false) => {
                    // Read again from this entry, decided as it stands now (its
                    // transfers already sent on this stream are not sent again).
                    cursor = bundle.seq.saturating_sub(1);
                    continue 'pages;
                }
                Err(end) => {
                    serving.end(end).await;
                    return;
                }
            }
            let mut parts = split(bundle);
            let (seq, hops, transfer) = parts.key();
            if sent.0 == seq && sent.1.contains(&(hops, transfer)) {
                // Sent before this entry was read again.
                continue;
            }
            let after = seq.saturating_sub(1);
            let mut skip = 0;
            if let Some((_, r)) = continued.as_ref().filter(|(entry, _)| *entry == seq) {
                if hops < r.hops {
                    // The partner had this one whole before the transfer it continues.
                    continue;
                }
                if hops == r.hops && transfer == r.transfer {
                    skip = r.next_part;
                }
            }
            // A checkpoint between every CHECKPOINT_TRANSFERS transfers and the next,
            // wherever the pages end: everything before this entry is sent or withheld.
            if unannounced >= CHECKPOINT_TRANSFERS {
                let checkpoint = FeedEvent::Checkpoint {
                    cursor: at(after, fingerprint),
                    caught_up: false,
                };
                if !serving.send(checkpoint, None).await {
                    return;
                }
                unannounced = 0;
            }
            // The parts the partner has are passed over unbuilt; then one part is
            // encoded at a time: the queue holds at most a few parts.
            parts.skip_to(skip);
            for (sent_parts, part) in parts.enumerate() {
                if sent_parts > 0 {
                    // A transfer cut short now is offered for continuation, and is sent
                    // whole, decided anew, on the next pull.
                    match decided.still_allowed(engine, &partner.id, true).await {
                        Ok(true) => {}
                        Ok(false) => {
                            serving.end(FeedEnd::Changed).await;
                            return;
                        }
                        Err(end) => {
                            serving.end(end).await;
                            return;
                        }
                    }
                }
                if !serving
                    .send(
                        FeedEvent::Part {
                            after: at(after, fingerprint),
                            part,
                        },
                        Some(decided_under),
                    )
                    .await
                {
                    return;
                }
            }
            unannounced += 1;
            if sent.0 != seq {
                sent = (seq, Vec::new());
            }
            sent.1.push((hops, transfer));
        }
        cursor = page.cursor;
        crate::telemetry::telemetry().served(
            partner.id.as_str(),
            cursor,
            page.head,
            crate::engine::now_ms(),
        );
        if !caught_up {
            continue;
        }
        if !announced || unannounced > 0 {
            let checkpoint = FeedEvent::Checkpoint {
                cursor: at(cursor, fingerprint),
                caught_up: true,
            };
            if !serving.send(checkpoint, None).await {
                return;
            }
            announced = true;
            unannounced = 0;
        }
        if !serving.follow {
            return;
        }
        // Tail: wait for the feed to move past the cursor (or, when an embargo holds
        // the next entry back, for the embargo to pass), the reader to go, or shutdown.
        let embargo = async move {
            match embargo_until {
                Some(until) => {
                    let wait = u64::try_from(until - crate::engine::now_ms()).unwrap_or(0);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(embargo);
        loop {
            if embargo_until.is_none() && *feed.borrow_and_update() > cursor {
                break;
            }
            if policy.has_changed().unwrap_or(false) {
                policy.mark_unchanged();
                break;
            }
            tokio::select! {
                _ = serving.shutdown.cancelled() => {
                    serving.end(FeedEnd::Shutdown).await;
                    return;
                }
                _ = serving.tx.closed() => return,
                withdrawal = serving.access.withdrawn() => {
                    serving.end(FeedEnd::Withdrawn(withdrawal)).await;
                    return;
                }
                changed = feed.changed() => if changed.is_err() { return },
                changed = policy.changed() => {
                    if changed.is_err() { return }
                    break;
                }
                _ = &mut embargo => break,
                _ = heartbeat.tick() => {
                    let checkpoint = FeedEvent::Checkpoint {
                        cursor: at(cursor, fingerprint),
                        caught_up: true,
                    };
                    if !serving.send(checkpoint, None).await {
                        return;
                    }
                }
            }
        }
    }
}
