//! The bundle log: an append-only file holding every accepted bundle's signed bytes
//! and item records, exactly once. Signed bundles never change, so they are written
//! once, in the order accepted, and read back with one positioned read per item.
//!
//! ```text
//! file   := MAGIC frame*
//! frame  := body_len u32 LE | crc32 u32 LE (of body) | body
//! body   := VERSION u8 | bundle UUID [16] | feed seq u64 LE
//!           | head_len u32 LE | head (BundleHead, prost; empty when already logged)
//!           | count u32 LE | (item_len u32 LE | ItemRecord (prost))*count
//! ```
//!
//! One frame is one accept: the bundle header the first time it is seen, the items
//! newly stored (or re-stored with a lower hop count) and the bundle's new place in
//! the change feed. A frame is written with one positioned write and counts only once
//! complete with a matching checksum.
//!
//! Acknowledged means [`BundleLog::sync`] returned; the store records how far the log
//! was synced (the *watermark*) in sled after each sync. At open, anything that does
//! not read as a frame at or past the watermark is a write that never completed (a
//! crash, or a power loss that kept only some of the pages written since the last
//! sync): it is copied aside to `<log>.cut-<offset>` and cut off. Damage below the
//! watermark, or a log shorter than it, is damage to acknowledged data: the open is
//! refused with the offset. After a failed write or sync the log refuses further
//! writes until the store is reopened, because the kernel may have dropped the pages
//! that failed and a later sync could then report success for data that is lost.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::StoreError;

/// First bytes of a bundle log; the last byte is the format version.
pub const MAGIC: &[u8; 8] = b"ENTLOG\0\x03";
/// Version byte at the start of every frame body.
const VERSION: u8 = 1;
/// Bytes before a frame's body: length and checksum.
const FRAME_HEAD: u64 = 8;
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

    /// Adds one item record given as bytes.
    #[cfg(test)]
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

/// The open log file.
pub struct BundleLog {
    path: PathBuf,
    file: File,
    /// End of the last complete frame: where the next one goes.
    end: AtomicU64,
    /// Held while appending: one frame at a time.
    appending: Mutex<()>,
    /// How far the log is known to be on disk; held while syncing.
    synced: Mutex<u64>,
    /// A write or sync failed: no more writes or syncs until reopened.
    failed: AtomicBool,
}

impl BundleLog {
    /// Opens (or creates) the log at `path` and reads every frame in order, handing
    /// each to `visit`. `acknowledged` is the watermark the store recorded: damage
    /// below it is refused, anything unreadable at or past it is cut off.
    pub fn open(
        path: &Path,
        acknowledged: u64,
        mut visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            source: e,
        };
        let damaged = |at: u64, problem: String| StoreError::Corrupt {
            key: format!("bundle log {} at byte {at}", path.display()),
            problem,
        };
        let magic_len = MAGIC.len() as u64;
        if !path.try_exists().map_err(io)? {
            if acknowledged > magic_len {
                return Err(damaged(
                    0,
                    format!("the log is missing, but {acknowledged} bytes of it were acknowledged"),
                ));
            }
            create(path).map_err(io)?;
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
                format!("the log ends here, but {acknowledged} bytes of it were acknowledged"),
            ));
        }
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut magic = [0u8; 8];
        if file_len < magic_len || reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(damaged(
                0,
                "not an Entente bundle log of this format version".into(),
            ));
        }
        let mut at = magic_len;
        let mut body = Vec::new();
        let mut torn = None;
        while at < file_len {
            let left = file_len - at;
            let mut head = [0u8; 8];
            let problem = if left < FRAME_HEAD {
                Some(format!("{left} bytes of a frame header"))
            } else {
                reader.read_exact(&mut head).map_err(io)?;
                let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
                let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
                if len == 0 || len > MAX_FRAME || at + FRAME_HEAD + u64::from(len) > file_len {
                    Some(format!("a frame length of {len} with {left} bytes left"))
                } else {
                    body.resize(len as usize, 0);
                    reader.read_exact(&mut body).map_err(io)?;
                    if crc32fast::hash(&body) != crc {
                        Some("checksum mismatch".to_owned())
                    } else {
                        let frame = parse(&body, at + FRAME_HEAD).map_err(|p| damaged(at, p))?;
                        visit(frame)?;
                        at += FRAME_HEAD + u64::from(len);
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                if at < acknowledged {
                    return Err(damaged(at, format!("{problem}, in acknowledged data")));
                }
                torn = Some(problem);
                break;
            }
        }
        drop(reader);
        if let Some(what) = torn {
            let aside = cut_tail(path, &file, at, file_len).map_err(io)?;
            tracing::warn!(
                log = %path.display(),
                at,
                cut = file_len - at,
                what,
                copied_to = %aside.display(),
                "cut an incomplete write off the end of the bundle log (never acknowledged)"
            );
        }
        if at > acknowledged {
            // Frames read back whole past the watermark may still be only in the page
            // cache (the process crashed, the machine did not): on disk before anyone
            // counts them as acknowledged.
            file.sync_data().map_err(io)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            end: AtomicU64::new(at),
            appending: Mutex::new(()),
            synced: Mutex::new(at),
            failed: AtomicBool::new(false),
        })
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
                "an earlier write or sync of the bundle log failed; restart the node to recover",
            )));
        }
        Ok(())
    }

    /// Appends one frame. Not durable until [`BundleLog::sync`].
    pub fn append(&self, frame: FrameBuilder) -> Result<Written, StoreError> {
        let (body, items, head) = frame.finish();
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| StoreError::Corrupt {
                key: "bundle log".into(),
                problem: format!("a frame of {} bytes is too large", body.len()),
            })?;
        let mut bytes = Vec::with_capacity(body.len() + FRAME_HEAD as usize);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        let _one = self.appending.lock().unwrap_or_else(|p| p.into_inner());
        self.check_usable()?;
        let at = self.end.load(Ordering::SeqCst);
        if let Err(e) = self.file.write_all_at(&bytes, at) {
            // The log takes no more writes until reopened; whatever part of the frame
            // landed is taken back, so no stale bytes lie past the end (and if that
            // fails too, the next open cuts them, since they are past the watermark).
            self.failed.store(true, Ordering::SeqCst);
            let _ = self.file.set_len(at);
            return Err(self.io(e));
        }
        self.end.store(at + bytes.len() as u64, Ordering::SeqCst);
        let base = at + FRAME_HEAD;
        Ok(Written {
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
        })
    }

    /// Forces every frame appended before the call to disk; returns how far the log
    /// is now known to be on disk (the watermark). Concurrent callers share one sync.
    pub fn sync(&self) -> Result<u64, StoreError> {
        let target = self.end.load(Ordering::SeqCst);
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        self.check_usable()?;
        if *synced >= target {
            return Ok(*synced);
        }
        let upto = self.end.load(Ordering::SeqCst);
        if let Err(e) = self.file.sync_data() {
            // What was not synced may be lost already, while still readable from the
            // page cache: cut it, so a reopen cannot read it back and count it.
            self.failed.store(true, Ordering::SeqCst);
            let _ = self.file.set_len(*synced);
            return Err(self.io(e));
        }
        *synced = upto;
        Ok(upto)
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
}

/// Creates a log holding only the magic bytes, so that a crash never leaves a log
/// file without them: written aside, synced, linked into place, directory synced.
fn create(path: &Path) -> std::io::Result<()> {
    let fresh = path.with_extension("log.new");
    // Owner only, whatever the umask: the log holds every item, RED ones included.
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&fresh)?;
    file.write_all_at(MAGIC, 0)?;
    file.sync_all()?;
    // A link, not a rename: it fails rather than replace a log that appeared meanwhile.
    std::fs::hard_link(&fresh, path)?;
    std::fs::remove_file(&fresh)?;
    sync_dir(path)
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
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

    /// A log of three frames; returns its bytes and where frames 2 and 3 start.
    fn three_frames(path: &Path) -> (Vec<u8>, usize, usize) {
        let log = BundleLog::open(path, 0, |_| Ok(())).unwrap();
        write(&log, 1, &[b"one"]);
        let second = log.sync().unwrap() as usize;
        write(&log, 2, &[b"two"]);
        let third = log.sync().unwrap() as usize;
        write(&log, 3, &[b"three"]);
        log.sync().unwrap();
        drop(log);
        (std::fs::read(path).unwrap(), second, third)
    }

    #[test]
    fn the_log_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        BundleLog::open(&path, 0, |_| Ok(())).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn frames_read_back_in_order_with_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = BundleLog::open(&path, 0, |_| Ok(())).unwrap();
        let a = write(&log, 1, &[b"one", b"two"]);
        let b = write(&log, 2, &[b"three"]);
        assert_eq!(log.sync().unwrap(), log.len());
        assert_eq!(log.read(a.items[1]).unwrap(), b"two");
        assert_eq!(log.read(b.items[0]).unwrap(), b"three");
        assert_eq!(log.read(a.head.unwrap()).unwrap(), b"head");
        let end = log.len();
        drop(log);
        assert_eq!(frames(&path, end).unwrap(), vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn past_the_watermark_an_unreadable_write_is_cut_and_copied_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (full, second, third) = three_frames(&path);
        // Synced up to frame 1 only: every cut in frames 2 and 3 loses only those.
        for cut in second + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let kept = frames(&path, second as u64).unwrap();
            let expected = if cut >= third { 2 } else { 1 };
            assert_eq!(kept.len(), expected, "cut at {cut}");
            let end = std::fs::metadata(&path).unwrap().len() as usize;
            assert_eq!(end, if expected == 2 { third } else { second });
            let aside = dir.path().join(format!("log.cut-{end}"));
            if cut > end {
                assert_eq!(std::fs::read(&aside).unwrap(), &full[end..cut]);
                std::fs::remove_file(&aside).unwrap();
            } else {
                assert!(!aside.exists());
            }
        }
        // A power loss that kept frame 3 but only part of frame 2 (pages reach the
        // disk in any order): neither was acknowledged, so both go.
        let mut partial = full.clone();
        partial[second + 20] ^= 0x5a;
        std::fs::write(&path, &partial).unwrap();
        assert_eq!(frames(&path, second as u64).unwrap(), vec![(1, 1)]);
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
        let (full, second, _) = three_frames(&path);
        let synced = full.len() as u64;
        // A flipped bit anywhere in acknowledged data, the length fields included.
        for at in [
            MAGIC.len(),
            MAGIC.len() + 5,
            second,
            second + 2,
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
        // Shorter than what was acknowledged, or gone: refused.
        std::fs::write(&path, &full[..second + 3]).unwrap();
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
        // Another file is refused.
        std::fs::write(&path, b"not a log at all").unwrap();
        assert!(matches!(frames(&path, 0), Err(StoreError::Corrupt { .. })));
    }

    #[test]
    fn after_a_failed_write_or_sync_the_log_takes_no_more() {
        let dir = tempfile::tempdir().unwrap();
        let log = BundleLog::open(&dir.path().join("log"), 0, |_| Ok(())).unwrap();
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
