//! Rebuilding a store whose metadata was lost (`entente store recover`).
//!
//! A store keeps its bundles and items in the bundle log and everything else (the
//! disclosure ledger, replication cursors, how far the log was acknowledged) in sled.
//! When sled's files are lost or unreadable the node refuses to start
//! ([`StoreError::MetadataLost`]). Recovery is the operator's explicit decision: it
//! rebuilds what the log holds (every item and bundle, the indexes, the owner, the
//! store id), moves whatever is left of sled aside (never deletes it), and starts a new
//! disclosure ledger whose first record says that the history before it is lost and
//! why. Cursors start from zero (partners' feeds are pulled again; duplicates merge)
//! and every partner is served its feed again from the start. Feed checkpoints and
//! TAXII statuses go aside too (a checkpoint could count items cut off the log): the
//! feeds take their sources again.

use std::path::{Path, PathBuf};

use super::{ChangeFeed, ItemStore, SledStore, StoreError};
use crate::model::NodeId;

/// What recovery did, for the operator.
#[derive(Debug)]
pub struct Recovery {
    /// Bundle frames kept from the log.
    pub frames: u64,
    /// Items held after recovery (latest versions).
    pub feed_head: u64,
    /// Bytes of the log kept.
    pub log_len: u64,
    /// Where the remains of the old metadata went (if there were any).
    pub metadata_aside: PathBuf,
    /// The damaged end cut off, and where it went.
    pub cut: Option<(super::log::Damage, PathBuf)>,
    /// How far the last commit mark said the log was on disk.
    pub marked: u64,
    /// Why the ledger was restarted (its first record's note).
    pub why: String,
    /// Notes of indicators dropped as expired, read back from `dropped.notes`.
    pub dropped_notes: usize,
    /// Why reading `dropped.notes` stopped before its end, if it did.
    pub notes_problem: Option<String>,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rebuilt the store from its bundle log: {} bundle frames, {} bytes",
            self.frames, self.log_len
        )?;
        if let Some((damage, aside)) = &self.cut {
            let acknowledged = if damage.at < self.marked {
                "it lies before the last commit mark, so it was acknowledged"
            } else {
                "it lies after the last commit mark, and without the lost metadata nothing tells whether it was acknowledged"
            };
            writeln!(
                f,
                "cut {damage} off the log ({acknowledged}); the bytes were copied to {}. Publish them again, or let partners send them again",
                aside.display()
            )?;
        }
        if self.metadata_aside.exists() {
            writeln!(
                f,
                "what was left of the old metadata was moved to {}",
                self.metadata_aside.display()
            )?;
        }
        writeln!(
            f,
            "the disclosure ledger starts again: its first record says \"{}\"",
            self.why
        )?;
        writeln!(
            f,
            "{} indicators dropped as expired by earlier compactions are refused again when offered (from {})",
            self.dropped_notes,
            super::dropped::FILE
        )?;
        if let Some(problem) = &self.notes_problem {
            writeln!(
                f,
                "{} could not be read to its end ({problem}): indicators dropped as expired after that point may be taken again if a partner offers them",
                super::dropped::FILE
            )?;
        }
        write!(
            f,
            "replication cursors start from zero (partners' feeds are pulled again) and partners are served this node's feed from the start; each TAXII client's collection is dated again from its next request (an added_after poll receives it whole once more); feed checkpoints and TAXII statuses went aside with the metadata, so each feed takes its source again from the start"
        )
    }
}

/// Rebuilds the store in `dir` of node `owner` from its bundle log, if (and only if)
/// the store refuses to open because its metadata is lost. With `cut_damaged`, a
/// damaged frame with intact frames after it is cut off with everything after it
/// (copied aside); without, recovery stops there and says so.
pub fn recover(
    dir: &Path,
    owner: &NodeId,
    cache_bytes: u64,
    cut_damaged: bool,
) -> Result<Recovery, StoreError> {
    let problem = match SledStore::open(dir, owner, cache_bytes) {
        Ok(store) => {
            drop(store);
            return Err(StoreError::Io {
                path: dir.to_owned(),
                source: std::io::Error::other(
                    "nothing to recover: the store opens normally (recovery is for a store \
                     whose metadata was lost)",
                ),
            });
        }
        Err(StoreError::MetadataLost { problem, .. }) => problem,
        Err(other) => return Err(other),
    };
    let now = crate::engine::now_ms();
    let aside = dir.join(format!("metadata.lost-{}", now / 1000));
    let why = format!(
        "the store was rebuilt from its bundle log by `entente store recover` at {} ms since the epoch, because {problem}; deliveries before this record are not in this ledger",
        now
    );
    let (store, found) = SledStore::rebuild(dir, owner, cache_bytes, cut_damaged, &aside, &why)?;
    // The indicators earlier compactions dropped as expired stay refused when offered
    // again: their notes come back from the copy kept beside the log.
    let notes = super::dropped::read(dir)?;
    store.restore_dropped(&notes.records)?;
    let report = Recovery {
        frames: found.frames,
        feed_head: store.feed_head(),
        log_len: found.len,
        metadata_aside: aside,
        cut: found.cut,
        marked: found.marked,
        why,
        dropped_notes: notes.records.len(),
        notes_problem: notes.problem,
    };
    store.flush()?;
    Ok(report)
}
