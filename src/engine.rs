//! The node's core, between the service adapters and the store: publishing (sign,
//! verify, store, notify subscribers), accepting bundles from elsewhere (verify,
//! store), and reading through the sharing policy. No tonic types here.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use crate::crypto::{
    BundleSigner, CertificateSource, SignError, SignerTrust, VerifiedBundle, VerifyError, verify,
};
use crate::limits::{Budgets, Held, Limit, Limits, Rates, Slot, Slots};
use crate::model::{Distribution, Item, ItemId, ItemKind, NodeId, Partner};
use crate::policy::{
    Arrival, Context, Decision, PageTokenError, PageTokens, Policy, Refusal, TokenScope,
};
pub use crate::store::ledger::writer::LedgerTicket;
use crate::store::ledger::writer::{LedgerRefused, LedgerWriter};
use crate::store::{
    AcceptReport, ItemQuery, ItemStore, LedgerEntry, LocalState, Page, PageLimit, Source, Store,
    StoreError, StoredItem,
};
use crate::wire;

/// What a new item waiting for a subscriber counts against its partner's
/// `limits.unsent_answer_bytes` beyond its encoded bytes: the stored item's other
/// fields (ids, origin, times) and its place in the subscriber's queue.
pub const SUBSCRIBED_ITEM_OVERHEAD: usize = 128;

/// The store as policy sees what a node holds ([`crate::policy::Held`]): the latest
/// version under an id and its bundle's signed distribution. A store error answers
/// "not held", so an object that references it is withheld (fail closed).
struct StoreHeld<'a>(&'a dyn ItemStore);

impl crate::policy::Held for StoreHeld<'_> {
    fn held(&self, id: &ItemId, with_distribution: bool) -> Option<crate::policy::HeldItem> {
        self.lookup(id, with_distribution).ok().flatten()
    }

    /// A store that fails to read an item, or the header of the bundle it is held in,
    /// cannot say: whatever references it is withheld rather than judged as if the item
    /// were absent.
    fn lookup(
        &self,
        id: &ItemId,
        with_distribution: bool,
    ) -> Result<Option<crate::policy::HeldItem>, crate::policy::Unreadable> {
        use crate::policy::Unreadable;
        // The object held under the UUID, whatever its type: policy compares the type
        // where it matters (a relationship's ends).
        let Some(stored) = self.0.get_any_type(id).map_err(|_| Unreadable)? else {
            return Ok(None);
        };
        let distribution = if with_distribution {
            let header = self
                .0
                .bundle_header(&stored.bundle_id)
                .map_err(|_| Unreadable)?
                .ok_or(Unreadable)?;
            Some(
                crate::crypto::parse_header(&header)
                    .map_err(|_| Unreadable)?
                    .0
                    .distribution,
            )
        } else {
            None
        };
        Ok(Some(crate::policy::HeldItem {
            item: stored.item,
            origin: stored.origin,
            hops: stored.hops,
            distribution,
            accepted_ms: stored.accepted_ms,
        }))
    }
}

pub use crate::util::now_ms;

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
    /// A pulled bundle was refused by the inbound rules (sender, hops, recipients, TLP,
    /// time).
    #[error("bundle refused: {0}")]
    Refused(#[from] Refusal),
    /// Items offered for publishing break a rule (a revocation that does not carry the
    /// revoked item's marking, a time beyond the clock skew, ...).
    #[error("{0}")]
    Unpublishable(String),
    /// A page token this node did not issue to this caller for this query.
    #[error(transparent)]
    PageToken(#[from] PageTokenError),
    /// The partner has as many streams open as it may.
    #[error(
        "{partner} has {limit} streams open already, the most one partner may have; close one first"
    )]
    TooManyStreams {
        /// The partner.
        partner: NodeId,
        /// The limit.
        limit: usize,
    },
    /// A partner has its limit of Publish calls open.
    #[error(
        "{partner} has {limit} publish calls open already, the most one partner may have; wait for one to finish"
    )]
    TooManyPublishes {
        /// The partner.
        partner: NodeId,
        /// The limit.
        limit: usize,
    },
    /// A partner has as many bytes of answers waiting to be sent as it may
    /// (`limits.unsent_answer_bytes`).
    #[error(
        "{partner} has {held} bytes of answers not yet read, and this one ({bytes} bytes) would pass {limit} (limits.unsent_answer_bytes); read the answers already asked for first"
    )]
    TooManyUnsentAnswers {
        /// The partner.
        partner: NodeId,
        /// Bytes it holds now.
        held: usize,
        /// Bytes of the refused answer.
        bytes: usize,
        /// The budget.
        limit: usize,
    },
    /// A pulled bundle brings more bytes of items than this node holds for one
    /// transfer (`limits.pull_transfer_bytes`).
    #[error(
        "bundle refused: it brings more than {budget} bytes of items, the most this node holds for one transfer (limits.pull_transfer_bytes)"
    )]
    TransferTooLarge {
        /// The budget.
        budget: usize,
    },
    /// A signer certificate offered by a peer was not cached.
    #[error("signer certificate refused: {0}")]
    Certificate(String),
    /// A blocking task failed.
    #[error("internal task failed: {0}")]
    Task(String),
    /// A delivery was refused because its disclosure-ledger record cannot be
    /// written (nothing leaves unrecorded).
    #[error("refused: the delivery cannot be recorded in the disclosure ledger ({reason})")]
    LedgerUnavailable {
        /// The store's disk (or quota) is full.
        disk_full: bool,
        /// Why.
        reason: String,
    },
}

impl From<LedgerRefused> for EngineError {
    fn from(refused: LedgerRefused) -> Self {
        EngineError::LedgerUnavailable {
            disk_full: refused.disk_full,
            reason: refused.reason,
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

/// A bundle pulled from a peer, with its header parsed from its own bytes, once: the
/// puller reads the signer's fingerprint from it and [`Engine::accept_pulled`] applies
/// the inbound rules to it. Only [`InboundBundle::parse`] makes one, so the header is
/// always the bundle's.
#[derive(Clone, Debug)]
pub struct InboundBundle {
    bundle: wire::SignedBundle,
    header: crate::crypto::BundleHeader,
}

impl InboundBundle {
    /// Parses the bundle's header; an error is the one verification would report.
    pub fn parse(bundle: wire::SignedBundle) -> Result<Self, VerifyError> {
        let (header, _) = crate::crypto::parse_header(&bundle.header_bytes)?;
        Ok(Self { bundle, header })
    }

    /// The parsed header.
    pub fn header(&self) -> &crate::crypto::BundleHeader {
        &self.header
    }

    /// The bundle as received.
    pub fn bundle(&self) -> &wire::SignedBundle {
        &self.bundle
    }
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

/// How the serving side names the transfers of a pull page (the split into parts is
/// the caller's, so is the digest), and the transfer the partner holds in part and
/// asks to continue, if any.
pub struct Transfers<'a> {
    /// The digest of the transfer of a redacted bundle at a hop count.
    pub digest: &'a (dyn Fn(u32, &wire::SignedBundle) -> [u8; 32] + Sync),
    /// The transfer to continue: its hop count and digest. It is continued in the first
    /// feed entry the page sends anything of, if that entry holds it (whatever lies
    /// between the cursor and that entry, withheld or not).
    pub resumed: Option<(u32, [u8; 32])>,
}

/// How a pull page records one of its bundles in the ledger.
enum Recording {
    /// Not at all: the partner had it whole before the transfer it continues, and it is
    /// not sent again.
    NotSent,
    /// Not again: the transfer continued, recorded in full when it was first sent.
    Recorded,
    /// Recorded now, and remembered under this key if it has one.
    Now(Option<[u8; 32]>),
}

impl Transfers<'_> {
    fn recording(
        &self,
        engine: &Engine,
        partner: &NodeId,
        fingerprint: &[u8; 32],
        continued: bool,
        hops: u32,
        bundle: &wire::SignedBundle,
    ) -> Recording {
        let digest = (self.digest)(hops, bundle);
        let key = recorded_key(&digest, fingerprint);
        match self.resumed {
            Some((resumed_hops, _)) if continued && hops < resumed_hops => Recording::NotSent,
            Some((resumed_hops, transfer))
                if continued
                    && hops == resumed_hops
                    && digest == transfer
                    && engine.transfer_recorded(partner, &key) =>
            {
                Recording::Recorded
            }
            _ => Recording::Now(Some(key)),
        }
    }
}

/// Transfers remembered as recorded, per partner: more than a pull page holds.
pub const RECORDED_TRANSFERS: usize = 4096;

/// Partners whose recorded transfers are remembered at once.
const RECORDED_TRANSFER_PARTNERS: usize = 4096;

/// What names a recorded transfer: its digest under the partner's policy fingerprint,
/// so a transfer sent again under another policy is recorded again.
fn recorded_key(transfer: &[u8; 32], fingerprint: &[u8; 32]) -> [u8; 32] {
    let mut data = Vec::with_capacity(96);
    data.extend_from_slice(b"entente/recorded-transfer/v1\0");
    data.extend_from_slice(transfer);
    data.extend_from_slice(fingerprint);
    crate::crypto::sha256(&data)
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
    /// The open subscriptions, each with its own queue of new items.
    subscribers: Mutex<Vec<Weak<Subscriber>>>,
    /// Per partner, the transfers of its pull pages recorded in the ledger lately, so
    /// that a resumed transfer is not recorded twice.
    recorded_transfers: Mutex<std::collections::HashMap<NodeId, VecDeque<[u8; 32]>>>,
    /// What `Engine::listed_since` last found per client (its policy fingerprint and
    /// since when it applies), so the store is read only after a change; held while a
    /// client's listing time is checked and recorded.
    listed_since: Mutex<std::collections::HashMap<NodeId, ([u8; 32], i64)>>,
    /// The id of an item held here that a lookup by id found lately: a lookup of an id
    /// not held reads and judges it in its place ([`Engine::as_if_held`]).
    decoy: Mutex<Option<ItemId>>,
    /// The change-feed head, for pull streams that follow it.
    feed_head: tokio::sync::watch::Sender<u64>,
    /// Bumped on every policy change, so following streams re-check their partner.
    policy_version: tokio::sync::watch::Sender<u64>,
    /// Seals page cursors before they leave the node.
    tokens: PageTokens,
    /// Streams (Subscribe, Export, Pull) open per partner.
    streams: Slots<NodeId>,
    /// Publish calls open per partner.
    publishes: Slots<NodeId>,
    /// Items published per second per partner.
    publish_rate: Rates<NodeId>,
    /// How long a stream waits for its reader.
    slow_reader_timeout: std::time::Duration,
    /// The limits in force, as configured.
    limits: Limits,
    /// Bytes of answers each partner has waiting to be sent.
    answers: Budgets<NodeId>,
}

/// Most streams (`Subscribe`, `Export`, `Pull`) one partner may have open at once, by
/// default (`limits.streams_per_partner`).
pub const MAX_STREAMS_PER_PARTNER: usize = crate::limits::DEFAULT_STREAMS_PER_PARTNER;

/// One open stream (or Publish call) of a partner, counted until dropped.
pub type StreamSlot = Slot<NodeId>;

/// The fewest bytes a scanned page is given of its partner's answer budget; with less
/// left, the call is refused.
pub const LEAST_PAGE_BYTES: usize = 64 * 1024;

/// The bytes of one answer counted against its partner's
/// `limits.unsent_answer_bytes` until dropped: the transport keeps it until the
/// answer has been sent.
pub type AnswerHold = Held<NodeId>;

/// What serving a page discloses, decided and not yet recorded: the items served, and
/// the policy and store state that decided them.
#[derive(Debug)]
pub struct Delivery {
    items: Vec<(crate::model::BundleId, u32)>,
    policy: Arc<Policy>,
    feed_head: u64,
    numbering: u64,
    partner: NodeId,
    path: String,
}

/// A query page and what it holds of its partner's answer budget.
pub struct Answer {
    /// The page.
    pub page: Page,
    /// Its bytes, counted until the answer is sent.
    pub hold: AnswerHold,
}

struct StoreCertificates<'a>(&'a dyn LocalState);

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
        let (feed_head, _) = tokio::sync::watch::channel(store.feed_head());
        let (policy_version, _) = tokio::sync::watch::channel(0);
        Ok(Self {
            feed_head,
            policy_version,
            tokens: PageTokens::new()?,
            streams: Slots::new(MAX_STREAMS_PER_PARTNER),
            publishes: Slots::new(crate::limits::DEFAULT_PUBLISHES_PER_PARTNER),
            publish_rate: Rates::new(crate::limits::DEFAULT_PUBLISH_ITEMS_PER_SECOND),
            slow_reader_timeout: crate::limits::DEFAULT_SLOW_READER_TIMEOUT,
            limits: Limits::default(),
            answers: Budgets::new(crate::limits::DEFAULT_UNSENT_ANSWER_BYTES),
            ledger: LedgerWriter::start(store.clone()),
            store,
            policy: std::sync::RwLock::new(Arc::new(policy)),
            signer,
            trust,
            subscribers: Mutex::default(),
            recorded_transfers: Mutex::default(),
            listed_since: Mutex::default(),
            decoy: Mutex::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Signs `items`, published by `publisher`, as one bundle of this node (the first half
    /// of publishing; it needs no store write and can run beside the store's writer).
    /// The distribution is the one [`Engine::distribution_for`] gives for `requested`:
    /// a writer that names no recipients changes nobody's access to what it replaces.
    /// A new version of an item this node holds that keeps no `created` is signed with
    /// the `created` of the version it replaces (`Engine::created_kept`).
    pub fn sign(
        &self,
        publisher: &Partner,
        items: &[Item],
        requested: &Distribution,
        now_ms: i64,
    ) -> Result<VerifiedBundle, EngineError> {
        let kept = self.created_kept(items)?;
        let completed: Vec<Item>;
        let items = if kept.is_empty() {
            items
        } else {
            completed = with_replaced(items.to_vec(), kept);
            &completed
        };
        let distribution = self.distribution_for(publisher, items, requested, now_ms)?;
        Ok(self.signer.sign(items, &distribution, now_ms)?)
    }

    /// The items of `items` that are new versions of an id this node holds (or that an
    /// earlier item of the bundle gives) and keep no `created`, each with the `created`
    /// of the version it replaces (`interop::created_of`: its kept `created`, or its
    /// version), by place. STIX 2.1 says `created` does not change between versions, and
    /// the versions this node builds itself (a list line or CSV row published again, a
    /// revocation, an `Intel.Publish` draft) carry none. Only versions of this node's
    /// own items are completed (no other may be written here), and an item the property
    /// would take past the size allowed is left as it is.
    fn created_kept(&self, items: &[Item]) -> Result<Vec<(usize, Item)>, EngineError> {
        let own = self.signer.origin();
        let mut kept: Vec<(usize, Item)> = Vec::new();
        // The last item of each id so far in the bundle, by its place.
        let mut last_of: HashMap<&ItemId, usize> = HashMap::new();
        for (at, item) in items.iter().enumerate() {
            let before = last_of.insert(&item.id, at);
            let Some(properties) = item_properties(item) else {
                continue;
            };
            if properties.has("created") {
                continue;
            }
            let created = match before {
                Some(before) => {
                    let earlier = kept
                        .iter()
                        .rev()
                        .find(|(place, _)| *place == before)
                        .map_or(&items[before], |(_, item)| item);
                    // A later version takes the earlier one's `created`; a copy of the
                    // same version (a line given twice) only the `created` the earlier
                    // copy carries, so that the two stay one and the same.
                    let carries = item_properties(earlier).is_some_and(|p| p.has("created"));
                    if item.modified_ms > earlier.modified_ms
                        || (item.modified_ms == earlier.modified_ms && carries)
                    {
                        crate::interop::created_of(earlier)
                    } else {
                        continue;
                    }
                }
                // For a later version; and for the version held sent again, the
                // `created` it was stored with, if any, so that it stays a duplicate. An
                // older one is left as written (refused as older).
                None => match self.store.get(&item.id)? {
                    Some(held)
                        if &held.origin == own && item.modified_ms > held.item.modified_ms =>
                    {
                        crate::interop::created_of(&held.item)
                    }
                    Some(held)
                        if &held.origin == own
                            && item.modified_ms == held.item.modified_ms
                            && item_properties(&held.item).is_some_and(|p| p.has("created")) =>
                    {
                        crate::interop::created_of(&held.item)
                    }
                    _ => continue,
                },
            };
            let mut map = properties.to_map();
            map.insert("created".into(), serde_json::Value::String(created));
            let holder = match item.kind {
                ItemKind::Context(_) => crate::model::Holder::Context,
                _ => crate::model::Holder::Indicator,
            };
            let Ok(completed) = crate::model::StixProperties::keep_for(holder, &map) else {
                continue;
            };
            let mut item = item.clone();
            if let Some(properties) = item_properties_mut(&mut item) {
                *properties = completed;
            }
            kept.push((at, item));
        }
        Ok(kept)
    }

    /// [`Engine::sign`] for a writer that cannot name a distribution (a TAXII POST).
    ///
    /// The items go into the bundle without being copied: once they are signed, `items`
    /// is left empty; when they are refused, it is left as it was, but for the `created`
    /// a new version keeps from the version it replaces (see [`Engine::sign`]).
    pub fn sign_keeping_distribution(
        &self,
        publisher: &Partner,
        items: &mut Vec<Item>,
        now_ms: i64,
    ) -> Result<VerifiedBundle, EngineError> {
        for (at, item) in self.created_kept(items)? {
            items[at] = item;
        }
        let distribution =
            self.distribution_for(publisher, items, &Distribution::default(), now_ms)?;
        Ok(self
            .signer
            .sign_owned(std::mem::take(items), &distribution, now_ms)?)
    }

    /// The distribution to sign `items` under, for a writer that asked for `requested`.
    /// The items must pass [`Engine::check_publishable`], which narrows a revocation's to
    /// its indicator's.
    ///
    /// A writer that names recipients chooses who may hold the bundle. One that names
    /// none (every TAXII POST; a `Publish` without recipients or groups; a feed) keeps
    /// the access of what it replaces: a new version of an item this node published goes
    /// no further than the version it replaces went, as a revocation does. A bundle of
    /// several items of which one would narrow what the others get is refused, so that
    /// the caller signs each alone. A new version of an item of this node's that a
    /// compaction dropped as expired is refused: the distribution it had is no longer
    /// known.
    pub fn distribution_for(
        &self,
        publisher: &Partner,
        items: &[Item],
        requested: &Distribution,
        now_ms: i64,
    ) -> Result<Distribution, EngineError> {
        let mut distribution = self.check_publishable(publisher, items, requested, now_ms)?;
        let naming = !requested.recipients.is_empty();
        let policy = self.policy();
        // Ids seen earlier in the bundle: a later version of one replaces that, not
        // what is held.
        let mut seen: HashSet<&ItemId> = HashSet::with_capacity(items.len());
        // The distribution of each held bundle read so far: new versions of items held
        // in one large bundle read and parse its header once, not once per item.
        let mut replaced_of: HashMap<crate::model::BundleId, Distribution> = HashMap::new();
        for (at, item) in items.iter().enumerate() {
            if !seen.insert(&item.id) {
                continue;
            }
            let held = self.store.get(&item.id)?;
            // A writer of this node giving an older version than the one held meant a
            // change (its clock behind the first writer's, or the version held dated
            // ahead): refused with both times rather than passed over as the store
            // passes over a stale copy from a peer.
            if let Some(held) = held.as_ref().filter(|h| &h.origin == self.signer.origin()) {
                // An older version sent again as held (a TAXII client sending an
                // object's history) is a duplicate, as before, for a writer that sees
                // every version. Any other writer gets the same refusal whatever it
                // sends, so that a guess at an older version withheld from it is not
                // told apart from a wrong one.
                let sent_again = || -> Result<bool, EngineError> {
                    Ok(self.sees_everything(&publisher.id)
                        && self
                            .store
                            .versions(&item.id, Self::MAX_VERSIONS)?
                            .iter()
                            .any(|version| {
                                version.item.modified_ms == item.modified_ms
                                    && !crate::store::differs_for_sharing(&version.item, item)
                            }))
                };
                if item.modified_ms < held.item.modified_ms && !sent_again()? {
                    let time =
                        |ms: i64| crate::util::rfc3339_ms(ms).unwrap_or_else(|| ms.to_string());
                    return Err(EngineError::Unpublishable(format!(
                        "item {at}: a newer version of {} is held (modified {}; this one {}): a change needs a later modified time{}",
                        item.id,
                        time(held.item.modified_ms),
                        time(item.modified_ms),
                        if held.item.modified_ms > now_ms {
                            "; the version held is dated ahead of this node's clock, so wait until the clock passes it"
                        } else {
                            ""
                        }
                    )));
                }
            }
            if matches!(item.kind, ItemKind::Revocation(_)) {
                continue;
            }
            let Some(held) = held else {
                if naming {
                    continue;
                }
                // Fail closed: a version of this node's own that a compaction dropped
                // as expired took its distribution with it, and the new version would
                // go to every partner. A writer whose policy withholds anything is
                // answered as for an id withheld from it.
                let own = self.signer.origin();
                if self.store.dropped_origin(&item.id)?.as_deref() == Some(own.as_str()) {
                    let why = if self.sees_everything(&publisher.id) {
                        format!(
                            "an earlier version of {} was dropped as expired, and its recipients with it; publish it naming its recipients",
                            item.id
                        )
                    } else {
                        format!("{} cannot be written by {}", item.id, publisher.id)
                    };
                    return Err(EngineError::Unpublishable(format!("item {at}: {why}")));
                }
                continue;
            };
            if &held.origin != self.signer.origin() {
                continue;
            }
            // What this node took from a feed stays the feed's in every later version
            // (rule 3 knows it by the feed's source tag): a version without that tag
            // is refused rather than let the feed's data go out as this node's own.
            if let Some(feed) = policy.third_party_feed(&held.item) {
                if !item.tags.iter().any(|tag| tag.eq_ignore_ascii_case(feed)) {
                    return Err(EngineError::Unpublishable(format!(
                        "item {at}: {} was taken from a feed and carries the tag {feed}; a new version must carry it too",
                        item.id
                    )));
                }
            }
            if naming {
                continue;
            }
            // Fail closed: without the replaced version's distribution, nothing to keep.
            let replaced = match replaced_of.get(&held.bundle_id) {
                Some(replaced) => replaced,
                None => {
                    let Some(bytes) = self.store.bundle_header(&held.bundle_id)? else {
                        return Err(EngineError::Unpublishable(format!(
                            "item {at}: the bundle of {} is not held; its new version cannot be written here",
                            item.id
                        )));
                    };
                    let replaced = crate::crypto::parse_header(&bytes)?.0.distribution;
                    replaced_of
                        .entry(held.bundle_id.clone())
                        .or_insert(replaced)
                }
            };
            let Some(kept) = distribution.narrowed(replaced) else {
                return Err(EngineError::Unpublishable(format!(
                    "item {at}: {} was published to other recipients than the items beside it; write it alone",
                    item.id
                )));
            };
            if kept != distribution && items.len() > 1 {
                return Err(EngineError::Unpublishable(format!(
                    "item {at}: {} was published to fewer recipients than the items beside it; write it alone",
                    item.id
                )));
            }
            distribution = kept;
        }
        Ok(distribution)
    }

    /// Completes a revocation submitted for publishing (item `at` of its message) from
    /// the indicator it revokes, which the publisher must be allowed to see: a bare
    /// revocation (no type given) takes the marking, type and tags of the version held
    /// (so policy judges it like the indicator, and a subscriber that filters by tag sees
    /// it), and every revocation takes its content when it carries none (so it exports
    /// as a whole STIX indicator with `revoked: true`); what a draft gives must match, as
    /// `check_publishable` checks. A
    /// revocation that gives no type and names nothing the publisher may see here is
    /// refused as [`Engine::check_publishable`] refuses an id not held, so a withheld
    /// indicator answers like an absent one; one that gives its type is left as given
    /// for the same checks. A bare revocation of a context object becomes the new
    /// version of the object that revokes it (`revoke_context`: `revoked: true` and the
    /// reason, its marking, tags, references and properties kept). Anything but a
    /// revocation is left alone.
    pub fn complete_revocation(
        &self,
        publisher: &Partner,
        at: usize,
        draft: &mut wire::Item,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let Some(wire::item::Kind::Revocation(revocation)) = &mut draft.kind else {
            return Ok(());
        };
        let Ok(id) = ItemId::parse(&draft.id) else {
            return Ok(());
        };
        let policy = self.policy();
        let own = self.signer.origin();
        let sees_everything = &publisher.id == own
            || policy
                .partner(&publisher.id)
                .is_some_and(crate::policy::PartnerPolicy::sees_everything);
        let visible = self.store.get(&id)?.filter(|stored| {
            sees_everything
                || self
                    .decide_stored(&policy, &publisher.id, stored, now_ms, true)
                    .allowed()
        });
        let untyped = revocation.indicator_type.is_empty();
        let held = match visible {
            Some(held) if held.origin == *own => held,
            Some(held) if untyped => {
                return Err(EngineError::Unpublishable(format!(
                    "item {at}: {id} originated at {}; only its origin may revoke it",
                    held.origin
                )));
            }
            None if untyped => {
                return Err(EngineError::Unpublishable(format!(
                    "item {at}: nothing to revoke: {id} is not held by this node"
                )));
            }
            _ => return Ok(()),
        };
        // A revocation cannot wait for the clock: when the version held is dated ahead
        // of it (a writer's clock ran fast, within the allowed skew), a revocation that
        // gives no time is dated just after that version instead of being refused as
        // older than it.
        if untyped && draft.modified_unix_ms == 0 && held.item.modified_ms >= now_ms {
            draft.modified_unix_ms = held.item.modified_ms.saturating_add(1);
        }
        let indicator = match &held.item.kind {
            ItemKind::Indicator(indicator) => Some(indicator.clone()),
            // `entente revoke` of what is revoked already would only add a version
            // saying the same.
            ItemKind::Revocation(earlier) if untyped => {
                return Err(EngineError::Unpublishable(format!(
                    "item {at}: {id} is revoked already ({}: {})",
                    crate::util::rfc3339_ms(held.item.modified_ms)
                        .unwrap_or_else(|| held.item.modified_ms.to_string()),
                    earlier.reason.chars().take(200).collect::<String>()
                )));
            }
            ItemKind::Revocation(earlier) => earlier.indicator.as_deref().cloned(),
            // A context object is revoked by a new version of it with `revoked: true`.
            ItemKind::Context(context) if untyped => {
                let reason = std::mem::take(&mut revocation.reason);
                return revoke_context(at, draft, &held.item, context, &reason);
            }
            // One that gives a type is refused when validated (its id names another
            // type).
            ItemKind::Context(_) => return Ok(()),
        };
        // A bare revocation (no type) takes marking and tags from the indicator; one that
        // says what it revokes keeps what it says, for `check_publishable` to refuse if
        // it differs (an untagged revocation of a tagged item is refused, not filled in).
        if untyped {
            if draft.tlp == wire::Tlp::Unspecified as i32 {
                draft.tlp = wire::Tlp::from(held.item.tlp) as i32;
            }
            if draft.tags.is_empty() {
                draft.tags = held.item.tags.clone();
            }
            revocation.indicator_type = held.item.indicator_type().as_str().to_owned();
        }
        if revocation.indicator.is_none() {
            revocation.indicator = indicator
                .as_ref()
                .map(|i| Box::new(wire::Indicator::from(i)));
        }
        Ok(())
    }

    /// The rules this node's own items must pass before it signs them, and the
    /// distribution to sign them under:
    ///
    /// - no `modified` time beyond the clock skew;
    /// - an item already held that the publisher's own policy does not let it see may not
    ///   be written by it, and is answered as an id it does not hold would be; for a
    ///   publisher whose policy withholds anything, an id held under another type it may
    ///   not see, or whose version from another origin was dropped as expired, is
    ///   refused in the same words;
    /// - a revocation names an indicator this node originated and holds (or publishes in
    ///   the same bundle), carries its marking, type and tags, and travels no further than
    ///   it did: the distribution is narrowed to the revoked bundles' recipients and
    ///   `max_hops` (refused when no recipient is left).
    pub fn check_publishable(
        &self,
        publisher: &Partner,
        items: &[Item],
        requested: &Distribution,
        now_ms: i64,
    ) -> Result<Distribution, EngineError> {
        let policy = self.policy();
        let own = self.signer.origin();
        let refuse =
            |at: usize, why: String| Err(EngineError::Unpublishable(format!("item {at}: {why}")));
        // A publisher whose policy shows it every item needs no look-up per item.
        let sees_everything = &publisher.id == own
            || policy
                .partner(&publisher.id)
                .is_some_and(crate::policy::PartnerPolicy::sees_everything);
        let mut distribution = requested.clone();
        // The last item of each id so far in the bundle, by its place.
        let mut last_of: HashMap<&ItemId, usize> = HashMap::with_capacity(items.len());
        for (at, item) in items.iter().enumerate() {
            let before = last_of.insert(&item.id, at);
            // One version of one object given twice, written differently (a GREEN and a
            // RED copy): which the writer meant cannot be told, and storing the first
            // would share it under the marking the writer may have meant to correct.
            if let Some(earlier) = before.and_then(|b| items.get(b).map(|e| (b, e))) {
                if earlier.1.modified_ms == item.modified_ms
                    && crate::store::differs_for_sharing(earlier.1, item)
                {
                    return refuse(
                        at,
                        format!(
                            "{} is given twice at the same version (items {} and {at}) with another marking, other tags, or another value or type{}; give one, or a later modified time to the one meant",
                            item.id,
                            earlier.0,
                            if earlier.1.tlp == item.tlp {
                                String::new()
                            } else {
                                format!(" ({} and {})", earlier.1.tlp, item.tlp)
                            }
                        ),
                    );
                }
            }
            // What the node exports must be STIX that tools read: a pattern outside the
            // patterning language is refused on every path, not only on import.
            if let Err(e) = crate::model::pattern_syntax::check_item_pattern(item) {
                return refuse(at, e.to_string());
            }
            policy
                .admit_time(item, now_ms)
                .and_then(|()| policy.admit_creator(item, own))
                .map_err(|r| EngineError::Unpublishable(format!("item {at}: {r}")))?;
            let is_revocation = matches!(item.kind, ItemKind::Revocation(_));
            if !is_revocation && sees_everything && !item.withdraws() {
                continue;
            }
            let earlier = before.and_then(|b| items.get(b)).cloned();
            // The version held before this bundle, read once; one the publisher's policy
            // withholds is answered as if absent.
            let (held, withheld) = match earlier {
                Some(earlier) => (Some((earlier, None)), false),
                None => match self.store.get(&item.id)? {
                    // The same UUID held under another type is refused by the store
                    // naming the id held; one the publisher may not see is answered as
                    // a withheld id of its own type, not by that name.
                    // So is a UUID whose expired version from another origin a
                    // compaction dropped: the store refuses the write naming that
                    // origin, which the publisher could never see.
                    None if !sees_everything => {
                        let withheld = match self.store.get_any_type(&item.id)? {
                            Some(other) => !self
                                .decide_stored(&policy, &publisher.id, &other, now_ms, true)
                                .allowed(),
                            None => self
                                .store
                                .dropped_origin(&item.id)?
                                .is_some_and(|origin| origin != own.as_str()),
                        };
                        (None, withheld)
                    }
                    None => (None, false),
                    Some(stored)
                        if !sees_everything
                            && !self
                                .decide_stored(&policy, &publisher.id, &stored, now_ms, true)
                                .allowed() =>
                    {
                        (None, true)
                    }
                    Some(stored) => {
                        let origin = stored.origin.clone();
                        let bundle = stored.bundle_id.clone();
                        (Some((stored.item, Some((origin, bundle)))), false)
                    }
                },
            };
            if !is_revocation {
                // An indicator: new, or an update of an item the publisher may see. An
                // item it may not see cannot be overwritten by it.
                if withheld {
                    return refuse(
                        at,
                        format!("{} cannot be written by {}", item.id, publisher.id),
                    );
                }
                // A context object withdrawn (`revoked: true`) keeps what partners judged
                // it by, as an indicator's revocation does: a withdrawal marked with a
                // tool's default marking must not lower it.
                if let Some((held, _)) = held.as_ref().filter(|_| item.withdraws()) {
                    if let Some(problem) = crate::store::revocation_mismatch(held, item) {
                        return refuse(
                            at,
                            format!(
                                "a revocation of {} must carry its marking, type and tags: {problem}",
                                item.id
                            ),
                        );
                    }
                }
                continue;
            }
            let Some((held, stored)) = held else {
                return refuse(
                    at,
                    format!("nothing to revoke: {} is not held by this node", item.id),
                );
            };
            if let Some((origin, bundle)) = &stored {
                if origin != own {
                    return refuse(
                        at,
                        format!(
                            "{} originated at {origin}; only its origin may revoke it",
                            item.id
                        ),
                    );
                }
                // The revocation goes no further than the revoked version went.
                // Fail closed: without the revoked bundle's distribution, nothing to
                // narrow to.
                let Some(bytes) = self.store.bundle_header(bundle)? else {
                    return refuse(
                        at,
                        format!(
                            "the bundle of {} is not held; it cannot be revoked",
                            item.id
                        ),
                    );
                };
                {
                    let revoked = crate::crypto::parse_header(&bytes)?.0.distribution;
                    distribution = distribution.narrowed(&revoked).ok_or_else(|| {
                        EngineError::Unpublishable(format!(
                            "item {at}: the revocation of {} may go only to the recipients of the item it revokes ({}), and none of the requested recipients is one of them",
                            item.id,
                            revoked
                                .recipients
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                }
            }
            if let Some(problem) = crate::store::revocation_mismatch(&held, item) {
                return refuse(
                    at,
                    format!(
                        "a revocation of {} must carry its marking, type and tags: {problem}",
                        item.id
                    ),
                );
            }
        }
        Ok(distribution)
    }

    /// What `publisher` is told of an item of its bundle that the store refused: the
    /// store's reason when the publisher sees everything or may see what the store holds
    /// under the item's UUID, otherwise the words [`Engine::check_publishable`] gives a
    /// withheld id. The check before signing and the store's write are two steps: a
    /// version the publisher may not see (another origin's, or one marked above its
    /// policy) can be stored between them, and the store's reason names its origin, its
    /// type or how its marking differs.
    pub fn rejection_for(
        &self,
        publisher: &Partner,
        id: &ItemId,
        rejection: &crate::store::ItemRejection,
        now_ms: i64,
    ) -> String {
        if self.sees_everything(&publisher.id) {
            return rejection.to_string();
        }
        let visible = match self.store.get_any_type(id) {
            Ok(Some(held)) => self
                .decide_stored(&self.policy(), &publisher.id, &held, now_ms, true)
                .allowed(),
            Ok(None) | Err(_) => false,
        };
        if visible {
            rejection.to_string()
        } else {
            format!("{id} cannot be written by {}", publisher.id)
        }
    }

    /// Whether the node holds `item` (an item of a bundle it signed for `publisher`,
    /// which the store neither stored nor refused, as a version it held already) as
    /// given, and why it is not stored if not. Versions are kept to the millisecond, and
    /// an older version than the latest is not added to an object's history: an item is
    /// held as given only when a version of its id with its `modified` and the same
    /// content is held. Otherwise the reason, in words: another version in the same
    /// millisecond, or a later version held. A publisher that may not see the latest
    /// version held is told what [`Engine::check_publishable`] tells it of a withheld id.
    pub fn unstored_version(
        &self,
        publisher: &Partner,
        item: &Item,
        now_ms: i64,
    ) -> Result<Option<String>, EngineError> {
        let held = self.store.versions(&item.id, Self::MAX_VERSIONS)?;
        let Some(latest) = held.last() else {
            // The store took it for a version held: a later one it dropped as expired.
            return Ok(Some(format!(
                "not stored: the node held a later version of {}, since dropped as expired",
                item.id
            )));
        };
        if !self.sees_everything(&publisher.id)
            && !self
                .decide_stored(&self.policy(), &publisher.id, latest, now_ms, true)
                .allowed()
        {
            return Ok(Some(format!(
                "{} cannot be written by {}",
                item.id, publisher.id
            )));
        }
        let same_time = held
            .iter()
            .filter(|v| v.item.modified_ms == item.modified_ms)
            .collect::<Vec<_>>();
        // Held as given, or served exactly as given: an object the node exported (which
        // carries what the export adds, such as `created` and `created_by_ref`) and
        // that comes back unchanged is the version held.
        let served = |held: &StoredItem| {
            let origin = Some(held.origin.as_str());
            crate::interop::to_stix_from(&held.item, origin)
                == crate::interop::to_stix_from(item, origin)
        };
        if same_time.iter().any(|v| v.item == *item || served(v)) {
            return Ok(None);
        }
        let written = |ms: i64| crate::util::rfc3339_ms(ms).unwrap_or_else(|| ms.to_string());
        if !same_time.is_empty() {
            return Ok(Some(format!(
                "not stored: the node holds another version of {} at {}, and keeps versions to the millisecond; give a new version a modified time at least one millisecond later",
                item.id,
                written(item.modified_ms)
            )));
        }
        if latest.item.modified_ms > item.modified_ms {
            return Ok(Some(format!(
                "not stored: the node holds a later version of {} ({}), and does not add an older version to an object's history",
                item.id,
                written(latest.item.modified_ms)
            )));
        }
        Ok(Some(format!("not stored: {} was not stored", item.id)))
    }

    /// Stores a bundle this node signed (the second half of publishing). Refused while
    /// the store cannot write, before anything of it is stored (the store's accept
    /// checks again under its writer lock).
    pub fn store_own(
        &self,
        bundle: &VerifiedBundle,
        now_ms: i64,
    ) -> Result<PublishReceipt, EngineError> {
        self.store.writable()?;
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
        if report.offered_again > 0 {
            tracing::info!(bundle = %header.bundle_id, origin = %header.origin, bundles = report.offered_again, "offered again: objects held that waited for what this bundle brought");
        }
        for (index, reason) in &report.rejected {
            tracing::warn!(bundle = %header.bundle_id, origin = %header.origin, index, ?reason, "item rejected");
        }
        let subscribers = self.live_subscribers();
        if !subscribers.is_empty() {
            let items = bundle.items();
            let policy = self.policy();
            for index in &report.stored {
                let Ok(at) = items.binary_search_by_key(index, |v| v.index) else {
                    continue;
                };
                let stored = Arc::new(StoredItem {
                    item: items[at].item.clone(),
                    bundle_id: header.bundle_id.clone(),
                    index: *index,
                    origin: header.origin.clone(),
                    received_from: source.received_from.clone(),
                    hops: source.hops,
                    accepted_ms: now_ms,
                });
                let bytes = items[at].item_bytes.len() + SUBSCRIBED_ITEM_OVERHEAD;
                for subscriber in &subscribers {
                    self.offer(&policy, subscriber, &stored, bytes, now_ms);
                }
            }
            // What waited for this bundle's items, after them; not to the node's own
            // operator, to whom nothing waits (it was offered on arrival).
            for waited in &report.waited {
                let bytes = waited.item.encode().len() + SUBSCRIBED_ITEM_OVERHEAD;
                let stored = Arc::new(waited.clone());
                for subscriber in subscribers
                    .iter()
                    .filter(|s| &s.partner.id != policy.node())
                {
                    self.offer(&policy, subscriber, &stored, bytes, now_ms);
                }
            }
        }
        Ok(report)
    }

    /// Returns once every disclosure-ledger record handed over so far is in the store
    /// (not yet flushed).
    pub async fn sync_ledger(&self) -> Result<(), EngineError> {
        Ok(self.ledger.barrier()?.written().await?)
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

    /// The engine under the configured `[limits]` instead of the defaults.
    pub fn with_limits(mut self, limits: &Limits) -> Self {
        self.streams = Slots::new(limits.streams_per_partner);
        self.publishes = Slots::new(limits.publishes_per_partner);
        self.publish_rate = Rates::new(limits.publish_items_per_second);
        self.slow_reader_timeout = limits.slow_reader_timeout;
        self.answers = Budgets::new(limits.unsent_answer_bytes);
        self.limits = limits.clone();
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How long a stream may wait for its reader before it is ended.
    pub fn slow_reader_timeout(&self) -> std::time::Duration {
        self.slow_reader_timeout
    }

    /// Counts a stream `partner` opens; refused past `limits.streams_per_partner` open
    /// at once. The stream holds the slot until it ends.
    pub fn open_stream(&self, partner: &NodeId) -> Result<StreamSlot, EngineError> {
        self.streams.take(partner).ok_or_else(|| {
            crate::limits::count(Limit::StreamsPerPartner);
            EngineError::TooManyStreams {
                partner: partner.clone(),
                limit: self.streams.max(),
            }
        })
    }

    /// Counts `bytes` of an answer to `partner` until the returned hold is dropped;
    /// refused when the partner's answers not yet sent would pass
    /// `limits.unsent_answer_bytes` (one answer alone always passes).
    pub fn hold_answer(&self, partner: &NodeId, bytes: usize) -> Result<AnswerHold, EngineError> {
        self.answers.take(partner, bytes).ok_or_else(|| {
            crate::limits::count(Limit::UnsentAnswerBytes);
            EngineError::TooManyUnsentAnswers {
                partner: partner.clone(),
                held: self.answers.held(partner),
                bytes,
                limit: self.answers.max(),
            }
        })
    }

    /// Takes the bytes a page may gather from `partner`'s answer budget before it is
    /// read: `limits.query_page_bytes`, or what the budget has left (at least
    /// [`LEAST_PAGE_BYTES`]); refused when less is left.
    fn hold_page(&self, partner: &NodeId) -> Result<AnswerHold, EngineError> {
        let want = self.limits.query_page_bytes;
        self.answers
            .take_up_to(partner, want, LEAST_PAGE_BYTES)
            .ok_or_else(|| {
                crate::limits::count(Limit::UnsentAnswerBytes);
                EngineError::TooManyUnsentAnswers {
                    partner: partner.clone(),
                    held: self.answers.held(partner),
                    bytes: want,
                    limit: self.answers.max(),
                }
            })
    }

    /// Counts a Publish call of `partner`; refused past `limits.publishes_per_partner`
    /// open at once.
    pub fn open_publish(&self, partner: &NodeId) -> Result<StreamSlot, EngineError> {
        self.publishes.take(partner).ok_or_else(|| {
            crate::limits::count(Limit::PublishesPerPartner);
            EngineError::TooManyPublishes {
                partner: partner.clone(),
                limit: self.publishes.max(),
            }
        })
    }

    /// How long `partner` must wait before publishing `items` more items, under
    /// `limits.publish_items_per_second`.
    pub fn publish_delay(&self, partner: &NodeId, items: usize) -> std::time::Duration {
        let wait = self.publish_rate.take(partner, items as u64);
        if !wait.is_zero() {
            crate::limits::count(Limit::PublishItemsPerSecond);
        }
        wait
    }

    /// Whether `partner` may see every item this node holds (the node's own operator, or a
    /// client whose policy withholds nothing).
    pub fn sees_everything(&self, partner: &NodeId) -> bool {
        partner == self.signer.origin()
            || self
                .policy()
                .partner(partner)
                .is_some_and(crate::policy::PartnerPolicy::sees_everything)
    }

    /// Whether `partner` may receive anything at all under the policy in force (the
    /// node's own operator always may): a TAXII collection is listed only for them.
    pub fn receives_anything(&self, partner: &NodeId) -> bool {
        partner == self.signer.origin()
            || self
                .policy()
                .partner(partner)
                .is_some_and(crate::policy::PartnerPolicy::receives_anything)
    }

    /// Puts a new policy in force; the next decision on every path uses it.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(policy);
        self.policy_version.send_modify(|v| *v += 1);
    }

    /// The policy decision for a stored item and a client-side path (query, get,
    /// subscribe, export, explain).
    pub fn decide_stored(
        &self,
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
                held: &StoreHeld(self.store.as_ref()),
            },
        )
    }

    /// Whether `partner` may still see `stored` under the policy in force now (a stream
    /// asks again as an item leaves, in case a reload narrowed the policy since the item
    /// was decided).
    pub fn may_still_see(
        &self,
        partner: &NodeId,
        stored: &StoredItem,
        include_expired: bool,
    ) -> bool {
        self.decide_stored(&self.policy(), partner, stored, now_ms(), include_expired)
            .allowed()
    }

    /// Whether `stored` is still the latest version of its id that the store holds (rule
    /// 6): a stream that was offered a version may find it superseded as it leaves, by a
    /// newer version in the same bundle or one stored since. A version recorded again
    /// (in another bundle, or offered again) is the same version. A store error says no.
    pub fn still_latest(&self, stored: &StoredItem) -> bool {
        matches!(
            self.store.get(&stored.item.id),
            Ok(Some(latest)) if latest.item.modified_ms == stored.item.modified_ms
        )
    }

    /// [`Engine::may_still_see`] for a stream of new items (`Subscribe`), which is
    /// offered every version as it is stored: also only while `stored` is the latest
    /// version held, as `Query` and `Get` give.
    pub fn may_still_see_latest(
        &self,
        partner: &NodeId,
        stored: &StoredItem,
        include_expired: bool,
    ) -> bool {
        self.may_still_see(partner, stored, include_expired) && self.still_latest(stored)
    }

    /// The latest version of `id`, if `partner` may see it; recorded in the ledger
    /// before it is returned. Withheld and absent are the same `None`.
    pub async fn get(
        &self,
        partner: &Partner,
        id: &ItemId,
    ) -> Result<Option<StoredItem>, EngineError> {
        self.get_where(partner, id, |_| true).await
    }

    /// [`Engine::get`] for a caller that serves the item only if it passes `wanted`
    /// (TAXII's filters): an item left out is neither returned nor recorded.
    pub async fn get_where(
        &self,
        partner: &Partner,
        id: &ItemId,
        wanted: impl FnOnce(&StoredItem) -> bool,
    ) -> Result<Option<StoredItem>, EngineError> {
        let policy = self.policy();
        let now = now_ms();
        let held = self.store.get(id)?;
        self.as_if_held(&policy, &partner.id, id, held.is_some(), now);
        let found = held
            .filter(|stored| {
                self.decide_stored(&policy, &partner.id, stored, now, true)
                    .allowed()
            })
            .filter(wanted);
        if let Some(stored) = &found {
            if let Some(ticket) = self.record_delivery(&policy, &partner.id, "get", [stored])? {
                ticket.written().await?;
            }
        }
        Ok(found)
    }

    /// A lookup of `id` takes about as long whether the node holds it or not, so that
    /// the time of an answer does not tell a withheld id from an absent one: when `id`
    /// is not held, an item that is (one a lookup found lately) is read and judged for
    /// `partner` in its place, and the outcome dropped; when it is, it becomes the one
    /// read in the place of the next id not held. Nothing is served or recorded here.
    fn as_if_held(&self, policy: &Policy, partner: &NodeId, id: &ItemId, held: bool, now: i64) {
        let mut decoy = self.decoy.lock().unwrap_or_else(|p| p.into_inner());
        if held {
            *decoy = Some(id.clone());
            return;
        }
        let Some(stand_in) = decoy.clone() else {
            return;
        };
        drop(decoy);
        if let Ok(Some(stored)) = self.store.get(&stand_in) {
            std::hint::black_box(self.decide_stored(policy, partner, &stored, now, true));
        }
    }

    /// Most versions of one item [`Engine::versions_blocking`] reads.
    pub const MAX_VERSIONS: usize = 1000;

    /// Every version of `id` that the node holds and `partner` may see, oldest first
    /// (at most [`Self::MAX_VERSIONS`], the newest): the latest as [`Engine::get`]
    /// decides it, and each superseded one by [`Policy::decide_superseded`] (only while
    /// the latest may be seen, and only if the old version passes every other rule
    /// itself). Withheld and absent versions are alike left out. `select` then picks
    /// what is delivered (the caller's filters and page), which is recorded in the
    /// ledger on `path` before it is returned. Reads only the id's own records (the
    /// store's index chains them). From a blocking thread.
    pub fn versions_blocking<T>(
        &self,
        partner: &Partner,
        id: &ItemId,
        path: &str,
        select: impl FnOnce(Vec<StoredItem>) -> (Vec<StoredItem>, T),
    ) -> Result<(Vec<StoredItem>, T), EngineError> {
        let policy = self.policy();
        let now = now_ms();
        let latest = self.store.get(id)?;
        self.as_if_held(&policy, &partner.id, id, latest.is_some(), now);
        let latest = latest.filter(|latest| {
            self.decide_stored(&policy, &partner.id, latest, now, true)
                .allowed()
        });
        let Some(latest) = latest else {
            return Ok(select(Vec::new()));
        };
        let held = StoreHeld(self.store.as_ref());
        fn context<'a>(
            stored: &'a StoredItem,
            latest: bool,
            now_ms: i64,
            held: &'a dyn crate::policy::Held,
        ) -> Context<'a> {
            Context {
                origin: &stored.origin,
                hops: stored.hops,
                distribution: None,
                accepted_ms: stored.accepted_ms,
                now_ms,
                latest,
                include_expired: true,
                held,
            }
        }
        let mut visible = Vec::new();
        for version in self.store.versions(id, Self::MAX_VERSIONS)? {
            let is_latest = version.bundle_id == latest.bundle_id && version.index == latest.index;
            let allowed = is_latest
                || policy
                    .decide_superseded(
                        &partner.id,
                        &version.item,
                        &context(&version, false, now, &held),
                        &latest.item,
                        &context(&latest, true, now, &held),
                    )
                    .allowed();
            if allowed {
                visible.push(version);
            }
        }
        let (delivered, extra) = select(visible);
        if let Some(ticket) = self.record_delivery(&policy, &partner.id, path, &delivered)? {
            ticket.written_blocking()?;
        }
        Ok((delivered, extra))
    }

    /// For `policy explain`: the item `id` as `caller` may see it, and the decision for
    /// `partner` (for a peer node, with the bundle's signed distribution, as federation
    /// pull makes it). The caller's own policy decides first: an item it may not see is
    /// `None`, exactly as an item the node does not hold. The disclosure to the caller is
    /// recorded in the ledger before it is returned.
    pub async fn explain(
        &self,
        caller: &Partner,
        partner: &NodeId,
        id: &ItemId,
    ) -> Result<Option<(StoredItem, Decision)>, EngineError> {
        let policy = self.policy();
        let now = now_ms();
        let Some(stored) = self.store.get(id)? else {
            return Ok(None);
        };
        if !self
            .decide_stored(&policy, &caller.id, &stored, now, true)
            .allowed()
        {
            return Ok(None);
        }
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
                now_ms: now,
                latest: true,
                include_expired: false,
                held: &StoreHeld(self.store.as_ref()),
            },
        );
        if let Some(ticket) = self.record_delivery(&policy, &caller.id, "explain", [&stored])? {
            ticket.written().await?;
        }
        Ok(Some((stored, decision)))
    }

    /// Store calls made per query call at most, looking for a first visible item, so a
    /// page is empty only when little is left to look at (each store call looks at a
    /// bounded number of entries).
    const QUERY_CALLS: usize = 16;

    /// A page of items matching `query` that `partner` may see, after the page token
    /// `token` (empty: from the start). Tokens are sealed for this caller, this path and
    /// this query ([`PageTokens`]); one this node did not issue to them is refused with
    /// the same error whatever the node holds. Not recorded: see
    /// [`Engine::query_blocking`] and [`Engine::query_async`].
    #[allow(clippy::too_many_arguments)]
    fn query_page(
        &self,
        policy: &Policy,
        partner: &Partner,
        path: &str,
        query: &ItemQuery,
        token: &[u8],
        within: PageLimit,
        now_ms: i64,
    ) -> Result<Page, EngineError> {
        let canonical = query.canonical();
        let scope = TokenScope {
            caller: &partner.id,
            path,
            query: &canonical,
        };
        // The sealed text is a kind byte and the store's cursor: more to read after the
        // cursor, or the end. A page with items always comes with a token, so the last
        // page is always an empty one and the number of pages does not depend on how
        // many withheld items the store had to look at. When the scan reached the end of
        // what is stored, the token goes on from there if the store can say where
        // (`CATCH_UP`), so that an item stored before the caller asks for the next page
        // is on it; that catch-up ends the query at the end of what is stored then, so
        // a listing ends even while items keep arriving.
        const MORE: u8 = 0;
        const END: u8 = 1;
        const CATCH_UP: u8 = 2;
        let (mut after, catching_up) = if token.is_empty() {
            (Vec::new(), false)
        } else {
            match self.tokens.open(&scope, token)?.split_first() {
                Some((&MORE, cursor)) => (cursor.to_vec(), false),
                Some((&CATCH_UP, cursor)) => (cursor.to_vec(), true),
                Some((&END, [])) => return Ok(Page::default()),
                _ => return Err(EngineError::PageToken(PageTokenError::Invalid)),
            }
        };
        let visible = |stored: &StoredItem| {
            self.decide_stored(policy, &partner.id, stored, now_ms, query.include_expired)
                .allowed()
        };
        // One store call looks at a bounded number of slots. The page is filled by
        // further calls while it is short of its limit and the store has more, so that
        // its size says nothing of how many withheld items lay between visible ones,
        // up to QUERY_CALLS calls.
        let mut page = Page::default();
        let mut room = within;
        for _ in 0..Self::QUERY_CALLS {
            let part = self
                .store
                .query(query, Some(&after), room, now_ms, &visible)
                .map_err(|e| match e {
                    // Only tokens this node sealed reach the store, so a cursor it refuses
                    // is a fault here, answered as any bad token is.
                    StoreError::BadCursor => EngineError::PageToken(PageTokenError::Invalid),
                    StoreError::StaleCursor => EngineError::PageToken(PageTokenError::Stale),
                    e => EngineError::Store(e),
                })?;
            page.items.extend(part.items);
            page.bytes = page.bytes.saturating_add(part.bytes);
            page.next = part.next;
            page.end = part.end;
            let full = page.items.len() >= within.items || page.bytes >= within.bytes;
            match &page.next {
                Some(next) if !full => {
                    after = next.clone();
                    room = PageLimit {
                        items: within.items - page.items.len(),
                        bytes: within.bytes - page.bytes,
                    };
                }
                _ => break,
            }
        }
        page.next = match page.next.take() {
            Some(next) => {
                let mut sealed = vec![if catching_up { CATCH_UP } else { MORE }];
                sealed.extend_from_slice(&next);
                Some(self.tokens.seal(&scope, &sealed)?)
            }
            None if !page.items.is_empty() => match page.end.take() {
                Some(end) if !catching_up => {
                    let mut sealed = vec![CATCH_UP];
                    sealed.extend_from_slice(&end);
                    Some(self.tokens.seal(&scope, &sealed)?)
                }
                _ => Some(self.tokens.seal(&scope, &[END])?),
            },
            None => None,
        };
        Ok(page)
    }

    /// Whether `partner` may see at least one item that `origin` published, judged by
    /// the policy in force like every item a query returns (expired ones included, as a
    /// TAXII collection holds them). Nothing is disclosed, so nothing is recorded; a scan
    /// that ends before it finds one (at most [`Self::QUERY_CALLS`] store calls) says
    /// `false`, so an origin is never claimed on a guess. From a blocking thread.
    pub fn sees_any_from(&self, partner: &Partner, origin: &NodeId) -> Result<bool, EngineError> {
        let query = ItemQuery {
            origin: Some(origin.clone()),
            include_expired: true,
            ..ItemQuery::default()
        };
        let policy = self.policy();
        let page = self.query_page(
            &policy,
            partner,
            "taxii-origin",
            &query,
            &[],
            PageLimit::items(1),
            now_ms(),
        )?;
        Ok(!page.items.is_empty())
    }

    /// A page for a client path (`query`, `export`, TAXII), counted against the
    /// partner's answer budget and recorded in the disclosure ledger as one delivery on
    /// `path` before it is returned. From a blocking thread.
    pub fn query_blocking(
        &self,
        partner: &Partner,
        path: &str,
        query: &ItemQuery,
        token: &[u8],
        limit: usize,
        now_ms: i64,
    ) -> Result<Answer, EngineError> {
        // Every item of the page fits, and every one is served.
        let fit_all = |items: &[StoredItem]| (items.len(), ());
        let (answer, (), delivery) = self.query_fitted_unrecorded(
            partner,
            path,
            query,
            token,
            limit,
            now_ms,
            fit_all,
            |_| true,
        )?;
        self.record_blocking(&delivery)?;
        Ok(answer)
    }

    /// [`Engine::query_blocking`] for a listing whose items bring other objects with
    /// them (a TAXII page serves the marking definitions and identities its items refer
    /// to, and may hold no more than `limit` objects in all). `fit` says how many of a
    /// page's first items fit, with what the caller makes of it: a page cut shorter is
    /// read again up to there, under the same policy, so that its token goes on right
    /// after the last item served; a page cut to nothing serves no item and goes on from
    /// `token` again (the caller serves what the first item brings). What serving the
    /// page discloses is returned as a [`Delivery`]: the items that pass `served` (the
    /// caller's own filters). The caller records it ([`Engine::record`]) before anything
    /// of the page leaves, so a page can be made before it is asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn query_fitted_unrecorded<T>(
        &self,
        partner: &Partner,
        path: &str,
        query: &ItemQuery,
        token: &[u8],
        limit: usize,
        now_ms: i64,
        fit: impl FnOnce(&[StoredItem]) -> (usize, T),
        served: impl Fn(&StoredItem) -> bool,
    ) -> Result<(Answer, T, Delivery), EngineError> {
        // A scan may run on many blocking threads at once: each takes its bytes of the
        // partner's budget before it reads, and gathers no more than it got.
        let mut hold = self.hold_page(&partner.id)?;
        // Read before the policy and the scan: a bundle accepted while they run moves
        // the head past it, and a compaction the numbering, so the page is never taken
        // for current when it may not be.
        let numbering = self.store.numbering();
        let feed_head = self.store.feed_head();
        let policy = self.policy();
        let within = PageLimit {
            items: limit,
            bytes: hold.bytes(),
        };
        let mut page = self.query_page(&policy, partner, path, query, token, within, now_ms)?;
        let (keep, made) = fit(&page.items);
        if keep == 0 && !page.items.is_empty() {
            page = Page {
                items: Vec::new(),
                next: Some(token.to_vec()),
                end: None,
                bytes: 0,
            };
        } else if keep < page.items.len() {
            let within = PageLimit {
                items: keep,
                bytes: hold.bytes(),
            };
            page = self.query_page(&policy, partner, path, query, token, within, now_ms)?;
        }
        hold.set(page.bytes);
        let delivery = Delivery {
            items: page
                .items
                .iter()
                .filter(|stored| served(stored))
                .map(|stored| (stored.bundle_id.clone(), stored.index))
                .collect(),
            policy,
            feed_head,
            numbering,
            partner: partner.id.clone(),
            path: path.to_owned(),
        };
        Ok((Answer { page, hold }, made, delivery))
    }

    /// Records a [`Delivery`] in the disclosure ledger, waiting until it is written.
    pub fn record_blocking(&self, delivery: &Delivery) -> Result<(), EngineError> {
        if let Some(ticket) = self.hand_to_ledger(delivery)? {
            ticket.written_blocking()?;
        }
        Ok(())
    }

    /// [`Engine::record_blocking`] from async code.
    pub async fn record(&self, delivery: &Delivery) -> Result<(), EngineError> {
        if let Some(ticket) = self.hand_to_ledger(delivery)? {
            ticket.written().await?;
        }
        Ok(())
    }

    fn hand_to_ledger(&self, delivery: &Delivery) -> Result<Option<LedgerTicket>, EngineError> {
        let items = delivery
            .items
            .iter()
            .map(|(bundle, index)| (bundle, *index));
        self.record_served(&delivery.policy, &delivery.partner, &delivery.path, items)
    }

    /// Whether a page decided earlier is the page deciding now would give: the policy
    /// that decided it is still in force (no reload since), the store has accepted no
    /// bundle since (its change-feed head has not moved) and has not been compacted
    /// since (its page cursors are not stale).
    pub fn still_current(&self, delivery: &Delivery) -> bool {
        Arc::ptr_eq(&delivery.policy, &self.policy())
            && delivery.numbering == self.store.numbering()
            && delivery.feed_head == self.store.feed_head()
    }

    /// [`Engine::query_blocking`] from async code, for queries that read little (an exact
    /// value): the store is read inline and the ledger write awaited.
    pub async fn query_async(
        &self,
        partner: &Partner,
        path: &str,
        query: &ItemQuery,
        token: &[u8],
        limit: usize,
        now_ms: i64,
    ) -> Result<Answer, EngineError> {
        // Built inline, on one of the runtime's few threads: the bytes are counted once
        // the page is built, before anything is recorded (a refused answer is not a
        // delivery).
        let within = PageLimit {
            items: limit,
            bytes: self.limits.query_page_bytes,
        };
        let policy = self.policy();
        let page = self.query_page(&policy, partner, path, query, token, within, now_ms)?;
        let hold = self.hold_answer(&partner.id, page.bytes)?;
        if let Some(ticket) = self.record_delivery(&policy, &partner.id, path, &page.items)? {
            ticket.written().await?;
        }
        let answer = Answer { page, hold };
        Ok(answer)
    }

    /// Hands one disclosure-ledger record for `items` delivered to `partner` on `path`
    /// to the writer (one record per delivered message). The caller waits on the ticket
    /// before it sends the message, so nothing leaves unrecorded. `None` when there is
    /// nothing to record.
    fn record_delivery<'a>(
        &self,
        policy: &Policy,
        partner: &NodeId,
        path: &str,
        items: impl IntoIterator<Item = &'a StoredItem>,
    ) -> Result<Option<LedgerTicket>, EngineError> {
        let items = items
            .into_iter()
            .map(|stored| (&stored.bundle_id, stored.index));
        self.record_served(policy, partner, path, items)
    }

    /// [`Engine::record_delivery`] for items named by bundle and position.
    fn record_served<'a>(
        &self,
        policy: &Policy,
        partner: &NodeId,
        path: &str,
        items: impl IntoIterator<Item = (&'a crate::model::BundleId, u32)>,
    ) -> Result<Option<LedgerTicket>, EngineError> {
        let mut by_bundle: std::collections::BTreeMap<&crate::model::BundleId, Vec<u32>> =
            std::collections::BTreeMap::new();
        for (bundle, index) in items {
            by_bundle.entry(bundle).or_default().push(index);
        }
        if by_bundle.is_empty() {
            return Ok(None);
        }
        let deliveries = by_bundle
            .into_iter()
            .map(|(bundle, mut indices)| {
                indices.sort_unstable();
                indices.dedup();
                (bundle.clone(), indices)
            })
            .collect();
        self.ledger
            .append(LedgerEntry {
                time_ms: now_ms(),
                partner: partner.clone(),
                path: path.to_owned(),
                deliveries,
                // The policy that decided the delivery, even if a reload came since.
                policy_hash: policy.hash(),
                note: String::new(),
            })
            .map(Some)
            .map_err(EngineError::from)
    }

    /// Watches policy changes (for streams that must re-check their partner's policy).
    pub fn watch_policy(&self) -> tokio::sync::watch::Receiver<u64> {
        self.policy_version.subscribe()
    }

    /// Watches the change-feed head (for pull streams that follow it).
    pub fn watch_feed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed_head.subscribe()
    }

    /// One page of this node's change feed as `partner` may see it (the delivery rule):
    /// after `after`, at most `limit` feed entries read and `limits.pull_page_bytes` of
    /// bundles gathered. Each bundle goes out with only
    /// the items the policy allows (the rest stay withheld behind their digests), one
    /// message per hop count. Every message is recorded in the disclosure ledger, and the
    /// records are written, before the page is returned. From a blocking thread.
    pub fn pull_page(
        &self,
        partner: &Partner,
        after: u64,
        limit: usize,
    ) -> Result<PullPage, EngineError> {
        self.pull_page_under(&self.policy(), partner, after, limit, None)
    }

    /// [`Engine::pull_page`] under a given policy (the one in force when the caller took
    /// it), so the caller knows which policy decided the page. With `transfers`, the
    /// transfers recorded are remembered (the last [`RECORDED_TRANSFERS`] per partner),
    /// and a transfer the partner continues is not recorded again when this engine
    /// recorded exactly it (same digest, same policy) for this partner when it was first
    /// sent; the bundles of its feed entry that the partner had whole before it are not
    /// sent, so not recorded.
    pub fn pull_page_under(
        &self,
        policy: &Policy,
        partner: &Partner,
        after: u64,
        limit: usize,
        transfers: Option<&Transfers<'_>>,
    ) -> Result<PullPage, EngineError> {
        let now = now_ms();
        let page_budget = self.limits.pull_page_bytes;
        let entries = self.store.feed(after, limit)?;
        let mut page = PullPage {
            bundles: Vec::new(),
            cursor: entries.last().map_or(after, |(seq, _)| *seq),
            head: self.store.feed_head(),
            embargo_until: None,
        };
        let mut previous = after;
        let mut last_ticket = None;
        let mut page_bytes = 0usize;
        let fingerprint = policy.partner_fingerprint(&partner.id);
        let mut recorded = Vec::new();
        for (seq, bundle_id) in entries {
            let Some(held) = self.store.held_bundle(&bundle_id)? else {
                continue;
            };
            let (header, _) = crate::crypto::parse_header(&held.header_bytes)?;
            let mut by_hops: std::collections::BTreeMap<u32, Vec<&crate::store::HeldItem>> =
                std::collections::BTreeMap::new();
            for item in &held.items {
                let decision = self.decide_held(policy, &partner.id, &header, item, now);
                if decision.allowed() {
                    by_hops.entry(item.stored.hops).or_default().push(item);
                } else {
                    crate::telemetry::telemetry().withheld(
                        partner.id.as_str(),
                        decision.rule.kind(),
                        1,
                    );
                }
                if let Some(visible_at) = decision.embargo_until() {
                    page.embargo_until =
                        Some(page.embargo_until.map_or(visible_at, |t| t.min(visible_at)));
                }
            }
            if page.embargo_until.is_some() {
                // Stop before this entry: the cursor must not pass items the partner may
                // see later, so the whole entry is sent once its embargo has passed.
                page.cursor = previous;
                break;
            }
            let entry: Vec<(u32, Vec<&crate::store::HeldItem>, wire::SignedBundle)> = by_hops
                .into_iter()
                .map(|(hops, items)| {
                    let bundle = held.signed(items.iter().copied());
                    (hops, items, bundle)
                })
                .collect();
            let entry_bytes: usize = entry
                .iter()
                .map(|(_, _, bundle)| prost::Message::encoded_len(bundle))
                .sum();
            // A page holds at most `limits.pull_page_bytes` of bundles, or one entry when
            // that entry alone is larger: it stops before the entry that would pass the
            // budget, so a partner that reads slowly keeps little of this node's memory
            // waiting.
            if !page.bundles.is_empty() && page_bytes + entry_bytes > page_budget {
                page.cursor = previous;
                break;
            }
            previous = seq;
            // The transfer offered for continuation is continued in the first entry the
            // page sends anything of, if that entry holds it.
            let continued = page.bundles.is_empty()
                && transfers
                    .and_then(|t| t.resumed.map(|r| (t, r)))
                    .is_some_and(|(t, (resumed_hops, transfer))| {
                        entry.iter().any(|(hops, _, bundle)| {
                            *hops == resumed_hops && (t.digest)(*hops, bundle) == transfer
                        })
                    });
            for (hops, items, bundle) in entry {
                let recording = transfers.map_or(Recording::Now(None), |t| {
                    t.recording(self, &partner.id, &fingerprint, continued, hops, &bundle)
                });
                if let Recording::Now(key) = recording {
                    if let Some(ticket) = self.record_delivery(
                        policy,
                        &partner.id,
                        "pull",
                        items.iter().map(|i| &i.stored),
                    )? {
                        last_ticket = Some(ticket);
                    }
                    recorded.extend(key);
                }
                page.bundles.push(PulledBundle { seq, hops, bundle });
            }
            page_bytes += entry_bytes;
            if page_bytes >= page_budget {
                page.cursor = seq;
                break;
            }
        }
        // Group commit: the writer answers in order, so the last record written means
        // every record of the page is.
        if let Some(ticket) = last_ticket {
            ticket.written_blocking()?;
        }
        // Remembered only once written: a transfer whose record failed was never sent.
        for key in recorded {
            self.remember_transfer(&partner.id, key);
        }
        Ok(page)
    }

    /// The decision for one live item of a held bundle, for a pull by `partner`.
    fn decide_held(
        &self,
        policy: &Policy,
        partner: &NodeId,
        header: &crate::crypto::BundleHeader,
        item: &crate::store::HeldItem,
        now: i64,
    ) -> Decision {
        policy.decide(
            partner,
            &item.stored.item,
            &Context {
                origin: &header.origin,
                hops: item.stored.hops,
                distribution: Some(&header.distribution),
                accepted_ms: item.stored.accepted_ms,
                now_ms: now,
                latest: true,
                include_expired: false,
                held: &StoreHeld(self.store.as_ref()),
            },
        )
    }

    /// Whether a bundle of a pull page, decided when the page was read, may still be sent
    /// as it is: each item it discloses (`disclosed`, indices in the bundle whose signed
    /// header is `header_bytes`) is still the latest version held (not superseded since,
    /// in this bundle's slot) and allowed to `partner` under the policy and the store in
    /// force now (a newer version, an object a newly arrived id withholds by rule 7, an
    /// item expired since). False when any is not. From a blocking thread.
    pub fn pulled_still_allowed(
        &self,
        partner: &NodeId,
        header_bytes: &[u8],
        disclosed: &[u32],
    ) -> Result<bool, EngineError> {
        let (header, _) = crate::crypto::parse_header(header_bytes)?;
        let Some(held) = self.store.held_bundle(&header.bundle_id)? else {
            return Ok(false);
        };
        let policy = self.policy();
        let now = now_ms();
        Ok(disclosed.iter().all(|index| {
            held.items.iter().any(|item| {
                item.index == *index
                    && self
                        .decide_held(&policy, partner, &header, item, now)
                        .allowed()
            })
        }))
    }

    /// Whether the transfer `key` ([`recorded_key`]) was recorded for `partner` lately.
    fn transfer_recorded(&self, partner: &NodeId, key: &[u8; 32]) -> bool {
        let recorded = self
            .recorded_transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        recorded.get(partner).is_some_and(|keys| keys.contains(key))
    }

    /// Remembers that the transfer `key` was recorded for `partner` (the last
    /// [`RECORDED_TRANSFERS`] per partner).
    fn remember_transfer(&self, partner: &NodeId, key: [u8; 32]) {
        let mut recorded = self
            .recorded_transfers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !recorded.contains_key(partner) && recorded.len() >= RECORDED_TRANSFER_PARTNERS {
            // Only configured partners pull; this bounds the map all the same.
            recorded.clear();
        }
        let keys = recorded.entry(partner.clone()).or_default();
        if keys.len() >= RECORDED_TRANSFERS {
            keys.pop_front();
        }
        keys.push_back(key);
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

    /// The cached signer certificate with this fingerprint, if `partner` may be given it:
    /// this node's own always; another origin's only to a partner that may be sent other
    /// origins' bundles (`forward_third_party`), so that a partner cannot probe which
    /// origins this node has accepted data from unless it could receive their data.
    pub fn signer_certificate_for(
        &self,
        partner: &NodeId,
        fingerprint: &[u8; 32],
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(der) = self.store.certificate(fingerprint)? else {
            return Ok(None);
        };
        if *fingerprint == self.signer.certificate_sha256() {
            return Ok(Some(der));
        }
        let forwards = self
            .policy()
            .partner(partner)
            .is_some_and(|p| p.forward_third_party);
        Ok(forwards.then_some(der))
    }

    /// When `client`'s policy, as in force now, began to apply to its TAXII listings
    /// (ms; 0 when it is the policy it had when first seen). An object it may see is
    /// listed to it as added no earlier than this: an object a widened policy lets
    /// through was not in its collection before, and a client polling with
    /// `added_after` must be given it. The first call after a change records the
    /// change, at `now_ms`, durably with the next flush.
    pub fn listed_since(&self, client: &NodeId, now_ms: i64) -> Result<i64, EngineError> {
        let fingerprint = self.policy().partner_fingerprint(client);
        // One check-and-record at a time, so two requests never record two times for
        // one change.
        let mut known = self.listed_since.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, since)) = known.get(client) {
            if *seen == fingerprint {
                return Ok(*since);
            }
        }
        // Only configured clients get here; this bounds the map all the same.
        if known.len() > 100_000 {
            known.clear();
        }
        let since = match self.store.listed_since(client)? {
            Some((seen, since)) if seen == fingerprint => since,
            // Seen under another policy (or, in a store rebuilt from its log, under one
            // not known): its collection changed now. One millisecond
            // on, so that it is later than any date added the client was given so far
            // (those are at most now), and an `added_after` of the last one it saw
            // lets through what the change brought.
            Some(_) => {
                let since = now_ms.saturating_add(1);
                self.store.set_listed_since(client, &fingerprint, since)?;
                tracing::info!(%client, "policy for this client changed: its TAXII listings count objects as added from now");
                since
            }
            // Never seen: nothing it listed before can have missed anything.
            None => {
                self.store.set_listed_since(client, &fingerprint, 0)?;
                0
            }
        };
        known.insert(client.clone(), (fingerprint, since));
        Ok(since)
    }

    /// Forgets the policy `partner` was last served under, so its next pull is served
    /// from the start (after a stream ended because its policy changed mid-page).
    pub fn forget_served_policy(&self, partner: &NodeId) -> Result<(), EngineError> {
        Ok(self.store.set_served_policy(partner, &[0; 32])?)
    }

    /// Caches a signer certificate offered by a peer, if it is no larger than 16 KiB,
    /// chains to this node's trust anchors (as of `at_ms`, not revoked) and names `origin`.
    pub fn cache_signer_certificate(
        &self,
        der: &[u8],
        origin: &NodeId,
        at_ms: i64,
    ) -> Result<(), EngineError> {
        if der.len() > MAX_SIGNER_CERTIFICATE_BYTES {
            return Err(EngineError::Certificate(format!(
                "certificate larger than {} KiB",
                MAX_SIGNER_CERTIFICATE_BYTES / 1024
            )));
        }
        let id = self
            .trust
            .verify_signer(der, at_ms)
            .map_err(|e| EngineError::Certificate(e.to_string()))?;
        if &id != origin {
            return Err(EngineError::Certificate(format!(
                "certificate is for {id}, not for the origin {origin}"
            )));
        }
        self.store.put_certificate(der)?;
        Ok(())
    }

    /// Accepts a bundle pulled from `peer`, which holds its items at `sender_hops`, with
    /// its header parsed already ([`InboundBundle::parse`]). The inbound rules ([`Policy::admit`]) come first, then the bundle is verified,
    /// with the cached certificates or else `offered`, a signer certificate the peer
    /// sent, then every item must pass [`Policy::admit_items`], and only then is it
    /// stored. An offered certificate is cached (through
    /// [`Engine::cache_signer_certificate`]) only once a bundle verified with it. A
    /// refused bundle is logged with the sender and counted by the caller; nothing of
    /// it is stored or forwarded.
    pub fn accept_pulled(
        &self,
        peer: &NodeId,
        bundle: &InboundBundle,
        sender_hops: u32,
        offered: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<AcceptReport, EngineError> {
        let policy = self.policy();
        let (verified, hops, offered) =
            self.admit_and_verify(&policy, peer, bundle, sender_hops, offered, now_ms)?;
        let header = &bundle.header;
        let arrival = Arrival {
            sender: peer,
            origin: &header.origin,
            sender_hops,
            distribution: &header.distribution,
            bundle_id: &header.bundle_id,
        };
        policy.admit_items(&arrival, verified.items().iter().map(|v| &v.item), now_ms)?;
        if let Some(der) = offered {
            self.cache_signer_certificate(der, &header.origin, verified.header().created_ms)?;
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

    /// Checks a pulled bundle's header before its items arrive: the inbound rules
    /// ([`Policy::admit`]) and the origin's signature and certificate, as
    /// [`Engine::accept_pulled`] will (with the cached certificates or else `offered`,
    /// which is not cached here). `bundle` carries no disclosure, or they are ignored.
    pub fn check_pulled_header(
        &self,
        peer: &NodeId,
        bundle: &InboundBundle,
        sender_hops: u32,
        offered: Option<&[u8]>,
        now_ms: i64,
    ) -> Result<(), EngineError> {
        let header_only = InboundBundle {
            bundle: wire::SignedBundle {
                header_bytes: bundle.bundle.header_bytes.clone(),
                signature: bundle.bundle.signature.clone(),
                disclosures: Vec::new(),
            },
            header: bundle.header.clone(),
        };
        self.admit_and_verify(
            &self.policy(),
            peer,
            &header_only,
            sender_hops,
            offered,
            now_ms,
        )
        .map(|_| ())
    }

    /// The inbound rules, then verification (with the cached certificates or else
    /// `offered`): the verified bundle, the hop count at which this node would hold
    /// it, and the offered certificate if it is the one that verified.
    fn admit_and_verify<'a>(
        &self,
        policy: &Policy,
        peer: &NodeId,
        bundle: &InboundBundle,
        sender_hops: u32,
        offered: Option<&'a [u8]>,
        now_ms: i64,
    ) -> Result<(VerifiedBundle, u32, Option<&'a [u8]>), EngineError> {
        let InboundBundle { bundle, header } = bundle;
        let arrival = Arrival {
            sender: peer,
            origin: &header.origin,
            sender_hops,
            distribution: &header.distribution,
            bundle_id: &header.bundle_id,
        };
        let hops = policy.admit(&arrival)?;
        let cached = StoreCertificates(self.store.as_ref());
        let offered = offered.filter(|der| {
            der.len() <= MAX_SIGNER_CERTIFICATE_BYTES
                && crate::crypto::sha256(der) == header.signer_cert_sha256
        });
        let verified = match offered {
            None => verify(bundle, &cached, self.trust.as_ref(), now_ms)?,
            Some(der) => {
                let with_offer = OfferedCertificate {
                    cached,
                    fingerprint: header.signer_cert_sha256,
                    der,
                };
                verify(bundle, &with_offer, self.trust.as_ref(), now_ms)?
            }
        };
        Ok((verified, hops, offered))
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

    /// Items accepted from now on that `partner` may see and that match `query`: the
    /// policy in force decides every item as it arrives, and each is recorded in the
    /// disclosure ledger before it is handed out. Until then the items wait in the
    /// subscription's queue, counted against the partner's
    /// `limits.unsent_answer_bytes` with its other answers; a subscription whose next
    /// item would pass that budget is ended ([`SubscriptionEnd::Lagged`]), its queue
    /// emptied at once.
    pub fn subscribe(self: &Arc<Self>, partner: Partner, query: ItemQuery) -> Subscription {
        let subscriber = Arc::new(Subscriber {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                embargoed: BTreeMap::new(),
                hold: self.answers.hold_none(&partner.id),
                lagged: false,
            }),
            arrived: tokio::sync::Notify::new(),
            partner,
            query,
        });
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(Arc::downgrade(&subscriber));
        Subscription {
            engine: self.clone(),
            subscriber,
        }
    }

    /// The open subscriptions (those dropped since are forgotten here).
    fn live_subscribers(&self) -> Vec<Arc<Subscriber>> {
        let mut subscribers = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Vec::with_capacity(subscribers.len());
        subscribers.retain(|s| match s.upgrade() {
            Some(subscriber) => {
                live.push(subscriber);
                true
            }
            None => false,
        });
        live
    }

    /// Queues `stored` for `subscriber` if it matches the subscription and the policy in
    /// force lets its partner see it (a withheld item is never queued, so it neither
    /// takes the partner's budget nor can make the subscription fall behind), or keeps
    /// it, counted in that budget, until the partner's embargo lifts if that is all
    /// that holds it back. An item
    /// that would take the partner past `limits.unsent_answer_bytes` ends the
    /// subscription instead: its queue is emptied and its reader told, never handed
    /// the items after a gap.
    fn offer(
        &self,
        policy: &Policy,
        subscriber: &Subscriber,
        stored: &Arc<StoredItem>,
        bytes: usize,
        now_ms: i64,
    ) {
        let query = &subscriber.query;
        if !query.matches_value(stored, now_ms) {
            return;
        }
        let decision = self.decide_stored(
            policy,
            &subscriber.partner.id,
            stored,
            now_ms,
            query.include_expired,
        );
        // Withheld by the partner's embargo alone: held until it lifts, not dropped.
        let embargoed = match (decision.allowed(), decision.embargo_until()) {
            (true, _) => None,
            (false, Some(until)) => Some(until),
            (false, None) => return,
        };
        let mut queue = subscriber.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.lagged {
            return;
        }
        if queue.hold.grow(bytes) {
            match embargoed {
                None => queue.items.push_back((stored.clone(), bytes)),
                Some(until) => queue
                    .embargoed
                    .entry(until)
                    .or_default()
                    .push((stored.clone(), bytes)),
            }
        } else {
            queue.lagged = true;
            queue.items = VecDeque::new();
            queue.embargoed = BTreeMap::new();
            queue.hold.set(0);
            crate::limits::count(Limit::UnsentAnswerBytes);
            tracing::info!(
                partner = %subscriber.partner.id,
                limit = self.answers.max(),
                "subscription ended: its partner's unsent answers reached limits.unsent_answer_bytes"
            );
        }
        drop(queue);
        subscriber.arrived.notify_one();
    }
}

/// Largest signer certificate accepted from a peer.
pub const MAX_SIGNER_CERTIFICATE_BYTES: usize = 16 * 1024;

/// The cached certificates, and one a peer offered for this bundle (used for this
/// verification only; cached only once the bundle verified).
struct OfferedCertificate<'a> {
    cached: StoreCertificates<'a>,
    fingerprint: [u8; 32],
    der: &'a [u8],
}

impl CertificateSource for OfferedCertificate<'_> {
    fn certificate(&self, sha256: &[u8; 32]) -> Option<Vec<u8>> {
        self.cached
            .certificate(sha256)
            .or_else(|| (sha256 == &self.fingerprint).then(|| self.der.to_vec()))
    }
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionEnd {
    /// The subscriber fell further behind than its partner's answer budget holds. The
    /// message names the limit, never a count: the subscriber learns that it missed
    /// items it may see, nothing of those it may not.
    #[error(
        "subscriber fell behind: the items waiting for it reached limits.unsent_answer_bytes; subscribe again, then query to fill the gap"
    )]
    Lagged,
    /// A delivery could not be recorded, so nothing more is sent.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One subscription's queue of new items, as the engine hands them over.
struct Subscriber {
    queue: Mutex<Queue>,
    /// Woken when an item is queued or the subscription falls behind.
    arrived: tokio::sync::Notify,
    partner: Partner,
    query: ItemQuery,
}

/// The items waiting for a subscriber, and their bytes held of its partner's answer
/// budget.
struct Queue {
    items: VecDeque<(Arc<StoredItem>, usize)>,
    /// Items only the partner's embargo holds back, by the time it lifts: they join
    /// `items` then (and are decided again as they leave).
    embargoed: BTreeMap<i64, Vec<(Arc<StoredItem>, usize)>>,
    hold: AnswerHold,
    /// Fell behind: nothing more is queued, and the reader is told once the queue is
    /// read.
    lagged: bool,
}

/// A partner's subscription: yields only what the policy in force allows it.
pub struct Subscription {
    engine: Arc<Engine>,
    subscriber: Arc<Subscriber>,
}

impl Subscription {
    /// The next item the partner may see, recorded in the ledger before it is returned.
    pub async fn next(&mut self) -> Result<Arc<StoredItem>, SubscriptionEnd> {
        loop {
            let arrived = self.subscriber.arrived.notified();
            let mut lifts = None;
            let stored = {
                let mut queue = self
                    .subscriber
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // Items whose embargo has lifted join the queue, in the order it lifted.
                let now = now_ms();
                while let Some(entry) = queue.embargoed.first_entry() {
                    if *entry.key() > now {
                        lifts = Some(*entry.key());
                        break;
                    }
                    let due = entry.remove();
                    queue.items.extend(due);
                }
                match queue.items.pop_front() {
                    Some((stored, bytes)) => {
                        let left = queue.hold.bytes().saturating_sub(bytes);
                        queue.hold.set(left);
                        Some((stored, bytes))
                    }
                    None if queue.lagged => return Err(SubscriptionEnd::Lagged),
                    None => None,
                }
            };
            let Some((stored, bytes)) = stored else {
                match lifts {
                    Some(at) => {
                        let wait = std::time::Duration::from_millis(
                            u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0),
                        );
                        tokio::select! {
                            () = arrived => {}
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    None => arrived.await,
                }
                continue;
            };
            // The policy in force now: a reload narrows open streams from the next item on.
            let now = now_ms();
            let policy = self.engine.policy();
            let (partner, query) = (&self.subscriber.partner, &self.subscriber.query);
            // Rule 6: a version superseded since it was offered (a newer one in the
            // same bundle, or stored since) is not handed out; the newer one, if the
            // partner may see it, was offered after it.
            if !query.matches_value(&stored, now) || !self.engine.still_latest(&stored) {
                continue;
            }
            let decision = self.engine.decide_stored(
                &policy,
                &partner.id,
                &stored,
                now,
                query.include_expired,
            );
            if !decision.allowed() {
                // Withheld by an embargo alone (a reload lengthened it while the item
                // waited): held again until the new one lifts, not dropped.
                if let Some(until) = decision.embargo_until() {
                    let mut queue = self
                        .subscriber
                        .queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if queue.lagged {
                        continue;
                    }
                    if queue.hold.grow(bytes) {
                        queue
                            .embargoed
                            .entry(until)
                            .or_default()
                            .push((stored, bytes));
                    } else {
                        // Past the partner's budget meanwhile: the stream ends as any
                        // subscription that falls that far behind, never with an item
                        // silently missing.
                        queue.lagged = true;
                        queue.items = VecDeque::new();
                        queue.embargoed = BTreeMap::new();
                        queue.hold.set(0);
                        crate::limits::count(Limit::UnsentAnswerBytes);
                    }
                }
                continue;
            }
            if let Some(ticket) =
                self.engine
                    .record_delivery(&policy, &partner.id, "subscribe", [stored.as_ref()])?
            {
                ticket.written().await.map_err(EngineError::from)?;
            }
            return Ok(stored);
        }
    }
}

/// Makes `draft`, a revocation giving only the id and the reason (`entente revoke`) of
/// the context object `held` (item `at` of its message), the new version of the object
/// that revokes it: its marking, tags, references and kept properties, with `revoked:
/// true` and the reason (`interop::revoked_context_properties`), as a TAXII POST of the
/// object with `revoked: true` would make it. A marking or tags the draft gives must be
/// the object's.
fn revoke_context(
    at: usize,
    draft: &mut wire::Item,
    held: &Item,
    context: &crate::model::ContextObject,
    reason: &str,
) -> Result<(), EngineError> {
    let refuse = |why: String| Err(EngineError::Unpublishable(format!("item {at}: {why}")));
    let marking = wire::Tlp::from(held.tlp) as i32;
    if draft.tlp != wire::Tlp::Unspecified as i32 && draft.tlp != marking {
        return refuse(format!(
            "{} is marked {}; its revocation carries the same marking",
            held.id, held.tlp
        ));
    }
    let same_tags = draft.tags.len() == held.tags.len()
        && draft
            .tags
            .iter()
            .all(|tag| held.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)));
    if !draft.tags.is_empty() && !same_tags {
        return refuse(format!(
            "{} is tagged {:?}; its revocation carries the same tags",
            held.id, held.tags
        ));
    }
    let properties = match crate::interop::revoked_context_properties(&context.properties, reason) {
        Ok(properties) => properties,
        Err(e) => return refuse(format!("{} cannot be revoked here: {e}", held.id)),
    };
    draft.tlp = marking;
    draft.tags = held.tags.clone();
    draft.kind = Some(wire::item::Kind::Context(wire::ContextObject {
        object_type: context.object_type.as_str().to_owned(),
        refs: context.refs.iter().map(ToString::to_string).collect(),
        stix_properties: properties.as_str().to_owned(),
    }));
    Ok(())
}

/// `items` with the items `replaced` names put in their places.
fn with_replaced(mut items: Vec<Item>, replaced: Vec<(usize, Item)>) -> Vec<Item> {
    for (at, item) in replaced {
        items[at] = item;
    }
    items
}

/// The STIX properties an item keeps: an indicator's, those of the indicator a
/// revocation carries, a context object's; `None` for a revocation without one.
fn item_properties(item: &Item) -> Option<&crate::model::StixProperties> {
    match &item.kind {
        ItemKind::Indicator(indicator) => Some(&indicator.properties),
        ItemKind::Revocation(revocation) => revocation.indicator.as_ref().map(|i| &i.properties),
        ItemKind::Context(context) => Some(&context.properties),
    }
}

/// [`item_properties`], to change them.
fn item_properties_mut(item: &mut Item) -> Option<&mut crate::model::StixProperties> {
    match &mut item.kind {
        ItemKind::Indicator(indicator) => Some(&mut indicator.properties),
        ItemKind::Revocation(revocation) => {
            revocation.indicator.as_mut().map(|i| &mut i.properties)
        }
        ItemKind::Context(context) => Some(&mut context.properties),
    }
}
