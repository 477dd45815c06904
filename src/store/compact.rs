//! Compaction of the bundle log: a new log holding only what is still live, written
//! beside the old one while the store goes on, then swapped in at once.
//!
//! What a compaction keeps, bundle by bundle in change-feed order: the signed head of
//! every bundle that still holds a live item, and the item records of its live items.
//! It drops superseded versions (only the latest version of an id is ever read or
//! passed on), indicators whose `valid_until` passed more than the retention ago, and
//! bundles left with nothing. Revocations are kept, however old: a partner that comes
//! back after any outage still learns of them, and an older version of a revoked
//! indicator offered again is still refused as older. An indicator dropped as expired
//! is noted in the metadata ([`records::DROPPED`]), and in `dropped.notes` beside the log
//! so that the note outlives a loss of the metadata ([`super::dropped`]), so neither it
//! nor an older version of it is taken again when a partner offers it.
//!
//! Each kept bundle keeps its place in the change feed, so a partner's cursor means
//! the same bundles before and after: nothing is missed or received twice because of
//! a compaction. Item records are copied byte for byte, so every kept item still
//! verifies against its bundle's signed header on any node.
//!
//! The steps, and what a crash at each leaves (resolved when the store opens):
//! 1. The live bundles are copied into [`records::LOG_FILE_COMPACTING`] (a log of the
//!    next generation, named in its header), while the store accepts and answers as
//!    usual. A crash leaves the old log in force; the new file is removed at open.
//! 2. Writes stop (the writer and flush locks, and the log lock for writing, which
//!    waits for reads in flight); what was appended meanwhile is copied; the new log
//!    is synced. The metadata records the new generation and its synced length
//!    ([`records::META_COMPACTING`]), durably. A crash leaves the old log in force.
//! 3. The new log is renamed over the old one and the directory synced. A crash after
//!    this opens the new log, with the length step 2 recorded as its watermark.
//! 4. The metadata records the new generation's watermark as the store's, and the
//!    index and log are swapped in memory. Page tokens handed out before refer to the
//!    old numbering and are refused as stale.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::index::{Index, record_item};
use super::log::{BundleLog, FrameBuilder, LogHeader, Span, sync_dir};
use super::records::{self, ItemRecord};
use super::sled_store::{SledStore, corrupt, now_ms};
use super::{ItemStore, StoreError};
use crate::model::Item;
use prost::Message;

/// What a compaction keeps beyond the live items.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    /// How long an indicator past its `valid_until` is kept (ms).
    pub keep_expired_ms: i64,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            keep_expired_ms: 30 * 24 * 3600 * 1000,
        }
    }
}

/// What a compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    /// The bundle log's size before (bytes).
    pub bytes_before: u64,
    /// Its size after.
    pub bytes_after: u64,
    /// Bundles held before.
    pub bundles_before: u64,
    /// Bundles kept.
    pub bundles_kept: u64,
    /// Item records in the log before (every version).
    pub records_before: u64,
    /// Item records kept (counting any appended while it ran).
    pub records_kept: u64,
    /// Expired indicators dropped.
    pub expired_dropped: u64,
    /// The new log's generation.
    pub generation: u64,
    /// How long it took.
    pub took: Duration,
    /// How long writes waited for the swap at its end.
    pub writes_paused: Duration,
}

impl std::fmt::Display for Compacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "compacted the bundle log in {:.2} s (generation {}): {:.1} MiB -> {:.1} MiB, {:.1} MiB reclaimed",
            self.took.as_secs_f64(),
            self.generation,
            mib(self.bytes_before),
            mib(self.bytes_after),
            mib(self.bytes_before.saturating_sub(self.bytes_after)),
        )?;
        write!(
            f,
            "  bundles {} -> {}, item records {} -> {} ({} expired indicators dropped)",
            self.bundles_before,
            self.bundles_kept,
            self.records_before,
            self.records_kept,
            self.expired_dropped
        )
    }
}

/// How far [`SledStore::compact_until`] goes, for tests of a crash at each step.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// After the new log is written and synced, before the metadata names it.
    Written,
    /// After the metadata names it, before the rename.
    Recorded,
    /// After the rename, before the metadata counts it as the store's log.
    Renamed,
    /// The whole compaction.
    Done,
}

/// One bundle to copy: its id, place in the feed, head and the runs of slots it had
/// when the compaction began.
struct Planned {
    uuid: [u8; 16],
    feed_seq: u64,
    head: Span,
    runs: Vec<(u32, u32)>,
}

impl SledStore {
    /// Compacts the bundle log (see the module's documentation); returns what it did.
    /// One compaction runs at a time; the store accepts and answers meanwhile, and
    /// waits only for the swap at the end.
    pub fn compact(&self, settings: Compaction) -> Result<Compacted, StoreError> {
        self.compact_until(settings, Stop::Done)
    }

    /// [`SledStore::compact`] that stops after step `stop`, leaving the disk as a crash
    /// there would (the store must then be dropped, not used).
    #[doc(hidden)]
    pub fn compact_until(&self, settings: Compaction, stop: Stop) -> Result<Compacted, StoreError> {
        let _one = self.compacting.lock().unwrap_or_else(|p| p.into_inner());
        self.writable()?;
        let started = Instant::now();
        let now = now_ms();
        let expired_before = now.saturating_sub(settings.keep_expired_ms);
        let log_path = self.path.join(records::LOG_FILE);
        let new_path = self.path.join(records::LOG_FILE_COMPACTING);
        remove_if_there(&new_path)?;

        // What there is now: appends after this point are copied at the swap.
        let (from, slots_before, planned, header, bytes_before) = {
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let log = self.log();
            let index = self.index();
            let planned: Vec<Planned> = index
                .feed
                .iter()
                .filter_map(|(&feed_seq, uuid)| {
                    index.bundles.get(uuid).map(|entry| Planned {
                        uuid: *uuid,
                        feed_seq,
                        head: entry.head,
                        runs: entry.runs.clone(),
                    })
                })
                .collect();
            (
                log.len(),
                index.slots.len() as u64,
                planned,
                log.header().clone(),
                log.len(),
            )
        };
        let header = LogHeader {
            generation: header.generation + 1,
            created_ms: now,
            ..header
        };
        let mut report = Compacted {
            bytes_before,
            bundles_before: planned.len() as u64,
            records_before: slots_before,
            generation: header.generation,
            ..Compacted::default()
        };
        let new_log = BundleLog::create(&new_path, &header)?;
        let mut index = Index::with_hasher(self.hasher.clone());

        // What is dropped as expired: remembered in the metadata before the swap.
        let mut dropped: Vec<DroppedNote> = Vec::new();

        // Step 1: the live bundles, in feed order.
        let copied = (|| {
            for bundle in planned {
                let log = self.log();
                let live: Vec<Span> = {
                    let held = self.index();
                    bundle
                        .runs
                        .iter()
                        .flat_map(|&(first, count)| first..first + count)
                        .filter(|&s| u64::from(s) < slots_before)
                        .map(|s| held.slots[s as usize])
                        .filter(|slot| slot.live())
                        .map(|slot| slot.span())
                        .collect()
                };
                let mut kept = Vec::with_capacity(live.len());
                for span in live {
                    let bytes = log.read(span)?;
                    match expired(&bytes, span, expired_before)? {
                        Some(gone) => {
                            report.expired_dropped += 1;
                            dropped.push(gone);
                        }
                        None => kept.push(bytes),
                    }
                }
                if kept.is_empty() {
                    continue;
                }
                let head = log.read(bundle.head)?;
                drop(log);
                copy_frame(
                    &new_log,
                    &mut index,
                    bundle.uuid,
                    bundle.feed_seq,
                    Some(&head),
                    &kept,
                )?;
            }
            Ok::<_, StoreError>(())
        })();
        if let Err(e) = copied {
            drop(new_log);
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }

        // Step 2: writes stop; what came meanwhile is copied; the new log is synced and
        // named in the metadata.
        let paused = Instant::now();
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _flushing = self.flushing.lock().unwrap_or_else(|p| p.into_inner());
        let mut log = self.log_for_swap();
        let synced = (|| {
            log.frames_from(from, |frame| {
                let head = match frame.head {
                    Some((_, bytes)) => Some(bytes.to_vec()),
                    // A bundle the copy left out (nothing of it was live) comes back
                    // with its head.
                    None if !index.bundles.contains_key(&frame.bundle_uuid) => {
                        let span = self
                            .index()
                            .bundles
                            .get(&frame.bundle_uuid)
                            .map(|entry| entry.head)
                            .ok_or_else(|| {
                                corrupt("bundle log", "a frame of a bundle the index lacks")
                            })?;
                        Some(log.read(span)?)
                    }
                    None => None,
                };
                let items: Vec<Vec<u8>> = frame
                    .items
                    .iter()
                    .map(|(_, bytes)| bytes.to_vec())
                    .collect();
                copy_frame(
                    &new_log,
                    &mut index,
                    frame.bundle_uuid,
                    frame.feed_seq,
                    head.as_deref(),
                    &items,
                )
            })?;
            new_log.sync()
        })();
        let synced = match synced {
            Ok(synced) => synced,
            Err(e) => {
                drop(new_log);
                let _ = std::fs::remove_file(&new_path);
                return Err(e);
            }
        };
        if stop == Stop::Written {
            return Ok(report);
        }
        let mut pending = header.generation.to_be_bytes().to_vec();
        pending.extend_from_slice(&synced.to_be_bytes());
        // The expired indicators dropped go on being refused when offered again; if the
        // swap does not happen their note is harmless (the log still holds them, and
        // what the log holds is looked at first).
        // Kept a second time beside the log first, so that they outlive the loss of
        // the metadata (`entente store recover` reads them back).
        if let Err(e) = super::dropped::keep(&self.path, &dropped, || self.dropped_notes()) {
            drop(new_log);
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
        let mut batch = sled::Batch::default();
        batch.insert(records::META_COMPACTING, pending);
        for (uuid, note) in &dropped {
            batch.insert(records::key(records::DROPPED, uuid), &note[..]);
        }
        // Set before the notes are written: a lookup that finds none is only wasted.
        if !dropped.is_empty() {
            self.any_dropped.store(true, Ordering::SeqCst);
        }
        drop(dropped);
        if let Err(e) = self.with_meta(|m| {
            m.tree.apply_batch(batch)?;
            m.db.flush()
        }) {
            drop(new_log);
            let _ = std::fs::remove_file(&new_path);
            return Err(e);
        }
        if stop == Stop::Recorded {
            return Ok(report);
        }

        // Step 3: the rename. Past it, the new log is the store's, whatever fails next.
        let renamed = std::fs::rename(&new_path, &log_path).and_then(|()| sync_dir(&log_path));
        if let Err(source) = renamed {
            // If the rename did not happen, the old log stays in force (the metadata's
            // note is resolved at the next open). If it happened and only the sync of
            // the directory failed, carrying on with the old file would write into an
            // unlinked one: the store stops writing instead.
            let error = StoreError::Io {
                path: log_path.clone(),
                source,
            };
            if log_path_is_generation(&log_path, header.generation) {
                *log = new_log.renamed(&log_path);
                self.swap_index(index, header.generation);
                self.recorded_watermark.store(0, Ordering::SeqCst);
                // The rename may not be on disk: the flush that records the new log's
                // generation syncs the directory first.
                self.directory_unsynced.store(true, Ordering::SeqCst);
            } else {
                let _ = std::fs::remove_file(&new_path);
            }
            self.note_failure(&error, false);
            return Err(error);
        }
        if stop == Stop::Renamed {
            return Ok(report);
        }

        // Step 4: the metadata counts the new log; memory follows.
        let mut batch = sled::Batch::default();
        batch.insert(records::META_LOG_SYNCED, &synced.to_be_bytes()[..]);
        batch.insert(
            records::META_LOG_GENERATION,
            &header.generation.to_be_bytes()[..],
        );
        batch.remove(records::META_COMPACTING);
        let recorded = self.with_meta(|m| {
            m.tree.apply_batch(batch)?;
            m.db.flush()
        });
        report.bytes_after = new_log.len();
        report.bundles_kept = index.bundles.len() as u64;
        report.records_kept = index.slots.len() as u64;
        let old = std::mem::replace(&mut *log, new_log.renamed(&log_path));
        self.swap_index(index, header.generation);
        // A failed record is made again by the next flush, which writes the watermark
        // and the generation together.
        self.recorded_watermark
            .store(if recorded.is_ok() { synced } else { 0 }, Ordering::SeqCst);
        drop(log);
        drop(old);
        report.writes_paused = paused.elapsed();
        report.took = started.elapsed();
        recorded?;
        Ok(report)
    }
}

impl SledStore {
    /// Puts `index`, of the log of `generation` just swapped in, in force. The feed
    /// head it replaces stays the floor of numbering: the bundle there may have been
    /// dropped, and its position was handed out.
    fn swap_index(&self, index: Index, generation: u64) {
        let mut held = self.index.write().unwrap_or_else(|p| p.into_inner());
        self.feed_compacted
            .fetch_max(held.feed_head(), Ordering::SeqCst);
        self.generation.store(generation, Ordering::SeqCst);
        *held = index;
    }
}

/// Appends one frame of bundle `uuid` to `log` and applies it to `index`.
fn copy_frame(
    log: &BundleLog,
    index: &mut Index,
    uuid: [u8; 16],
    feed_seq: u64,
    head: Option<&[u8]>,
    items: &[Vec<u8>],
) -> Result<(), StoreError> {
    let mut frame = FrameBuilder::new(&uuid, feed_seq, head);
    for bytes in items {
        frame.item(bytes);
    }
    let written = log.append(frame)?;
    let mut new = Vec::with_capacity(items.len());
    for (span, bytes) in written.items.iter().zip(items) {
        new.push(record_item(&index.hasher, *span, bytes)?);
    }
    index.apply(uuid, feed_seq, written.head, new)
}

/// An item UUID and what [`records::DROPPED`] keeps of it.
type DroppedNote = ([u8; 16], Vec<u8>);

/// When the item record `bytes` is an indicator whose `valid_until` came before
/// `before`: its note.
fn expired(bytes: &[u8], span: Span, before: i64) -> Result<Option<DroppedNote>, StoreError> {
    let key = || format!("item record at byte {}", span.offset);
    let record = ItemRecord::decode(bytes).map_err(|e| corrupt(&key(), e))?;
    let item = Item::decode_stored(&record.item_bytes).map_err(|e| corrupt(&key(), e))?;
    if !item.is_expired(before) {
        return Ok(None);
    }
    let mut note = record.modified_ms.to_be_bytes().to_vec();
    note.extend_from_slice(record.origin.as_bytes());
    Ok(Some((item.id.uuid_bytes(), note)))
}

pub(super) fn remove_if_there(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Whether the log at `path` is of `generation`.
fn log_path_is_generation(path: &Path, generation: u64) -> bool {
    super::log::read_header(path).is_ok_and(|h| h.generation == generation)
}

/// Settles a compaction a crash interrupted, when the store opens: returns the
/// watermark to open the log with. `expected` is the generation the metadata counts,
/// `acknowledged` its watermark, `pending` what [`records::META_COMPACTING`] holds.
pub(super) fn settle(
    dir: &Path,
    tree: &sled::Tree,
    db: &sled::Db,
    expected: u64,
    acknowledged: u64,
) -> Result<u64, StoreError> {
    let engine = |source| StoreError::Engine {
        path: dir.to_owned(),
        source,
    };
    let log_path = dir.join(records::LOG_FILE);
    let pending = match tree.get(records::META_COMPACTING).map_err(engine)? {
        None => None,
        Some(v) if v.len() == 16 => Some((
            u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
        )),
        Some(v) => {
            return Err(corrupt(
                "store metadata",
                format!("the note of a compaction is {} bytes, not 16", v.len()),
            ));
        }
    };
    let found = if log_path.try_exists().map_err(|source| StoreError::Io {
        path: log_path.clone(),
        source,
    })? {
        Some(super::log::read_header(&log_path)?.generation)
    } else {
        None
    };
    let watermark = match (found, pending) {
        // The rename happened: the new log is in force, with the length recorded
        // before it.
        (Some(found), Some((generation, synced))) if found == generation => {
            let mut batch = sled::Batch::default();
            batch.insert(records::META_LOG_SYNCED, &synced.to_be_bytes()[..]);
            batch.insert(records::META_LOG_GENERATION, &generation.to_be_bytes()[..]);
            batch.remove(records::META_COMPACTING);
            tree.apply_batch(batch).map_err(engine)?;
            db.flush().map_err(engine)?;
            tracing::info!(data_dir = %dir.display(), generation, "finished a compaction that a restart interrupted after its swap");
            synced
        }
        (found, pending) => {
            if let Some(found) = found.filter(|&found| found != expected) {
                return Err(corrupt(
                    &format!("bundle log {}", log_path.display()),
                    format!(
                        "the log is of generation {found}, but the store's metadata counts generation {expected}: they were not kept together; restore the data directory from a backup"
                    ),
                ));
            }
            if pending.is_some() {
                tree.remove(records::META_COMPACTING).map_err(engine)?;
                db.flush().map_err(engine)?;
                tracing::info!(data_dir = %dir.display(), "a compaction a restart interrupted before its swap is dropped; the log it replaced stays in force");
            }
            acknowledged
        }
    };
    remove_if_there(&dir.join(records::LOG_FILE_COMPACTING))?;
    Ok(watermark)
}
