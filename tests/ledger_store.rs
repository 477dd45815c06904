//! The disclosure ledger in a real store (segment files, the head in sled): appending
//! and reading back, the chain across a restart, concurrent appends, and what
//! verification reports when the stored records are edited, removed, reordered or
//! truncated behind the node's back.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use entente::crypto::sha256;
use entente::model::{BundleId, NodeId};
use entente::store::prelude::*;
use entente::store::{FrameSpan, LedgerCheck, LedgerEntry, LedgerRecord, SledStore};

/// The sled tree the store keeps everything in (the store's constant is private).
const TREE: &str = "entente.v3";

const T0: i64 = 1_700_000_000_000;

fn owner() -> NodeId {
    NodeId::new("redmond.hq").unwrap()
}

fn partner(i: u64) -> NodeId {
    NodeId::new(match i % 3 {
        0 => "berlin.office",
        1 => "paris.cert",
        _ => "oslo.soc",
    })
    .unwrap()
}

/// The `i`-th delivery of a deterministic series: bundle ids come from `bundles`, so
/// two stores fed the same series hold byte-identical records.
fn entry(i: u64, bundles: &[BundleId]) -> LedgerEntry {
    let b = |k: u64| bundles[(k as usize) % bundles.len()].clone();
    LedgerEntry {
        time_ms: T0 + i as i64 * 1000,
        partner: partner(i),
        path: ["query", "get", "subscribe", "export", "pull"][(i % 5) as usize].into(),
        deliveries: vec![(b(i), vec![0, 2, i as u32]), (b(i + 1), vec![1])],
        policy_hash: sha256(format!("policy v{}", i / 50).as_bytes()),
        note: String::new(),
    }
}

fn bundles() -> Vec<BundleId> {
    (0..7).map(|_| BundleId::new_random()).collect()
}

fn open(dir: &Path) -> SledStore {
    retry(|| SledStore::open(dir, &owner(), 8 << 20))
}

/// Opens the store's directory with sled directly, as someone editing it would.
fn open_raw(dir: &Path) -> (sled::Db, sled::Tree) {
    let db = retry(|| sled::open(dir));
    let tree = db.open_tree(TREE).unwrap();
    (db, tree)
}

/// sled may hold the directory lock briefly after a handle is dropped: retries until
/// it opens, under a deadline.
fn retry<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut wait = Duration::from_millis(2);
    loop {
        match open() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("could not open the store: {e:?}"),
            Err(_) => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// The frame holding record `seq` (each append of `filled` is a frame of its own).
fn frame(dir: &Path, seq: u64) -> FrameSpan {
    entente::store::frame_spans(dir)
        .unwrap()
        .into_iter()
        .find(|f| f.records > 0 && f.first <= seq && seq < f.first + f.records)
        .unwrap_or_else(|| panic!("no frame holds record {seq}"))
}

fn bytes_of(span: &FrameSpan) -> Vec<u8> {
    let file = std::fs::read(&span.path).unwrap();
    file[span.offset as usize..(span.offset + span.len) as usize].to_vec()
}

/// Replaces `len` bytes at `offset` of `path` with `with`.
fn splice(path: &Path, offset: u64, len: u64, with: &[u8]) {
    let mut file = std::fs::read(path).unwrap();
    file.splice(
        offset as usize..(offset + len) as usize,
        with.iter().copied(),
    );
    std::fs::write(path, file).unwrap();
}

/// A store in `dir` holding `n` records of the series; returns them.
fn filled(dir: &Path, n: u64, bundles: &[BundleId]) -> Vec<LedgerRecord> {
    let store = open(dir);
    let out: Vec<LedgerRecord> = (1..=n)
        .map(|i| store.append_ledger(&entry(i, bundles)).unwrap())
        .collect();
    store.flush().unwrap();
    out
}

/// Changes the ledger's head in sled directly, then checks it through the store.
fn tamper_and_verify(dir: &Path, edit: impl FnOnce(&sled::Tree)) -> LedgerCheck {
    {
        let (db, tree) = open_raw(dir);
        edit(&tree);
        db.flush().unwrap();
    }
    open(dir).verify_ledger().unwrap()
}

/// Changes the segment files (the store is closed), then checks through the store.
fn tamper_files_and_verify(dir: &Path, edit: impl FnOnce()) -> LedgerCheck {
    edit();
    open(dir).verify_ledger().unwrap()
}

fn broken(check: LedgerCheck) -> (u64, String) {
    match check {
        LedgerCheck::Broken { seq, problem } => (seq, problem),
        other => panic!("expected a broken ledger, got {other:?}"),
    }
}

/// Reads the whole ledger in pages of `page`.
fn read_all(store: &SledStore, page: usize) -> Vec<LedgerRecord> {
    let mut out: Vec<LedgerRecord> = Vec::new();
    loop {
        let after = out.last().map_or(0, |r| r.seq);
        let next = store.ledger(after, page, None, None).unwrap();
        if next.is_empty() {
            return out;
        }
        assert!(next.len() <= page);
        out.extend(next);
    }
}

#[test]
fn an_empty_ledger_is_intact() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert_eq!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact {
            records: 0,
            head: [0; 32],
            from: 0
        }
    );
    assert!(store.ledger(0, 10, None, None).unwrap().is_empty());
}

#[test]
fn appended_records_chain_and_verify_intact() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    let store = open(dir.path());
    let mut prev = [0u8; 32];
    let mut appended = Vec::new();
    for i in 1..=100 {
        let e = entry(i, &bundles);
        let record = store.append_ledger(&e).unwrap();
        assert_eq!(record.seq, i);
        assert_eq!(record.entry, e);
        assert_eq!(record.prev_hash, prev);
        prev = record.hash;
        appended.push(record);
    }
    assert_eq!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact {
            records: 100,
            head: appended[99].hash,
            from: 0
        }
    );
    // Reading back returns exactly what the appends returned, in order.
    for page in [1, 7, 100, 1000] {
        assert_eq!(read_all(&store, page), appended, "pages of {page}");
    }
}

/// A record's hash is SHA-256 of the domain and the record's canonical form (its
/// number, content and link), whatever compact form the segment stores it in.
#[test]
fn a_record_hash_is_sha256_of_the_domain_and_the_canonical_record() {
    let dir = tempfile::tempdir().unwrap();
    let records = filled(dir.path(), 3, &bundles());
    for record in &records {
        let canonical = entente::fuzzing::ledger_canonical(record);
        let mut message = b"entente/ledger/v1\0".to_vec();
        message.extend_from_slice(&canonical);
        assert_eq!(record.hash, sha256(&message));
    }
    let (_db, tree) = open_raw(dir.path());
    let head = tree.get(b"Mledger_head").unwrap().unwrap();
    assert_eq!(&head[..8], &3u64.to_be_bytes());
    assert_eq!(&head[8..], &records[2].hash);
}

#[test]
fn ledger_pages_after_a_position_and_filters_by_partner_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    filled(dir.path(), 100, &bundles);
    let store = open(dir.path());
    let seqs = |records: Vec<LedgerRecord>| records.iter().map(|r| r.seq).collect::<Vec<_>>();

    assert_eq!(
        seqs(store.ledger(10, 5, None, None).unwrap()),
        vec![11, 12, 13, 14, 15]
    );
    assert_eq!(
        seqs(store.ledger(97, 10, None, None).unwrap()),
        vec![98, 99, 100]
    );
    assert!(store.ledger(100, 10, None, None).unwrap().is_empty());
    assert!(store.ledger(u64::MAX, 10, None, None).unwrap().is_empty());
    assert!(store.ledger(0, 0, None, None).unwrap().is_empty());

    let berlin = NodeId::new("berlin.office").unwrap();
    let for_berlin = store.ledger(0, 1000, Some(&berlin), None).unwrap();
    assert_eq!(
        seqs(for_berlin.clone()),
        (1..=100).filter(|i| i % 3 == 0).collect::<Vec<_>>()
    );
    assert!(for_berlin.iter().all(|r| r.entry.partner == berlin));
    // The limit counts matching records, after the position given.
    assert_eq!(
        seqs(store.ledger(30, 3, Some(&berlin), None).unwrap()),
        vec![33, 36, 39]
    );

    let since = T0 + 90 * 1000;
    assert_eq!(
        seqs(store.ledger(0, 1000, None, Some(since)).unwrap()),
        (90..=100).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(store.ledger(0, 1000, Some(&berlin), Some(since)).unwrap()),
        vec![90, 93, 96, 99]
    );
    let nobody = NodeId::new("nobody.example").unwrap();
    assert!(store.ledger(0, 10, Some(&nobody), None).unwrap().is_empty());
}

#[test]
fn a_reopened_store_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    let first = filled(dir.path(), 50, &bundles);
    let store = open(dir.path());
    let next = store.append_ledger(&entry(51, &bundles)).unwrap();
    assert_eq!(next.seq, 51);
    assert_eq!(next.prev_hash, first[49].hash);
    for i in 52..=60 {
        store.append_ledger(&entry(i, &bundles)).unwrap();
    }
    store.flush().unwrap();
    drop(store);

    let store = open(dir.path());
    let all = read_all(&store, 25);
    assert_eq!(all.len(), 60);
    assert_eq!(&all[..50], &first[..]);
    assert_eq!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact {
            records: 60,
            head: all[59].hash,
            from: 0
        }
    );
}

/// A flipped byte in record 40 is attributed to record 40 itself, whichever byte of
/// its frame it lands in: the length (the frame no longer reads as written), the
/// content or its link (the checksum no longer matches), or the checksum itself.
#[test]
fn a_flipped_byte_is_reported_as_that_record_altered() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 100, &bundles());
    let span = frame(dir.path(), 40);
    assert_eq!((span.first, span.records), (40, 1));
    let original = std::fs::read(&span.path).unwrap();
    for at in [0, span.len / 2, span.len - 1] {
        let check = tamper_files_and_verify(dir.path(), || {
            let mut flipped = original.clone();
            flipped[(span.offset + at) as usize] ^= 0x01;
            std::fs::write(&span.path, flipped).unwrap();
        });
        let (seq, problem) = broken(check);
        assert_eq!(seq, 40, "byte {at}: {problem}");
        assert!(
            problem.starts_with("record 40 was altered"),
            "byte {at}: {problem}"
        );
        // Put it back: the ledger is whole again.
        let check = tamper_files_and_verify(dir.path(), || {
            std::fs::write(&span.path, &original).unwrap();
        });
        assert!(
            matches!(check, LedgerCheck::Intact { records: 100, .. }),
            "{check:?}"
        );
    }
}

#[test]
fn a_removed_record_is_reported_missing() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 100, &bundles());
    let span = frame(dir.path(), 40);
    let check = tamper_files_and_verify(dir.path(), || {
        splice(&span.path, span.offset, span.len, &[]);
    });
    assert_eq!(broken(check), (40, "record 40 is missing".into()));
}

#[test]
fn swapped_records_are_reported_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 100, &bundles());
    let (a, b) = (frame(dir.path(), 40), frame(dir.path(), 41));
    assert_eq!(a.offset + a.len, b.offset);
    let check = tamper_files_and_verify(dir.path(), || {
        let mut swapped = bytes_of(&b);
        swapped.extend(bytes_of(&a));
        splice(&a.path, a.offset, a.len + b.len, &swapped);
    });
    assert_eq!(
        broken(check),
        (
            40,
            "records out of order: record 41 is stored at position 40".into()
        )
    );
}

/// The files cut short (the node stopped): the head kept in sled still counts the
/// records cut off, and the store goes on after them, so the gap stays visible.
#[test]
fn a_removed_tail_is_reported_against_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    filled(dir.path(), 100, &bundles);
    let span = frame(dir.path(), 99);
    let check = tamper_files_and_verify(dir.path(), || {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&span.path)
            .unwrap();
        file.set_len(span.offset).unwrap();
    });
    assert_eq!(
        broken(check),
        (
            99,
            "the last 2 records were removed (head says 100, found 98)".into()
        )
    );
    // Writing goes on after the head, in a new segment; the gap is still reported.
    let store = open(dir.path());
    let next = store.append_ledger(&entry(101, &bundles)).unwrap();
    assert_eq!(next.seq, 101);
    store.flush().unwrap();
    assert_eq!(
        broken(store.verify_ledger().unwrap()),
        (99, "records 99 to 100 are missing".into())
    );
}

/// Records past the head kept in sled are records written before the node stopped
/// without a flush (a crash): they are kept, and the chain through them verifies.
/// The sled head must still match the record it names.
#[test]
fn records_past_the_durable_head_are_kept_and_the_head_must_match() {
    let dir = tempfile::tempdir().unwrap();
    let records = filled(dir.path(), 100, &bundles());
    let check = tamper_and_verify(dir.path(), |tree| {
        let mut head = 98u64.to_be_bytes().to_vec();
        head.extend_from_slice(&records[97].hash);
        tree.insert(b"Mledger_head", head).unwrap();
    });
    assert_eq!(
        check,
        LedgerCheck::Intact {
            records: 100,
            head: records[99].hash,
            from: 0
        }
    );
    let check = tamper_and_verify(dir.path(), |tree| {
        let mut head = 98u64.to_be_bytes().to_vec();
        head.extend_from_slice(&records[96].hash);
        tree.insert(b"Mledger_head", head).unwrap();
    });
    assert_eq!(
        broken(check),
        (
            98,
            "record 98 was altered (its hash does not match the ledger head kept in the metadata)"
                .into()
        )
    );
}

/// Two stores fed the same first 39 deliveries hold identical records 1 to 39 (and
/// identical dictionaries), so the second store's record 40 is a well-formed forgery:
/// right number, right link to record 39, a frame whose checksum matches.
#[test]
fn a_consistently_rewritten_record_is_caught_by_the_next_link() {
    let base = tempfile::tempdir().unwrap();
    let (real, forged) = (base.path().join("real"), base.path().join("forged"));
    let bundles = bundles();
    let records = filled(&real, 100, &bundles);
    let forgery = {
        let store = open(&forged);
        for i in 1..=39 {
            store.append_ledger(&entry(i, &bundles)).unwrap();
        }
        let mut hidden = entry(40, &bundles);
        hidden.deliveries.truncate(1);
        let record = store.append_ledger(&hidden).unwrap();
        assert_eq!(record.prev_hash, records[38].hash);
        store.flush().unwrap();
        drop(store);
        bytes_of(&frame(&forged, 40))
    };
    let span = frame(&real, 40);
    let check = tamper_files_and_verify(&real, || {
        splice(&span.path, span.offset, span.len, &forgery);
    });
    assert_eq!(
        broken(check),
        (
            40,
            "record 40 was altered (its hash does not match the link in record 41)".into()
        )
    );
}

/// The limit of a chain on its own: rewriting a record, every record after it and the
/// head leaves a consistent chain. Only a head kept outside the node (the `head` of
/// an earlier Intact check) exposes it.
#[test]
fn a_rewritten_tail_with_its_head_is_only_exposed_by_an_outside_head() {
    let base = tempfile::tempdir().unwrap();
    let (real, forged) = (base.path().join("real"), base.path().join("forged"));
    let bundles = bundles();
    let records = filled(&real, 100, &bundles);
    {
        let store = open(&forged);
        for i in 1..=100 {
            let mut e = entry(i, &bundles);
            if i == 40 {
                e.deliveries.truncate(1);
            }
            store.append_ledger(&e).unwrap();
        }
        store.flush().unwrap();
    }
    let from = frame(&forged, 40);
    let tail = std::fs::read(&from.path).unwrap()[from.offset as usize..].to_vec();
    let head = {
        let (_db, tree) = open_raw(&forged);
        tree.get(b"Mledger_head").unwrap().unwrap()
    };
    let span = frame(&real, 40);
    let real_len = std::fs::metadata(&span.path).unwrap().len();
    splice(&span.path, span.offset, real_len - span.offset, &tail);
    let check = tamper_and_verify(&real, |tree| {
        tree.insert(b"Mledger_head", head).unwrap();
    });
    match check {
        LedgerCheck::Intact {
            records: 100, head, ..
        } => assert_ne!(head, records[99].hash),
        other => panic!("expected a consistent forged chain, got {other:?}"),
    }
}

#[test]
fn concurrent_appends_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = Arc::new(bundles());
    let store = Arc::new(open(dir.path()));
    let done = Arc::new(AtomicBool::new(false));
    // Checking while appends run never reports a problem.
    let checker = {
        let (store, done) = (store.clone(), done.clone());
        std::thread::spawn(move || {
            let mut checks = 0;
            while !done.load(Ordering::SeqCst) || checks == 0 {
                let check = store.verify_ledger().unwrap();
                assert!(
                    matches!(check, LedgerCheck::Intact { .. }),
                    "while appending: {check:?}"
                );
                checks += 1;
            }
            checks
        })
    };
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let (store, bundles) = (store.clone(), bundles.clone());
            std::thread::spawn(move || {
                (0..250u64)
                    .map(|i| {
                        store
                            .append_ledger(&entry(t * 1000 + i, &bundles))
                            .unwrap()
                            .seq
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    done.store(true, Ordering::SeqCst);
    assert!(checker.join().unwrap() > 0);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=1000).collect::<Vec<_>>());
    let all = read_all(&store, 128);
    assert_eq!(all.len(), 1000);
    assert!(all.windows(2).all(|w| w[1].prev_hash == w[0].hash));
    assert_eq!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact {
            records: 1000,
            head: all[999].hash,
            from: 0
        }
    );
}

fn open_with(dir: &Path, settings: entente::store::LedgerSettings) -> SledStore {
    retry(|| SledStore::open_with(dir, &owner(), 8 << 20, settings.clone()))
}

fn small_segments() -> entente::store::LedgerSettings {
    entente::store::LedgerSettings {
        segment_bytes: 4096,
        ..Default::default()
    }
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(dir.join("ledger"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    out
}

/// Under a byte budget the oldest closed segments go; the chain is proven from the
/// checkpoint the first kept segment starts at, reading starts there, and a kept
/// segment removed behind the node's back is still found.
#[test]
fn retention_by_bytes_drops_old_segments_and_verifies_from_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    let settings = entente::store::LedgerSettings {
        retain_bytes: Some(8192),
        ..small_segments()
    };
    let store = open_with(dir.path(), settings.clone());
    let mut appended = Vec::new();
    for i in 1..=2000 {
        appended.push(store.append_ledger(&entry(i, &bundles)).unwrap());
        if i % 100 == 0 {
            store.flush().unwrap();
        }
    }
    let from = match store.verify_ledger().unwrap() {
        LedgerCheck::Intact {
            records: 2000,
            head,
            from,
        } => {
            assert_eq!(head, appended[1999].hash);
            from
        }
        other => panic!("{other:?}"),
    };
    assert!(from > 0, "nothing was dropped");
    let total: u64 = segments(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(total <= 8192 + 4096, "{total} bytes kept");
    let kept = read_all(&store, 50);
    assert_eq!(kept.first().unwrap().seq, from + 1);
    assert_eq!(&kept[..], &appended[from as usize..]);
    drop(store);

    let store = open_with(dir.path(), settings.clone());
    assert!(matches!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact { records: 2000, from: f, .. } if f == from
    ));
    drop(store);
    // The first kept segment removed: its records are reported missing.
    let first = segments(dir.path())[0].clone();
    std::fs::remove_file(&first).unwrap();
    let (seq, problem) = broken(open_with(dir.path(), settings).verify_ledger().unwrap());
    assert_eq!(seq, from + 1);
    assert!(
        problem.starts_with(&format!("records {} to ", from + 1)),
        "{problem}"
    );
    assert!(problem.ends_with("are missing"), "{problem}");
}

/// With an archive directory, dropped segments are moved there, whole.
#[test]
fn dropped_segments_are_archived_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let settings = entente::store::LedgerSettings {
        retain_bytes: Some(8192),
        archive_dir: Some(archive.clone()),
        ..small_segments()
    };
    let store = open_with(dir.path(), settings);
    let bundles = bundles();
    for i in 1..=1000 {
        store.append_ledger(&entry(i, &bundles)).unwrap();
    }
    store.flush().unwrap();
    let archived: Vec<_> = std::fs::read_dir(&archive).unwrap().collect();
    assert!(!archived.is_empty());
    // Segments are owner-only where they are written and where they are archived,
    // whatever the umask: they name who received what.
    use std::os::unix::fs::PermissionsExt;
    for entry in archived
        .into_iter()
        .chain(std::fs::read_dir(dir.path().join("ledger")).unwrap())
    {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "{} has mode {:o}",
            path.display(),
            mode & 0o777
        );
    }
    let LedgerCheck::Intact { from, .. } = store.verify_ledger().unwrap() else {
        panic!("not intact");
    };
    assert!(from > 0);
}

/// Closed segments older than `retain_days` (by their last write) go at the next
/// flush; the one being written stays.
#[test]
fn retention_by_age_drops_segments_last_written_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = entente::store::LedgerSettings {
        retain_days: Some(1),
        ..small_segments()
    };
    let store = open_with(dir.path(), settings);
    let bundles = bundles();
    for i in 1..=600 {
        store.append_ledger(&entry(i, &bundles)).unwrap();
    }
    store.flush().unwrap();
    let before = segments(dir.path());
    assert!(before.len() >= 3);
    assert!(matches!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact { from: 0, .. }
    ));
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    for path in &before[..before.len() - 1] {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    store.append_ledger(&entry(601, &bundles)).unwrap();
    store.flush().unwrap();
    assert_eq!(segments(dir.path()).len(), 1);
    assert!(matches!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact { records: 601, from, .. } if from > 0
    ));
}

/// A write cut short by a crash (a frame that runs past the end of the file, past
/// every durable record) is cut off at open; the ledger goes on after the last whole
/// record.
#[test]
fn a_torn_write_at_the_end_is_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let bundles = bundles();
    let records = filled(dir.path(), 10, &bundles);
    let last = segments(dir.path()).pop().unwrap();
    let whole = std::fs::metadata(&last).unwrap().len();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap();
    std::io::Write::write_all(&mut file, &[40, 1, 11, 0, 0]).unwrap();
    drop(file);
    let store = open(dir.path());
    assert_eq!(std::fs::metadata(&last).unwrap().len(), whole);
    let next = store.append_ledger(&entry(11, &bundles)).unwrap();
    assert_eq!(next.prev_hash, records[9].hash);
    assert!(matches!(
        store.verify_ledger().unwrap(),
        LedgerCheck::Intact { records: 11, .. }
    ));
}
