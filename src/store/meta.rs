//! The store's metadata in sled: what is small or mutable (the owner, the store's
//! format and id, the log's watermark and generation, the feed lease, replication
//! cursors, served-policy fingerprints, the certificate cache and the disclosure
//! ledger's head and retention floor; large values are files, `values.rs`). Opening it, reading what it says of
//! the store (creating it for a new store, upgrading a store of format 3), and
//! converting a ledger of the layout before segment files.

use std::path::Path;

use super::ledger::files::{self, LedgerSettings, SegmentLedger};
use super::ledger::{self, ChainWalk, Head};
use super::log::LogHeader;
use super::records;
use super::sled_store::now_ms;
use super::{LedgerCheck, StoreError};
use crate::model::NodeId;

/// sled, open: the metadata, cursors, certificates and the disclosure ledger.
pub(super) struct Meta {
    pub(super) db: sled::Db,
    pub(super) tree: sled::Tree,
}

/// Opens sled in `dir`.
pub(super) fn open_meta(dir: &Path, cache_bytes: u64) -> Result<Meta, sled::Error> {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(cache_bytes)
        .open()?;
    let tree = db.open_tree(records::TREE)?;
    Ok(Meta { db, tree })
}

/// Whether sled refused to open because another process (or a store just dropped)
/// holds the directory's lock.
pub(super) fn is_lock_error(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"))
}

/// A u64 kept big-endian in meta (0 when absent).
pub(super) fn meta_u64(tree: &sled::Tree, key: &[u8], what: &str) -> Result<Option<u64>, String> {
    match tree.get(key).map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(v) => v
            .as_ref()
            .try_into()
            .map(|b| Some(u64::from_be_bytes(b)))
            .map_err(|_| format!("the {what} is {} bytes, not 8", v.len())),
    }
}

/// What opening found in the metadata.
pub(super) struct Opened {
    pub(super) store_id: [u8; 16],
    pub(super) acknowledged: u64,
    pub(super) feed_lease: u64,
    pub(super) ledger_head: Head,
    pub(super) ledger_floor: Option<Head>,
}

/// Reads (and for a new store, writes) what the metadata says of the store; for a
/// store of format 3, upgrades it.
pub(super) fn read_state(
    dir: &Path,
    owner: &NodeId,
    meta: &Meta,
    has_log: bool,
    has_v3: bool,
) -> Result<Opened, StoreError> {
    let engine = |source| StoreError::Engine {
        path: dir.to_owned(),
        source,
    };
    let lost = |problem: String| StoreError::MetadataLost {
        path: dir.to_owned(),
        problem,
    };
    let damaged = |problem: String| StoreError::Corrupt {
        key: "store metadata".into(),
        problem,
    };
    let tree = &meta.tree;
    let found_owner = tree.get(records::META_OWNER).map_err(engine)?;
    let Some(found_owner) = found_owner else {
        if has_log || has_v3 {
            return Err(lost(
                "its metadata (sled) is empty: no owner, no ledger, no watermark".into(),
            ));
        }
        if !tree.is_empty() {
            return Err(damaged("the owner is missing".into()));
        }
        // A new store: its metadata first, then the log.
        let store_id = *uuid::Uuid::new_v4().as_bytes();
        let mut batch = sled::Batch::default();
        batch.insert(records::META_OWNER, owner.as_str().as_bytes());
        batch.insert(records::META_FORMAT, &super::log::FORMAT.to_be_bytes()[..]);
        batch.insert(records::META_STORE_ID, &store_id[..]);
        tree.apply_batch(batch).map_err(engine)?;
        meta.db.flush().map_err(engine)?;
        return Ok(Opened {
            store_id,
            acknowledged: 0,
            feed_lease: 0,
            ledger_head: Head::EMPTY,
            ledger_floor: None,
        });
    };
    if found_owner.as_ref() != owner.as_str().as_bytes() {
        return Err(StoreError::WrongOwner {
            path: dir.to_owned(),
            expected: owner.clone(),
            found: String::from_utf8_lossy(&found_owner).into_owned(),
        });
    }
    let ledger_head = match tree.get(records::META_LEDGER_HEAD).map_err(engine)? {
        Some(v) => Head::decode(&v).ok_or_else(|| StoreError::Corrupt {
            key: "ledger head".into(),
            problem: format!("{} bytes, not 40", v.len()),
        })?,
        None => Head::EMPTY,
    };
    let ledger_floor = match tree.get(records::META_LEDGER_FLOOR).map_err(engine)? {
        Some(v) => Some(Head::decode(&v).ok_or_else(|| StoreError::Corrupt {
            key: "ledger retention floor".into(),
            problem: format!("{} bytes, not 40", v.len()),
        })?),
        None => None,
    };
    let u64_of = |key: &[u8], what: &str| {
        meta_u64(tree, key, what).map_err(|problem| StoreError::Corrupt {
            key: what.into(),
            problem,
        })
    };
    let mut acknowledged = u64_of(records::META_LOG_SYNCED, "log watermark")?.unwrap_or(0);
    let feed_lease = u64_of(records::META_FEED_LEASE, "feed lease")?.unwrap_or(0);
    let format = tree.get(records::META_FORMAT).map_err(engine)?;
    let store_id = match format.as_deref() {
        None => {
            if has_log && !has_v3 {
                return Err(lost(
                    "its metadata is of store format 3 but its bundle log of format 4: they were not kept together".into(),
                ));
            }
            // Format 3: the log is copied into the new format, the old one kept.
            let store_id = *uuid::Uuid::new_v4().as_bytes();
            let log_path = dir.join(records::LOG_FILE);
            let header = LogHeader {
                store_id,
                owner: owner.as_str().to_owned(),
                created_ms: now_ms(),
                generation: 0,
            };
            let v3_path = dir.join(records::LOG_FILE_V3);
            if has_v3 {
                acknowledged = super::log::upgrade_v3(&v3_path, &log_path, acknowledged, &header)?;
            } else {
                acknowledged = 0;
            }
            let mut batch = sled::Batch::default();
            batch.insert(records::META_FORMAT, &super::log::FORMAT.to_be_bytes()[..]);
            batch.insert(records::META_STORE_ID, &store_id[..]);
            batch.insert(records::META_LOG_SYNCED, &acknowledged.to_be_bytes()[..]);
            tree.apply_batch(batch).map_err(engine)?;
            meta.db.flush().map_err(engine)?;
            if has_v3 {
                let kept = dir.join(records::LOG_FILE_V3_UPGRADED);
                std::fs::rename(&v3_path, &kept).map_err(|source| StoreError::Io {
                    path: v3_path.clone(),
                    source,
                })?;
                tracing::warn!(
                    data_dir = %dir.display(),
                    kept = %kept.display(),
                    "upgraded the store from format 3 to format 4; the old bundle log is kept, delete it once the node runs well"
                );
            }
            store_id
        }
        Some(v) if v == super::log::FORMAT.to_be_bytes() => {
            let id = tree.get(records::META_STORE_ID).map_err(engine)?;
            id.as_deref()
                .and_then(|id| <[u8; 16]>::try_from(id).ok())
                .ok_or_else(|| damaged("the store id is missing or not 16 bytes".into()))?
        }
        Some(v) => {
            return Err(StoreError::OldFormat {
                path: dir.to_owned(),
                found: format!("format {:02x?}", v),
            });
        }
    };
    Ok(Opened {
        store_id,
        acknowledged,
        feed_lease,
        ledger_head,
        ledger_floor,
    })
}

/// Converts a ledger kept in sled (one `L` entry per record, the layout before
/// segments) into segment files, then removes the entries. The old chain is checked
/// first, and converted only if it is intact; the hashes, and so the head, stay the
/// same. The segments are written into [`files::MIGRATING_DIR`] and renamed into place
/// once synced, so a crash leaves either the old ledger (converted again at the next
/// open) or the new one (and the old entries are then only removed).
pub(super) fn migrate_ledger(
    dir: &Path,
    meta: &Meta,
    opened: &Opened,
    settings: &LedgerSettings,
) -> Result<(), StoreError> {
    let engine = |source| StoreError::Engine {
        path: dir.to_owned(),
        source,
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io {
            path: path.clone(),
            source,
        }
    };
    if meta
        .tree
        .scan_prefix([records::LEDGER])
        .next()
        .transpose()
        .map_err(engine)?
        .is_none()
    {
        return Ok(());
    }
    let target = dir.join(files::DIR);
    let staging = dir.join(files::MIGRATING_DIR);
    if !files::holds_segments(&target)? {
        let refused = |problem: String| StoreError::Corrupt {
            key: "disclosure ledger (old layout)".into(),
            problem: format!(
                "{problem}; the ledger was left as it is in sled and not converted to segments. Check it with `entente ledger verify` under the previous version of entente, or start this one on a copy of the data directory without the ledger (see the README, \"Disclosure ledger\")"
            ),
        };
        // The old chain first: a broken one is not converted.
        let mut walk = ChainWalk::new();
        for entry in meta.tree.scan_prefix([records::LEDGER]) {
            let (key, stored) = entry.map_err(engine)?;
            let Some(seq) = records::ledger_seq(&key) else {
                return Err(refused(format!("a key that is not a record: {key:02x?}")));
            };
            if let Err(broken) = walk.step(seq, &stored) {
                return Err(refused(format!(
                    "its chain does not verify (record {}: {})",
                    broken.seq, broken.problem
                )));
            }
        }
        let head = (opened.ledger_head.seq > 0).then_some(opened.ledger_head);
        if let LedgerCheck::Broken { seq, problem } = walk.finish(head) {
            return Err(refused(format!(
                "its chain does not verify (record {seq}: {problem})"
            )));
        }
        if staging.try_exists().map_err(io(&staging))? {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        let ledger = SegmentLedger::open_in(
            &staging,
            opened.store_id,
            settings.clone(),
            Head::EMPTY,
            None,
        )?;
        let mut batch = Vec::with_capacity(1024);
        let mut converted = 0u64;
        for entry in meta.tree.scan_prefix([records::LEDGER]) {
            let (_, stored) = entry.map_err(engine)?;
            let record = ledger::decode_record(&stored).map_err(&refused)?;
            batch.push(record.entry);
            if batch.len() == 1024 {
                converted += ledger.append(&batch)?.len() as u64;
                batch.clear();
            }
        }
        converted += ledger.append(&batch)?.len() as u64;
        let head = ledger.sync()?;
        if head != opened.ledger_head {
            return Err(refused(format!(
                "converted, its {converted} records end at a head other than the stored one"
            )));
        }
        drop(ledger);
        if target.try_exists().map_err(io(&target))? {
            // Empty: made by an open of this version that found nothing to convert.
            std::fs::remove_dir(&target).map_err(io(&target))?;
        }
        std::fs::rename(&staging, &target).map_err(io(&target))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
        tracing::warn!(
            data_dir = %dir.display(),
            records = converted,
            "converted the disclosure ledger from sled entries to segment files"
        );
    }
    // The old entries go once the segments are in place.
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for entry in meta.tree.scan_prefix([records::LEDGER]).take(4096) {
            let (key, _) = entry.map_err(engine)?;
            batch.remove(key);
            n += 1;
        }
        if n == 0 {
            break;
        }
        meta.tree.apply_batch(batch).map_err(engine)?;
    }
    meta.db.flush().map_err(engine)?;
    Ok(())
}
