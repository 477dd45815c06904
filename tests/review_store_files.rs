//! Large values the store keeps for the node itself: a MISP feed's checkpoint (every
//! event and attribute uuid taken, megabytes for a large feed) and TAXII write statuses
//! (up to 1 MiB each, 16 slots per writer). Kept as sled values, each overwrite left
//! the copy it replaced in sled's `blobs/` for good, so the data directory grew by a
//! whole checkpoint at every changed poll and by two statuses at every POST, with no
//! bound. They are now files of their own under `values/`, replaced in place, and the
//! data directory stays within what the values hold.

use std::path::Path;

use entente::model::NodeId;
use entente::store::prelude::*;
use entente::store::{SledStore, StoreError};

const MIB: u64 = 1 << 20;

/// Bytes held by the files under `dir`, all of them.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            size_of(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn owner() -> NodeId {
    NodeId::new("redmond.hq").unwrap()
}

/// Opens the store in `dir`, waiting while sled's lock is still held by a store just
/// dropped (its flusher thread lets go of it a moment later).
fn open(dir: &Path) -> SledStore {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(dir, &owner(), 8 * MIB) {
            Err(StoreError::Engine { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// A value of `len` bytes that differs with `round`, as a rewritten checkpoint does.
fn value(len: usize, round: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    let mut x = round.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// A MISP checkpoint of 4 MiB rewritten 30 times (a commit, or a poll that took a
/// changed event, each time): the data directory holds about one copy, not thirty, and
/// still does after a restart; the last one written is the one read back.
#[test]
fn a_feed_checkpoint_rewritten_many_times_does_not_pile_up_on_disk() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let checkpoint_len = 4 * MIB as usize;
    {
        let store = open(&dir);
        for round in 0..30 {
            store
                .set_feed_checkpoint("misp-big", &value(checkpoint_len, round))
                .unwrap();
            store.flush().unwrap();
        }
        assert_eq!(
            store.feed_checkpoint("misp-big").unwrap(),
            Some(value(checkpoint_len, 29))
        );
        let held = size_of(&dir);
        eprintln!("data directory after 30 rewrites: {} KiB", held / 1024);
        assert!(
            held < 12 * MIB,
            "30 rewrites of a 4 MiB checkpoint left {} MiB in the data directory",
            held / MIB
        );
    }
    let store = open(&dir);
    assert_eq!(
        store.feed_checkpoint("misp-big").unwrap(),
        Some(value(checkpoint_len, 29))
    );
    let held = size_of(&dir);
    assert!(
        held < 12 * MIB,
        "after a restart the data directory holds {} MiB for one 4 MiB checkpoint",
        held / MIB
    );
}

/// A writer's 16 status slots of nearly 1 MiB each, overwritten three times over (48
/// POSTs): the data directory stays within the 16 statuses' bound, before and after
/// a restart, and each slot reads back its last status.
#[test]
fn taxii_statuses_overwritten_in_their_slots_stay_within_their_bound() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let status_len = 900 * 1024;
    {
        let store = open(&dir);
        for seq in 0..48u64 {
            store
                .set_taxii_status(&format!("analyst.a/{}", seq % 16), &value(status_len, seq))
                .unwrap();
            store.flush().unwrap();
        }
        let held = size_of(&dir);
        eprintln!("data directory after 48 statuses: {} KiB", held / 1024);
        assert!(
            held < 20 * MIB,
            "48 statuses in 16 slots of at most 1 MiB left {} MiB in the data directory",
            held / MIB
        );
    }
    let store = open(&dir);
    let statuses = store.taxii_statuses(1000).unwrap();
    assert_eq!(statuses.len(), 16);
    for (name, record) in &statuses {
        let slot: u64 = name.strip_prefix("analyst.a/").unwrap().parse().unwrap();
        assert_eq!(record, &value(status_len, 32 + slot), "slot {slot}");
    }
    let held = size_of(&dir);
    assert!(
        held < 20 * MIB,
        "after a restart the data directory holds {} MiB for 16 statuses",
        held / MIB
    );
}

/// Recovery from a lost metadata moves the value files aside with what is left of sled,
/// as it did when they were sled values: a feed checkpoint could count items the
/// rebuilt log no longer holds (a cut end), so the feeds take their sources again.
#[test]
fn recovery_moves_the_value_files_aside_with_the_metadata() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    {
        let store = open(&dir);
        store.set_feed_checkpoint("misp-a", b"taken").unwrap();
        store.set_taxii_status("analyst.a/0", b"status").unwrap();
        store.flush().unwrap();
    }
    std::fs::remove_file(dir.join("db")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let recovery = loop {
        match entente::store::recover::recover(&dir, &owner(), 8 * MIB, false) {
            Err(StoreError::Engine { .. }) if std::time::Instant::now() < deadline => {
                // sled's lock, held a moment longer by the store just dropped.
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    assert!(recovery.metadata_aside.join("values").is_dir());
    let store = open(&dir);
    assert_eq!(store.feed_checkpoint("misp-a").unwrap(), None);
    assert!(store.taxii_statuses(10).unwrap().is_empty());
}
