//! The bundle log: an append-only file holding every accepted bundle's signed bytes
//! and item records, exactly once. Signed bundles never change, so they are written
//! once, in the order accepted, and read back with one positioned read per item.
//!
//! ```text
//! file   := MAGIC header-frame frame*
//! frame  := "ENTF" | body_len u32 LE | crc32 u32 LE (of body) | body
//! body   := kind u8 | ...
//!   kind 1, a bundle: bundle UUID [16] | feed seq u64 LE
//!           | head_len u32 LE | head (BundleHead, prost; empty when already logged)
//!           | count u32 LE | (item_len u32 LE | ItemRecord (prost))*count
//!   kind 2, the header (always the first frame, and only there):
//!           store id [16] | created ms i64 LE | owner_len u16 LE | owner node id
//!   kind 3, a commit mark: synced length u64 LE | bundle frames in it u64 LE
//! ```
//!
//! The log describes itself: [`MAGIC`] names the format (4), the header names the
//! node that owns it and the store it belongs to (a random id the store's metadata
//! holds too, so a log and metadata of different stores are never combined). Every
//! frame starts with the same four bytes, so after a damaged frame the frames that
//! follow it can still be found and counted.
//!
//! One bundle frame is one accept: the bundle header the first time it is seen, the
//! items newly stored (or re-stored with a lower hop count) and the bundle's new place
//! in the change feed. An accept may write, before that frame and in the same write,
//! frames of other bundles that record again items that waited for it (see
//! `Index::waiting`). A frame is written with one positioned write and counts only
//! once complete with a matching checksum.
//!
//! Acknowledged means [`BundleLog::sync`] returned; the store records how far the log
//! was synced (the *watermark*) in its metadata after each sync, before it answers
//! anyone. The log itself also says how far it was synced: after a sync that covered
//! new bundles, a commit mark recording the synced length is appended (it reaches the
//! disk with the next sync). The marks serve recovery, when the metadata is lost: the
//! frames up to the last mark were on disk; what follows may or may not have been
//! acknowledged, and recovery says so rather than guess.
//!
//! At open, with the watermark: anything that does not read as a frame at or past the
//! watermark is a write that the metadata proves was never acknowledged (a crash, or a
//! power loss that kept only some of the pages written since the last sync): it is
//! copied aside to `<log>.cut-<offset>` and cut off. Damage below the watermark, or a
//! log shorter than it, is damage to acknowledged data: the open is refused with the
//! offset and the number of intact frames after it. A write that fails (a full disk)
//! is taken back, and the log goes on when space returns. After a failed sync the log
//! refuses further writes until the store is reopened, because the kernel may have
//! dropped the pages that failed and a later sync could then report success for data
//! that is lost.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;

/// First bytes of a bundle log; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"ENTLOG\0\x04";
/// First bytes of a log of format 3 (no header, no frame marks), which
/// [`upgrade_v3`] copies into a log of this format.
pub const MAGIC_V3: &[u8; 8] = b"ENTLOG\0\x03";
/// The format this version writes.
pub const FORMAT: u32 = 4;
/// First bytes of every frame.
const SYNC: &[u8; 4] = b"ENTF";
/// Kind byte of a bundle frame (the same byte that was the version of a format-3 body).
const VERSION: u8 = 1;
/// Kind byte of the header frame.
const KIND_HEADER: u8 = 2;
/// Kind byte of a commit mark.
const KIND_COMMIT: u8 = 3;
/// Bytes before a frame's body: marker, length and checksum.
const FRAME_HEAD: u64 = 12;
/// Bytes before a format-3 frame's body: length and checksum.
const FRAME_HEAD_V3: u64 = 8;
/// Largest frame accepted when reading (a bundle is bounded far below this on the
/// wire); a larger length is damage.
pub const MAX_FRAME: u32 = 512 << 20;

/// Where one item record lies in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Byte offset of the record in the file.
    pub offset: u64,
    /// Its length.
    pub len: u32,
}

/// One frame as read back: its parts and where each lies.
pub struct Frame<'a> {
    pub bundle_uuid: [u8; 16],
    pub feed_seq: u64,
    /// The bundle head, when this frame carries it.
    pub head: Option<(Span, &'a [u8])>,
    /// Item records, in the order written.
    pub items: Vec<(Span, &'a [u8])>,
}

/// Builds one frame body.
pub struct FrameBuilder {
    body: Vec<u8>,
    count_at: usize,
    count: u32,
    /// Offsets within the body of each item record, and its length.
    item_spans: Vec<(usize, u32)>,
    head_span: Option<(usize, u32)>,
}

impl FrameBuilder {
    pub fn new(bundle_uuid: &[u8; 16], feed_seq: u64, head: Option<&[u8]>) -> Self {
        let mut body = Vec::with_capacity(64 * 1024);
        body.push(VERSION);
        body.extend_from_slice(bundle_uuid);
        body.extend_from_slice(&feed_seq.to_le_bytes());
        let head = head.unwrap_or_default();
        body.extend_from_slice(&(head.len() as u32).to_le_bytes());
        let head_span = (!head.is_empty()).then_some((body.len(), head.len() as u32));
        body.extend_from_slice(head);
        let count_at = body.len();
        body.extend_from_slice(&0u32.to_le_bytes());
        Self {
            body,
            count_at,
            count: 0,
            item_spans: Vec::new(),
            head_span,
        }
    }

    /// Gives the frame another feed position than the one it was begun with.
    pub fn set_feed_seq(&mut self, feed_seq: u64) {
        // After the kind byte and the bundle UUID (see the module's layout).
        self.body[17..25].copy_from_slice(&feed_seq.to_le_bytes());
    }

    /// Adds one item record, encoded in place.
    pub fn record(&mut self, record: &impl prost::Message) {
        let len = record.encoded_len();
        self.body.extend_from_slice(&(len as u32).to_le_bytes());
        self.item_spans.push((self.body.len(), len as u32));
        record
            .encode(&mut self.body)
            .expect("a Vec grows as needed");
        self.count += 1;
    }

    /// Adds one item record from borrowed fields, encoded in place (the same bytes as
    /// [`Self::record`] of the record with those fields).
    pub fn record_ref(&mut self, record: &super::records::ItemRecordRef<'_>) {
        let len = record.encoded_len();
        self.body.extend_from_slice(&(len as u32).to_le_bytes());
        self.item_spans.push((self.body.len(), len as u32));
        self.body.reserve(len);
        record.encode(&mut self.body);
        self.count += 1;
    }

    /// Adds one item record given as bytes.
    pub fn item(&mut self, record: &[u8]) {
        self.body
            .extend_from_slice(&(record.len() as u32).to_le_bytes());
        self.item_spans.push((self.body.len(), record.len() as u32));
        self.body.extend_from_slice(record);
        self.count += 1;
    }

    fn finish(mut self) -> Finished {
        let count = self.count.to_le_bytes();
        self.body[self.count_at..self.count_at + 4].copy_from_slice(&count);
        (self.body, self.item_spans, self.head_span)
    }
}

/// A frame body with the offsets (within it) and lengths of its items and head.
type Finished = (Vec<u8>, Vec<(usize, u32)>, Option<(usize, u32)>);

/// Where a written frame's parts landed.
pub struct Written {
    pub head: Option<Span>,
    pub items: Vec<Span>,
}

/// What a log says about itself: the store it belongs to and the node that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogHeader {
    /// Random id of the store, also kept in the store's metadata.
    pub store_id: [u8; 16],
    /// The owner's node id.
    pub owner: String,
    /// When the log was created, ms since the epoch.
    pub created_ms: i64,
    /// How many compactions made it: 0 for a log written from the start, and one more
    /// for each log a compaction writes to replace the one before. The store's
    /// metadata names the generation it expects, so a crash in the middle of a swap is
    /// resolved at open.
    pub generation: u64,
}

impl LogHeader {
    fn encode(&self) -> Vec<u8> {
        let mut body = vec![KIND_HEADER];
        body.extend_from_slice(&self.store_id);
        body.extend_from_slice(&self.created_ms.to_le_bytes());
        let owner = self.owner.as_bytes();
        body.extend_from_slice(&(owner.len().min(u16::MAX as usize) as u16).to_le_bytes());
        body.extend_from_slice(&owner[..owner.len().min(u16::MAX as usize)]);
        // Generation 0 is not written, so a log of the first generation reads the same
        // as before compaction existed.
        if self.generation > 0 {
            body.extend_from_slice(&self.generation.to_le_bytes());
        }
        body
    }

    fn decode(body: &[u8]) -> Result<Self, String> {
        if body.first() != Some(&KIND_HEADER) || body.len() < 1 + 16 + 8 + 2 {
            return Err("the first frame is not a log header".into());
        }
        let store_id: [u8; 16] = body[1..17].try_into().expect("16 bytes");
        let created_ms = i64::from_le_bytes(body[17..25].try_into().expect("8 bytes"));
        let len = u16::from_le_bytes(body[25..27].try_into().expect("2 bytes")) as usize;
        let owner = body
            .get(27..27 + len)
            .ok_or("the header's owner does not fit the frame")?;
        let generation = match &body[27 + len..] {
            [] => 0,
            rest => u64::from_le_bytes(
                rest.try_into()
                    .map_err(|_| "the header's owner does not fit the frame")?,
            ),
        };
        let owner = String::from_utf8(owner.to_vec()).map_err(|_| "the owner is not UTF-8")?;
        Ok(Self {
            store_id,
            owner,
            created_ms,
            generation,
        })
    }
}

/// Where the first frame that does not read back lies, and what follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Its offset.
    pub at: u64,
    /// What is wrong with it.
    pub problem: String,
    /// Intact frames found after it.
    pub intact_after: u64,
    /// The first of them.
    pub first_intact: Option<u64>,
    /// The file's length.
    pub file_len: u64,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a damaged frame at byte {} ({})", self.at, self.problem)?;
        match self.first_intact {
            Some(first) => write!(
                f,
                ", with {} intact frame{} after it (the first at byte {first})",
                self.intact_after,
                if self.intact_after == 1 { "" } else { "s" }
            ),
            None => write!(
                f,
                ", and nothing readable after it ({} bytes to the end)",
                self.file_len - self.at
            ),
        }
    }
}

/// What reading a log found.
struct Scan {
    header: LogHeader,
    /// End of the last frame read in order.
    end: u64,
    /// Bundle frames read.
    frames: u64,
    /// End of the last bundle frame.
    data_end: u64,
    /// The synced length the last commit mark records.
    marked: u64,
    damage: Option<Damage>,
}

/// What recovery found in a log read without the store's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// The log's header.
    pub header: LogHeader,
    /// Bundle frames kept.
    pub frames: u64,
    /// Bytes kept.
    pub len: u64,
    /// The synced length the last commit mark records: everything up to it was on
    /// disk when the mark was written.
    pub marked: u64,
    /// The damage cut off the end, where the rest went.
    pub cut: Option<(Damage, PathBuf)>,
}

/// Appends as they stand: how many bundle frames, and where the last one ends.
struct Tail {
    frames: u64,
    data_end: u64,
}

/// How far the log is known to be on disk, and what the last commit mark records.
struct Synced {
    upto: u64,
    marked: u64,
}

/// The open log file.
pub struct BundleLog {
    path: PathBuf,
    file: File,
    header: LogHeader,
    /// End of the last complete frame: where the next one goes.
    end: AtomicU64,
    /// Held while appending: one frame at a time.
    appending: Mutex<Tail>,
    /// Held while syncing.
    synced: Mutex<Synced>,
    /// A sync failed: no more writes or syncs until reopened.
    failed: AtomicBool,
}

impl BundleLog {
    /// Creates the log at `path` (which must not exist) with `header`, durably.
    pub fn create(path: &Path, header: &LogHeader) -> Result<Self, StoreError> {
        create(path, header).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::open(path, 0, |_| Ok(()))
    }

    /// Opens the log at `path` and reads every frame in order, handing each bundle
    /// frame to `visit`. `acknowledged` is the watermark the store's metadata
    /// recorded: damage below it is refused, anything unreadable at or past it was
    /// never acknowledged (the metadata proves it) and is cut off.
    pub fn open(
        path: &Path,
        acknowledged: u64,
        visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            source: e,
        };
        let damaged = |at: u64, problem: String| StoreError::Corrupt {
            key: format!("bundle log {} at byte {at}", path.display()),
            problem,
        };
        if !path.try_exists().map_err(io)? {
            return Err(damaged(
                0,
                format!("the log is missing, but {acknowledged} bytes of it were acknowledged"),
            ));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        if file_len < acknowledged {
            return Err(damaged(
                file_len,
                format!(
                    "the log ends here, but the store's metadata records {acknowledged} bytes of it as acknowledged"
                ),
            ));
        }
        let scan = scan(path, &file, file_len, visit)?;
        if let Some(damage) = &scan.damage {
            if damage.at < acknowledged {
                return Err(damaged(
                    damage.at,
                    format!(
                        "{damage}, in acknowledged data (the store's metadata records the log as on disk up to byte {acknowledged}); restore the data directory from a backup"
                    ),
                ));
            }
            let aside = cut_tail(path, &file, damage.at, file_len).map_err(io)?;
            tracing::warn!(
                log = %path.display(),
                at = damage.at,
                cut = file_len - damage.at,
                what = %damage,
                acknowledged_up_to = acknowledged,
                copied_to = %aside.display(),
                "cut a write that was never acknowledged off the end of the bundle log (the store's metadata records the log as on disk only up to an earlier byte)"
            );
        }
        Self::opened(path, file, scan, acknowledged)
    }

    /// Opens the log at `path` without the store's metadata (which was lost), for
    /// recovery: nothing tells which frames were acknowledged but the log's commit
    /// marks. A damaged frame with intact frames after it is refused unless
    /// `cut_damaged`; a damaged end is copied aside and cut, and reported.
    pub fn recover(
        path: &Path,
        cut_damaged: bool,
        visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
    ) -> Result<(Self, Recovered), StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let scan = scan(path, &file, file_len, visit)?;
        let mut cut = None;
        if let Some(damage) = &scan.damage {
            if damage.intact_after > 0 && !cut_damaged {
                return Err(StoreError::Corrupt {
                    key: format!("bundle log {} at byte {}", path.display(), damage.at),
                    problem: format!(
                        "{damage}: data written before later data is damaged, so it may have been acknowledged. Restore the data directory from a backup, or recover with --cut-damaged to keep only the frames before byte {} (the rest is copied aside)",
                        damage.at
                    ),
                });
            }
            let aside = cut_tail(path, &file, damage.at, file_len).map_err(io)?;
            cut = Some((damage.clone(), aside));
        }
        let report = Recovered {
            header: scan.header.clone(),
            frames: scan.frames,
            len: scan.end,
            marked: scan.marked,
            cut,
        };
        let log = Self::opened(path, file, scan, 0)?;
        Ok((log, report))
    }

    fn opened(path: &Path, file: File, scan: Scan, acknowledged: u64) -> Result<Self, StoreError> {
        if scan.end > acknowledged {
            // Frames read back whole past the watermark may still be only in the page
            // cache (the process crashed, the machine did not): on disk before anyone
            // counts them as acknowledged.
            file.sync_data().map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            header: scan.header,
            end: AtomicU64::new(scan.end),
            appending: Mutex::new(Tail {
                frames: scan.frames,
                data_end: scan.data_end,
            }),
            synced: Mutex::new(Synced {
                upto: scan.end,
                marked: scan.marked,
            }),
            failed: AtomicBool::new(false),
        })
    }

    /// The log's header.
    pub fn header(&self) -> &LogHeader {
        &self.header
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(self.io(std::io::Error::other(
                "an earlier sync of the bundle log failed; restart the node to recover",
            )));
        }
        Ok(())
    }

    /// Whether a sync failed (the log takes nothing more until reopened).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Appends one frame. Not durable until [`BundleLog::sync`].
    pub fn append(&self, frame: FrameBuilder) -> Result<Written, StoreError> {
        let mut written = self.append_all(vec![frame])?;
        Ok(written.pop().expect("one frame in, one out"))
    }

    /// Appends `frames` in order with one positioned write, so nothing comes between
    /// them. A crash part-way through may still keep only the first ones (each frame
    /// reads back whole or not at all). Not durable until [`BundleLog::sync`].
    pub fn append_all(&self, frames: Vec<FrameBuilder>) -> Result<Vec<Written>, StoreError> {
        let mut bytes = Vec::new();
        let mut parts = Vec::with_capacity(frames.len());
        for frame in frames {
            let (body, items, head) = frame.finish();
            let start = bytes.len() as u64 + FRAME_HEAD;
            // Framed straight into the one write, not through a copy of its own.
            put_frame(&mut bytes, &body).ok_or_else(|| StoreError::Corrupt {
                key: "bundle log".into(),
                problem: format!("a frame of {} bytes is too large", body.len()),
            })?;
            parts.push((start, items, head));
        }
        let at = self.write_frames(&bytes, parts.len() as u64)?;
        Ok(parts
            .into_iter()
            .map(|(start, items, head)| {
                let base = at + start;
                Written {
                    head: head.map(|(o, len)| Span {
                        offset: base + o as u64,
                        len,
                    }),
                    items: items
                        .into_iter()
                        .map(|(o, len)| Span {
                            offset: base + o as u64,
                            len,
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Writes one frame at the end; returns where it starts.
    fn write_frame(&self, body: &[u8], bundle: bool) -> Result<u64, StoreError> {
        let bytes = frame_bytes(body).ok_or_else(|| StoreError::Corrupt {
            key: "bundle log".into(),
            problem: format!("a frame of {} bytes is too large", body.len()),
        })?;
        self.write_frames(&bytes, u64::from(bundle))
    }

    /// Writes framed `bytes` at the end, `bundles` bundle frames among them; returns
    /// where they start. A write that fails is taken back (the log goes on once there
    /// is room); only when that fails too does the log take no more writes.
    fn write_frames(&self, bytes: &[u8], bundles: u64) -> Result<u64, StoreError> {
        let mut tail = self.appending.lock().unwrap_or_else(|p| p.into_inner());
        self.check_usable()?;
        let at = self.end.load(Ordering::SeqCst);
        if let Err(e) = self.file.write_all_at(bytes, at) {
            // Whatever part of the frames landed is taken back, so no stale bytes lie
            // past the end. If that fails too, the log takes nothing more until
            // reopened (the next open cuts them, since they are past the watermark).
            if self.file.set_len(at).is_err() {
                self.failed.store(true, Ordering::SeqCst);
            }
            return Err(self.io(e));
        }
        let end = at + bytes.len() as u64;
        self.end.store(end, Ordering::SeqCst);
        if bundles > 0 {
            tail.frames += bundles;
            tail.data_end = end;
        }
        Ok(at)
    }

    /// Forces every frame appended before the call to disk; returns how far the log
    /// is now known to be on disk (the watermark). Concurrent callers share one sync.
    /// A sync that covered new bundles appends a commit mark (on disk with the next).
    pub fn sync(&self) -> Result<u64, StoreError> {
        let target = self.end.load(Ordering::SeqCst);
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.check_usable()?;
        if synced.upto >= target {
            return Ok(synced.upto);
        }
        let (upto, frames, data_end) = {
            let tail = self.appending.lock().unwrap_or_else(|p| p.into_inner());
            (self.end.load(Ordering::SeqCst), tail.frames, tail.data_end)
        };
        if let Err(e) = self.file.sync_data() {
            // What was not synced may be lost already, while still readable from the
            // page cache: cut it, so a reopen cannot read it back and count it.
            self.failed.store(true, Ordering::SeqCst);
            let _ = self.file.set_len(synced.upto);
            return Err(self.io(e));
        }
        synced.upto = upto;
        if data_end > synced.marked {
            let mut mark = vec![KIND_COMMIT];
            mark.extend_from_slice(&upto.to_le_bytes());
            mark.extend_from_slice(&frames.to_le_bytes());
            // A mark that does not fit (a full disk) is left out: marks only help
            // recovery tell more, and the next sync writes one.
            match self.write_frame(&mark, false) {
                Ok(_) => synced.marked = upto,
                Err(error) => tracing::debug!(%error, "no commit mark written"),
            }
        }
        Ok(upto)
    }

    /// Whether `bytes` more would fit on the log's file system now: written past the
    /// end and taken back at once.
    pub fn probe(&self, bytes: usize) -> Result<(), StoreError> {
        let _tail = self.appending.lock().unwrap_or_else(|p| p.into_inner());
        self.check_usable()?;
        let at = self.end.load(Ordering::SeqCst);
        let written = self.file.write_all_at(&vec![0u8; bytes], at);
        let taken_back = self.file.set_len(at);
        written.map_err(|e| self.io(e))?;
        taken_back.map_err(|e| self.io(e))
    }

    /// Reads the bytes at `span` (from a frame already appended).
    pub fn read(&self, span: Span) -> Result<Vec<u8>, StoreError> {
        let mut out = vec![0u8; span.len as usize];
        self.file
            .read_exact_at(&mut out, span.offset)
            .map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// Bytes in the file.
    pub fn len(&self) -> u64 {
        self.end.load(Ordering::SeqCst)
    }

    /// Reads the bundle frames that start at or after `from` (the end of an earlier
    /// frame) and end by the log's end now, in order, handing each to `visit`; commit
    /// marks are skipped. For a compaction, which copies what was appended while it
    /// ran: anything that does not read back is damage.
    pub fn frames_from(
        &self,
        from: u64,
        mut visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let end = self.len();
        let damaged = |at: u64, problem: String| StoreError::Corrupt {
            key: format!("bundle log {} at byte {at}", self.path.display()),
            problem,
        };
        let mut at = from;
        while at < end {
            let len = frame_at(&self.file, at, end)
                .map_err(|e| self.io(e))?
                .ok_or_else(|| {
                    damaged(
                        at,
                        "a frame appended since the compaction began does not read back".into(),
                    )
                })?;
            let mut body = vec![0u8; (len - FRAME_HEAD) as usize];
            self.file
                .read_exact_at(&mut body, at + FRAME_HEAD)
                .map_err(|e| self.io(e))?;
            match body[0] {
                VERSION => visit(parse(&body, at + FRAME_HEAD).map_err(|p| damaged(at, p))?)?,
                KIND_COMMIT => {}
                kind => {
                    return Err(damaged(
                        at,
                        format!("a frame of kind {kind} past the header"),
                    ));
                }
            }
            at += len;
        }
        Ok(())
    }

    /// The same open log, known from now on by `path` (it was renamed there).
    pub fn renamed(mut self, path: &Path) -> Self {
        self.path = path.to_owned();
        self
    }
}

/// A frame's bytes: marker, length, checksum, body (`None` when too large).
fn frame_bytes(body: &[u8]) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    put_frame(&mut bytes, body)?;
    Some(bytes)
}

/// Appends a frame's bytes ([`frame_bytes`]) to `bytes`; `None`, with `bytes` as it
/// was, when the body is too large (or empty).
fn put_frame(bytes: &mut Vec<u8>, body: &[u8]) -> Option<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= MAX_FRAME && l > 0)?;
    bytes.reserve(body.len() + FRAME_HEAD as usize);
    bytes.extend_from_slice(SYNC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes.extend_from_slice(body);
    Some(())
}

/// Reads a log from its start: the header, then every frame in order up to the
/// first that does not read back (counting the intact frames after it).
fn scan(
    path: &Path,
    file: &File,
    file_len: u64,
    mut visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
) -> Result<Scan, StoreError> {
    let io = |e: std::io::Error| StoreError::Io {
        path: path.to_owned(),
        source: e,
    };
    let damaged = |at: u64, problem: String| StoreError::Corrupt {
        key: format!("bundle log {} at byte {at}", path.display()),
        problem,
    };
    let magic_len = MAGIC.len() as u64;
    let mut magic = [0u8; 8];
    if file_len < magic_len || file.read_exact_at(&mut magic, 0).is_err() {
        return Err(damaged(0, "too short to be an Entente bundle log".into()));
    }
    if &magic == MAGIC_V3 {
        return Err(damaged(
            0,
            "a bundle log of format 3, which the store upgrades when it finds one under its old name".into(),
        ));
    }
    if &magic != MAGIC {
        return Err(damaged(
            0,
            "not an Entente bundle log of this format version".into(),
        ));
    }
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(magic_len)).map_err(io)?;
    let mut at = magic_len;
    let mut body = Vec::new();
    let mut header = None;
    let (mut frames, mut data_end, mut marked) = (0u64, 0u64, 0u64);
    let mut problem = None;
    while at < file_len {
        let left = file_len - at;
        if left < FRAME_HEAD {
            problem = Some(format!("{left} bytes of a frame header"));
            break;
        }
        let mut head = [0u8; FRAME_HEAD as usize];
        reader.read_exact(&mut head).map_err(io)?;
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
        if &head[..4] != SYNC {
            problem = Some("no frame marker".to_owned());
            break;
        }
        if len == 0 || len > MAX_FRAME || at + FRAME_HEAD + u64::from(len) > file_len {
            problem = Some(format!("a frame length of {len} with {left} bytes left"));
            break;
        }
        body.resize(len as usize, 0);
        reader.read_exact(&mut body).map_err(io)?;
        if crc32fast::hash(&body) != crc {
            problem = Some("checksum mismatch".to_owned());
            break;
        }
        let end = at + FRAME_HEAD + u64::from(len);
        match (header.is_some(), body[0]) {
            (false, _) => {
                header = Some(LogHeader::decode(&body).map_err(|p| damaged(at, p))?);
                marked = end;
            }
            (true, VERSION) => {
                let frame = parse(&body, at + FRAME_HEAD).map_err(|p| damaged(at, p))?;
                visit(frame)?;
                frames += 1;
                data_end = end;
            }
            (true, KIND_COMMIT) if body.len() == 17 => {
                marked = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
            }
            (true, kind) => {
                return Err(damaged(
                    at,
                    format!("a frame of kind {kind}, which this version does not know"),
                ));
            }
        }
        at = end;
    }
    drop(reader);
    let Some(header) = header else {
        let what = problem.unwrap_or_else(|| "no header".into());
        return Err(damaged(
            magic_len,
            format!("the log's header does not read back ({what})"),
        ));
    };
    let damage = match problem {
        None => None,
        Some(problem) => {
            let (intact_after, first_intact) = intact_after(file, at + 1, file_len).map_err(io)?;
            Some(Damage {
                at,
                problem,
                intact_after,
                first_intact,
                file_len,
            })
        }
    };
    Ok(Scan {
        header,
        end: at,
        frames,
        data_end,
        marked,
        damage,
    })
}

/// The intact frame at `at`, if one is there: its length with its head.
fn frame_at(file: &File, at: u64, file_len: u64) -> std::io::Result<Option<u64>> {
    if at + FRAME_HEAD > file_len {
        return Ok(None);
    }
    let mut head = [0u8; FRAME_HEAD as usize];
    file.read_exact_at(&mut head, at)?;
    let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
    if &head[..4] != SYNC
        || len == 0
        || len > MAX_FRAME
        || at + FRAME_HEAD + u64::from(len) > file_len
    {
        return Ok(None);
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, at + FRAME_HEAD)?;
    Ok((crc32fast::hash(&body) == crc).then_some(FRAME_HEAD + u64::from(len)))
}

/// Counts the intact frames from `from` to the end (looking for frame markers past
/// damaged bytes); returns the count and where the first lies.
fn intact_after(file: &File, from: u64, file_len: u64) -> std::io::Result<(u64, Option<u64>)> {
    let (mut count, mut first) = (0u64, None);
    let mut at = from;
    let mut chunk = vec![0u8; 1 << 20];
    'search: while at + FRAME_HEAD <= file_len {
        if let Some(len) = frame_at(file, at, file_len)? {
            count += 1;
            first.get_or_insert(at);
            at += len;
            continue;
        }
        // The next marker after `at`.
        let mut from = at + 1;
        while from + SYNC.len() as u64 <= file_len {
            let n = (file_len - from).min(chunk.len() as u64) as usize;
            file.read_exact_at(&mut chunk[..n], from)?;
            if let Some(i) = chunk[..n].windows(SYNC.len()).position(|w| w == SYNC) {
                at = from + i as u64;
                continue 'search;
            }
            if n < SYNC.len() {
                break;
            }
            from += (n - (SYNC.len() - 1)) as u64;
        }
        break;
    }
    Ok((count, first))
}

/// Copies a log of format 3 at `old` into a new log of this format at `new`, with
/// `header`: every frame that reads back, in order, with the same bodies. Damage
/// before `acknowledged` (the format-3 watermark) is refused; an unreadable end past
/// it was never acknowledged and is left out (it stays in the old file, which the
/// caller keeps). Returns the new log's length.
pub fn upgrade_v3(
    old: &Path,
    new: &Path,
    acknowledged: u64,
    header: &LogHeader,
) -> Result<u64, StoreError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io {
            path: path.clone(),
            source,
        }
    };
    let damaged = |at: u64, problem: String| StoreError::Corrupt {
        key: format!("bundle log {} at byte {at}", old.display()),
        problem,
    };
    let file = File::open(old).map_err(io(old))?;
    let file_len = file.metadata().map_err(io(old))?.len();
    if file_len < acknowledged {
        return Err(damaged(
            file_len,
            format!("the log ends here, but {acknowledged} bytes of it were acknowledged"),
        ));
    }
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0)
        .map_err(|_| damaged(0, "too short to be a bundle log".into()))?;
    if &magic != MAGIC_V3 {
        return Err(damaged(0, "not a bundle log of format 3".into()));
    }
    let fresh = new.with_extension("log.upgrading");
    let out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&fresh)
        .map_err(io(&fresh))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, &out);
    use std::io::Write;
    writer.write_all(MAGIC).map_err(io(&fresh))?;
    let header_bytes = frame_bytes(&header.encode()).expect("a small frame");
    writer.write_all(&header_bytes).map_err(io(&fresh))?;
    let mut written = (MAGIC.len() + header_bytes.len()) as u64;
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    reader.seek(SeekFrom::Start(8)).map_err(io(old))?;
    let mut at = 8u64;
    let mut body = Vec::new();
    let mut frames = 0u64;
    while at < file_len {
        let left = file_len - at;
        let mut problem = None;
        if left < FRAME_HEAD_V3 {
            problem = Some(format!("{left} bytes of a frame header"));
        } else {
            let mut head = [0u8; 8];
            reader.read_exact(&mut head).map_err(io(old))?;
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            if len == 0 || len > MAX_FRAME || at + FRAME_HEAD_V3 + u64::from(len) > file_len {
                problem = Some(format!("a frame length of {len} with {left} bytes left"));
            } else {
                body.resize(len as usize, 0);
                reader.read_exact(&mut body).map_err(io(old))?;
                if crc32fast::hash(&body) != crc {
                    problem = Some("checksum mismatch".into());
                } else {
                    parse(&body, 0).map_err(|p| damaged(at, p))?;
                    let bytes = frame_bytes(&body).expect("it fitted before");
                    writer.write_all(&bytes).map_err(io(&fresh))?;
                    written += bytes.len() as u64;
                    frames += 1;
                    at += FRAME_HEAD_V3 + u64::from(len);
                }
            }
        }
        if let Some(problem) = problem {
            if at < acknowledged {
                let _ = std::fs::remove_file(&fresh);
                return Err(damaged(at, format!("{problem}, in acknowledged data")));
            }
            tracing::warn!(log = %old.display(), at, %problem, "the end of the format-3 log was never acknowledged; left out of the upgrade (it stays in the old file)");
            break;
        }
    }
    let mut mark = vec![KIND_COMMIT];
    mark.extend_from_slice(&written.to_le_bytes());
    mark.extend_from_slice(&frames.to_le_bytes());
    let mark = frame_bytes(&mark).expect("a small frame");
    writer.write_all(&mark).map_err(io(&fresh))?;
    written += mark.len() as u64;
    writer.flush().map_err(io(&fresh))?;
    drop(writer);
    out.sync_all().map_err(io(&fresh))?;
    std::fs::rename(&fresh, new).map_err(io(new))?;
    sync_dir(new).map_err(io(new))?;
    Ok(written)
}

/// Creates a log holding only the magic bytes and `header`, so that a crash never
/// leaves a log file without them: written aside, synced, linked into place,
/// directory synced.
fn create(path: &Path, header: &LogHeader) -> std::io::Result<()> {
    let fresh = path.with_extension("log.new");
    // Owner only, whatever the umask: the log holds every item, RED ones included.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&fresh)?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&frame_bytes(&header.encode()).expect("a small frame"));
    file.write_all_at(&bytes, 0)?;
    file.sync_all()?;
    // A link, not a rename: it fails rather than replace a log that appeared meanwhile.
    std::fs::hard_link(&fresh, path)?;
    std::fs::remove_file(&fresh)?;
    sync_dir(path)
}

pub(crate) fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// The length of the log at `path` if it exists and starts as a log does (a hint for
/// sizing the indexes before it is read).
pub fn existing_log_len(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let mut magic = [0u8; 8];
    file.read_exact_at(&mut magic, 0).ok()?;
    (&magic == MAGIC).then(|| file.metadata().ok().map(|m| m.len()))?
}

/// The header of the log at `path`, read without reading the rest.
pub fn read_header(path: &Path) -> Result<LogHeader, StoreError> {
    let damaged = |problem: String| StoreError::Corrupt {
        key: format!("bundle log {}", path.display()),
        problem,
    };
    let file = File::open(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut magic = [0u8; 8];
    if file.read_exact_at(&mut magic, 0).is_err() || &magic != MAGIC {
        return Err(damaged(
            "not an Entente bundle log of this format version".into(),
        ));
    }
    let len = frame_at(&file, 8, file_len)
        .ok()
        .flatten()
        .ok_or_else(|| damaged("the log's header does not read back".into()))?;
    let mut body = vec![0u8; (len - FRAME_HEAD) as usize];
    file.read_exact_at(&mut body, 8 + FRAME_HEAD)
        .map_err(|e| damaged(e.to_string()))?;
    LogHeader::decode(&body).map_err(damaged)
}

/// Copies the bytes from `at` to the end aside (for an operator to look at), then
/// cuts them off; returns where the copy went.
fn cut_tail(path: &Path, mut file: &File, at: u64, file_len: u64) -> std::io::Result<PathBuf> {
    // A new file every time: an earlier cut at the same offset stays as it was.
    let (aside, mut copy) = (0..)
        .map(|n| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".cut-{at}"));
            if n > 0 {
                name.push(format!(".{n}"));
            }
            PathBuf::from(name)
        })
        .find_map(|aside| {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&aside)
            {
                Ok(file) => Some(Ok((aside, file))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                Err(e) => Some(Err(e)),
            }
        })
        .expect("an unbounded range of names")?;
    file.seek(SeekFrom::Start(at))?;
    std::io::copy(&mut file.take(file_len - at), &mut copy)?;
    copy.sync_all()?;
    sync_dir(path)?;
    file.set_len(at)?;
    file.sync_all()?;
    Ok(aside)
}

/// Splits one frame body (at file offset `base`) into its parts, checking every
/// length against the body.
fn parse(body: &[u8], base: u64) -> Result<Frame<'_>, String> {
    let mut at = 0usize;
    let mut take = |n: usize, what: &str| -> Result<(usize, &[u8]), String> {
        let start = at;
        let end = at
            .checked_add(n)
            .filter(|&e| e <= body.len())
            .ok_or_else(|| format!("{what} runs past the end of the frame"))?;
        at = end;
        Ok((start, &body[start..end]))
    };
    let (_, version) = take(1, "version")?;
    if version[0] != VERSION {
        return Err(format!("frame version {} is not {VERSION}", version[0]));
    }
    let bundle_uuid: [u8; 16] = take(16, "bundle id")?.1.try_into().expect("16 bytes");
    let feed_seq = u64::from_le_bytes(take(8, "feed position")?.1.try_into().expect("8 bytes"));
    let head_len = u32::from_le_bytes(take(4, "head length")?.1.try_into().expect("4 bytes"));
    let (head_at, head) = take(head_len as usize, "bundle head")?;
    let head = (head_len > 0).then_some((
        Span {
            offset: base + head_at as u64,
            len: head_len,
        },
        head,
    ));
    let count = u32::from_le_bytes(take(4, "item count")?.1.try_into().expect("4 bytes"));
    let mut items = Vec::with_capacity((count as usize).min(body.len() / 8).min(1 << 16));
    for _ in 0..count {
        let len = u32::from_le_bytes(take(4, "item length")?.1.try_into().expect("4 bytes"));
        let (item_at, bytes) = take(len as usize, "item record")?;
        items.push((
            Span {
                offset: base + item_at as u64,
                len,
            },
            bytes,
        ));
    }
    if at != body.len() {
        return Err(format!("{} bytes after the last item", body.len() - at));
    }
    if feed_seq == 0 {
        return Err("feed position 0".into());
    }
    Ok(Frame {
        bundle_uuid,
        feed_seq,
        head,
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> LogHeader {
        LogHeader {
            store_id: [9u8; 16],
            owner: "redmond.hq".into(),
            created_ms: 1,
            generation: 0,
        }
    }

    fn frames(path: &Path, acknowledged: u64) -> Result<Vec<(u64, usize)>, StoreError> {
        let mut seen = Vec::new();
        BundleLog::open(path, acknowledged, |f| {
            seen.push((f.feed_seq, f.items.len()));
            Ok(())
        })?;
        Ok(seen)
    }

    fn write(log: &BundleLog, seq: u64, items: &[&[u8]]) -> Written {
        let mut f = FrameBuilder::new(&[7u8; 16], seq, Some(b"head"));
        for i in items {
            f.item(i);
        }
        log.append(f).unwrap()
    }

    /// Every frame of a log's bytes: (start, end, kind).
    fn layout(bytes: &[u8]) -> Vec<(usize, usize, u8)> {
        let mut at = MAGIC.len();
        let mut out = Vec::new();
        while at + FRAME_HEAD as usize <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            let end = at + FRAME_HEAD as usize + len;
            out.push((at, end, bytes[at + FRAME_HEAD as usize]));
            at = end;
        }
        out
    }

    /// A log of three bundle frames, each synced (so each followed by a commit mark);
    /// returns its bytes and the watermark after the first.
    fn three_frames(path: &Path) -> (Vec<u8>, usize) {
        let log = BundleLog::create(path, &header()).unwrap();
        write(&log, 1, &[b"one"]);
        let first = log.sync().unwrap() as usize;
        write(&log, 2, &[b"two"]);
        log.sync().unwrap();
        write(&log, 3, &[b"three"]);
        log.sync().unwrap();
        log.sync().unwrap();
        drop(log);
        (std::fs::read(path).unwrap(), first)
    }

    #[test]
    fn the_log_is_readable_by_its_owner_only_and_names_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = BundleLog::create(&path, &header()).unwrap();
        assert_eq!(log.header(), &header());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_header(&path).unwrap(), header());
        // A log is never created over another.
        assert!(BundleLog::create(&path, &header()).is_err());
    }

    #[test]
    fn frames_read_back_in_order_with_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = BundleLog::create(&path, &header()).unwrap();
        let a = write(&log, 1, &[b"one", b"two"]);
        let b = write(&log, 2, &[b"three"]);
        assert_eq!(log.sync().unwrap(), b.items[0].offset + 5);
        assert_eq!(log.read(a.items[1]).unwrap(), b"two");
        assert_eq!(log.read(b.items[0]).unwrap(), b"three");
        assert_eq!(log.read(a.head.unwrap()).unwrap(), b"head");
        let end = log.sync().unwrap();
        assert_eq!(end, log.len());
        drop(log);
        assert_eq!(frames(&path, end).unwrap(), vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn a_sync_that_covered_bundles_leaves_one_commit_mark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (full, first) = three_frames(&path);
        let kinds: Vec<u8> = layout(&full).iter().map(|f| f.2).collect();
        assert_eq!(
            kinds,
            vec![
                KIND_HEADER,
                VERSION,
                KIND_COMMIT,
                VERSION,
                KIND_COMMIT,
                VERSION,
                KIND_COMMIT
            ]
        );
        let (_, found) = BundleLog::recover(&path, false, |_| Ok(())).unwrap();
        assert_eq!(found.frames, 3);
        assert_eq!(found.len as usize, full.len());
        assert!(found.cut.is_none());
        // The last mark records the sync that covered frame 3.
        assert_eq!(found.marked as usize, layout(&full)[6].0);
        assert!(found.marked as usize > first);
    }

    #[test]
    fn past_the_watermark_an_unreadable_write_is_cut_and_copied_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (full, first) = three_frames(&path);
        let frames_of = layout(&full);
        // Synced up to frame 1 only: every cut after it loses only what follows.
        for cut in first + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let kept = frames(&path, first as u64).unwrap();
            let whole: Vec<_> = frames_of.iter().filter(|f| f.1 <= cut).collect();
            let expected = whole.iter().filter(|f| f.2 == VERSION).count();
            assert_eq!(kept.len(), expected, "cut at {cut}");
            let end = whole.last().unwrap().1;
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, end);
            let aside = dir.path().join(format!("log.cut-{end}"));
            if cut > end {
                assert_eq!(std::fs::read(&aside).unwrap(), &full[end..cut]);
                std::fs::remove_file(&aside).unwrap();
            } else {
                assert!(!aside.exists());
            }
        }
        // A power loss that kept frame 3 but only part of frame 2 (pages reach the
        // disk in any order): the metadata proves neither was acknowledged.
        let mut partial = full.clone();
        partial[frames_of[3].0 + 20] ^= 0x5a;
        std::fs::write(&path, &partial).unwrap();
        assert_eq!(frames(&path, first as u64).unwrap(), vec![(1, 1)]);
        // Zeroes past the end (space allocated, data never written) are cut.
        let mut zeroes = full.clone();
        zeroes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &zeroes).unwrap();
        assert_eq!(frames(&path, full.len() as u64).unwrap().len(), 3);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, full.len());
    }

    #[test]
    fn below_the_watermark_damage_is_refused_never_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (full, _) = three_frames(&path);
        let frames_of = layout(&full);
        let synced = full.len() as u64;
        // A flipped bit anywhere in acknowledged data, the header and length fields
        // included.
        for at in [
            MAGIC.len(),
            frames_of[1].0,
            frames_of[1].0 + 5,
            frames_of[3].0,
            frames_of[3].0 + 6,
            full.len() - 1,
        ] {
            let mut flipped = full.clone();
            flipped[at] ^= 0x10;
            std::fs::write(&path, &flipped).unwrap();
            let refused = frames(&path, synced);
            assert!(
                matches!(refused, Err(StoreError::Corrupt { .. })),
                "byte {at}"
            );
            assert_eq!(std::fs::metadata(&path).unwrap().len(), synced, "byte {at}");
        }
        // In the middle: the refusal says how many intact frames follow.
        let mut flipped = full.clone();
        flipped[frames_of[3].0 + 20] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        let refused = frames(&path, synced).err().unwrap().to_string();
        assert!(
            refused.contains(&format!("damaged frame at byte {}", frames_of[3].0)),
            "{refused}"
        );
        assert!(
            refused.contains("with 3 intact frames after it"),
            "{refused}"
        );
        assert!(!refused.contains("never acknowledged"), "{refused}");
        // Shorter than what was acknowledged, or gone: refused.
        std::fs::write(&path, &full[..frames_of[3].0 + 3]).unwrap();
        assert!(matches!(
            frames(&path, synced),
            Err(StoreError::Corrupt { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            frames(&path, synced),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!path.exists());
        // Another file is refused, and so is a log of format 3 under this name.
        std::fs::write(&path, b"not a log at all").unwrap();
        assert!(matches!(frames(&path, 0), Err(StoreError::Corrupt { .. })));
        std::fs::write(&path, MAGIC_V3).unwrap();
        assert!(matches!(frames(&path, 0), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn recovery_refuses_damage_in_the_middle_and_reports_a_cut_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (full, _) = three_frames(&path);
        let frames_of = layout(&full);
        // A flipped bit in frame 2: frames 3 and the marks follow; nothing can tell
        // whether it was acknowledged, so recovery stops and says what it found.
        let mut flipped = full.clone();
        flipped[frames_of[3].0 + 20] ^= 0x10;
        std::fs::write(&path, &flipped).unwrap();
        let refused = BundleLog::recover(&path, false, |_| Ok(())).err().unwrap();
        let text = refused.to_string();
        assert!(
            text.contains(&format!("damaged frame at byte {}", frames_of[3].0)),
            "{text}"
        );
        assert!(text.contains("3 intact frames after it"), "{text}");
        assert!(text.contains("--cut-damaged"), "{text}");
        assert_eq!(std::fs::read(&path).unwrap(), flipped);
        // Asked to, it keeps what precedes the damage and copies the rest aside.
        let mut seen = Vec::new();
        let (_, found) = BundleLog::recover(&path, true, |f| {
            seen.push(f.feed_seq);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![1]);
        let (damage, aside) = found.cut.unwrap();
        assert_eq!(damage.at as usize, frames_of[3].0);
        assert_eq!(damage.intact_after, 3);
        assert_eq!(std::fs::read(aside).unwrap(), &flipped[frames_of[3].0..]);
        // A cut end: reported, with nothing after it.
        std::fs::write(&path, &full[..full.len() - 10]).unwrap();
        let (_, found) = BundleLog::recover(&path, false, |_| Ok(())).unwrap();
        let (damage, _) = found.cut.unwrap();
        assert_eq!(damage.intact_after, 0);
        assert_eq!(damage.at as usize, frames_of[6].0);
        assert_eq!(found.frames, 3);
    }

    #[test]
    fn a_format_3_log_is_copied_frame_by_frame() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.log");
        let new = dir.path().join("new.log");
        let mut v3 = MAGIC_V3.to_vec();
        let mut bodies = Vec::new();
        for seq in 1..=3u64 {
            let mut f = FrameBuilder::new(&[seq as u8; 16], seq, Some(b"head"));
            f.item(format!("item {seq}").as_bytes());
            let (body, _, _) = f.finish();
            v3.extend_from_slice(&(body.len() as u32).to_le_bytes());
            v3.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            v3.extend_from_slice(&body);
            bodies.push(body);
        }
        let acknowledged = v3.len() as u64;
        // An unacknowledged torn end is left out.
        v3.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&old, &v3).unwrap();
        let len = upgrade_v3(&old, &new, acknowledged, &header()).unwrap();
        assert_eq!(std::fs::metadata(&new).unwrap().len(), len);
        let mut seen = Vec::new();
        let log = BundleLog::open(&new, len, |f| {
            seen.push((f.feed_seq, f.items[0].1.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(log.header(), &header());
        assert_eq!(
            seen,
            (1..=3u64)
                .map(|s| (s, format!("item {s}").into_bytes()))
                .collect::<Vec<_>>()
        );
        // Damage in acknowledged data is refused, and nothing is written.
        std::fs::remove_file(&new).unwrap();
        v3[20] ^= 1;
        std::fs::write(&old, &v3).unwrap();
        assert!(upgrade_v3(&old, &new, acknowledged, &header()).is_err());
        assert!(!new.exists());
    }

    #[test]
    fn after_a_failed_sync_the_log_takes_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let log = BundleLog::create(&dir.path().join("log"), &header()).unwrap();
        write(&log, 1, &[b"one"]);
        log.failed.store(true, Ordering::SeqCst);
        assert!(matches!(log.sync(), Err(StoreError::Io { .. })));
        let mut f = FrameBuilder::new(&[7u8; 16], 2, None);
        f.item(b"two");
        assert!(matches!(log.append(f), Err(StoreError::Io { .. })));
    }

    #[test]
    fn parse_rejects_lengths_past_the_body() {
        let mut f = FrameBuilder::new(&[1u8; 16], 3, None);
        f.item(b"abc");
        let (mut body, _, _) = f.finish();
        assert!(parse(&body, 0).is_ok());
        let n = body.len();
        body[n - 7] = 200; // the item's length
        assert!(parse(&body, 0).is_err());
        body.truncate(10);
        assert!(parse(&body, 0).is_err());
    }
}
