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
//! complete with a matching checksum; [`BundleLog::open`] cuts a torn frame off the
//! end (a crash mid-write, never acknowledged) and refuses a damaged frame anywhere
//! else. Acknowledged means [`BundleLog::sync`] returned.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
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
    /// Written since the last sync.
    dirty: AtomicBool,
}

impl BundleLog {
    /// Opens (or creates) the log at `path` and reads every frame in order, handing
    /// each to `visit`. A torn frame at the end is cut off; damage anywhere else is
    /// an error.
    pub fn open(
        path: &Path,
        mut visit: impl FnMut(Frame<'_>) -> Result<(), StoreError>,
    ) -> Result<Self, StoreError> {
        let io = |e: std::io::Error| StoreError::Io {
            path: path.to_owned(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let damaged = |at: u64, problem: String| StoreError::Corrupt {
            key: format!("bundle log {} at byte {at}", path.display()),
            problem,
        };
        if file_len < MAGIC.len() as u64 {
            // New (or torn while being created): start it.
            file.set_len(0).map_err(io)?;
            file.write_all_at(MAGIC, 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
            }
            return Ok(Self {
                path: path.to_owned(),
                file,
                end: AtomicU64::new(MAGIC.len() as u64),
                dirty: AtomicBool::new(false),
            });
        }
        let mut reader = BufReader::with_capacity(1 << 20, &file);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic).map_err(io)?;
        if &magic != MAGIC {
            return Err(damaged(
                0,
                "not an Entente bundle log of this format version".into(),
            ));
        }
        let mut at = MAGIC.len() as u64;
        let mut body = Vec::new();
        let mut torn = None;
        while at < file_len {
            let left = file_len - at;
            let mut head = [0u8; 8];
            if left < FRAME_HEAD {
                torn = Some(format!("{left} bytes of a frame header"));
                break;
            }
            reader.read_exact(&mut head).map_err(io)?;
            let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
            let frame_end = at + FRAME_HEAD + u64::from(len);
            if len == 0 || len > MAX_FRAME || frame_end > file_len {
                // A length past the end (or zeroes where a frame was being written)
                // is a write that never completed, if nothing valid follows it.
                torn = Some(format!("a frame of {len} bytes in {left}"));
                break;
            }
            body.resize(len as usize, 0);
            reader.read_exact(&mut body).map_err(io)?;
            if crc32fast::hash(&body) != crc {
                if frame_end == file_len {
                    torn = Some("the last frame's checksum does not match".into());
                    break;
                }
                return Err(damaged(at, "checksum mismatch".into()));
            }
            let frame = parse(&body, at + FRAME_HEAD).map_err(|p| damaged(at, p))?;
            visit(frame)?;
            at = frame_end;
        }
        if let Some(what) = torn {
            tracing::warn!(
                log = %path.display(),
                at,
                cut = file_len - at,
                what,
                "cutting an incomplete write off the end of the bundle log (never acknowledged)"
            );
            file.set_len(at).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            end: AtomicU64::new(at),
            dirty: AtomicBool::new(false),
        })
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends one frame. The caller serialises appends. Not durable until
    /// [`BundleLog::sync`].
    pub fn append(&self, frame: FrameBuilder) -> Result<Written, StoreError> {
        let (body, items, head) = frame.finish();
        let len = u32::try_from(body.len())
            .ok()
            .filter(|&l| l <= MAX_FRAME)
            .ok_or_else(|| StoreError::Corrupt {
                key: "bundle log".into(),
                problem: format!("a frame of {} bytes is too large", body.len()),
            })?;
        let at = self.end.load(Ordering::SeqCst);
        let mut bytes = Vec::with_capacity(body.len() + FRAME_HEAD as usize);
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);
        if let Err(e) = self.file.write_all_at(&bytes, at) {
            // Whatever part landed is overwritten by the next frame, or cut at open.
            return Err(self.io(e));
        }
        self.end.store(at + bytes.len() as u64, Ordering::SeqCst);
        self.dirty.store(true, Ordering::SeqCst);
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

    /// Forces every appended frame to disk.
    pub fn sync(&self) -> Result<(), StoreError> {
        if self.dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.file.sync_data() {
                self.dirty.store(true, Ordering::SeqCst);
                return Err(self.io(e));
            }
        }
        Ok(())
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
    let mut items = Vec::with_capacity((count as usize).min(body.len() / 4));
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

    fn frames(path: &Path) -> Result<Vec<(u64, usize)>, StoreError> {
        let mut seen = Vec::new();
        BundleLog::open(path, |f| {
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

    #[test]
    fn frames_read_back_in_order_with_their_spans() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = BundleLog::open(&path, |_| Ok(())).unwrap();
        let a = write(&log, 1, &[b"one", b"two"]);
        let b = write(&log, 2, &[b"three"]);
        log.sync().unwrap();
        assert_eq!(log.read(a.items[1]).unwrap(), b"two");
        assert_eq!(log.read(b.items[0]).unwrap(), b"three");
        assert_eq!(log.read(a.head.unwrap()).unwrap(), b"head");
        drop(log);
        assert_eq!(frames(&path).unwrap(), vec![(1, 2), (2, 1)]);
    }

    #[test]
    fn a_torn_last_frame_is_cut_and_damage_before_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = BundleLog::open(&path, |_| Ok(())).unwrap();
        write(&log, 1, &[b"one"]);
        let second = write(&log, 2, &[b"two"]);
        drop(log);
        let full = std::fs::read(&path).unwrap();

        // Every cut inside the second frame loses only that frame.
        let second_start = second.head.unwrap().offset as usize - 8 - 1 - 16 - 8 - 4;
        for cut in second_start + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            assert_eq!(frames(&path).unwrap(), vec![(1, 1)], "cut at {cut}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                second_start
            );
        }
        // A flipped byte in the last frame is a torn write; in the first, damage.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(frames(&path).unwrap(), vec![(1, 1)]);
        let mut flipped = full.clone();
        flipped[MAGIC.len() + 12] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(matches!(frames(&path), Err(StoreError::Corrupt { .. })));
        // Zeroes past the end (space allocated, data never written) are cut.
        let mut zeroes = full.clone();
        zeroes.extend_from_slice(&[0u8; 4096]);
        std::fs::write(&path, &zeroes).unwrap();
        assert_eq!(frames(&path).unwrap(), vec![(1, 1), (2, 1)]);
        // Another file is refused.
        std::fs::write(&path, b"not a log at all").unwrap();
        assert!(matches!(frames(&path), Err(StoreError::Corrupt { .. })));
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
