//! Durable state behind the [`Store`] trait: bundles as signed and every item with
//! its provenance in an append-only bundle log, indexes over them in memory (latest
//! version per id, values, bundles, the change feed), the hash-chained disclosure
//! ledger in append-only segment files with its writer (`ledger`), in sled the
//! certificate cache, replication cursors and the ledger's head, and the node's own
//! large values (feed checkpoints, TAXII statuses) as files of their own (`values`). Accepting a bundle
//! applies the single-writer rule and appends one log frame, which counts whole or
//! not at all. No proto types of the services and no network here.

pub mod compact;
pub mod dropped;
mod index;
pub(crate) mod ledger;
pub(crate) mod log;
mod meta;
pub(crate) mod records;
mod sled_store;

pub mod recover;
pub(crate) mod values;

pub use ledger::files::{
    DEFAULT_SEGMENT_BYTES, LedgerSettings, MAX_SEGMENT_BYTES, check_archive_dir,
};
#[doc(hidden)]
pub use ledger::files::{FrameSpan, frame_spans};
pub use log::LogHeader;
pub use records::LOG_FILE;

/// The generation of the bundle log in `dir` (how many compactions made it), read
/// from its header.
pub fn log_generation(dir: &std::path::Path) -> Result<u64, StoreError> {
    log::read_header(&dir.join(LOG_FILE)).map(|header| header.generation)
}
pub(crate) use sled_store::replay_log;
pub use sled_store::{MAX_CURSOR_BYTES, RETENTION_RETRY, SledStore};

use std::path::PathBuf;

use crate::crypto::VerifiedBundle;
use crate::model::{BundleId, IndicatorType, Item, ItemId, NodeId};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O, corruption, or the directory is locked by another process).
    #[error("store at {path}: {source}")]
    Engine {
        /// The data directory.
        path: PathBuf,
        /// The sled error.
        source: sled::Error,
    },
    /// The data directory belongs to another node.
    #[error("store at {path} belongs to node {found}, not {expected}")]
    WrongOwner {
        /// The data directory.
        path: PathBuf,
        /// The configured node id.
        expected: NodeId,
        /// The id recorded in the store.
        found: String,
    },
    /// A stored record does not decode: the store is damaged.
    #[error("store record {key} is damaged: {problem}")]
    Corrupt {
        /// Which record.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading or writing the bundle log failed.
    #[error("store file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The data directory holds a store of an older format, which this version does
    /// not read.
    #[error(
        "store at {path} is in format {found}, which this version does not read; move it aside and start from an empty data directory (the node pulls its partners' data again)"
    )]
    OldFormat {
        /// The data directory.
        path: PathBuf,
        /// The format found.
        found: String,
    },
    /// The store's metadata (sled: the disclosure ledger, cursors, the watermark)
    /// is missing or unreadable while its bundle log is there: the store is refused,
    /// since starting would begin a new ledger and could not tell acknowledged data
    /// from a torn write.
    #[error(
        "store at {path} cannot start: {problem}. Its bundle log is there, but what only the metadata held (the disclosure ledger, replication cursors, how much of the log was acknowledged) cannot be read. Restore the data directory from a backup, or rebuild the store from its bundle log with `entente store recover --config FILE` (see the README, \"Recovering a store\")"
    )]
    MetadataLost {
        /// The data directory.
        path: PathBuf,
        /// What is missing or unreadable.
        problem: String,
    },
    /// The store cannot write now (a full disk, an I/O error); it tries again at every
    /// flush and goes on once writes succeed.
    #[error("store at {path} cannot write: {reason}")]
    Unwritable {
        /// The data directory.
        path: PathBuf,
        /// The disk (or the quota) is full.
        disk_full: bool,
        /// What failed.
        reason: String,
    },
    /// A value of the node's own (a feed checkpoint, a TAXII status) larger than the
    /// store keeps, or under a name longer than it keeps: refused, nothing written.
    #[error("store at {path} does not keep {what}")]
    ValueTooLarge {
        /// The data directory.
        path: PathBuf,
        /// What was refused, and the bound.
        what: String,
    },
    /// A page cursor that this store did not hand out.
    #[error("invalid page cursor")]
    BadCursor,
    /// A page cursor from before the store was compacted (slots were numbered anew).
    #[error("page cursor from before a compaction")]
    StaleCursor,
    /// The same bundle id arrived with different signed header bytes: the origin
    /// signed two different bundles under one id.
    #[error("bundle {0} conflicts with a stored bundle of the same id")]
    ConflictingBundle(BundleId),
}

impl StoreError {
    /// Whether the error says the disk (or the quota) is full.
    pub fn is_disk_full(&self) -> bool {
        fn full(e: &std::io::Error) -> bool {
            matches!(
                e.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || matches!(e.raw_os_error(), Some(28 | 122))
        }
        match self {
            StoreError::Io { source, .. } => full(source),
            StoreError::Engine {
                source: sled::Error::Io(e),
                ..
            } => full(e),
            StoreError::Unwritable { disk_full, .. } => *disk_full,
            _ => false,
        }
    }

    /// Whether the error is a failed write or read of the disk (as opposed to damage,
    /// a refusal or a bad request): the store may recover from it.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            StoreError::Io { .. }
                | StoreError::Unwritable { .. }
                | StoreError::Engine {
                    source: sled::Error::Io(_),
                    ..
                }
        )
    }
}

/// Where a bundle came from, as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The node that sent it (the origin itself for local publishing).
    pub received_from: NodeId,
    /// Transfers from the origin to this node (0 for the origin's own bundles).
    pub hops: u32,
}

/// An item as held, with its provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredItem {
    /// The item.
    pub item: Item,
    /// Its bundle.
    pub bundle_id: BundleId,
    /// Its index in the bundle.
    pub index: u32,
    /// The origin (bundle signer).
    pub origin: NodeId,
    /// The node it came from.
    pub received_from: NodeId,
    /// Transfers from the origin.
    pub hops: u32,
    /// When this node accepted it, ms since the epoch.
    pub accepted_ms: i64,
}

/// A bundle as held, for forwarding.
#[derive(Clone, Debug)]
pub struct HeldBundle {
    /// The exact signed header bytes.
    pub header_bytes: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// Its items that are still the latest version of their id.
    pub items: Vec<HeldItem>,
}

impl HeldBundle {
    /// The bundle as it travels, disclosing `items` (some of this bundle's) and
    /// withholding the rest behind their digests.
    pub fn signed<'a>(
        &self,
        items: impl IntoIterator<Item = &'a HeldItem>,
    ) -> crate::wire::SignedBundle {
        crate::wire::SignedBundle {
            header_bytes: self.header_bytes.clone(),
            signature: self.signature.clone(),
            disclosures: items
                .into_iter()
                .map(|i| crate::wire::Disclosure {
                    index: i.index,
                    salt: i.salt.clone(),
                    item_bytes: i.item_bytes.clone(),
                })
                .collect(),
        }
    }
}

/// One current item of a held bundle.
#[derive(Clone, Debug)]
pub struct HeldItem {
    /// Index in the bundle.
    pub index: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// Exact item bytes.
    pub item_bytes: Vec<u8>,
    /// The item with provenance.
    pub stored: StoredItem,
}

/// Why one item of an accepted bundle was not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemRejection {
    /// A version of this id from another origin is held: only the origin may update it.
    NotOriginWriter {
        /// The origin that holds the id.
        holder: NodeId,
    },
    /// A revocation whose marking, type or tags differ from those of the version it
    /// replaces: a revocation is judged by the revoked item's marking, so it must carry it.
    RevocationMismatch {
        /// What differs, for an operator.
        problem: String,
    },
    /// The UUID is held under another object type (`indicator--X` and `malware--X`):
    /// an id keeps its type.
    TypeConflict {
        /// The id held.
        held: String,
    },
    /// The version is held (or given earlier in the same bundle) with content that
    /// sharing decides by differently ([`differs_for_sharing`]): a GREEN and a RED copy
    /// of one version of one object. Which one the writer meant cannot be told, so the
    /// second is refused rather than passed over as a duplicate.
    SameVersionDiffers {
        /// The version's `modified`, ms.
        at_ms: i64,
    },
}

impl std::fmt::Display for ItemRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ItemRejection::NotOriginWriter { holder } => write!(
                f,
                "the id is held from {holder}; only its origin may update it"
            ),
            ItemRejection::RevocationMismatch { problem } => write!(
                f,
                "a revocation must carry the revoked item's marking, type and tags: {problem}"
            ),
            ItemRejection::TypeConflict { held } => {
                write!(f, "the same UUID is held as {held}; an id keeps its type")
            }
            ItemRejection::SameVersionDiffers { at_ms } => write!(
                f,
                "another version of this id is held at {} (versions are kept to the millisecond) with another marking, other tags, or another value or type; give a new version a modified time at least one millisecond later",
                crate::util::rfc3339_ms(*at_ms).unwrap_or_else(|| at_ms.to_string())
            ),
        }
    }
}

/// Whether two copies of one version of an object differ in what sharing decides by:
/// marking, tags, the types it is about, its value, whether it is a revocation, and
/// what it references. Other properties (a name or description the node's own export
/// adds, say) may differ between a copy and the version held without the two counting
/// as different versions.
pub fn differs_for_sharing(a: &crate::model::Item, b: &crate::model::Item) -> bool {
    let tags = |item: &crate::model::Item| {
        let mut tags: Vec<String> = item.tags.iter().map(|t| t.to_ascii_lowercase()).collect();
        tags.sort();
        tags
    };
    let revocation =
        |item: &crate::model::Item| matches!(item.kind, crate::model::ItemKind::Revocation(_));
    // Identities are not shared objects (the export names the origin's as
    // `created_by_ref`), nor is the extension definition an exported revocation
    // declares: only references to what policy judges count.
    let extension = crate::interop::REVOCATION_EXTENSION
        .split_once("--")
        .map_or("", |(_, uuid)| uuid);
    let references = |item: &crate::model::Item| {
        let mut ids: Vec<String> = item
            .referenced()
            .iter()
            .map(|id| id.as_str().to_owned())
            .filter(|id| !id.starts_with("identity--") && !id.ends_with(extension))
            .collect();
        ids.sort();
        ids
    };
    a.tlp != b.tlp
        || tags(a) != tags(b)
        || a.policy_types() != b.policy_types()
        || a.value() != b.value()
        || revocation(a) != revocation(b)
        || references(a) != references(b)
}

/// Whether `new`, a later version of `held`, may reach partners `held` did not: a lower
/// marking, other tags or other types, a later expiry, or no longer a revocation (a
/// revocation never does). An object that references it, withheld for it until now,
/// may then go to them too, so the store offers such objects again
/// ([`index::Index::waiting`]); wider recipients are judged where the bundles are read.
pub fn may_release(held: &crate::model::Item, new: &crate::model::Item) -> bool {
    if matches!(new.kind, crate::model::ItemKind::Revocation(_)) {
        return false;
    }
    let tags = |item: &crate::model::Item| {
        let mut tags: Vec<String> = item.tags.iter().map(|t| t.to_ascii_lowercase()).collect();
        tags.sort();
        tags
    };
    let until = |item: &crate::model::Item| match &item.kind {
        crate::model::ItemKind::Indicator(indicator) => indicator.valid_until_ms,
        _ => None,
    };
    let later_expiry = match (until(held), until(new)) {
        (Some(_), None) => true,
        (Some(before), Some(after)) => after > before,
        _ => false,
    };
    new.tlp < held.tlp
        || tags(held) != tags(new)
        || held.policy_types() != new.policy_types()
        || later_expiry
        || matches!(held.kind, crate::model::ItemKind::Revocation(_))
}

/// Why a revocation `revocation` (of an indicator, or a context object's version with
/// `revoked: true`) may not replace `held`, if it may not: it must carry the held
/// version's marking, type and tags, so that every partner judges it as it judged the
/// item. Any other version may change them.
pub fn revocation_mismatch(
    held: &crate::model::Item,
    revocation: &crate::model::Item,
) -> Option<String> {
    if !revocation.withdraws() {
        return None;
    }
    if held.tlp != revocation.tlp {
        return Some(format!(
            "the item is {}, the revocation {}",
            held.tlp, revocation.tlp
        ));
    }
    if held.indicator_type() != revocation.indicator_type() {
        return Some(format!(
            "the item is of type {}, the revocation names {}",
            held.indicator_type(),
            revocation.indicator_type()
        ));
    }
    // A STIX pattern is judged by the types it names, and a revocation's pattern is what
    // its writer sent: it must name the same types (one without a pattern would be
    // judged as `stix-pattern` alone).
    let about = |item: &crate::model::Item| {
        let mut types = item.policy_types();
        types.sort();
        types.dedup();
        types
    };
    let (item_about, revocation_about) = (about(held), about(revocation));
    if item_about != revocation_about {
        let names = |types: &[crate::model::IndicatorType]| {
            types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Some(format!(
            "the item is about [{}], the revocation about [{}]",
            names(&item_about),
            names(&revocation_about)
        ));
    }
    // Rule 7 judges an item by every held object whose id it carries; a revocation that
    // left one out would go where the item could not.
    let carried = revocation.referenced();
    if let Some(missing) = held
        .referenced()
        .into_iter()
        .find(|id| !carried.contains(id))
    {
        return Some(format!("the item names {missing}, the revocation does not"));
    }
    let lower =
        |tags: &[String]| -> Vec<String> { tags.iter().map(|t| t.to_ascii_lowercase()).collect() };
    let mut a = lower(&held.tags);
    let mut b = lower(&revocation.tags);
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    if a != b {
        return Some(format!(
            "the item has tags [{}], the revocation [{}]",
            a.join(", "),
            b.join(", ")
        ));
    }
    None
}

/// What accepting a bundle did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcceptReport {
    /// Indices of the items stored as new or as a newer version (these go to subscribers).
    pub stored: Vec<u32>,
    /// Items ignored because this or a newer version is held already.
    pub duplicates: usize,
    /// Items already held from this bundle that now arrived by a shorter path: their
    /// hop count was lowered (and the bundle re-fed).
    pub hops_lowered: usize,
    /// Items rejected by the single-writer rule, by index.
    pub rejected: Vec<(u32, ItemRejection)>,
    /// The change-feed position the bundle was (re-)appended at, if it was: the last
    /// one written (bundles offered again with it come just before it).
    pub feed_seq: Option<u64>,
    /// Bundles offered again with this one, just before it in the feed, because an
    /// object they hold waited for an item this bundle brought (a relationship that
    /// arrived before one of its ends).
    pub offered_again: usize,
    /// The items of those bundles that waited (what subscribers are offered now).
    pub waited: Vec<StoredItem>,
}

/// Filters of a query; all given filters must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemQuery {
    /// An exact value, normalised per type before lookup.
    pub value: Option<String>,
    /// Indicator type.
    pub indicator_type: Option<IndicatorType>,
    /// Has this tag.
    pub tag: Option<String>,
    /// From this origin.
    pub origin: Option<NodeId>,
    /// Modified at or after this time (ms).
    pub modified_since_ms: Option<i64>,
    /// Also return indicators past `valid_until`.
    pub include_expired: bool,
    /// Accepted by this node strictly after this time (ms): TAXII's `added_after`.
    pub added_after_ms: Option<i64>,
}

impl ItemQuery {
    /// The query's canonical bytes: every filter, length-prefixed, in a fixed order (what
    /// a page token is bound to).
    pub fn canonical(&self) -> Vec<u8> {
        fn text(out: &mut Vec<u8>, s: Option<&str>) {
            match s {
                None => out.push(0),
                Some(s) => {
                    out.push(1);
                    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        let mut out = Vec::new();
        text(&mut out, self.value.as_deref());
        text(&mut out, self.indicator_type.map(IndicatorType::as_str));
        text(&mut out, self.tag.as_deref());
        text(&mut out, self.origin.as_ref().map(NodeId::as_str));
        match self.modified_since_ms {
            None => out.push(0),
            Some(ms) => {
                out.push(1);
                out.extend_from_slice(&ms.to_be_bytes());
            }
        }
        out.push(u8::from(self.include_expired));
        if let Some(ms) = self.added_after_ms {
            // Only present when set, so the bytes of every other query are unchanged.
            out.push(2);
            out.extend_from_slice(&ms.to_be_bytes());
        }
        out
    }

    /// Whether `stored` matches every filter except the exact value (which the index
    /// lookup applies).
    pub fn matches(&self, stored: &StoredItem, now_ms: i64) -> bool {
        if let Some(ty) = self.indicator_type {
            if stored.item.indicator_type() != ty {
                return false;
            }
        }
        if let Some(tag) = &self.tag {
            if !stored.item.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
                return false;
            }
        }
        if let Some(origin) = &self.origin {
            if &stored.origin != origin {
                return false;
            }
        }
        if let Some(since) = self.modified_since_ms {
            if stored.item.modified_ms < since {
                return false;
            }
        }
        if let Some(after) = self.added_after_ms {
            if stored.accepted_ms <= after {
                return false;
            }
        }
        if !self.include_expired && stored.item.is_expired(now_ms) {
            return false;
        }
        true
    }

    /// Whether `stored` matches every filter, the exact value included.
    pub fn matches_value(&self, stored: &StoredItem, now_ms: i64) -> bool {
        if let Some(value) = &self.value {
            let Some(held) = stored.item.value() else {
                return false;
            };
            let ty = stored.item.indicator_type();
            // Its own value, or one a STIX pattern names.
            let named = || {
                stored.item.observed_values().iter().any(|(ty, named)| {
                    crate::model::normalise(*ty, value).ok().as_deref() == Some(named.as_str())
                })
            };
            if crate::model::normalise(ty, value).ok().as_deref() != Some(held) && !named() {
                return false;
            }
        }
        self.matches(stored, now_ms)
    }
}

/// One page of query results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Matching items the caller may see.
    pub items: Vec<StoredItem>,
    /// Opaque cursor for the next page; `None` when done.
    pub next: Option<Vec<u8>>,
    /// When done (`next` is `None`), the cursor where the scan ended, if the query can
    /// go on from there: a later page from it finds only what was stored since.
    pub end: Option<Vec<u8>>,
    /// The stored size of the items, in bytes: about what they take encoded in an
    /// answer.
    pub bytes: usize,
}

/// How much one query page may gather: at most `items` items, and no more items once
/// it holds `bytes` (an item larger than that alone makes a page of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    /// The most items.
    pub items: usize,
    /// The bytes after which no item is added.
    pub bytes: usize,
}

impl PageLimit {
    /// At most `items` items, of any size.
    pub fn items(items: usize) -> Self {
        Self {
            items,
            bytes: usize::MAX,
        }
    }
}

/// One delivery: what went to whom under which policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// When the delivery was made, ms since the epoch.
    pub time_ms: i64,
    /// The partner or client that received it.
    pub partner: NodeId,
    /// The outbound path: "query", "get", "subscribe", "export", "pull".
    pub path: String,
    /// Per bundle, the disclosed item indices (sorted).
    pub deliveries: Vec<(BundleId, Vec<u32>)>,
    /// SHA-256 identifying the policy version in force.
    pub policy_hash: [u8; 32],
    /// Empty for a delivery. For a record that is not one, what happened: the first
    /// record of a ledger restarted by `entente store recover` (path
    /// [`LEDGER_RESTART_PATH`]) says why the history before it is lost.
    pub note: String,
}

/// The path of the record that starts a ledger restarted after its history was lost.
pub const LEDGER_RESTART_PATH: &str = "restart";

/// A ledger entry as recorded: its place in the chain and its links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRecord {
    /// Position in the ledger, contiguous from 1.
    pub seq: u64,
    /// What was delivered.
    pub entry: LedgerEntry,
    /// The hash of the record before (32 zero bytes for the first record).
    pub prev_hash: [u8; 32],
    /// SHA-256 of `"entente/ledger/v1\0"` followed by the record's stored bytes
    /// (which include `seq` and `prev_hash`); the next record links to it.
    pub hash: [u8; 32],
}

/// What checking the ledger's chain found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LedgerCheck {
    /// Every record chains to the one before, sequence numbers are contiguous from 1,
    /// and the last hash equals the head kept in meta.
    Intact {
        /// The last sequence number (0 for an empty ledger); the records checked are
        /// those after `from`.
        records: u64,
        /// The last record's hash (32 zero bytes for an empty ledger). Kept outside
        /// the node, it lets an operator detect a rewrite of the whole tail, which a
        /// chain alone cannot.
        head: [u8; 32],
        /// The checkpoint the check started from: 0 when it started at the first
        /// record; N when records up to N were dropped under retention, and the chain
        /// is proven from the checkpoint kept at N.
        from: u64,
    },
    /// The first problem found. `seq` is the record the problem is attributed to: the
    /// altered record (not the later record whose link exposed it), the first missing
    /// record, the position holding a misplaced record, or 0 for a problem tied to no
    /// record (a damaged head or retention floor in the metadata). For example, seq 17: "record 17 was altered (its hash does
    /// not match the link in record 18)", "record 9 is missing", "records out of
    /// order: record 41 is stored at position 40", "the last 2 records were removed
    /// (head says 40, found 38)".
    Broken {
        /// The record the problem is attributed to.
        seq: u64,
        /// What is wrong, for an operator.
        problem: String,
    },
}

/// The names TAXII statuses are kept under among the feed checkpoints start with this:
/// with a character no feed name has (`a-z`, `0-9`, `-`, `_`), so no feed can read or
/// overwrite them.
const TAXII_STATUS_PREFIX: &str = "#taxii-status/";

/// The policy fingerprint [`ItemStore::listed_since`] gives, in a store rebuilt from its
/// log, for a client it has no record of since: no policy hashes to it (an
/// unconfigured partner's fingerprint is all zeros).
pub const UNKNOWN_POLICY: [u8; 32] = [0xff; 32];

/// Bundles and items: accepting verified bundles, reading items back, flushing.
pub trait ItemStore: Send + Sync {
    /// The id of the node that owns the store.
    fn owner(&self) -> &NodeId;

    /// Stores a verified bundle as one log frame (whole or not at all after a crash),
    /// applying the single-writer and versioning rules per item. Not durable until
    /// [`Store::flush`]. Refused with [`StoreError::Unwritable`], before anything is
    /// written, while the store cannot write ([`ItemStore::writable`]).
    fn accept(
        &self,
        bundle: &VerifiedBundle,
        source: &Source,
        now_ms: i64,
    ) -> Result<AcceptReport, StoreError>;

    /// Forces everything written so far to disk.
    fn flush(&self) -> Result<(), StoreError>;

    /// Whether the store can write now: `Err` (an [`StoreError::Unwritable`]) from a
    /// failed write until a flush succeeds again.
    fn writable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// The latest version held of an item.
    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError>;

    /// Whether the latest version held of indicator `id` is a revocation.
    fn latest_is_revocation(&self, id: &ItemId) -> Result<bool, StoreError> {
        Ok(self
            .get(id)?
            .is_some_and(|held| matches!(held.item.kind, crate::model::ItemKind::Revocation(_))))
    }

    /// The latest version held under `id`'s UUID, whatever its type (one UUID, one
    /// type: `malware--X` is held where `indicator--X` is). By default `id`'s own.
    fn get_any_type(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        self.get(id)
    }

    /// The origin of the version of `id`'s UUID that a compaction dropped as expired, if
    /// one was (the store then refuses an older version, and another origin's writes,
    /// under that UUID). By default none.
    fn dropped_origin(&self, id: &ItemId) -> Result<Option<String>, StoreError> {
        let _ = id;
        Ok(None)
    }

    /// Every version held of an item, oldest first and each once (superseded versions
    /// stay in the log until a compaction removes them), at most the `limit` newest. By
    /// default the latest only.
    fn versions(&self, id: &ItemId, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let _ = limit;
        Ok(self.get(id)?.into_iter().collect())
    }

    /// Every record held of `id`, newest first, at most `limit`: each version in each
    /// bundle that carried it (where [`ItemStore::versions`] lists a version once),
    /// replaced and revoked versions included. Versions a compaction removed are not
    /// held. By default what [`ItemStore::versions`] gives, newest first.
    fn records_of(&self, id: &ItemId, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let mut versions = self.versions(id, limit)?;
        versions.reverse();
        Ok(versions)
    }

    /// Every record held of an indicator with `value` (under each indicator type the
    /// value reads as), newest first for each type, at most `limit`: replaced versions
    /// and versions since revoked included, which a query does not give. Versions a
    /// compaction removed are not held. By default none.
    fn records_with_value(&self, value: &str, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let _ = (value, limit);
        Ok(Vec::new())
    }

    /// Items matching `query` that `visible` admits, after the cursor `after`, within
    /// `limit`. Scans a bounded number of entries per call.
    fn query(
        &self,
        query: &ItemQuery,
        after: Option<&[u8]>,
        limit: PageLimit,
        now_ms: i64,
        visible: &dyn Fn(&StoredItem) -> bool,
    ) -> Result<Page, StoreError>;

    /// A held bundle with its current items (those whose latest version is this one).
    fn held_bundle(&self, id: &BundleId) -> Result<Option<HeldBundle>, StoreError>;

    /// The exact signed header bytes of a held bundle.
    fn bundle_header(&self, id: &BundleId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Bytes the store occupies on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}

/// The change feed partners pull: positions and the bundles at them.
pub trait ChangeFeed: Send + Sync {
    /// The latest change-feed sequence number (0 when empty).
    fn feed_head(&self) -> u64;

    /// The numbering of held items that page cursors are written in: a compaction
    /// numbers them anew (the head may stay where it was), and cursors of an older
    /// numbering are stale.
    fn numbering(&self) -> u64 {
        0
    }

    /// The highest feed position this store may ever have handed out: its head, or
    /// above it after a restart (positions leased before it). A partner's cursor above
    /// this comes from another life of the data directory (restored from a backup, or
    /// started afresh).
    fn feed_limit(&self) -> u64 {
        self.feed_head()
    }

    /// Change-feed entries after `after`, oldest first, at most `limit`.
    fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, BundleId)>, StoreError>;
}

/// What the store keeps per partner: replication cursors and served-policy fingerprints.
pub trait PartnerState: Send + Sync {
    /// The fingerprint of the policy under which `peer` was last served a pull.
    fn served_policy(&self, peer: &NodeId) -> Result<Option<[u8; 32]>, StoreError>;

    /// Records the policy fingerprint `peer` is now served under.
    fn set_served_policy(&self, peer: &NodeId, fingerprint: &[u8; 32]) -> Result<(), StoreError>;

    /// The policy fingerprint `client` was last seen with by the TAXII listings, and
    /// since when (ms) it is in force for it (`None` when never recorded). In a store
    /// rebuilt from its log, a client not recorded since the rebuild gives
    /// [`UNKNOWN_POLICY`]: it may have listed under any policy before.
    fn listed_since(&self, client: &NodeId) -> Result<Option<([u8; 32], i64)>, StoreError>;

    /// Records that `client`'s policy has had `fingerprint` since `since_ms`.
    fn set_listed_since(
        &self,
        client: &NodeId,
        fingerprint: &[u8; 32],
        since_ms: i64,
    ) -> Result<(), StoreError>;

    /// The replication cursor kept for pulling from `peer`: the position token the
    /// peer issued, as received (empty when none: its feed is pulled from the start).
    fn cursor(&self, peer: &NodeId) -> Result<Vec<u8>, StoreError>;

    /// Records the replication cursor for `peer` (a token of at most
    /// `sync::positions::MAX_TOKEN_BYTES`). Written after the bundles before it, so a
    /// recovered cursor never points past data that was not recovered.
    fn set_cursor(&self, peer: &NodeId, token: &[u8]) -> Result<(), StoreError>;
}

/// Small state of the node's own: the certificate cache, feed checkpoints, TAXII statuses.
pub trait LocalState: Send + Sync {
    /// The checkpoint kept for the external feed `name` (`None` when none): what it has
    /// ingested so far, in the feed's own encoding.
    fn feed_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Records the checkpoint of the external feed `name` (at most 256 MiB, else
    /// [`StoreError::ValueTooLarge`]). Call it after the items it counts were flushed;
    /// it is durable when this returns.
    fn set_feed_checkpoint(&self, name: &str, checkpoint: &[u8]) -> Result<(), StoreError>;

    /// The checkpoints whose names start with `prefix`, in the order of their names, at
    /// most `limit` of them: `(name, checkpoint)`.
    fn feed_checkpoints_named(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;

    /// Removes the checkpoint of the external feed `name`, if any; durable when this
    /// returns.
    fn remove_feed_checkpoint(&self, name: &str) -> Result<(), StoreError>;

    /// The TAXII status records kept, at most `limit` of them, each with its name among
    /// them (`(name, record)`, in the order of the names). The listener names them after
    /// their writer and a slot of the writer's, so they survive a restart. Kept beside
    /// the feed checkpoints, under names no feed can have.
    fn taxii_statuses(&self, limit: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .feed_checkpoints_named(TAXII_STATUS_PREFIX, limit)?
            .into_iter()
            .filter_map(|(name, record)| {
                Some((name.strip_prefix(TAXII_STATUS_PREFIX)?.to_owned(), record))
            })
            .collect())
    }

    /// Records the TAXII status record `name`, replacing what it held; durable when this
    /// returns.
    fn set_taxii_status(&self, name: &str, record: &[u8]) -> Result<(), StoreError> {
        self.set_feed_checkpoint(&format!("{TAXII_STATUS_PREFIX}{name}"), record)
    }

    /// Removes the TAXII status record `name`, if any; durable when this returns.
    fn remove_taxii_status(&self, name: &str) -> Result<(), StoreError> {
        self.remove_feed_checkpoint(&format!("{TAXII_STATUS_PREFIX}{name}"))
    }

    /// Caches a DER certificate under its SHA-256.
    fn put_certificate(&self, der: &[u8]) -> Result<[u8; 32], StoreError>;

    /// A cached certificate.
    fn certificate(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// The disclosure ledger: appending records, reading them back, checking the chain.
pub trait DisclosureLedger: Send + Sync {
    /// Appends several records in order, chained, in one write (group commit): in the
    /// ledger's file when this returns (a killed process loses none), durable with the
    /// next flush.
    fn append_ledger_many(&self, entries: &[LedgerEntry]) -> Result<Vec<LedgerRecord>, StoreError> {
        entries.iter().map(|e| self.append_ledger(e)).collect()
    }

    /// Appends one record, chained to the previous one; returns it. In the ledger's
    /// file when this returns; durable with the next flush.
    fn append_ledger(&self, entry: &LedgerEntry) -> Result<LedgerRecord, StoreError>;

    /// Records with seq > after (oldest first), at most `limit`, optionally only for
    /// one partner and only at or after since_ms. The filters are applied while
    /// walking from `after`, so a filtered call reads every record after it.
    fn ledger(
        &self,
        after: u64,
        limit: usize,
        partner: Option<&NodeId>,
        since_ms: Option<i64>,
    ) -> Result<Vec<LedgerRecord>, StoreError>;

    /// Walks the whole ledger and checks the chain, up to the head as it stands when
    /// the walk starts (records appended meanwhile are left for the next check). A
    /// damaged record is reported as [`LedgerCheck::Broken`]; `Err` is for I/O only.
    fn verify_ledger(&self) -> Result<LedgerCheck, StoreError>;

    /// How the ledger's retention stands. By default: never failed.
    fn retention(&self) -> RetentionState {
        RetentionState::default()
    }
}

/// How the ledger's retention (`ledger.retain_days`, `ledger.retain_bytes`) stands. A
/// segment it cannot drop or move (an archive directory the node cannot write) is kept
/// and tried again later; the store's writes and deliveries go on meanwhile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionState {
    /// Set while retention fails: what failed, and since when (ms since the epoch).
    pub failing: Option<(String, i64)>,
    /// Retention attempts that failed since the store was opened.
    pub failures: u64,
}

/// Every part of the store's interface, for code (and tests) that use a concrete store
/// directly: `use entente::store::prelude::*`.
pub mod prelude {
    pub use super::{ChangeFeed, DisclosureLedger, ItemStore, LocalState, PartnerState, Store};
}

/// The node's durable state, all of it: what the engine holds. Each part is a trait of
/// its own, so code that needs only one (the certificate cache, the ledger) is given
/// only that one.
pub trait Store: ItemStore + ChangeFeed + PartnerState + LocalState + DisclosureLedger {}

impl<T: ItemStore + ChangeFeed + PartnerState + LocalState + DisclosureLedger> Store for T {}
