//! The disclosure ledger's segment files (`<data_dir>/ledger/<first record>.seg`):
//! appending write batches as frames, closing a full segment and opening the next,
//! syncing, reading records back, walking every segment to check the chain, and
//! dropping (or archiving) old segments under the retention settings. The format of a
//! segment is `segment.rs`; sled (the ledger head, the retention floor) is the store's
//! business.
//!
//! What is written is in the file (a positioned write) before an append returns, so a
//! killed process loses nothing that was acknowledged; a sync makes it durable. Bytes
//! written since the last sync are also kept in memory: if a sync fails, the kernel
//! may have dropped them, so the next sync writes them again before anything else.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::segment::{
    self, Dictionary, Frame, HEADER_BYTES, Interner, MAX_FRAME_BYTES, Next, SegmentHeader,
};
use super::{GENESIS, Head};
use crate::model::NodeId;
use crate::store::{LedgerCheck, LedgerEntry, LedgerRecord, StoreError};

/// The directory of the segments, in the data directory.
pub const DIR: &str = "ledger";

/// A directory a conversion from the old format writes into before it is renamed to
/// [`DIR`].
pub const MIGRATING_DIR: &str = "ledger.migrating";

const SUFFIX: &str = ".seg";

/// A checkpoint frame after this many records.
const CHECKPOINT_EVERY: u64 = 256;

/// Records per frame at most (a write batch of more takes several frames).
const FRAME_RECORDS: usize = 16;

/// Bytes written but not synced above which an append syncs at once (bounds the
/// memory kept for writing them again).
const UNSYNCED_LIMIT: usize = 16 << 20;

/// Largest segment file read (a segment is closed at `segment_bytes`, at most
/// [`MAX_SEGMENT_BYTES`], plus one write batch).
const MAX_FILE_BYTES: u64 = MAX_SEGMENT_BYTES + 64 * MAX_FRAME_BYTES as u64;

/// Largest `segment_bytes` accepted.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// Bytes read at a time when reading records back.
const READ_CHUNK: usize = 256 * 1024;

/// The ledger's settings (`[ledger]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerSettings {
    /// A segment is closed, and the next one started, once it holds this many bytes.
    pub segment_bytes: u64,
    /// Closed segments whose last write is older than this many days are dropped.
    pub retain_days: Option<u64>,
    /// While the segments together hold more than this many bytes, the oldest closed
    /// one is dropped.
    pub retain_bytes: Option<u64>,
    /// Dropped segments are moved here instead of deleted.
    pub archive_dir: Option<PathBuf>,
}

/// Default `segment_bytes`: 8 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;

impl Default for LedgerSettings {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retain_days: None,
            retain_bytes: None,
            archive_dir: None,
        }
    }
}

/// A segment no longer written to.
#[derive(Clone, Debug)]
struct Closed {
    /// Its header's start (as read; the name's number when the header is damaged).
    start: Head,
    path: PathBuf,
    bytes: u64,
}

/// The segment being written.
#[derive(Debug)]
struct Current {
    file: File,
    path: PathBuf,
    start: Head,
    /// Bytes written.
    len: u64,
    /// Bytes known to be on disk.
    synced_len: u64,
    /// The bytes from `synced_len` to `len`.
    unsynced: Vec<u8>,
    /// A sync or a write failed: the file is cut back to `synced_len` and `unsynced`
    /// written again before anything else.
    resync: bool,
    interner: Interner,
    since_checkpoint: u64,
}

/// Where the last read stopped, to go on from there without decoding the segment
/// from its start again.
#[derive(Debug)]
struct ReadCursor {
    path: PathBuf,
    /// Offset of the next frame.
    offset: u64,
    dict: Dictionary,
    /// The chain at the end of the frames read.
    chain: Head,
    /// Records of the last frame read that were not returned.
    pending: std::collections::VecDeque<LedgerRecord>,
}

#[derive(Debug)]
struct State {
    /// The last record written.
    head: Head,
    closed: Vec<Closed>,
    current: Option<Current>,
}

/// The ledger's segments, open.
#[derive(Debug)]
pub struct SegmentLedger {
    dir: PathBuf,
    store_id: [u8; 16],
    settings: LedgerSettings,
    state: Mutex<State>,
    cursor: Mutex<Option<ReadCursor>>,
    /// Held by a walk and by retention, so no segment goes while it is read.
    walking: Mutex<()>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &Path, problem: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        key: format!("ledger segment {}", path.display()),
        problem: problem.to_string(),
    }
}

fn file_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The segments in `dir`, by the number of their first record.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(number) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        if number.len() != 20 || !number.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(first) = number.parse::<u64>() {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` exists and holds a segment.
pub fn holds_segments(dir: &Path) -> Result<bool, StoreError> {
    if !dir.try_exists().map_err(io(dir))? {
        return Ok(false);
    }
    Ok(!list(dir)?.is_empty())
}

/// The whole of a segment file, bounded.
fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len > MAX_FILE_BYTES {
        return Err(corrupt(
            path,
            format!("it holds {len} bytes, more than a segment may ({MAX_FILE_BYTES})"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0).map_err(io(path))?;
    Ok(bytes)
}

fn read_header(path: &Path) -> Result<Result<SegmentHeader, String>, StoreError> {
    let file = File::open(path).map_err(io(path))?;
    let mut bytes = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        match file.read_at(&mut bytes[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    Ok(SegmentHeader::decode(&bytes[..got]))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The chain hash of the record after `prev`, holding `entry`: the hash of the record
/// in its canonical form (`ledger::encode_record`).
fn next_hash(prev: &Head, entry: &LedgerEntry) -> Result<LedgerRecord, String> {
    let seq = prev
        .seq
        .checked_add(1)
        .ok_or("the sequence number is exhausted")?;
    let canonical = super::encode_record(seq, entry, &prev.hash);
    Ok(LedgerRecord {
        seq,
        entry: entry.clone(),
        prev_hash: prev.hash,
        hash: super::link_hash(&canonical),
    })
}

/// What reading the last segment at open found.
struct Scanned {
    header: SegmentHeader,
    dict: Dictionary,
    end: Head,
    /// Length of the readable frames.
    good_len: u64,
    file_len: u64,
    /// What is wrong past `good_len`.
    bad: Option<String>,
    since_checkpoint: u64,
}

fn scan(path: &Path, store_id: &[u8; 16]) -> Result<Result<Scanned, String>, StoreError> {
    let bytes = read_file(path)?;
    let header = match SegmentHeader::decode(&bytes) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if &header.store_id != store_id {
        return Err(corrupt(
            path,
            "it belongs to another store (its store id differs)",
        ));
    }
    let mut dict = Dictionary::default();
    let mut chain = header.start;
    let mut at = HEADER_BYTES;
    let mut bad = None;
    let mut since_checkpoint = 0;
    loop {
        match segment::next_frame(&bytes, at) {
            Next::End => break,
            Next::Cut(why) => {
                bad = Some(why);
                break;
            }
            Next::Frame(raw) if !raw.crc_ok => {
                bad = Some("a frame does not match its checksum".into());
                break;
            }
            Next::Frame(raw) => match segment::decode_body(raw.body, &mut dict) {
                Err(e) => {
                    bad = Some(e);
                    break;
                }
                Ok(Frame::Checkpoint(_)) => {
                    since_checkpoint = 0;
                    at = raw.end;
                }
                Ok(Frame::Records { first, entries, .. }) => {
                    if Some(first) != chain.seq.checked_add(1) {
                        bad = Some(format!(
                            "record {first} follows record {} in the file",
                            chain.seq
                        ));
                        break;
                    }
                    for entry in &entries {
                        let record = next_hash(&chain, entry).map_err(|e| corrupt(path, e))?;
                        chain = Head {
                            seq: record.seq,
                            hash: record.hash,
                        };
                    }
                    since_checkpoint += entries.len() as u64;
                    at = raw.end;
                }
            },
        }
    }
    Ok(Ok(Scanned {
        header,
        dict,
        end: chain,
        good_len: at as u64,
        file_len: bytes.len() as u64,
        bad,
        since_checkpoint,
    }))
}

impl SegmentLedger {
    /// Opens the segments in `data_dir/ledger` (created if missing) for the store
    /// `store_id`. `durable` is the ledger head kept in the metadata (what the last
    /// flush made durable), `floor` the checkpoint kept when old segments were dropped.
    ///
    /// Segments wholly before the floor (a retention cut a crash interrupted) are
    /// dropped. The last segment is read through: unreadable bytes past every durable
    /// record are a write that never completed and are cut off; unreadable bytes
    /// before it are damage, left for `ledger verify` to report, and writing goes on
    /// in a new segment. The head is the later of `durable` and the last record in
    /// the files: records past `durable` were written and may have been delivered.
    pub fn open(
        data_dir: &Path,
        store_id: [u8; 16],
        settings: LedgerSettings,
        durable: Head,
        floor: Option<Head>,
    ) -> Result<Self, StoreError> {
        Self::open_in(&data_dir.join(DIR), store_id, settings, durable, floor)
    }

    /// [`SegmentLedger::open`] on the segment directory itself.
    pub fn open_in(
        dir: &Path,
        store_id: [u8; 16],
        settings: LedgerSettings,
        durable: Head,
        floor: Option<Head>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut found = list(dir)?;
        if let Some(floor) = floor {
            while found.len() >= 2 && found[1].0.saturating_sub(1) <= floor.seq {
                // A segment that cannot be moved now (an archive directory the node
                // cannot write) is kept, and retention tries again after a flush.
                if let Err(error) = drop_file(&found[0].1, settings.archive_dir.as_deref()) {
                    tracing::error!(segment = %found[0].1.display(), %error, "a ledger segment before the retention floor could not be dropped; it is kept and tried again later");
                    break;
                }
                found.remove(0);
            }
        }
        let mut closed = Vec::new();
        let mut current = None;
        let mut head = durable;
        while let Some((first, path)) = found.pop() {
            match scan(&path, &store_id)? {
                Err(why) if first.saturating_sub(1) >= durable.seq => {
                    // A segment whose header never reached the disk holds nothing
                    // durable: it was being started when the process stopped.
                    tracing::warn!(segment = %path.display(), %why, "removing a ledger segment that was being started");
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    continue;
                }
                Err(why) => {
                    tracing::error!(segment = %path.display(), %why, "a ledger segment is damaged; `ledger verify` reports it");
                    let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
                    closed.push(Closed {
                        start: Head {
                            seq: first.saturating_sub(1),
                            hash: [0u8; 32],
                        },
                        path,
                        bytes,
                    });
                }
                Ok(scanned) => {
                    let mut usable = scanned.bad.is_none();
                    if let Some(why) = &scanned.bad {
                        if scanned.end.seq >= durable.seq {
                            tracing::warn!(segment = %path.display(), %why, cut = scanned.file_len - scanned.good_len, "cutting off a ledger write that never completed");
                            let file = std::fs::OpenOptions::new()
                                .write(true)
                                .open(&path)
                                .map_err(io(&path))?;
                            file.set_len(scanned.good_len).map_err(io(&path))?;
                            file.sync_all().map_err(io(&path))?;
                            usable = true;
                        } else {
                            tracing::error!(segment = %path.display(), %why, "a ledger segment is damaged before its last durable record; `ledger verify` reports it, and writing goes on in a new segment");
                        }
                    }
                    if scanned.end.seq > head.seq || (usable && scanned.end.seq == head.seq) {
                        head = scanned.end;
                    }
                    if usable && scanned.end == head {
                        let file = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .map_err(io(&path))?;
                        current = Some(Current {
                            file,
                            path,
                            start: scanned.header.start,
                            len: scanned.good_len,
                            synced_len: scanned.good_len,
                            unsynced: Vec::new(),
                            resync: false,
                            interner: Interner::from_dictionary(scanned.dict),
                            since_checkpoint: scanned.since_checkpoint,
                        });
                    } else {
                        closed.push(Closed {
                            start: scanned.header.start,
                            path,
                            bytes: scanned.file_len,
                        });
                    }
                }
            }
            break;
        }
        for (first, path) in found {
            let start = match read_header(&path)? {
                Ok(header) => header.start,
                Err(_) => Head {
                    seq: first.saturating_sub(1),
                    hash: [0u8; 32],
                },
            };
            let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
            closed.push(Closed { start, path, bytes });
        }
        closed.sort_by_key(|c| c.start.seq);
        Ok(Self {
            dir: dir.to_owned(),
            store_id,
            settings,
            state: Mutex::new(State {
                head,
                closed,
                current,
            }),
            cursor: Mutex::new(None),
            walking: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the segments hold.
    pub fn bytes(&self) -> u64 {
        let state = self.lock();
        state.closed.iter().map(|c| c.bytes).sum::<u64>()
            + state.current.as_ref().map_or(0, |c| c.len)
    }

    /// Appends `entries` as the next records, chained; returns them. In the file when
    /// this returns; durable with the next [`SegmentLedger::sync`].
    pub fn append(&self, entries: &[LedgerEntry]) -> Result<Vec<LedgerRecord>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.lock();
        if let Some(current) = state.current.as_mut() {
            Self::settle(current)?;
        }
        let full = state
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.settings.segment_bytes || c.interner.is_full());
        if full {
            self.rotate(&mut state)?;
        }
        let State {
            head: written,
            current,
            ..
        } = &mut *state;
        let head = *written;
        let Some(current) = current.as_mut() else {
            return Err(corrupt(&self.dir, "no segment is open for writing"));
        };
        let mark = current.interner.mark();
        let mut buf = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        let mut last = head;
        let mut since_checkpoint = current.since_checkpoint;
        let encoded = (|| {
            for chunk in entries.chunks(FRAME_RECORDS) {
                let first = last.seq + 1;
                let link = segment::link_of(&last.hash);
                for entry in chunk {
                    let record = next_hash(&last, entry).map_err(|e| corrupt(&current.path, e))?;
                    last = Head {
                        seq: record.seq,
                        hash: record.hash,
                    };
                    out.push(record);
                }
                let body = current.interner.records_body(first, &link, chunk);
                if body.len() > MAX_FRAME_BYTES {
                    return Err(StoreError::Corrupt {
                        key: "disclosure ledger record".into(),
                        problem: format!(
                            "{} records take {} bytes, more than a frame holds ({MAX_FRAME_BYTES})",
                            chunk.len(),
                            body.len()
                        ),
                    });
                }
                segment::put_frame(&mut buf, &body);
                since_checkpoint += chunk.len() as u64;
            }
            if since_checkpoint >= CHECKPOINT_EVERY {
                segment::put_frame(&mut buf, &segment::checkpoint_body(&last));
                since_checkpoint = 0;
            }
            Ok(())
        })();
        if let Err(e) = encoded {
            current.interner.rollback(mark);
            return Err(e);
        }
        if let Err(e) = current.file.write_all_at(&buf, current.len) {
            current.interner.rollback(mark);
            if current.file.set_len(current.len).is_err() {
                current.resync = true;
            }
            return Err(io(&current.path)(e));
        }
        current.len += buf.len() as u64;
        current.unsynced.extend_from_slice(&buf);
        current.since_checkpoint = since_checkpoint;
        *written = last;
        if current.unsynced.len() > UNSYNCED_LIMIT {
            // Rare (no flush for a long while): made durable now rather than kept.
            if current.file.sync_data().is_ok() {
                current.synced_len = current.len;
                current.unsynced.clear();
            }
        }
        Ok(out)
    }

    /// Writes again what a failed write or sync may have lost.
    fn settle(current: &mut Current) -> Result<(), StoreError> {
        if !current.resync {
            return Ok(());
        }
        let path = current.path.clone();
        current
            .file
            .set_len(current.synced_len)
            .map_err(io(&path))?;
        current
            .file
            .write_all_at(&current.unsynced, current.synced_len)
            .map_err(io(&path))?;
        current.file.sync_data().map_err(io(&path))?;
        current.len = current.synced_len + current.unsynced.len() as u64;
        current.synced_len = current.len;
        current.unsynced.clear();
        current.resync = false;
        tracing::info!(segment = %path.display(), "ledger records whose sync had failed were written again");
        Ok(())
    }

    /// Closes the current segment (synced) and starts the next at the head.
    fn rotate(&self, state: &mut State) -> Result<(), StoreError> {
        if let Some(mut current) = state.current.take() {
            let synced = Self::settle(&mut current)
                .and_then(|()| current.file.sync_data().map_err(io(&current.path)));
            if let Err(e) = synced {
                current.resync = true;
                state.current = Some(current);
                return Err(e);
            }
            state.closed.push(Closed {
                start: current.start,
                path: current.path,
                bytes: current.len,
            });
        }
        let path = self.dir.join(file_name(state.head.seq + 1));
        if state.closed.iter().any(|c| c.path == path) {
            return Err(corrupt(
                &path,
                "the segment to start exists already and holds records",
            ));
        }
        let header = SegmentHeader {
            store_id: self.store_id,
            start: state.head,
        };
        let created = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            // Owner-only whatever the umask: it names who received what, and when.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all_at(&header.encode(), 0)?;
            file.sync_data()?;
            Ok::<_, std::io::Error>(file)
        })();
        let file = match created {
            Ok(file) => file,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(io(&path)(e));
            }
        };
        sync_dir(&self.dir)?;
        state.current = Some(Current {
            file,
            path,
            start: state.head,
            len: HEADER_BYTES as u64,
            synced_len: HEADER_BYTES as u64,
            unsynced: Vec::new(),
            resync: false,
            interner: Interner::default(),
            since_checkpoint: 0,
        });
        Ok(())
    }

    /// Makes every record written so far durable; returns the head it covers.
    pub fn sync(&self) -> Result<Head, StoreError> {
        let (file, path, len, head) = {
            let mut state = self.lock();
            let head = state.head;
            let Some(current) = state.current.as_mut() else {
                return Ok(head);
            };
            Self::settle(current)?;
            if current.synced_len == current.len {
                return Ok(head);
            }
            let file = current.file.try_clone().map_err(io(&current.path))?;
            (file, current.path.clone(), current.len, head)
        };
        // Synced outside the lock: appends go on meanwhile.
        let synced = file.sync_data();
        let mut state = self.lock();
        if let Some(current) = state.current.as_mut().filter(|c| c.path == path) {
            match &synced {
                Ok(()) => {
                    if len > current.synced_len {
                        let done = (len - current.synced_len) as usize;
                        current.unsynced.drain(..done.min(current.unsynced.len()));
                        current.synced_len = len;
                    }
                }
                Err(_) => current.resync = true,
            }
        }
        synced.map_err(io(&path))?;
        Ok(head)
    }

    /// Drops (or archives) the oldest closed segments the retention settings no longer
    /// keep. `keep_floor` records, durably, the checkpoint the kept history starts
    /// from; it is called before any file goes (so a crash while they go leaves a floor
    /// that `open` finishes the cut from, never a gap `verify` would call missing
    /// records). `Err` is the floor's recording alone: a segment that cannot be looked
    /// at or moved (an archive directory the node cannot write) is
    /// [`Retained::Failed`], the segments from it on are kept and tried again at a
    /// later call, and the floor is recorded again at the first segment kept.
    pub fn retain(
        &self,
        mut keep_floor: impl FnMut(&Head) -> Result<(), StoreError>,
    ) -> Result<Retained, StoreError> {
        if self.settings.retain_days.is_none() && self.settings.retain_bytes.is_none() {
            return Ok(Retained::Done);
        }
        // A walk or a read in progress keeps its segments: retention waits for the
        // next flush rather than hold the flush up.
        let _walk = match self.walking.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(Retained::Busy),
        };
        let (drop, floor, paths) = {
            let state = self.lock();
            let mut drop = 0;
            if let Some(days) = self.settings.retain_days {
                let limit = std::time::Duration::from_secs(days.saturating_mul(86_400));
                let now = std::time::SystemTime::now();
                for closed in &state.closed {
                    let modified = match std::fs::metadata(&closed.path)
                        .and_then(|m| m.modified())
                        .map_err(io(&closed.path))
                    {
                        Ok(modified) => modified,
                        Err(error) => return Ok(Retained::Failed { dropped: 0, error }),
                    };
                    if now.duration_since(modified).unwrap_or_default() > limit {
                        drop += 1;
                    } else {
                        break;
                    }
                }
            }
            if let Some(max) = self.settings.retain_bytes {
                let mut total = state.closed.iter().map(|c| c.bytes).sum::<u64>()
                    + state.current.as_ref().map_or(0, |c| c.len);
                let mut n = 0;
                while total > max && n < state.closed.len() {
                    total -= state.closed[n].bytes;
                    n += 1;
                }
                drop = drop.max(n);
            }
            // The floor is the start of the first segment kept.
            let floor = match (state.closed.get(drop), state.current.as_ref()) {
                (Some(kept), _) => kept.start,
                (None, Some(current)) => current.start,
                (None, None) => {
                    drop = drop.saturating_sub(1);
                    match state.closed.get(drop) {
                        Some(kept) => kept.start,
                        None => return Ok(Retained::Done),
                    }
                }
            };
            let paths: Vec<(PathBuf, Head)> = state.closed[..drop]
                .iter()
                .map(|c| (c.path.clone(), c.start))
                .collect();
            (drop, floor, paths)
        };
        if drop == 0 {
            return Ok(Retained::Done);
        }
        keep_floor(&floor)?;
        let mut dropped = 0;
        let mut failed = None;
        for (path, _) in &paths {
            match drop_file(path, self.settings.archive_dir.as_deref()) {
                Ok(()) => dropped += 1,
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        let synced = if dropped > 0 {
            sync_dir(&self.dir)
        } else {
            Ok(())
        };
        self.lock().closed.drain(..dropped);
        if dropped > 0 {
            *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!(
                segments = dropped,
                from = paths.get(dropped).map_or(floor.seq, |(_, start)| start.seq),
                "ledger segments dropped under retention"
            );
        }
        let Some(error) = failed.or(synced.err()) else {
            return Ok(Retained::Done);
        };
        // The floor recorded names the first segment that was to be kept; a segment
        // that did not go is kept, and the floor is recorded again where the kept
        // history now starts (should that fail too, the floor stays ahead of the files,
        // which `open` and `verify` allow for).
        if let Some((_, start)) = paths.get(dropped) {
            if let Err(e) = keep_floor(start) {
                tracing::warn!(error = %e, "the ledger's retention floor could not be recorded again at the first segment kept");
            }
        }
        Ok(Retained::Failed { dropped, error })
    }

    /// Records with seq > `after`, oldest first, at most `limit`, passing the filters.
    /// A frame is read as stored (its checksum is `verify`'s business); one that does
    /// not decode is an error.
    pub fn read(
        &self,
        after: u64,
        limit: usize,
        partner: Option<&NodeId>,
        since_ms: Option<i64>,
    ) -> Result<Vec<LedgerRecord>, StoreError> {
        let mut out = Vec::new();
        let (head, segments) = self.snapshot();
        if limit == 0 || after >= head.seq {
            return Ok(out);
        }
        let _walk = self.walking.lock().unwrap_or_else(|p| p.into_inner());
        let start = segments
            .iter()
            .rposition(|(start, _)| start.seq <= after)
            .unwrap_or(0);
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner()).take();
        let wanted = |r: &LedgerRecord| {
            partner.is_none_or(|p| &r.entry.partner == p)
                && since_ms.is_none_or(|s| r.entry.time_ms >= s)
        };
        for (start, path) in &segments[start..] {
            let resumes = cursor.as_ref().is_some_and(|c| {
                &c.path == path
                    && c.pending
                        .front()
                        .map_or(c.chain.seq == after, |r| r.seq <= after + 1)
            });
            let mut at = match cursor.take().filter(|_| resumes) {
                Some(c) => c,
                None => ReadCursor {
                    path: path.clone(),
                    offset: HEADER_BYTES as u64,
                    dict: Dictionary::default(),
                    chain: *start,
                    pending: Default::default(),
                },
            };
            let file = File::open(path).map_err(io(path))?;
            let file_len = file.metadata().map_err(io(path))?.len();
            let mut buf: Vec<u8> = Vec::new();
            let mut base = at.offset;
            loop {
                while let Some(record) = at.pending.pop_front() {
                    if record.seq > head.seq {
                        at.pending.clear();
                        break;
                    }
                    if record.seq > after && wanted(&record) {
                        out.push(record);
                        if out.len() >= limit {
                            *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(at);
                            return Ok(out);
                        }
                    }
                }
                if at.chain.seq >= head.seq {
                    break;
                }
                let rel = (at.offset - base) as usize;
                let next = match segment::next_frame(&buf, rel) {
                    Next::Frame(raw) => {
                        Some((raw.end, segment::decode_body(raw.body, &mut at.dict)))
                    }
                    Next::End | Next::Cut(_) if base + (buf.len() as u64) < file_len => {
                        // Read on: the next chunk, or a frame longer than what is held.
                        let want = (file_len - at.offset)
                            .min((READ_CHUNK.max(buf.len().saturating_sub(rel) * 2)) as u64);
                        buf = vec![0u8; want as usize];
                        file.read_exact_at(&mut buf, at.offset).map_err(io(path))?;
                        base = at.offset;
                        continue;
                    }
                    Next::End => None,
                    Next::Cut(why) => return Err(corrupt(path, why)),
                };
                let Some((end, frame)) = next else { break };
                at.offset = base + end as u64;
                match frame.map_err(|e| corrupt(path, e))? {
                    Frame::Checkpoint(_) => {}
                    Frame::Records { entries, .. } => {
                        for entry in &entries {
                            let record =
                                next_hash(&at.chain, entry).map_err(|e| corrupt(path, e))?;
                            at.chain = Head {
                                seq: record.seq,
                                hash: record.hash,
                            };
                            at.pending.push_back(record);
                        }
                    }
                }
            }
            if at.chain.seq >= head.seq {
                break;
            }
        }
        Ok(out)
    }

    /// The head and every segment (start, path), oldest first.
    fn snapshot(&self) -> (Head, Vec<(Head, PathBuf)>) {
        let state = self.lock();
        let mut segments: Vec<(Head, PathBuf)> = state
            .closed
            .iter()
            .map(|c| (c.start, c.path.clone()))
            .collect();
        if let Some(current) = &state.current {
            segments.push((current.start, current.path.clone()));
        }
        (state.head, segments)
    }

    /// Walks every segment up to the head as it stands now and checks the chain:
    /// sequence numbers contiguous from the first kept checkpoint, every frame's
    /// checksum and link, every checkpoint, the head written and `durable` (the head
    /// kept in the metadata), and the start against `floor` (the checkpoint kept when
    /// older segments were dropped). `Err` is for I/O only.
    pub fn verify(
        &self,
        durable: Option<Head>,
        floor: Option<Head>,
    ) -> Result<LedgerCheck, StoreError> {
        let _walk = self.walking.lock().unwrap_or_else(|p| p.into_inner());
        let (head, segments) = self.snapshot();
        let mut walk = Walk::new(head, durable);
        let Some((first_start, _)) = segments.first() else {
            return Ok(walk.finish());
        };
        // Where the kept history starts.
        if first_start.seq == 0 {
            if first_start.hash != GENESIS {
                return Ok(broken(
                    1,
                    "the first segment does not start the ledger (its starting checkpoint is not the genesis)",
                ));
            }
        } else {
            match floor {
                Some(f) if f.seq == first_start.seq && f.hash != first_start.hash => {
                    return Ok(broken(
                        first_start.seq + 1,
                        format!(
                            "the checkpoint at record {} does not match the one kept when older records were dropped",
                            f.seq
                        ),
                    ));
                }
                Some(f) if f.seq < first_start.seq => {
                    return Ok(missing(f.seq + 1, first_start.seq));
                }
                Some(_) => {}
                None => return Ok(missing(1, first_start.seq)),
            }
            walk.from = first_start.seq;
        }
        walk.expected = first_start.seq + 1;
        walk.last = *first_start;
        for (i, (_, path)) in segments.iter().enumerate() {
            if walk.expected > head.seq {
                break;
            }
            let bytes = read_file(path)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let name = name.unwrap_or_default();
            let header = match SegmentHeader::decode(&bytes) {
                Ok(header) => header,
                Err(why) => {
                    return Ok(walk.fail(broken(
                        walk.expected,
                        format!("ledger segment {name} is damaged: {why}"),
                    )));
                }
            };
            if header.store_id != self.store_id {
                return Ok(walk.fail(broken(
                    walk.expected,
                    format!("ledger segment {name} belongs to another store"),
                )));
            }
            if i > 0 {
                if let Err(b) =
                    walk.checkpoint(&header.start, &format!("the start of segment {name}"))
                {
                    return Ok(b);
                }
            }
            let mut dict = Dictionary::default();
            let mut at = HEADER_BYTES;
            while walk.expected <= head.seq {
                let raw = match segment::next_frame(&bytes, at) {
                    Next::End => break,
                    Next::Cut(why) => {
                        return Ok(walk.fail(altered(
                            walk.expected,
                            walk.expected,
                            format!("the segment is cut: {why}"),
                        )));
                    }
                    Next::Frame(raw) => raw,
                };
                at = raw.end;
                if !raw.crc_ok {
                    return Ok(walk.fail(altered(
                        walk.expected,
                        walk.expected,
                        "its stored bytes do not match their checksum".into(),
                    )));
                }
                let frame = match segment::decode_body(raw.body, &mut dict) {
                    Ok(frame) => frame,
                    Err(e) => {
                        return Ok(walk.fail(altered(
                            walk.expected,
                            walk.expected,
                            format!("it no longer decodes: {e}"),
                        )));
                    }
                };
                let step = match frame {
                    Frame::Checkpoint(cp) => {
                        walk.checkpoint(&cp, &format!("the checkpoint at record {}", cp.seq))
                    }
                    Frame::Records { first, .. }
                        if first > walk.expected
                            && next_first(&bytes, at) == Some(walk.expected) =>
                    {
                        Err(walk.fail(broken(
                            walk.expected,
                            format!(
                                "records out of order: record {first} is stored at position {}",
                                walk.expected
                            ),
                        )))
                    }
                    Frame::Records {
                        first,
                        link,
                        entries,
                    } => walk.records(first, &link, &entries),
                };
                if let Err(b) = step {
                    return Ok(b);
                }
            }
        }
        Ok(walk.finish())
    }
}

/// What a call of [`SegmentLedger::retain`] did.
#[derive(Debug)]
pub enum Retained {
    /// Every segment due went (or none was due).
    Done,
    /// A walk or a read held the segments: nothing was looked at.
    Busy,
    /// A segment could not be looked at or moved: the `dropped` before it went, it and
    /// the rest are kept.
    Failed {
        /// Segments that went before the failure.
        dropped: usize,
        /// What failed.
        error: StoreError,
    },
}

/// Checks that the archive directory of `settings` (if any) exists and that the node
/// can write there: a segment moved there at retention, days or months after the start,
/// must not be the first to find out.
pub fn check_archive_dir(settings: &LedgerSettings) -> Result<(), String> {
    let Some(dir) = settings.archive_dir.as_deref() else {
        return Ok(());
    };
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(format!("ledger.archive_dir {shown} is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "ledger.archive_dir {shown} does not exist; create it, writable by the user the node runs as"
            ));
        }
        Err(e) => return Err(format!("ledger.archive_dir {shown} cannot be read: {e}")),
    }
    let probe = dir.join(format!(".entente-write-check-{}", uuid::Uuid::new_v4()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"x"));
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| {
        format!(
            "ledger.archive_dir {shown}: the node cannot write there ({e}); under systemd with ProtectSystem=strict, add it to ReadWritePaths= in the unit"
        )
    })
}

/// Deletes a dropped segment, or moves it to `archive` (copied, then deleted, when a
/// rename cannot cross file systems).
fn drop_file(path: &Path, archive: Option<&Path>) -> Result<(), StoreError> {
    match archive {
        None => std::fs::remove_file(path).map_err(io(path)),
        Some(archive) => {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(archive).map_err(io(archive))?;
            // Owner-only before it leaves, so that it is never readable by others there
            // (segments written by an older version took the umask).
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(io(path))?;
            // Never over a segment archived before: a ledger restarted by `store
            // recover` numbers its records from 1 again, and several nodes may share
            // one archive directory, so a name may be taken already.
            let to = archive_move(path, archive)?;
            tracing::debug!(to = %to.display(), "ledger segment archived");
            sync_dir(archive)
        }
    }
}

/// Moves `path` into `archive` under its own name, or, when that is taken, under the
/// first free `NAME.N.seg` (N from 1): a hard link, which fails rather than replace a
/// file, then the unlink; a copy into a file created new when the archive is on
/// another file system. Returns where it went.
fn archive_move(path: &Path, archive: &Path) -> Result<PathBuf, StoreError> {
    use std::io::ErrorKind;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".seg").unwrap_or(&name).to_owned();
    for n in 0..10_000u32 {
        let to = if n == 0 {
            archive.join(&name)
        } else {
            archive.join(format!("{stem}.{n}.seg"))
        };
        match std::fs::hard_link(path, &to) {
            Ok(()) => {
                std::fs::remove_file(path).map_err(io(path))?;
                return Ok(to);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            // Another file system (EXDEV) or no hard links there: copy into a new file.
            Err(_) => {
                let mut from = File::open(path).map_err(io(path))?;
                let mut file = match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)
                {
                    Ok(file) => file,
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(&to)(e)),
                };
                std::io::copy(&mut from, &mut file).map_err(io(&to))?;
                file.sync_all().map_err(io(&to))?;
                std::fs::remove_file(path).map_err(io(path))?;
                return Ok(to);
            }
        }
    }
    Err(io(archive)(std::io::Error::new(
        ErrorKind::AlreadyExists,
        format!("no free name in the archive for {name}"),
    )))
}

/// The first record of the frame at `at`, if it is a records frame that reads.
fn next_first(bytes: &[u8], at: usize) -> Option<u64> {
    match segment::next_frame(bytes, at) {
        Next::Frame(raw) if raw.crc_ok => segment::first_of(raw.body),
        _ => None,
    }
}

fn broken(seq: u64, problem: impl Into<String>) -> LedgerCheck {
    LedgerCheck::Broken {
        seq,
        problem: problem.into(),
    }
}

fn missing(first: u64, last: u64) -> LedgerCheck {
    if first == last {
        broken(first, format!("record {first} is missing"))
    } else {
        broken(first, format!("records {first} to {last} are missing"))
    }
}

/// Records `first..=last` (one frame) altered, for `why`.
fn altered(first: u64, last: u64, why: String) -> LedgerCheck {
    if first == last {
        broken(first, format!("record {first} was altered ({why})"))
    } else {
        broken(
            first,
            format!("one of records {first} to {last} was altered ({why})"),
        )
    }
}

/// The first and last record of one frame.
type Records = (u64, u64);

/// The state of a walk through the segments.
struct Walk {
    /// The head written when the walk started.
    head: Head,
    /// The head kept in the metadata.
    durable: Option<Head>,
    /// Whether the chain passed `durable` and matched it.
    durable_seen: bool,
    /// The checkpoint the walk started from (0: the start of the ledger).
    from: u64,
    expected: u64,
    /// The chain as recomputed up to `expected - 1`.
    last: Head,
    /// The records of the last frame walked.
    last_frame: Option<Records>,
    /// A frame whose link does not match the record before it, and the frame before
    /// it: either the frame before was altered or this frame's link was. The next
    /// link, checkpoint or head tells which.
    suspect: Option<(Records, Option<Records>)>,
}

impl Walk {
    fn new(head: Head, durable: Option<Head>) -> Self {
        Self {
            head,
            durable,
            durable_seen: false,
            from: 0,
            expected: 1,
            last: Head::EMPTY,
            last_frame: None,
            suspect: None,
        }
    }

    /// A problem found while a broken link is pending: the pending link is reported
    /// first, as it lies earlier.
    fn fail(&mut self, problem: LedgerCheck) -> LedgerCheck {
        match self.suspect.take() {
            None => problem,
            Some(((first, _), _)) => broken(
                first - 1,
                format!(
                    "record {} or record {first} was altered (record {first} does not link to record {})",
                    first - 1,
                    first - 1
                ),
            ),
        }
    }

    /// Settles a pending broken link by the next check (`next_matches`: the chain
    /// recomputed through the suspect frame agrees with it).
    fn settle(&mut self, next_matches: bool, next: &str) -> Result<(), LedgerCheck> {
        let Some((frame, before)) = self.suspect.take() else {
            return Ok(());
        };
        Err(if next_matches {
            // The chain through the suspect frame is right: its link was altered.
            altered(
                frame.0,
                frame.1,
                format!(
                    "its link to record {} does not match, though its hash matches {next}",
                    frame.0 - 1
                ),
            )
        } else {
            let (a, b) = before.unwrap_or((frame.0 - 1, frame.0 - 1));
            if a == b {
                altered(
                    a,
                    b,
                    format!("its hash does not match the link in record {}", frame.0),
                )
            } else {
                altered(
                    a,
                    b,
                    format!("their hashes do not match the link in record {}", frame.0),
                )
            }
        })
    }

    fn records(
        &mut self,
        first: u64,
        link: &[u8; 8],
        entries: &[LedgerEntry],
    ) -> Result<(), LedgerCheck> {
        if first > self.expected {
            return Err(self.fail(missing(self.expected, first - 1)));
        }
        if first < self.expected {
            return Err(self.fail(broken(
                self.expected,
                format!(
                    "records out of order: record {first} is stored at position {}",
                    self.expected
                ),
            )));
        }
        let links = *link == segment::link_of(&self.last.hash);
        self.settle(links, &format!("the link in record {first}"))?;
        let last = first + entries.len() as u64 - 1;
        if !links {
            if first == 1 {
                return Err(altered(
                    1,
                    1,
                    "its link is not the start of the ledger".into(),
                ));
            }
            self.suspect = Some(((first, last), self.last_frame));
        }
        for entry in entries {
            let record = next_hash(&self.last, entry).map_err(|e| altered(first, last, e))?;
            self.last = Head {
                seq: record.seq,
                hash: record.hash,
            };
            if let Some(durable) = self.durable {
                if durable.seq == record.seq {
                    if durable.hash != record.hash && self.suspect.is_none() {
                        return Err(altered(
                            first,
                            last,
                            "its hash does not match the ledger head kept in the metadata".into(),
                        ));
                    }
                    self.durable_seen = true;
                }
            }
        }
        self.last_frame = Some((first, last));
        self.expected = last + 1;
        Ok(())
    }

    /// A full-length checkpoint (a checkpoint frame, the next segment's start).
    fn checkpoint(&mut self, cp: &Head, what: &str) -> Result<(), LedgerCheck> {
        let at = self.expected - 1;
        if cp.seq > at {
            return Err(self.fail(missing(self.expected, cp.seq)));
        }
        if cp.seq < at {
            return Err(self.fail(broken(
                cp.seq + 1,
                format!("records out of order: {what} lies after record {at}"),
            )));
        }
        let matches = cp.hash == self.last.hash;
        self.settle(matches, what)?;
        if !matches {
            let (a, b) = self.last_frame.unwrap_or((at, at));
            if at == 0 || at == self.from {
                return Err(broken(
                    at,
                    format!("{what} was altered (it does not match the chain before it)"),
                ));
            }
            return Err(if a == b {
                altered(a, b, format!("its hash does not match {what}"))
            } else {
                altered(a, b, format!("their hashes do not match {what}"))
            });
        }
        Ok(())
    }

    fn finish(mut self) -> LedgerCheck {
        let found = self.expected - 1;
        let head = self.head;
        if found < head.seq {
            let removed = head.seq - found;
            let problem = match (found, removed) {
                (0, _) => format!(
                    "all {removed} records were removed (head says {}, found none)",
                    head.seq
                ),
                (_, 1) => format!(
                    "the last record was removed (head says {}, found {found})",
                    head.seq
                ),
                _ => format!(
                    "the last {removed} records were removed (head says {}, found {found})",
                    head.seq
                ),
            };
            return self.fail(broken(found + 1, problem));
        }
        let matches = head.hash == self.last.hash;
        if let Err(b) = self.settle(matches, "the ledger head") {
            return b;
        }
        if !matches {
            let (a, b) = self.last_frame.unwrap_or((found, found));
            return altered(a, b, "its hash does not match the ledger head".into());
        }
        if let Some(durable) = self.durable {
            if durable.seq > head.seq {
                return broken(
                    head.seq + 1,
                    format!(
                        "the ledger head kept in the metadata says {} records, but {} were written",
                        durable.seq, head.seq
                    ),
                );
            }
            if !self.durable_seen && durable.seq > self.from {
                return broken(
                    durable.seq,
                    format!(
                        "record {} was not found, though the ledger head kept in the metadata names it",
                        durable.seq
                    ),
                );
            }
        }
        LedgerCheck::Intact {
            records: head.seq,
            head: head.hash,
            from: self.from,
        }
    }
}

/// Where one frame of a segment lies, for tests and tools that inspect the files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpan {
    /// The segment file.
    pub path: PathBuf,
    /// The frame's first byte in the file.
    pub offset: u64,
    /// Its length in bytes (length prefix, body and checksum).
    pub len: u64,
    /// Its first record (a checkpoint: the record it is at).
    pub first: u64,
    /// Records it holds (0 for a checkpoint).
    pub records: u64,
}

/// Every readable frame of the segments in `data_dir/ledger`, in order (a segment's
/// frames up to the first that does not read).
pub fn frame_spans(data_dir: &Path) -> Result<Vec<FrameSpan>, StoreError> {
    let mut out = Vec::new();
    for (_, path) in list(&data_dir.join(DIR))? {
        let bytes = read_file(&path)?;
        let mut dict = Dictionary::default();
        let mut at = HEADER_BYTES;
        while let Next::Frame(raw) = segment::next_frame(&bytes, at) {
            let (first, records) = match segment::decode_body(raw.body, &mut dict) {
                Ok(Frame::Records { first, entries, .. }) => (first, entries.len() as u64),
                Ok(Frame::Checkpoint(cp)) => (cp.seq, 0),
                Err(_) => break,
            };
            out.push(FrameSpan {
                path: path.clone(),
                offset: at as u64,
                len: (raw.end - at) as u64,
                first,
                records,
            });
            at = raw.end;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A segment dropped into an archive that holds one of the same name (a ledger
    /// restarted by `store recover` numbers from 1 again) goes beside it, never over it.
    #[test]
    fn a_dropped_segment_never_replaces_one_archived_before() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("archive");
        std::fs::create_dir(&archive).unwrap();
        let name = "00000000000000000001.seg";
        std::fs::write(archive.join(name), b"the first ledger's records").unwrap();
        for (n, text) in [(1, "the second ledger's"), (2, "the third ledger's")] {
            let segment = dir.path().join(name);
            std::fs::write(&segment, text).unwrap();
            drop_file(&segment, Some(&archive)).unwrap();
            assert!(!segment.exists());
            assert_eq!(
                std::fs::read(archive.join(format!("00000000000000000001.{n}.seg"))).unwrap(),
                text.as_bytes()
            );
        }
        assert_eq!(
            std::fs::read(archive.join(name)).unwrap(),
            b"the first ledger's records"
        );
    }
}
