//! The implementation of [`Store`]: bundles and items in the bundle log (written
//! once, read with one positioned read per item), indexes over them in memory
//! (rebuilt from the log at open), small mutable state in sled, large values of the
//! node's own as files (`values.rs`, which takes the older ones out of sled), and the disclosure
//! ledger in its segment files (`ledger/files.rs`), whose head and retention floor
//! sled keeps.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use prost::Message;

use super::index::{Index, NONE, NewItem, observed_hashes, replay, value_hash};
use super::ledger::Head;
use super::ledger::files::{self, LedgerSettings, SegmentLedger};
use super::log::{BundleLog, FrameBuilder, LogHeader, Span};
use super::meta::{Meta, Opened, is_lock_error, meta_u64, migrate_ledger, open_meta};
use super::records::{self, BundleHead, ItemRecord};
use super::values::{self, ValueFiles};
use super::{
    AcceptReport, ChangeFeed, DisclosureLedger, HeldBundle, HeldItem, ItemQuery, ItemRejection,
    ItemStore, LedgerCheck, LedgerEntry, LedgerRecord, LocalState, Page, PageLimit, PartnerState,
    Source, StoreError, StoredItem,
};
use crate::crypto::VerifiedBundle;
use crate::model::{BundleId, IndicatorType, Item, ItemId, NodeId, normalise};

/// Entries examined per query call at most, so one call has bounded cost.
const MAX_SCAN_PER_QUERY: usize = 200_000;

/// Items read from the log per hold of the index lock during a scan.
const SCAN_CHUNK: usize = 256;

/// Items read back per exact-value query call at most, so a value held by very many
/// items (all filtered out for this caller, say) costs one call a bounded time: the
/// call is answered on the async runtime.
const MAX_VALUE_READS: usize = 1024;

/// Largest page cursor accepted from a caller (this store hands out 4 or 5 bytes; the
/// bound lets the service refuse anything longer before the store looks at it).
pub const MAX_CURSOR_BYTES: usize = 64;

/// Feed positions leased at a time. A position handed out and then lost in a power
/// loss (with the unsynced end of the log) is never reused, so a partner whose cursor
/// went past it still receives what comes next; a restart skips at most this many.
const FEED_LEASE: u64 = 64;

/// Why the store cannot write now.
#[derive(Clone, Debug)]
struct Trouble {
    disk_full: bool,
    reason: String,
    /// sled failed: it is reopened before the store writes again.
    sled_failed: bool,
}

/// Free space asked of the disk before a store that could not write tries again:
/// more than sled needs for a new segment of its log.
const PROBE_BYTES: usize = 1 << 20;

/// The store: sled for meta, cursors, certificates and the ledger; the bundle log
/// for bundles and items; the in-memory index over the log.
pub struct SledStore {
    pub(super) path: PathBuf,
    pub(super) owner: NodeId,
    pub(super) cache_bytes: u64,
    /// The store's random id, in sled and in the log's header.
    pub(super) store_id: [u8; 16],
    /// `None` only while sled is being reopened after a failure.
    pub(super) meta: RwLock<Option<Meta>>,
    /// Values too large for sled (feed checkpoints, TAXII statuses), as files.
    values: ValueFiles,
    /// Set by a failed write; cleared by the first flush that succeeds after it.
    trouble: Mutex<Option<Trouble>>,
    /// Ledger retention's own trouble (a segment it could not move), and when to try
    /// again; not the store's: writes and deliveries go on.
    retention: Mutex<(super::RetentionState, Option<std::time::Instant>)>,
    /// The bundle log in use. A compaction replaces it (with the index) while holding
    /// this lock for writing, so whoever holds it for reading sees spans from the index
    /// and the log they point into as one.
    pub(super) log: RwLock<BundleLog>,
    pub(super) index: RwLock<Index>,
    /// The index's value hasher, for hashing outside its lock.
    pub(super) hasher: RandomState,
    /// The log watermark as last written to sled.
    pub(super) recorded_watermark: AtomicU64,
    /// Held for the whole of a flush.
    pub(super) flushing: Mutex<()>,
    /// Feed positions up to this one were leased when the store opened: they may
    /// have been handed out before, so numbering goes on above it.
    pub(super) feed_floor: u64,
    /// Feed positions up to this one are leased (recorded in sled before use).
    pub(super) feed_lease: AtomicU64,
    /// Feed positions up to this one were handed out before a compaction of this run,
    /// which may have dropped the bundle at the head: numbering goes on above it.
    pub(super) feed_compacted: AtomicU64,
    /// The generation of the log in force, kept beside it so that it is read without
    /// waiting for a compaction's swap (set while the swap holds the log).
    pub(super) generation: AtomicU64,
    /// Replication cursors as last set; those not yet in sled are marked pending and
    /// written by the next flush, after the log is synced.
    pub(super) cursors: Mutex<HashMap<String, (Vec<u8>, bool)>>,
    /// One writer at a time: the single-writer checks read then write.
    pub(super) writer: Mutex<()>,
    /// The disclosure ledger's segments.
    pub(super) ledger: SegmentLedger,
    /// The ledger head as last written to sled.
    pub(super) recorded_ledger_head: Mutex<Option<Head>>,
    /// Held for the whole of a compaction: one at a time.
    pub(super) compacting: Mutex<()>,
    /// Whether the metadata holds any note of an indicator a compaction dropped as
    /// expired ([`records::DROPPED`]).
    pub(super) any_dropped: std::sync::atomic::AtomicBool,
    /// A compaction renamed its log into place but the directory's sync failed: the
    /// next flush syncs it before it records the new log's generation.
    pub(super) directory_unsynced: std::sync::atomic::AtomicBool,
    /// Set while a compaction waits to swap the log: a thread that holds no read of
    /// the log waits for the swap before it takes one ([`SledStore::log`]).
    swap_pending: Mutex<bool>,
    swap_done: Condvar,
}

thread_local! {
    /// How many reads of a store's log this thread holds. A query holds one while the
    /// policy decides, and the policy reads the items a reference names through the
    /// store: a second read on the same thread, which must not wait for a swap that
    /// waits for the first.
    static LOG_READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A read of the bundle log, counted per thread (see [`SledStore::log`]).
pub(super) struct LogRead<'a> {
    guard: RwLockReadGuard<'a, BundleLog>,
}

impl std::ops::Deref for LogRead<'_> {
    type Target = BundleLog;

    fn deref(&self) -> &BundleLog {
        &self.guard
    }
}

impl Drop for LogRead<'_> {
    fn drop(&mut self) {
        LOG_READS.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

pub(super) use crate::util::now_ms;

impl SledStore {
    /// Opens (or creates) the store in `dir` for node `owner`, with a sled page cache
    /// of `cache_bytes`. Reads the whole bundle log to rebuild the indexes. A store of
    /// format 3 is upgraded in place (its log is copied into the new format and kept
    /// as `bundles.v3.log.upgraded`). A store whose bundle log is there but whose
    /// metadata is missing or unreadable is refused ([`StoreError::MetadataLost`]).
    pub fn open(dir: &Path, owner: &NodeId, cache_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(dir, owner, cache_bytes, LedgerSettings::default())
    }

    /// [`SledStore::open`] with the ledger's settings (`[ledger]`). A store whose
    /// ledger is still kept in sled (one entry per record, before segments) has it
    /// converted at open: the old chain is checked first, and a chain that does not
    /// verify is not converted (the store is refused, saying so).
    pub fn open_with(
        dir: &Path,
        owner: &NodeId,
        cache_bytes: u64,
        ledger_settings: LedgerSettings,
    ) -> Result<Self, StoreError> {
        let engine = |source| StoreError::Engine {
            path: dir.to_owned(),
            source,
        };
        let lost = |problem: String| StoreError::MetadataLost {
            path: dir.to_owned(),
            problem,
        };
        let log_path = dir.join(records::LOG_FILE);
        let v3_path = dir.join(records::LOG_FILE_V3);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                path: path.clone(),
                source,
            }
        };
        let has_log = log_path.try_exists().map_err(io(&log_path))?;
        let has_v3 = v3_path.try_exists().map_err(io(&v3_path))?;
        if (has_log || has_v3) && !dir.join("db").try_exists().map_err(io(dir))? {
            return Err(lost(format!(
                "its metadata (sled's file {}) is missing",
                dir.join("db").display()
            )));
        }
        let meta = match open_meta(dir, cache_bytes) {
            Ok(meta) => meta,
            Err(e) if is_lock_error(&e) => return Err(engine(e)),
            Err(e) if has_log || has_v3 => {
                return Err(lost(format!("its metadata (sled) does not open: {e}")));
            }
            Err(e) => return Err(engine(e)),
        };
        for old in records::OLD_TREES {
            if meta
                .db
                .tree_names()
                .iter()
                .any(|name| name.as_ref() == old.as_bytes())
                && !meta.db.open_tree(old).map_err(engine)?.is_empty()
            {
                return Err(StoreError::OldFormat {
                    path: dir.to_owned(),
                    found: (*old).to_owned(),
                });
            }
        }
        let mut opened = super::meta::read_state(dir, owner, &meta, has_log, has_v3)?;
        let generation = meta_u64(&meta.tree, records::META_LOG_GENERATION, "log generation")
            .map_err(|problem| StoreError::Corrupt {
                key: "log generation".into(),
                problem,
            })?
            .unwrap_or(0);
        opened.acknowledged =
            super::compact::settle(dir, &meta.tree, &meta.db, generation, opened.acknowledged)?;
        migrate_ledger(dir, &meta, &opened, &ledger_settings)?;
        let values = ValueFiles::open(dir)?;
        migrate_values(dir, &meta, &values)?;
        let ledger = SegmentLedger::open(
            dir,
            opened.store_id,
            ledger_settings,
            opened.ledger_head,
            opened.ledger_floor,
        )?;
        let mut index = Index::new();
        // Item records take about 200 bytes or more each: room for them at once (up
        // to a bound, whatever the file claims).
        if let Some(len) = super::log::existing_log_len(&log_path) {
            index.reserve(usize::try_from(len / 200).unwrap_or(0).min(1 << 26));
        }
        let log = if log_path.try_exists().map_err(io(&log_path))? {
            BundleLog::open(&log_path, opened.acknowledged, |frame| {
                replay(&mut index, frame)
            })?
        } else if opened.acknowledged == 0 && opened.ledger_head.seq == 0 {
            // Created with the metadata, which is written first: a crash came between.
            BundleLog::create(
                &log_path,
                &LogHeader {
                    store_id: opened.store_id,
                    owner: owner.as_str().to_owned(),
                    created_ms: now_ms(),
                    generation: 0,
                },
            )?
        } else {
            return Err(StoreError::Corrupt {
                key: format!("bundle log {}", log_path.display()),
                problem: format!(
                    "the log is missing, but the store's metadata records {} bytes of it as acknowledged; restore the data directory from a backup",
                    opened.acknowledged
                ),
            });
        };
        let header = log.header();
        if header.store_id != opened.store_id {
            return Err(lost(format!(
                "its metadata belongs to another store than its bundle log (store id {} in the metadata, {} in the log): they were not kept together",
                hex(&opened.store_id),
                hex(&header.store_id)
            )));
        }
        if header.owner != owner.as_str() {
            return Err(StoreError::WrongOwner {
                path: dir.to_owned(),
                expected: owner.clone(),
                found: header.owner.clone(),
            });
        }
        Ok(Self::assemble(
            dir,
            owner,
            cache_bytes,
            meta,
            values,
            log,
            index,
            ledger,
            &opened,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: &Path,
        owner: &NodeId,
        cache_bytes: u64,
        meta: Meta,
        values: ValueFiles,
        log: BundleLog,
        index: Index,
        ledger: SegmentLedger,
        opened: &Opened,
    ) -> Self {
        let hasher = index.hasher.clone();
        let any_dropped = meta.tree.scan_prefix([records::DROPPED]).next().is_some();
        if any_dropped {
            // A store whose compactions predate the copy beside the log, or whose copy
            // was cut short by a crash or a full disk while a compaction appended to it:
            // its notes are written there whole, so that they too outlive a loss of the
            // metadata, and later appends are read back.
            let held = || {
                dropped_notes_in(&meta.tree).map_err(|source| StoreError::Engine {
                    path: dir.to_owned(),
                    source,
                })
            };
            if let Err(error) = super::dropped::ensure(dir, held) {
                tracing::warn!(%error, "the notes of indicators dropped as expired could not be copied beside the log");
            }
        }
        let generation = log.header().generation;
        Self {
            path: dir.to_owned(),
            owner: owner.clone(),
            cache_bytes,
            store_id: opened.store_id,
            meta: RwLock::new(Some(meta)),
            values,
            trouble: Mutex::new(None),
            retention: Mutex::new((super::RetentionState::default(), None)),
            log: RwLock::new(log),
            index: RwLock::new(index),
            hasher,
            recorded_watermark: AtomicU64::new(opened.acknowledged),
            flushing: Mutex::new(()),
            feed_floor: opened.feed_lease,
            feed_lease: AtomicU64::new(opened.feed_lease),
            feed_compacted: AtomicU64::new(0),
            generation: AtomicU64::new(generation),
            cursors: Mutex::new(HashMap::new()),
            writer: Mutex::new(()),
            ledger,
            recorded_ledger_head: Mutex::new(Some(opened.ledger_head)),
            compacting: Mutex::new(()),
            any_dropped: std::sync::atomic::AtomicBool::new(any_dropped),
            directory_unsynced: std::sync::atomic::AtomicBool::new(false),
            swap_pending: Mutex::new(false),
            swap_done: Condvar::new(),
        }
    }

    /// A read of the log. A thread that holds none waits while a compaction waits to
    /// swap the log, so reads cannot keep the swap off for ever; a thread that holds
    /// one already takes another at once. The compaction never waits in the lock
    /// itself (std's lock would then make every new read wait, the second read of a
    /// thread too, which would wait for the swap that waits for that thread's first).
    pub(super) fn log(&self) -> LogRead<'_> {
        if LOG_READS.with(std::cell::Cell::get) == 0 {
            let mut pending = self.swap_pending.lock().unwrap_or_else(|p| p.into_inner());
            while *pending {
                pending = self
                    .swap_done
                    .wait(pending)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        let guard = self.log.read().unwrap_or_else(|p| p.into_inner());
        LOG_READS.with(|n| n.set(n.get() + 1));
        LogRead { guard }
    }

    /// The log for writing, for a compaction's swap: new reads wait meanwhile (but for
    /// a second read of a thread that holds one), reads in flight finish.
    pub(super) fn log_for_swap(&self) -> RwLockWriteGuard<'_, BundleLog> {
        let set = |on: bool| {
            *self.swap_pending.lock().unwrap_or_else(|p| p.into_inner()) = on;
            if !on {
                self.swap_done.notify_all();
            }
        };
        set(true);
        let guard = loop {
            match self.log.try_write() {
                Ok(guard) => break guard,
                Err(TryLockError::Poisoned(p)) => break p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        };
        set(false);
        guard
    }

    pub(super) fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ledger head as stored now: `None` when there is none, `Some(Err(len))` when
    /// the stored value is not a head (`len` bytes).
    fn stored_ledger_head(&self) -> Result<Option<Result<Head, usize>>, StoreError> {
        Ok(self
            .with_meta(|m| m.tree.get(records::META_LEDGER_HEAD))?
            .map(|v| Head::decode(&v).ok_or(v.len())))
    }

    /// Runs `f` on sled. A failure of sled makes the store unwritable until a flush
    /// reopens it.
    pub(super) fn with_meta<T>(
        &self,
        f: impl FnOnce(&Meta) -> sled::Result<T>,
    ) -> Result<T, StoreError> {
        let guard = self.meta.read().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = guard.as_ref() else {
            return Err(self.unwritable_now());
        };
        f(meta).map_err(|e| {
            drop(guard);
            let error = self.engine(e);
            self.note_failure(&error, true);
            error
        })
    }

    /// Records that a write failed: the store is unwritable until a flush succeeds.
    pub(super) fn note_failure(&self, error: &StoreError, sled_failed: bool) {
        if !sled_failed && !error.is_io() {
            return;
        }
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let disk_full = error.is_disk_full();
        let reason = if disk_full {
            format!("the store's disk is full ({error})")
        } else {
            error.to_string()
        };
        match trouble.as_mut() {
            Some(t) => {
                t.sled_failed |= sled_failed;
                t.disk_full |= disk_full;
            }
            None => {
                tracing::error!(%reason, "the store cannot write; writes and deliveries are refused until it can (it tries again at every flush)");
                *trouble = Some(Trouble {
                    disk_full,
                    reason,
                    sled_failed,
                });
            }
        }
    }

    /// The error for a store that cannot write now.
    fn unwritable_now(&self) -> StoreError {
        let trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let (disk_full, reason) = trouble
            .as_ref()
            .map_or((false, "its metadata is being reopened".to_owned()), |t| {
                (t.disk_full, t.reason.clone())
            });
        StoreError::Unwritable {
            path: self.path.clone(),
            disk_full,
            reason,
        }
    }

    /// Before a store that could not write writes again: room on the disk, and sled
    /// reopened if it failed (sled refuses everything after one failed write).
    fn try_recover(&self) -> Result<(), StoreError> {
        let Some(trouble) = self
            .trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(());
        };
        let still = |disk_full: bool, reason: String| StoreError::Unwritable {
            path: self.path.clone(),
            disk_full,
            reason,
        };
        if self.log().is_failed() {
            return Err(still(
                trouble.disk_full,
                format!(
                    "{}; a sync of the bundle log failed, so the node must be restarted",
                    trouble.reason
                ),
            ));
        }
        if let Err(e) = self.log().probe(PROBE_BYTES) {
            let disk_full = e.is_disk_full();
            return Err(still(
                disk_full,
                if disk_full {
                    format!("the store's disk is full ({e})")
                } else {
                    e.to_string()
                },
            ));
        }
        if trouble.sled_failed {
            self.reopen_meta()?;
            if let Some(t) = self
                .trouble
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                t.sled_failed = false;
            }
        }
        Ok(())
    }

    /// Drops sled and opens it again (its failures are permanent for the open
    /// instance), then writes again what the failure may have kept from the disk:
    /// the feed lease, the ledger head, the cursors.
    fn reopen_meta(&self) -> Result<(), StoreError> {
        let mut guard = self.meta.write().unwrap_or_else(|p| p.into_inner());
        *guard = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let meta = loop {
            match open_meta(&self.path, self.cache_bytes) {
                Ok(meta) => break meta,
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(self.engine(e)),
            }
        };
        let engine = |e| self.engine(e);
        let id = meta.tree.get(records::META_STORE_ID).map_err(engine)?;
        if id.as_deref() != Some(&self.store_id[..]) {
            return Err(StoreError::MetadataLost {
                path: self.path.clone(),
                problem: "its metadata changed while the node ran".into(),
            });
        }
        let mut batch = sled::Batch::default();
        let lease = self.feed_lease.load(Ordering::SeqCst);
        batch.insert(records::META_FEED_LEASE, &lease.to_be_bytes()[..]);
        meta.tree.apply_batch(batch).map_err(engine)?;
        meta.db.flush().map_err(engine)?;
        // The watermark, the ledger head and every cursor are written again by the
        // next flush.
        self.recorded_watermark.store(0, Ordering::SeqCst);
        *self
            .recorded_ledger_head
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        for entry in self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values_mut()
        {
            entry.1 = true;
        }
        *guard = Some(meta);
        tracing::info!(data_dir = %self.path.display(), "the store's metadata (sled) was reopened");
        Ok(())
    }

    fn engine(&self, source: sled::Error) -> StoreError {
        StoreError::Engine {
            path: self.path.clone(),
            source,
        }
    }

    /// Records in sled, durably, that feed positions up to `seq + FEED_LEASE` may be
    /// handed out: once per [`FEED_LEASE`] accepts.
    fn lease_feed(&self, seq: u64) -> Result<(), StoreError> {
        let lease = seq.saturating_add(FEED_LEASE);
        self.with_meta(|m| {
            m.tree
                .insert(records::META_FEED_LEASE, &lease.to_be_bytes()[..])?;
            m.db.flush()
        })?;
        self.feed_lease.store(lease, Ordering::SeqCst);
        Ok(())
    }

    /// An item about to be logged, as the index will know it (its span is filled in
    /// once written).
    fn new_item(&self, item: &Item, index: u32) -> NewItem {
        let (ty, value_hash) = match records::value_of(item) {
            Some((ty, value)) => (ty, Some(value_hash(&self.hasher, ty, value.as_bytes()))),
            None => (records::unvalued_type(item), None),
        };
        NewItem {
            span: Span { offset: 0, len: 0 },
            uuid: item.id.uuid_bytes(),
            index,
            ty,
            value_hash,
            observed: observed_hashes(&self.hasher, records::value_of(item)),
            refs: super::index::ref_keys(item),
        }
    }

    /// Records again the notes of indicators dropped as expired that `dropped.notes`
    /// kept (after a recovery rebuilt the metadata); durable with the next flush.
    pub(super) fn restore_dropped(&self, notes: &[(Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        if notes.is_empty() {
            return Ok(());
        }
        for chunk in notes.chunks(10_000) {
            let mut batch = sled::Batch::default();
            for (key, value) in chunk {
                batch.insert(&key[..], &value[..]);
            }
            self.with_meta(|m| m.tree.apply_batch(batch))?;
        }
        self.any_dropped.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Every note of an indicator dropped as expired that the metadata holds.
    pub(super) fn dropped_notes(&self) -> Result<Vec<super::dropped::Note>, StoreError> {
        self.with_meta(|m| dropped_notes_in(&m.tree))
    }

    /// What a compaction recorded of item `uuid` when it dropped it as expired: the
    /// modified time and origin of the version dropped.
    fn dropped(&self, uuid: &[u8; 16]) -> Result<Option<(i64, String)>, StoreError> {
        // Most stores never dropped anything: no lookup per new item then.
        if !self.any_dropped.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let Some(value) = self.with_meta(|m| m.tree.get(records::key(records::DROPPED, uuid)))?
        else {
            return Ok(None);
        };
        let (modified, origin) = value
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("dropped item", "shorter than 8 bytes"))?;
        let origin = std::str::from_utf8(origin).map_err(|e| corrupt("dropped item", e))?;
        Ok(Some((i64::from_be_bytes(*modified), origin.to_owned())))
    }

    /// Reads the item record at `span`.
    fn read_record(log: &BundleLog, span: Span) -> Result<ItemRecord, StoreError> {
        let bytes = log.read(span)?;
        ItemRecord::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            key: format!("item record at byte {}", span.offset),
            problem: e.to_string(),
        })
    }

    /// The latest version held of the item `uuid`.
    fn item_record(
        &self,
        log: &BundleLog,
        uuid: &[u8; 16],
    ) -> Result<Option<ItemRecord>, StoreError> {
        let span = {
            let index = self.index();
            match index.latest(uuid) {
                None => return Ok(None),
                Some(slot) => index.slots[slot as usize].span(),
            }
        };
        Self::read_record(log, span).map(Some)
    }

    fn read_head(log: &BundleLog, span: Span, id: &BundleId) -> Result<BundleHead, StoreError> {
        let bytes = log.read(span)?;
        BundleHead::decode(bytes.as_slice()).map_err(|e| StoreError::Corrupt {
            key: id.to_string(),
            problem: e.to_string(),
        })
    }

    /// The signed header of bundle `id`, read from `log`.
    fn bundle_header_in(
        &self,
        log: &BundleLog,
        id: &BundleId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let head = {
            let index = self.index();
            match index.bundles.get(&id.uuid_bytes()) {
                None => return Ok(None),
                Some(entry) => entry.head,
            }
        };
        Ok(Some(Self::read_head(log, head, id)?.header_bytes))
    }

    fn stored_item(record: ItemRecord) -> Result<StoredItem, StoreError> {
        let item = Item::decode_stored(&record.item_bytes).map_err(|e| corrupt("item", e))?;
        Self::provenance(item, record)
    }

    fn provenance(item: Item, record: ItemRecord) -> Result<StoredItem, StoreError> {
        let at = |what: &str, e: &dyn std::fmt::Display| corrupt(&format!("{} {what}", item.id), e);
        let bundle_uuid =
            records::uuid16(&record.bundle_uuid).ok_or_else(|| at("bundle id", &"not 16 bytes"))?;
        Ok(StoredItem {
            bundle_id: BundleId::from_uuid_bytes(bundle_uuid),
            index: record.index,
            origin: NodeId::new(&record.origin).map_err(|e| at("origin", &e))?,
            received_from: NodeId::new(&record.received_from)
                .map_err(|e| at("received from", &e))?,
            hops: record.hops,
            accepted_ms: record.accepted_ms,
            item,
        })
    }

    /// Reads the items at `slots` and keeps those that match and are visible, up to
    /// `limit`; returns the last slot examined when the page is full.
    fn collect(
        &self,
        candidates: &[(u32, Span)],
        want: &Wanted<'_>,
        page: &mut Page,
    ) -> Result<Option<u32>, StoreError> {
        for &(slot, span) in candidates {
            let stored = Self::stored_item(Self::read_record(want.log, span)?)?;
            let value_matches = want.exact.is_empty() || {
                let observed = stored.item.observed_values();
                want.exact.iter().any(|(ty, v)| {
                    (stored.item.indicator_type() == *ty && stored.item.value() == Some(v.as_str()))
                        || observed.iter().any(|(oty, ov)| oty == ty && ov == v)
                })
            };
            if value_matches && want.query.matches(&stored, want.now_ms) && (want.visible)(&stored)
            {
                page.items.push(stored);
                page.bytes = page.bytes.saturating_add(span.len as usize);
                if page.items.len() >= want.limit.items || page.bytes >= want.limit.bytes {
                    return Ok(Some(slot));
                }
            }
        }
        Ok(None)
    }
}

/// What a query call keeps: the filters, the exact values looked up (empty for a
/// scan), what the caller may see, and the page size.
struct Wanted<'a> {
    /// The log the index's spans point into (held for the whole call).
    log: &'a BundleLog,
    query: &'a ItemQuery,
    exact: &'a [(IndicatorType, String)],
    now_ms: i64,
    visible: &'a dyn Fn(&StoredItem) -> bool,
    limit: PageLimit,
}

impl SledStore {
    /// A value query: walks the chain of each exact (type, value) in turn, newest
    /// first, resuming after the cursor's slot. At most [`MAX_SCAN_PER_QUERY`] chain
    /// entries per call, and [`SCAN_CHUNK`] per hold of the index lock. The cursor is
    /// the chain's number and the last slot looked at.
    fn walk_values(
        &self,
        want: &Wanted<'_>,
        after: Option<&[u8]>,
        page: &mut Page,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let hashes: Vec<u64> = want
            .exact
            .iter()
            .map(|(ty, v)| value_hash(&self.hasher, records::type_code(*ty), v.as_bytes()))
            .collect();
        let cursor = |chain: usize, slot: u32| {
            let mut c = vec![chain as u8];
            c.extend_from_slice(&slot.to_be_bytes());
            Some(c)
        };
        // Where to start: a chain and the slot to go on from (NONE: its head). Chains
        // past the last value are the lists of STIX patterns naming each value, and
        // their cursor holds a position in that list.
        let (mut chain, mut resume) = match after {
            None | Some([]) => (0usize, None),
            Some([chain, position @ ..])
                if position.len() == 4 && (*chain as usize) >= hashes.len() =>
            {
                let position = u32::from_be_bytes(position.try_into().expect("4 bytes"));
                let held = hashes
                    .get(*chain as usize - hashes.len())
                    .map(|h| self.index().observed.get(h).map_or(0, Vec::len));
                if held.is_none_or(|held| position as usize > held) {
                    return Err(StoreError::BadCursor);
                }
                return self.walk_observed(want, &hashes, *chain as usize, position, page);
            }
            Some([chain, slot @ ..]) if slot.len() == 4 => {
                let slot = u32::from_be_bytes(slot.try_into().expect("4 bytes"));
                let index = self.index();
                // NONE: the head of that chain; otherwise a slot on it.
                let member = hashes.get(*chain as usize).is_some_and(|h| {
                    slot == NONE
                        || index
                            .slots
                            .get(slot as usize)
                            .is_some_and(|s| s.ty() != records::NOT_INDEXED && s.value_hash == *h)
                });
                if !member {
                    return Err(StoreError::BadCursor);
                }
                (*chain as usize, (slot != NONE).then_some(slot))
            }
            Some(_) => return Err(StoreError::BadCursor),
        };
        let mut examined = 0usize;
        let mut reads = 0usize;
        let spent = |examined: usize, reads: usize| {
            examined >= MAX_SCAN_PER_QUERY || reads >= MAX_VALUE_READS
        };
        while chain < hashes.len() {
            if spent(examined, reads) {
                return Ok(cursor(chain, resume.unwrap_or(NONE)));
            }
            let hash = hashes[chain];
            let mut at = {
                let index = self.index();
                match resume.take() {
                    Some(slot) => index.slots[slot as usize].next,
                    None => {
                        let slots = &index.slots;
                        index
                            .by_value
                            .find(hash, |&s| slots[s as usize].value_hash == hash)
                            .copied()
                            .unwrap_or(NONE)
                    }
                }
            };
            let mut last = NONE;
            while at != NONE {
                let candidates: Vec<(u32, Span)> = {
                    let index = self.index();
                    let mut out = Vec::new();
                    let mut taken = 0;
                    while at != NONE && taken < SCAN_CHUNK && !spent(examined, reads + out.len()) {
                        let slot = &index.slots[at as usize];
                        if slot.live() {
                            out.push((at, slot.span()));
                        }
                        last = at;
                        at = slot.next;
                        taken += 1;
                        examined += 1;
                    }
                    out
                };
                reads += candidates.len();
                if let Some(full) = self.collect(&candidates, want, page)? {
                    return Ok(cursor(chain, full));
                }
                if at != NONE && spent(examined, reads) {
                    return Ok(cursor(chain, last));
                }
            }
            chain += 1;
        }
        if spent(examined, reads) {
            return Ok(cursor(hashes.len(), 0));
        }
        self.walk_observed(want, &hashes, hashes.len(), 0, page)
    }

    /// The second part of a value query: the STIX patterns that name each value, in log
    /// order, from `position` in the list of chain `chain` (numbered after the value
    /// chains). Bounded like [`Self::walk_values`].
    fn walk_observed(
        &self,
        want: &Wanted<'_>,
        hashes: &[u64],
        mut chain: usize,
        mut position: u32,
        page: &mut Page,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let cursor = |chain: usize, position: u32| {
            let mut c = vec![chain as u8];
            c.extend_from_slice(&position.to_be_bytes());
            Some(c)
        };
        let mut examined = 0usize;
        while chain < 2 * hashes.len() {
            let hash = hashes[chain - hashes.len()];
            loop {
                if examined >= MAX_SCAN_PER_QUERY {
                    return Ok(cursor(chain, position));
                }
                let candidates: Vec<(u32, u32, Span)> = {
                    let index = self.index();
                    let Some(list) = index.observed.get(&hash) else {
                        break;
                    };
                    list.iter()
                        .enumerate()
                        .skip(position as usize)
                        .take(SCAN_CHUNK.min(MAX_SCAN_PER_QUERY - examined))
                        .filter(|&(_, &slot)| index.slots[slot as usize].live())
                        .map(|(at, &slot)| (at as u32, slot, index.slots[slot as usize].span()))
                        .collect()
                };
                let (end, more) = {
                    let index = self.index();
                    let held = index.observed.get(&hash).map_or(0, Vec::len);
                    let end = (position as usize + SCAN_CHUNK.min(MAX_SCAN_PER_QUERY - examined))
                        .min(held);
                    (end, end < held)
                };
                examined += end - position as usize;
                for (at, slot, span) in candidates {
                    if let Some(_full) = self.collect(&[(slot, span)], want, page)? {
                        return Ok(cursor(chain, at + 1));
                    }
                }
                position = end as u32;
                if !more {
                    break;
                }
            }
            chain += 1;
            position = 0;
        }
        Ok(None)
    }

    /// Any other query: every slot in log order from after the cursor (a slot
    /// number), at most [`MAX_SCAN_PER_QUERY`] slots looked at per call and
    /// [`SCAN_CHUNK`] per hold of the index lock.
    fn walk_slots(
        &self,
        want: &Wanted<'_>,
        after: Option<&[u8]>,
        page: &mut Page,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut at: u64 = match after {
            None | Some([]) => 0,
            Some(bytes) => {
                let slot: [u8; 4] = bytes.try_into().map_err(|_| StoreError::BadCursor)?;
                u64::from(u32::from_be_bytes(slot)) + 1
            }
        };
        let ty = want.query.indicator_type.map(records::type_code);
        let mut examined = 0usize;
        loop {
            let (candidates, end) = {
                let index = self.index();
                let mut out = Vec::new();
                let mut taken = 0;
                while at < index.slots.len() as u64
                    && taken < SCAN_CHUNK
                    && examined < MAX_SCAN_PER_QUERY
                {
                    let slot = &index.slots[at as usize];
                    if slot.live() && ty.is_none_or(|t| t == slot.ty()) {
                        out.push((at as u32, slot.span()));
                    }
                    at += 1;
                    taken += 1;
                    examined += 1;
                }
                (out, index.slots.len() as u64)
            };
            if let Some(full) = self.collect(&candidates, want, page)? {
                return Ok(Some(full.to_be_bytes().to_vec()));
            }
            if at >= end {
                // Slots are only ever added at the end: a later scan from the last one
                // finds what was stored since.
                page.end = at
                    .checked_sub(1)
                    .map(|last| (last as u32).to_be_bytes().to_vec());
                return Ok(None);
            }
            if examined >= MAX_SCAN_PER_QUERY {
                return Ok(Some(((at - 1) as u32).to_be_bytes().to_vec()));
            }
        }
    }
}

/// The notes of indicators dropped as expired held in the metadata `tree` (a key that is
/// not a UUID's is passed over).
/// Moves the feed checkpoints and TAXII statuses an earlier version kept in sled (the
/// `F` keyspace) to their files: each is written (synced) before its key is removed,
/// so a crash in between writes it again at the next open. sled does not give back
/// the blob files of the removed values.
fn migrate_values(dir: &Path, meta: &Meta, values: &ValueFiles) -> Result<(), StoreError> {
    let engine = |source| StoreError::Engine {
        path: dir.to_owned(),
        source,
    };
    let mut moved = 0usize;
    for entry in meta.tree.scan_prefix([records::FEED_CHECKPOINT]) {
        let (key, value) = entry.map_err(engine)?;
        match std::str::from_utf8(&key[1..]) {
            Ok(name) => values.put(name, &value)?,
            // Names were written from `&str`: one that is not UTF-8 was never read.
            Err(_) => tracing::warn!(
                key = %hex(&key),
                "a feed checkpoint kept under a name that is not UTF-8 is removed"
            ),
        }
        meta.tree.remove(&key).map_err(engine)?;
        moved += 1;
    }
    if moved > 0 {
        meta.db.flush().map_err(engine)?;
        tracing::info!(
            values = moved,
            "feed checkpoints and TAXII statuses kept in the metadata moved to their own files"
        );
    }
    Ok(())
}

fn dropped_notes_in(tree: &sled::Tree) -> sled::Result<Vec<super::dropped::Note>> {
    tree.scan_prefix([records::DROPPED])
        .map(|entry| {
            let (key, value) = entry?;
            Ok(key
                .get(1..)
                .and_then(|uuid| <[u8; 16]>::try_from(uuid).ok())
                .map(|uuid| (uuid, value.to_vec())))
        })
        .filter_map(Result::transpose)
        .collect()
}

/// Feed positions skipped after a store is rebuilt from its log: the lease that was
/// recorded is lost, and positions handed out for frames cut off the end are unknown.
const FEED_GAP_AFTER_REBUILD: u64 = FEED_LEASE * 1024;

impl SledStore {
    /// Rebuilds the store in `dir` from its bundle log alone, for a store whose
    /// metadata was lost or cannot be read (`entente store recover`): reads the log in
    /// recovery mode (see [`BundleLog::recover`]), moves whatever sled files remain to
    /// `aside` (with the ledger's segments and the value files), writes new metadata (owner, store id, watermark, a feed lease well
    /// above every position found) and starts a new disclosure ledger whose first
    /// record says that the history before it is lost, and why (`why`).
    pub fn rebuild(
        dir: &Path,
        owner: &NodeId,
        cache_bytes: u64,
        cut_damaged: bool,
        aside: &Path,
        why: &str,
    ) -> Result<(Self, super::log::Recovered), StoreError> {
        let log_path = dir.join(records::LOG_FILE);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                path: path.clone(),
                source,
            }
        };
        if !log_path.try_exists().map_err(io(&log_path))? {
            return Err(StoreError::Corrupt {
                key: format!("bundle log {}", log_path.display()),
                problem: "there is no bundle log to rebuild the store from".into(),
            });
        }
        let header = super::log::read_header(&log_path)?;
        // What a compaction a crash interrupted left beside the log: the log is what
        // the store is rebuilt from.
        super::compact::remove_if_there(&dir.join(records::LOG_FILE_COMPACTING))?;
        if header.owner != owner.as_str() {
            return Err(StoreError::WrongOwner {
                path: dir.to_owned(),
                expected: owner.clone(),
                found: header.owner,
            });
        }
        let mut index = Index::new();
        if let Some(len) = super::log::existing_log_len(&log_path) {
            index.reserve(usize::try_from(len / 200).unwrap_or(0).min(1 << 26));
        }
        let (log, found) =
            BundleLog::recover(&log_path, cut_damaged, |frame| replay(&mut index, frame))?;
        let synced = log.sync()?;
        // What is left of sled goes aside (never deleted), then new metadata.
        let entries = std::fs::read_dir(dir).map_err(io(dir))?;
        for entry in entries {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "db"
                || name == "conf"
                || name == "blobs"
                || name.starts_with("snap.")
                || name == files::DIR
                || name == files::MIGRATING_DIR
                || name == values::DIR
            {
                std::fs::create_dir_all(aside).map_err(io(aside))?;
                std::fs::rename(entry.path(), aside.join(&*name)).map_err(io(&entry.path()))?;
            }
        }
        let engine = |source| StoreError::Engine {
            path: dir.to_owned(),
            source,
        };
        let meta = open_meta(dir, cache_bytes).map_err(engine)?;
        let feed_lease = index.feed_head().saturating_add(FEED_GAP_AFTER_REBUILD);
        let mut batch = sled::Batch::default();
        batch.insert(records::META_OWNER, owner.as_str().as_bytes());
        batch.insert(records::META_FORMAT, &super::log::FORMAT.to_be_bytes()[..]);
        batch.insert(records::META_STORE_ID, &found.header.store_id[..]);
        batch.insert(records::META_LOG_SYNCED, &synced.to_be_bytes()[..]);
        batch.insert(
            records::META_LOG_GENERATION,
            &found.header.generation.to_be_bytes()[..],
        );
        batch.insert(records::META_FEED_LEASE, &feed_lease.to_be_bytes()[..]);
        // What each client's TAXII listings last saw is lost with the metadata.
        batch.insert(
            records::META_LISTING_DATES_LOST,
            &crate::util::now_ms().to_be_bytes()[..],
        );
        meta.tree.apply_batch(batch).map_err(engine)?;
        meta.db.flush().map_err(engine)?;
        let opened = Opened {
            store_id: found.header.store_id,
            acknowledged: synced,
            feed_lease,
            ledger_head: Head::EMPTY,
            ledger_floor: None,
        };
        let ledger = SegmentLedger::open(
            dir,
            opened.store_id,
            LedgerSettings::default(),
            Head::EMPTY,
            None,
        )?;
        let values = ValueFiles::open(dir)?;
        let store = Self::assemble(
            dir,
            owner,
            cache_bytes,
            meta,
            values,
            log,
            index,
            ledger,
            &opened,
        );
        store.append_ledger(&LedgerEntry {
            time_ms: now_ms(),
            partner: owner.clone(),
            path: super::LEDGER_RESTART_PATH.into(),
            deliveries: Vec::new(),
            policy_hash: [0u8; 32],
            note: why.to_owned(),
        })?;
        store.flush()?;
        Ok((store, found))
    }
}

use crate::util::hex;

/// Opens the bundle log at `path` as opening the store does, replaying every frame
/// into a fresh index; the index is then dropped. For checks that feed the log
/// reader arbitrary files.
pub(crate) fn replay_log(path: &Path, acknowledged: u64) -> Result<BundleLog, StoreError> {
    let mut index = Index::new();
    BundleLog::open(path, acknowledged, |frame| replay(&mut index, frame))
}

/// The exact (type, normalised value) pairs a value query looks for.
fn exact_values(query: &ItemQuery) -> Vec<(IndicatorType, String)> {
    let Some(value) = &query.value else {
        return Vec::new();
    };
    let types: Vec<IndicatorType> = match query.indicator_type {
        Some(ty) => vec![ty],
        None => IndicatorType::ALL.into_iter().collect(),
    };
    types
        .into_iter()
        .filter_map(|ty| normalise(ty, value).ok().map(|v| (ty, v)))
        .collect()
}

fn damaged_head(len: usize) -> LedgerCheck {
    LedgerCheck::Broken {
        seq: 0,
        problem: format!("the ledger head is damaged ({len} bytes, not 40)"),
    }
}

pub(super) fn corrupt(key: &str, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: key.to_owned(),
        problem: problem.to_string(),
    }
}

impl SledStore {
    /// One flush: the log synced, then the watermark and cursors written to sled,
    /// then sled flushed.
    fn flush_now(&self) -> Result<(), StoreError> {
        // Cursors set so far count bundles appended so far: take them before the log
        // sync, so the sync covers everything they count.
        let pending: Vec<(String, Vec<u8>)> = self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, (_, pending))| *pending)
            .map(|(peer, (token, _))| (peer.clone(), token.clone()))
            .collect();
        // The log first: nothing in sled may be durable before the bundles it follows.
        let (synced, generation) = {
            let log = self.log();
            (log.sync()?, log.header().generation)
        };
        // The ledger's records on disk before the head that counts them.
        let ledger_head = self.ledger.sync()?;
        let recorded = self.recorded_watermark.load(Ordering::SeqCst);
        let ledger_moved = *self
            .recorded_ledger_head
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            != Some(ledger_head);
        if self.directory_unsynced.load(Ordering::SeqCst) {
            let log_path = self.path.join(records::LOG_FILE);
            super::log::sync_dir(&log_path).map_err(|source| StoreError::Io {
                path: log_path,
                source,
            })?;
            self.directory_unsynced.store(false, Ordering::SeqCst);
        }
        if synced != recorded || !pending.is_empty() || ledger_moved {
            let mut batch = sled::Batch::default();
            batch.insert(records::META_LOG_SYNCED, &synced.to_be_bytes()[..]);
            // The watermark counts this log: its generation goes with it (and a
            // compaction's note is done with; none is pending while a flush runs).
            batch.insert(records::META_LOG_GENERATION, &generation.to_be_bytes()[..]);
            batch.remove(records::META_COMPACTING);
            batch.insert(records::META_LEDGER_HEAD, &ledger_head.encode()[..]);
            for (peer, token) in &pending {
                batch.insert(
                    records::key(records::CURSOR, peer.as_bytes()),
                    token.as_slice(),
                );
            }
            self.with_meta(|m| m.tree.apply_batch(batch))?;
        }
        self.with_meta(|m| m.db.flush())?;
        *self
            .recorded_ledger_head
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(ledger_head);
        // Old segments go once the head that follows them is durable.
        self.retain_ledger()?;
        self.recorded_watermark.fetch_max(synced, Ordering::SeqCst);
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, token) in pending {
            if let Some(entry) = cursors.get_mut(&peer) {
                if entry.0 == token {
                    entry.1 = false;
                }
            }
        }
        Ok(())
    }
}

impl SledStore {
    /// Ledger retention after a flush: the floor the dropped segments leave is recorded
    /// (durably) before any of them goes, and a failure to record it is the store's
    /// (it fails the flush). A segment that cannot be moved (an archive directory the
    /// node cannot write) is retention's own trouble: logged, counted, shown by
    /// [`DisclosureLedger::retention`], the segments kept and tried again after
    /// [`RETENTION_RETRY`]; the flush and deliveries go on.
    fn retain_ledger(&self) -> Result<(), StoreError> {
        let due = {
            let state = self.retention.lock().unwrap_or_else(|p| p.into_inner());
            state
                .1
                .is_none_or(|retry| std::time::Instant::now() >= retry)
        };
        if !due {
            return Ok(());
        }
        let retained = self.ledger.retain(|floor| {
            self.with_meta(|m| {
                m.tree
                    .insert(records::META_LEDGER_FLOOR, &floor.encode()[..])?;
                m.db.flush()
            })
            .map(|_| ())
        })?;
        let mut state = self.retention.lock().unwrap_or_else(|p| p.into_inner());
        match retained {
            files::Retained::Busy => {}
            files::Retained::Done => {
                state.1 = None;
                if state.0.failing.take().is_some() {
                    tracing::info!(data_dir = %self.path.display(), "ledger retention works again");
                }
            }
            files::Retained::Failed { dropped, error } => {
                state.0.failures += 1;
                state.1 = Some(std::time::Instant::now() + RETENTION_RETRY);
                let reason = error.to_string();
                let since = match &state.0.failing {
                    Some((held, since)) if *held == reason => {
                        return Ok(());
                    }
                    Some((_, since)) => *since,
                    None => crate::util::now_ms(),
                };
                tracing::error!(%reason, dropped, retry_in_s = RETENTION_RETRY.as_secs(), "ledger retention failed: the segments due are kept and tried again later; writes and deliveries go on");
                state.0.failing = Some((reason, since));
            }
        }
        Ok(())
    }
}

/// How long ledger retention waits after a failure before it tries again.
pub const RETENTION_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl ItemStore for SledStore {
    fn owner(&self) -> &NodeId {
        &self.owner
    }

    fn accept(
        &self,
        bundle: &VerifiedBundle,
        source: &Source,
        now_ms: i64,
    ) -> Result<AcceptReport, StoreError> {
        let header = bundle.header();
        let bundle_uuid = header.bundle_id.uuid_bytes();
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // A store that cannot write refuses before anything is appended: a write the
        // node answers as refused leaves nothing behind (it would otherwise be held,
        // served and pulled once the disk has room, and kept by the next flush).
        self.writable()?;
        let log = self.log();

        // What is known of this bundle (its head, and which indices), the feed head and
        // how many slots there are.
        let (held, known, feed_head, slots) = {
            let index = self.index();
            let entry = index.bundles.get(&bundle_uuid);
            let known: std::collections::HashSet<u32> = entry
                .into_iter()
                .flat_map(|e| e.slots())
                .map(|s| index.slots[s as usize].index())
                .collect();
            (
                entry.map(|e| e.head),
                known,
                index.feed_head(),
                index.slots.len(),
            )
        };
        // The same signed header under another valid signature (ECDSA signatures are
        // malleable) is the same bundle: the first is kept.
        if let Some(head) = held {
            if Self::read_head(&log, head, &header.bundle_id)?.header_bytes != bundle.header_bytes()
            {
                return Err(StoreError::ConflictingBundle(header.bundle_id.clone()));
            }
        }
        let origin = header.origin.to_string();
        let received_from = source.received_from.to_string();
        // Above every position that may have been handed out before a restart.
        let seq = feed_head
            .max(self.feed_floor)
            .max(self.feed_compacted.load(Ordering::SeqCst))
            + 1;
        let head_bytes = held.is_none().then(|| {
            BundleHead {
                header_bytes: bundle.header_bytes().to_vec(),
                signature: bundle.signature().to_vec(),
            }
            .encode_to_vec()
        });
        let mut frame = FrameBuilder::new(&bundle_uuid, seq, head_bytes.as_deref());
        let mut new_items = Vec::new();

        let mut report = AcceptReport::default();
        // Item versions written by this frame, so items of one bundle see each other.
        let mut pending: HashMap<[u8; 16], (i64, &Item)> = HashMap::new();
        // Items of this frame whose new version may release what references them.
        let mut released: HashSet<[u8; 16]> = HashSet::new();
        for verified in bundle.items() {
            let item = &verified.item;
            let uuid = item.id.uuid_bytes();
            if known.contains(&verified.index) {
                // Held already; a shorter path lowers its hop count (the delivery rule counts the fewest transfers).
                match self.item_record(&log, &uuid)? {
                    Some(mut current)
                        if current.bundle_uuid == bundle_uuid
                            && current.index == verified.index
                            && source.hops < current.hops =>
                    {
                        current.hops = source.hops;
                        current.received_from = received_from.clone();
                        frame.record(&current);
                        new_items.push(self.new_item(item, verified.index));
                        report.hops_lowered += 1;
                        // Fewer transfers may let it reach partners with a `max_hops`,
                        // and what references it with it.
                        if self.index().referrers.contains_key(&uuid) {
                            released.insert(uuid);
                        }
                    }
                    _ => report.duplicates += 1,
                }
                continue;
            }
            // The version held: modified time and origin (and, for a revocation, the
            // item it replaces).
            // A revocation, or a context object's version with `revoked: true`: it
            // carries what it replaces was judged by, and goes no further.
            let is_revocation = item.withdraws();
            let held = match pending.get(&uuid) {
                Some((_, pending_item)) if pending_item.id != item.id => {
                    report.rejected.push((
                        verified.index,
                        ItemRejection::TypeConflict {
                            held: pending_item.id.to_string(),
                        },
                    ));
                    continue;
                }
                Some((modified, pending_item)) => Some((
                    *modified,
                    None,
                    is_revocation.then(|| (*pending_item).clone()),
                    *modified == item.modified_ms
                        && crate::store::differs_for_sharing(pending_item, item),
                )),
                None => match self.item_record(&log, &uuid)? {
                    // Not held: perhaps dropped by a compaction as expired.
                    None => self
                        .dropped(&uuid)?
                        .map(|(modified, origin)| (modified, Some(origin), None, false)),
                    Some(current) => {
                        // One UUID, one object type: `malware--X` never replaces
                        // `indicator--X` (ids compare in lower case, as they are parsed).
                        let held_id = records::item_id(&current.item_bytes).unwrap_or("");
                        if !held_id.eq_ignore_ascii_case(item.id.as_str()) {
                            report.rejected.push((
                                verified.index,
                                ItemRejection::TypeConflict {
                                    held: held_id.chars().take(80).collect(),
                                },
                            ));
                            continue;
                        }
                        let replaced = if is_revocation {
                            let replaced_item = Item::decode_stored(&current.item_bytes)
                                .map_err(|e| corrupt("item", e))?;
                            // A revocation goes no further than the version it replaces.
                            let wider = match records::uuid16(&current.bundle_uuid) {
                                Some(uuid) => {
                                    let id = BundleId::from_uuid_bytes(uuid);
                                    match self.bundle_header_in(&log, &id)? {
                                        Some(bytes) => crate::crypto::parse_header(&bytes)
                                            .ok()
                                            .map(|(h, _)| h.distribution)
                                            .and_then(|old| {
                                                bundle.header().distribution.reaches_beyond(&old)
                                            })
                                            .map(|why| {
                                                format!(
                                                    "the revocation reaches beyond the item it revokes: {why}"
                                                )
                                            }),
                                        None => None,
                                    }
                                }
                                None => None,
                            };
                            if let Some(problem) = wider {
                                report.rejected.push((
                                    verified.index,
                                    ItemRejection::RevocationMismatch { problem },
                                ));
                                continue;
                            }
                            Some(replaced_item)
                        } else {
                            None
                        };
                        // The same version, written differently (a GREEN and a RED
                        // copy of one object): not a duplicate to pass over.
                        let differs = current.modified_ms == item.modified_ms
                            && current.item_bytes != verified.item_bytes
                            && Item::decode_stored(&current.item_bytes).map_or(true, |held| {
                                crate::store::differs_for_sharing(&held, item)
                            });
                        Some((current.modified_ms, Some(current.origin), replaced, differs))
                    }
                },
            };
            if let Some((modified, holder, replaced, differs)) = held {
                if let Some(holder) = holder.filter(|h| *h != origin) {
                    report.rejected.push((
                        verified.index,
                        ItemRejection::NotOriginWriter {
                            holder: NodeId::new(&holder)
                                .map_err(|e| corrupt(&item.id.to_string(), e))?,
                        },
                    ));
                    continue;
                }
                if item.modified_ms <= modified {
                    if differs {
                        report.rejected.push((
                            verified.index,
                            ItemRejection::SameVersionDiffers {
                                at_ms: item.modified_ms,
                            },
                        ));
                    } else {
                        report.duplicates += 1;
                    }
                    continue;
                }
                if let Some(problem) = replaced
                    .as_ref()
                    .and_then(|held| crate::store::revocation_mismatch(held, item))
                {
                    report.rejected.push((
                        verified.index,
                        ItemRejection::RevocationMismatch { problem },
                    ));
                    continue;
                }
            }
            frame.record_ref(&records::ItemRecordRef {
                bundle_uuid: &bundle_uuid,
                index: verified.index,
                salt: &verified.salt,
                item_bytes: &verified.item_bytes,
                modified_ms: item.modified_ms,
                origin: &origin,
                received_from: &received_from,
                hops: source.hops,
                accepted_ms: now_ms,
            });
            new_items.push(self.new_item(item, verified.index));
            // A new version of an object others reference, which may reach partners the
            // version before it did not: what references it may go to them now too.
            if self.index().referrers.contains_key(&uuid) {
                let releases = match pending.get(&uuid) {
                    Some((_, before)) => crate::store::may_release(before, item),
                    None => match self.item_record(&log, &uuid)? {
                        Some(held) => {
                            // Signed to wider recipients than the version held (more
                            // nodes, more hops), or changed as sharing reads it.
                            let wider = records::uuid16(&held.bundle_uuid)
                                .map(BundleId::from_uuid_bytes)
                                .map(|id| self.bundle_header_in(&log, &id))
                                .transpose()?
                                .flatten()
                                .and_then(|bytes| crate::crypto::parse_header(&bytes).ok())
                                .is_some_and(|(old, _)| {
                                    bundle
                                        .header()
                                        .distribution
                                        .reaches_beyond(&old.distribution)
                                        .is_some()
                                });
                            wider
                                || Item::decode_stored(&held.item_bytes)
                                    .is_ok_and(|held| crate::store::may_release(&held, item))
                        }
                        None => false,
                    },
                };
                if releases {
                    released.insert(uuid);
                }
            }
            pending.insert(uuid, (item.modified_ms, item));
            report.stored.push(verified.index);
        }

        if report.stored.is_empty() && report.hops_lowered == 0 {
            return Ok(report);
        }
        // Objects held already that waited for what this frame stores (`Index::waiting`):
        // they are recorded again, in the same write.
        let super::index::Waiting {
            bundles: waiting,
            items: waited,
            released: released_again,
        } = {
            let index = self.index();
            if index.referrers.is_empty() {
                super::index::Waiting::default()
            } else {
                let pending: super::index::Pending = new_items
                    .iter()
                    .map(|new| (new.uuid, (new.ty, new.refs.clone())))
                    .collect();
                index.waiting(&pending, &released)
            }
        };
        // Each waiting item is recorded again in its bundle, accepted now: that gives
        // the bundle a new place in the feed, and lists the item as added now (TAXII's
        // `added_after`), when it first may go out.
        let mut again: Vec<([u8; 16], Vec<ItemRecord>, Vec<NewItem>)> = waiting
            .iter()
            .map(|bundle| (*bundle, Vec::new(), Vec::new()))
            .collect();
        let group_of: HashMap<[u8; 16], usize> = waiting
            .iter()
            .enumerate()
            .map(|(at, bundle)| (*bundle, at))
            .collect();
        for uuid in &waited {
            let Some(mut record) = self.item_record(&log, uuid)? else {
                continue;
            };
            let Some(group) = records::uuid16(&record.bundle_uuid)
                .and_then(|bundle| group_of.get(&bundle))
                .and_then(|at| again.get_mut(*at))
            else {
                continue;
            };
            let item = Item::decode_stored(&record.item_bytes).map_err(|e| corrupt("item", e))?;
            record.accepted_ms = now_ms;
            group.2.push(self.new_item(&item, record.index));
            group.1.push(record);
        }
        again.retain(|(_, records, _)| !records.is_empty());
        // Items of this bundle that waited go into its own frame.
        let mut own_again: Vec<ItemRecord> = Vec::new();
        if let Some(at) = again.iter().position(|(b, _, _)| *b == bundle_uuid) {
            let (_, records, items) = again.remove(at);
            for record in &records {
                frame.record(record);
            }
            new_items.extend(items);
            own_again = records;
        }
        // Appends are serial (the writer lock), so no slot was added since.
        let recorded_again: usize = again.iter().map(|(_, records, _)| records.len()).sum();
        if slots + new_items.len() + recorded_again >= NONE as usize {
            return Err(corrupt(
                "bundle log",
                "more item records than this version indexes",
            ));
        }
        // The frames that record again come first, this bundle's frame last, all in
        // one write. Should a crash keep only the first of them, what they record
        // still waits for this bundle's items (they were not held before it), so when
        // the bundle comes again, as it will (it was never acknowledged), they are
        // offered again with it. A partner that reads them before this bundle's frame
        // finds its items held already.
        let own_seq = seq + again.len() as u64;
        frame.set_feed_seq(own_seq);
        if own_seq > self.feed_lease.load(Ordering::SeqCst) {
            self.lease_feed(own_seq)?;
        }
        let mut frames = Vec::with_capacity(1 + again.len());
        for (at, (bundle, records, _)) in (seq..).zip(&again) {
            let mut frame = FrameBuilder::new(bundle, at, None);
            for record in records {
                frame.record(record);
            }
            frames.push(frame);
        }
        frames.push(frame);
        let mut written = log
            .append_all(frames)
            .inspect_err(|e| self.note_failure(e, false))?;
        let own = written
            .pop()
            .ok_or_else(|| corrupt("bundle log", "a frame written went missing"))?;
        // Applied in the order written, as a replay of the log applies them.
        let mut index = self.index.write().unwrap_or_else(|p| p.into_inner());
        report.offered_again = again.len();
        for ((at, (bundle, records, mut items)), spans) in (seq..).zip(again).zip(written) {
            for (new, span) in items.iter_mut().zip(&spans.items) {
                new.span = *span;
            }
            index.apply(bundle, at, None, items)?;
            for record in records {
                report.waited.push(Self::stored_item(record)?);
            }
        }
        for (new, span) in new_items.iter_mut().zip(&own.items) {
            new.span = *span;
        }
        index.apply(bundle_uuid, own_seq, own.head, new_items)?;
        for record in own_again {
            report.waited.push(Self::stored_item(record)?);
        }
        // Offered again once per version: a new version of an item stored here may be
        // offered again later; one recorded again is not, however often what it
        // references changes (each change back and forth would otherwise send its
        // bundle out again).
        for uuid in pending.keys() {
            index.offered_again.remove(uuid);
            index.released_again.remove(uuid);
        }
        for (by, end) in &released_again {
            let spent = index
                .released_again
                .entry(*by)
                .or_default()
                .entry(*end)
                .or_insert(0);
            *spent = spent.saturating_add(1);
        }
        index.offered_again.extend(
            waited
                .iter()
                .filter(|uuid| !released_again.iter().any(|(by, _)| by == *uuid))
                .copied(),
        );
        drop(index);
        report.feed_seq = Some(own_seq);
        Ok(report)
    }

    fn flush(&self) -> Result<(), StoreError> {
        // One flush at a time, so an older watermark or cursor never lands after a
        // newer one.
        let _one = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        // A store that could not write tries again: room on the disk, sled reopened.
        self.try_recover()?;
        match self.flush_now() {
            Ok(()) => {
                if self
                    .trouble
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .is_some()
                {
                    tracing::info!(data_dir = %self.path.display(), "the store writes again");
                }
                Ok(())
            }
            Err(error) => {
                self.note_failure(&error, false);
                Err(error)
            }
        }
    }

    fn writable(&self) -> Result<(), StoreError> {
        if self
            .trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Err(self.unwritable_now());
        }
        Ok(())
    }

    fn latest_is_revocation(&self, id: &ItemId) -> Result<bool, StoreError> {
        // Read from the index (a revocation's slot carries no type), no record read.
        if id.stix_type() != "indicator" {
            return Ok(false);
        }
        let index = self.index();
        Ok(index
            .latest(&id.uuid_bytes())
            .is_some_and(|slot| index.slots[slot as usize].ty() == records::NOT_INDEXED))
    }

    fn get(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        let log = self.log();
        match self.item_record(&log, &id.uuid_bytes())? {
            None => Ok(None),
            // The UUID under another type is another id: not held.
            Some(record) => {
                Ok(Some(Self::stored_item(record)?).filter(|stored| &stored.item.id == id))
            }
        }
    }

    fn dropped_origin(&self, id: &ItemId) -> Result<Option<String>, StoreError> {
        Ok(self.dropped(&id.uuid_bytes())?.map(|(_, origin)| origin))
    }

    fn get_any_type(&self, id: &ItemId) -> Result<Option<StoredItem>, StoreError> {
        let log = self.log();
        match self.item_record(&log, &id.uuid_bytes())? {
            None => Ok(None),
            Some(record) => Ok(Some(Self::stored_item(record)?)),
        }
    }

    /// The index chains each id's records from its latest back, so this reads only
    /// the id's own records, however large the store. A version recorded more than once
    /// (the same item in two bundles, or in two parts of one) is listed once, from its
    /// last record.
    fn versions(&self, id: &ItemId, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        // The log is held for the whole read, so a compaction cannot swap it between
        // finding the slots and reading them.
        let log = self.log();
        let spans: Vec<Span> = {
            let index = self.index();
            index
                .versions_newest_first(&id.uuid_bytes())
                .iter()
                .map(|&s| index.slots[s as usize].span())
                .collect()
        };
        let mut out: Vec<StoredItem> = Vec::new();
        for span in spans {
            if out.len() == limit {
                break;
            }
            let stored = Self::stored_item(Self::read_record(&log, span)?)?;
            // The UUID under another type is another id.
            if &stored.item.id != id {
                continue;
            }
            if out
                .last()
                .is_some_and(|newer| newer.item.modified_ms == stored.item.modified_ms)
            {
                continue;
            }
            out.push(stored);
        }
        out.reverse();
        Ok(out)
    }

    fn records_of(&self, id: &ItemId, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let log = self.log();
        let spans: Vec<Span> = {
            let index = self.index();
            index
                .versions_newest_first(&id.uuid_bytes())
                .iter()
                .take(limit)
                .map(|&s| index.slots[s as usize].span())
                .collect()
        };
        let mut out = Vec::with_capacity(spans.len());
        for span in spans {
            let stored = Self::stored_item(Self::read_record(&log, span)?)?;
            // The UUID under another type is another id.
            if &stored.item.id == id {
                out.push(stored);
            }
        }
        Ok(out)
    }

    /// Walks the value chain of each exact (type, value), live slots or not: the chain
    /// links every record of the value's hash, whatever replaced it since.
    fn records_with_value(&self, value: &str, limit: usize) -> Result<Vec<StoredItem>, StoreError> {
        let query = ItemQuery {
            value: Some(value.to_owned()),
            ..ItemQuery::default()
        };
        let log = self.log();
        let mut out = Vec::new();
        for (ty, exact) in exact_values(&query) {
            let code = records::type_code(ty);
            let hash = value_hash(&self.hasher, code, exact.as_bytes());
            let spans: Vec<Span> = {
                let index = self.index();
                let slots = &index.slots;
                let mut at = index
                    .by_value
                    .find(hash, |&s| slots[s as usize].value_hash == hash)
                    .copied()
                    .unwrap_or(NONE);
                let mut spans = Vec::new();
                while at != NONE && out.len() + spans.len() < limit {
                    let slot = &slots[at as usize];
                    if slot.ty() == code {
                        spans.push(slot.span());
                    }
                    at = slot.next;
                }
                spans
            };
            for span in spans {
                let stored = Self::stored_item(Self::read_record(&log, span)?)?;
                // Another value of the same hash is not this one.
                if records::value_of(&stored.item) == Some((code, exact.as_str())) {
                    out.push(stored);
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn query(
        &self,
        query: &ItemQuery,
        after: Option<&[u8]>,
        limit: PageLimit,
        now_ms: i64,
        visible: &dyn Fn(&StoredItem) -> bool,
    ) -> Result<Page, StoreError> {
        let mut page = Page::default();
        if limit.items == 0 {
            return Ok(page);
        }
        let log = self.log();
        // Cursors name slots, which a compaction numbers anew: each starts with the
        // generation of the log it counts in.
        let current = log.header().generation as u32;
        let generation = current.to_be_bytes();
        let after = match after {
            None | Some([]) => None,
            Some(cursor) => match cursor.split_first_chunk::<4>() {
                Some((g, rest)) if *g == generation && !rest.is_empty() => Some(rest),
                Some((g, rest)) if u32::from_be_bytes(*g) < current && !rest.is_empty() => {
                    return Err(StoreError::StaleCursor);
                }
                _ => return Err(StoreError::BadCursor),
            },
        };
        let stamp = |next: Option<Vec<u8>>| {
            next.map(|inner| {
                let mut cursor = generation.to_vec();
                cursor.extend_from_slice(&inner);
                cursor
            })
        };
        if query.value.is_some() {
            let exact = exact_values(query);
            let want = Wanted {
                log: &log,
                query,
                exact: &exact,
                now_ms,
                visible,
                limit,
            };
            page.next = stamp(self.walk_values(&want, after, &mut page)?);
            return Ok(page);
        }
        let want = Wanted {
            log: &log,
            query,
            exact: &[],
            now_ms,
            visible,
            limit,
        };
        page.next = stamp(self.walk_slots(&want, after, &mut page)?);
        page.end = stamp(page.end.take());
        Ok(page)
    }

    fn held_bundle(&self, id: &BundleId) -> Result<Option<HeldBundle>, StoreError> {
        let log = self.log();
        let (head, mut slots) = {
            let index = self.index();
            let Some(entry) = index.bundles.get(&id.uuid_bytes()) else {
                return Ok(None);
            };
            // Only the latest version of an id is ever passed on.
            let live: Vec<(u32, Span)> = entry
                .slots()
                .map(|s| index.slots[s as usize])
                .filter(|slot| slot.live())
                .map(|slot| (slot.index(), slot.span()))
                .collect();
            (entry.head, live)
        };
        slots.sort_unstable_by_key(|(index, _)| *index);
        let head = Self::read_head(&log, head, id)?;
        let mut items = Vec::with_capacity(slots.len());
        for (index, span) in slots {
            let record = Self::read_record(&log, span)?;
            let salt = record.salt.clone();
            let item_bytes = record.item_bytes.clone();
            items.push(HeldItem {
                index,
                salt,
                item_bytes,
                stored: Self::stored_item(record)?,
            });
        }
        Ok(Some(HeldBundle {
            header_bytes: head.header_bytes,
            signature: head.signature,
            items,
        }))
    }

    fn bundle_header(&self, id: &BundleId) -> Result<Option<Vec<u8>>, StoreError> {
        self.bundle_header_in(&self.log(), id)
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let sled = self.with_meta(|m| m.db.size_on_disk())?;
        Ok(sled + self.log().len() + self.ledger.bytes() + self.values.bytes()?)
    }
}

impl ChangeFeed for SledStore {
    fn feed_head(&self) -> u64 {
        self.index().feed_head()
    }

    fn numbering(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn feed_limit(&self) -> u64 {
        self.feed_head()
            .max(self.feed_floor)
            .max(self.feed_compacted.load(Ordering::SeqCst))
    }

    fn feed(&self, after: u64, limit: usize) -> Result<Vec<(u64, BundleId)>, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let index = self.index();
        Ok(index
            .feed
            .range(first..)
            .take(limit)
            .map(|(seq, uuid)| (*seq, BundleId::from_uuid_bytes(*uuid)))
            .collect())
    }
}

impl PartnerState for SledStore {
    fn served_policy(&self, peer: &NodeId) -> Result<Option<[u8; 32]>, StoreError> {
        let key = records::key(records::SERVED, peer.as_str().as_bytes());
        Ok(self
            .with_meta(|m| m.tree.get(key))?
            .and_then(|v| v.as_ref().try_into().ok()))
    }

    fn set_served_policy(&self, peer: &NodeId, fingerprint: &[u8; 32]) -> Result<(), StoreError> {
        let key = records::key(records::SERVED, peer.as_str().as_bytes());
        self.with_meta(|m| m.tree.insert(key, &fingerprint[..]))?;
        Ok(())
    }

    fn listed_since(&self, client: &NodeId) -> Result<Option<([u8; 32], i64)>, StoreError> {
        let key = records::key(records::LISTED_SINCE, client.as_str().as_bytes());
        // A value of another length is not one this node wrote: counted as never
        // recorded.
        let recorded = self.with_meta(|m| m.tree.get(key))?.and_then(|v| {
            let fingerprint: [u8; 32] = v.get(..32)?.try_into().ok()?;
            let since: [u8; 8] = v.get(32..)?.try_into().ok()?;
            Some((fingerprint, i64::from_be_bytes(since)))
        });
        if recorded.is_some() {
            return Ok(recorded);
        }
        // In a store rebuilt from its log, a client not recorded since may have listed
        // under another policy before: it counts as seen under an unknown one.
        let lost = self
            .with_meta(|m| m.tree.get(records::META_LISTING_DATES_LOST))?
            .is_some();
        Ok(lost.then_some((crate::store::UNKNOWN_POLICY, 0)))
    }

    fn set_listed_since(
        &self,
        client: &NodeId,
        fingerprint: &[u8; 32],
        since_ms: i64,
    ) -> Result<(), StoreError> {
        let key = records::key(records::LISTED_SINCE, client.as_str().as_bytes());
        let mut value = fingerprint.to_vec();
        value.extend_from_slice(&since_ms.to_be_bytes());
        self.with_meta(|m| m.tree.insert(key, value))?;
        Ok(())
    }

    fn cursor(&self, peer: &NodeId) -> Result<Vec<u8>, StoreError> {
        if let Some((token, _)) = self
            .cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer.as_str())
        {
            return Ok(token.clone());
        }
        let key = records::key(records::CURSOR, peer.as_str().as_bytes());
        // A value longer than any token is not sent: the peer's feed is pulled from
        // the start.
        Ok(self
            .with_meta(|m| m.tree.get(key))?
            .filter(|v| v.len() <= crate::sync::positions::MAX_TOKEN_BYTES)
            .map(|v| v.to_vec())
            .unwrap_or_default())
    }

    fn set_cursor(&self, peer: &NodeId, token: &[u8]) -> Result<(), StoreError> {
        if token.len() > crate::sync::positions::MAX_TOKEN_BYTES {
            return Err(StoreError::BadCursor);
        }
        // Kept in memory until the next flush, which syncs the log first: the bundles
        // a cursor counts are on disk before the cursor is.
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer.as_str().to_owned(), (token.to_vec(), true));
        Ok(())
    }
}

impl LocalState for SledStore {
    fn feed_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.values.get(name)
    }

    fn set_feed_checkpoint(&self, name: &str, checkpoint: &[u8]) -> Result<(), StoreError> {
        // A value past the bounds is refused as such; it says nothing of the disk.
        values::check(&self.path, name, checkpoint)?;
        self.writable()?;
        self.values.put(name, checkpoint).inspect_err(|error| {
            self.note_failure(error, false);
        })
    }

    fn feed_checkpoints_named(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.values.named(prefix, limit)
    }

    fn remove_feed_checkpoint(&self, name: &str) -> Result<(), StoreError> {
        self.writable()?;
        self.values.remove(name).inspect_err(|error| {
            self.note_failure(error, false);
        })
    }

    fn put_certificate(&self, der: &[u8]) -> Result<[u8; 32], StoreError> {
        let sha = crate::crypto::sha256(der);
        self.with_meta(|m| m.tree.insert(records::key(records::CERT, &sha), der))?;
        Ok(sha)
    }

    fn certificate(&self, sha256: &[u8; 32]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .with_meta(|m| m.tree.get(records::key(records::CERT, sha256)))?
            .map(|v| v.to_vec()))
    }
}

impl DisclosureLedger for SledStore {
    fn append_ledger_many(&self, entries: &[LedgerEntry]) -> Result<Vec<LedgerRecord>, StoreError> {
        // A record that cannot reach the disk is not written: the delivery it
        // records is refused instead.
        self.writable()?;
        self.ledger.append(entries).inspect_err(|error| {
            self.note_failure(error, false);
        })
    }

    fn append_ledger(&self, entry: &LedgerEntry) -> Result<LedgerRecord, StoreError> {
        let mut records = self.append_ledger_many(std::slice::from_ref(entry))?;
        records.pop().ok_or_else(|| StoreError::Corrupt {
            key: "disclosure ledger".into(),
            problem: "an append returned no record".into(),
        })
    }

    fn ledger(
        &self,
        after: u64,
        limit: usize,
        partner: Option<&NodeId>,
        since_ms: Option<i64>,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        self.ledger.read(after, limit, partner, since_ms)
    }

    fn retention(&self) -> super::RetentionState {
        self.retention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    fn verify_ledger(&self) -> Result<LedgerCheck, StoreError> {
        let durable = match self.stored_ledger_head()? {
            None => None,
            Some(Ok(head)) => Some(head),
            Some(Err(len)) => return Ok(damaged_head(len)),
        };
        let floor = match self.with_meta(|m| m.tree.get(records::META_LEDGER_FLOOR))? {
            None => None,
            Some(v) => match Head::decode(&v) {
                Some(floor) => Some(floor),
                None => {
                    return Ok(LedgerCheck::Broken {
                        seq: 0,
                        problem: format!(
                            "the ledger's retention floor is damaged ({} bytes, not 40)",
                            v.len()
                        ),
                    });
                }
            },
        };
        self.ledger.verify(durable, floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ledger;

    fn owner() -> NodeId {
        NodeId::new("redmond.hq").unwrap()
    }

    /// Opens, waiting while sled still holds the lock of a store just dropped.
    fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match SledStore::open(dir, &owner(), 1 << 20) {
                Err(StoreError::Engine { source, .. })
                    if is_lock_error(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// `open_meta`, waiting out the lock a store just dropped may still hold (its
    /// flusher thread lets go of it a moment later).
    fn open_meta_waiting(dir: &Path) -> Meta {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open_meta(dir, 1 << 20) {
                Err(e) if is_lock_error(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    fn size_of(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .map(|e| e.unwrap())
                .map(|e| match e.metadata().unwrap() {
                    m if m.is_dir() => size_of(&e.path()),
                    m => m.len(),
                })
                .sum()
        })
    }

    /// Checkpoints and statuses an earlier version kept in sled are moved to their
    /// files at open, once: readable as before, gone from sled.
    #[test]
    fn values_kept_in_sled_move_to_their_files_at_open() {
        let temp = tempfile::tempdir().unwrap();
        drop(open(temp.path()).unwrap());
        let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        {
            let meta = open_meta_waiting(temp.path());
            for round in 0..5u8 {
                let mut value = big.clone();
                value[0] = round;
                meta.tree
                    .insert(records::key(records::FEED_CHECKPOINT, b"misp-a"), value)
                    .unwrap();
                meta.db.flush().unwrap();
            }
            meta.tree
                .insert(
                    records::key(records::FEED_CHECKPOINT, b"#taxii-status/analyst.a/3"),
                    &b"status"[..],
                )
                .unwrap();
            meta.tree
                .insert(
                    records::key(records::FEED_CHECKPOINT, b"\xff\xfe"),
                    &b"x"[..],
                )
                .unwrap();
            meta.db.flush().unwrap();
        }
        let blobs_before = size_of(&temp.path().join("blobs"));
        let store = open(temp.path()).unwrap();
        let mut expected = big.clone();
        expected[0] = 4;
        assert_eq!(
            store.feed_checkpoint("misp-a").unwrap(),
            Some(expected.clone())
        );
        assert_eq!(
            store.taxii_statuses(10).unwrap(),
            vec![("analyst.a/3".to_owned(), b"status".to_vec())]
        );
        let left = store
            .with_meta(|m| Ok(m.tree.scan_prefix([records::FEED_CHECKPOINT]).count()))
            .unwrap();
        assert_eq!(left, 0, "nothing of them is left in sled");
        drop(store);
        let store = open(temp.path()).unwrap();
        assert_eq!(store.feed_checkpoint("misp-a").unwrap(), Some(expected));
        eprintln!(
            "sled blobs: {} KiB before the move, {} KiB after",
            blobs_before / 1024,
            size_of(&temp.path().join("blobs")) / 1024
        );
    }

    /// A value past the bounds is refused as such, and the store goes on writing.
    #[test]
    fn a_value_too_large_is_refused_and_the_store_still_writes() {
        let temp = tempfile::tempdir().unwrap();
        let store = open(temp.path()).unwrap();
        let huge = vec![0u8; values::MAX_VALUE_BYTES as usize + 1];
        assert!(matches!(
            store.set_feed_checkpoint("misp-a", &huge),
            Err(StoreError::ValueTooLarge { .. })
        ));
        store.set_feed_checkpoint("misp-a", b"small").unwrap();
        store.flush().unwrap();
        assert_eq!(
            store.feed_checkpoint("misp-a").unwrap(),
            Some(b"small".to_vec())
        );
    }

    #[test]
    fn a_log_is_opened_only_with_its_own_metadata() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        drop(open(a.path()).unwrap());
        drop(open(b.path()).unwrap());
        // Both open again as they are.
        drop(open(a.path()).unwrap());
        // Another store's log beside this metadata.
        std::fs::copy(
            b.path().join(records::LOG_FILE),
            a.path().join(records::LOG_FILE),
        )
        .unwrap();
        let refused = open(a.path()).err().unwrap();
        assert!(
            matches!(&refused, StoreError::MetadataLost { problem, .. } if problem.contains("another store")),
            "{refused}"
        );
        // sled's file gone: refused, never a new store beside the old log.
        std::fs::remove_file(b.path().join("db")).unwrap();
        let refused = open(b.path()).err().unwrap();
        assert!(
            matches!(&refused, StoreError::MetadataLost { problem, .. } if problem.contains("missing")),
            "{refused}"
        );
        assert!(refused.to_string().contains("entente store recover"));
        assert!(!b.path().join("db").exists());
    }

    fn old_entry(i: u64) -> LedgerEntry {
        LedgerEntry {
            time_ms: 1_700_000_000_000 + i as i64,
            partner: NodeId::new("berlin.office").unwrap(),
            path: "query".into(),
            deliveries: vec![(BundleId::from_uuid_bytes([i as u8; 16]), vec![0, i as u32])],
            policy_hash: [4u8; 32],
            note: String::new(),
        }
    }

    /// Writes `n` records the way stores kept the ledger before segments: one sled
    /// entry per record in its canonical form, and the head. Returns the head.
    fn write_old_ledger(dir: &Path, n: u64) -> Head {
        let meta = open_meta_waiting(dir);
        let mut head = Head::EMPTY;
        let mut batch = sled::Batch::default();
        for seq in 1..=n {
            let stored = ledger::encode_record(seq, &old_entry(seq), &head.hash);
            head = Head {
                seq,
                hash: ledger::link_hash(&stored),
            };
            batch.insert(&records::ledger_key(seq)[..], stored);
        }
        batch.insert(records::META_LEDGER_HEAD, &head.encode()[..]);
        meta.tree.apply_batch(batch).unwrap();
        meta.db.flush().unwrap();
        head
    }

    #[test]
    fn a_ledger_kept_in_sled_is_converted_to_segments_with_the_same_hashes() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        let head = write_old_ledger(dir.path(), 300);
        let store = open(dir.path()).unwrap();
        assert_eq!(
            store.verify_ledger().unwrap(),
            LedgerCheck::Intact {
                records: 300,
                head: head.hash,
                from: 0
            }
        );
        let all = store.ledger(0, 1000, None, None).unwrap();
        assert_eq!(all.len(), 300);
        assert!(all.iter().all(|r| r.entry == old_entry(r.seq)));
        let next = store.append_ledger(&old_entry(301)).unwrap();
        assert_eq!(next.prev_hash, head.hash);
        store.flush().unwrap();
        drop(store);
        // No sled entry is left, and it opens as segments from now on.
        let store = open(dir.path()).unwrap();
        let meta = store.meta.read().unwrap();
        let tree = &meta.as_ref().unwrap().tree;
        assert!(tree.scan_prefix([records::LEDGER]).next().is_none());
        drop(meta);
        assert!(matches!(
            store.verify_ledger().unwrap(),
            LedgerCheck::Intact { records: 301, .. }
        ));
    }

    #[test]
    fn a_broken_ledger_kept_in_sled_is_not_converted() {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()).unwrap());
        write_old_ledger(dir.path(), 10);
        {
            let meta = open_meta_waiting(dir.path());
            meta.tree.remove(records::ledger_key(4)).unwrap();
            meta.db.flush().unwrap();
        }
        let refused = open(dir.path()).err().unwrap().to_string();
        assert!(refused.contains("record 4 is missing"), "{refused}");
        assert!(refused.contains("not converted"), "{refused}");
        assert!(
            !dir.path()
                .join(files::DIR)
                .join("00000000000000000001.seg")
                .exists()
        );
    }

    #[test]
    fn a_store_is_rebuilt_from_its_log_with_a_ledger_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path()).unwrap();
        store.flush().unwrap();
        drop(store);
        std::fs::remove_file(dir.path().join("db")).unwrap();
        let aside = dir.path().join("aside");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (store, found) = loop {
            match SledStore::rebuild(
                dir.path(),
                &owner(),
                1 << 20,
                false,
                &aside,
                "lost in a test",
            ) {
                Err(StoreError::Engine { source, .. })
                    if is_lock_error(&source) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other.unwrap(),
            }
        };
        assert!(found.cut.is_none());
        assert!(aside.join("conf").exists(), "the rest of sled is kept");
        let first = store.ledger(0, 10, None, None).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].entry.path, super::super::LEDGER_RESTART_PATH);
        assert_eq!(first[0].entry.note, "lost in a test");
        assert!(store.feed_limit() >= FEED_GAP_AFTER_REBUILD);
        drop(store);
        let store = open(dir.path()).unwrap();
        assert!(matches!(
            store.verify_ledger().unwrap(),
            LedgerCheck::Intact { records: 1, .. }
        ));
    }
}
