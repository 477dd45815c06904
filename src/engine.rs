//! The node's core, between the service adapters and the store: publishing (sign,
//! verify, store, notify subscribers), accepting bundles from elsewhere (verify,
//! store), and reading through the sharing policy. No tonic types here.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::crypto::{
    BundleSigner, CertificateSource, SignError, SignerTrust, VerifiedBundle, VerifyError, verify,
};
use crate::model::{Distribution, Item, ItemId, NodeId, Partner};
use crate::policy::{Context, Decision, Policy};
use crate::store::{
    AcceptReport, ItemQuery, LedgerEntry, Page, Source, Store, StoreError, StoredItem,
};
use crate::wire;

/// Capacity of the subscription channel; a subscriber further behind is dropped.
pub const SUBSCRIPTION_BUFFER: usize = 16_384;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A bundle did not verify.
    #[error("bundle rejected: {0}")]
    Verify(#[from] VerifyError),
    /// A pulled bundle was refused by the inbound rules (sender, hops, recipients, TLP).
    #[error("bundle refused: {0}")]
    Refused(String),
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Most ledger records written in one batch.
const LEDGER_GROUP_MAX: usize = 1024;

/// How long the ledger writer gathers records before writing a group.
const LEDGER_GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A record to write, or (with `None`) a barrier that answers once everything handed
/// over before it is written.
type LedgerJob = (Option<LedgerEntry>, Option<std::sync::mpsc::SyncSender<()>>);

/// Records handed over and not yet taken by the writer.
#[derive(Default)]
struct LedgerQueue {
    jobs: Vec<LedgerJob>,
    /// A barrier is queued: someone waits, so the writer stops gathering.
    waiting: bool,
    /// No more jobs: the writer ends after the queued ones.
    closed: bool,
}

/// The queue and the writer's wake-up. Deliveries wake the writer only when the queue
/// was empty (the start of a group), when someone waits, or when a group is full, so
/// a busy node hands records over without a wake-up (a system call) per record.
#[derive(Default)]
struct LedgerShared {
    queue: std::sync::Mutex<LedgerQueue>,
    wake: std::sync::Condvar,
}

impl LedgerShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The disclosure ledger's writer: deliveries hand their record over before the data
/// is sent, and one thread writes records in groups, one store batch per group, so
/// serving never waits for the ledger. Records reach the store within moments and the
/// disk with the store's next flush (as everything else does). If a write ever fails,
/// every later delivery is refused: the node fails closed rather than deliver
/// unrecorded.
struct LedgerWriter {
    shared: Arc<LedgerShared>,
    failed: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LedgerWriter {
    fn start(store: Arc<dyn Store>) -> Self {
        let shared = Arc::new(LedgerShared::default());
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = failed.clone();
        let queue = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || Self::run(&queue, store.as_ref(), &flag))
            .ok();
        Self {
            shared,
            failed,
            thread,
        }
    }

    /// The writer thread: waits for a first record, gathers for a few milliseconds
    /// (larger groups cost the store far less per record; a barrier or a full group
    /// ends the gathering), writes the group in one batch, answers the barriers.
    fn run(shared: &LedgerShared, store: &dyn Store, failed: &std::sync::atomic::AtomicBool) {
        loop {
            let group = {
                let mut queue = shared.lock();
                while queue.jobs.is_empty() && !queue.closed {
                    queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
                }
                if queue.jobs.is_empty() {
                    return;
                }
                let deadline = std::time::Instant::now() + LEDGER_GATHER;
                while !queue.waiting && !queue.closed && queue.jobs.len() < LEDGER_GROUP_MAX {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    queue = shared
                        .wake
                        .wait_timeout(queue, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                queue.waiting = false;
                let take = queue.jobs.len().min(LEDGER_GROUP_MAX);
                let rest = queue.jobs.split_off(take);
                let group = std::mem::replace(&mut queue.jobs, rest);
                // A barrier left behind in the queue still ends the next gathering.
                queue.waiting = queue.jobs.iter().any(|(_, done)| done.is_some());
                group
            };
            let entries: Vec<LedgerEntry> = group.iter().filter_map(|(e, _)| e.clone()).collect();
            if !entries.is_empty() {
                if let Err(problem) = store.append_ledger_many(&entries) {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::error!(%problem, "disclosure ledger write failed; every further delivery is refused");
                }
            }
            for (_, done) in group {
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
        }
    }

    fn stopped() -> EngineError {
        EngineError::Task("the disclosure ledger is not writable; deliveries are refused".into())
    }

    /// Queues a job; wakes the writer when it has to act on it.
    fn push(&self, job: LedgerJob) -> Result<(), EngineError> {
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(Self::stopped());
        }
        let barrier = job.1.is_some();
        let was_empty = queue.jobs.is_empty();
        queue.jobs.push(job);
        queue.waiting |= barrier;
        let full = queue.jobs.len() >= LEDGER_GROUP_MAX;
        drop(queue);
        if was_empty || barrier || full {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Hands `entry` to the writer; refuses when the ledger has failed.
    fn append(&self, entry: LedgerEntry) -> Result<(), EngineError> {
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) || self.thread.is_none() {
            return Err(Self::stopped());
        }
        self.push((Some(entry), None))
    }

    /// Returns once every record handed over so far is in the store.
    fn sync(&self) -> Result<(), EngineError> {
        if self.thread.is_none() {
            return Err(Self::stopped());
        }
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.push((None, Some(done)))?;
        wait.recv().map_err(|_| Self::stopped())?;
        if self.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Self::stopped());
        }
        Ok(())
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        // Closing the queue ends the writer after the records already handed over.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One page of a pull: bundles (each redacted for the partner) and the cursor reached.
#[derive(Clone, Debug, Default)]
pub struct PullPage {
    /// The bundles to send, in feed order.
    pub bundles: Vec<PulledBundle>,
    /// Feed position reached (everything up to here was sent or withheld).
    pub cursor: u64,
    /// The feed head when the page was read.
    pub head: u64,
    /// The page stopped before an entry holding items still under the partner's embargo;
    /// they become visible at this time (ms), and the pull resumes from `cursor` then.
    pub embargo_until: Option<i64>,
}

/// A bundle to send in a pull, with the hop count at which this node holds its items.
#[derive(Clone, Debug)]
pub struct PulledBundle {
    /// Change-feed position.
    pub seq: u64,
    /// Transfers from the origin to this node for these items.
    pub hops: u32,
    /// The redacted bundle.
    pub bundle: wire::SignedBundle,
}

/// The result of publishing one bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    /// The bundle id.
    pub bundle_id: crate::model::BundleId,
    /// What the store did with it.
    pub report: AcceptReport,
}

/// The node's core. Cheap to share behind an `Arc`.
pub struct Engine {
    store: Arc<dyn Store>,
    ledger: LedgerWriter,
    policy: std::sync::RwLock<Arc<Policy>>,
    signer: BundleSigner,
    trust: Box<dyn SignerTrust + Send + Sync>,
    subscribers: broadcast::Sender<Arc<StoredItem>>,
    /// The change-feed head, for pull streams that follow it.
    feed_head: tokio::sync::watch::Sender<u64>,
    /// Bumped on every policy change, so following streams re-check their partner.
    policy_version: tokio::sync::watch::Sender<u64>,
}

struct StoreCertificates<'a>(&'a dyn Store);

impl CertificateSource for StoreCertificates<'_> {
    fn certificate(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        self.0.certificate(sha256).ok().flatten()
    }
}

impl Engine {
    /// An engine over `store`, signing as `signer`, checking signers with `trust`.
    /// The node's own certificate is cached so its bundles verify.
    pub fn new(
        store: Arc<dyn Store>,
        policy: Policy,
        signer: BundleSigner,
        own_certificate: &[u8],
        trust: Box<dyn SignerTrust + Send + Sync>,
    ) -> Result<Self, EngineError> {
        store.put_certificate(own_certificate)?;
        let (subscribers, _) = broadcast::channel(SUBSCRIPTION_BUFFER);
        let (feed_head, _) = tokio::sync::watch::channel(store.feed_head());
        let (policy_version, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            feed_head,
            policy_version,
            ledger: LedgerWriter::start(store.clone()),
            store,
            policy: std::sync::RwLock::new(Arc::new(policy)),
            signer,
            trust,
            subscribers,
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Signs `items` as one bundle of this node (the first half of publishing; it needs no
    /// store access and can run beside the store's writer).
    pub fn sign(
        &self,
        items: &[Item],
        distribution: &Distribution,
        now_ms: i64,
    ) -> Result<VerifiedBundle, EngineError> {
        Ok(self.signer.sign(items, distribution, now_ms)?)
    }

    /// Stores a bundle this node signed (the second half of publishing).
    pub fn store_own(
        &self,
        bundle: &VerifiedBundle,
        now_ms: i64,
    ) -> Result<PublishReceipt, EngineError> {
        let source = Source {
            received_from: self.signer.origin().clone(),
            hops: 0,
        };
        let report = self.store_verified(bundle, &source, now_ms)?;
        Ok(PublishReceipt {
            bundle_id: bundle.header().bundle_id.clone(),
            report,
        })
    }

    /// Verifies a bundle and stores what it discloses; newly stored items go to
    /// subscribers. Not durable until [`Engine::flush`].
    pub fn accept(
        &self,
        bundle: &wire::SignedBundle,
        source: &Source,
        now_ms: i64,
    ) -> Result<AcceptReport, EngineError> {
        let verified = verify(
            bundle,
            &StoreCertificates(self.store.as_ref()),
            self.trust.as_ref(),
            now_ms,
        )?;
        self.store_verified(&verified, source, now_ms)
    }

    fn store_verified(
        &self,
        bundle: &VerifiedBundle,
        source: &Source,
        now_ms: i64,
    ) -> Result<AcceptReport, EngineError> {
        let report = self.store.accept(bundle, source, now_ms)?;
        if let Some(seq) = report.feed_seq {
            self.feed_head.send_replace(seq);
        }
        let header = bundle.header();
        for (index, reason) in &report.rejected {
            tracing::warn!(bundle = %header.bundle_id, origin = %header.origin, index, ?reason, "item rejected");
        }
        if self.subscribers.receiver_count() > 0 {
            let items = bundle.items();
            for index in &report.stored {
                let Ok(at) = items.binary_search_by_key(index, |v| v.index) else {
                    continue;
                };
                let _ = self.subscribers.send(Arc::new(StoredItem {
                    item: items[at].item.clone(),
                    bundle_id: header.bundle_id.clone(),
                    index: *index,
                    origin: header.origin.clone(),
                    received_from: source.received_from.clone(),
                    hops: source.hops,
                    accepted_ms: now_ms,
                }));
            }
        }
        Ok(report)
    }

    /// Returns once every disclosure-ledger record handed over so far is in the store
    /// (not yet flushed).
    pub fn sync_ledger(&self) -> Result<(), EngineError> {
        self.ledger.sync()
    }

    /// Makes everything accepted so far durable.
    pub async fn flush(&self) -> Result<(), EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| EngineError::Task(e.to_string()))??;
        Ok(())
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts a new policy in force; the next decision on every path uses it.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.policy_version.send_modify(|v| *v += 1);
    }

    /// The policy decision for a stored item and a client-side path (query, get,
    /// subscribe, export).
    pub fn decide_stored(
        policy: &Policy,
        partner: &NodeId,
        stored: &StoredItem,
        now_ms: i64,
        include_expired: bool,
    ) -> Decision {
        policy.decide(
            partner,
            &stored.item,
            &Context {
                origin: &stored.origin,
                hops: stored.hops,
                distribution: None,
                accepted_ms: stored.accepted_ms,
                now_ms,
                // The store returns only the latest version of each id.
                latest: true,
                include_expired,
            },
        )
    }

    /// The latest version of `id`, if `partner` may see it.
    pub fn get(&self, partner: &Partner, id: &ItemId) -> Result<Option<StoredItem>, EngineError> {
        let policy = self.policy();
        let now = now_ms();
        let found = self
            .store
            .get(id)?
            .filter(|stored| Self::decide_stored(&policy, &partner.id, stored, now, true).allow);
        if let Some(stored) = &found {
            self.record_delivery(&partner.id, "get", [stored])?;
        }
        Ok(found)
    }

    /// The item `id` and the decision for `partner`, for `policy explain`: the same
    /// decision the partner's paths make (for a peer node, with the bundle's signed
    /// distribution, as federation pull will).
    pub fn explain(
        &self,
        partner: &NodeId,
        id: &ItemId,
    ) -> Result<Option<(StoredItem, Decision)>, EngineError> {
        let policy = self.policy();
        let Some(stored) = self.store.get(id)? else {
            return Ok(None);
        };
        let distribution = match self.store.bundle_header(&stored.bundle_id)? {
            Some(bytes) => Some(crate::crypto::parse_header(&bytes)?.0.distribution),
            None => None,
        };
        let decision = policy.decide(
            partner,
            &stored.item,
            &Context {
                origin: &stored.origin,
                hops: stored.hops,
                distribution: distribution.as_ref(),
                accepted_ms: stored.accepted_ms,
                now_ms: now_ms(),
                latest: true,
                include_expired: false,
            },
        );
        Ok(Some((stored, decision)))
    }

    /// A page of items matching `query` that `partner` may see.
    pub fn query(
        &self,
        partner: &Partner,
        query: &ItemQuery,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Page, EngineError> {
        let policy = self.policy();
        let visible = |stored: &StoredItem| {
            Self::decide_stored(&policy, &partner.id, stored, now_ms, query.include_expired).allow
        };
        Ok(self.store.query(query, after, limit, now_ms, &visible)?)
    }

    /// [`Engine::query`] for a client path: the page is recorded in the disclosure
    /// ledger as one delivery on `path` before it is returned.
    pub fn query_delivered(
        &self,
        partner: &Partner,
        path: &str,
        query: &ItemQuery,
        after: Option<&[u8]>,
        limit: usize,
        now_ms: i64,
    ) -> Result<Page, EngineError> {
        let page = self.query(partner, query, after, limit, now_ms)?;
        self.record_delivery(&partner.id, path, &page.items)?;
        Ok(page)
    }

    /// Appends one disclosure-ledger record for `items` delivered to `partner` on `path`
    /// (one record per delivered message). Called before the message is sent, so nothing
    /// leaves unrecorded.
    pub fn record_delivery<'a>(
        &self,
        partner: &NodeId,
        path: &str,
        items: impl IntoIterator<Item = &'a StoredItem>,
    ) -> Result<(), EngineError> {
        let mut by_bundle: std::collections::BTreeMap<&crate::model::BundleId, Vec<u32>> =
            std::collections::BTreeMap::new();
        for stored in items {
            by_bundle
                .entry(&stored.bundle_id)
                .or_default()
                .push(stored.index);
        }
        if by_bundle.is_empty() {
            return Ok(());
        }
        let deliveries = by_bundle
            .into_iter()
            .map(|(bundle, mut indices)| {
                indices.sort_unstable();
                indices.dedup();
                (bundle.clone(), indices)
            })
            .collect();
        self.ledger.append(LedgerEntry {
            time_ms: now_ms(),
            partner: partner.clone(),
            path: path.to_owned(),
            deliveries,
            policy_hash: self.policy().hash(),
        })
    }

    /// Watches policy changes (for streams that must re-check their partner's policy).
    pub fn watch_policy(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_version.subscribe()
    }

    /// Watches the change-feed head (for pull streams that follow it).
    pub fn watch_feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_head.subscribe()
    }

    /// One page of this node's change feed as `partner` may see it (DESIGN 6.1 and 7):
    /// after `after`, at most `limit` feed entries read. Each bundle goes out with only
    /// the items the policy allows (the rest stay withheld behind their digests), one
    /// message per hop count, and each message is recorded in the disclosure ledger.
    pub fn pull_page(
        &self,
        partner: &Partner,
        after: u64,
        limit: usize,
    ) -> Result<PullPage, EngineError> {
        let policy = self.policy();
        let now = now_ms();
        let entries = self.store.feed(after, limit)?;
        let mut page = PullPage {
            bundles: Vec::new(),
            cursor: entries.last().map_or(after, |(seq, _)| *seq),
            head: self.store.feed_head(),
            embargo_until: None,
        };
        let embargo_ms = policy.partner(&partner.id).map_or(0, |p| p.embargo_ms);
        let mut previous = after;
        for (seq, bundle_id) in entries {
            let Some(held) = self.store.held_bundle(&bundle_id)? else {
                continue;
            };
            let (header, _) = crate::crypto::parse_header(&held.header_bytes)?;
            let mut by_hops: std::collections::BTreeMap<u32, Vec<&crate::store::HeldItem>> =
                std::collections::BTreeMap::new();
            for item in &held.items {
                let context = |now_ms| Context {
                    origin: &header.origin,
                    hops: item.stored.hops,
                    distribution: Some(&header.distribution),
                    accepted_ms: item.stored.accepted_ms,
                    now_ms,
                    latest: true,
                    include_expired: false,
                };
                let decision = policy.decide(&partner.id, &item.stored.item, &context(now));
                if decision.allow {
                    by_hops.entry(item.stored.hops).or_default().push(item);
                } else if embargo_ms > 0 && now - item.stored.accepted_ms < embargo_ms {
                    // Withheld now; would it be allowed once the embargo has passed?
                    let visible_at = item.stored.accepted_ms.saturating_add(embargo_ms);
                    let later = policy.decide(&partner.id, &item.stored.item, &context(visible_at));
                    if later.allow {
                        page.embargo_until =
                            Some(page.embargo_until.map_or(visible_at, |t| t.min(visible_at)));
                    }
                }
            }
            if page.embargo_until.is_some() {
                // Stop before this entry: the cursor must not pass items the partner may
                // see later, so the whole entry is sent once its embargo has passed.
                page.cursor = previous;
                break;
            }
            previous = seq;
            for (hops, items) in by_hops {
                self.record_delivery(&partner.id, "pull", items.iter().map(|i| &i.stored))?;
                page.bundles.push(PulledBundle {
                    seq,
                    hops,
                    bundle: held.signed(items.iter().copied()),
                });
            }
        }
        Ok(page)
    }

    /// The cursor to serve `partner` from: `requested`, or 0 when its policy changed
    /// since it was last served (a widened policy then delivers what it may now see;
    /// re-sending what it has is harmless, since disclosures merge) or when `requested`
    /// is beyond any position this feed has handed out. Records the policy it is now
    /// served under.
    pub fn serving_cursor(&self, partner: &NodeId, requested: u64) -> Result<u64, EngineError> {
        // A cursor beyond any position this feed has handed out was kept from another
        // life of this node's data directory (restored, or started afresh): what this
        // feed holds now has not been seen under these numbers, so all of it is served.
        let limit = self.store.feed_limit();
        let requested = if requested > limit {
            tracing::warn!(%partner, requested, limit, "partner's cursor is beyond this feed: serving it from the start");
            0
        } else {
            requested
        };
        let fingerprint = self.policy().partner_fingerprint(partner);
        let served = self.store.served_policy(partner)?;
        if served == Some(fingerprint) {
            return Ok(requested);
        }
        self.store.set_served_policy(partner, &fingerprint)?;
        if served.is_some() && requested > 0 {
            tracing::info!(%partner, "policy for this partner changed: replaying its feed from the start");
            return Ok(0);
        }
        Ok(requested)
    }

    /// Caches a signer certificate offered by a peer, if it is no larger than 16 KiB,
    /// chains to this node's trust anchors (as of `at_ms`, not revoked) and names `origin`.
    pub fn cache_signer_certificate(
        &self,
        der: &[u8],
        origin: &NodeId,
        at_ms: i64,
    ) -> Result<(), EngineError> {
        if der.len() > 16 * 1024 {
            return Err(EngineError::Refused(
                "certificate larger than 16 KiB".into(),
            ));
        }
        let id = self
            .trust
            .verify_signer(der, at_ms)
            .map_err(|e| EngineError::Refused(e.to_string()))?;
        if &id != origin {
            return Err(EngineError::Refused(format!(
                "certificate is for {id}, not for the origin {origin}"
            )));
        }
        self.store.put_certificate(der)?;
        Ok(())
    }

    /// Accepts a bundle pulled from `peer`, which holds its items at `sender_hops`:
    /// the sender must be allowed to send it (DESIGN 6.1 and 7), then it is verified and
    /// stored like any bundle. A refused bundle is logged with the sender and counted by
    /// the caller; nothing of it is stored or forwarded.
    pub fn accept_pulled(
        &self,
        peer: &NodeId,
        bundle: &wire::SignedBundle,
        sender_hops: u32,
        now_ms: i64,
    ) -> Result<AcceptReport, EngineError> {
        let refuse = |why: String| Err(EngineError::Refused(why));
        let policy = self.policy();
        match policy.partner(peer) {
            Some(p)
                if p.kind == crate::model::PartnerKind::Node
                    && p.role == crate::model::Role::Peer => {}
            _ => return refuse(format!("{peer} is not a peer this node accepts data from")),
        }
        let (header, _) = crate::crypto::parse_header(&bundle.header_bytes)?;
        // Data originated by a partner this node configures as a client or a read-only
        // partner is never accepted, whichever node forwards it.
        if let Some(o) = policy.partner(&header.origin) {
            if o.kind != crate::model::PartnerKind::Node || o.role != crate::model::Role::Peer {
                return refuse(format!(
                    "{} is configured here as {}, whose data is not accepted",
                    header.origin, o.role
                ));
            }
        }
        if (header.origin == *peer) != (sender_hops == 0) {
            return refuse(format!(
                "{peer} claims hop {sender_hops} for a bundle whose origin is {}",
                header.origin
            ));
        }
        let hops = sender_hops.saturating_add(1);
        if header.distribution.max_hops.is_some_and(|max| hops > max) {
            return refuse(format!(
                "bundle {} would be at hop {hops}, beyond its max_hops",
                header.bundle_id
            ));
        }
        if !header.distribution.admits(policy.node()) {
            return refuse(format!(
                "this node is not in the recipient list of bundle {}",
                header.bundle_id
            ));
        }
        let verified = verify(
            bundle,
            &StoreCertificates(self.store.as_ref()),
            self.trust.as_ref(),
            now_ms,
        )?;
        if header.origin != *peer {
            if let Some(v) = verified
                .items()
                .iter()
                .find(|v| v.item.tlp > crate::model::Tlp::Green)
            {
                return refuse(format!(
                    "{peer} forwarded a {} item of {}: only GREEN and CLEAR travel past the origin's partners",
                    v.item.tlp, header.origin
                ));
            }
        }
        self.store_verified(
            &verified,
            &Source {
                received_from: peer.clone(),
                hops,
            },
            now_ms,
        )
    }

    /// Verifies a held bundle again from the bytes in the store: the origin's signature
    /// over the exact header bytes, the signer's chain to this node's trust anchors and
    /// CRLs, and every held item against its digest. Accepting a bundle verified it
    /// already; this is for audits (and the demo), and trusts nothing recorded then.
    pub fn verify_held(
        &self,
        id: &crate::model::BundleId,
    ) -> Result<Option<crate::crypto::VerifiedBundle>, EngineError> {
        let Some(held) = self.store.held_bundle(id)? else {
            return Ok(None);
        };
        Ok(Some(verify(
            &held.signed(&held.items),
            &StoreCertificates(self.store.as_ref()),
            self.trust.as_ref(),
            now_ms(),
        )?))
    }

    /// Items accepted from now on (every item: the caller filters through policy).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoredItem>> {
        self.subscribers.subscribe()
    }
}
